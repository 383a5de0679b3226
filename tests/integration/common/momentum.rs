//! A momentum PGD (MI-FGSM, Dong et al. 2018, arXiv:1710.06081) written outside the crate with
//! its public pieces only; the registry, spec files and tests/integration/registry.rs take it as built-in.
use candle_core::Tensor;
use perturb::attack::{
    typed, Batch, CleanLogits, Entry, FixedBudget, GradientCheckMode, Kind, ALL_NORMS,
};
use perturb::{attack::Threat, Adversarial, Attack, Budget, Classifier, Error, Goal, Loss};
/// Parameters (defaults): `steps` 10, `decay` μ = 1; the step is α = ε/steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub steps: usize,
    pub decay: f32,
}
impl Default for Params {
    fn default() -> Self {
        let (steps, decay) = (10, 1.0);
        Self { steps, decay }
    }
}
/// `g ← μ·g + ∇/‖∇‖₁`, then `x ← Π(x + α·d(g))`, from the clean input.
#[derive(Debug, Clone)]
pub struct MomentumPgd(Budget, Params);
impl MomentumPgd {
    pub fn new(budget: Budget, p: Params) -> perturb::Result<Self> {
        if p.steps == 0 || !(p.decay.is_finite() && p.decay >= 0.0) {
            let (name, value, reason) = ("steps", format!("{p:?}"), "steps >= 1, decay >= 0");
            return Err(Error::InvalidParameter {
                name,
                value,
                reason,
            });
        }
        Ok(Self(budget, p))
    }
}
impl Attack for MomentumPgd {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> perturb::Result<Adversarial> {
        let (budget, p, ce) = (&self.0, self.1, Loss::CrossEntropy);
        let check = GradientCheckMode::Check;
        let mut batch = Batch::prepare(model, x, goal, budget, ce, check, CleanLogits::Skip)?;
        let (mut cur, mut g) = (x.clone(), x.zeros_like()?);
        for _ in 0..p.steps {
            let grad = batch.loss_and_grad(model, &cur, ce)?.grad;
            let l1 = grad
                .abs()?
                .flatten_from(1)?
                .sum_keepdim(1)?
                .clamp(1e-12f32, f32::MAX)?;
            let unit = grad.broadcast_div(&l1.reshape((x.dim(0)?, 1, 1, 1))?)?;
            g = ((g * f64::from(p.decay))? + unit)?;
            cur = budget.step(&cur, &g, x, budget.eps() / p.steps as f32, 0.99)?;
        }
        batch.finish(model, budget, cur, None)
    }
    fn name(&self) -> &'static str {
        "momentum-pgd"
    }
    fn threat(&self) -> Threat {
        Threat::Budget(self.0)
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self.1).unwrap_or_default()
    }
}
impl FixedBudget for MomentumPgd {
    fn budget(&self) -> &Budget {
        &self.0
    }
    fn at_eps(&self, eps: f32) -> perturb::Result<Box<dyn FixedBudget>> {
        Ok(Box::new(Self::new(self.0.with_eps(eps)?, self.1)?))
    }
}
/// The registry line.
pub const ENTRY: Entry = Entry {
    name: "momentum-pgd",
    kind: Kind::FixedBudget,
    summary: "momentum iterative FGSM (Dong et al. 2018), defined in a test crate (the built-in mi-fgsm, written again from the public pieces)",
    norms: ALL_NORMS,
    defaults: || serde_json::to_value(Params::default()).unwrap_or_default(),
    build: |budget, p| Ok(Box::new(MomentumPgd::new(budget, typed("momentum-pgd", p)?)?)),
};
