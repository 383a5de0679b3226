//! ONNX nodes to evaluation steps: each supported operator as perturb's layers or candle ops,
//! built once at load (weights decoded, ReLUs fused into the layer before them).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::Conv2dConfig;

use super::proto::{Attribute, Node, TensorData};
use crate::layers::{max_pool2d, Conv2d, DepthwiseConv2d, Linear, Padding};

/// One node as it is evaluated: the operator, the names of its inputs, its output's name.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub(super) op: Op,
    pub(super) inputs: Vec<String>,
    pub(super) output: String,
}

/// An operator with its weights and attributes resolved.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// A convolution (with a fused ReLU or ReLU6 if one followed it).
    Conv(Conv2d),
    /// A depthwise convolution (one filter per channel), ReLU6 fused likewise.
    Depthwise(DepthwiseConv2d),
    /// A fully connected layer from `Gemm` or `MatMul` by a constant (ReLU fused likewise).
    Linear(Linear),
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    /// Max-pooling of an input padded by `pad` on every side (the padding never wins).
    PaddedMaxPool {
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    /// Average pooling; the divisor counts the padding only with `include_pad`.
    AveragePool {
        kernel: usize,
        stride: usize,
        pad: usize,
        include_pad: bool,
    },
    HardSwish,
    ReduceMean {
        axes: Vec<i64>,
        keep: bool,
    },
    /// Zero padding `[begin…, end…]` per dimension, as ONNX orders them.
    Pad(Vec<usize>),
    Flatten {
        axis: usize,
    },
    Identity,
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Clip {
        min: f32,
        max: f32,
    },
    /// Softmax over `axis`; with `coerce_2d` (before opset 13) over all dimensions from `axis`.
    Softmax {
        axis: i64,
        coerce_2d: bool,
    },
    GlobalAveragePool,
    /// `x · scale + shift` per channel (`[1, C, 1, 1]`): an inference-mode batch norm.
    Affine {
        scale: Tensor,
        shift: Tensor,
    },
    Binary(BinaryKind),
    MatMul,
    /// Reshape to the shape its second input holds (0 keeps a dimension, −1 is inferred).
    Reshape,
    /// Reshape to a shape given as an attribute (before opset 5).
    ReshapeTo(Vec<i64>),
    Transpose(Vec<usize>),
    Concat(i64),
    /// The sum of all inputs.
    Sum,
    /// The input's dimensions as `i64`.
    Shape,
    /// Entries along an axis at the indices of the second input.
    Gather(i64),
    Unsqueeze(Vec<i64>),
    /// Remove the given axes (every axis of size 1 when `None`).
    Squeeze(Option<Vec<i64>>),
    /// A tensor of the shape the input holds, filled with one value.
    ConstantOfShape(Tensor),
    Cast(DType),
    /// Slicing by `(starts, ends, axes)` attributes (before opset 10), else by the inputs
    /// `starts, ends[, axes[, steps]]`.
    Slice(Option<SliceAttrs>),
}

/// `Slice`'s operands as attributes (before opset 10).
#[derive(Debug, Clone)]
pub(super) struct SliceAttrs {
    starts: Vec<i64>,
    ends: Vec<i64>,
    axes: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

/// The name of an ONNX `TensorProto.DataType`, for errors.
pub(super) fn type_name(t: i32) -> &'static str {
    match t {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        6 => "int32",
        7 => "int64",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        16 => "bfloat16",
        _ => "another type",
    }
}

type Built<T> = std::result::Result<T, String>;

/// The largest padding a graph may ask for (a corrupted file would otherwise allocate at will).
const MAX_PAD: usize = 1 << 12;

/// The most elements a tensor computed at load or from shape arithmetic may have (1 GiB of f32).
const MAX_ELEMENTS: usize = 1 << 28;

