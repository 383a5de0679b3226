//! A run of constant-weight convolutions, max-pools, depthwise convolutions and fully connected
//! layers as one candle custom op on CPU, optionally plus its input (a residual block).
//!
//! candle's autograd keeps a node per layer, and for every node backward allocates a zero tensor
//! and adds the incoming gradient to it: for a CNN's early feature maps (11 MB at batch 128 for
//! MNIST's first layer) that is several passes over memory per layer, a tenth of a gradient.
//! As one op the run is a single node: forward keeps each stage's output, backward runs the
//! stages' input-gradient kernels back to front on host buffers, and nothing else is allocated.
//! The leading convolutions and pools run sample by sample, one rayon task taking a sample
//! through all of them, forward and backward, so its feature maps stay in the core's cache
//! (a batch of 32 MNIST first-layer maps is 2.8 MB, more than a core's L2); the fully connected
//! layers then run on the whole batch. A batch with fewer samples than threads runs layer by
//! layer, each layer's GEMMs split over the threads; so do depthwise layers and all that follows
//! them (their planes are the parallel unit). An EfficientNet block is one such op, so its
//! expanded feature maps (six times the block's channels) and their gradients never become
//! candle tensors: at batch 32 its loss gradient takes 15 % less time. The values and gradients
//! are those of the layers applied one by one.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cpu::ConstConv;
use super::depthwise_cpu;
use super::input_grad::InputGradKernel;
use super::linear_cpu::ConstLinear;
use super::max_pool_cpu;

/// One stage of a [`Chain`].
#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// A constant-weight convolution with its fused activation.
    Conv(ConstConv),
    /// Max-pooling with a square kernel and stride.
    Pool { kernel: usize, stride: usize },
    /// A constant-weight depthwise convolution with "same" padding and its fused activation
    /// (whole batch: its planes are the parallel unit).
    Depthwise(depthwise_cpu::Kernel),
    /// A constant-weight fully connected layer with its fused activation (flattens its input).
    Linear(ConstLinear),
}

impl Stage {
    /// Whether the stage works on each sample alone (the per-sample prefix of a chain).
    fn per_sample(&self) -> bool {
        matches!(self, Stage::Conv(_) | Stage::Pool { .. })
    }

    /// Output channels, height and width of one `c × h × w` sample, if it fits.
    fn out_chw(&self, dims: (usize, usize, usize)) -> Option<(usize, usize, usize)> {
        match self {
            Stage::Conv(cv) => cv.out_chw(dims),
            Stage::Pool { kernel, stride } => max_pool_cpu::out_chw(dims, *kernel, *stride),
            Stage::Linear(_) | Stage::Depthwise(_) => None,
        }
    }

    /// One sample (of `dims`, fitting per [`Stage::out_chw`]) into `out`, on this thread.
    fn forward_sample(&self, x: &[f32], dims: (usize, usize, usize), out: &mut [f32]) {
        match self {
            Stage::Conv(cv) => cv.forward_sample(x, None, (dims.1, dims.2), out),
            Stage::Pool { kernel, stride } => {
                max_pool_cpu::forward_sample(x, dims, *kernel, *stride, out)
            }
            Stage::Linear(_) | Stage::Depthwise(_) => {}
        }
    }

    /// One sample's input gradient into `gx` (every float written), on this thread.
    fn backward_sample(
        &self,
        (x, out): (&[f32], &[f32]),
        g: &[f32],
        dims: (usize, usize, usize),
        gx: &mut [f32],
    ) {
        match self {
            Stage::Conv(cv) => cv.input_grad_sample(g, out, (dims.1, dims.2), gx),
            Stage::Pool { kernel, stride } => {
                max_pool_cpu::backward_sample(x, g, dims, *kernel, *stride, gx)
            }
            Stage::Linear(_) | Stage::Depthwise(_) => {}
        }
    }

