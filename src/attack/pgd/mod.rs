//! BIM / PGD: iterated steepest-ascent steps, each projected back onto ε-ball ∩ box. FGSM is its
//! one-step preset ([`Fgsm`](super::Fgsm)).

mod run;

use super::batch::{check_count, check_positive};
use super::{FixedBudget, DEFAULT_L1_SPARSITY};
use crate::budget::{check_sparsity, Budget};
use crate::error::Result;
use crate::loss::Loss;

/// Projected Gradient Descent (Madry et al. 2018, arXiv:1706.06083); without random start it is
/// the Basic Iterative Method (Kurakin et al. 2017, arXiv:1607.02533), and with one step of size
/// ε from the clean input it is FGSM ([`Fgsm`](super::Fgsm)).
///
/// - **Step**: `x ← Π(x + α·d(∇ₓL))` for `steps` steps, `d` the budget's steepest-ascent
///   direction (sign for L∞, normalized gradient for L2, sparse SLIDE step for L1), `Π` the exact
///   projection onto ε-ball ∩ box. Starts at a uniform point of the ball (`random_start`, default
///   on) or at `x` (BIM).
/// - **Distance**: the budget's norm (L∞, L2, L1).
/// - **Arguments** (defaults): `steps` 10, `step_size` α = 2.5·ε/steps (or `step_size_eps`, α as
///   a multiple of ε), `random_start` true, `restarts` 1, `early_stop` false, `seed` 0, `loss`
///   cross-entropy, `check_gradient` true, `l1_sparsity` 0.99.
/// - **Restarts**: restart r > 0 attacks only the samples no earlier run fooled, and a sample
///   keeps the best result over runs (success first, then the higher loss); restart 0 is the
///   single run with the same seed.
/// - **Early stop**: a sample stops as soon as its goal holds and leaves the batch; a sample
///   that already satisfies the goal at the clean input costs no gradient and is returned as is.
/// - **Inputs**: `[N, C, H, W]` `f32` in the budget's box; labels or targets `[N]`.
///
/// Setters never fail; [`build`](Pgd::build) checks the parameters (the
/// [registry](super::Registry) does it for every attack it makes), and `run` checks them again
/// before any compute.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Attack, Budget, Goal, Pgd};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let pgd = Pgd::new(Budget::linf(0.3)?).steps(20).step_size(0.05).seed(7).build()?;
/// let adv = pgd.run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!(adv.norms[0] <= 0.3 + 1e-6);
/// assert!(Pgd::new(Budget::linf(0.3)?).steps(0).build().is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pgd {
    #[serde(skip)]
    name: &'static str,
    budget: Budget,
    #[serde(flatten)]
    params: PgdParams,
}

/// PGD's parameters apart from the budget: what the registry deserializes and reports record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PgdParams {
    pub loss: Loss,
    pub steps: usize,
    pub step_size: Option<f32>,
    pub step_size_eps: Option<f32>,
    pub random_start: bool,
    pub restarts: usize,
    pub early_stop: bool,
    pub seed: u64,
    pub l1_sparsity: f32,
    pub check_gradient: bool,
}

impl Default for PgdParams {
    fn default() -> Self {
        Self {
            loss: Loss::CrossEntropy,
            steps: 10,
            step_size: None,
            step_size_eps: None,
            random_start: true,
            restarts: 1,
            early_stop: false,
            seed: 0,
            l1_sparsity: DEFAULT_L1_SPARSITY,
            check_gradient: true,
        }
    }
}

/// The keys of FGSM's parameters (beside its budget); the rest are fixed by the preset.
pub(crate) const FGSM_PARAMS: [&str; 4] = ["budget", "loss", "check_gradient", "l1_sparsity"];

impl Pgd {
    /// Whether the fixed parameters are FGSM's: one step of size ε from the clean input.
    fn is_fgsm(&self) -> bool {
        let (p, f) = (&self.params, crate::attack::Fgsm::params());
        (
            p.steps,
            p.step_size,
            p.step_size_eps,
            p.random_start,
            p.restarts,
            p.early_stop,
        ) == (
            f.steps,
            f.step_size,
            f.step_size_eps,
            f.random_start,
            f.restarts,
            f.early_stop,
        )
    }

