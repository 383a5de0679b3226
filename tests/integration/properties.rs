//! Property tests (proptest) for budgets and attacks, over random norms, radii, pixel boxes,
//! batch shapes, models and attack settings. Everything an attack or a budget reports is checked
//! against values recomputed independently on the host in `f64` from the returned `f32` data:
//!
//! - FGSM and PGD (softmax-regression models, random goals, losses and settings): every `x_adv`
//!   lies in the pixel box and in the ε-ball (1e-6 slack), `norms` are the recomputed distances,
//!   and `predictions` / `success` agree with an independent re-classification of `x_adv`;
//!   with early stop, samples that reach the goal at the clean input are returned unchanged, and
//!   the gradient evaluations are counted as documented;
//! - the same on models whose input gradient vanishes (zero weights, saturated softmax);
//! - `Budget::project`: in box and ball (also the documented exact guarantee), idempotent, and
//!   optimal by the variational inequality of the projection onto a convex set;
//! - `Budget::step`: the composed projected ascent step bit for bit (L∞ runs fused), feasible;
//! - `Budget::random_start`: in box and ball, deterministic for a seed, fused (L∞) = composed;
//! - `Budget::ascent_direction`: `sign(g)` for L∞, `g/‖g‖₂` for L2, the sparse unit SLIDE step for
//!   L1, and a zero direction for a zero gradient.
//!
//! Case counts: 6,000 (attacks) + 1,000 (vanishing gradients) + 5,000 (projections) + 2,000
//! (steps) + 3,000 (random starts) + 4,000 (ascent directions) + 500 (zero gradients) = 21,500
//! cases in total.

use candle_core::{Device, Tensor};
use perturb::{Adversarial, Attack, Budget, Fgsm, Goal, Loss, Norm, Pgd};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::{rngs::StdRng, Rng, SeedableRng};

type TestResult = Result<(), TestCaseError>;

/// Slack allowed on the ε-ball constraint.
const BALL_SLACK: f64 = 1e-6;
/// Unit roundoff of `f32`.
const F32_ROUNDOFF: f64 = 1.0 / 16_777_216.0;

/// Cases per block, with failure persistence off (no regression files are written).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn norm_strategy() -> impl Strategy<Value = Norm> {
    prop_oneof![Just(Norm::Linf), Just(Norm::L2), Just(Norm::L1)]
}

/// ε log-uniform in [1e-3, 5].
fn eps_strategy() -> impl Strategy<Value = f32> {
    (-3.0f64..=5f64.log10()).prop_map(|e| 10f64.powf(e) as f32)
}

/// The pixel box: mostly the default [0, 1], sometimes another finite box.
fn bounds_strategy() -> impl Strategy<Value = (f32, f32)> {
    prop_oneof![
        3 => Just((0.0f32, 1.0f32)),
        1 => (-2.0f32..=1.0, 0.05f32..=3.0).prop_map(|(lo, width)| (lo, lo + width)),
    ]
}

/// A position in [0, 1] with exact end points a quarter of the time.
fn unit_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(0.0), 1 => Just(1.0), 6 => 0.0f64..=1.0]
}

/// `[N, C, H, W]` with N in 1..=4, C in 1..=3, H, W in 1..=6.
fn dims_strategy() -> impl Strategy<Value = [usize; 4]> {
    (1..=4usize, 1..=3usize, 1..=6usize, 1..=6usize).prop_map(|(n, c, h, w)| [n, c, h, w])
}

/// The pixel at relative position `t` of the box, exactly inside it.
fn pixel(bounds: (f32, f32), t: f64) -> f32 {
    let (lo, hi) = bounds;
    let v = (f64::from(lo) + t * (f64::from(hi) - f64::from(lo))) as f32;
    v.clamp(lo, hi)
}

/// A batch in a box: dims, box and pixels.
#[derive(Debug, Clone)]
struct Batch {
    dims: [usize; 4],
    bounds: (f32, f32),
    x: Vec<f32>,
}

impl Batch {
    fn n(&self) -> usize {
        self.dims[0]
    }

    fn dim(&self) -> usize {
        self.dims[1] * self.dims[2] * self.dims[3]
    }

    fn tensor(&self) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.x.clone(), self.dims.to_vec(), &Device::Cpu)
    }
}