/// A constant tensor: `f32` from float data, `i64` from `int64` and `int32` data.
pub(super) fn decode_tensor(t: &TensorData, device: &Device) -> Built<Tensor> {
    if t.external {
        return Err(format!(
            "tensor {:?} keeps its data in an external file, which perturb does not read",
            t.name
        ));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("tensor {:?} has a negative dimension", t.name))
        })
        .collect::<Built<_>>()?;
    let count: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor {:?} is too large", t.name))?;
    let ints: Option<Vec<i64>> = match t.data_type {
        7 => Some(int64_values(t)?),
        6 => Some(t.int32_data.clone()),
        _ => None,
    };
    let holds = |len: usize| -> Built<()> {
        match len == count {
            true => Ok(()),
            false => Err(format!(
                "tensor {:?} holds {len} values for shape {dims:?}",
                t.name
            )),
        }
    };
    if let Some(ints) = ints {
        holds(ints.len())?;
        return Tensor::from_vec(ints, dims, device).map_err(|e| e.to_string());
    }
    let values: Vec<f32> = match t.data_type {
        1 if !t.raw_data.is_empty() => {
            if t.raw_data.len() != count * 4 {
                return Err(format!(
                    "tensor {:?} holds {} bytes for {count} floats",
                    t.name,
                    t.raw_data.len()
                ));
            }
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        1 => t.float_data.clone(),
        other => {
            return Err(format!(
                "tensor {:?} is {}, not float32 or an integer shape",
                t.name,
                type_name(other)
            ))
        }
    };
    holds(values.len())?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "tensor {:?} holds a non-finite value ({}) at flat index {i}",
            t.name, values[i]
        ));
    }
    Tensor::from_vec(values, dims, device).map_err(|e| e.to_string())
}

/// Integer values of an `int64` constant (a `Reshape` shape).
fn int64_values(t: &TensorData) -> Built<Vec<i64>> {
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(8) {
            return Err(format!(
                "tensor {:?} holds {} bytes, not whole int64 values",
                t.name,
                t.raw_data.len()
            ));
        }
        return Ok(t
            .raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect());
    }
    Ok(t.int64_data.clone())
}

fn attr<'a>(node: &'a Node, name: &str) -> Option<&'a Attribute> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &Node, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn attr_ints(node: &Node, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_float(node: &Node, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

/// All entries equal to one non-negative value.
fn uniform(values: &[i64], what: &str, node: &Node) -> Built<usize> {
    match values.split_first() {
        Some((&first, rest)) if first >= 0 && rest.iter().all(|&v| v == first) => Ok(first as usize),
        _ => Err(format!("{} node {:?}: {what} {values:?} are not supported (only the same value in every dimension)", node.op_type, node.name)),
    }
}

/// Build the steps of `nodes` for a graph of default-domain operator set `opset`. Weights and
/// `Constant` nodes are `constants`; a node whose inputs are all constants (the shape arithmetic
/// exporters write for paddings) is evaluated here, once, and its output becomes a constant too.
/// A zero `Pad` before a convolution becomes the convolution's padding, and a ReLU or ReLU6 after
/// a convolution or fully connected layer is fused into it.
pub(super) fn build(
    nodes: &[Node],
    opset: i64,
    constants: &mut HashMap<String, Tensor>,
    device: &Device,
) -> Built<Vec<Step>> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        for i in &n.input {
            *uses.entry(i.as_str()).or_insert(0) += 1;
        }
    }
    let mut steps: Vec<Step> = Vec::new();
    for node in nodes {
        let output = node
            .output
            .first()
            .cloned()
            .ok_or_else(|| format!("{} node {:?} has no output", node.op_type, node.name))?;
        if node.op_type == "Constant" {
            let t = attr(node, "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| format!("Constant node {:?} without a tensor value", node.name))?;
            constants.insert(output, decode_tensor(t, device)?);
            continue;
        }
        let (op, inputs) = node_op(node, opset, constants, &mut steps, &uses)?;
        let known: Option<Vec<&Tensor>> = inputs.iter().map(|i| constants.get(i)).collect();
        match known {
            // shape arithmetic, folded weights: evaluated once, here
            Some(args) if !args.is_empty() => {
                let value = op
                    .apply(&args)
                    .map_err(|e| format!("{} node {:?}: {e}", node.op_type, node.name))?;
                constants.insert(output, value);
            }
            _ => steps.push(Step { op, inputs, output }),
        }
    }
    Ok(fuse_activations(steps, &uses))
}

