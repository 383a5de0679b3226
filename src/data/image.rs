//! Image files in and out: PNG/JPEG to `[C, H, W]` `f32` in `[0, 1]`, and back to PNG.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{imageops::FilterType, DynamicImage, GrayImage, RgbImage};

use crate::error::{Error, Result};

/// Load an image file as a `[channels, height, width]` `f32` tensor in `[0, 1]`, converted to
/// grey (`channels = 1`) or RGB (`channels = 3`) and resized (Lanczos) to `height × width` when
/// its size differs.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Data`] when it is not a decodable image,
/// [`Error::InvalidParameter`] for a channel count other than 1 or 3 or a zero size.
pub fn load_image(
    path: impl AsRef<Path>,
    channels: usize,
    height: usize,
    width: usize,
    device: &Device,
) -> Result<Tensor> {
    let path = path.as_ref();
    if !(channels == 1 || channels == 3) || height == 0 || width == 0 {
        return Err(Error::InvalidParameter {
            name: "image shape",
            value: format!("[{channels}, {height}, {width}]"),
            reason: "channels must be 1 or 3 and sizes at least 1",
        });
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Data {
        file: path.to_path_buf(),
        reason: format!("not a readable image: {e}"),
    })?;
    let (w, h) = (width as u32, height as u32);
    let img = if img.width() != w || img.height() != h {
        img.resize_exact(w, h, FilterType::Lanczos3)
    } else {
        img
    };
    let data: Vec<u8> = match channels {
        1 => img.to_luma8().into_raw(),
        _ => img.to_rgb8().into_raw(),
    };
    // Interleaved [H, W, C] bytes → planar [C, H, W] floats.
    let t = Tensor::from_vec(data, (height, width, channels), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    Ok((t / 255.0)?)
}

/// Save a `[C, H, W]` tensor with values in `[0, 1]` (clamped) as a PNG, grey for one channel
/// and RGB for three, each pixel enlarged to a `scale × scale` block (nearest neighbour) so that
/// small images such as MNIST digits are visible.
///
/// # Errors
/// [`Error::ShapeMismatch`] for another shape, [`Error::Io`] when the file cannot be written.
pub fn save_png(t: &Tensor, path: impl AsRef<Path>, scale: u32) -> Result<()> {
    let path = path.as_ref();
    let dims = t.dims().to_vec();
    if dims.len() != 3 || !(dims[0] == 1 || dims[0] == 3) || scale == 0 {
        return Err(Error::ShapeMismatch {
            what: "image",
            expected: "[1 or 3, H, W] and scale >= 1".into(),
            got: dims,
        });
    }
    let (c, h, w) = (dims[0], dims[1] as u32, dims[2] as u32);
    let bytes: Vec<u8> = (t.to_dtype(DType::F32)?.clamp(0.0, 1.0)? * 255.0)?
        .round()?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_dtype(DType::U8)?
        .to_vec1()?;
    let shape_err = || Error::ShapeMismatch {
        what: "image",
        expected: "[C, H, W]".into(),
        got: t.dims().to_vec(),
    };
    let img = if c == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, bytes).ok_or_else(shape_err)?)
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, bytes).ok_or_else(shape_err)?)
    };
    let img = img.resize_exact(w * scale, h * scale, FilterType::Nearest);
    img.save(path).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
