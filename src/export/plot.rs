//! PNG plots (feature `plot`, on with the default `cli`): an accuracy-vs-ε curve, lines of any
//! `y ∈ [0, 1]` against `x`, and a grid of clean / perturbation / adversarial images.

use std::path::Path;
use std::sync::Once;

use candle_core::{DType, Device, Tensor};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::io_error;
use crate::error::{Error, Result};
use crate::metrics::Sweep;

/// Font used for all text in plots (DejaVu Sans Mono, see `assets/fonts/DejaVu-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
pub(super) const FAMILY: &str = "sans-serif";

pub(super) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse; a failure would only lose the text.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Save an RGB buffer of `width × height` as PNG.
pub(super) fn save_rgb(buf: Vec<u8>, width: u32, height: u32, path: &Path) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, buf)
        .ok_or_else(|| io_error(path, "image buffer of the wrong size"))?;
    super::write_image(&image::DynamicImage::ImageRgb8(img), path)
}

/// Size in pixels of the curve PNG of [`plot_curve`].
pub const CURVE_SIZE: (u32, u32) = (800, 500);

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Plot robust accuracy against ε, one line per attack and norm with its confidence interval
/// as a shaded band (where the reports carry one), plus the worst case over attacks when there
/// are several, as a PNG of [`CURVE_SIZE`].
///
/// # Errors
/// [`Error::InvalidParameter`] for a sweep without reports, [`Error::Io`] when drawing or
/// writing fails.
pub fn plot_curve(sweep: &Sweep, path: &Path) -> Result<()> {
    if sweep.reports.is_empty() {
        return Err(Error::InvalidParameter {
            name: "sweep",
            value: "no reports".into(),
            reason: "nothing to plot",
        });
    }
    let mut lines: Vec<Line> = Vec::new();
    for r in &sweep.reports {
        let (Some(norm), Some(eps)) = (r.attack.norm, r.attack.eps) else {
            continue;
        };
        let key = format!("{} ({norm})", r.attack.name);
        let point = (eps, r.robust_accuracy);
        let band = r
            .intervals
            .filter(|i| i.confidence > 0.0)
            .map(|i| (i.robust_accuracy.lower, i.robust_accuracy.upper));
        match lines.iter_mut().find(|l| l.name == key) {
            Some(l) => {
                l.points.push(point);
                l.band.extend(band);
            }
            None => lines.push(Line {
                name: key,
                points: vec![point],
                thin: false,
                band: band.into_iter().collect(),
            }),
        }
    }
    if lines.len() > 1 {
        lines.push(Line {
            name: "worst case".into(),
            points: sweep
                .worst_case
                .iter()
                .map(|p| (p.eps, p.robust_accuracy))
                .collect(),
            thin: true,
            band: Vec::new(),
        });
    }
    plot_lines(
        &format!("{}: accuracy vs eps", sweep.model),
        ("eps", "robust accuracy"),
        &lines,
        path,
    )
}

/// One line of [`plot_lines`]: a legend name and its points `(x, y)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend entry.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f32, f64)>,
    /// A thin black line without markers (a reference or an envelope) instead of a coloured one.
    pub thin: bool,
    /// `(lower, upper)` per point, drawn as a shaded band (a confidence interval); empty for
    /// none, and ignored unless it has one entry per point.
    pub band: Vec<(f64, f64)>,
}

/// Plot lines of `y ∈ [0, 1]` against `x ≥ 0` as a PNG of [`CURVE_SIZE`], with a legend; the
/// axis text uses the embedded font, so no system fonts are needed.
///
/// # Errors
/// [`Error::InvalidParameter`] without points, [`Error::Io`] when drawing or writing fails.
pub fn plot_lines(
    title: &str,
    (x_desc, y_desc): (&str, &str),
    lines: &[Line],
    path: &Path,
) -> Result<()> {
    if lines.iter().all(|l| l.points.is_empty()) {
        return Err(Error::InvalidParameter {
            name: "lines",
            value: "no points".into(),
            reason: "nothing to plot",
        });
    }
    register_font();
    let (w, h) = CURVE_SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let max_x = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0f32, f32::max)
        .max(1e-6);
    // The legend goes where the lines are not: top left when they mostly rise.
    let rising = lines
        .iter()
        .filter_map(|l| Some(l.points.last()?.1 - l.points.first()?.1))
        .sum::<f64>()
        > 0.0;
    let legend = if rising {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::UpperRight
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| io_error(path, e);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f32..max_x, 0f64..1.02f64)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|e| draw(&e))?;
        let mut coloured = 0;
        for line in lines {
            let pts = line.points.iter().copied();
            if line.thin {
                chart
                    .draw_series(LineSeries::new(pts, BLACK.stroke_width(1)))
                    .map_err(|e| draw(&e))?
                    .label(line.name.clone())
                    .legend(|(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1))
                    });
                continue;
            }
            let color = COLORS[coloured % COLORS.len()];
            coloured += 1;
            if !line.band.is_empty() && line.band.len() == line.points.len() {
                let outline: Vec<(f32, f64)> = line
                    .points
                    .iter()
                    .zip(&line.band)
                    .map(|(p, b)| (p.0, b.0))
                    .chain(
                        line.points
                            .iter()
                            .zip(&line.band)
                            .rev()
                            .map(|(p, b)| (p.0, b.1)),
                    )
                    .collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        outline,
                        color.mix(0.15).filled(),
                    )))
                    .map_err(|e| draw(&e))?;
            }
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| draw(&e))?
                .label(line.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| draw(&e))?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(legend)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    save_rgb(buf, w, h, path)
}

