//! Data sets as tensors: IDX files (MNIST and its relatives) and the MNIST copy vendored in
//! `data/mnist/`.
//!
//! Images come out as `[N, 1, H, W]` `f32` batches in `[0, 1]`, labels as `u32` `[N]`, the
//! form every [`Attack`](crate::Attack) takes.
//!
//! ```
//! use candle_core::Device;
//! use perturb::data::{batches, Mnist};
//!
//! let mnist = Mnist::load_default(&Device::Cpu)?;
//! assert_eq!(mnist.test_images.dims(), [10_000, 1, 28, 28]);
//! for range in batches(mnist.len_test(), 4096)? {
//!     let x = mnist.test_images.narrow(0, range.start, range.len())?;
//!     let y = mnist.test_labels.narrow(0, range.start, range.len())?;
//!     assert_eq!(x.dim(0)?, y.dim(0)?);
//! }
//! # Ok::<(), perturb::Error>(())
//! ```

mod idx;
mod image;
mod labels;
mod verify;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

pub use idx::{images_to_tensor, labels_to_tensor, read_idx, IdxArray, MAX_IDX_BYTES};
pub use image::{
    load_image, load_photo, sample_photo, save_png, Fit, MAX_IMAGE_ALLOC, MAX_IMAGE_SIDE,
    SAMPLE_PHOTOS,
};
pub use labels::{read_labels, LabelledFile, LABELS_FILE};
pub use verify::{verify, FileCheck, FileStatus};

/// File names of the four MNIST files, in the order train images, train labels, test images,
/// test labels (the official names, without the `.gz` that the vendored copies carry).
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The environment variable that names the directory holding the shipped files: see [`home`].
pub const HOME_ENV: &str = "PERTURB_HOME";

/// The directory holding perturb's shipped files: `models/` (weights and cards), `data/mnist/`
/// and `assets/images/` (the sample photos).
///
/// It is the value of `PERTURB_HOME` when that is set and not empty, else this crate's source
/// tree as compiled in (`CARGO_MANIFEST_DIR`), which is the checkout for `cargo run`, `cargo test`
/// and a binary installed with `cargo install --path .` from a checkout that still exists.
/// There is no per-file fallback: with `PERTURB_HOME` set, a file missing there is missing.
/// [`zoo::models_dir`](crate::zoo::models_dir), [`Mnist::default_dir`] and [`sample_photo`] all
/// resolve through this function, at each call.
///
/// ```
/// let mnist = perturb::data::home().join("data/mnist");
/// # if std::env::var_os("PERTURB_HOME").is_none() {
/// assert!(mnist.join("SHA256SUMS").is_file());
/// # }
/// ```
pub fn home() -> PathBuf {
    match std::env::var_os(HOME_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// Number of MNIST classes: the digits 0 to 9.
const DIGITS: u8 = 10;

/// MNIST: 60,000 training and 10,000 test digits, each a 28×28 grey image.
///
/// The vendored copy in `data/mnist/` (see its README.md for source, licence and checksums) is
/// byte-for-byte the official data set; [`Mnist::load`] also reads Fashion-MNIST or KMNIST,
/// which share the format and file names.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// Training images, `[60000, 1, 28, 28]` `f32` equal to `pixel / 255`.
    pub train_images: Tensor,
    /// Training labels, `[60000]` `u32` in `0..10`.
    pub train_labels: Tensor,
    /// Test images, `[10000, 1, 28, 28]` `f32` equal to `pixel / 255`.
    pub test_images: Tensor,
    /// Test labels, `[10000]` `u32` in `0..10`.
    pub test_labels: Tensor,
}

impl Mnist {
    /// The directory of the vendored copy in this crate's source tree, ignoring `PERTURB_HOME`.
    #[deprecated(note = "use Mnist::default_dir(), which honours PERTURB_HOME")]
    pub const DEFAULT_DIR: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist");

    /// The directory of the vendored copy: `data/mnist/` under [`home`] (`PERTURB_HOME`, or this
    /// crate's source tree).
    pub fn default_dir() -> PathBuf {
        home().join("data").join("mnist")
    }

    /// Load the four MNIST files from `dir` onto `device`.
    ///
    /// Each file is looked for under its official name with `.gz` appended, then without
    /// (see [`MNIST_FILES`]); either may be gzip'd or plain, which is told by content.
    ///
    /// ```
    /// use candle_core::Device;
    /// use perturb::data::Mnist;
    ///
    /// let mnist = Mnist::load(Mnist::default_dir(), &Device::Cpu)?;
    /// assert_eq!(mnist.len_train(), 60_000);
    /// assert_eq!(mnist.test_labels.to_vec1::<u32>()?[..3], [7, 2, 1]);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`read_idx`]; [`Error::Data`] when an image file is not 3-D, a label file not
    /// 1-D, or a label not a digit; [`Error::CountMismatch`] when a split's image and label
    /// counts differ; [`Error::Candle`] when the device fails.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Mnist> {
        let dir = dir.as_ref();
        let [train_x, train_y, test_x, test_y] = MNIST_FILES.map(|name| locate(dir, name));
        let (train_images, train_labels) = load_split(&train_x, &train_y, device)?;
        let (test_images, test_labels) = load_split(&test_x, &test_y, device)?;
        Ok(Mnist {
            train_images,
            train_labels,
            test_images,
            test_labels,
        })
    }

    /// Load the vendored copy in [`Mnist::default_dir`] onto `device`.
    ///
    /// # Errors
    /// As [`Mnist::load`]; with an intact checkout only [`Error::Candle`] is possible.
    pub fn load_default(device: &Device) -> Result<Mnist> {
        let dir = Self::default_dir();
        for name in MNIST_FILES {
            verify_vendored(&locate(&dir, name))?;
        }
        Mnist::load(dir, device)
    }

    /// Only the test split (`[10000, 1, 28, 28]` images, `[10000]` labels) of the vendored copy,
    /// without decoding the 60,000 training images.
    ///
    /// # Errors
    /// As [`Mnist::load`].
    pub fn load_test_default(device: &Device) -> Result<(Tensor, Tensor)> {
        let dir = Self::default_dir();
        let [_, _, test_x, test_y] = MNIST_FILES.map(|name| locate(&dir, name));
        verify_vendored(&test_x)?;
        verify_vendored(&test_y)?;
        load_split(&test_x, &test_y, device)
    }

    /// Number of training images.
    pub fn len_train(&self) -> usize {
        self.train_images.dims().first().copied().unwrap_or(0)
    }

    /// Number of test images.
    pub fn len_test(&self) -> usize {
        self.test_images.dims().first().copied().unwrap_or(0)
    }
}

