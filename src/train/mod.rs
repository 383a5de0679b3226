//! Training zoo architectures: standard, adversarial with any [`Attack`] (Madry et al. 2018),
//! or TRADES (Zhang et al. 2019), with an ε warm-up and a step learning-rate schedule.
//!
//! Deterministic: initialization, shuffling and the attack's random starts all come from seeded
//! generators, and the layers' weight gradients are summed in a fixed order
//! ([`Arch::build_trainable`]), so the same data, configuration and seed give the same weights
//! bit for bit on one machine, on any number of threads.

mod trades;

pub use trades::Trades;

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Module, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::zoo::Arch;
use crate::Attack;

/// Optimization settings: Adam with a constant learning rate, then a tenth of it for the last
/// `decay_epochs` epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Final epochs run at lr/10.
    pub decay_epochs: usize,
    /// Seed of initialization and shuffling.
    pub seed: u64,
    /// First epoch to run (from 1): resuming at epoch k from the weights saved after epoch k − 1
    /// replays the same shuffles, seeds and learning rates (Adam's moments restart from zero).
    pub start_epoch: usize,
    /// Epochs over which an adversarial objective's budget grows linearly, batch by batch, from
    /// nothing to its full ε (0: full from the first batch). Starting at ε = 0.3 on MNIST, a
    /// fresh network may never leave chance accuracy.
    pub eps_warmup_epochs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 128,
            lr: 1e-3,
            decay_epochs: 0,
            seed: 0,
            start_epoch: 1,
            eps_warmup_epochs: 0,
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss (on adversarial inputs when training adversarially).
    pub loss: f64,
    /// Training accuracy on the inputs the model was trained on (the clean ones for TRADES).
    pub accuracy: f64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// Builds the attack for one training batch from that batch's seed and the warm-up's budget
/// scale `s` ∈ (0, 1], so that random starts are fresh for every batch and still reproducible:
/// e.g. `|seed, s| Ok(Box::new(Pgd::new(Budget::linf(0.3 * s)?).step_size(0.1 * s).seed(seed)))`.
pub type AttackForBatch<'a> = &'a dyn Fn(u64, f32) -> Result<Box<dyn Attack>>;

/// What a training step minimises.
#[derive(Clone, Copy)]
pub enum Objective<'a> {
    /// Cross-entropy on the clean batch.
    Clean,
    /// Cross-entropy on adversarial examples against the current weights (Madry et al. 2018),
    /// from the attack built for each batch. Build it with `check_gradient(false)`: the check
    /// costs forward passes on every batch.
    Adversarial(AttackForBatch<'a>),
    /// TRADES: clean cross-entropy plus β · KL between the clean and the adversarial
    /// predictions, the adversarial point maximising that KL.
    Trades(Trades),
}

impl std::fmt::Debug for Objective<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Objective::Clean => f.write_str("Clean"),
            Objective::Adversarial(_) => f.write_str("Adversarial(..)"),
            Objective::Trades(t) => write!(f, "{t:?}"),
        }
    }
}

