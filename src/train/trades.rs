//! TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
//! Accuracy", arXiv:1901.08573): minimise `CE(f(x), y) + β · KL(f(x) ‖ f(x′))`, where `x′`
//! maximises the KL term inside the L∞ ball by sign-gradient steps from `x` plus a little
//! Gaussian noise. Its SmallCNN holds 92.76 % at ε = 0.3 against AutoAttack (Croce & Hein
//! 2020, Table 2).

use candle_core::{Module, Tensor, Var};
use candle_nn::ops::log_softmax;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::Budget;

/// The TRADES objective and its inner maximisation.
///
/// ```
/// use perturb::train::Trades;
/// let t = Trades::mnist();
/// assert_eq!((t.eps, t.step_size, t.steps, t.beta), (0.3, 0.01, 40, 6.0));
/// let fast = Trades::new(0.3, 0.075, 10, 6.0)?; // fewer, larger steps
/// assert!(Trades::new(0.3, 0.01, 0, 6.0).is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trades {
    /// L∞ radius of the inner maximisation.
    pub eps: f32,
    /// Sign-gradient step of the inner maximisation.
    pub step_size: f32,
    /// Steps of the inner maximisation.
    pub steps: usize,
    /// Weight of the KL term (the paper's 1/λ).
    pub beta: f32,
}

impl Trades {
    /// The paper's MNIST settings: ε = 0.3, 40 steps of 0.01, β = 6.
    pub fn mnist() -> Self {
        Self {
            eps: 0.3,
            step_size: 0.01,
            steps: 40,
            beta: 6.0,
        }
    }