/// A ReLU (or a `Clip` to `[0, 6]`) that is the only reader of the convolution or fully
/// connected layer just before it becomes that layer's fused activation.
fn fuse_activations(steps: Vec<Step>, uses: &HashMap<&str, usize>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        if let Some(prev) = out.last_mut() {
            let sole_reader = step.inputs.first() == Some(&prev.output)
                && uses.get(prev.output.as_str()) == Some(&1);
            let relu6 = matches!(step.op, Op::Clip { min, max } if min == 0.0 && max == 6.0);
            let fused = match (&prev.op, &step.op) {
                _ if !sole_reader => None,
                (Op::Conv(c), Op::Relu) if !c.has_act() => Some(Op::Conv(c.clone().with_relu())),
                (Op::Conv(c), _) if relu6 && !c.has_act() => Some(Op::Conv(c.clone().with_relu6())),
                (Op::Depthwise(d), _) if relu6 && !d.has_act() => {
                    Some(Op::Depthwise(d.clone().with_relu6()))
                }
                (Op::Linear(l), Op::Relu) if !l.has_act() => {
                    Some(Op::Linear(l.clone().with_relu()))
                }
                _ => None,
            };
            if let Some(op) = fused {
                prev.op = op;
                prev.output = step.output;
                continue;
            }
        }
        out.push(step);
    }
    out
}

/// The integer values of a constant (shapes, axes, paddings).
fn ints(t: &Tensor) -> candle_core::Result<Vec<i64>> {
    t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()
}

