//! Where a patch lands and how its pixels reach the image: a [`Placement`] (centre, scale,
//! rotation) and the bilinear sampling map it induces, used to paste the patch differentiably.

use rand::Rng;

use crate::error::{Error, Result};

/// One copy of the patch on one image: centre `(cy, cx)` in pixels (the image's top-left corner
/// is `(0, 0)`, pixel `(i, j)` covers `[i, i+1) × [j, j+1)`), `scale` (1 = the patch's own
/// size) and `angle` (radians, counter-clockwise).
///
/// A placement with scale 1, angle 0 and the patch's corner on the pixel grid pastes every patch
/// pixel exactly onto one image pixel ([`Placement::at`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Row of the centre.
    pub cy: f32,
    /// Column of the centre.
    pub cx: f32,
    /// Size factor.
    pub scale: f32,
    /// Rotation in radians.
    pub angle: f32,
}

impl Placement {
    /// The patch of size `h × w` with its top-left pixel at `(top, left)`, unscaled, unrotated.
    pub fn at(top: usize, left: usize, (h, w): (usize, usize)) -> Self {
        Self {
            cy: top as f32 + h as f32 / 2.0,
            cx: left as f32 + w as f32 / 2.0,
            scale: 1.0,
            angle: 0.0,
        }
    }
}

/// Where the centre of a randomly placed patch may fall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Region {
    /// Anywhere the (scaled, unrotated) patch fits inside the image.
    Anywhere,
    /// The patch fits inside the rectangle of rows `top..bottom`, columns `left..right`.
    Within {
        /// First row.
        top: usize,
        /// First column.
        left: usize,
        /// One past the last row.
        bottom: usize,
        /// One past the last column.
        right: usize,
    },
    /// Always this top-left corner (a sticker placed on the object).
    Fixed {
        /// Row of the patch's top-left pixel.
        top: usize,
        /// Column of the patch's top-left pixel.
        left: usize,
    },
}

/// Ranges of the random transformations of expectation over transformation (EOT), each drawn
/// uniformly per image.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Transforms {
    /// Size factor range `(lo, hi)`, `0 < lo ≤ hi`.
    pub scale: (f32, f32),
    /// Largest rotation in degrees, either way.
    pub rotation_deg: f32,
    /// Largest brightness shift added to the patch, either way.
    pub brightness: f32,
    /// Largest relative contrast change of the patch, either way (0.2: factor in [0.8, 1.2]).
    pub contrast: f32,
    /// Largest uniform noise added to every pixel of the patched image, either way.
    pub noise: f32,
}

impl Default for Transforms {
    /// No transformation: scale 1, no rotation, brightness, contrast or noise.
    fn default() -> Self {
        Self {
            scale: (1.0, 1.0),
            rotation_deg: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            noise: 0.0,
        }
    }
}

/// One image's draw of the transformations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Draw {
    pub placement: Placement,
    pub brightness: f32,
    pub contrast: f32,
}

