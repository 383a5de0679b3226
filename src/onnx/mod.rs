//! ONNX image classifiers as [`Classifier`](crate::Classifier)s with correct input gradients.
//!
//! The file is parsed by a hand-written protobuf decoder (`proto.rs`: no `protoc`, nothing
//! generated at build time), its weights decoded once at load onto the model's device, and the
//! graph evaluated with perturb's own layers: convolutions and fully connected layers take the
//! fast kernels of [`layers`](crate::layers) with a ReLU or ReLU6 after them fused, depthwise
//! convolutions the depthwise kernel (with the graph's padding, even or not), max-pooling routes
//! its gradient to the maximum (candle's `max_pool2d` gradient is a quarter of the truth), and a
//! graph that is a plain run of those layers (as `torch.onnx.export` writes a SmallCNN) runs as
//! one op, exactly as the shipped model does. The integer shape arithmetic exporters write
//! around paddings is evaluated once at load. Operators outside the supported set are a typed
//! error that names them all.
//!
//! ```
//! use candle_core::Device;
//! use perturb::{data::Mnist, onnx::OnnxModel, Attack, Budget, Goal, Pgd};
//! // SmallCNN as `torch.onnx.export` writes it (scripts/export_onnx.py)
//! let model = OnnxModel::load("tests/fixtures/onnx/mnist-cnn.onnx", &Device::Cpu)?;
//! assert_eq!(model.op_counts()["Conv"], 4);
//! assert_eq!(model.input_shape(), [Some(1), Some(28), Some(28)]);
//! let (images, labels) = Mnist::load_test_default(&Device::Cpu)?;
//! let (x, y) = (images.narrow(0, 0, 8)?, labels.narrow(0, 0, 8)?);
//! let adv = Pgd::new(Budget::linf(0.3)?).run(&model, &x, &Goal::untargeted(&y))?;
//! assert!(adv.success_rate() > 0.5);
//! # Ok::<(), perturb::Error>(())
//! ```

mod ops;
mod proto;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::layers::{forward_chain, ChainLayer};
use ops::{Op, Step};

/// The operators [`OnnxModel`] evaluates. Those of integer shape arithmetic (`Shape`, `Gather`,
/// `Slice`, `Cast`, `ConstantOfShape`, `Unsqueeze`, …) are evaluated once at load where their
/// inputs are constants, as exporters write them for paddings.
pub const SUPPORTED_OPS: [&str; 34] = [
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Squeeze",
    "Sub",
    "Sum",
    "Transpose",
    "Unsqueeze",
];

/// Operators through which no gradient flows (comparisons, rounding, arg-max, integer casts): a
/// model that uses them on the path from input to logits masks gradients, and gradient attacks
/// on it overstate its robustness.
pub const ZERO_GRADIENT_OPS: [&str; 16] = [
    "And",
    "ArgMax",
    "ArgMin",
    "Ceil",
    "Equal",
    "Floor",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "NonZero",
    "Not",
    "Or",
    "Round",
    "Sign",
    "TopK",
];

/// One graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSummary {
    /// Its name in the graph.
    pub name: String,
    /// Element type (`float32`, `uint8`, …).
    pub elem_type: &'static str,
    /// Dimensions, `None` where symbolic (a batch size); empty when the file gives no shape.
    pub shape: Vec<Option<i64>>,
}

/// What an ONNX file holds, read without building the model: what `perturb inspect` reports,
/// also for graphs [`OnnxModel`] refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphSummary {
    /// The program that wrote the file (`pytorch 2.15.0`).
    pub producer: String,
    /// The default-domain operator set version.
    pub opset: Option<i64>,
    /// Inputs that are not weights.
    pub inputs: Vec<ValueSummary>,
    /// Outputs.
    pub outputs: Vec<ValueSummary>,
    /// Nodes per operator.
    pub op_counts: BTreeMap<String, usize>,
    /// Operators [`OnnxModel`] does not evaluate.
    pub unsupported: Vec<String>,
    /// Operators without gradients ([`ZERO_GRADIENT_OPS`], and casts to integer types).
    pub zero_gradient: Vec<String>,
}

/// Read an ONNX file's structure: inputs, outputs, operator counts, the operators perturb does
/// not support and those without gradients.
///
/// ```
/// let s = perturb::onnx::scan("tests/fixtures/onnx/bad-unsupported.onnx")?;
/// assert_eq!(s.unsupported, ["Erf"]);
/// assert_eq!(s.inputs[0].shape, [None, Some(1), Some(28), Some(28)]);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Onnx`] when it is not a readable model.
pub fn scan(path: impl AsRef<Path>) -> Result<GraphSummary> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let model = proto::decode_model(&bytes).map_err(|e| onnx_error(path, e.to_string()))?;
    Ok(summarize(&model))
}

