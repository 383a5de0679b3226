//! Shipped classifiers and their architectures, loaded only when their sha256 matches.
//!
//! The weights live in `models/` as safetensors with PyTorch-compatible names, each with a model
//! card `models/<name>.md`; `models/SHA256SUMS` (compiled into the library) pins every file.
//!
//! ```no_run
//! use candle_core::Device;
//! let model = perturb::zoo::load("mnist-cnn", &Device::Cpu)?; // refuses a tampered file
//! # Ok::<(), perturb::Error>(())
//! ```

mod arch;
mod card;
mod efficientnet;
mod imagenet;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Module, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};

pub use arch::{MnistLinear, ParamSpec, SmallCnn};
pub use card::{card, parse_count};
pub use efficientnet::EfficientNetLite0;
pub use imagenet::{class_index, imagenet_classes};

use crate::error::{Error, Result};
use crate::eval::MemoryPlan;

/// The expected sha256 of every shipped weights file, as `sha256sum` writes them.
const SHA256SUMS: &str = include_str!("../../models/SHA256SUMS");

/// [`Arch::bytes_per_sample`] of mnist-linear, small-cnn and efficientnet-lite0.
const BYTES_PER_SAMPLE: [u64; 3] = [64 << 10, 448 << 10, 54 << 20];

/// An architecture the zoo can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Softmax regression on 28×28 grey images, 10 classes.
    MnistLinear,
    /// The TRADES SmallCNN on 28×28 grey images, 10 classes.
    SmallCnn,
    /// EfficientNet-Lite0 on 224×224 RGB images, the 1,000 ImageNet classes.
    EfficientNetLite0,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::MnistLinear => "mnist-linear",
            Arch::SmallCnn => "small-cnn",
            Arch::EfficientNetLite0 => "efficientnet-lite0",
        })
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mnist-linear" | "linear" => Ok(Arch::MnistLinear),
            "small-cnn" | "smallcnn" | "cnn" => Ok(Arch::SmallCnn),
            "efficientnet-lite0" => Ok(Arch::EfficientNetLite0),
            _ => Err(Error::InvalidParameter {
                name: "arch",
                value: s.to_string(),
                reason: "expected mnist-linear, small-cnn or efficientnet-lite0",
            }),
        }
    }
}

impl Arch {
    /// Parameter names, shapes and fan-ins.
    pub fn params(&self) -> Vec<ParamSpec> {
        match self {
            Arch::MnistLinear => MnistLinear::params(),
            Arch::SmallCnn => SmallCnn::params(),
            Arch::EfficientNetLite0 => EfficientNetLite0::params(),
        }
    }

    /// Input shape `[C, H, W]` of one sample.
    pub fn input_shape(&self) -> [usize; 3] {
        match self {
            Arch::MnistLinear | Arch::SmallCnn => [1, 28, 28],
            Arch::EfficientNetLite0 => [3, 224, 224],
        }
    }

    /// Bytes one sample of a batch needs during an attack's forward and backward pass: the
    /// activations kept for the backward pass, the convolutions' column buffers, the gradient.
    /// Measured on this architecture as the slope of peak RSS over the batch size of a PGD run
    /// (`perturb attack --attack pgd --n B --batch-size B`, B = 100 and 1000 for MNIST, 4 and
    /// 16 photos for EfficientNet), rounded up by a quarter: 51 KiB, 356 KiB and 42.5 MiB
    /// measured on the 2-core development machine.
    pub fn bytes_per_sample(&self) -> u64 {
        match self {
            Arch::MnistLinear => BYTES_PER_SAMPLE[0],
            Arch::SmallCnn => BYTES_PER_SAMPLE[1],
            Arch::EfficientNetLite0 => BYTES_PER_SAMPLE[2],
        }
    }

    /// The memory an evaluation of `samples` inputs in batches of `batch` needs on this
    /// architecture; [`MemoryPlan::check_available`] refuses one that cannot fit.
    ///
    /// ```
    /// use perturb::zoo::Arch;
    /// let plan = Arch::SmallCnn.memory_plan(10_000, 10_000);
    /// assert!(plan.check(1 << 30).is_err()); // a batch of 10,000 does not fit in 1 GiB
    /// assert!(Arch::SmallCnn.memory_plan(10_000, 250).check(1 << 30).is_ok());
    /// ```
    pub fn memory_plan(&self, samples: usize, batch: usize) -> MemoryPlan {
        let [c, h, w] = self.input_shape();
        MemoryPlan {
            samples,
            sample_bytes: (c * h * w * 4) as u64,
            batch,
            batch_bytes_per_sample: self.bytes_per_sample(),
        }
    }

