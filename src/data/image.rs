//! Image files in and out: PNG/JPEG to `[C, H, W]` `f32` in `[0, 1]`, and back to PNG.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{imageops::FilterType, DynamicImage, GrayImage, RgbImage};

use crate::error::{Error, Result};

/// Largest side of an image perturb decodes, in pixels: a file that declares more is refused
/// before its pixels are allocated (a decompression bomb is a few bytes of PNG).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Most bytes the decoder may allocate for one image (512 MiB).
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;

/// Decode an image file's bytes within [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_ALLOC`].
fn decode(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let data_err = |e: image::ImageError| Error::Data {
        file: path.to_path_buf(),
        reason: format!("not a readable image: {e}"),
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| Error::Io {
            file: path.to_path_buf(),
            source,
        })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(data_err)
}

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
    let img = decode(&bytes, path)?;
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
    crate::export::write_image(&img, path)
}

/// The sample photos vendored in `assets/images/` (from scikit-image; licences in
/// `assets/images/LICENSES.md`): a cat, an espresso, a rocket, an astronaut, a motorcycle.
pub const SAMPLE_PHOTOS: [&str; 5] = [
    "chelsea.png",
    "coffee.png",
    "rocket.png",
    "astronaut.png",
    "motorcycle_left.png",
];

/// Path of a vendored sample photo, e.g. `sample_photo("chelsea.png")`: `assets/images/` under
/// [`home`](super::home) (`PERTURB_HOME`, or this crate's source tree).
pub fn sample_photo(name: &str) -> std::path::PathBuf {
    super::home().join("assets").join("images").join(name)
}

/// How a photo is brought to the model's square input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Resize (Catmull-Rom) so that the shorter side equals the size, then take the central
    /// square: every image is accepted, whatever its size or aspect ratio.
    ResizeCrop,
    /// The central square of the image as it is, without resampling (the image must be at least
    /// that large): the exact pixels, as a reference implementation sees them.
    Crop,
}

/// Read an 8-bit RGB photo (PNG, JPEG, …) for an ImageNet-style model: `[3, size, size]` `f32` in
/// `[0, 1]`, brought to size by `fit`. Pixels that are already on the 8-bit grid stay exactly
/// there, so a `size × size` PNG written by [`save_png`] reads back bit for bit.
///
/// ```
/// use candle_core::Device;
/// use perturb::data::{load_photo, sample_photo, Fit};
/// let path = sample_photo("chelsea.png"); // 451 × 300
/// let x = load_photo(path, 224, Fit::ResizeCrop, &Device::Cpu)?;
/// assert_eq!(x.dims(), &[3, 224, 224]);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Data`] when it is not a decodable image,
/// is greyscale, has 16-bit or float samples, or (with [`Fit::Crop`]) is smaller than `size`;
/// [`Error::InvalidParameter`] for `size` 0.
pub fn load_photo(
    path: impl AsRef<Path>,
    size: usize,
    fit: Fit,
    device: &Device,
) -> Result<Tensor> {
    let path = path.as_ref();
    if size == 0 {
        return Err(Error::InvalidParameter {
            name: "size",
            value: "0".into(),
            reason: "the input size must be at least 1",
        });
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let data_err = |reason: String| Error::Data {
        file: path.to_path_buf(),
        reason,
    };
    let img = decode(&bytes, path)?;
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(_) => img.to_rgb8(), // alpha dropped
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) => {
            return Err(data_err(
                "greyscale image; this model needs 8-bit RGB (convert it first)".into(),
            ))
        }
        other => {
            return Err(data_err(format!(
                "{:?} samples; this model needs 8-bit RGB (convert it first)",
                other.color()
            )))
        }
    };
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let s = size as u32;
    let rgb = match fit {
        Fit::Crop if w < size || h < size => {
            return Err(data_err(format!(
                "{w}x{h} is smaller than the {size}x{size} crop"
            )))
        }
        Fit::Crop => rgb,
        Fit::ResizeCrop if w.min(h) == size => rgb,
        Fit::ResizeCrop => {
            let scale = size as f64 / w.min(h) as f64;
            let nw = ((w as f64 * scale).round() as u32).max(s);
            let nh = ((h as f64 * scale).round() as u32).max(s);
            image::imageops::resize(&rgb, nw, nh, FilterType::CatmullRom)
        }
    };
    let (w, h) = (rgb.width(), rgb.height());
    let crop = image::imageops::crop_imm(&rgb, (w - s) / 2, (h - s) / 2, s, s).to_image();
    let t = Tensor::from_vec(crop.into_raw(), (size, size, 3), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    Ok((t / 255.0)?)
}
