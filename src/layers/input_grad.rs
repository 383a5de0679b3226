//! The one candle op that runs a layer's input-gradient kernel as that layer's backward pass.
//!
//! Every fast layer here is a `CustomOp1` whose weights are constants, so its backward needs only
//! the gradient with respect to its input. Each supplies that as an [`InputGradKernel`] on host
//! slices; [`backward`] wraps it in one generic op on (upstream gradient, the layer's input, its
//! output), which checks and unpacks the storages. The chain of `chain_cpu.rs` calls the same
//! kernels directly on its saved buffers.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// A layer's input gradient on contiguous host `f32` data.
pub(super) trait InputGradKernel: Clone + Send + Sync + 'static {
    /// The gradient op's name, in candle's graph and in its errors.
    const NAME: &'static str;

    /// The gradient with respect to the layer's input `x` (of `x_shape`, the result laid out
    /// the same) for the upstream gradient `g`, given the layer's output `out` (`g` and `out`
    /// both of `out_shape`). A layer reads what it needs: a fused activation masks `g` by
    /// `out`, a max-pool finds each window's maximum in `x`.
    fn input_grad(&self, x: (&[f32], &Shape), out: (&[f32], &Shape), g: &[f32])
        -> Result<Vec<f32>>;
}

/// The gradient with respect to `arg` of `kernel`'s layer, applied to `arg` with result `res`,
/// for the upstream gradient `grad`: for a `CustomOp1::bwd`. First-order only: the result has no
/// backward of its own (attacks need no second derivatives).
pub(super) fn backward<K: InputGradKernel>(
    kernel: &K,
    arg: &Tensor,
    res: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    grad.contiguous()?.apply_op3_no_bwd(
        &arg.contiguous()?,
        &res.contiguous()?,
        &InputGrad(kernel.clone()),
    )
}

/// (upstream gradient, the layer's input, its output) → the gradient with respect to the input.
struct InputGrad<K>(K);

impl<K: InputGradKernel> CustomOp3 for InputGrad<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l3.shape() {
            candle_core::bail!("{}: gradient and output shapes differ", K::NAME)
        }
        let g = super::f32_slice(s1, l1, K::NAME)?;
        let x = (super::f32_slice(s2, l2, K::NAME)?, l2.shape());
        let out = (super::f32_slice(s3, l3, K::NAME)?, l3.shape());
        let gx = self.0.input_grad(x, out, g)?;
        if gx.len() != l2.shape().elem_count() {
            candle_core::bail!("{}: gradient of the wrong size", K::NAME)
        }
        Ok((CpuStorage::F32(gx), l2.shape().clone()))
    }
}