    /// Whether the model reads 28×28 MNIST digits (and can be evaluated on the vendored data).
    pub fn is_mnist(&self) -> bool {
        matches!(self, Arch::MnistLinear | Arch::SmallCnn)
    }

    /// Number of classes (logits per sample).
    pub fn num_classes(&self) -> usize {
        match self {
            Arch::MnistLinear | Arch::SmallCnn => 10,
            Arch::EfficientNetLite0 => 1000,
        }
    }

    /// The name of class `index`: the digit for MNIST, the ImageNet name otherwise.
    pub fn class_name(&self, index: usize) -> Option<String> {
        match self {
            Arch::MnistLinear | Arch::SmallCnn => (index < 10).then(|| index.to_string()),
            Arch::EfficientNetLite0 => imagenet_classes().get(index).map(|s| s.to_string()),
        }
    }

    /// Fresh parameters with PyTorch's default initialization, U(−1/√fan_in, 1/√fan_in), drawn
    /// from a generator seeded with `seed` (deterministic on every machine).
    ///
    /// # Errors
    /// Candle errors only.
    /// [`Error::InvalidParameter`] for EfficientNet-Lite0, which ships pretrained only.
    pub fn init(&self, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
        if *self == Arch::EfficientNetLite0 {
            return Err(Error::InvalidParameter {
                name: "arch",
                value: self.to_string(),
                reason: "only the MNIST architectures are trained from scratch here",
            });
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = HashMap::new();
        for p in self.params() {
            let bound = 1.0 / (p.fan_in as f32).sqrt();
            let n = p.shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            out.insert(p.name, Tensor::from_vec(v, p.shape, device)?);
        }
        Ok(out)
    }

    /// Build the model from named tensors, checking names and shapes.
    ///
    /// # Errors
    /// [`Error::Weights`] naming the first missing or misshapen tensor.
    pub fn build(&self, tensors: &HashMap<String, Tensor>, file: &Path) -> Result<ZooModel> {
        self.build_with(tensors, file, false)
    }

    /// [`build`](Self::build) for training: where `tensors` are [`Var`](candle_core::Var)s on
    /// the CPU, the MNIST architectures' layers compute their weight gradients with GEMMs
    /// ([`Conv2d::trainable`](crate::layers::Conv2d::trainable)) instead of candle's autograd,
    /// some 25 times faster for SmallCNN; [`build`](Self::build) keeps candle's autograd for
    /// variables, the reference the fast kernels are tested against.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_trainable(
        &self,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
    ) -> Result<ZooModel> {
        self.build_with(tensors, file, true)
    }

    fn build_with(
        &self,
        tensors: &HashMap<String, Tensor>,
        file: &Path,
        trainable: bool,
    ) -> Result<ZooModel> {
        for p in self.params() {
            let bad = |reason: String| Error::Weights {
                file: file.to_path_buf(),
                reason,
            };
            let t = tensors
                .get(&p.name)
                .ok_or_else(|| bad(format!("missing tensor {} for {self}", p.name)))?;
            if t.dims() != p.shape.as_slice() || t.dtype() != DType::F32 {
                return Err(bad(format!(
                    "tensor {} is {:?} {:?}, {self} needs f32 {:?}",
                    p.name,
                    t.dtype(),
                    t.dims(),
                    p.shape
                )));
            }
            // a NaN or infinite weight is a corrupted file, not a model: refused by name here
            // rather than as non-finite logits on every input later
            let host = t.flatten_all()?.to_vec1::<f32>()?;
            if let Some(i) = host.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "tensor {} holds a non-finite value ({}) at flat index {i}",
                    p.name, host[i]
                )));
            }
        }
        let missing = || Error::Weights {
            file: file.to_path_buf(),
            reason: "incomplete".into(),
        };
        let net = match self {
            Arch::MnistLinear => {
                Net::Linear(MnistLinear::from_tensors(tensors, trainable).ok_or_else(missing)?)
            }
            Arch::SmallCnn => Net::Cnn(Box::new(
                SmallCnn::from_tensors(tensors, trainable).ok_or_else(missing)?,
            )),
            Arch::EfficientNetLite0 => Net::Efficient(Box::new(
                EfficientNetLite0::from_tensors(tensors).ok_or_else(missing)?,
            )),
        };
        Ok(ZooModel {
            arch: *self,
            net,
            sha256: None,
        })
    }
}

#[derive(Debug, Clone)]
enum Net {
    Linear(MnistLinear),
    Cnn(Box<SmallCnn>),
    Efficient(Box<EfficientNetLite0>),
}

/// A model of the zoo: a candle `Module` (hence a [`Classifier`](crate::Classifier)) mapping
/// pixels in `[0, 1]` of shape `[N, ..arch.input_shape()]` to `arch.num_classes()` logits.
#[derive(Debug, Clone)]
pub struct ZooModel {
    arch: Arch,
    net: Net,
    sha256: Option<String>,
}

