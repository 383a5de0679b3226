//! Every integration test in one crate: one link of candle instead of one per file, and one
//! process whose test threads stay busy until the last test ends. Each module is one former
//! `tests/<name>.rs`; run one with `cargo test --test integration <name>::`.

mod common;

mod apgd;
mod arrays;
mod attacks;
mod bombs;
mod budgets;
// The binary's tests need it built: the `cli` feature (on by default).
#[cfg(feature = "cli")]
mod cli;
mod data;
mod determinism;
mod ensemble;
mod errors;
mod fab;
mod fast_layers;
mod gate;
#[cfg(feature = "cli")]
mod gate_cli;
mod gradcheck;
mod gradients;
#[cfg(feature = "cli")]
mod home;
#[cfg(feature = "cli")]
mod hostile_cli;
mod imagenet;
mod memory;
mod metrics;
mod million;
mod minimal;
mod models;
mod onnx;
mod patch;
mod properties;
mod registry;
#[cfg(feature = "cli")]
mod shards;
mod square;
mod transfer;
#[cfg(feature = "cli")]
mod transfer_cli;
#[cfg(feature = "cli")]
mod verify;
mod weight_grads;
