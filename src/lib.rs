//! # perturb
//!
//! Adversarial attacks on image classifiers built with [candle](https://docs.rs/candle-core):
//! FGSM, BIM, PGD and Auto-PGD under L∞, L2 and L1 budgets, ensembles of them, universal
//! patches, robustness reports and a CI gate, with losses, projections and input gradients
//! checked against independent oracles.
//!
//! Every `candle_core::Module` is a [`Classifier`]; inputs are `[N, C, H, W]` `f32` pixels in
//! `[0, 1]` (normalization belongs to the model: see [`Normalized`]).
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{linear, Linear, VarBuilder, VarMap};
//! use perturb::{Attack, Budget, Goal, Pgd};
//!
//! // A softmax regression on 4×4 grey images with 3 classes.
//! let dev = Device::Cpu;
//! let vars = VarMap::new();
//! let fc: Linear = linear(16, 3, VarBuilder::from_varmap(&vars, DType::F32, &dev))?;
//! let model = move |x: &Tensor| fc.forward(&x.flatten_from(1)?);
//!
//! let x = Tensor::full(0.5f32, (2, 1, 4, 4), &dev)?;
//! let y = Tensor::new(&[0u32, 2], &dev)?;
//! let pgd = Pgd::new(Budget::linf(0.1)?).steps(20).seed(7).build()?;
//! let adv = pgd.run(&model, &x, &Goal::untargeted(&y))?;
//! assert!(adv.norms.iter().all(|n| *n <= 0.1 + 1e-6));
//! println!("success rate {:.2}", adv.success_rate());
//! # Ok::<(), perturb::Error>(())
//! ```
//!
//! ## Where to start
//! - **Attack a batch**: build an attack ([`Pgd`], [`Fgsm`], [`attack::Apgd`], or any by name
//!   through [`attack::Registry`]) and call [`Attack::run`] with a [`Goal`];
//!   [`attack::Ensemble`] runs several as a per-sample worst case.
//! - **Evaluate a model on a data set**: [`eval::Evaluator`] (robust accuracy, ε sweeps,
//!   masking warnings) and [`eval::assert_robust`] for test suites; [`export`] writes the
//!   results (JSON, CSV, PNG).
//! - **Shipped models and data**: [`zoo::load`] (checksummed weights with model cards),
//!   [`data::Mnist`] and [`data`] for images.
//! - **Patches**: [`attack::PatchTrainer`] trains a universal patch with EOT;
//!   [`attack::PatchApplication`] evaluates a saved one like any other attack.
//! - **Speed**: call [`tune_allocator`] at the start of your `main` (see its docs).
//!
//! ## Layering
//! One direction only; nothing below reaches back up:
//!
//! ```text
//! data (data::, zoo::)  →  model (Classifier, loss_and_grad, gradcheck)
//!     →  attack (traits, Batch pieces, Budget geometry, Registry, one file per attack)
//!     →  eval / metrics (Evaluator: the one path that attacks a data set; Report, Sweep)
//!     →  export / CLI (files, plots; the `perturb` binary parses, calls, prints)
//! ```
//! The CPU kernels in [`layers`] make the zoo's gradients fast; nothing else depends on them.
//!
//! ## Adding an attack
//! One file and one registry line (see [`attack`]): implement [`Attack`] and
//! [`attack::FixedBudget`] (or [`attack::MinimumNorm`], run at a fixed ε through
//! [`attack::AtEps`]) with the shared pieces — [`attack::Batch::prepare`] checks input, goal
//! and gradient; [`attack::Batch::loss_and_grad`] and [`Budget::step`] take a step;
//! [`attack::Batch::finish`] judges and measures the end point — then add an
//! [`attack::Entry`] to [`attack::Registry::builtin`] (or [`attack::Registry::register`] for an
//! attack that lives in your own crate). The CLI (`--attack`, `--param`, `--attack-spec`),
//! reports and the shared invariant tests (`tests/integration/registry.rs`) read the registry.
//!
//! ## Features
//! `cli` (default) builds the `perturb` binary and the PNG output; `default-features = false`
//! builds the attack library on candle alone. `cuda` forwards to candle's CUDA backend.

#![warn(missing_docs)]
// One public path per item: the core vocabulary (attacks, budgets, goals, losses, models, the
// gradient check) lives at the crate root, whose modules below are private; the modules that
// hold more (attack, data, eval, export, metrics, zoo, …) are public and re-export nothing
// the root already has.

mod allocator;
pub mod arrays;
pub mod attack;
mod budget;
pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod export;
mod goal;
mod gradcheck;
pub mod layers;
mod loss;
pub mod metrics;
mod model;
pub mod onnx;
mod ops;
mod simd;
pub mod train;
mod validate;
pub mod zoo;

pub use allocator::tune_allocator;
pub use attack::fgsm::Fgsm;
pub use attack::pgd::Pgd;
pub use attack::traits::{Adversarial, Attack};
pub use budget::{Budget, Norm};
pub use error::{Error, Result};
pub use goal::Goal;
pub use gradcheck::{GradVerdict, GradientCheck};
pub use loss::Loss;
pub use model::{loss_and_grad, Classifier, EvalMode, LossGrad, Normalized};
pub use validate::check_batch;

/// README.md's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