impl ZooModel {
    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The sha256 (hex) of the weights file the model was loaded from; `None` for a model
    /// built from tensors in memory. Reports carry it, so that a figure names the exact weights.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }

    /// Error unless `x` is a batch this model reads: `[N, ..arch.input_shape()]`.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// let model = perturb::zoo::load("mnist-linear", &Device::Cpu)?;
    /// let resized = Tensor::zeros((2, 1, 32, 32), DType::F32, &Device::Cpu)?;
    /// let err = model.check_input(&resized).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "input: expected shape [N, 1, 28, 28] (mnist-linear), got [2, 1, 32, 32]"
    /// );
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming the expected and the actual shape.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let want = self.arch.input_shape();
        if x.rank() == 4 && x.dims()[1..] == want {
            return Ok(());
        }
        Err(Error::ShapeMismatch {
            what: "input",
            expected: format!("[N, {}, {}, {}] ({})", want[0], want[1], want[2], self.arch),
            got: x.dims().to_vec(),
        })
    }
}

impl Module for ZooModel {
    /// The logits; an input of the wrong shape is refused up front with one plain message
    /// ([`ZooModel::check_input`]'s) instead of a layer's internal shape error and its
    /// backtrace.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Err(e) = self.check_input(x) {
            return Err(candle_core::Error::Msg(e.to_string()));
        }
        match &self.net {
            Net::Linear(m) => m.forward(x),
            Net::Cnn(m) => m.forward(x),
            Net::Efficient(m) => m.forward(x),
        }
    }
}

/// A model shipped in `models/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    /// Name used on the command line and in [`load`].
    pub name: &'static str,
    /// Its architecture.
    pub arch: Arch,
    /// Weights file inside `models/`.
    pub file: &'static str,
}

/// Every shipped model.
pub const SHIPPED: &[Shipped] = &[
    Shipped {
        name: "mnist-linear",
        arch: Arch::MnistLinear,
        file: "mnist-linear.safetensors",
    },
    Shipped {
        name: "mnist-cnn",
        arch: Arch::SmallCnn,
        file: "mnist-cnn.safetensors",
    },
    Shipped {
        name: "mnist-cnn-fgsm-rs",
        arch: Arch::SmallCnn,
        file: "mnist-cnn-fgsm-rs.safetensors",
    },
    Shipped {
        name: "mnist-cnn-trades",
        arch: Arch::SmallCnn,
        file: "mnist-cnn-trades.safetensors",
    },
    Shipped {
        name: "efficientnet-lite0",
        arch: Arch::EfficientNetLite0,
        file: "efficientnet-lite0.safetensors",
    },
];

/// The folder of the shipped weights and cards: `models/` under
/// [`data::home`](crate::data::home) (`PERTURB_HOME`, or this crate's source tree). The
/// checksums in `models/SHA256SUMS` are compiled in and pin the files wherever they lie.
pub fn models_dir() -> PathBuf {
    crate::data::home().join("models")
}

/// The pinned sha256 of a file in `models/`, if any.
pub fn pinned_sha256(file: &str) -> Option<&'static str> {
    SHA256SUMS.lines().find_map(|line| {
        let (hash, name) = line.split_once(char::is_whitespace)?;
        (name.trim_start().trim_start_matches('*') == file).then_some(hash)
    })
}

/// Find a shipped model by name.
///
/// # Errors
/// [`Error::UnknownModel`] listing the known names.
pub fn shipped(name: &str) -> Result<Shipped> {
    SHIPPED
        .iter()
        .find(|s| s.name == name)
        .copied()
        .ok_or_else(|| unknown_model(name))
}

/// Models shipped under another name before: (old name, new name, why).
pub const RENAMED: [(&str, &str, &str); 1] = [(
    "mnist-cnn-robust",
    "mnist-cnn-fgsm-rs",
    "single-step (FGSM-RS) training masks its gradients: 85.3 % against PGD-40 but 54.8 % \
     against the standard suite on the first 1,000 digits; see models/mnist-cnn-fgsm-rs.md. \
     The robust reference is now mnist-cnn-trades",
)];