/// The [`GraphSummary`] of a decoded model: what [`scan`] reports and what
/// [`OnnxModel::from_bytes`] checks before it builds anything.
fn summarize(model: &proto::Model) -> GraphSummary {
    let graph = &model.graph;
    let weights: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let summary = |v: &proto::ValueInfo| ValueSummary {
        name: v.name.clone(),
        elem_type: ops::type_name(v.elem_type),
        shape: v.shape.clone(),
    };
    let mut op_counts = BTreeMap::new();
    let (mut unsupported, mut zero_gradient) = (Vec::new(), Vec::new());
    // values computed from the input's values (a `Shape` reads only its sizes): a
    // gradient-free operator matters there, not in the shape arithmetic beside it
    let mut from_input: HashSet<&str> = graph
        .input
        .iter()
        .filter(|i| !weights.contains(i.name.as_str()))
        .map(|i| i.name.as_str())
        .collect();
    for n in &graph.node {
        *op_counts.entry(n.op_type.clone()).or_insert(0) += 1;
        let op = n.op_type.as_str();
        if !SUPPORTED_OPS.contains(&op) && !unsupported.contains(&n.op_type) {
            unsupported.push(n.op_type.clone());
        }
        let on_path = op != "Shape" && n.input.iter().any(|i| from_input.contains(i.as_str()));
        if !on_path {
            continue;
        }
        from_input.extend(n.output.iter().map(String::as_str));
        let to_integer = op == "Cast"
            && n.attribute
                .iter()
                .any(|a| a.name == "to" && a.i.is_some_and(|t| ![1, 10, 11, 16].contains(&t)));
        if (ZERO_GRADIENT_OPS.contains(&op) || to_integer) && !zero_gradient.contains(&n.op_type) {
            zero_gradient.push(n.op_type.clone());
        }
    }
    unsupported.sort();
    zero_gradient.sort();
    GraphSummary {
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        opset: model
            .opset_import
            .iter()
            .find(|(domain, _)| domain.is_empty() || domain == "ai.onnx")
            .map(|(_, v)| *v),
        inputs: graph
            .input
            .iter()
            .filter(|i| !weights.contains(i.name.as_str()))
            .map(summary)
            .collect(),
        outputs: graph.output.iter().map(summary).collect(),
        op_counts,
        unsupported,
        zero_gradient,
    }
}

/// An ONNX image classifier: one `f32` input `[N, C, H, W]`, one output `[N, K]` of logits.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    file: PathBuf,
    input: String,
    output: String,
    /// Whether the graph's final Softmax is skipped ([`ends_in_softmax`](Self::ends_in_softmax)).
    softmax_removed: bool,
    /// `[C, H, W]` as the graph declares them (`None`: symbolic).
    input_shape: Vec<Option<usize>>,
    steps: Vec<Step>,
    /// Constants the steps read by name (initializers not folded into a layer).
    constants: HashMap<String, Tensor>,
    op_counts: BTreeMap<String, usize>,
}