/// `dir/name.gz` if it exists, else `dir/name` if that exists, else `dir/name.gz` (so that the
/// error names the vendored form).
/// The sha256 of the vendored MNIST files (`data/mnist/SHA256SUMS`, compiled in).
const MNIST_SHA256SUMS: &str = include_str!("../../data/mnist/SHA256SUMS");

/// Error unless a vendored MNIST file has its pinned sha256: a tampered but well-formed copy
/// (every pixel 255, say) would otherwise be evaluated without complaint. Files the list does
/// not name (an uncompressed copy) are read as they are.
fn verify_vendored(path: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(expected) = MNIST_SHA256SUMS.lines().find_map(|line| {
        let (hash, file) = line.split_once(char::is_whitespace)?;
        (file.trim() == name).then_some(hash)
    }) else {
        return Ok(());
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let got: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != expected {
        return Err(Error::Checksum {
            file: path.to_path_buf(),
            expected: expected.to_string(),
            got,
        });
    }
    Ok(())
}

fn locate(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if !gz.exists() && plain.exists() {
        plain
    } else {
        gz
    }
}

/// Read one split's images and labels and check that they belong together.
fn load_split(images: &Path, labels: &Path, device: &Device) -> Result<(Tensor, Tensor)> {
    let x = read_idx(images)?;
    let y = read_idx(labels)?;
    let wrong_rank = |file: &Path, want: &str, dims: &[usize]| Error::Data {
        file: file.to_path_buf(),
        reason: format!("expected {want}, got an array of dimensions {dims:?}"),
    };
    if x.dims.len() != 3 {
        return Err(wrong_rank(images, "images [N, rows, cols]", &x.dims));
    }
    if y.dims.len() != 1 {
        return Err(wrong_rank(labels, "labels [N]", &y.dims));
    }
    if x.dims[0] != y.dims[0] {
        return Err(Error::CountMismatch {
            images_file: images.to_path_buf(),
            images: x.dims[0],
            labels_file: labels.to_path_buf(),
            labels: y.dims[0],
        });
    }
    if let Some((index, class)) = y.data.iter().enumerate().find(|(_, &c)| c >= DIGITS) {
        return Err(Error::Data {
            file: labels.to_path_buf(),
            reason: format!("label {class} at index {index} is not a digit 0-9"),
        });
    }
    Ok((images_to_tensor(&x, device)?, labels_to_tensor(&y, device)?))
}

/// Consecutive index ranges of at most `batch_size` covering `0..n`; the last may be shorter.
///
/// ```
/// let ranges: Vec<_> = perturb::data::batches(10, 4)?.collect();
/// assert_eq!(ranges, [0..4, 4..8, 8..10]);
/// assert_eq!(perturb::data::batches(0, 4)?.count(), 0);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] when `batch_size` is zero.
pub fn batches(n: usize, batch_size: usize) -> Result<impl Iterator<Item = Range<usize>>> {
    if batch_size == 0 {
        return Err(Error::InvalidParameter {
            name: "batch_size",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    Ok((0..n)
        .step_by(batch_size)
        .map(move |start| start..start.saturating_add(batch_size).min(n)))
}