/// One node's operator and the names of its inputs. A zero `Pad` step that only this
/// convolution reads is taken out of `steps` and becomes the convolution's padding.
fn node_op(
    node: &Node,
    opset: i64,
    constants: &HashMap<String, Tensor>,
    steps: &mut Vec<Step>,
    uses: &HashMap<&str, usize>,
) -> Built<(Op, Vec<String>)> {
    let fail = |what: &str| format!("{} node {:?}: {what}", node.op_type, node.name);
    let input = |i: usize| -> Built<String> {
        node.input
            .get(i)
            .filter(|s| !s.is_empty())
            .cloned()
            .ok_or_else(|| fail(&format!("lacks input {i}")))
    };
    let constant = |i: usize| -> Built<Option<&Tensor>> {
        match node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => constants.get(name).map(Some).ok_or_else(|| {
                fail(&format!(
                    "input {name:?} must be a constant (an initializer)"
                ))
            }),
        }
    };
    let constant_ints = |i: usize| -> Built<Option<Vec<i64>>> {
        constant(i)?
            .map(|t| ints(t).map_err(|e| fail(&e.to_string())))
            .transpose()
    };
    // an operand given as an input from opset `since`, as an attribute before
    let ints_arg = |i: usize, name: &str, since: i64| -> Built<Option<Vec<i64>>> {
        match opset >= since {
            true => constant_ints(i),
            false => Ok(attr_ints(node, name)),
        }
    };
    let unary = |op: Op| -> Built<(Op, Vec<String>)> { Ok((op, vec![input(0)?])) };
    if attr(node, "auto_pad")
        .and_then(|a| a.s.as_deref())
        .is_some_and(|s| s != b"NOTSET")
    {
        return Err(fail(
            "auto_pad is not supported (export with explicit pads)",
        ));
    }
    match node.op_type.as_str() {
        "Conv" => {
            let w = constant(1)?.ok_or_else(|| fail("no weights"))?.clone();
            let b = constant(2)?.cloned();
            let (o, cg, kh, kw) = w.dims4().map_err(|e| fail(&e.to_string()))?;
            let group =
                usize::try_from(attr_int(node, "group", 1)).map_err(|_| fail("negative group"))?;
            let stride = uniform(
                &attr_ints(node, "strides").unwrap_or(vec![1; 2]),
                "strides",
                node,
            )?;
            let dilation = uniform(
                &attr_ints(node, "dilations").unwrap_or(vec![1; 2]),
                "dilations",
                node,
            )?;
            // ONNX orders pads [top, left, bottom, right]; ours are [top, bottom, left, right]
            let p = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
            let [t, l, bo, r] = p.as_slice() else {
                return Err(fail(&format!(
                    "pads {p:?} are not those of a 2-D convolution"
                )));
            };
            let mut pads = [*t, *bo, *l, *r].map(|v| usize::try_from(v).unwrap_or(usize::MAX));
            if pads.contains(&usize::MAX) {
                return Err(fail("negative pads"));
            }
            let mut source = input(0)?;
            // a zero Pad before the convolution, read by it alone, is its padding
            if let Some(at) = steps.iter().rposition(|s| s.output == source) {
                if let Op::Pad(pp) = &steps[at].op {
                    if pp.len() == 8
                        && pp[..2] == [0, 0]
                        && pp[4..6] == [0, 0]
                        && uses.get(source.as_str()) == Some(&1)
                    {
                        pads = [
                            pads[0].saturating_add(pp[2]),
                            pads[1].saturating_add(pp[6]),
                            pads[2].saturating_add(pp[3]),
                            pads[3].saturating_add(pp[7]),
                        ];
                        source = steps.remove(at).inputs[0].clone();
                    }
                }
            }
            if pads.iter().any(|&p| p > MAX_PAD) {
                return Err(fail(&format!("pads {pads:?} are implausibly large")));
            }
            if group > 1 && cg == 1 && o == group && kh == kw && dilation == 1 {
                let conv = DepthwiseConv2d::new(w, b, stride)
                    .map_err(|e| fail(&e.to_string()))?
                    .with_padding(Padding::Explicit(pads));
                return Ok((Op::Depthwise(conv), vec![source]));
            }
            let uniform_pad = pads.iter().all(|&v| v == pads[0]);
            if !uniform_pad {
                // an uneven padding (TensorFlow's "same" at stride 2) as a step of its own
                let padded = format!("{source}/perturb-pad");
                let [t, bo, l, r] = pads;
                steps.push(Step {
                    op: Op::Pad(vec![0, 0, t, l, 0, 0, bo, r]),
                    inputs: vec![source],
                    output: padded.clone(),
                });
                source = padded;
            }
            let config = Conv2dConfig {
                padding: if uniform_pad { pads[0] } else { 0 },
                stride,
                dilation,
                groups: group,
                cudnn_fwd_algo: None,
            };
            let conv = Conv2d::new(w, b, config).map_err(|e| fail(&e.to_string()))?;
            Ok((Op::Conv(conv), vec![source]))
        }
        "Gemm" | "MatMul" => {
            let b = match node.op_type.as_str() {
                "MatMul" => constant(1)
                    .ok()
                    .flatten()
                    .filter(|b| b.rank() == 2)
                    .cloned(),
                _ => Some(constant(1)?.ok_or_else(|| fail("no weights"))?.clone()),
            };
            let Some(b) = b else {
                return Ok((Op::MatMul, vec![input(0)?, input(1)?]));
            };
            if attr_int(node, "transA", 0) != 0 {
                return Err(fail("transA is not supported"));
            }
            let (alpha, beta) = (
                attr_float(node, "alpha", 1.0),
                attr_float(node, "beta", 1.0),
            );
            let w = match (node.op_type.as_str(), attr_int(node, "transB", 0)) {
                ("Gemm", 1) => b,
                _ => b
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(|e| e.to_string())?,
            };
            let w = (w * f64::from(alpha)).map_err(|e| e.to_string())?;
            let bias = match (node.op_type.as_str(), constant(2)?) {
                ("Gemm", Some(c)) => Some(
                    (c.flatten_all().map_err(|e| e.to_string())? * f64::from(beta))
                        .map_err(|e| e.to_string())?,
                ),
                _ => None,
            };
            let fc = Linear::new(w, bias).map_err(|e| e.to_string())?;
            Ok((Op::Linear(fc), vec![input(0)?]))
        }
        "MaxPool" | "AveragePool" => {
            if attr_int(node, "ceil_mode", 0) != 0 {
                return Err(fail("ceil_mode is not supported"));
            }
            if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
                return Err(fail("dilations are not supported"));
            }
            let kernel = uniform(
                &attr_ints(node, "kernel_shape").unwrap_or_default(),
                "kernel_shape",
                node,
            )?;
            let stride = uniform(
                &attr_ints(node, "strides").unwrap_or(vec![1, 1]),
                "strides",
                node,
            )?;
            let pad = uniform(&attr_ints(node, "pads").unwrap_or(vec![0; 4]), "pads", node)?;
            unary(match (node.op_type.as_str(), pad) {
                ("MaxPool", 0) => Op::MaxPool { kernel, stride },
                ("MaxPool", pad) => Op::PaddedMaxPool {
                    kernel,
                    stride,
                    pad,
                },
                _ => Op::AveragePool {
                    kernel,
                    stride,
                    pad,
                    include_pad: attr_int(node, "count_include_pad", 0) != 0,
                },
            })
        }
        "HardSwish" => unary(Op::HardSwish),
        "ReduceMean" => {
            let axes = ints_arg(1, "axes", 18)?
                .ok_or_else(|| fail("reducing every axis is not supported"))?;
            unary(Op::ReduceMean {
                axes,
                keep: attr_int(node, "keepdims", 1) != 0,
            })
        }
        "Pad" => {
            if attr(node, "mode")
                .and_then(|a| a.s.as_deref())
                .is_some_and(|m| m != b"constant")
            {
                return Err(fail("only constant padding is supported"));
            }
            let value = match opset >= 11 {
                true => match constant(2)? {
                    Some(v) => v
                        .flatten_all()
                        .and_then(|v| v.to_dtype(DType::F32))
                        .and_then(|v| v.to_vec1::<f32>())
                        .map_err(|e| e.to_string())?,
                    None => vec![],
                },
                false => vec![attr_float(node, "value", 0.0)],
            };
            if value.iter().any(|&v| v != 0.0) {
                return Err(fail("only zero padding is supported"));
            }
            let pads = ints_arg(1, "pads", 11)?.unwrap_or_default();
            let pads = pads
                .iter()
                .map(|&p| {
                    usize::try_from(p)
                        .map_err(|_| fail("negative pads (cropping) are not supported"))
                })
                .collect::<Built<Vec<usize>>>()?;
            if pads.iter().any(|&p| p > MAX_PAD) {
                return Err(fail(&format!("pads {pads:?} are implausibly large")));
            }
            unary(Op::Pad(pads))
        }
        "Flatten" => {
            let axis =
                usize::try_from(attr_int(node, "axis", 1)).map_err(|_| fail("negative axis"))?;
            unary(Op::Flatten { axis })
        }
        "Identity" | "Dropout" => unary(Op::Identity),
        "Relu" => unary(Op::Relu),
        "LeakyRelu" => unary(Op::LeakyRelu(f64::from(attr_float(node, "alpha", 0.01)))),
        "Sigmoid" => unary(Op::Sigmoid),
        "Clip" => {
            let bound = |i: usize, name: &str, default: f32| -> Built<f32> {
                match (opset >= 11, constant(i)?) {
                    (true, Some(t)) => t
                        .flatten_all()
                        .and_then(|t| t.to_dtype(DType::F32))
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(|e| e.to_string())?
                        .first()
                        .copied()
                        .ok_or_else(|| fail("empty bound")),
                    (true, None) => Ok(default),
                    (false, _) => Ok(attr_float(node, name, default)),
                }
            };
            let (min, max) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
            unary(Op::Clip { min, max })
        }
        "Softmax" => unary(Op::Softmax {
            // before opset 13: over the flattened trailing dimensions from `axis` (default 1)
            axis: attr_int(node, "axis", if opset >= 13 { -1 } else { 1 }),
            coerce_2d: opset < 13,
        }),
        "GlobalAveragePool" => unary(Op::GlobalAveragePool),
        "BatchNormalization" => {
            let get = |i| -> Built<Tensor> {
                constant(i)?
                    .cloned()
                    .ok_or_else(|| fail("lacks a parameter"))
            };
            let (scale, bias, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let eps = f64::from(attr_float(node, "epsilon", 1e-5));
            let affine = || -> candle_core::Result<(Tensor, Tensor)> {
                let c = scale.elem_count();
                let s = (scale / (var + eps)?.sqrt()?)?;
                let t = (bias - (mean * &s)?)?;
                Ok((s.reshape((1, c, 1, 1))?, t.reshape((1, c, 1, 1))?))
            };
            let (scale, shift) = affine().map_err(|e| e.to_string())?;
            unary(Op::Affine { scale, shift })
        }
        kind @ ("Add" | "Sub" | "Mul" | "Div") => {
            let kind = match kind {
                "Add" => BinaryKind::Add,
                "Sub" => BinaryKind::Sub,
                "Mul" => BinaryKind::Mul,
                _ => BinaryKind::Div,
            };
            Ok((Op::Binary(kind), vec![input(0)?, input(1)?]))
        }
        "Sum" => Ok((Op::Sum, node.input.clone())),
        "Reshape" if opset < 5 => {
            let shape = attr_ints(node, "shape").ok_or_else(|| fail("no shape"))?;
            unary(Op::ReshapeTo(shape))
        }
        "Reshape" => Ok((Op::Reshape, vec![input(0)?, input(1)?])),
        "Transpose" => {
            let perm = attr_ints(node, "perm").ok_or_else(|| fail("no perm"))?;
            let perm = perm
                .iter()
                .map(|&p| usize::try_from(p).map_err(|_| fail("negative perm")))
                .collect::<Built<_>>()?;
            unary(Op::Transpose(perm))
        }
        "Concat" => Ok((Op::Concat(attr_int(node, "axis", 1)), node.input.clone())),
        "Shape" => unary(Op::Shape),
        "Gather" => Ok((
            Op::Gather(attr_int(node, "axis", 0)),
            vec![input(0)?, input(1)?],
        )),
        kind @ ("Unsqueeze" | "Squeeze") => {
            let axes = ints_arg(1, "axes", 13)?;
            let op = match kind {
                "Unsqueeze" => Op::Unsqueeze(axes.ok_or_else(|| fail("no axes"))?),
                _ => Op::Squeeze(axes),
            };
            unary(op)
        }
        "ConstantOfShape" => {
            let value = match attr(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => decode_tensor(t, &Device::Cpu)?,
                None => Tensor::zeros(1, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?,
            };
            unary(Op::ConstantOfShape(value))
        }
        "Cast" => {
            let to = i32::try_from(attr_int(node, "to", 1)).map_err(|_| fail("bad type"))?;
            let dtype = match to {
                1 | 10 | 11 | 16 => DType::F32,
                2..=7 | 12 | 13 => DType::I64,
                other => {
                    return Err(fail(&format!(
                        "casts to {} are not supported",
                        type_name(other)
                    )))
                }
            };
            unary(Op::Cast(dtype))
        }
        "Slice" if opset < 10 => {
            let starts = attr_ints(node, "starts").ok_or_else(|| fail("no starts"))?;
            let ends = attr_ints(node, "ends").ok_or_else(|| fail("no ends"))?;
            let axes = attr_ints(node, "axes");
            unary(Op::Slice(Some(SliceAttrs { starts, ends, axes })))
        }
        "Slice" => {
            let mut inputs = vec![input(0)?, input(1)?, input(2)?];
            inputs.extend(node.input.iter().skip(3).cloned());
            Ok((Op::Slice(None), inputs))
        }
        other => Err(format!("operator {other} is not supported")),
    }
}

