//! The models the command line attacks: a shipped model or weights of a zoo architecture, or an
//! ONNX file (`--model FILE.onnx`), behind one type with what the commands need of either.

use std::fmt;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use perturb::eval::MemoryPlan;
use perturb::onnx::OnnxModel;
use perturb::zoo::{self, Arch, ZooModel};
use perturb::{Classifier, Normalized};

/// A loaded model.
#[derive(Clone)]
pub enum CliModel {
    Zoo(ZooModel),
    Onnx {
        model: Arc<OnnxModel>,
        kind: Kind,
        sha256: String,
        /// `--mean` and `--std`: `(x − mean) / std` before the graph.
        normalize: Option<Normalized<Identity>>,
    },
}

/// The identity, as the classifier inside a bare [`Normalized`]: the normalisation alone.
type Identity = fn(&Tensor) -> candle_core::Result<Tensor>;

/// Per-channel `--mean` and `--std` for a graph that does not normalise its input itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Normalization {
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

impl Normalization {
    /// `--mean` and `--std` as given (comma-separated numbers).
    pub fn parse(mean: Option<&str>, std: Option<&str>) -> Result<Self> {
        Ok(Self {
            mean: mean.map(crate::args::parse_floats).transpose()?,
            std: std.map(crate::args::parse_floats).transpose()?,
        })
    }
}

/// What a model takes and gives: a zoo architecture, or an ONNX graph's input shape and class
/// count (read at load by one forward pass), named like the zoo architecture of the same shapes
/// where there is one (MNIST digits, ImageNet classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Zoo(Arch),
    Onnx {
        shape: [usize; 3],
        classes: usize,
        like: Option<Arch>,
    },
}

impl CliModel {
    /// `--model` (and `--arch`, `--sha256`, `--input-shape`, `--mean`, `--std`) as the commands
    /// read them.
    pub fn resolve(
        model: &str,
        arch: Option<Arch>,
        sha256: Option<&str>,
        input_shape: Option<[usize; 3]>,
        normalization: &Normalization,
        device: &Device,
    ) -> Result<Self> {
        if !model.ends_with(".onnx") {
            if normalization.mean.is_some() || normalization.std.is_some() {
                bail!("--mean and --std are for ONNX files; the zoo's models normalise their inputs themselves");
            }
            let shipped = zoo::SHIPPED.iter().any(|s| s.name == model);
            if !shipped && arch.is_none() && std::path::Path::new(model).is_file() {
                bail!(
                    "--arch is required for weights given by path ({model}): mnist-linear, small-cnn or efficientnet-lite0"
                );
            }
            return Ok(CliModel::Zoo(zoo::resolve(model, arch, sha256, device)?));
        }
        let bytes = std::fs::read(model).map_err(|source| perturb::Error::Io {
            file: model.into(),
            source,
        })?;
        let hex = zoo::sha256_hex(&bytes);
        if let Some(want) = sha256 {
            if !want.eq_ignore_ascii_case(&hex) {
                return Err(perturb::Error::Checksum {
                    file: model.into(),
                    expected: want.to_string(),
                    got: hex,
                }
                .into());
            }
        }
        let onnx = OnnxModel::from_bytes(&bytes, std::path::Path::new(model), device)?;
        let shape = match (onnx.input_shape(), input_shape) {
            (_, Some(shape)) => shape,
            ([Some(c), Some(h), Some(w)], None) => [*c, *h, *w],
            _ => bail!("{model} leaves its input shape open; give --input-shape C,H,W"),
        };
        let [c, h, w] = shape;
        let normalize = match (&normalization.mean, &normalization.std) {
            (None, None) => None,
            (Some(mean), Some(std)) => {
                if mean.len() != c || std.len() != c {
                    bail!(
                        "--mean and --std need one value per input channel ({c}), got {} and {}",
                        mean.len(),
                        std.len()
                    );
                }
                let identity: Identity = |x| Ok(x.clone());
                Some(Normalized::new(identity, mean, std, device)?)
            }
            _ => bail!("give --mean and --std together"),
        };
        let logits = onnx.logits(&Tensor::zeros(
            (1, c, h, w),
            candle_core::DType::F32,
            device,
        )?)?;
        let Ok((1, classes)) = logits.dims2() else {
            bail!(
                "{model}: the output is {:?}, not [batch, classes]",
                logits.dims()
            );
        };
        let like = [Arch::SmallCnn, Arch::EfficientNetLite0]
            .into_iter()
            .find(|a| a.input_shape() == shape && a.num_classes() == classes);
        Ok(CliModel::Onnx {
            model: Arc::new(onnx),
            kind: Kind::Onnx {
                shape,
                classes,
                like,
            },
            sha256: hex,
            normalize,
        })
    }

    /// What the model takes and gives.
    pub fn arch(&self) -> Kind {
        match self {
            CliModel::Zoo(m) => Kind::Zoo(m.arch()),
            CliModel::Onnx { kind, .. } => *kind,
        }
    }

    /// The sha256 of the weights (shipped and ONNX models; `None` for unpinned weight files).
    pub fn sha256(&self) -> Option<&str> {
        match self {
            CliModel::Zoo(m) => m.sha256(),
            CliModel::Onnx { sha256, .. } => Some(sha256),
        }
    }
}

impl Classifier for CliModel {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            CliModel::Zoo(m) => m.logits(x),
            CliModel::Onnx {
                model,
                normalize: Some(normalize),
                ..
            } => model.logits(&normalize.logits(x)?),
            CliModel::Onnx { model, .. } => model.logits(x),
        }
    }
}

impl Kind {
    /// `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        match self {
            Kind::Zoo(a) => a.input_shape(),
            Kind::Onnx { shape, .. } => *shape,
        }
    }

    /// Logits per sample.
    pub fn num_classes(&self) -> usize {
        match self {
            Kind::Zoo(a) => a.num_classes(),
            Kind::Onnx { classes, .. } => *classes,
        }
    }

    /// The name of class `index` (digits, ImageNet names, or `class N`).
    pub fn class_name(&self, index: usize) -> Option<String> {
        match self {
            Kind::Zoo(a) | Kind::Onnx { like: Some(a), .. } => a.class_name(index),
            Kind::Onnx { classes, .. } => (index < *classes).then(|| format!("class {index}")),
        }
    }

    /// Whether it reads 28×28 grey digits (and can be evaluated on the vendored MNIST).
    pub fn is_mnist(&self) -> bool {
        self.input_shape() == [1, 28, 28]
    }

    /// The memory an attack of `samples` in batches of `batch` needs: a zoo architecture's
    /// measured working set, or for an ONNX graph that of the zoo architecture of its shapes, else
    /// 64 times the input per sample (EfficientNet-Lite0's ratio is 71).
    pub fn memory_plan(&self, samples: usize, batch: usize) -> MemoryPlan {
        match self {
            Kind::Zoo(a) | Kind::Onnx { like: Some(a), .. } => a.memory_plan(samples, batch),
            Kind::Onnx { shape, .. } => {
                let sample_bytes = (shape.iter().product::<usize>() * 4) as u64;
                MemoryPlan {
                    samples,
                    sample_bytes,
                    batch,
                    batch_bytes_per_sample: 64 * sample_bytes,
                }
            }
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Zoo(a) => write!(f, "{a}"),
            Kind::Onnx { .. } => f.write_str("onnx"),
        }
    }
}
