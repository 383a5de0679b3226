//! Training zoo architectures: standard, or adversarial with any [`Attack`] (Madry et al. 2018).
//!
//! Deterministic: initialization, shuffling and the attack's random starts all come from seeded
//! generators, so the same data, configuration and seed give the same weights on one machine.

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
    /// Training accuracy on the inputs the model was trained on.
    pub accuracy: f64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// Builds the attack for one training batch from that batch's seed, so that random starts are
/// fresh for every batch and still reproducible (e.g. `|s| Box::new(pgd.clone().seed(s))`).
pub type AttackForBatch<'a> = &'a dyn Fn(u64) -> Box<dyn Attack>;

/// Train `arch` on `images` `[N, C, H, W]` and `u32` `labels` `[N]`; with `attack`, every batch
/// is replaced by adversarial examples against the current weights, from the attack that
/// `attack` builds for the batch's seed (derived from `cfg.seed`, the epoch and the batch index).
/// Build it with `check_gradient(false)`: the check costs forward passes on every batch.
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
    attack: Option<AttackForBatch<'_>>,
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
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let idx = Tensor::from_slice(chunk, chunk.len(), device)?;
            let x = images.index_select(&idx, 0)?;
            let y = labels.index_select(&idx, 0)?;
            let x = match attack {
                Some(make) => {
                    // The attack sees the current weights as constants, so it takes the
                    // input-gradient-only fast layers instead of full autograd.
                    let frozen: HashMap<String, Tensor> = vars
                        .iter()
                        .map(|(name, v)| (name.clone(), v.as_tensor().detach()))
                        .collect();
                    let frozen = arch.build(&frozen, std::path::Path::new("<training>"))?;
                    let seed = batch_seed(cfg.seed, epoch, b);
                    make(seed).perturb(&frozen, &x, &Goal::untargeted(&y))?
                }
                None => x,
            };
            let logits = model.forward(&x)?;
            let loss = Loss::CrossEntropy
                .objective(&logits, &y, false)?
                .mean_all()?;
            opt.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
            let pred = logits.argmax(1)?.to_vec1::<u32>()?;
            let truth = y.to_vec1::<u32>()?;
            correct += pred.iter().zip(&truth).filter(|(p, t)| p == t).count();
        }
        let current: HashMap<String, Tensor> = vars
            .iter()
            .map(|(name, v)| (name.clone(), v.as_tensor().detach()))
            .collect();
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
    Ok(vars
        .into_iter()
        .map(|(name, v)| (name, v.as_tensor().detach()))
        .collect())
}

/// A seed for batch `b` of `epoch`, distinct for every (seed, epoch, batch).
fn batch_seed(seed: u64, epoch: usize, b: usize) -> u64 {
    // SplitMix64 finalizer over the packed triple.
    let mut z = seed ^ ((epoch as u64) << 40) ^ (b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