/// A batch plus `extra` vectors of `N·D` values from `value` each.
fn batch_with<S>(extra: usize, value: S) -> impl Strategy<Value = (Batch, Vec<Vec<S::Value>>)>
where
    S: Strategy + Clone + 'static,
    S::Value: Clone,
{
    (dims_strategy(), bounds_strategy()).prop_flat_map(move |(dims, bounds)| {
        let len = dims.iter().product::<usize>();
        (
            vec(unit_strategy(), len),
            vec(vec(value.clone(), len), extra),
        )
            .prop_map(move |(units, extra)| {
                let x = units.iter().map(|&t| pixel(bounds, t)).collect();
                (Batch { dims, bounds, x }, extra)
            })
    })
}

/// A softmax-regression problem: a batch, weights `[K, D]`, bias `[K]`, labels and targets.
#[derive(Debug, Clone)]
struct Problem {
    batch: Batch,
    classes: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
    labels: Vec<u32>,
    /// Any class, possibly the label.
    targets: Vec<u32>,
    /// Never the label.
    other_targets: Vec<u32>,
}

/// Problems with weights and bias in `[-1, 1]·scale`, `scale` drawn from `scales`.
fn problem_strategy(scales: Vec<f32>) -> impl Strategy<Value = Problem> {
    (
        dims_strategy(),
        bounds_strategy(),
        2..=5usize,
        proptest::sample::select(scales),
    )
        .prop_flat_map(|(dims, bounds, k, scale)| {
            let n = dims[0];
            let d = dims[1] * dims[2] * dims[3];
            (
                vec(unit_strategy(), n * d),
                vec(-1.0f32..=1.0, k * d),
                vec(-1.0f32..=1.0, k),
                vec(0..k as u32, n),
                vec(0..k as u32, n),
                vec(1..k as u32, n),
            )
                .prop_map(move |(units, w, b, labels, targets, offsets)| Problem {
                    batch: Batch {
                        dims,
                        bounds,
                        x: units.iter().map(|&t| pixel(bounds, t)).collect(),
                    },
                    classes: k,
                    weights: w.iter().map(|v| v * scale).collect(),
                    bias: b.iter().map(|v| v * scale).collect(),
                    other_targets: labels
                        .iter()
                        .zip(&offsets)
                        .map(|(&y, &o)| (y + o) % k as u32)
                        .collect(),
                    labels,
                    targets,
                })
        })
}

#[derive(Debug, Clone)]
enum Method {
    Fgsm,
    Pgd {
        random_start: bool,
        early_stop: bool,
        restarts: usize,
        steps: usize,
        /// Step size as a multiple of ε; `None` for the default.
        step_ratio: Option<f32>,
        seed: u64,
    },
}