impl Op {
    /// Evaluate on `args` (the step's inputs, in order).
    pub(super) fn apply(&self, args: &[&Tensor]) -> candle_core::Result<Tensor> {
        let x = args[0];
        match self {
            Op::Conv(conv) => candle_core::Module::forward(conv, x),
            Op::Depthwise(conv) => candle_core::Module::forward(conv, x),
            Op::Linear(fc) => candle_core::Module::forward(fc, x),
            Op::MaxPool { kernel, stride } => max_pool2d(x, *kernel, *stride),
            Op::PaddedMaxPool {
                kernel,
                stride,
                pad,
            } => {
                // pad with the lowest float: inside, x + 0 is x; outside, the padding never wins
                let ones = Tensor::ones(x.dims(), x.dtype(), x.device())?;
                let fence = ((pad2d(&ones, *pad)? - 1.0)? * f64::from(f32::MAX))?;
                max_pool2d(&(pad2d(x, *pad)? + fence)?, *kernel, *stride)
            }
            Op::AveragePool {
                kernel,
                stride,
                pad,
                include_pad,
            } => {
                let sum = window_sum(&pad2d(x, *pad)?, *kernel, *stride)?;
                if *include_pad || *pad == 0 {
                    return sum / (kernel * kernel) as f64;
                }
                let (_, _, h, w) = x.dims4()?;
                let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
                let count = window_sum(&pad2d(&ones, *pad)?, *kernel, *stride)?;
                sum.broadcast_div(&count)
            }
            Op::HardSwish => (x * ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?)?.contiguous(),
            Op::ReduceMean { axes, keep } => {
                let rank = x.rank();
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis_index(a, rank))
                    .collect::<candle_core::Result<_>>()?;
                axes.sort_unstable();
                axes.dedup();
                let mut out = x.clone();
                for &a in axes.iter().rev() {
                    out = if *keep {
                        out.mean_keepdim(a)?
                    } else {
                        out.mean(a)?
                    };
                }
                Ok(out)
            }
            Op::Pad(pads) => {
                let rank = x.rank();
                if pads.len() != 2 * rank {
                    candle_core::bail!("Pad: {} pads for rank {rank}", pads.len())
                }
                (0..rank).try_fold(x.clone(), |t, d| {
                    t.pad_with_zeros(d, pads[d], pads[rank + d])
                })
            }
            Op::Flatten { axis } => {
                let dims = x.dims();
                let lead: usize = dims[..*axis.min(&dims.len())].iter().product();
                let rest: usize = dims[*axis.min(&dims.len())..].iter().product();
                x.reshape((lead, rest))
            }
            Op::Identity => Ok(x.clone()),
            Op::Relu => x.relu(),
            Op::LeakyRelu(alpha) => x.maximum(&(x * *alpha)?),
            Op::Sigmoid => candle_nn::ops::sigmoid(x),
            Op::Clip { min, max } => x.clamp(*min, *max),
            Op::Softmax { axis, coerce_2d } => {
                let axis = axis_index(*axis, x.rank())?;
                if !*coerce_2d || axis + 1 == x.rank() {
                    return candle_nn::ops::softmax(x, axis);
                }
                let lead: usize = x.dims()[..axis].iter().product();
                let flat = x.reshape((lead, x.elem_count() / lead.max(1)))?;
                candle_nn::ops::softmax(&flat, 1)?.reshape(x.dims())
            }
            Op::GlobalAveragePool => x.mean_keepdim(3)?.mean_keepdim(2),
            Op::Affine { scale, shift } => x.broadcast_mul(scale)?.broadcast_add(shift),
            Op::Binary(kind) => {
                let y = args[1];
                match kind {
                    BinaryKind::Add => x.broadcast_add(y),
                    BinaryKind::Sub => x.broadcast_sub(y),
                    BinaryKind::Mul => x.broadcast_mul(y),
                    BinaryKind::Div => x.broadcast_div(y),
                }
            }
            Op::MatMul => x.broadcast_matmul(args[1]),
            Op::Reshape => reshape(x, &ints(args[1])?),
            Op::ReshapeTo(shape) => reshape(x, shape),
            Op::Transpose(perm) => x.permute(perm.as_slice()),
            Op::Concat(axis) => Tensor::cat(args, axis_index(*axis, x.rank())?),
            Op::Sum => args[1..]
                .iter()
                .try_fold(x.clone(), |a, b| a.broadcast_add(b)),
            Op::Shape => {
                let dims: Vec<i64> = x.dims().iter().map(|&d| d as i64).collect();
                Tensor::new(dims.as_slice(), x.device())
            }
            Op::Gather(axis) => {
                let axis = axis_index(*axis, x.rank())?;
                let size = x.dim(axis)? as i64;
                let indices = args[1];
                let picks = ints(indices)?
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + size } else { i };
                        u32::try_from(j)
                            .ok()
                            .filter(|&j| i64::from(j) < size)
                            .ok_or_else(|| {
                                candle_core::Error::Msg(format!("Gather: index {i} out of range"))
                            })
                    })
                    .collect::<candle_core::Result<Vec<u32>>>()?;
                let picked = x.index_select(&Tensor::new(picks.as_slice(), x.device())?, axis)?;
                let mut dims = x.dims()[..axis].to_vec();
                dims.extend_from_slice(indices.dims());
                dims.extend_from_slice(&x.dims()[axis + 1..]);
                picked.reshape(dims)
            }
            Op::Unsqueeze(axes) => {
                let rank = x.rank() + axes.len();
                let mut at: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis_index(a, rank))
                    .collect::<candle_core::Result<_>>()?;
                at.sort_unstable();
                let mut dims = x.dims().to_vec();
                for a in at {
                    dims.insert(a.min(dims.len()), 1);
                }
                x.reshape(dims)
            }
            Op::Squeeze(axes) => {
                let drop: Vec<usize> = match axes {
                    Some(axes) => axes
                        .iter()
                        .map(|&a| axis_index(a, x.rank()))
                        .collect::<candle_core::Result<_>>()?,
                    None => (0..x.rank()).filter(|&d| x.dims()[d] == 1).collect(),
                };
                let dims: Vec<usize> = (0..x.rank())
                    .filter(|d| !drop.contains(d))
                    .map(|d| x.dims()[d])
                    .collect();
                x.reshape(dims)
            }
            Op::ConstantOfShape(value) => {
                let shape = ints(x)?
                    .iter()
                    .map(|&d| usize::try_from(d))
                    .collect::<std::result::Result<Vec<usize>, _>>()
                    .map_err(|_| {
                        candle_core::Error::Msg("ConstantOfShape: negative size".into())
                    })?;
                if shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_none_or(|n| n > MAX_ELEMENTS)
                {
                    candle_core::bail!("ConstantOfShape: {shape:?} is implausibly large")
                }
                value
                    .to_device(x.device())?
                    .flatten_all()?
                    .narrow(0, 0, 1)?
                    .reshape(())?
                    .broadcast_as(shape)?
                    .contiguous()
            }
            Op::Cast(dtype) => x.to_dtype(*dtype),
            Op::Slice(attrs) => {
                let (starts, ends, axes, steps) = match attrs {
                    Some(a) => (a.starts.clone(), a.ends.clone(), a.axes.clone(), None),
                    None => (
                        ints(args[1])?,
                        ints(args[2])?,
                        args.get(3).map(|t| ints(t)).transpose()?,
                        args.get(4).map(|t| ints(t)).transpose()?,
                    ),
                };
                let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let mut out = x.clone();
                for (k, &axis) in axes.iter().enumerate() {
                    let axis = axis_index(axis, x.rank())?;
                    let step = steps.as_ref().map_or(1, |s| s.get(k).copied().unwrap_or(1));
                    let (start, end) = (
                        *starts.get(k).unwrap_or(&0),
                        *ends.get(k).unwrap_or(&i64::MAX),
                    );
                    let picks = slice_indices(out.dim(axis)? as i64, start, end, step)?;
                    out = if step == 1 {
                        out.narrow(axis, picks.first().map_or(0, |&p| p as usize), picks.len())?
                    } else {
                        out.index_select(&Tensor::new(picks.as_slice(), x.device())?, axis)?
                    };
                }
                Ok(out)
            }
        }
    }
}

