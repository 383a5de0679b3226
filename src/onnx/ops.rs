//! ONNX nodes to evaluation steps: each supported operator as perturb's layers or candle ops,
//! built once at load (weights decoded, ReLUs fused into the layer before them).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::Conv2dConfig;

use super::proto::{Attribute, Node, TensorData};
use crate::layers::{max_pool2d, Conv2d, Linear};

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
    /// A convolution (with a fused ReLU if one followed it).
    Conv(Conv2d),
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
    Softmax {
        axis: i64,
    },
    GlobalAveragePool,
    /// `x · scale + shift` per channel (`[1, C, 1, 1]`): an inference-mode batch norm.
    Affine {
        scale: Tensor,
        shift: Tensor,
    },
    Binary(BinaryKind),
    MatMul,
    Reshape(Vec<i64>),
    Transpose(Vec<usize>),
    Concat(i64),
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

/// A constant tensor: `f32` from float data, `i64` (as `f32` where small) from integer data.
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
        // integer shapes and axes, exact as f32 at the sizes a graph's shapes have
        7 => int64_values(t)?.iter().map(|&v| v as f32).collect(),
        6 => t.int32_data.iter().map(|&v| v as f32).collect(),
        other => {
            return Err(format!(
                "tensor {:?} is {}, not float32 or an integer shape",
                t.name,
                type_name(other)
            ))
        }
    };
    if values.len() != count {
        return Err(format!(
            "tensor {:?} holds {} values for shape {dims:?}",
            t.name,
            values.len()
        ));
    }
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

