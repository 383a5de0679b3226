//! Layers whose candle versions have wrong gradients, rebuilt from ops with correct ones.
//!
//! candle 0.11's `max_pool2d` backward multiplies the upstream gradient by
//! (number of maxima)/(k·k) instead of routing it to the maximum, so a 2×2 pool divides the input
//! gradient by 4 and a two-pool CNN's gradient comes out 16 times too small. [`max_pool2d`] here
//! routes the gradient to the maximum of each window (split evenly among ties).

mod chain_cpu;
mod conv_cpu;
mod depthwise_cpu;
mod direct_cpu;
mod input_grad;
mod linear_cpu;
mod matmul;
mod max_pool_cpu;
mod weight_grad;

pub use depthwise_cpu::{same_padding, DepthwiseConv2d, Padding};

use candle_core::{DType, Module, Tensor};

use crate::ops::max_dim;
use conv_cpu::Act;

/// Whether a weight can take the fast kernels: a constant (not a [`Var`](candle_core::Var),
/// so no weight gradient is wanted) `f32` tensor on the CPU.
fn is_constant_cpu_f32(t: &Tensor) -> bool {
    !t.is_variable() && is_cpu_f32(t)
}

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Whether a layer's weight and bias take the trainable kernels of `weight_grad.rs`: a bias is
/// there, both are `f32` on the CPU, and at least one is a [`Var`](candle_core::Var).
fn is_trained_cpu_f32(weight: &Tensor, bias: Option<&Tensor>) -> bool {
    bias.is_some_and(|b| {
        is_cpu_f32(weight) && is_cpu_f32(b) && (weight.is_variable() || b.is_variable())
    })
}

/// `act` with candle's own ops (the path for other devices and trained weights).
fn activate(x: &Tensor, act: Act) -> candle_core::Result<Tensor> {
    match act {
        Act::Linear => Ok(x.clone()),
        Act::Relu => x.relu(),
        Act::Relu6 => x.clamp(0f32, 6f32),
    }
}

/// The contiguous `f32` data of a CPU storage, or an error naming the op.
fn f32_slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// 2-D max pooling of an `[N, C, H, W]` tensor, no padding, floor mode (as PyTorch's
/// `nn.MaxPool2d(kernel, stride)`), with a correct gradient.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[[[[1.0f32, 2.0], [4.0, 3.0]]]], &Device::Cpu)?;
/// let y = perturb::layers::max_pool2d(x.as_tensor(), 2, 2)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [4.0]);
/// let grads = y.sum_all()?.backward()?;
/// let g = grads.get(x.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
/// let g = g.flatten_all()?.to_vec1::<f32>()?;
/// assert_eq!(g, [0.0, 0.0, 1.0, 0.0]); // candle's own max_pool2d gives 0.25 here
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// When `x` is not rank 4, the kernel or stride is zero, or the kernel is larger than the input.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op1(max_pool_cpu::MaxPool { kernel, stride });
    }
    max_pool2d_composed(x, kernel, stride)
}

/// [`max_pool2d`] built from candle ops (runs on every device; the CPU path is a custom op with
/// the same values and gradients, about five times faster).
///
/// # Errors
/// As [`max_pool2d`].
pub fn max_pool2d_composed(
    x: &Tensor,
    kernel: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if kernel == 0 || stride == 0 || kernel > h || kernel > w {
        candle_core::bail!(
            "max_pool2d: kernel {kernel}, stride {stride} do not fit a {h}x{w} input"
        )
    }
    let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    let windows = if kernel == stride {
        x.narrow(2, 0, ho * kernel)?
            .narrow(3, 0, wo * kernel)?
            .reshape((n, c, ho, kernel, wo, kernel))?
            .permute((0, 1, 2, 4, 3, 5))?
            .reshape((n, c, ho, wo, kernel * kernel))?
    } else {
        let offsets = |start: usize, len: usize| {
            let idx: Vec<u32> = (0..len).map(|o| (start + o * stride) as u32).collect();
            Tensor::new(idx.as_slice(), x.device())
        };
        let mut taps = Vec::with_capacity(kernel * kernel);
        for i in 0..kernel {
            let rows = x.index_select(&offsets(i, ho)?, 2)?;
            for j in 0..kernel {
                taps.push(rows.index_select(&offsets(j, wo)?, 3)?);
            }
        }
        Tensor::stack(&taps, 4)?
    };
    max_dim(&windows, 4)
}