impl Transforms {
    /// Error unless every range is finite and sensible.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |name, value: f32, reason| {
            Err(Error::InvalidParameter {
                name,
                value: value.to_string(),
                reason,
            })
        };
        let (lo, hi) = self.scale;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return bad("scale", lo, "needs 0 < lo <= hi, both finite");
        }
        for (name, v) in [
            ("rotation_deg", self.rotation_deg),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("noise", self.noise),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "must be finite and >= 0");
            }
        }
        if self.contrast >= 1.0 {
            return bad("contrast", self.contrast, "must be below 1");
        }
        Ok(())
    }

    /// Draw a placement of an `h × w` patch in `region` of an `img_h × img_w` image, and the
    /// colour changes.
    pub(crate) fn draw<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        region: Region,
        (h, w): (usize, usize),
        (img_h, img_w): (usize, usize),
    ) -> Result<Draw> {
        let uniform = |rng: &mut R, a: f32| {
            if a > 0.0 {
                rng.random_range(-a..=a)
            } else {
                0.0
            }
        };
        let (lo, hi) = self.scale;
        let scale = if hi > lo {
            rng.random_range(lo..=hi)
        } else {
            lo
        };
        let angle = uniform(rng, self.rotation_deg).to_radians();
        let (sh, sw) = (h as f32 * scale, w as f32 * scale);
        let placement = match region {
            Region::Fixed { top, left } => Placement {
                scale,
                angle,
                ..Placement::at(top, left, (h, w))
            },
            _ => {
                let (top, left, bottom, right) = match region {
                    Region::Within {
                        top,
                        left,
                        bottom,
                        right,
                    } => (top, left, bottom.min(img_h), right.min(img_w)),
                    _ => (0, 0, img_h, img_w),
                };
                let (y0, y1) = (top as f32 + sh / 2.0, bottom as f32 - sh / 2.0);
                let (x0, x1) = (left as f32 + sw / 2.0, right as f32 - sw / 2.0);
                if !(y0 <= y1 && x0 <= x1) {
                    return Err(Error::InvalidParameter {
                        name: "region",
                        value: format!("{top}..{bottom} x {left}..{right}"),
                        reason: "the scaled patch does not fit inside it",
                    });
                }
                let pick =
                    |rng: &mut R, a: f32, b: f32| if b > a { rng.random_range(a..=b) } else { a };
                Placement {
                    cy: pick(rng, y0, y1),
                    cx: pick(rng, x0, x1),
                    scale,
                    angle,
                }
            }
        };
        Ok(Draw {
            placement,
            brightness: uniform(rng, self.brightness),
            contrast: 1.0 + uniform(rng, self.contrast),
        })
    }
}

/// Bilinear taps of every image pixel into the flattened patch: `idx[k][p]` and `weight[k][p]`
/// for tap `k` of pixel `p`, the weight already multiplied by the mask at the tap; `coverage[p]`
/// is the sum of the weights (how much of the pixel the patch covers).
pub(crate) struct Warp {
    pub idx: [Vec<u32>; 4],
    pub weight: [Vec<f32>; 4],
    pub coverage: Vec<f32>,
}

/// The sampling map of a `h × w` patch with `mask` (`h·w` values in [0, 1]) placed at `p` on an
/// `img_h × img_w` image.
pub(crate) fn warp(
    p: &Placement,
    (h, w): (usize, usize),
    mask: &[f32],
    (img_h, img_w): (usize, usize),
) -> Warp {
    let n = img_h * img_w;
    let mut out = Warp {
        idx: std::array::from_fn(|_| vec![0u32; n]),
        weight: std::array::from_fn(|_| vec![0f32; n]),
        coverage: vec![0f32; n],
    };
    let (sin, cos) = (f64::from(p.angle)).sin_cos();
    let inv = 1.0 / f64::from(p.scale);
    for i in 0..img_h {
        for j in 0..img_w {
            // image offset from the centre, rotated back and unscaled: patch coordinates
            let dy = i as f64 + 0.5 - f64::from(p.cy);
            let dx = j as f64 + 0.5 - f64::from(p.cx);
            let u = (cos * dx - sin * dy) * inv; // along the patch's columns
            let v = (sin * dx + cos * dy) * inv; // along the patch's rows
            let py = v + h as f64 / 2.0 - 0.5;
            let px = u + w as f64 / 2.0 - 0.5;
            let (y0, x0) = (py.floor(), px.floor());
            let (fy, fx) = ((py - y0) as f32, (px - x0) as f32);
            let taps = [
                (y0, x0, (1.0 - fy) * (1.0 - fx)),
                (y0, x0 + 1.0, (1.0 - fy) * fx),
                (y0 + 1.0, x0, fy * (1.0 - fx)),
                (y0 + 1.0, x0 + 1.0, fy * fx),
            ];
            let pix = i * img_w + j;
            for (k, &(ty, tx, wt)) in taps.iter().enumerate() {
                if wt == 0.0 || ty < 0.0 || tx < 0.0 || ty >= h as f64 || tx >= w as f64 {
                    continue;
                }
                let q = ty as usize * w + tx as usize;
                let wm = wt * mask[q];
                out.idx[k][pix] = q as u32;
                out.weight[k][pix] = wm;
                out.coverage[pix] += wm;
            }
        }
    }
    out
}
