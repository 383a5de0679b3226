//! A criterion measurement in units of ten loss gradients, timed next to the attack.
//!
//! criterion times each function in its own window of seconds; on a shared machine whose speed
//! drifts 10–20 % within minutes, the ratio of two such figures carries that drift. Here each
//! iteration times ten `loss_and_grad` calls and one PGD-10 back to back (their order
//! alternating, so a steady drift cancels too) and contributes the quotient: criterion's estimate
//! is then the mean, over rounds, of PGD-10's time divided by the time of ten gradients taken
//! under the same conditions.

use std::time::Instant;

use candle_core::Tensor;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;
use perturb::{loss_and_grad, Classifier, Goal, Loss};

/// Dimensionless values that `iter_custom` returns: sums of per-round ratios.
pub struct TenGradients;

impl Measurement for TenGradients {
    type Intermediate = Instant;
    type Value = f64;

    fn start(&self) -> Instant {
        Instant::now()
    }

    fn end(&self, start: Instant) -> f64 {
        start.elapsed().as_secs_f64()
    }

    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Unscaled
    }
}

/// Prints ratios as they are, in units of ten gradients.
struct Unscaled;

const UNIT: &str = "x 10 grads";

impl ValueFormatter for Unscaled {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        UNIT
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        _t: &Throughput,
        _values: &mut [f64],
    ) -> &'static str {
        UNIT
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        UNIT
    }
}

/// `rounds` rounds of ten gradients of `model` at `(x, goal)` and one call of `attack`, each
/// round contributing attack time / ten-gradient time; even rounds time the gradients first.
pub fn rounds(
    rounds: u64,
    model: &dyn Classifier,
    x: &Tensor,
    goal: &Goal,
    mut attack: impl FnMut(),
) -> f64 {
    let ten_gradients = || {
        let t = Instant::now();
        for _ in 0..10 {
            loss_and_grad(model, x, goal, Loss::CrossEntropy).expect("gradient");
        }
        t.elapsed().as_secs_f64()
    };
    let mut timed_attack = || {
        let t = Instant::now();
        attack();
        t.elapsed().as_secs_f64()
    };
    (0..rounds)
        .map(|r| {
            let (g, a) = if r % 2 == 0 {
                let g = ten_gradients();
                (g, timed_attack())
            } else {
                let a = timed_attack();
                (ten_gradients(), a)
            };
            a / g
        })
        .sum()
}