/// [`max_pool2d`] as a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    kernel: usize,
    stride: usize,
}

impl MaxPool2d {
    /// A pool with the given kernel size and stride.
    pub fn new(kernel: usize, stride: usize) -> Self {
        Self { kernel, stride }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        max_pool2d(x, self.kernel, self.stride)
    }
}

/// A 2-D convolution layer that computes the input gradient fast when its weights are constants.
///
/// With constant (non-[`Var`](candle_core::Var)) `f32` weights on the CPU, stride 1, no dilation,
/// one group and padding smaller than the kernel, the forward pass is GEMMs per sample (one per
/// kernel offset, or im2col and one), and the backward pass computes only the input gradient, as
/// one more such convolution
/// (see `conv_cpu.rs`): no weight gradient, no `conv_transpose2d`. With weights being trained
/// ([`Var`](candle_core::Var)s with a bias, same configurations, after
/// [`trainable`](Conv2d::trainable)) forward is the same kernel and
/// backward adds the weight and bias gradients, one GEMM per chunk of samples
/// (`weight_grad.rs`). In every other case (other devices or configurations) it is candle-nn's
/// `Conv2d` with stock autograd. Values and gradients agree with candle-nn to float rounding.
///
/// ```
/// use candle_core::{Device, Module, Tensor, Var};
/// use candle_nn::Conv2dConfig;
/// let dev = Device::Cpu;
/// let w = Tensor::arange(0f32, 18.0, &dev)?.reshape((2, 1, 3, 3))?;
/// let b = Tensor::new(&[0.5f32, -1.0], &dev)?;
/// let fast = perturb::layers::Conv2d::new(w.clone(), Some(b.clone()), Conv2dConfig::default())?;
/// assert!(fast.is_fast());
/// let stock = candle_nn::Conv2d::new(w, Some(b), Conv2dConfig::default());
/// let x = Var::new(&[[[[0.1f32, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 0.0, 0.1],
///                      [0.2, 0.3, 0.4, 0.5]]]], &dev)?;
/// let (a, b) = (fast.forward(&x)?, stock.forward(&x)?);
/// assert!((a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// let ga = fast.forward(&x)?.sum_all()?.backward()?;
/// let gb = stock.forward(&x)?.sum_all()?.backward()?;
/// let missing = || candle_core::Error::Msg("no gradient".into());
/// let (ga, gb) = (ga.get(&x).ok_or_else(missing)?, gb.get(&x).ok_or_else(missing)?);
/// let diff = (ga - gb)?.abs()?.max_all()?;
/// assert!(diff.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv2d {
    stock: candle_nn::Conv2d,
    fast: Option<conv_cpu::ConstConv>,
    /// The padding of the trainable kernel, when the weights are being trained and fit it.
    train: Option<(usize, usize)>,
    act: Act,
}