fn method_strategy() -> impl Strategy<Value = Method> {
    prop_oneof![
        1 => Just(Method::Fgsm),
        2 => (
            any::<bool>(),
            any::<bool>(),
            1..=2usize,
            1..=5usize,
            proptest::option::of((-1.3f64..=0.5).prop_map(|e| 10f64.powf(e) as f32)),
            any::<u64>(),
        )
            .prop_map(|(random_start, early_stop, restarts, steps, step_ratio, seed)| {
                Method::Pgd {
                    random_start,
                    early_stop,
                    restarts,
                    steps,
                    step_ratio,
                    seed,
                }
            }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum GoalKind {
    Untargeted,
    Targeted,
    TargetedWithLabels,
}

#[derive(Debug, Clone, Copy)]
enum ClassDType {
    U32,
    I64,
    U8,
}

#[derive(Debug, Clone, Copy)]
enum LossKind {
    CrossEntropy,
    Cw(f32),
    Dlr,
}

/// Everything about an attack except the problem.
#[derive(Debug, Clone)]
struct Setup {
    norm: Norm,
    eps: f32,
    method: Method,
    goal: GoalKind,
    class_dtype: ClassDType,
    loss: LossKind,
    l1_sparsity: f32,
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        norm_strategy(),
        eps_strategy(),
        method_strategy(),
        prop_oneof![
            Just(GoalKind::Untargeted),
            Just(GoalKind::Targeted),
            Just(GoalKind::TargetedWithLabels)
        ],
        prop_oneof![
            Just(ClassDType::U32),
            Just(ClassDType::I64),
            Just(ClassDType::U8)
        ],
        prop_oneof![
            2 => Just(LossKind::CrossEntropy),
            1 => (0.0f32..=5.0).prop_map(LossKind::Cw),
            1 => Just(LossKind::Dlr),
        ],
        prop_oneof![Just(0.99f32), Just(0.0f32), 0.0f32..0.999],
    )
        .prop_map(
            |(norm, eps, method, goal, class_dtype, loss, l1_sparsity)| Setup {
                norm,
                eps,
                method,
                goal,
                class_dtype,
                loss,
                l1_sparsity,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Host-side oracles
// ---------------------------------------------------------------------------------------------

/// `‖a − b‖` in `norm`, in `f64` from the `f32` values (NaN propagates).
fn distance(norm: Norm, a: &[f32], b: &[f32]) -> f64 {
    let diffs = a.iter().zip(b).map(|(p, q)| f64::from(*p) - f64::from(*q));
    match norm {
        Norm::Linf => diffs.fold(0.0, |m, d| {
            if d.abs() > m || d.is_nan() {
                d.abs()
            } else {
                m
            }
        }),
        Norm::L2 => diffs.map(|d| d * d).sum::<f64>().sqrt(),
        Norm::L1 => diffs.map(f64::abs).sum(),
    }
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Logits of the linear model on one sample in `f64`, and a bound on their magnitude terms.
fn host_logits(p: &Problem, sample: &[f32]) -> (Vec<f64>, f64) {
    let d = sample.len();
    let mut scale: f64 = 0.0;
    let logits = (0..p.classes)
        .map(|k| {
            let row = &p.weights[k * d..(k + 1) * d];
            let mut z = f64::from(p.bias[k]);
            let mut mag = f64::from(p.bias[k]).abs();
            for (w, x) in row.iter().zip(sample) {
                let t = f64::from(*w) * f64::from(*x);
                z += t;
                mag += t.abs();
            }
            scale = scale.max(mag);
            z
        })
        .collect();
    (logits, scale)
}

/// The argmax of `z`, or `None` when the two largest are within `tol` (a near tie, where `f32`
/// rounding may decide either way).
fn clear_argmax(z: &[f64], tol: f64) -> Option<u32> {
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
    (z[order[0]] - z[order[1]] > tol).then_some(order[0] as u32)
}

fn class_tensor(classes: &[u32], dtype: ClassDType) -> candle_core::Result<Tensor> {
    let n = classes.len();
    let dev = &Device::Cpu;
    match dtype {
        ClassDType::U32 => Tensor::from_vec(classes.to_vec(), n, dev),
        ClassDType::I64 => {
            Tensor::from_vec(classes.iter().map(|&c| i64::from(c)).collect(), n, dev)
        }
        ClassDType::U8 => Tensor::from_vec(classes.iter().map(|&c| c as u8).collect(), n, dev),
    }
}

fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

// ---------------------------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------------------------

/// Run the attack described by `setup` on `problem`; check everything it reports.
fn attack_and_check(problem: &Problem, setup: &Setup) -> TestResult {
    let batch = &problem.batch;
    let (n, d, k) = (batch.n(), batch.dim(), problem.classes);
    let dev = Device::Cpu;
    let (lo, hi) = batch.bounds;
    let budget = Budget::new(setup.norm, setup.eps)?.with_bounds(lo, hi)?;

    let w = Tensor::from_vec(problem.weights.clone(), (k, d), &dev)?;
    let b = Tensor::from_vec(problem.bias.clone(), k, &dev)?;
    let model = move |x: &Tensor| x.flatten_from(1)?.matmul(&w.t()?)?.broadcast_add(&b);

    let x = batch.tensor()?;
    let labels = class_tensor(&problem.labels, setup.class_dtype)?;
    let (goal, goal_classes) = match setup.goal {
        GoalKind::Untargeted => (Goal::untargeted(&labels), &problem.labels),
        GoalKind::Targeted => (
            Goal::targeted(&class_tensor(&problem.targets, setup.class_dtype)?),
            &problem.targets,
        ),
        GoalKind::TargetedWithLabels => (
            Goal::targeted_with_labels(
                &class_tensor(&problem.other_targets, setup.class_dtype)?,
                &labels,
            ),
            &problem.other_targets,
        ),
    };
    let targeted = setup.goal != GoalKind::Untargeted;
    let loss = match setup.loss {
        LossKind::Cw(kappa) => Loss::cw(kappa)?,
        LossKind::Dlr if k >= if targeted { 4 } else { 3 } => Loss::Dlr,
        _ => Loss::CrossEntropy,
    };

    let adv: Adversarial = match setup.method {
        Method::Fgsm => Fgsm::new(budget)
            .loss(loss)
            .l1_sparsity(setup.l1_sparsity)
            .check_gradient(false)
            .run(&model, &x, &goal)?,
        Method::Pgd {
            random_start,
            early_stop,
            restarts,
            steps,
            step_ratio,
            seed,
        } => {
            let mut pgd = Pgd::new(budget)
                .random_start(random_start)
                .early_stop(early_stop)
                .restarts(restarts)
                .steps(steps)
                .seed(seed)
                .loss(loss)
                .l1_sparsity(setup.l1_sparsity)
                .check_gradient(false);
            if let Some(ratio) = step_ratio {
                pgd = pgd.step_size(ratio * setup.eps);
            }
            pgd.run(&model, &x, &goal)?
        }
    };

    prop_assert_eq!(adv.x_adv.dims(), x.dims(), "x_adv changed shape");
    prop_assert_eq!(adv.x_adv.dtype(), x.dtype(), "x_adv changed dtype");
    prop_assert_eq!(adv.success.len(), n);
    prop_assert_eq!(adv.predictions.len(), n);
    prop_assert_eq!(adv.norms.len(), n);
    match setup.method {
        Method::Fgsm => prop_assert_eq!(adv.gradient_evals, n, "FGSM costs one gradient"),
        Method::Pgd {
            early_stop,
            restarts,
            steps,
            ..
        } => {
            prop_assert!(adv.gradient_evals <= restarts * steps * n);
            if !early_stop && restarts == 1 {
                prop_assert_eq!(
                    adv.gradient_evals,
                    steps * n,
                    "PGD costs one gradient a step"
                );
            }
        }
    }
    let early_stop = matches!(
        setup.method,
        Method::Pgd {
            early_stop: true,
            ..
        }
    );
    let reaches = |pred: u32, i: usize| {
        if targeted {
            pred == goal_classes[i]
        } else {
            pred != goal_classes[i]
        }
    };
    let xa = host(&adv.x_adv)?;
    let eps = f64::from(setup.eps);
    for i in 0..n {
        let (clean, moved) = (&batch.x[i * d..(i + 1) * d], &xa[i * d..(i + 1) * d]);
        for (j, v) in moved.iter().enumerate() {
            prop_assert!(
                (lo..=hi).contains(v),
                "sample {i} pixel {j}: {v} outside the box [{lo}, {hi}]"
            );
        }
        let dist = distance(setup.norm, moved, clean);
        prop_assert!(
            dist <= eps + BALL_SLACK,
            "sample {i}: distance {dist} > eps {eps} in {}",
            setup.norm
        );
        let bound = documented_bound(setup.norm, setup.eps);
        prop_assert!(
            dist <= bound,
            "sample {i}: distance {dist} exceeds the documented bound {bound}"
        );
        let reported = f64::from(adv.norms[i]);
        prop_assert!(
            (reported - dist).abs() <= BALL_SLACK.max(1e-5 * dist),
            "sample {i}: reported norm {reported}, recomputed {dist}"
        );
        let (z, scale) = host_logits(problem, moved);
        if let Some(pred) = clear_argmax(&z, 1e-4 * (1.0 + scale)) {
            prop_assert_eq!(adv.predictions[i], pred, "sample {} prediction", i);
            prop_assert_eq!(adv.success[i], reaches(pred, i), "sample {} success", i);
        }
        // With early stop, a sample whose clean input already reaches the goal is returned as is.
        let (z, scale) = host_logits(problem, clean);
        if let Some(pred) = clear_argmax(&z, 1e-4 * (1.0 + scale)) {
            if early_stop && reaches(pred, i) {
                prop_assert!(
                    moved
                        .iter()
                        .zip(clean)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "sample {i} reached the goal at the clean input but was moved"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(6000))]

    /// FGSM and PGD return points in the box and the ball, and report their norms, predictions
    /// and success truthfully.
    #[test]
    fn attacks_stay_in_budget_and_report_truthfully(
        problem in problem_strategy(vec![1.0]),
        setup in setup_strategy(),
    ) {
        attack_and_check(&problem, &setup)?;
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// The same when the input gradient vanishes: a constant model (zero weights), or weights so
    /// large that the softmax saturates and cross-entropy's gradient underflows to zero.
    #[test]
    fn attacks_stay_in_budget_when_the_gradient_vanishes(
        problem in problem_strategy(vec![0.0, 1e3]),
        setup in setup_strategy(),
    ) {
        attack_and_check(&problem, &setup)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Projection and random start
// ---------------------------------------------------------------------------------------------

/// Documented bound of `project` / `random_start` for one sample (no slack beyond rounding of
/// the `f64` distance itself): ε exactly for L∞ (a difference of two `f32` pixels is exact in
/// `f64`, and rounding is monotone, so the recount never exceeds ε unless the point does), ε up
/// to the `f64` sum's rounding for L2 and L1.
fn documented_bound(norm: Norm, eps: f32) -> f64 {
    let eps = f64::from(eps);
    match norm {
        Norm::Linf => eps,
        Norm::L2 | Norm::L1 => eps * (1.0 + 1e-12),
    }
}

/// Check that `out` (flattened, `N·D`) lies in the box and in the ball around `batch`.
fn check_feasible(batch: &Batch, budget: &Budget, out: &[f32], what: &str) -> TestResult {
    let (lo, hi) = batch.bounds;
    let d = batch.dim();
    prop_assert_eq!(out.len(), batch.x.len());
    for i in 0..batch.n() {
        let (clean, moved) = (&batch.x[i * d..(i + 1) * d], &out[i * d..(i + 1) * d]);
        for (j, v) in moved.iter().enumerate() {
            prop_assert!(
                (lo..=hi).contains(v),
                "{what}: sample {i} pixel {j}: {v} outside [{lo}, {hi}]"
            );
        }
        let dist = distance(budget.norm(), moved, clean);
        let eps = f64::from(budget.eps());
        prop_assert!(
            dist <= eps + BALL_SLACK,
            "{what}: sample {i}: distance {dist} > eps {eps}"
        );
        let bound = documented_bound(budget.norm(), budget.eps());
        prop_assert!(
            dist <= bound,
            "{what}: sample {i}: distance {dist} exceeds the documented bound {bound}"
        );
    }
    Ok(())
}

/// Random feasible points of ball ∩ box around `clean` (one sample): convex combinations of
/// `clean` with random box points, dense or sparse, scaled into the ball, on its boundary half
/// of the time; plus `clean` itself.
fn feasible_points(
    rng: &mut StdRng,
    norm: Norm,
    eps: f32,
    bounds: (f32, f32),
    clean: &[f32],
) -> Vec<Vec<f64>> {
    let (lo, hi) = (f64::from(bounds.0), f64::from(bounds.1));
    let eps = f64::from(eps);
    let x: Vec<f64> = clean.iter().map(|v| f64::from(*v)).collect();
    let mut points = vec![x.clone()];
    for _ in 0..6 {
        let density = [1.0, 0.5, 1.0 / x.len() as f64][rng.random_range(0..3)];
        let dir: Vec<f64> = x
            .iter()
            .map(|&xj| {
                if rng.random_bool(density.min(1.0)) {
                    let y = match rng.random_range(0..4) {
                        0 => lo,
                        1 => hi,
                        _ => rng.random_range(lo..=hi),
                    };
                    y - xj
                } else {
                    0.0
                }
            })
            .collect();
        let len = match norm {
            Norm::Linf => dir.iter().fold(0.0, |m: f64, v| m.max(v.abs())),
            Norm::L2 => l2(&dir),
            Norm::L1 => dir.iter().map(|v| v.abs()).sum(),
        };
        let reach = if rng.random_bool(0.5) {
            1.0
        } else {
            rng.random::<f64>()
        };
        let t = if len > 0.0 {
            (reach * eps / len).min(1.0)
        } else {
            0.0
        };
        points.push(x.iter().zip(&dir).map(|(a, v)| a + t * v).collect());
    }
    points
}

/// Projection inputs: anywhere around the box, or near `x` (often inside the ball).
fn projection_case() -> impl Strategy<Value = (Batch, Vec<f32>, Norm, f32, u64)> {
    (
        batch_with(2, -1.0f64..=1.0),
        any::<bool>(),
        (-4.0f64..=0.7).prop_map(|e| 10f64.powf(e)),
        norm_strategy(),
        eps_strategy(),
        any::<u64>(),
    )
        .prop_map(|((batch, noise), far, spread, norm, eps, seed)| {
            let (lo, hi) = (f64::from(batch.bounds.0), f64::from(batch.bounds.1));
            let width = hi - lo;
            let v = batch
                .x
                .iter()
                .zip(noise[0].iter().zip(&noise[1]))
                .map(|(&x, (&a, &b))| {
                    if far {
                        // Uniform in [lo - 2·width, hi + 2·width].
                        (lo + width * (0.5 + 2.5 * a)) as f32
                    } else {
                        (f64::from(x) + spread * b) as f32
                    }
                })
                .collect();
            (batch, v, norm, eps, seed)
        })
}

proptest! {
    #![proptest_config(config(5000))]

    /// `project` lands in ball ∩ box, is idempotent, and is the Euclidean projection: for every
    /// feasible z, (v − p)·(z − p) ≤ 0 up to rounding.
    #[test]
    fn projection_is_feasible_idempotent_and_optimal(
        (batch, v, norm, eps, seed) in projection_case(),
    ) {
        let (lo, hi) = batch.bounds;
        let budget = Budget::new(norm, eps)?.with_bounds(lo, hi)?;
        let x = batch.tensor()?;
        let vt = Tensor::from_vec(v.clone(), batch.dims.to_vec(), &Device::Cpu)?;
        let pt = budget.project(&vt, &x)?;
        prop_assert_eq!(pt.dims(), x.dims());
        let p = host(&pt)?;
        check_feasible(&batch, &budget, &p, "project")?;

        let again = host(&budget.project(&pt, &x)?)?;
        for (j, (a, b)) in again.iter().zip(&p).enumerate() {
            let change = (f64::from(*a) - f64::from(*b)).abs();
            prop_assert!(change <= 1e-6, "projecting twice moved pixel {j} by {change}");
        }

        let d = batch.dim();
        let scale = f64::from(lo.abs().max(hi.abs()));
        // Worst-case f32 rounding of the result (and the ball shrinkage that absorbs it).
        let rounding = d as f64 * F32_ROUNDOFF * scale;
        let mut rng = StdRng::seed_from_u64(seed);
        for i in 0..batch.n() {
            let range = i * d..(i + 1) * d;
            let (clean, vi, pi) = (&batch.x[range.clone()], &v[range.clone()], &p[range]);
            let residual: Vec<f64> =
                vi.iter().zip(pi).map(|(a, b)| f64::from(*a) - f64::from(*b)).collect();
            for z in feasible_points(&mut rng, norm, eps, batch.bounds, clean) {
                let dz: Vec<f64> = z.iter().zip(pi).map(|(a, b)| a - f64::from(*b)).collect();
                let inner: f64 = residual.iter().zip(&dz).map(|(a, b)| a * b).sum();
                let tol = 1e-5 * (1.0 + l2(&residual)) * (1.0 + l2(&dz))
                    + 2.0 * l2(&residual) * rounding;
                prop_assert!(
                    inner <= tol,
                    "sample {i}: (v - p)·(z - p) = {inner} > {tol}: p is not the projection"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// `step` equals the composed `project(x_adv + alpha · ascent_direction(g), x)` bit for bit
    /// (for L∞ it runs as one fused loop on the CPU), and lands in ball ∩ box.
    #[test]
    fn step_is_the_projected_ascent_step(
        (batch, v, norm, eps, seed) in projection_case(),
        alpha in (-4.0f64..=0.7).prop_map(|e| 10f64.powf(e) as f32),
    ) {
        let (lo, hi) = batch.bounds;
        let budget = Budget::new(norm, eps)?.with_bounds(lo, hi)?;
        let x = batch.tensor()?;
        let x_adv = Tensor::from_vec(v, batch.dims.to_vec(), &Device::Cpu)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let g: Vec<f32> = (0..batch.x.len())
            .map(|_| match rng.random_range(0..4) {
                0 => 0.0,
                _ => rng.random_range(-1.0f32..=1.0),
            })
            .collect();
        let g = Tensor::from_vec(g, batch.dims.to_vec(), &Device::Cpu)?;
        let fused = host(&budget.step(&x_adv, &g, &x, alpha, 0.5)?)?;
        let dir = budget.ascent_direction(&g, &x_adv, 0.5)?;
        let composed = budget.project(&(&x_adv + dir.affine(f64::from(alpha), 0.0)?)?, &x)?;
        let composed = host(&composed)?;
        prop_assert!(
            fused.iter().zip(&composed).all(|(a, b)| a.to_bits() == b.to_bits()),
            "step differs from the composed ops"
        );
        check_feasible(&batch, &budget, &fused, "step")?;
    }
}

proptest! {
    #![proptest_config(config(3000))]

    /// `random_start` lands in ball ∩ box and depends only on the generator's state.
    #[test]
    fn random_start_is_feasible_and_deterministic(
        (batch, _) in batch_with(0, Just(0u8)),
        norm in norm_strategy(),
        eps in eps_strategy(),
        seed in any::<u64>(),
    ) {
        let (lo, hi) = batch.bounds;
        let budget = Budget::new(norm, eps)?.with_bounds(lo, hi)?;
        let x = batch.tensor()?;
        let start = budget.random_start(&x, &mut StdRng::seed_from_u64(seed))?;
        prop_assert_eq!(start.dims(), x.dims());
        let s = host(&start)?;
        check_feasible(&batch, &budget, &s, "random_start")?;
        let again = host(&budget.random_start(&x, &mut StdRng::seed_from_u64(seed))?)?;
        prop_assert!(
            s.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()),
            "random_start differs for the same seed"
        );
        // The same pixels as a strided view take the composed tensor ops (the contiguous batch
        // takes the fused L∞ loop): bit for bit the same start.
        let wide = Tensor::cat(&[&x, &x], 3)?;
        let view = wide.narrow(3, 0, batch.dims[3])?;
        prop_assert!(!view.is_contiguous() || batch.dims[0] * batch.dims[1] * batch.dims[2] == 1);
        let composed = host(&budget.random_start(&view, &mut StdRng::seed_from_u64(seed))?)?;
        prop_assert!(
            s.iter().zip(&composed).all(|(a, b)| a.to_bits() == b.to_bits()),
            "random_start differs between the fused and the composed path"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Ascent directions
// ---------------------------------------------------------------------------------------------

/// Gradients with exact zeros and ties, over a wide range of magnitudes (down to subnormals).
fn gradient_case() -> impl Strategy<Value = (Batch, Vec<f32>)> {
    (
        batch_with(
            1,
            prop_oneof![
                1 => Just(0.0f64),
                1 => Just(0.5),
                1 => Just(-0.5),
                5 => -1.0f64..=1.0,
            ],
        ),
        -40.0f64..=4.0,
    )
        .prop_map(|((batch, raw), exp)| {
            let scale = 10f64.powf(exp);
            let g = raw[0].iter().map(|v| (v * scale) as f32).collect();
            (batch, g)
        })
}

fn sparsity_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.99f32), Just(0.0f32), 0.0f32..0.999]
}

/// Check the direction `dir` for the gradient `g` at `x`, sample by sample; zero-gradient
/// samples are checked only when `check_zero` is set.
fn check_direction(
    budget: &Budget,
    batch: &Batch,
    g: &[f32],
    dir: &[f32],
    sparsity: f32,
    check_zero: bool,
) -> TestResult {
    let d = batch.dim();
    let (lo, hi) = batch.bounds;
    prop_assert_eq!(dir.len(), g.len());
    for i in 0..batch.n() {
        let range = i * d..(i + 1) * d;
        let (gi, xi, di) = (&g[range.clone()], &batch.x[range.clone()], &dir[range]);
        if gi.iter().all(|v| *v == 0.0) {
            if check_zero {
                prop_assert!(
                    di.iter().all(|v| *v == 0.0),
                    "sample {i}: zero gradient gives the direction {di:?} in {}",
                    budget.norm()
                );
            }
            continue;
        }
        match budget.norm() {
            Norm::Linf => {
                for (j, (a, b)) in di.iter().zip(gi).enumerate() {
                    prop_assert_eq!(*a, sign(*b), "sample {} coordinate {}", i, j);
                }
            }
            Norm::L2 => {
                let g64: Vec<f64> = gi.iter().map(|v| f64::from(*v)).collect();
                let len = l2(&g64);
                let d64: Vec<f64> = di.iter().map(|v| f64::from(*v)).collect();
                let unit = l2(&d64);
                prop_assert!((unit - 1.0).abs() <= 1e-5, "sample {i}: ‖d‖₂ = {unit}");
                for (j, (a, b)) in d64.iter().zip(&g64).enumerate() {
                    prop_assert!(
                        (a - b / len).abs() <= 1e-5,
                        "sample {i} coordinate {j}: {a} is not g/‖g‖ = {}",
                        b / len
                    );
                }
            }
            Norm::L1 => {
                // Coordinates that can move the way the gradient points.
                let movable: Vec<bool> = gi
                    .iter()
                    .zip(xi)
                    .map(|(&gj, &xj)| {
                        gj != 0.0 && !(xj >= hi && gj > 0.0) && !(xj <= lo && gj < 0.0)
                    })
                    .collect();
                let mags: Vec<f64> = gi.iter().map(|v| f64::from(v.abs())).collect();
                let mut candidates: Vec<f64> =
                    (0..d).filter(|&j| movable[j]).map(|j| mags[j]).collect();
                let selected: Vec<usize> = (0..d).filter(|&j| di[j] != 0.0).collect();
                if candidates.is_empty() {
                    prop_assert!(selected.is_empty(), "sample {i}: moves blocked coordinates");
                    continue;
                }
                candidates.sort_by(|a, b| b.total_cmp(a));
                let keep = ((1.0 - f64::from(sparsity)) * d as f64).round().max(1.0) as usize;
                let tau = candidates[keep.min(candidates.len()) - 1];
                // The threshold is found by bisection to 2⁻⁴⁰ of the largest magnitude: values
                // that close below the k-th largest count as ties.
                let tie = tau - 1e-11 * candidates[0];
                let allowed = candidates.iter().filter(|m| **m >= tie).count();
                prop_assert!(
                    selected.len() >= keep.min(candidates.len()) && selected.len() <= allowed,
                    "sample {i}: {} coordinates selected, expected {} (up to {allowed} with ties)",
                    selected.len(),
                    keep.min(candidates.len())
                );
                let step = 1.0 / selected.len() as f64;
                let mut total = 0.0;
                for &j in &selected {
                    prop_assert!(movable[j], "sample {i}: moves blocked coordinate {j}");
                    prop_assert_eq!(sign(di[j]), sign(gi[j]), "sample {} coordinate {}", i, j);
                    let m = f64::from(di[j].abs());
                    prop_assert!(
                        (m - step).abs() <= 1e-6 * step,
                        "sample {i}: entry {m} != 1/{}",
                        selected.len()
                    );
                    total += m;
                }
                prop_assert!((total - 1.0).abs() <= 1e-5, "sample {i}: ‖d‖₁ = {total}");
                // The selected coordinates are the largest movable ones.
                let smallest_in = selected
                    .iter()
                    .map(|&j| mags[j])
                    .fold(f64::INFINITY, f64::min);
                for j in (0..d).filter(|&j| movable[j] && di[j] == 0.0) {
                    prop_assert!(
                        mags[j] < smallest_in,
                        "sample {i}: skipped coordinate {j} (|g| = {}) over a smaller one",
                        mags[j]
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(4000))]

    /// L∞: sign(g); L2: g/‖g‖₂; L1: sign(g)/k on the k largest movable |g|, k = max(1,
    /// round((1 − sparsity)·D)) up to ties.
    #[test]
    fn ascent_direction_is_the_steepest_unit_step(
        (batch, g) in gradient_case(),
        norm in norm_strategy(),
        sparsity in sparsity_strategy(),
    ) {
        let (lo, hi) = batch.bounds;
        let budget = Budget::new(norm, 0.5)?.with_bounds(lo, hi)?;
        let gt = Tensor::from_vec(g.clone(), batch.dims.to_vec(), &Device::Cpu)?;
        let dir = budget.ascent_direction(&gt, &batch.tensor()?, sparsity)?;
        prop_assert_eq!(dir.dims(), gt.dims());
        check_direction(&budget, &batch, &g, &host(&dir)?, sparsity, false)?;
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// A zero gradient gives a zero direction (as documented), in every norm. Regression: the L2
    /// direction of a zero gradient was 0/0 = NaN, and FGSM/PGD turned such samples into NaN.
    #[test]
    fn zero_gradient_gives_zero_direction(
        (batch, g) in gradient_case(),
        zero_rows in vec(any::<bool>(), 4),
        norm in norm_strategy(),
        sparsity in sparsity_strategy(),
    ) {
        let d = batch.dim();
        let mut g = g;
        for (i, zero) in zero_rows.iter().enumerate().take(batch.n()) {
            if *zero || i == 0 {
                g[i * d..(i + 1) * d].fill(0.0);
            }
        }
        let (lo, hi) = batch.bounds;
        let budget = Budget::new(norm, 0.5)?.with_bounds(lo, hi)?;
        let gt = Tensor::from_vec(g.clone(), batch.dims.to_vec(), &Device::Cpu)?;
        let dir = budget.ascent_direction(&gt, &batch.tensor()?, sparsity)?;
        check_direction(&budget, &batch, &g, &host(&dir)?, sparsity, true)?;
    }
}
