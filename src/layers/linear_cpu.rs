//! A fully connected layer with constant weights as a candle custom op on CPU, with an
//! input-only backward.
//!
//! candle's backward of `matmul` always computes the gradient of both operands: for a
//! classifier's weights (MNIST's 1024 → 200 layer, EfficientNet's 1280 → 1000) that is a GEMM, a
//! zero tensor and an addition of the weight's size on every attack step, for a gradient nobody
//! reads. Here backward computes only `∂L/∂x = (g ⊙ act′) · W`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::conv_cpu::Act;
use super::input_grad::InputGradKernel;
use super::matmul::{matmul, Strided};

/// `y = act(x · Wᵀ + b)` for `x` `[N, in]` (any shape `[N, …]` with `in` features per row).
#[derive(Debug, Clone)]
pub(super) struct ConstLinear {
    /// Weights `[out, in]`, row-major.
    w: Arc<Vec<f32>>,
    /// Bias `[out]`, if any.
    bias: Option<Arc<Vec<f32>>>,
    out: usize,
    inp: usize,
    act: Act,
}

impl ConstLinear {
    /// From weights `[out, in]` (row-major data) and a bias; `None` when the sizes disagree.
    pub(super) fn new(w: Vec<f32>, bias: Option<Vec<f32>>, out: usize, inp: usize) -> Option<Self> {
        let ok = w.len() == out * inp && bias.as_ref().is_none_or(|b| b.len() == out);
        ok.then(|| Self {
            w: Arc::new(w),
            bias: bias.map(Arc::new),
            out,
            inp,
            act: Act::Linear,
        })
    }

    /// The same layer followed by `act`, fused.
    pub(super) fn with_act(self, act: Act) -> Self {
        Self { act, ..self }
    }

    /// Output and input widths and the fused activation.
    pub(super) fn dims(&self) -> (usize, usize, Act) {
        (self.out, self.inp, self.act)
    }

    /// Rows of a `[N, …]` input, checked against the layer's input width.
    pub(super) fn rows(&self, len: usize, shape: &Shape) -> Result<usize> {
        let n = shape.dims().first().copied().unwrap_or(0);
        if shape.rank() < 2 || n * self.inp != len || shape.elem_count() != len {
            candle_core::bail!(
                "const linear: input {shape:?} does not have {} features per row",
                self.inp
            )
        }
        Ok(n)
    }

    /// `act(x · Wᵀ + b)` of a `[N, …]` input `x` with `in` features per row: `[N, out]`.
    pub(super) fn forward(&self, x: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)> {
        let n = self.rows(x.len(), shape)?;
        let mut y = vec![0f32; n * self.out];
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out) {
                row.copy_from_slice(b);
            }
        }
        // y `[N, out]` += x `[N, in]` · Wᵀ (`w` is `[out, in]`, read as its transpose)
        let (lhs, rhs) = (
            Strided::row_major(x, n, self.inp),
            Strided::transposed(&self.w, self.inp, self.out),
        );
        matmul(&mut y, true, lhs, rhs, parallelism(n * self.out * self.inp));
        self.act.apply(&mut y);
        Ok((y, Shape::from((n, self.out))))
    }
}

/// Products of fewer multiply-adds than this run on the calling thread: handing them to the
/// pool costs more than it saves, and a sleeping worker's wake-up made their time bimodal.
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// Threads for a product of `macs` multiply-adds. gemm splits the output, never the sum, so the
/// bits do not depend on the thread count.
pub(super) fn parallelism(macs: usize) -> gemm::Parallelism {
    match rayon::current_num_threads() {
        _ if macs < PARALLEL_MIN_MACS => gemm::Parallelism::None,
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

impl InputGradKernel for ConstLinear {
    const NAME: &'static str = "perturb-const-linear-input-grad";

    /// The input gradient (`[N, in]`, laid out as the input) for the upstream gradient `g`
    /// and the layer's output `y` (both `[N, out]`).
    fn input_grad(
        &self,
        _: (&[f32], &Shape),
        (y, _): (&[f32], &Shape),
        g: &[f32],
    ) -> Result<Vec<f32>> {
        if g.len() != y.len() || !g.len().is_multiple_of(self.out.max(1)) {
            candle_core::bail!("const linear grad: gradient and output sizes disagree")
        }
        let n = g.len() / self.out.max(1);
        let masked: Vec<f32>;
        let g = if self.act == Act::Linear {
            g
        } else {
            let mut m = vec![0f32; g.len()];
            self.act.mask(g, y, &mut m);
            masked = m;
            &masked
        };
        let mut gx = vec![0f32; n * self.inp];
        // gx `[N, in]` = g `[N, out]` · W `[out, in]`
        let (lhs, rhs) = (
            Strided::row_major(g, n, self.out),
            Strided::row_major(&self.w, self.out, self.inp),
        );
        matmul(
            &mut gx,
            false,
            lhs,
            rhs,
            parallelism(n * self.out * self.inp),
        );
        Ok(gx)
    }
}

impl CustomOp1 for ConstLinear {
    fn name(&self) -> &'static str {
        "perturb-const-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(storage, layout, self.name())?;
        let (y, shape) = self.forward(x, layout.shape())?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        super::input_grad::backward(self, arg, res, grad_res).map(Some)
    }
}