/// Build the steps of `nodes`; `Constant` nodes and consumed weights become `constants`.
pub(super) fn build(
    nodes: &[Node],
    initializers: &[TensorData],
    constants: &mut HashMap<String, Tensor>,
    device: &Device,
) -> Built<Vec<Step>> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        for i in &n.input {
            *uses.entry(i.as_str()).or_insert(0) += 1;
        }
    }
    let mut int_constants = int_initializers(initializers);
    let mut steps: Vec<Step> = Vec::new();
    let mut fused: Option<usize> = None;
    for (at, node) in nodes.iter().enumerate() {
        if fused == Some(at) {
            continue; // a ReLU folded into the layer before it
        }
        let output = node
            .output
            .first()
            .cloned()
            .ok_or_else(|| format!("{} node {:?} has no output", node.op_type, node.name))?;
        let input = |i: usize| -> Built<String> {
            node.input
                .get(i)
                .filter(|s| !s.is_empty())
                .cloned()
                .ok_or_else(|| format!("{} node {:?} lacks input {i}", node.op_type, node.name))
        };
        let constant = |i: usize| -> Built<Option<Tensor>> {
            match node.input.get(i).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(name) => constants.get(name).cloned().map(Some).ok_or_else(|| {
                    format!(
                        "{} node {:?}: input {name:?} must be a constant (an initializer)",
                        node.op_type, node.name
                    )
                }),
            }
        };
        // A ReLU that is the only reader of this node's output, right after it.
        let relu_next = nodes.get(at + 1).is_some_and(|next| {
            next.op_type == "Relu"
                && next.input.first() == Some(&output)
                && uses.get(output.as_str()) == Some(&1)
        });
        let (op, inputs, out) = match node.op_type.as_str() {
            "Conv" => {
                if attr(node, "auto_pad")
                    .and_then(|a| a.s.as_deref())
                    .is_some_and(|s| s != b"NOTSET")
                {
                    return Err(format!(
                        "Conv node {:?}: auto_pad is not supported (export with explicit pads)",
                        node.name
                    ));
                }
                let w = constant(1)?.ok_or("Conv without weights")?;
                let b = constant(2)?;
                let config = Conv2dConfig {
                    padding: uniform(&attr_ints(node, "pads").unwrap_or(vec![0; 4]), "pads", node)?,
                    stride: uniform(
                        &attr_ints(node, "strides").unwrap_or(vec![1; 2]),
                        "strides",
                        node,
                    )?,
                    dilation: uniform(
                        &attr_ints(node, "dilations").unwrap_or(vec![1; 2]),
                        "dilations",
                        node,
                    )?,
                    groups: usize::try_from(attr_int(node, "group", 1))
                        .map_err(|_| "negative group")?,
                    cudnn_fwd_algo: None,
                };
                let conv = Conv2d::new(w, b, config).map_err(|e| e.to_string())?;
                match relu_next {
                    true => (
                        Op::Conv(conv.with_relu()),
                        vec![input(0)?],
                        nodes[at + 1].output[0].clone(),
                    ),
                    false => (Op::Conv(conv), vec![input(0)?], output.clone()),
                }
            }
            "Gemm" | "MatMul" => {
                let b = match node.op_type.as_str() {
                    "MatMul" => constant(1).ok().flatten().filter(|b| b.rank() == 2),
                    _ => Some(constant(1)?.ok_or("Gemm without weights")?),
                };
                match b {
                    None => (Op::MatMul, vec![input(0)?, input(1)?], output.clone()),
                    Some(b) => {
                        if attr_int(node, "transA", 0) != 0 {
                            return Err(format!(
                                "Gemm node {:?}: transA is not supported",
                                node.name
                            ));
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
                        match relu_next {
                            true => (
                                Op::Linear(fc.with_relu()),
                                vec![input(0)?],
                                nodes[at + 1].output[0].clone(),
                            ),
                            false => (Op::Linear(fc), vec![input(0)?], output.clone()),
                        }
                    }
                }
            }
            "MaxPool" | "AveragePool" => {
                if attr_int(node, "ceil_mode", 0) != 0 {
                    return Err(format!(
                        "{} node {:?}: ceil_mode is not supported",
                        node.op_type, node.name
                    ));
                }
                if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
                    return Err(format!(
                        "{} node {:?}: dilations are not supported",
                        node.op_type, node.name
                    ));
                }
                if attr(node, "auto_pad")
                    .and_then(|a| a.s.as_deref())
                    .is_some_and(|s| s != b"NOTSET")
                {
                    return Err(format!(
                        "{} node {:?}: auto_pad is not supported",
                        node.op_type, node.name
                    ));
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
                let op = match (node.op_type.as_str(), pad) {
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
                };
                (op, vec![input(0)?], output.clone())
            }
            "HardSwish" => (Op::HardSwish, vec![input(0)?], output.clone()),
            "ReduceMean" => {
                let axes = match node.input.get(1).filter(|s| !s.is_empty()) {
                    Some(name) => int_constants.get(name).cloned().ok_or_else(|| {
                        format!("ReduceMean node {:?}: axes must be a constant", node.name)
                    })?,
                    None => attr_ints(node, "axes").ok_or_else(|| {
                        format!(
                            "ReduceMean node {:?}: reducing every axis is not supported",
                            node.name
                        )
                    })?,
                };
                (
                    Op::ReduceMean {
                        axes,
                        keep: attr_int(node, "keepdims", 1) != 0,
                    },
                    vec![input(0)?],
                    output.clone(),
                )
            }
            "Pad" => {
                if attr(node, "mode")
                    .and_then(|a| a.s.as_deref())
                    .is_some_and(|m| m != b"constant")
                {
                    return Err(format!(
                        "Pad node {:?}: only constant padding is supported",
                        node.name
                    ));
                }
                if let Some(value) = constant(2)? {
                    let v = value
                        .flatten_all()
                        .and_then(|v| v.to_vec1::<f32>())
                        .map_err(|e| e.to_string())?;
                    if v.iter().any(|&v| v != 0.0) {
                        return Err(format!(
                            "Pad node {:?}: only zero padding is supported",
                            node.name
                        ));
                    }
                }
                let pads = match node.input.get(1).filter(|s| !s.is_empty()) {
                    Some(name) => int_constants.get(name).cloned().ok_or_else(|| {
                        format!("Pad node {:?}: the pads must be a constant", node.name)
                    })?,
                    None => attr_ints(node, "pads").unwrap_or_default(),
                };
                let pads = pads
                    .iter()
                    .map(|&p| {
                        usize::try_from(p).map_err(|_| {
                            format!(
                                "Pad node {:?}: negative pads (cropping) are not supported",
                                node.name
                            )
                        })
                    })
                    .collect::<Built<_>>()?;
                (Op::Pad(pads), vec![input(0)?], output.clone())
            }
            "Flatten" => {
                let axis = usize::try_from(attr_int(node, "axis", 1))
                    .map_err(|_| format!("Flatten node {:?}: negative axis", node.name))?;
                (Op::Flatten { axis }, vec![input(0)?], output.clone())
            }
            "Identity" | "Dropout" => (Op::Identity, vec![input(0)?], output.clone()),
            "Relu" => (Op::Relu, vec![input(0)?], output.clone()),
            "LeakyRelu" => (
                Op::LeakyRelu(f64::from(attr_float(node, "alpha", 0.01))),
                vec![input(0)?],
                output.clone(),
            ),
            "Sigmoid" => (Op::Sigmoid, vec![input(0)?], output.clone()),
            "Clip" => {
                let bound = |i: usize, name: &str, default: f32| -> Built<f32> {
                    match constant(i)? {
                        Some(t) => t
                            .flatten_all()
                            .and_then(|t| t.to_vec1::<f32>())
                            .map_err(|e| e.to_string())?
                            .first()
                            .copied()
                            .ok_or_else(|| "empty Clip bound".to_string()),
                        None => Ok(attr(node, name).and_then(|a| a.f).unwrap_or(default)),
                    }
                };
                let (min, max) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
                (Op::Clip { min, max }, vec![input(0)?], output.clone())
            }
            "Softmax" => (
                Op::Softmax {
                    axis: attr_int(node, "axis", -1),
                },
                vec![input(0)?],
                output.clone(),
            ),
            "GlobalAveragePool" => (Op::GlobalAveragePool, vec![input(0)?], output.clone()),
            "BatchNormalization" => {
                let get = |i| -> Built<Tensor> {
                    constant(i)?.ok_or_else(|| "BatchNormalization lacks a parameter".to_string())
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
                (Op::Affine { scale, shift }, vec![input(0)?], output.clone())
            }
            kind @ ("Add" | "Sub" | "Mul" | "Div") => {
                let kind = match kind {
                    "Add" => BinaryKind::Add,
                    "Sub" => BinaryKind::Sub,
                    "Mul" => BinaryKind::Mul,
                    _ => BinaryKind::Div,
                };
                (Op::Binary(kind), vec![input(0)?, input(1)?], output.clone())
            }
            "Reshape" => {
                let name = input(1)?;
                let shape = int_constants.get(&name).cloned().ok_or_else(|| {
                    format!(
                        "Reshape node {:?}: the shape {name:?} must be a constant",
                        node.name
                    )
                })?;
                (Op::Reshape(shape), vec![input(0)?], output.clone())
            }
            "Transpose" => {
                let perm = attr_ints(node, "perm")
                    .ok_or_else(|| format!("Transpose node {:?} without perm", node.name))?;
                let perm = perm
                    .iter()
                    .map(|&p| usize::try_from(p).map_err(|_| "negative perm".to_string()))
                    .collect::<Built<_>>()?;
                (Op::Transpose(perm), vec![input(0)?], output.clone())
            }
            "Concat" => (
                Op::Concat(attr_int(node, "axis", 1)),
                node.input.clone(),
                output.clone(),
            ),
            "Constant" => {
                let t = attr(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| {
                        format!("Constant node {:?} without a tensor value", node.name)
                    })?;
                if t.data_type == 7 {
                    int_constants.insert(output.clone(), int64_values(t)?);
                }
                constants.insert(output.clone(), decode_tensor(t, device)?);
                continue;
            }
            other => return Err(format!("operator {other} is not supported")),
        };
        if relu_next && matches!(op, Op::Conv(_) | Op::Linear(_)) {
            fused = Some(at + 1);
        }
        steps.push(Step {
            op,
            inputs,
            output: out,
        });
    }
    Ok(steps)
}

/// Integer constants among the initializers (shapes of `Reshape`).
fn int_initializers(tensors: &[TensorData]) -> HashMap<String, Vec<i64>> {
    tensors
        .iter()
        .filter(|t| t.data_type == 7)
        .filter_map(|t| Some((t.name.clone(), int64_values(t).ok()?)))
        .collect()
}

impl Op {
    /// Evaluate on `args` (the step's inputs, in order).
    pub(super) fn apply(&self, args: &[&Tensor]) -> candle_core::Result<Tensor> {
        let x = args[0];
        match self {
            Op::Conv(conv) => candle_core::Module::forward(conv, x),
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
            Op::Softmax { axis } => candle_nn::ops::softmax(x, axis_index(*axis, x.rank())?),
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
            Op::Reshape(shape) => {
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
            Op::Transpose(perm) => x.permute(perm.as_slice()),
            Op::Concat(axis) => Tensor::cat(args, axis_index(*axis, x.rank())?),
        }
    }
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
