//! # perturb
//!
//! Adversarial attacks on image classifiers built with [candle](https://docs.rs/candle-core):
//! FGSM and PGD under L∞, L2 and L1 budgets, with losses, projections and input gradients that
//! are checked against independent oracles.
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
//! let pgd = Pgd::new(Budget::linf(0.1)?).steps(20).seed(7);
//! let adv = pgd.run(&model, &x, &Goal::untargeted(&y))?;
//! assert!(adv.norms.iter().all(|n| *n <= 0.1 + 1e-6));
//! println!("success rate {:.2}", adv.success_rate());
//! # Ok::<(), perturb::Error>(())
//! ```

#![warn(missing_docs)]

mod allocator;
pub mod attack;
pub mod budget;
pub mod data;
pub mod device;
mod error;
pub mod eval;
mod goal;
pub mod gradcheck;
pub mod layers;
pub mod loss;
pub mod metrics;
pub mod model;
mod ops;
pub mod report;
mod simd;
pub mod train;
mod validate;
pub mod zoo;

pub use allocator::tune_allocator;
pub use attack::{Adversarial, Attack, Fgsm, Pgd};
pub use budget::{Budget, Norm};
pub use data::{read_idx, IdxArray, Mnist};
pub use error::{Error, Result};
pub use goal::Goal;
pub use gradcheck::{GradVerdict, GradientCheck};
pub use loss::Loss;
pub use model::{loss_and_grad, Classifier, Eval, LossGrad, Normalized};
pub use validate::check_batch;

/// README.md's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