    fn forward(&self, x: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)> {
        match self {
            Stage::Conv(cv) => cv.batch(x, None, shape),
            Stage::Pool { kernel, stride } => max_pool_cpu::forward(x, shape, *kernel, *stride),
            Stage::Linear(fc) => fc.forward(x, shape),
            Stage::Depthwise(k) => k.forward(x, shape),
        }
    }

    /// The gradient of this stage's input `x` for the upstream gradient `g`, given its output.
    fn input_grad(
        &self,
        x: (&[f32], &Shape),
        out: (&[f32], &Shape),
        g: &[f32],
    ) -> Result<Vec<f32>> {
        match self {
            Stage::Conv(cv) => cv.input_grad(x, out, g),
            Stage::Pool { kernel, stride } => {
                let pool = max_pool_cpu::MaxPool {
                    kernel: *kernel,
                    stride: *stride,
                };
                pool.input_grad(x, out, g)
            }
            Stage::Linear(fc) => fc.input_grad(x, out, g),
            Stage::Depthwise(k) => k.input_grad(x, out, g),
        }
    }
}

/// The stages applied in turn, plus the input when `residual` (a residual block: the output
/// then has the input's shape). With `keep`, forward keeps every stage's input for backward
/// (an op built for a tensor that tracks gradients); without, nothing is kept.
pub(super) struct Chain {
    stages: Vec<Stage>,
    residual: bool,
    keep: bool,
    /// The input of every stage and the last stage's output (before any residual sum), from
    /// the last forward pass.
    saved: Mutex<Vec<(Vec<f32>, Shape)>>,
}

impl Chain {
    pub(super) fn new(stages: Vec<Stage>, residual: bool, keep: bool) -> Self {
        Self {
            stages,
            residual,
            keep,
            saved: Mutex::new(Vec::new()),
        }
    }
}

impl Chain {
    /// The number of leading per-sample stages when the batch `shape` is worth running sample
    /// by sample (a 4-D batch with a sample per thread), else 0.
    fn prefix(&self, shape: &Shape) -> usize {
        let n = shape.dims().first().copied().unwrap_or(0);
        if shape.rank() != 4 || n < rayon::current_num_threads() {
            return 0;
        }
        self.stages.iter().take_while(|s| s.per_sample()).count()
    }