    /// `pgd` or `bim`, by the start.
    fn iterative_name(&self) -> &'static str {
        if self.params.random_start {
            "pgd"
        } else {
            "bim"
        }
    }

    /// PGD within `budget` with random start.
    pub fn new(budget: Budget) -> Self {
        Self::with_params("pgd", budget, PgdParams::default())
    }

    /// BIM: PGD without random start, named `bim` in reports (as in the registry).
    pub fn bim(budget: Budget) -> Self {
        let params = PgdParams {
            random_start: false,
            ..PgdParams::default()
        };
        Self::with_params("bim", budget, params)
    }

    pub(crate) fn with_params(name: &'static str, budget: Budget, params: PgdParams) -> Self {
        Self {
            name,
            budget,
            params,
        }
    }

    /// Number of steps per run, ≥ 1; default 10.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Step length α in the budget's norm; default 2.5·ε/steps.
    pub fn step_size(mut self, alpha: f32) -> Self {
        self.params.step_size = Some(alpha);
        self.params.step_size_eps = None;
        self
    }

    /// Step length α as a multiple of ε, so that it follows [`at_eps`](FixedBudget::at_eps)
    /// (FGSM: 1); default 2.5/steps.
    pub fn step_size_eps(mut self, ratio: f32) -> Self {
        self.params.step_size_eps = Some(ratio);
        self.params.step_size = None;
        self
    }

    /// Start from a uniform random point of the ε-ball; default `true`.
    pub fn random_start(mut self, on: bool) -> Self {
        self.params.random_start = on;
        self
    }

    /// Number of runs, ≥ 1; default 1.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.params.restarts = restarts;
        self
    }

    /// Stop each sample as soon as its goal holds; default `false` (classic PGD runs all steps).
    pub fn early_stop(mut self, on: bool) -> Self {
        self.params.early_stop = on;
        self
    }

    /// Seed of the random starts; default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.params.seed = seed;
        self
    }

    /// The loss to ascend; default [`Loss::CrossEntropy`].
    pub fn loss(mut self, loss: Loss) -> Self {
        self.params.loss = loss;
        self
    }

    /// Run the [gradient self-check](crate::GradientCheck) before attacking, and refuse a model
    /// whose gradient is missing or wrong; default `true`.
    pub fn check_gradient(mut self, on: bool) -> Self {
        self.params.check_gradient = on;
        self
    }

    /// For L1 budgets, the fraction of coordinates a step leaves alone; default 0.99.
    pub fn l1_sparsity(mut self, sparsity: f32) -> Self {
        self.params.l1_sparsity = sparsity;
        self
    }

    /// The step length α in use.
    pub fn alpha(&self) -> f32 {
        let p = &self.params;
        let eps = self.budget.eps();
        p.step_size
            .or(p.step_size_eps.map(|r| r * eps))
            .unwrap_or(2.5 * eps / p.steps.max(1) as f32)
    }

    /// One line for logs: name, budget, steps and the step length in use (FGSM's is ε).
    ///
    /// ```
    /// use perturb::{Budget, Fgsm, Pgd};
    /// let b = Budget::linf(0.3)?;
    /// assert_eq!(Fgsm::new(b).summary(), "fgsm (linf, eps 0.3): 1 step of 0.3");
    /// assert_eq!(
    ///     Pgd::new(b).steps(40).step_size(0.01).summary(),
    ///     "pgd (linf, eps 0.3): 40 steps of 0.01"
    /// );
    /// # Ok::<(), perturb::Error>(())
    /// ```
    pub fn summary(&self) -> String {
        let steps = self.params.steps;
        let restarts = self.params.restarts;
        format!(
            "{} ({}, eps {}): {steps} step{} of {}{}",
            crate::Attack::name(self),
            self.budget.norm(),
            self.budget.eps(),
            if steps == 1 { "" } else { "s" },
            self.alpha(),
            if restarts > 1 {
                format!(", {restarts} restarts")
            } else {
                String::new()
            }
        )
    }

    /// The attack with its parameters checked.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for zero steps or restarts, a step size that is not positive
    /// and finite, an L1 sparsity outside `[0, 1)`, an invalid loss.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        check_count("steps", p.steps)?;
        check_count("restarts", p.restarts)?;
        check_positive("step_size", self.alpha())?;
        check_sparsity(p.l1_sparsity)?;
        p.loss.check()
    }
}

impl FixedBudget for Pgd {
    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn at_eps(&self, eps: f32) -> Result<Box<dyn FixedBudget>> {
        Ok(Box::new(
            Self {
                budget: self.budget.with_eps(eps)?,
                ..self.clone()
            }
            .build()?,
        ))
    }
}
