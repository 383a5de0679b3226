//! A run of constant-weight convolutions, max-pools and fully connected layers as one candle
//! custom op on CPU.
//!
//! candle's autograd keeps a node per layer, and for every node backward allocates a zero tensor
//! and adds the incoming gradient to it: for a CNN's early feature maps (11 MB at batch 128 for
//! MNIST's first layer) that is several passes over memory per layer, a tenth of a gradient.
//! As one op the run is a single node: forward keeps each stage's output, backward runs the
//! stages' input-gradient kernels back to front on host buffers, and nothing else is allocated.
//! The values and gradients are those of the layers applied one by one.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::conv_cpu::ConstConv;
use super::linear_cpu::ConstLinear;
use super::max_pool_cpu;

/// One stage of a [`Chain`].
#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// A constant-weight convolution with its fused activation.
    Conv(ConstConv),
    /// Max-pooling with a square kernel and stride.
    Pool { kernel: usize, stride: usize },
    /// A constant-weight fully connected layer with its fused activation (flattens its input).
    Linear(ConstLinear),
}

impl Stage {
    fn forward(&self, x: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)> {
        match self {
            Stage::Conv(cv) => {
                let (out, shape) = cv.batch(x, None, shape)?;
                let CpuStorage::F32(out) = out else {
                    candle_core::bail!("chain: a convolution returned non-f32 data")
                };
                Ok((out, shape))
            }
            Stage::Pool { kernel, stride } => max_pool_cpu::forward(x, shape, *kernel, *stride),
            Stage::Linear(fc) => fc.forward(x, shape),
        }
    }

    /// The gradient of this stage's input `x` for the upstream gradient `g`, given its output.
    fn input_grad(
        &self,
        (x, x_shape): (&[f32], &Shape),
        (out, out_shape): (&[f32], &Shape),
        g: &[f32],
    ) -> Result<Vec<f32>> {
        match self {
            Stage::Conv(cv) => {
                let (_, _, h, w) = x_shape.dims4()?;
                let (gx, _) = cv.input_grad(g, out, out_shape, (h, w))?;
                let CpuStorage::F32(gx) = gx else {
                    candle_core::bail!("chain: a convolution gradient returned non-f32 data")
                };
                Ok(gx)
            }
            Stage::Pool { kernel, stride } => {
                max_pool_cpu::backward(x, g, x_shape, *kernel, *stride)
            }
            Stage::Linear(fc) => fc.input_grad(g, out),
        }
    }
}

/// The stages applied in turn. With `keep`, forward keeps every stage's input for backward
/// (an op built for a tensor that tracks gradients); without, nothing is kept.
pub(super) struct Chain {
    stages: Vec<Stage>,
    keep: bool,
    /// The input of every stage and the final output, from the last forward pass.
    saved: Mutex<Vec<(Vec<f32>, Shape)>>,
}

impl Chain {
    pub(super) fn new(stages: Vec<Stage>, keep: bool) -> Self {
        Self {
            stages,
            keep,
            saved: Mutex::new(Vec::new()),
        }
    }
}

impl CustomOp1 for Chain {
    fn name(&self) -> &'static str {
        "perturb-const-chain"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(storage, layout, self.name())?;
        let mut acts: Vec<(Vec<f32>, Shape)> = Vec::with_capacity(self.stages.len() + 1);
        // the input is copied only to be kept
        let (mut cur, mut shape) = (Cow::Borrowed(x), layout.shape().clone());
        for stage in &self.stages {
            let (next, next_shape) = stage.forward(&cur, &shape)?;
            if self.keep {
                acts.push((cur.into_owned(), shape));
            }
            (cur, shape) = (Cow::Owned(next), next_shape);
        }
        let cur = cur.into_owned();
        if self.keep {
            acts.push((cur.clone(), shape.clone()));
            let mut saved = self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("chain: poisoned state".into()))?;
            *saved = acts;
        }
        Ok((CpuStorage::F32(cur), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let acts = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("chain: poisoned state".into()))?;
        if acts.len() != self.stages.len() + 1 {
            candle_core::bail!("chain: backward without a recorded forward pass")
        }
        let mut g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        for (i, stage) in self.stages.iter().enumerate().rev() {
            let (x, x_shape) = &acts[i];
            let (out, out_shape) = &acts[i + 1];
            g = stage.input_grad((x, x_shape), (out, out_shape), &g)?;
        }
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}