/// The error for a name the zoo does not ship: [`Error::RenamedModel`] for a former name,
/// [`Error::UnknownModel`] listing the shipped names otherwise.
fn unknown_model(name: &str) -> Error {
    if let Some((_, now, why)) = RENAMED.iter().find(|(old, _, _)| *old == name) {
        return Error::RenamedModel {
            name: name.to_string(),
            now,
            why,
        };
    }
    Error::UnknownModel {
        name: name.to_string(),
        known: SHIPPED
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Load a shipped model, verifying its sha256 against `models/SHA256SUMS`.
///
/// # Errors
/// [`Error::UnknownModel`], [`Error::Io`], [`Error::Checksum`] for a modified file, or
/// [`Error::Weights`].
pub fn load(name: &str, device: &Device) -> Result<ZooModel> {
    let s = shipped(name)?;
    let path = models_dir().join(s.file);
    let expected = pinned_sha256(s.file).ok_or_else(|| Error::Weights {
        file: path.clone(),
        reason: "no sha256 pinned in models/SHA256SUMS".into(),
    })?;
    load_file(s.arch, &path, Some(expected), device)
}

/// Load weights of architecture `arch` from a safetensors file, verifying its sha256 when
/// `expected_sha256` (hex) is given.
///
/// # Errors
/// [`Error::Io`], [`Error::Checksum`], [`Error::Weights`] for a malformed file or tensors that
/// do not fit the architecture.
pub fn load_file(
    arch: Arch,
    path: &Path,
    expected_sha256: Option<&str>,
    device: &Device,
) -> Result<ZooModel> {
    let bytes = read_weights(path)?;
    let got = sha256_hex(&bytes);
    if let Some(expected) = expected_sha256 {
        if !got.eq_ignore_ascii_case(expected.trim()) {
            return Err(Error::Checksum {
                file: path.to_path_buf(),
                expected: expected.trim().to_string(),
                got,
            });
        }
    }
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::Weights {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut model = arch.build(&tensors, path)?;
    model.sha256 = Some(got);
    Ok(model)
}

/// Largest weights file read (4 GiB): far above any zoo architecture's, far below a mistake
/// such as `/dev/zero` or a disk image.
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// Largest safetensors header accepted (100 MiB, the format's own recommendation).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The bytes of a safetensors file, checked before they are read: a regular file of at most
/// [`MAX_WEIGHTS_BYTES`] whose declared header fits [`MAX_HEADER_BYTES`] and the file.
fn read_weights(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| Error::Io {
        file: path.to_path_buf(),
        source,
    };
    let weights = |reason: String| Error::Weights {
        file: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(weights("not a regular file".into()));
    }
    let len = meta.len();
    if len > MAX_WEIGHTS_BYTES {
        return Err(weights(format!(
            "{len} bytes, more than the {MAX_WEIGHTS_BYTES} a weights file may have"
        )));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = [0u8; 8];
    file.read_exact(&mut head)
        .map_err(|_| weights(format!("{len} bytes, too short for a safetensors header")))?;
    let header = u64::from_le_bytes(head);
    if header > MAX_HEADER_BYTES || header > len - 8 {
        return Err(weights(format!(
            "declares a {header}-byte safetensors header in a {len}-byte file"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&head);
    file.take(len - 8).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Load a model named on a command line: a shipped name (verified against `SHA256SUMS`), or a
/// path to safetensors weights of architecture `arch`, verified when `expected_sha256` is given.
///
/// ```
/// use candle_core::Device;
/// use perturb::zoo;
/// let model = zoo::resolve("mnist-cnn", None, None, &Device::Cpu)?;
/// assert_eq!(model.arch(), zoo::Arch::SmallCnn);
/// assert!(zoo::resolve("no-such-model", None, None, &Device::Cpu).is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::UnknownModel`] for a name that is neither shipped nor an existing file,
/// [`Error::InvalidParameter`] for a path without `arch`, and the errors of [`load`] and
/// [`load_file`].
pub fn resolve(
    model: &str,
    arch: Option<Arch>,
    expected_sha256: Option<&str>,
    device: &Device,
) -> Result<ZooModel> {
    if SHIPPED.iter().any(|s| s.name == model) {
        return load(model, device);
    }
    let path = Path::new(model);
    let looks_like_path = model.contains(std::path::MAIN_SEPARATOR) || model.contains('.');
    if !path.exists() && looks_like_path {
        return Err(Error::Io {
            file: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such weights file"),
        });
    }
    if !path.exists() {
        return Err(unknown_model(model));
    }
    let arch = arch.ok_or(Error::InvalidParameter {
        name: "arch",
        value: model.to_string(),
        reason: "weights given by path need their architecture (mnist-linear, small-cnn or efficientnet-lite0)",
    })?;
    load_file(arch, path, expected_sha256, device)
}

/// Save named tensors as safetensors, written whole and renamed into place (a reader never
/// sees half a file); a replaced file gets the mode a new file would.
///
/// # Errors
/// [`Error::Io`] when the tensors cannot be serialised or the file cannot be written.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let bytes = safetensors::tensor::serialize(tensors, None).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    crate::export::write_atomic(path, &bytes)
}

/// Lowercase hex sha256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