impl Conv2d {
    /// A convolution with `weight` `[O, C, KH, KW]`, an optional `bias` `[O]` and `config`.
    ///
    /// # Errors
    /// When the weights cannot be copied to the host.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        config: candle_nn::Conv2dConfig,
    ) -> candle_core::Result<Self> {
        let eligible = fast_geometry(&weight, &config)
            && is_constant_cpu_f32(&weight)
            && bias.as_ref().is_none_or(is_constant_cpu_f32);
        let fast = if eligible {
            let dims = weight.dims4()?;
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias
                .as_ref()
                .map(|b| b.flatten_all()?.to_vec1::<f32>())
                .transpose()?;
            let pad = (config.padding, config.padding);
            conv_cpu::ConstConv::new(w, b, [dims.0, dims.1, dims.2, dims.3], pad)
        } else {
            None
        };
        Ok(Self {
            stock: candle_nn::Conv2d::new(weight, bias, config),
            fast,
            train: None,
            act: Act::Linear,
        })
    }

    /// The same layer followed by a ReLU. On the fast path the two are fused: one pass forward,
    /// and the backward masks the upstream gradient while copying it (gradient 0 at 0, as
    /// PyTorch; candle's own `relu` passes the gradient at exactly 0). The fused input gradient
    /// is first-order only.
    pub fn with_relu(self) -> Self {
        self.with_act(Act::Relu)
    }

    /// The same layer followed by a ReLU6, `min(max(x, 0), 6)`, fused as in
    /// [`with_relu`](Self::with_relu) (gradient 0 at 0 and at 6, as PyTorch's `ReLU6`).
    pub fn with_relu6(self) -> Self {
        self.with_act(Act::Relu6)
    }

    /// Whether an activation is fused into the layer.
    pub(crate) fn has_act(&self) -> bool {
        self.act != Act::Linear
    }

    fn with_act(self, act: Act) -> Self {
        Self {
            fast: self.fast.map(|f| f.with_act(act)),
            act,
            ..self
        }
    }

    /// The same layer for training: where its weights are [`Var`](candle_core::Var)s with a
    /// bias, `f32` on the CPU, in the configurations of the constant-weight path, forward is the
    /// fast kernel run on the weights' current values and backward computes the input, weight
    /// and bias gradients with GEMMs (see [`is_fast_trainable`](Self::is_fast_trainable));
    /// otherwise unchanged. Without this call, variables take candle's own autograd, the
    /// reference our kernels are tested against.
    ///
    /// ```
    /// use candle_core::{DType, Device, Module, Tensor, Var};
    /// let dev = Device::Cpu;
    /// let w = Var::ones((2, 1, 3, 3), DType::F32, &dev)?;
    /// let b = Var::zeros(2, DType::F32, &dev)?;
    /// let conv = perturb::layers::Conv2d::new(
    ///     w.as_tensor().clone(),
    ///     Some(b.as_tensor().clone()),
    ///     Default::default(),
    /// )?
    /// .trainable();
    /// assert!(conv.is_fast_trainable());
    /// let x = Tensor::ones((1, 1, 4, 4), DType::F32, &dev)?;
    /// let grads = conv.forward(&x)?.sum_all()?.backward()?;
    /// let gw = grads.get(w.as_tensor()).ok_or_else(|| candle_core::Error::Msg("none".into()))?;
    /// // each weight meets the four output positions, each input pixel 1
    /// assert_eq!(gw.flatten_all()?.to_vec1::<f32>()?, vec![4.0; 18]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn trainable(self) -> Self {
        let (weight, config) = (self.stock.weight(), self.stock.config());
        let train = (fast_geometry(weight, config)
            && is_trained_cpu_f32(weight, self.stock.bias()))
        .then_some((config.padding, config.padding));
        Self { train, ..self }
    }

    /// Whether the fast constant-weight path is in use (on CPU `f32` inputs).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether the fast trainable path is in use (on CPU `f32` inputs): the weights are
    /// variables and backward computes their gradients with GEMMs, not candle's autograd.
    pub fn is_fast_trainable(&self) -> bool {
        self.train.is_some()
    }

    /// The equivalent candle-nn layer.
    pub fn stock(&self) -> &candle_nn::Conv2d {
        &self.stock
    }
}

impl TryFrom<candle_nn::Conv2d> for Conv2d {
    type Error = candle_core::Error;

    fn try_from(conv: candle_nn::Conv2d) -> candle_core::Result<Self> {
        Conv2d::new(conv.weight().clone(), conv.bias().cloned(), *conv.config())
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.fast {
            Some(op) if is_cpu_f32(x) => x.contiguous()?.apply_op1(op.clone()),
            _ => match (self.train, self.stock.bias()) {
                (Some(pad), Some(b)) if is_cpu_f32(x) => x.contiguous()?.apply_op3(
                    self.stock.weight(),
                    b,
                    weight_grad::TrainConv::new(pad, self.act),
                ),
                _ => activate(&self.stock.forward(x)?, self.act),
            },
        }
    }
}

/// Whether a convolution's configuration fits the fast kernels: stride 1, no dilation, one
/// group, padding below the kernel's size.
fn fast_geometry(weight: &Tensor, config: &candle_nn::Conv2dConfig) -> bool {
    config.stride == 1
        && config.dilation == 1
        && config.groups == 1
        && weight.rank() == 4
        && weight.dim(2).is_ok_and(|kh| config.padding < kh)
        && weight.dim(3).is_ok_and(|kw| config.padding < kw)
}