/// Train `arch` on `images` `[N, C, H, W]` and `u32` `labels` `[N]` to minimise `objective`,
/// each batch's seed derived from `cfg.seed`, the epoch and the batch index.
///
/// Starts from `init` (e.g. a checkpoint) or from fresh weights, calls `on_epoch` with the
/// epoch's figures and the current parameters after each epoch (to save checkpoints), and returns
/// the trained parameters by name.
///
/// # Errors
/// Invalid configuration, shapes that do not fit the architecture, or attack errors.
pub fn train(
    arch: Arch,
    images: &Tensor,
    labels: &Tensor,
    cfg: &TrainConfig,
    init: Option<&HashMap<String, Tensor>>,
    objective: Objective<'_>,
    mut on_epoch: impl FnMut(&EpochStats, &HashMap<String, Tensor>),
) -> Result<HashMap<String, Tensor>> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::InvalidParameter {
            name: "train config",
            value: format!("{cfg:?}"),
            reason: "epochs and batch_size must be >= 1 and lr positive",
        });
    }
    let device = images.device();
    let fresh;
    let init = match init {
        Some(init) => init,
        None => {
            fresh = arch.init(cfg.seed, device)?;
            &fresh
        }
    };
    let mut vars = Vec::new();
    let mut live = HashMap::new();
    for (name, t) in init {
        let v = Var::from_tensor(t)?;
        live.insert(name.clone(), v.as_tensor().clone());
        vars.push((name.clone(), v));
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let model = arch.build_trainable(&live, std::path::Path::new("<training>"))?;
    let params = ParamsAdamW {
        lr: cfg.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)?;
    let n = images.dim(0)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let mut order: Vec<u32> = (0..n as u32).collect();
    for epoch in 1..=cfg.epochs {
        if epoch + cfg.decay_epochs > cfg.epochs {
            opt.set_learning_rate(cfg.lr / 10.0);
        }
        let start = Instant::now();
        order.shuffle(&mut rng);
        if epoch < cfg.start_epoch {
            continue; // replayed shuffle of an epoch done before resuming
        }
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        let batches = n.div_ceil(cfg.batch_size);
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let idx = Tensor::from_slice(chunk, chunk.len(), device)?;
            let x = images.index_select(&idx, 0)?;
            let y = labels.index_select(&idx, 0)?;
            let seed = batch_seed(cfg.seed, epoch, b);
            let scale = warmup_scale(cfg.eps_warmup_epochs, epoch, b, batches);
            // The attack sees the current weights as constants, so it takes the
            // input-gradient-only fast layers instead of the trainable ones.
            let frozen = || arch.build(&detached(&vars), std::path::Path::new("<training>"));
            let (loss, logits) = match objective {
                Objective::Clean => clean_loss(&model, &x, &y)?,
                Objective::Adversarial(make) => {
                    let x_adv =
                        make(seed, scale)?.perturb(&frozen()?, &x, &Goal::untargeted(&y))?;
                    clean_loss(&model, &x_adv, &y)?
                }
                Objective::Trades(t) => {
                    let x_adv = t.scaled(scale).maximise_kl(&frozen()?, &x, seed)?;
                    t.loss(&model, &x, &x_adv, &y)?
                }
            };
            opt.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
            let pred = logits.argmax(1)?.to_vec1::<u32>()?;
            let truth = y.to_vec1::<u32>()?;
            correct += pred.iter().zip(&truth).filter(|(p, t)| p == t).count();
        }
        let current = detached(&vars);
        on_epoch(
            &EpochStats {
                epoch,
                loss: loss_sum / n as f64,
                accuracy: correct as f64 / n as f64,
                seconds: start.elapsed().as_secs_f64(),
            },
            &current,
        );
    }
    Ok(detached(&vars))
}

/// The current values of the named variables, as constants.
fn detached(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(name, v)| (name.clone(), v.as_tensor().detach()))
        .collect()
}

/// The mean cross-entropy of `model` on `(x, y)`, and the logits it judged.
fn clean_loss(model: &impl Module, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let logits = model.forward(x)?;
    let loss = Loss::CrossEntropy
        .objective(&logits, y, false)?
        .mean_all()?;
    Ok((loss, logits))
}

/// The budget scale of batch `b` (of `batches`) in `epoch` (from 1) under a linear warm-up over
/// `warmup` epochs: from 1/(warmup·batches) at the first batch to 1 at the end of the warm-up.
fn warmup_scale(warmup: usize, epoch: usize, b: usize, batches: usize) -> f32 {
    if warmup == 0 {
        return 1.0;
    }
    let done = (epoch - 1) * batches + b + 1;
    (done as f64 / (warmup * batches) as f64).min(1.0) as f32
}

/// A seed for batch `b` of `epoch`, distinct for every (seed, epoch, batch).
fn batch_seed(seed: u64, epoch: usize, b: usize) -> u64 {
    // SplitMix64 finalizer over the packed triple.
    let mut z = seed ^ ((epoch as u64) << 40) ^ (b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::warmup_scale;

    /// Linear in the batch count over the warm-up epochs, then 1; no warm-up is 1 throughout.
    #[test]
    fn warmup_grows_linearly_to_one() {
        assert_eq!(warmup_scale(0, 1, 0, 10), 1.0);
        assert_eq!(warmup_scale(2, 1, 0, 10), 0.05);
        assert_eq!(warmup_scale(2, 1, 9, 10), 0.5);
        assert_eq!(warmup_scale(2, 2, 9, 10), 1.0);
        assert_eq!(warmup_scale(2, 5, 3, 10), 1.0);
    }
}