    /// Validated settings.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a negative or non-finite ε or β, a step size that is not
    /// positive, or no steps.
    pub fn new(eps: f32, step_size: f32, steps: usize, beta: f32) -> Result<Self> {
        let bad = |name, value: f32, reason| Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason,
        };
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(bad("eps", eps, "must be finite and >= 0"));
        }
        if !(step_size.is_finite() && step_size > 0.0) {
            return Err(bad("step_size", step_size, "must be finite and > 0"));
        }
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(bad("beta", beta, "must be finite and >= 0"));
        }
        if steps == 0 {
            return Err(bad("steps", 0.0, "must be >= 1"));
        }
        Ok(Self {
            eps,
            step_size,
            steps,
            beta,
        })
    }

    /// The same objective with ε and the step size scaled by `s` (the ε warm-up).
    pub(crate) fn scaled(self, s: f32) -> Self {
        Self {
            eps: self.eps * s,
            step_size: self.step_size * s,
            ..self
        }
    }

    /// The point `x′` of the ball around `x` (and the pixel box) that the sign-gradient ascent
    /// on `Σ KL(f(x) ‖ f(x′))` reaches from `x` plus `N(0, 0.001²)` noise drawn from `seed`.
    pub(crate) fn maximise_kl(&self, model: &impl Module, x: &Tensor, seed: u64) -> Result<Tensor> {
        let budget = Budget::linf(self.eps)?;
        let p_log = log_softmax(&model.forward(x)?, 1)?.detach();
        let p = p_log.exp()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let noise: Vec<f32> = (0..x.elem_count())
            .map(|_| 0.001 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let noise = Tensor::from_vec(noise, x.dims(), x.device())?;
        let mut x_adv = budget.project(&(x + noise)?, x)?;
        for _ in 0..self.steps {
            let v = Var::from_tensor(&x_adv)?;
            let q_log = log_softmax(&model.forward(v.as_tensor())?, 1)?;
            let kl = (&p * (&p_log - q_log)?)?.sum_all()?;
            let grads = kl.backward()?;
            let grad = grads.get(v.as_tensor()).ok_or(Error::GradientMissing)?;
            x_adv = budget.step(&x_adv, grad, x, self.step_size, 0.0)?;
        }
        Ok(x_adv)
    }

    /// The batch's TRADES loss, `mean CE(f(x), y) + β · mean KL(f(x) ‖ f(x′))`, both terms
    /// differentiable in the weights (one forward pass over `x` and `x′` together), and the
    /// clean logits.
    pub(crate) fn loss(
        &self,
        model: &impl Module,
        x: &Tensor,
        x_adv: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = x.dim(0)?;
        let logits = model.forward(&Tensor::cat(&[x, x_adv], 0)?)?;
        let (clean, adv) = (logits.narrow(0, 0, n)?, logits.narrow(0, n, n)?);
        let ce = Loss::CrossEntropy.objective(&clean, y, false)?.mean_all()?;
        let (p_log, q_log) = (log_softmax(&clean, 1)?, log_softmax(&adv, 1)?);
        let kl = ((p_log.exp()? * (&p_log - q_log)?)?.sum_all()? / n.max(1) as f64)?;
        let loss = (ce + (kl * f64::from(self.beta))?)?;
        Ok((loss, clean))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A "model" whose logits are its input `[N, K]`, so the objective is a formula of the
    /// inputs alone.
    fn identity(x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }

    fn log_softmax64(z: &[f32]) -> Vec<f64> {
        let m = z
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let s: f64 = z.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        z.iter().map(|&v| f64::from(v) - m - s.ln()).collect()
    }

    /// The loss equals `mean CE + β · mean KL` written out in f64.
    #[test]
    fn loss_is_cross_entropy_plus_beta_kl() {
        let dev = Device::Cpu;
        let (n, k) = (3, 4);
        let clean: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let adv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 7) as f32 - 3.0) * 0.4)
            .collect();
        let labels = [2u32, 0, 3];
        let t = Trades::new(0.3, 0.1, 1, 6.0).unwrap();
        let x = Tensor::from_vec(clean.clone(), (n, k), &dev).unwrap();
        let x_adv = Tensor::from_vec(adv.clone(), (n, k), &dev).unwrap();
        let y = Tensor::new(&labels, &dev).unwrap();
        let (loss, logits) = t.loss(&identity, &x, &x_adv, &y).unwrap();
        let loss = f64::from(loss.to_scalar::<f32>().unwrap());
        let mut want = 0.0;
        for i in 0..n {
            let p = log_softmax64(&clean[i * k..][..k]);
            let q = log_softmax64(&adv[i * k..][..k]);
            let kl: f64 = p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum();
            want += (-p[labels[i] as usize] + 6.0 * kl) / n as f64;
        }
        assert!(
            (loss - want).abs() < 1e-5 * want.abs().max(1.0),
            "{loss} vs {want}"
        );
        assert_eq!(logits.to_vec2::<f32>().unwrap()[1], clean[k..2 * k]);
    }

    /// The inner maximisation stays in the ball and the box and ends with a larger KL than it
    /// starts from, and the same seed gives the same point.
    #[test]
    fn maximisation_raises_the_kl_inside_the_budget() {
        let dev = Device::Cpu;
        let (n, k) = (4, 5);
        let v: Vec<f32> = (0..n * k).map(|i| (i * 29 % 17) as f32 / 16.0).collect();
        let x = Tensor::from_vec(v.clone(), (n, k), &dev).unwrap();
        let t = Trades::new(0.2, 0.05, 8, 6.0).unwrap();
        let x_adv = t.maximise_kl(&identity, &x, 7).unwrap();
        let got = x_adv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&v) {
            assert!(
                (0.0..=1.0).contains(a) && (a - b).abs() <= 0.2 + 1e-6,
                "{a} from {b}"
            );
        }
        let kl = |z: &[f32]| -> f64 {
            (0..n)
                .map(|i| {
                    let p = log_softmax64(&v[i * k..][..k]);
                    let q = log_softmax64(&z[i * k..][..k]);
                    p.iter()
                        .zip(&q)
                        .map(|(a, b)| a.exp() * (a - b))
                        .sum::<f64>()
                })
                .sum()
        };
        assert!(kl(&got) > 0.05, "KL {}", kl(&got));
        let again = t.maximise_kl(&identity, &x, 7).unwrap();
        assert_eq!(again.flatten_all().unwrap().to_vec1::<f32>().unwrap(), got);
    }

    #[test]
    fn settings_are_validated() {
        assert!(Trades::new(-0.1, 0.01, 1, 6.0).is_err());
        assert!(Trades::new(0.3, 0.0, 1, 6.0).is_err());
        assert!(Trades::new(0.3, 0.01, 1, f32::NAN).is_err());
        assert_eq!(Trades::new(0.3, 0.01, 40, 6.0).unwrap(), Trades::mnist());
        let half = Trades::mnist().scaled(0.5);
        assert_eq!((half.eps, half.step_size), (0.15, 0.005));
    }
}
