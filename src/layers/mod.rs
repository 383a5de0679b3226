//! Layers whose candle versions have wrong gradients, rebuilt from ops with correct ones.
//!
//! candle 0.11's `max_pool2d` backward multiplies the upstream gradient by
//! (number of maxima)/(k·k) instead of routing it to the maximum, so a 2×2 pool divides the input
//! gradient by 4 and a two-pool CNN's gradient comes out 16 times too small. [`max_pool2d`] here
//! routes the gradient to the maximum of each window (split evenly among ties).

mod max_pool_cpu;

use candle_core::{DType, Module, Tensor};

use crate::ops::max_dim;

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