/// Per-sample labels of an image grid row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridRow {
    /// Index of the sample in the batch.
    pub index: usize,
    /// True label.
    pub label: u32,
    /// Prediction on the clean image.
    pub clean: u32,
    /// Prediction on the adversarial image.
    pub adversarial: u32,
}

/// Pixel size of one grid cell: images are scaled up by an integer factor to at least this.
const CELL: usize = 112;
const CAPTION: usize = 22;
const HEADER: usize = 26;

/// The size in pixels of the grid [`image_grid`] draws for `rows` rows of `h × w` images.
pub fn grid_size(rows: usize, h: usize, w: usize) -> (u32, u32) {
    let k = CELL.div_ceil(h.max(w).max(1)).max(1);
    let (cw, ch) = (w * k + 10, h * k + CAPTION + 6);
    ((3 * cw) as u32, (HEADER + rows * ch) as u32)
}

/// Draw a PNG grid with one row per entry of `rows`: the clean image, the perturbation
/// (amplified so its largest pixel change spans the grey range; grey is no change) and the
/// adversarial image, each captioned with its predicted label. `x` and `x_adv` are
/// `[N, C, H, W]` f32 in `[0, 1]` with C = 1 or 3.
///
/// # Errors
/// [`Error::ShapeMismatch`] for batches of different or unsupported shapes or an index out of
/// range, [`Error::Io`] when drawing or writing fails.
pub fn image_grid(x: &Tensor, x_adv: &Tensor, rows: &[GridRow], path: &Path) -> Result<()> {
    let (n, c, h, w) = x.dims4()?;
    if x_adv.dims() != x.dims() || !(c == 1 || c == 3) || rows.iter().any(|r| r.index >= n) {
        return Err(Error::ShapeMismatch {
            what: "x_adv",
            expected: format!("[{n}, 1 or 3, {h}, {w}] like x, row indices < {n}"),
            got: x_adv.dims().to_vec(),
        });
    }
    register_font();
    let (gw, gh) = grid_size(rows.len(), h, w);
    let k = CELL.div_ceil(h.max(w).max(1)).max(1);
    let (cw, ch) = (w * k + 10, h * k + CAPTION + 6);
    let mut buf = vec![255u8; (gw * gh * 3) as usize];
    let to_host = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let (xs, advs) = (to_host(x)?, to_host(x_adv)?);
    let plane = c * h * w;
    let mut blit = |img: &[f32], col: usize, row: usize| {
        let (ox, oy) = (col * cw + 5, HEADER + row * ch);
        for yy in 0..h * k {
            for xx in 0..w * k {
                let (sy, sx) = (yy / k, xx / k);
                let p = (oy + yy) * gw as usize + ox + xx;
                for ch_out in 0..3 {
                    let ci = if c == 1 { 0 } else { ch_out };
                    let v = img[ci * h * w + sy * w + sx].clamp(0.0, 1.0);
                    buf[p * 3 + ch_out] = (v * 255.0).round() as u8;
                }
            }
        }
    };
    for (row, r) in rows.iter().enumerate() {
        let clean = &xs[r.index * plane..(r.index + 1) * plane];
        let adv = &advs[r.index * plane..(r.index + 1) * plane];
        let max = clean
            .iter()
            .zip(adv)
            .map(|(a, b)| (b - a).abs())
            .fold(0f32, f32::max)
            .max(1e-12);
        let delta: Vec<f32> = clean
            .iter()
            .zip(adv)
            .map(|(a, b)| 0.5 + (b - a) / (2.0 * max))
            .collect();
        blit(clean, 0, row);
        blit(&delta, 1, row);
        blit(adv, 2, row);
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (gw, gh)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| io_error(path, e);
        let style = TextStyle::from((FAMILY, 15).into_font()).color(&BLACK);
        for (col, title) in ["clean", "perturbation", "adversarial"].iter().enumerate() {
            root.draw(&Text::new(
                *title,
                ((col * cw + 5) as i32, 5),
                style.clone(),
            ))
            .map_err(|e| draw(&e))?;
        }
        for (row, r) in rows.iter().enumerate() {
            let y = (HEADER + row * ch + h * k + 3) as i32;
            let captions = [
                format!("label {} pred {}", r.label, r.clean),
                "amplified".to_string(),
                format!("pred {}", r.adversarial),
            ];
            for (col, text) in captions.iter().enumerate() {
                let color = if col == 2 && r.adversarial != r.label {
                    RED
                } else {
                    BLACK
                };
                let style = TextStyle::from((FAMILY, 13).into_font()).color(&color);
                root.draw(&Text::new(text.clone(), ((col * cw + 5) as i32, y), style))
                    .map_err(|e| draw(&e))?;
            }
        }
        root.present().map_err(|e| draw(&e))?;
    }
    save_rgb(buf, gw, gh, path)
}