/// ONNX `Reshape`: 0 keeps the input's dimension, −1 takes what is left.
fn reshape(x: &Tensor, shape: &[i64]) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let mut out: Vec<usize> = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 => out.push(*dims.get(i).ok_or_else(|| {
                candle_core::Error::Msg("Reshape: 0 past the input's rank".into())
            })?),
            -1 => {
                infer = Some(i);
                out.push(1);
            }
            s if s > 0 => out.push(s as usize),
            _ => candle_core::bail!("Reshape: invalid dimension {s}"),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        out[i] = x.elem_count() / known.max(1);
    }
    x.reshape(out)
}

/// The indices ONNX `Slice` takes along a dimension of `size`: negative starts and ends count
/// from the end, both are clamped, and a negative step walks backwards.
fn slice_indices(size: i64, start: i64, end: i64, step: i64) -> candle_core::Result<Vec<u32>> {
    if step == 0 {
        candle_core::bail!("Slice: step 0")
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    let norm = |v: i64| if v < 0 { v.saturating_add(size) } else { v };
    let (start, end) = (norm(start), norm(end));
    let mut picks = Vec::new();
    if step > 0 {
        let (mut i, end) = (start.clamp(0, size), end.clamp(0, size));
        while i < end {
            picks.push(i as u32);
            i += step;
        }
    } else {
        let (mut i, end) = (start.clamp(0, size - 1), end.clamp(-1, size - 1));
        while i > end {
            picks.push(i as u32);
            i += step;
        }
    }
    Ok(picks)
}

/// `x` `[N, C, H, W]` with `pad` zeros on every side of each plane.
fn pad2d(x: &Tensor, pad: usize) -> candle_core::Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)
}