/// A fully connected layer that computes only the input gradient when its weights are constants.
///
/// With constant (non-[`Var`](candle_core::Var)) `f32` weights on the CPU, the layer is one
/// custom op whose backward is `∂L/∂x = g · W` alone: candle's own `matmul` backward also
/// computes the weight gradient (a GEMM, a zero tensor and an addition of the weight's size per
/// attack step) that an attack never reads. With weights being trained (variables, with a bias, after
/// [`trainable`](Linear::trainable)) backward adds their gradients, one GEMM each (`weight_grad.rs`). In every other case it is
/// candle-nn's `Linear` with stock autograd. Inputs `[N, …]` are flattened to `[N, in]` first. Values and gradients agree
/// with candle-nn to float rounding.
///
/// ```
/// use candle_core::{Device, Module, Tensor, Var};
/// let dev = Device::Cpu;
/// let w = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.0, 3.0, -1.0]], &dev)?;
/// let b = Tensor::new(&[0.1f32, -0.2], &dev)?;
/// let fast = perturb::layers::Linear::new(w.clone(), Some(b.clone()))?;
/// assert!(fast.is_fast());
/// let stock = candle_nn::Linear::new(w, Some(b));
/// let x = Var::new(&[[0.2f32, 0.4, 0.6], [0.9, 0.1, 0.3]], &dev)?;
/// let (a, s) = (fast.forward(&x)?, stock.forward(&x)?);
/// assert!((a - &s)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
/// let ga = fast.forward(&x)?.sqr()?.sum_all()?.backward()?;
/// let gs = stock.forward(&x)?.sqr()?.sum_all()?.backward()?;
/// let missing = || candle_core::Error::Msg("no gradient".into());
/// let (ga, gs) = (ga.get(&x).ok_or_else(missing)?, gs.get(&x).ok_or_else(missing)?);
/// assert!((ga - gs)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    stock: candle_nn::Linear,
    fast: Option<linear_cpu::ConstLinear>,
    /// Whether the weights are being trained and take the trainable kernel.
    train: bool,
    act: Act,
}

impl Linear {
    /// A layer with `weight` `[out, in]` and an optional `bias` `[out]`.
    ///
    /// # Errors
    /// When the weights cannot be copied to the host.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let eligible = is_constant_cpu_f32(&weight)
            && bias.as_ref().is_none_or(is_constant_cpu_f32)
            && weight.rank() == 2;
        let fast = if eligible {
            let (out, inp) = weight.dims2()?;
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias
                .as_ref()
                .map(|b| b.flatten_all()?.to_vec1::<f32>())
                .transpose()?;
            linear_cpu::ConstLinear::new(w, b, out, inp)
        } else {
            None
        };
        Ok(Self {
            stock: candle_nn::Linear::new(weight, bias),
            fast,
            train: false,
            act: Act::Linear,
        })
    }

    /// The same layer followed by a ReLU, fused on the fast paths (gradient 0 at 0, as
    /// PyTorch).
    pub fn with_relu(self) -> Self {
        Self {
            fast: self.fast.map(|f| f.with_act(Act::Relu)),
            act: Act::Relu,
            ..self
        }
    }

    /// Whether the fast constant-weight path is in use (on CPU `f32` inputs).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether an activation is fused into the layer.
    pub(crate) fn has_act(&self) -> bool {
        self.act != Act::Linear
    }

    /// The same layer for training: with [`Var`](candle_core::Var) weights and a bias, `f32` on
    /// the CPU, backward computes the input, weight and bias gradients with GEMMs; otherwise
    /// unchanged. As [`Conv2d::trainable`].
    ///
    /// ```
    /// use candle_core::{DType, Device, Module, Tensor, Var};
    /// let dev = Device::Cpu;
    /// let w = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev)?;
    /// let b = Var::zeros(2, DType::F32, &dev)?;
    /// let fc = perturb::layers::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()))?
    ///     .trainable();
    /// assert!(fc.is_fast_trainable());
    /// let x = Tensor::new(&[[0.5f32, -1.0]], &dev)?;
    /// let grads = fc.forward(&x)?.sum_all()?.backward()?;
    /// let gw = grads.get(w.as_tensor()).ok_or_else(|| candle_core::Error::Msg("none".into()))?;
    /// assert_eq!(gw.to_vec2::<f32>()?, [[0.5, -1.0], [0.5, -1.0]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn trainable(self) -> Self {
        let weight = self.stock.weight();
        let train = weight.rank() == 2 && is_trained_cpu_f32(weight, self.stock.bias());
        Self { train, ..self }
    }

    /// Whether the fast trainable path is in use (on CPU `f32` inputs): the weights are
    /// variables and backward computes their gradients with GEMMs.
    pub fn is_fast_trainable(&self) -> bool {
        self.train
    }

    /// The equivalent candle-nn layer.
    pub fn stock(&self) -> &candle_nn::Linear {
        &self.stock
    }
}

