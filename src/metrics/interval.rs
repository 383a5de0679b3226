//! Confidence intervals for a proportion `k / n`: robust accuracy on a few hundred samples is an
//! estimate, and a gate must know how far it can be off.
//!
//! Two methods (Brown, Cai & DasGupta 2001, "Interval estimation for a binomial proportion"):
//! - [`IntervalMethod::Wilson`] (default), the score interval: close to the nominal coverage on
//!   average and never outside `[0, 1]`;
//! - [`IntervalMethod::ClopperPearson`], the exact interval from binomial tail probabilities:
//!   coverage at least the nominal level for every true proportion (wider, conservative).
//!
//! A confidence of 0 gives the point `[k/n, k/n]` under both methods: the plain estimate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How an interval is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntervalMethod {
    /// Wilson's score interval (1927).
    #[default]
    Wilson,
    /// Clopper and Pearson's exact interval (1934).
    ClopperPearson,
}

impl fmt::Display for IntervalMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wilson => "wilson",
            Self::ClopperPearson => "clopper-pearson",
        })
    }
}

impl FromStr for IntervalMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "wilson" => Ok(Self::Wilson),
            "clopper-pearson" | "clopper_pearson" | "exact" => Ok(Self::ClopperPearson),
            _ => Err(Error::InvalidParameter {
                name: "interval",
                value: s.to_string(),
                reason: "must be wilson or clopper-pearson",
            }),
        }
    }
}

/// A closed interval `[lower, upper]` within `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

impl Interval {
    /// Whether `value` lies in the interval (bounds included).
    pub fn contains(&self, value: f64) -> bool {
        self.lower <= value && value <= self.upper
    }
}

impl fmt::Display for Interval {
    /// In percent, two decimals: `[51.73, 57.89] %`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:.2}, {:.2}] %",
            100.0 * self.lower,
            100.0 * self.upper
        )
    }
}

/// A method and a confidence level: what every interval of a report is computed with.
///
/// ```
/// use perturb::metrics::{IntervalMethod, IntervalSpec};
/// let spec = IntervalSpec::new(IntervalMethod::Wilson, 0.95)?;
/// let ci = spec.interval(50, 100);
/// assert!((ci.lower - 0.4038).abs() < 1e-4 && (ci.upper - 0.5962).abs() < 1e-4);
/// assert_eq!(IntervalSpec::default(), spec);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntervalSpec {
    /// The method.
    pub method: IntervalMethod,
    /// Confidence level in `[0, 1)`, 0.95 by default.
    pub confidence: f64,
}

impl Default for IntervalSpec {
    /// Wilson at 95 %.
    fn default() -> Self {
        Self {
            method: IntervalMethod::Wilson,
            confidence: 0.95,
        }
    }
}

impl IntervalSpec {
    /// `method` at `confidence`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `0 <= confidence < 1`.
    pub fn new(method: IntervalMethod, confidence: f64) -> Result<Self> {
        check_confidence(confidence)?;
        Ok(Self { method, confidence })
    }

    /// The interval for `k` successes in `n` trials: `[0, 1]` when `n` is 0; `k` above `n` is
    /// read as `n`.
    pub fn interval(&self, k: usize, n: usize) -> Interval {
        if n == 0 {
            return Interval {
                lower: 0.0,
                upper: 1.0,
            };
        }
        let k = k.min(n);
        let p = k as f64 / n as f64;
        if self.confidence <= 0.0 {
            return Interval { lower: p, upper: p };
        }
        let (lower, upper) = match self.method {
            IntervalMethod::Wilson => wilson(k, n, self.confidence),
            IntervalMethod::ClopperPearson => clopper_pearson(k, n, self.confidence),
        };
        // the estimate lies inside in exact arithmetic; keep it so after rounding
        Interval {
            lower: lower.clamp(0.0, 1.0).min(p),
            upper: upper.clamp(0.0, 1.0).max(p),
        }
    }

    /// "95 % wilson".
    pub fn describe(&self) -> String {
        format!("{} % {}", 100.0 * self.confidence, self.method)
    }
}

/// Error unless `0 <= confidence < 1`.
pub(crate) fn check_confidence(confidence: f64) -> Result<()> {
    if confidence.is_finite() && (0.0..1.0).contains(&confidence) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "confidence",
            value: confidence.to_string(),
            reason: "must lie in [0, 1)",
        })
    }
}