/// The sum over each `kernel × kernel` window at `stride` (no padding, floor mode), as a sum of
/// strided slices: candle ops whose gradients are exact.
fn window_sum(x: &Tensor, kernel: usize, stride: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if kernel == 0 || stride == 0 || kernel > h || kernel > w {
        candle_core::bail!("pooling: kernel {kernel}, stride {stride} do not fit a {h}x{w} input")
    }
    let (oh, ow) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    let pick = |start: usize, len: usize, dim: usize, t: &Tensor| -> candle_core::Result<Tensor> {
        if stride == 1 {
            return t.narrow(dim, start, len);
        }
        let idx: Vec<u32> = (0..len).map(|o| (start + o * stride) as u32).collect();
        t.index_select(&Tensor::new(idx.as_slice(), t.device())?, dim)
    };
    let mut total: Option<Tensor> = None;
    for i in 0..kernel {
        let rows = pick(i, oh, 2, x)?;
        for j in 0..kernel {
            let tap = pick(j, ow, 3, &rows)?;
            total = Some(match total {
                None => tap,
                Some(t) => (t + tap)?,
            });
        }
    }
    total.ok_or_else(|| candle_core::Error::Msg("pooling: empty kernel".into()))
}

/// A possibly negative ONNX axis as an index into `rank` dimensions.
fn axis_index(axis: i64, rank: usize) -> candle_core::Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|a| *a < rank)
        .ok_or_else(|| candle_core::Error::Msg(format!("axis {axis} out of range for rank {rank}")))
}