impl TryFrom<candle_nn::Linear> for Linear {
    type Error = candle_core::Error;

    fn try_from(fc: candle_nn::Linear) -> candle_core::Result<Self> {
        Linear::new(fc.weight().clone(), fc.bias().cloned())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.flatten_from(1)?;
        match &self.fast {
            Some(op) if is_cpu_f32(&x) => x.contiguous()?.apply_op1(op.clone()),
            _ => match self.stock.bias() {
                Some(b) if self.train && is_cpu_f32(&x) => x.contiguous()?.apply_op3(
                    self.stock.weight(),
                    b,
                    weight_grad::TrainLinear::new(self.act),
                ),
                _ => activate(&self.stock.forward(&x)?, self.act),
            },
        }
    }
}

/// One layer of a run applied by [`forward_chain`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChainLayer<'a> {
    /// A convolution with its fused activation.
    Conv(&'a Conv2d),
    /// [`max_pool2d`] with this kernel and stride.
    MaxPool(usize, usize),
    /// A fully connected layer with its fused activation (on `[N, …]`, flattened).
    Linear(&'a Linear),
    /// A depthwise convolution with its fused activation.
    Depthwise(&'a DepthwiseConv2d),
}

/// Apply `layers` in turn. On CPU `f32` input with every layer on its fast path the run is one
/// custom op: one autograd node instead of one per layer, and a backward that chains the layers'
/// input-gradient kernels without candle's per-node zero tensors and additions (see
/// `chain_cpu.rs`). Values and gradients are those of the layers applied one by one.
pub(crate) fn forward_chain(x: &Tensor, layers: &[ChainLayer]) -> candle_core::Result<Tensor> {
    chain(x, layers, false)
}

/// `x` plus [`forward_chain`] of `x`: a residual block as one autograd node, its inner feature
/// maps and their gradients never candle tensors (EfficientNet's expanded maps are six times
/// as wide as the block's input).
pub(crate) fn forward_residual(x: &Tensor, layers: &[ChainLayer]) -> candle_core::Result<Tensor> {
    chain(x, layers, true)
}

fn chain(x: &Tensor, layers: &[ChainLayer], residual: bool) -> candle_core::Result<Tensor> {
    let stages: Option<Vec<chain_cpu::Stage>> = layers
        .iter()
        .map(|layer| match layer {
            ChainLayer::Conv(conv) => conv.fast.clone().map(chain_cpu::Stage::Conv),
            ChainLayer::MaxPool(kernel, stride) => Some(chain_cpu::Stage::Pool {
                kernel: *kernel,
                stride: *stride,
            }),
            ChainLayer::Linear(fc) => fc.fast.clone().map(chain_cpu::Stage::Linear),
            ChainLayer::Depthwise(dw) => dw.kernel().cloned().map(chain_cpu::Stage::Depthwise),
        })
        .collect();
    match stages {
        Some(stages) if x.device().is_cpu() && x.dtype() == DType::F32 => {
            let op = chain_cpu::Chain::new(stages, residual, x.track_op());
            x.contiguous()?.apply_op1(op)
        }
        _ => {
            let out = layers.iter().try_fold(x.clone(), |h, layer| match layer {
                ChainLayer::Conv(conv) => conv.forward(&h),
                ChainLayer::MaxPool(kernel, stride) => max_pool2d(&h, *kernel, *stride),
                ChainLayer::Linear(fc) => fc.forward(&h),
                ChainLayer::Depthwise(dw) => dw.forward(&h),
            })?;
            if residual {
                out + x
            } else {
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Deterministic values spread over `[-scale, scale]`.
    fn spread(len: usize, salt: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0) * scale)
            .collect()
    }

    fn tensor(dims: &[usize], salt: usize, scale: f32, var: bool) -> Tensor {
        let t = Tensor::from_vec(
            spread(dims.iter().product(), salt, scale),
            dims,
            &Device::Cpu,
        )
        .expect("tensor");
        if var {
            Var::from_tensor(&t).expect("var").as_tensor().clone()
        } else {
            t
        }
    }

    /// An EfficientNet block (1×1 expansion, depthwise, 1×1 projection, ReLU6 after each so
    /// that every stage's mask matters) with constant weights, or the same weights as variables
    /// (every layer composed of candle ops, stock autograd).
    fn block(
        (c, e, k, stride): (usize, usize, usize, usize),
        var: bool,
    ) -> (Conv2d, DepthwiseConv2d, Conv2d) {
        let cfg = candle_nn::Conv2dConfig::default();
        let expand = Conv2d::new(
            tensor(&[e, c, 1, 1], 1, 1.5, var),
            Some(tensor(&[e], 2, 1.0, var)),
            cfg,
        )
        .expect("expand")
        .with_relu6();
        let depthwise = DepthwiseConv2d::new(
            tensor(&[e, 1, k, k], 3, 1.0, var),
            Some(tensor(&[e], 4, 0.5, var)),
            stride,
        )
        .expect("depthwise")
        .with_relu6();
        let project = Conv2d::new(
            tensor(&[c, e, 1, 1], 5, 1.0, var),
            Some(tensor(&[c], 6, 0.5, var)),
            cfg,
        )
        .expect("project")
        .with_relu6();
        assert_eq!(expand.is_fast() && depthwise.is_fast(), !var);
        (expand, depthwise, project)
    }

    /// A block as one chain node (with and without the residual sum, a batch run sample by
    /// sample and a single sample run layer by layer, strides 1 and 2) gives the values and input
    /// gradients of its layers applied one by one with candle's autograd.
    #[test]
    fn chained_blocks_match_their_layers_one_by_one() {
        for (n, stride, residual) in [(3, 1, true), (1, 1, true), (3, 2, false), (1, 1, false)] {
            let (c, e, k, h, w) = (4, 12, 3, 9, 7);
            let x = Var::from_tensor(&(tensor(&[n, c, h, w], 7, 2.0, false) + 2.0).expect("x"))
                .expect("var");
            let probe_dims = [n, c, h.div_ceil(stride), w.div_ceil(stride)];
            let probe = tensor(&probe_dims, 8, 1.0, false);
            let run = |var: bool| {
                let (expand, depthwise, project) = block((c, e, k, stride), var);
                let layers = [
                    ChainLayer::Conv(&expand),
                    ChainLayer::Depthwise(&depthwise),
                    ChainLayer::Conv(&project),
                ];
                let y = if residual {
                    forward_residual(x.as_tensor(), &layers)
                } else {
                    forward_chain(x.as_tensor(), &layers)
                }
                .expect("forward");
                let grads = (&y * &probe)
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.backward())
                    .expect("backward");
                let g = grads.get(x.as_tensor()).expect("input gradient").clone();
                (y, g)
            };
            let ((yf, gf), (ys, gs)) = (run(false), run(true));
            assert_eq!(yf.dims(), probe_dims);
            let diff = |a: &Tensor, b: &Tensor| -> (f32, f32) {
                let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
                let m = b.abs().and_then(|m| m.max_all());
                (
                    d.and_then(|d| d.to_scalar()).expect("diff"),
                    m.and_then(|m| m.to_scalar()).expect("max"),
                )
            };
            let ((dy, my), (dg, mg)) = (diff(&yf, &ys), diff(&gf, &gs));
            let case = format!("batch {n}, stride {stride}, residual {residual}");
            assert!(my > 1.0 && dy <= 1e-5 * my, "{case}: values {dy} of {my}");
            assert!(
                mg > 0.1 && dg <= 1e-5 * mg,
                "{case}: gradients {dg} of {mg}"
            );
        }
    }
}
