//! A PNG heat map of a matrix of rates in [0, 1] (the transfer matrix), each cell labelled with
//! its value.

use std::path::Path;

use plotters::prelude::*;

use super::io_error;
use super::plot::{register_font, save_rgb, FAMILY};
use crate::error::{Error, Result};

/// Draw `values` (row-major, `rows.len() × cols.len()`, each in [0, 1]) as a heat map with row
/// and column names, white for 0 and dark red for 1, each cell labelled in percent.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `values` does not have one entry per cell, [`Error::Io`] when
/// drawing or writing fails.
pub fn plot_heatmap(
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[f64],
    path: &Path,
) -> Result<()> {
    if values.len() != rows.len() * cols.len() || values.is_empty() {
        return Err(Error::ShapeMismatch {
            what: "heat map values",
            expected: format!("{} × {} cells", rows.len(), cols.len()),
            got: vec![values.len()],
        });
    }
    register_font();
    let (cell_w, cell_h, left, top) = (170u32, 56u32, 190u32, 80u32);
    let (w, h) = (
        left + cell_w * cols.len() as u32 + 20,
        top + cell_h * rows.len() as u32 + 20,
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| io_error(path, e);
        let text = |size: i32| (FAMILY, size).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (15, 12), text(18)))
            .map_err(|e| draw(&e))?;
        for (j, name) in cols.iter().enumerate() {
            let x = (left + cell_w * j as u32 + 8) as i32;
            root.draw(&Text::new(name.clone(), (x, top as i32 - 26), text(14)))
                .map_err(|e| draw(&e))?;
        }
        for (i, name) in rows.iter().enumerate() {
            let y = (top + cell_h * i as u32 + cell_h / 2 - 8) as i32;
            root.draw(&Text::new(name.clone(), (15, y), text(14)))
                .map_err(|e| draw(&e))?;
            for j in 0..cols.len() {
                let v = values[i * cols.len() + j].clamp(0.0, 1.0);
                let shade = |c: f64| (255.0 - v * (255.0 - c)) as u8;
                let fill = RGBColor(shade(165.0), shade(15.0), shade(21.0));
                let (x0, y0) = (
                    (left + cell_w * j as u32) as i32,
                    (top + cell_h * i as u32) as i32,
                );
                let (x1, y1) = (x0 + cell_w as i32 - 2, y0 + cell_h as i32 - 2);
                root.draw(&Rectangle::new([(x0, y0), (x1, y1)], fill.filled()))
                    .map_err(|e| draw(&e))?;
                let color = if v > 0.55 { WHITE } else { BLACK };
                let label = format!("{:.1} %", 100.0 * v);
                root.draw(&Text::new(
                    label,
                    (x0 + 50, y0 + cell_h as i32 / 2 - 9),
                    (FAMILY, 16).into_font().color(&color),
                ))
                .map_err(|e| draw(&e))?;
            }
        }
        root.present().map_err(|e| draw(&e))?;
    }
    save_rgb(buf, w, h, path)
}