/// Wilson's score interval.
fn wilson(k: usize, n: usize, confidence: f64) -> (f64, f64) {
    let z = normal_quantile(0.5 + confidence / 2.0);
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let lower = if k == 0 { 0.0 } else { centre - half };
    let upper = if k as f64 == n { 1.0 } else { centre + half };
    (lower, upper)
}

/// Clopper and Pearson's interval: quantiles of Beta(k, n−k+1) and Beta(k+1, n−k).
fn clopper_pearson(k: usize, n: usize, confidence: f64) -> (f64, f64) {
    let tail = (1.0 - confidence) / 2.0;
    let (kf, nf) = (k as f64, n as f64);
    let lower = if k == 0 {
        0.0
    } else {
        beta_quantile(tail, kf, nf - kf + 1.0)
    };
    let upper = if k == n {
        1.0
    } else {
        beta_quantile(1.0 - tail, kf + 1.0, nf - kf)
    };
    (lower, upper)
}

/// The standard normal distribution function Φ.
pub(crate) fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Φ⁻¹(p) for `p` in (0, 1), by bisection on Φ to the last bit.
pub(crate) fn normal_quantile(p: f64) -> f64 {
    bisect(|x| normal_cdf(x) - p, -40.0, 40.0)
}

/// The root of an increasing `f` in `[lo, hi]`, by bisection until the bracket stops shrinking.
fn bisect(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The `q` quantile of Beta(a, b).
fn beta_quantile(q: f64, a: f64, b: f64) -> f64 {
    bisect(|x| regularized_beta(x, a, b) - q, 0.0, 1.0)
}

/// The regularized incomplete beta function I_x(a, b) (the Beta(a, b) distribution function),
/// by its continued fraction evaluated with the modified Lentz method (Numerical Recipes §6.4).
pub(crate) fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front =
        libm::lgamma(a + b) - libm::lgamma(a) - libm::lgamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // the fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    // one term of the fraction: the modified Lentz update of (c, d), returning the factor of h
    let mut term = |aa: f64| {
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        d * c
    };
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= term(m * (b - m) * x / ((qam + m2) * (a + m2)));
        let step = term(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)));
        h *= step;
        if (step - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// P(X ≥ k) for X ~ Binomial(n, p): I_p(k, n − k + 1), 1 for `k` = 0.
pub(crate) fn binomial_upper_tail(k: usize, n: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    regularized_beta(p, k as f64, (n - k) as f64 + 1.0)
}

/// The smallest sample count at which an estimate `p` would, if it held, give an interval
/// that excludes `threshold` (so that a gate would decide); `None` when `p` equals the
/// threshold or no count up to 10⁹ decides.
pub(crate) fn samples_to_decide(p: f64, threshold: f64, spec: &IntervalSpec) -> Option<usize> {
    if (p - threshold).abs() < 1e-12 {
        return None;
    }
    let decides = |n: usize| {
        let k = (p * n as f64).round() as usize;
        !spec.interval(k, n).contains(threshold)
    };
    let mut hi = 1usize;
    while !decides(hi) {
        hi = hi.checked_mul(2).filter(|&h| h <= 1_000_000_000)?;
    }
    let mut lo = hi / 2; // does not decide (or is 0)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if decides(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_the_tables() {
        // Φ⁻¹(0.975) = 1.959963984540054, Φ⁻¹(0.995) = 2.5758293035489004
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
        assert!((normal_quantile(0.995) - 2.575_829_303_548_900_4).abs() < 1e-12);
        assert!(normal_quantile(0.5).abs() < 1e-15);
    }

    #[test]
    fn regularized_beta_closed_forms() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 − (1 − x)^b
        for x in [0.01, 0.3, 0.5, 0.77, 0.999] {
            assert!((regularized_beta(x, 1.0, 1.0) - x).abs() < 1e-14);
            assert!((regularized_beta(x, 3.0, 1.0) - x.powi(3)).abs() < 1e-14);
            assert!((regularized_beta(x, 1.0, 5.0) - (1.0 - (1.0 - x).powi(5))).abs() < 1e-14);
        }
    }

    #[test]
    fn samples_to_decide_decides_and_one_less_does_not() {
        let spec = IntervalSpec::default();
        let n = samples_to_decide(0.9, 0.85, &spec).unwrap();
        let k = |n: usize| (0.9 * n as f64).round() as usize;
        assert!(!spec.interval(k(n), n).contains(0.85));
        assert!(spec.interval(k(n - 1), n - 1).contains(0.85) || n < 2);
        assert_eq!(samples_to_decide(0.9, 0.9, &spec), None);
    }
}
