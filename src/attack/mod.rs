//! The attacks: the traits that say what an attack promises ([`Attack`], [`FixedBudget`],
//! [`MinimumNorm`]), the shared pieces every gradient attack uses ([`Batch`]), the
//! [`Registry`] of attacks by name, and one file per attack.
//!
//! Every attack checks its parameters and inputs before any compute, works on the caller's
//! device, and returns points inside its threat model and the pixel box.
//!
//! # Adding an attack
//! 1. A file here with a struct of validated parameters and a doc comment carrying the paper,
//!    the distance, the arguments with defaults, the inputs and a usage line.
//! 2. Implement [`Attack`] and [`FixedBudget`] (or [`MinimumNorm`]) with the pieces of
//!    [`Batch`] and [`Budget`](crate::Budget): `Batch::prepare` → steps with
//!    `Batch::loss_and_grad` and `Budget::step` → `Batch::finish`.
//! 3. One [`Entry`] in [`Registry::builtin`]: the CLI, reports and the shared invariant tests
//!    (`tests/integration/registry.rs`) pick it up.
//! 4. Its own oracle test and a criterion bench.

mod apgd;
mod at_eps;
mod batch;
mod cw;
mod ddn;
mod deepfool;
mod ensemble;
mod fab;
pub(crate) mod fgsm;
mod mi_fgsm;
mod minimal;
mod patch;
pub(crate) mod pgd;
mod registry;
mod rows;
mod square;
pub(crate) mod traits;

pub use apgd::Apgd;
pub(crate) use apgd::ApgdParams;
pub use at_eps::AtEps;
pub use batch::{Batch, CleanLogits, GradientCheckMode};
pub use cw::CarliniWagner;
pub(crate) use cw::CwParams;
pub use ddn::Ddn;
pub(crate) use ddn::DdnParams;
pub(crate) use deepfool::DeepFoolParams;
pub use deepfool::{DeepFool, DEEPFOOL_LOGIT_OFFSET};
pub use ensemble::Ensemble;
pub use fab::Fab;
pub(crate) use fab::FabParams;
use fgsm::Fgsm;
pub use mi_fgsm::MiFgsm;
pub(crate) use mi_fgsm::MiFgsmParams;
pub use patch::{
    apply_patch, random_placement, Patch, PatchApplication, PatchEvaluation, PatchOptimizer,
    PatchShape, PatchTrainer, PatchTraining, Placement, Region, Transforms,
};
use pgd::Pgd;
pub use registry::{typed, AttackSpec, Entry, Kind, Registry, ALL_NORMS};
pub use square::Square;
pub(crate) use square::SquareParams;
use traits::{Adversarial, Attack};
pub use traits::{FixedBudget, MinimumNorm, Threat};

pub use crate::goal::ResolvedGoal;

/// Default fraction of coordinates an L1 step leaves alone (SLIDE's 99th percentile).
pub const DEFAULT_L1_SPARSITY: f32 = 0.99;