fn onnx_error(file: &Path, reason: impl Into<String>) -> Error {
    Error::Onnx {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

impl OnnxModel {
    /// Read and check an `.onnx` file, decoding its weights onto `device`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Onnx`] for a truncated or corrupted
    /// file, external weights, a graph with other than one input and one output, an input that
    /// is not `f32` of rank 4; [`Error::OnnxUnsupported`] naming every unsupported operator.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path, device)
    }

    /// [`load`](Self::load) from the file's bytes; `file` names it in errors.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_bytes(bytes: &[u8], file: &Path, device: &Device) -> Result<Self> {
        let model = proto::decode_model(bytes).map_err(|e| onnx_error(file, e.to_string()))?;
        let summary = summarize(&model);
        let graph = model.graph;
        let initializers: HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(onnx_error(
                file,
                format!(
                    "the graph has {} inputs ({}); perturb attacks graphs with one image input",
                    names.len(),
                    names.join(", ")
                ),
            ));
        };
        if input.elem_type != 1 {
            return Err(onnx_error(
                file,
                format!(
                    "input {:?} has element type {} ({}), not float32",
                    input.name,
                    input.elem_type,
                    ops::type_name(input.elem_type)
                ),
            ));
        }
        if input.has_shape && input.shape.len() != 4 {
            return Err(onnx_error(
                file,
                format!(
                    "input {:?} has rank {}, not 4 ([N, C, H, W])",
                    input.name,
                    input.shape.len()
                ),
            ));
        }
        let [output] = graph.output.as_slice() else {
            return Err(onnx_error(
                file,
                format!(
                    "the graph has {} outputs; a classifier has one (the logits)",
                    graph.output.len()
                ),
            ));
        };
        if !summary.unsupported.is_empty() {
            return Err(Error::OnnxUnsupported {
                file: file.to_path_buf(),
                ops: summary.unsupported,
            });
        }
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            let tensor =
                ops::decode_tensor(t, device).map_err(|reason| onnx_error(file, reason))?;
            constants.insert(t.name.clone(), tensor);
        }
        let mut steps = ops::build(
            &graph.node,
            summary.opset.unwrap_or(1),
            &mut constants,
            device,
        )
        .map_err(|reason| onnx_error(file, reason))?;
        // a classifier exported with its Softmax gives probabilities: the losses and margins of
        // the attacks want the scores before it (the same class order, the same arg-max)
        let mut output = output.name.clone();
        let mut softmax_removed = false;
        if let Some(last) = steps.last() {
            if last.output == output && matches!(last.op, Op::Softmax { axis: 1 | -1, .. }) {
                output = last.inputs[0].clone();
                steps.pop();
                softmax_removed = true;
            }
        }
        let input_shape = input
            .shape
            .iter()
            .skip(1)
            .map(|d| d.and_then(|d| usize::try_from(d).ok()).filter(|d| *d > 0))
            .collect();
        Ok(Self {
            file: file.to_path_buf(),
            input: input.name.clone(),
            output,
            softmax_removed,
            input_shape,
            steps,
            constants,
            op_counts: summary.op_counts,
        })
    }

    /// `[C, H, W]` as the graph declares them (`None` where symbolic).
    pub fn input_shape(&self) -> &[Option<usize>] {
        &self.input_shape
    }

    /// Whether the graph ends in a Softmax over the classes, which the model skips: its
    /// [`logits`](crate::Classifier::logits) are the scores before it, as attacks' losses need
    /// (cross-entropy of probabilities would be a softmax of a softmax, with vanishing gradients).
    /// The predicted classes are the same.
    pub fn ends_in_softmax(&self) -> bool {
        self.softmax_removed
    }

    /// How many nodes of each operator the graph has.
    pub fn op_counts(&self) -> &BTreeMap<String, usize> {
        &self.op_counts
    }

    /// The file the model came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The graph as one chain op, when it is a plain run of convolutions, max-pools and fully
    /// connected layers from the input to the output.
    fn chain(&self) -> Option<Vec<ChainLayer<'_>>> {
        let mut current = self.input.as_str();
        let mut layers = Vec::new();
        for step in &self.steps {
            if step.inputs.first().map(String::as_str) != Some(current) {
                return None;
            }
            match &step.op {
                Op::Conv(conv) if conv.is_fast() => layers.push(ChainLayer::Conv(conv)),
                Op::Linear(fc) if fc.is_fast() => layers.push(ChainLayer::Linear(fc)),
                Op::MaxPool { kernel, stride } => {
                    layers.push(ChainLayer::MaxPool(*kernel, *stride))
                }
                // a fully connected layer flattens its input itself
                Op::Flatten { axis: 1 } | Op::Identity => {}
                _ => return None,
            }
            current = &step.output;
        }
        (current == self.output && !layers.is_empty()).then_some(layers)
    }
}

/// Scores `[N, K, 1, 1]` (a convolutional head, as Caffe2's SqueezeNet ends) as `[N, K]`.
fn squeeze_scores(out: Tensor) -> candle_core::Result<Tensor> {
    match out.dims() {
        [n, k, rest @ ..] if !rest.is_empty() && rest.iter().all(|&d| d == 1) => {
            out.reshape((*n, *k))
        }
        _ => Ok(out),
    }
}

impl crate::Classifier for OnnxModel {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(layers) = self.chain() {
            return forward_chain(x, &layers);
        }
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(self.input.as_str(), x.clone());
        for step in &self.steps {
            let args: Vec<&Tensor> = step
                .inputs
                .iter()
                .map(|name| {
                    values
                        .get(name.as_str())
                        .or_else(|| self.constants.get(name))
                        .ok_or_else(|| {
                            candle_core::Error::Msg(format!(
                                "onnx: value {name:?} is used before it is computed"
                            ))
                        })
                })
                .collect::<candle_core::Result<_>>()?;
            let out = step.op.apply(&args)?;
            values.insert(step.output.as_str(), out);
        }
        let out = values.remove(self.output.as_str()).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "onnx: the output {:?} is never computed",
                self.output
            ))
        })?;
        squeeze_scores(out)
    }
}