    /// Every sample through the first `prefix` stages in one task, its activations staying in
    /// the core's cache (stage by stage, each layer's output for the whole batch would pass
    /// through memory before the next layer reads it). The outputs of those stages, batched.
    fn forward_prefix(
        &self,
        x: &[f32],
        shape: &Shape,
        prefix: usize,
    ) -> Result<Vec<(Vec<f32>, Shape)>> {
        let (n, c, h, w) = shape.dims4()?;
        let mut dims = vec![(c, h, w)];
        for stage in &self.stages[..prefix] {
            let Some(next) = stage.out_chw(dims[dims.len() - 1]) else {
                candle_core::bail!("chain: a {c}x{h}x{w} input does not fit the layers")
            };
            dims.push(next);
        }
        let len = |(c, h, w): (usize, usize, usize)| c * h * w;
        if x.len() != n * len(dims[0]) {
            candle_core::bail!("chain: input of the wrong size")
        }
        let mut bufs: Vec<Vec<f32>> = dims[1..].iter().map(|&d| vec![0f32; n * len(d)]).collect();
        let mut per_sample: Vec<Vec<&mut [f32]>> = (0..n).map(|_| Vec::new()).collect();
        for (buf, &d) in bufs.iter_mut().zip(&dims[1..]) {
            for (outs, chunk) in per_sample.iter_mut().zip(buf.chunks_exact_mut(len(d))) {
                outs.push(chunk);
            }
        }
        per_sample
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut outs)| {
                for (s, stage) in self.stages[..prefix].iter().enumerate() {
                    let (done, todo) = outs.split_at_mut(s);
                    let input: &[f32] = match done.last() {
                        Some(prev) => prev,
                        None => &x[i * len(dims[0])..][..len(dims[0])],
                    };
                    stage.forward_sample(input, dims[s], todo[0]);
                }
            });
        Ok(bufs
            .into_iter()
            .zip(&dims[1..])
            .map(|(b, &(c, h, w))| (b, Shape::from((n, c, h, w))))
            .collect())
    }

    /// The input gradient through the first `prefix` stages, sample by sample, from the
    /// gradient `g` of their output; `acts` as saved by forward.
    fn backward_prefix(
        &self,
        acts: &[(Vec<f32>, Shape)],
        g: &[f32],
        prefix: usize,
    ) -> Result<Vec<f32>> {
        let dims = acts[..=prefix]
            .iter()
            .map(|(_, s)| s.dims4().map(|(_, c, h, w)| (c, h, w)))
            .collect::<Result<Vec<_>>>()?;
        let len = |(c, h, w): (usize, usize, usize)| c * h * w;
        let n = acts[0].1.dims4()?.0;
        if g.len() != n * len(dims[prefix]) {
            candle_core::bail!("chain: gradient of the wrong size")
        }
        let sample = |k: usize, i: usize| &acts[k].0[i * len(dims[k])..][..len(dims[k])];
        let mut gx = vec![0f32; n * len(dims[0])];
        gx.par_chunks_mut(len(dims[0])).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(next, cur), (i, gx_i)| {
                let mut upstream = &g[i * len(dims[prefix])..][..len(dims[prefix])];
                for s in (0..prefix).rev() {
                    let (stage, xs) = (&self.stages[s], (sample(s, i), sample(s + 1, i)));
                    if s == 0 {
                        stage.backward_sample(xs, upstream, dims[0], gx_i);
                    } else {
                        next.resize(len(dims[s]), 0.0);
                        stage.backward_sample(xs, upstream, dims[s], next);
                        std::mem::swap(next, cur);
                        upstream = cur;
                    }
                }
            },
        );
        Ok(gx)
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
        let prefix = self.prefix(&shape);
        if prefix > 0 {
            let mut outs = self.forward_prefix(x, &shape, prefix)?;
            let Some((last, last_shape)) = outs.pop() else {
                candle_core::bail!("chain: no per-sample stage ran")
            };
            if self.keep {
                acts.push((x.to_vec(), shape));
                acts.extend(outs);
            }
            (cur, shape) = (Cow::Owned(last), last_shape);
        }
        for stage in &self.stages[prefix..] {
            let (next, next_shape) = stage.forward(&cur, &shape)?;
            if self.keep {
                acts.push((cur.into_owned(), shape));
            }
            (cur, shape) = (Cow::Owned(next), next_shape);
        }
        let mut cur = cur.into_owned();
        if self.keep {
            // the last stage's own output (before the residual sum): its activation's mask
            acts.push((cur.clone(), shape.clone()));
            let mut saved = self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("chain: poisoned state".into()))?;
            *saved = acts;
        }
        if self.residual {
            if shape != *layout.shape() {
                candle_core::bail!("chain: a residual block changed its input's shape")
            }
            for (o, &xi) in cur.iter_mut().zip(x) {
                *o += xi;
            }
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
        let prefix = self.prefix(&acts[0].1);
        let upstream = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let mut g = Cow::Borrowed(upstream.as_slice());
        for (i, stage) in self.stages.iter().enumerate().skip(prefix).rev() {
            let (x, x_shape) = &acts[i];
            let (out, out_shape) = &acts[i + 1];
            g = Cow::Owned(stage.input_grad((x, x_shape), (out, out_shape), &g)?);
        }
        if prefix > 0 {
            g = Cow::Owned(self.backward_prefix(&acts, &g, prefix)?);
        }
        let mut g = g.into_owned();
        if self.residual {
            // the input also reaches the output directly
            for (gi, &u) in g.iter_mut().zip(&upstream) {
                *gi += u;
            }
        }
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}
