//! Every bad input to the public API returns a typed `perturb::Error`, never a panic.
//!
//! Each test passes one bad input (everything else valid) and asserts the exact variant and its
//! key fields. Attack-level checks run through both `Fgsm` and `Pgd`.

use candle_core::{DType, Device, Tensor};
use perturb::{
    check_batch, loss_and_grad, Adversarial, Attack, Budget, Classifier, Error, Fgsm, Goal,
    GradVerdict, GradientCheck, Loss, Norm, Normalized, Pgd,
};

type CResult<T> = candle_core::Result<T>;

/// `assert!(matches!(res, Err(pattern) if guard))` with the actual value in the failure message.
macro_rules! assert_err {
    ($res:expr, $pat:pat $(if $guard:expr)?) => {{
        let res = $res;
        assert!(
            matches!(res, Err($pat) $(if $guard)?),
            "expected Err({}), got {:?}",
            stringify!($pat),
            res
        );
    }};
}

const DEV: Device = Device::Cpu;
/// Classes of the default model.
const K: usize = 3;

/// Weights `[4, k]` of a linear classifier on `[N, 1, 2, 2]` inputs.
fn weights(k: usize) -> Tensor {
    Tensor::arange(0f32, (4 * k) as f32, &DEV)
        .and_then(|t| t.affine(0.7, 0.3))
        .and_then(|t| t.sin())
        .and_then(|t| t.reshape((4, k)))
        .unwrap()
}

/// A linear classifier with `k` classes: `logits = flatten(x) · w`.
fn linear(k: usize) -> impl Fn(&Tensor) -> CResult<Tensor> {
    let w = weights(k);
    move |x: &Tensor| x.flatten_from(1)?.matmul(&w)
}

/// A valid batch `[2, 1, 2, 2]` of pixels in `[0, 1]`.
fn input() -> Tensor {
    input_with(0.5)
}

/// The valid batch with pixel 5 (sample 1) set to `v`.
fn input_with(v: f32) -> Tensor {
    let data = [0.1f32, 0.4, 0.6, 0.9, 0.3, v, 0.8, 0.2];
    Tensor::from_slice(&data, (2, 1, 2, 2), &DEV).unwrap()
}

/// Valid labels for the batch.
fn labels() -> Tensor {
    Tensor::new(&[0u32, 1], &DEV).unwrap()
}

fn u32s(v: &[u32]) -> Tensor {
    Tensor::new(v, &DEV).unwrap()
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::new(v, &DEV).unwrap()
}

fn budget() -> Budget {
    Budget::linf(0.1).unwrap()
}

/// FGSM and a short PGD with the same budget, loss and gradient-check setting.
fn attacks_with(budget: Budget, loss: Loss, check_gradient: bool) -> Vec<Box<dyn Attack>> {
    vec![
        Box::new(Fgsm::new(budget).loss(loss).check_gradient(check_gradient)),
        Box::new(
            Pgd::new(budget)
                .steps(2)
                .loss(loss)
                .check_gradient(check_gradient),
        ),
    ]
}

fn attacks() -> Vec<Box<dyn Attack>> {
    attacks_with(budget(), Loss::CrossEntropy, true)
}

/// Run every attack of `attacks` and return `(name, result)` pairs.
fn run_each(
    attacks: Vec<Box<dyn Attack>>,
    model: &dyn Classifier,
    x: &Tensor,
    goal: &Goal,
) -> Vec<(&'static str, perturb::Result<Adversarial>)> {
    attacks
        .into_iter()
        .map(|a| (a.name(), a.run(model, x, goal)))
        .collect()
}

/// Run FGSM and PGD with default settings on the linear model and the goal, with input `x`.
fn run_both(x: &Tensor, goal: &Goal) -> Vec<(&'static str, perturb::Result<Adversarial>)> {
    let model = linear(K);
    run_each(attacks(), &model, x, goal)
}

/// Assert that every `(name, result)` matches the pattern, naming the attack on failure.
macro_rules! assert_each_err {
    ($runs:expr, $pat:pat $(if $guard:expr)?) => {{
        let runs = $runs;
        assert_eq!(runs.len(), 2, "both fgsm and pgd must run");
        for (name, res) in runs {
            assert!(
                matches!(res, Err($pat) $(if $guard)?),
                "{name}: expected Err({}), got {:?}",
                stringify!($pat),
                res
            );
        }
    }};
}

/// Sanity: the fixtures themselves are valid, so every error below comes from the one bad input.
mod fixtures {
    use super::*;

    #[test]
    fn valid_inputs_run_through_both_attacks() {
        for (name, res) in run_both(&input(), &Goal::untargeted(&labels())) {
            let adv = res.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(adv.success.len(), 2);
        }
        let targeted = Goal::targeted_with_labels(&u32s(&[2, 0]), &labels());
        for (name, res) in run_both(&input(), &targeted) {
            res.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let model = linear(K);
        loss_and_grad(&model, &input(), &Goal::untargeted(&labels()), Loss::Dlr).unwrap();
    }
}

/// Budget constructors reject a radius that is not positive and finite, and an empty box.
mod budget_params {
    use super::*;

    const BAD_EPS: [f32; 5] = [0.0, -0.0, -0.1, f32::NAN, f32::INFINITY];

    #[test]
    fn new_rejects_bad_eps() {
        for eps in BAD_EPS {
            for norm in [Norm::Linf, Norm::L2, Norm::L1] {
                assert_err!(Budget::new(norm, eps), Error::InvalidEpsilon(e) if e.to_bits() == eps.to_bits());
            }
        }
        assert_err!(Budget::new(Norm::L2, f32::NEG_INFINITY), Error::InvalidEpsilon(e) if e == f32::NEG_INFINITY);
    }

    #[test]
    fn linf_l2_l1_reject_bad_eps() {
        for eps in BAD_EPS {
            assert_err!(Budget::linf(eps), Error::InvalidEpsilon(_));
            assert_err!(Budget::l2(eps), Error::InvalidEpsilon(_));
            assert_err!(Budget::l1(eps), Error::InvalidEpsilon(_));
        }
        assert_err!(Budget::linf(0.0), Error::InvalidEpsilon(e) if e == 0.0);
        assert_err!(Budget::l2(-1.0), Error::InvalidEpsilon(e) if e == -1.0);
        assert_err!(Budget::l1(f32::NAN), Error::InvalidEpsilon(e) if e.is_nan());
        assert_err!(Budget::linf(f32::INFINITY), Error::InvalidEpsilon(e) if e == f32::INFINITY);
    }

    #[test]
    fn with_eps_rejects_bad_eps() {
        for eps in BAD_EPS {
            assert_err!(budget().with_eps(eps), Error::InvalidEpsilon(_));
            assert_err!(
                Budget::l2(1.0).unwrap().with_eps(eps),
                Error::InvalidEpsilon(_)
            );
        }
        assert_err!(budget().with_eps(-2.0), Error::InvalidEpsilon(e) if e == -2.0);
    }

    #[test]
    fn with_bounds_rejects_empty_or_inverted_box() {
        assert_err!(budget().with_bounds(0.5, 0.5), Error::InvalidBounds { lo, hi } if lo == 0.5 && hi == 0.5);
        assert_err!(budget().with_bounds(1.0, 0.0), Error::InvalidBounds { lo, hi } if lo == 1.0 && hi == 0.0);
    }

    #[test]
    fn with_bounds_rejects_non_finite_edges() {
        assert_err!(budget().with_bounds(f32::NAN, 1.0), Error::InvalidBounds { lo, .. } if lo.is_nan());
        assert_err!(budget().with_bounds(0.0, f32::NAN), Error::InvalidBounds { hi, .. } if hi.is_nan());
        assert_err!(budget().with_bounds(0.0, f32::INFINITY), Error::InvalidBounds { hi, .. } if hi == f32::INFINITY);
        assert_err!(
            budget().with_bounds(f32::NEG_INFINITY, 1.0),
            Error::InvalidBounds { lo, .. } if lo == f32::NEG_INFINITY
        );
    }

    #[test]
    fn unknown_norm_name_is_invalid_parameter() {
        assert_err!("x".parse::<Norm>(), Error::InvalidParameter { name: "norm", ref value, .. } if value == "x");
        assert_err!(
            "".parse::<Norm>(),
            Error::InvalidParameter { name: "norm", .. }
        );
        assert_err!(
            "l3".parse::<Norm>(),
            Error::InvalidParameter { name: "norm", .. }
        );
        assert_eq!("LINF".parse::<Norm>().unwrap(), Norm::Linf);
    }
}

/// Bad input batches (rank, emptiness, dtype, NaN/inf, pixel box) through FGSM and PGD.
mod input_batch {
    use super::*;

    fn goal() -> Goal {
        Goal::untargeted(&labels())
    }

    #[test]
    fn rank_3_input_is_shape_mismatch() {
        let x = input().squeeze(1).unwrap();
        assert_eq!(x.dims(), [2, 2, 2]);
        assert_each_err!(
            run_both(&x, &goal()),
            Error::ShapeMismatch { what: "input", ref got, .. } if got == &[2, 2, 2]
        );
    }

    #[test]
    fn rank_5_input_is_shape_mismatch() {
        let x = input().unsqueeze(4).unwrap();
        assert_each_err!(
            run_both(&x, &goal()),
            Error::ShapeMismatch { what: "input", ref got, .. } if got == &[2, 1, 2, 2, 1]
        );
    }

    #[test]
    fn rank_2_and_rank_0_inputs_are_shape_mismatch() {
        let x = input().flatten_from(1).unwrap();
        assert_each_err!(
            run_both(&x, &goal()),
            Error::ShapeMismatch { what: "input", .. }
        );
        let scalar = Tensor::new(0.5f32, &DEV).unwrap();
        assert_each_err!(
            run_both(&scalar, &goal()),
            Error::ShapeMismatch { what: "input", ref got, .. } if got.is_empty()
        );
    }

    #[test]
    fn empty_batch_is_shape_mismatch() {
        let x = Tensor::zeros((0, 1, 2, 2), DType::F32, &DEV).unwrap();
        let y = Tensor::zeros(0, DType::U32, &DEV).unwrap();
        assert_each_err!(
            run_both(&x, &Goal::untargeted(&y)),
            Error::ShapeMismatch { what: "input", ref got, .. } if got == &[0, 1, 2, 2]
        );
    }

    #[test]
    fn zero_sized_image_is_shape_mismatch() {
        let x = Tensor::zeros((2, 1, 0, 2), DType::F32, &DEV).unwrap();
        assert_each_err!(
            run_both(&x, &goal()),
            Error::ShapeMismatch { what: "input", .. }
        );
    }

    #[test]
    fn f64_input_is_dtype_mismatch() {
        let x = input().to_dtype(DType::F64).unwrap();
        assert_each_err!(
            run_both(&x, &goal()),
            Error::DTypeMismatch {
                what: "input",
                got: DType::F64,
                ..
            }
        );
    }

    #[test]
    fn u8_input_is_dtype_mismatch() {
        let x = Tensor::zeros((2, 1, 2, 2), DType::U8, &DEV).unwrap();
        assert_each_err!(
            run_both(&x, &goal()),
            Error::DTypeMismatch {
                what: "input",
                got: DType::U8,
                ..
            }
        );
    }

    #[test]
    fn f16_input_is_dtype_mismatch() {
        let x = input().to_dtype(DType::F16).unwrap();
        assert_each_err!(
            run_both(&x, &goal()),
            Error::DTypeMismatch {
                what: "input",
                got: DType::F16,
                ..
            }
        );
    }

    #[test]
    fn nan_pixel_is_non_finite() {
        assert_each_err!(
            run_both(&input_with(f32::NAN), &goal()),
            Error::NonFinite { what: "input" }
        );
    }

    #[test]
    fn infinite_pixels_are_non_finite() {
        assert_each_err!(
            run_both(&input_with(f32::INFINITY), &goal()),
            Error::NonFinite { what: "input" }
        );
        assert_each_err!(
            run_both(&input_with(f32::NEG_INFINITY), &goal()),
            Error::NonFinite { what: "input" }
        );
    }

    #[test]
    fn pixel_above_box_is_out_of_range() {
        assert_each_err!(
            run_both(&input_with(1.5), &goal()),
            Error::PixelsOutOfRange { min, max, lo, hi }
                if max == 1.5 && min == 0.1 && lo == 0.0 && hi == 1.0
        );
    }

    #[test]
    fn pixel_below_box_is_out_of_range() {
        assert_each_err!(
            run_both(&input_with(-0.1), &goal()),
            Error::PixelsOutOfRange { min, max, lo, hi }
                if min == -0.1 && max == 0.9 && lo == 0.0 && hi == 1.0
        );
    }

    #[test]
    fn custom_bounds_are_enforced() {
        let model = linear(K);
        let b = budget().with_bounds(0.2, 0.8).unwrap();
        // 0.1 and 0.9 of the fixture lie outside [0.2, 0.8].
        assert_each_err!(
            run_each(attacks_with(b, Loss::CrossEntropy, true), &model, &input(), &goal()),
            Error::PixelsOutOfRange { min, max, lo, hi }
                if min == 0.1 && max == 0.9 && lo == 0.2 && hi == 0.8
        );
        // A [-1, 1] box accepts -0.1 but not 1.5.
        let b = budget().with_bounds(-1.0, 1.0).unwrap();
        let attacks = attacks_with(b, Loss::CrossEntropy, true);
        for (name, res) in run_each(attacks, &model, &input_with(-0.1), &goal()) {
            res.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_each_err!(
            run_each(attacks_with(b, Loss::CrossEntropy, true), &model, &input_with(1.5), &goal()),
            Error::PixelsOutOfRange { max, lo, hi, .. } if max == 1.5 && lo == -1.0 && hi == 1.0
        );
    }

    #[test]
    fn check_input_and_check_batch_report_the_same_variants() {
        let b = budget();
        assert_err!(
            b.check_input(&input().squeeze(1).unwrap()),
            Error::ShapeMismatch { what: "input", .. }
        );
        assert_err!(
            b.check_input(&input().to_dtype(DType::F64).unwrap()),
            Error::DTypeMismatch {
                what: "input",
                got: DType::F64,
                ..
            }
        );
        assert_err!(
            b.check_input(&input_with(f32::NAN)),
            Error::NonFinite { what: "input" }
        );
        assert_err!(
            b.check_input(&input_with(1.5)),
            Error::PixelsOutOfRange { .. }
        );
        assert_err!(
            check_batch(&input(), 0.0, 0.5),
            Error::PixelsOutOfRange { max, hi, .. } if max == 0.9 && hi == 0.5
        );
    }
}

/// Labels and targets of the wrong shape, dtype or range, and targets equal to labels.
mod goal_classes {
    use super::*;

    #[test]
    fn labels_of_wrong_length_are_shape_mismatch() {
        for y in [u32s(&[0]), u32s(&[0, 1, 2])] {
            let n = y.dim(0).unwrap();
            assert_each_err!(
                run_both(&input(), &Goal::untargeted(&y)),
                Error::ShapeMismatch { what: "labels", ref got, .. } if got == &[n]
            );
        }
    }

    #[test]
    fn rank_2_labels_are_shape_mismatch() {
        let y = Tensor::new(&[[0u32], [1]], &DEV).unwrap();
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&y)),
            Error::ShapeMismatch { what: "labels", ref got, .. } if got == &[2, 1]
        );
        let scalar = Tensor::new(0u32, &DEV).unwrap();
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&scalar)),
            Error::ShapeMismatch { what: "labels", .. }
        );
    }

    #[test]
    fn float_labels_are_dtype_mismatch() {
        let y = Tensor::new(&[0f32, 1.0], &DEV).unwrap();
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&y)),
            Error::DTypeMismatch {
                what: "labels",
                got: DType::F32,
                ..
            }
        );
        let t = Tensor::new(&[2f64, 0.0], &DEV).unwrap();
        assert_each_err!(
            run_both(&input(), &Goal::targeted(&t)),
            Error::DTypeMismatch {
                what: "targets",
                got: DType::F64,
                ..
            }
        );
    }

    #[test]
    fn label_equal_to_class_count_is_out_of_range() {
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&u32s(&[0, K as u32]))),
            Error::LabelOutOfRange { what: "labels", index: 1, class, classes: K } if class == K as i64
        );
    }

    #[test]
    fn negative_i64_label_is_out_of_range() {
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&i64s(&[-1, 0]))),
            Error::LabelOutOfRange {
                what: "labels",
                index: 0,
                class: -1,
                classes: K
            }
        );
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&i64s(&[0, i64::MAX]))),
            Error::LabelOutOfRange {
                what: "labels",
                index: 1,
                class: i64::MAX,
                ..
            }
        );
    }

    #[test]
    fn huge_u32_and_u8_labels_are_out_of_range() {
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&u32s(&[u32::MAX, 0]))),
            Error::LabelOutOfRange { what: "labels", index: 0, class, .. } if class == i64::from(u32::MAX)
        );
        let y = Tensor::new(&[0u8, 200], &DEV).unwrap();
        assert_each_err!(
            run_both(&input(), &Goal::untargeted(&y)),
            Error::LabelOutOfRange {
                what: "labels",
                index: 1,
                class: 200,
                ..
            }
        );
    }

    #[test]
    fn target_out_of_range() {
        assert_each_err!(
            run_both(&input(), &Goal::targeted(&u32s(&[1, 7]))),
            Error::LabelOutOfRange {
                what: "targets",
                index: 1,
                class: 7,
                classes: K
            }
        );
        assert_each_err!(
            run_both(&input(), &Goal::targeted(&i64s(&[-3, 1]))),
            Error::LabelOutOfRange {
                what: "targets",
                index: 0,
                class: -3,
                classes: K
            }
        );
        let goal = Goal::targeted_with_labels(&u32s(&[1, 3]), &labels());
        assert_each_err!(
            run_both(&input(), &goal),
            Error::LabelOutOfRange {
                what: "targets",
                index: 1,
                class: 3,
                ..
            }
        );
    }

    #[test]
    fn targets_of_wrong_shape() {
        assert_each_err!(
            run_both(&input(), &Goal::targeted(&u32s(&[1]))),
            Error::ShapeMismatch {
                what: "targets",
                ..
            }
        );
    }

    #[test]
    fn known_labels_of_a_targeted_goal_are_checked() {
        let goal = Goal::targeted_with_labels(&u32s(&[1, 2]), &u32s(&[0]));
        assert_each_err!(
            run_both(&input(), &goal),
            Error::ShapeMismatch { what: "labels", .. }
        );
        let goal = Goal::targeted_with_labels(&u32s(&[1, 2]), &u32s(&[0, 9]));
        assert_each_err!(
            run_both(&input(), &goal),
            Error::LabelOutOfRange {
                what: "labels",
                index: 1,
                class: 9,
                ..
            }
        );
        let y = Tensor::new(&[0f32, 1.0], &DEV).unwrap();
        let goal = Goal::targeted_with_labels(&u32s(&[1, 2]), &y);
        assert_each_err!(
            run_both(&input(), &goal),
            Error::DTypeMismatch { what: "labels", .. }
        );
    }

    #[test]
    fn target_equal_to_label() {
        let goal = Goal::targeted_with_labels(&u32s(&[2, 1]), &labels());
        assert_each_err!(
            run_both(&input(), &goal),
            Error::TargetEqualsLabel { index: 1, class: 1 }
        );
        // Mixed dtypes of targets and labels are compared by value.
        let goal = Goal::targeted_with_labels(&i64s(&[0, 2]), &labels());
        assert_each_err!(
            run_both(&input(), &goal),
            Error::TargetEqualsLabel { index: 0, class: 0 }
        );
    }
}

/// The goal's classes are checked against the model's class count wherever the attack first
/// sees its logits (no forward pass is spent only to learn the count): on every entry point, with
/// and without the clean forward of early stopping, the gradient self-check or judging.
mod goal_classes_every_entry_point {
    use super::*;
    use perturb::attack::{Patch, PatchApplication, PatchShape, Region};

    /// An entry point of the API, named, on the default batch and model.
    type Entry = (String, Box<dyn Fn(&Goal) -> perturb::Result<()>>);

    fn entry_points() -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        let mut attacks: Vec<(String, Box<dyn Attack>)> = Vec::new();
        for check in [false, true] {
            attacks.push((
                format!("fgsm check {check}"),
                Box::new(Fgsm::new(budget()).check_gradient(check)),
            ));
            for (stop, restarts) in [(false, 1), (true, 1), (false, 2), (true, 2)] {
                let pgd = Pgd::new(budget())
                    .steps(2)
                    .early_stop(stop)
                    .restarts(restarts)
                    .check_gradient(check);
                attacks.push((
                    format!("pgd check {check} stop {stop} x{restarts}"),
                    Box::new(pgd),
                ));
            }
        }
        let pixels = Tensor::full(0.5f32, (1, 1, 1), &DEV).unwrap();
        let patch = Patch::new(pixels, PatchShape::Square).unwrap();
        attacks.push((
            "patch".into(),
            Box::new(PatchApplication::new(patch, Region::Anywhere)),
        ));
        for (name, attack) in attacks {
            let attack: std::sync::Arc<dyn Attack> = attack.into();
            let judged = std::sync::Arc::clone(&attack);
            out.push((
                format!("{name} run"),
                Box::new(move |g: &Goal| judged.run(&linear(K), &input(), g).map(|_| ())),
            ));
            out.push((
                format!("{name} perturb"),
                Box::new(move |g: &Goal| attack.perturb(&linear(K), &input(), g).map(|_| ())),
            ));
        }
        out.push((
            "loss_and_grad".into(),
            Box::new(|g: &Goal| {
                loss_and_grad(&linear(K), &input(), g, Loss::CrossEntropy).map(|_| ())
            }),
        ));
        out
    }

    #[test]
    fn out_of_range_classes_and_targets_equal_to_labels() {
        // (goal, the index list named, sample, class)
        let out_of_range = [
            (
                Goal::untargeted(&u32s(&[0, K as u32])),
                "labels",
                1,
                K as i64,
            ),
            (Goal::targeted(&i64s(&[-1, 1])), "targets", 0, -1),
            (
                Goal::targeted_with_labels(&u32s(&[1, 2]), &u32s(&[0, 7])),
                "labels",
                1,
                7,
            ),
        ];
        for (name, run) in entry_points() {
            for (goal, want_what, want_index, want_class) in &out_of_range {
                let res = run(goal);
                assert!(
                    matches!(
                        res,
                        Err(Error::LabelOutOfRange { what, index, class, classes: K })
                            if what == *want_what && index == *want_index && class == *want_class
                    ),
                    "{name}: {res:?}"
                );
            }
            let res = run(&Goal::targeted_with_labels(&u32s(&[2, 1]), &labels()));
            assert!(
                matches!(res, Err(Error::TargetEqualsLabel { index: 1, class: 1 })),
                "{name}: {res:?}"
            );
            // and a valid goal runs
            run(&Goal::untargeted(&labels())).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// Attack and loss parameters outside their valid range.
mod attack_params {
    use super::*;

    fn run_pgd(pgd: Pgd) -> perturb::Result<Adversarial> {
        let model = linear(K);
        pgd.run(&model, &input(), &Goal::untargeted(&labels()))
    }

    fn run_fgsm(fgsm: Pgd) -> perturb::Result<Adversarial> {
        let model = linear(K);
        fgsm.run(&model, &input(), &Goal::untargeted(&labels()))
    }

    #[test]
    fn pgd_zero_steps() {
        assert_err!(
            run_pgd(Pgd::new(budget()).steps(0)),
            Error::InvalidParameter { name: "steps", ref value, .. } if value == "0"
        );
    }

    #[test]
    fn pgd_zero_restarts() {
        assert_err!(
            run_pgd(Pgd::new(budget()).restarts(0)),
            Error::InvalidParameter { name: "restarts", ref value, .. } if value == "0"
        );
    }

    #[test]
    fn pgd_bad_step_size() {
        for alpha in [0.0, -0.01, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_err!(
                run_pgd(Pgd::new(budget()).step_size(alpha)),
                Error::InvalidParameter {
                    name: "step_size",
                    ..
                }
            );
        }
        assert_err!(
            run_pgd(Pgd::new(budget()).step_size(-0.5)),
            Error::InvalidParameter { name: "step_size", ref value, .. } if value == "-0.5"
        );
    }

    #[test]
    fn parameters_are_checked_before_inputs() {
        let model = linear(K);
        let res = Pgd::new(budget()).steps(0).run(
            &model,
            &input_with(f32::NAN),
            &Goal::untargeted(&labels()),
        );
        assert_err!(res, Error::InvalidParameter { name: "steps", .. });
    }

    #[test]
    fn bad_l1_sparsity() {
        for s in [1.0, -0.1, 1.5, f32::NAN, f32::INFINITY] {
            for b in [budget(), Budget::l1(1.0).unwrap()] {
                assert_err!(
                    run_pgd(Pgd::new(b).l1_sparsity(s)),
                    Error::InvalidParameter {
                        name: "l1_sparsity",
                        ..
                    }
                );
                assert_err!(
                    run_fgsm(Fgsm::new(b).l1_sparsity(s)),
                    Error::InvalidParameter {
                        name: "l1_sparsity",
                        ..
                    }
                );
            }
        }
        assert_err!(
            run_fgsm(Fgsm::new(Budget::l1(1.0).unwrap()).l1_sparsity(1.0)),
            Error::InvalidParameter { name: "l1_sparsity", ref value, .. } if value == "1"
        );
        // Sparsity 0 (keep every coordinate) is valid.
        run_fgsm(Fgsm::new(Budget::l1(1.0).unwrap()).l1_sparsity(0.0)).unwrap();
    }

    #[test]
    fn ascent_direction_rejects_bad_l1_sparsity() {
        let g = input();
        assert_err!(
            Budget::l1(1.0).unwrap().ascent_direction(&g, &input(), 1.0),
            Error::InvalidParameter {
                name: "l1_sparsity",
                ..
            }
        );
    }

    #[test]
    fn cw_constructor_rejects_bad_kappa() {
        assert_err!(
            Loss::cw(-1.0),
            Error::InvalidParameter { name: "kappa", ref value, .. } if value == "-1"
        );
        assert_err!(
            Loss::cw(f32::NAN),
            Error::InvalidParameter { name: "kappa", ref value, .. } if value == "NaN"
        );
        assert_err!(
            Loss::cw(f32::INFINITY),
            Error::InvalidParameter { name: "kappa", .. }
        );
        assert_eq!(Loss::cw(0.0).unwrap(), Loss::CwMargin { kappa: 0.0 });
    }

    #[test]
    fn hand_built_cw_loss_with_bad_kappa_is_rejected_by_attacks() {
        let model = linear(K);
        for kappa in [-1.0, f32::NAN] {
            let loss = Loss::CwMargin { kappa };
            assert_each_err!(
                run_each(
                    attacks_with(budget(), loss, true),
                    &model,
                    &input(),
                    &Goal::untargeted(&labels())
                ),
                Error::InvalidParameter { name: "kappa", .. }
            );
            assert_err!(
                loss_and_grad(&model, &input(), &Goal::untargeted(&labels()), loss),
                Error::InvalidParameter { name: "kappa", .. }
            );
        }
    }

    #[test]
    fn dlr_needs_three_classes_untargeted() {
        let model = linear(2);
        let goal = Goal::untargeted(&labels());
        assert_each_err!(
            run_each(
                attacks_with(budget(), Loss::Dlr, true),
                &model,
                &input(),
                &goal
            ),
            Error::TooFewClasses {
                loss: "dlr",
                needed: 3,
                got: 2
            }
        );
        assert_err!(
            loss_and_grad(&model, &input(), &goal, Loss::Dlr),
            Error::TooFewClasses {
                loss: "dlr",
                needed: 3,
                got: 2
            }
        );
        // Three classes are enough untargeted.
        let model = linear(3);
        for (name, res) in run_each(
            attacks_with(budget(), Loss::Dlr, true),
            &model,
            &input(),
            &goal,
        ) {
            res.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn dlr_needs_four_classes_targeted() {
        let goal = Goal::targeted(&u32s(&[2, 0]));
        let model = linear(3);
        assert_each_err!(
            run_each(
                attacks_with(budget(), Loss::Dlr, true),
                &model,
                &input(),
                &goal
            ),
            Error::TooFewClasses {
                loss: "dlr",
                needed: 4,
                got: 3
            }
        );
        assert_err!(
            loss_and_grad(&model, &input(), &goal, Loss::Dlr),
            Error::TooFewClasses {
                loss: "dlr",
                needed: 4,
                got: 3
            }
        );
        let model = linear(4);
        for (name, res) in run_each(
            attacks_with(budget(), Loss::Dlr, true),
            &model,
            &input(),
            &goal,
        ) {
            res.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn gradient_check_rejects_bad_tolerance() {
        let model = linear(K);
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_err!(
                GradientCheck::new().tolerance(t).run(&model, &input()),
                Error::InvalidParameter {
                    name: "tolerance",
                    ..
                }
            );
        }
    }

    fn normalized(mean: &[f32], std: &[f32]) -> perturb::Result<()> {
        Normalized::new(linear(K), mean, std, &DEV).map(|_| ())
    }

    #[test]
    fn normalized_rejects_mismatched_lengths() {
        assert_err!(
            normalized(&[0.5, 0.5], &[0.25]),
            Error::InvalidParameter { name: "std", .. }
        );
        assert_err!(
            normalized(&[], &[]),
            Error::InvalidParameter { name: "std", .. }
        );
    }

    #[test]
    fn normalized_rejects_bad_std_and_mean() {
        for s in [0.0, -0.2, f32::NAN, f32::INFINITY] {
            assert_err!(
                normalized(&[0.5], &[s]),
                Error::InvalidParameter { name: "std", .. }
            );
        }
        assert_err!(
            normalized(&[0.5], &[0.0]),
            Error::InvalidParameter { name: "std", ref value, .. } if value == "0"
        );
        assert_err!(
            normalized(&[f32::NAN], &[0.5]),
            Error::InvalidParameter { name: "mean", .. }
        );
    }
}

/// Models whose output is not `[N, K]` float logits with `K >= 2`.
mod model_output {
    use super::*;

    /// Assert `ModelOutput { batch, got }` from both attacks, `loss_and_grad` and `GradientCheck`,
    /// all judged on the caller's batch of 2.
    fn assert_model_output(model: &dyn Classifier, got_for_batch: &[usize]) {
        let x = input();
        let goal = Goal::untargeted(&labels());
        assert_each_err!(
            run_each(attacks(), model, &x, &goal),
            Error::ModelOutput { batch: 2, ref got } if got == got_for_batch
        );
        assert_each_err!(
            run_each(attacks_with(budget(), Loss::CrossEntropy, false), model, &x, &goal),
            Error::ModelOutput { batch: 2, ref got } if got == got_for_batch
        );
        assert_err!(
            loss_and_grad(model, &x, &goal, Loss::CrossEntropy),
            Error::ModelOutput { batch: 2, ref got } if got == got_for_batch
        );
        assert_err!(
            GradientCheck::new().run(model, &x),
            Error::ModelOutput { batch: 2, ref got } if got == got_for_batch
        );
    }

    #[test]
    fn rank_1_output() {
        let w = weights(K);
        let model = move |x: &Tensor| x.flatten_from(1)?.matmul(&w)?.flatten_all();
        assert_model_output(&model, &[2 * K]);
    }

    #[test]
    fn rank_3_output() {
        let w = weights(K);
        let model = move |x: &Tensor| x.flatten_from(1)?.matmul(&w)?.unsqueeze(2);
        assert_model_output(&model, &[2, K, 1]);
    }

    #[test]
    fn rank_4_output_of_identity_model() {
        let model = |x: &Tensor| Ok::<_, candle_core::Error>(x.clone());
        assert_model_output(&model, &[2, 1, 2, 2]);
    }

    #[test]
    fn one_row_too_many() {
        let w = weights(K);
        let model = move |x: &Tensor| {
            let l = x.flatten_from(1)?.matmul(&w)?;
            Tensor::cat(&[&l, &l.narrow(0, 0, 1)?], 0)
        };
        assert_model_output(&model, &[3, K]);
    }

    #[test]
    fn single_class() {
        let model = linear(1);
        assert_model_output(&model, &[2, 1]);
    }

    #[test]
    fn integer_logits() {
        let w = weights(K).abs().unwrap();
        let model = move |x: &Tensor| x.flatten_from(1)?.matmul(&w)?.to_dtype(DType::U32);
        assert_model_output(&model, &[2, K]);
        let w = weights(K);
        let model = move |x: &Tensor| x.flatten_from(1)?.matmul(&w)?.to_dtype(DType::I64);
        assert_model_output(&model, &[2, K]);
    }

    #[test]
    fn failing_model_is_a_candle_error() {
        // Weights for 5 features on a 4-feature input: the model's own forward fails.
        let w = Tensor::ones((5, K), DType::F32, &DEV).unwrap();
        let model = move |x: &Tensor| x.flatten_from(1)?.matmul(&w);
        assert_each_err!(run_both_model(&model), Error::Candle(_));
    }

    fn run_both_model(model: &dyn Classifier) -> Vec<(&'static str, perturb::Result<Adversarial>)> {
        run_each(attacks(), model, &input(), &Goal::untargeted(&labels()))
    }
}

/// Models through which no gradient reaches the input.
mod gradient_missing {
    use super::*;

    fn detached() -> impl Fn(&Tensor) -> CResult<Tensor> {
        let w = weights(K);
        move |x: &Tensor| x.flatten_from(1)?.detach().matmul(&w)
    }

    fn constant() -> impl Fn(&Tensor) -> CResult<Tensor> {
        |x: &Tensor| {
            Tensor::new(&[1f32, 0.0, -1.0], x.device())?
                .unsqueeze(0)?
                .repeat((x.dim(0)?, 1))
        }
    }

    /// `round` is piecewise constant: candle does not propagate through it.
    fn rounded() -> impl Fn(&Tensor) -> CResult<Tensor> {
        let w = weights(K);
        move |x: &Tensor| x.affine(4.0, 0.0)?.round()?.flatten_from(1)?.matmul(&w)
    }

    fn assert_missing(model: &dyn Classifier) {
        let x = input();
        let goal = Goal::untargeted(&labels());
        assert_err!(
            loss_and_grad(model, &x, &goal, Loss::CrossEntropy),
            Error::GradientMissing
        );
        assert_err!(
            loss_and_grad(
                model,
                &x,
                &Goal::targeted(&u32s(&[2, 2])),
                Loss::cw(1.0).unwrap()
            ),
            Error::GradientMissing
        );
        assert_each_err!(
            run_each(
                attacks_with(budget(), Loss::CrossEntropy, false),
                model,
                &x,
                &goal
            ),
            Error::GradientMissing
        );
        assert_each_err!(
            run_each(
                attacks_with(budget(), Loss::CrossEntropy, true),
                model,
                &x,
                &goal
            ),
            Error::GradientMissing
        );
        let verdict = GradientCheck::new().run(model, &x).unwrap();
        assert_eq!(verdict, GradVerdict::Missing);
        assert_err!(verdict.into_result(), Error::GradientMissing);
    }

    #[test]
    fn detached_input() {
        assert_missing(&detached());
    }

    #[test]
    fn logits_from_a_fresh_tensor() {
        assert_missing(&constant());
    }

    #[test]
    fn rounded_input() {
        assert_missing(&rounded());
    }

    #[test]
    fn pgd_without_random_start_or_with_restarts() {
        let model = detached();
        let goal = Goal::untargeted(&labels());
        for pgd in [
            Pgd::bim(budget()).check_gradient(false),
            Pgd::new(budget()).restarts(3).check_gradient(false),
            Pgd::new(Budget::l2(0.5).unwrap()).check_gradient(false),
            Pgd::new(Budget::l1(0.5).unwrap()).check_gradient(false),
        ] {
            assert_err!(pgd.run(&model, &input(), &goal), Error::GradientMissing);
        }
    }

    /// A model with a layer whose backward candle does not implement: `conv_transpose1d` fails
    /// in `backward()` with `BackwardNotSupported`.
    fn without_backward() -> impl Fn(&Tensor) -> CResult<Tensor> {
        let kernel = Tensor::arange(0f32, 6.0, &DEV)
            .and_then(|t| t.reshape((2, K, 1)))
            .unwrap();
        move |x: &Tensor| {
            let (n, _, h, w) = x.dims4()?;
            x.reshape((n, h, w))?
                .conv_transpose1d(&kernel, 0, 0, 1, 1, 1)?
                .sum(2)
        }
    }

    /// The self-check reports a layer without backward as a missing gradient.
    #[test]
    fn layer_without_backward_fails_the_self_check() {
        let model = without_backward();
        let x = input();
        let goal = Goal::untargeted(&labels());
        assert_eq!(
            GradientCheck::new().run(&model, &x).unwrap(),
            GradVerdict::Missing
        );
        assert_each_err!(
            run_each(
                attacks_with(budget(), Loss::CrossEntropy, true),
                &model,
                &x,
                &goal
            ),
            Error::GradientMissing
        );
    }

    /// With the self-check off, `loss_and_grad` and the attacks report the same variant as the
    /// self-check does.
    #[test]
    fn layer_without_backward_without_self_check() {
        let model = without_backward();
        let x = input();
        let goal = Goal::untargeted(&labels());
        assert_err!(
            loss_and_grad(&model, &x, &goal, Loss::CrossEntropy),
            Error::GradientMissing
        );
        assert_each_err!(
            run_each(
                attacks_with(budget(), Loss::CrossEntropy, false),
                &model,
                &x,
                &goal
            ),
            Error::GradientMissing
        );
    }
}

/// Models whose autograd gradient disagrees with finite differences.
mod gradient_mismatch {
    use super::*;

    /// `[2, 1, 4, 4]` inputs whose 2×2 windows have unique maxima well apart from the rest.
    fn pool_input() -> Tensor {
        let data: Vec<f32> = (0..32)
            .map(|i| ((i % 16) as f32) / 20.0 + 0.01 * (i / 16) as f32)
            .collect();
        Tensor::from_vec(data, (2, 1, 4, 4), &DEV).unwrap()
    }

    /// candle 0.11.1's `max_pool2d` backward scales the gradient by 1/4 for 2×2 pools.
    fn max_pooled() -> impl Fn(&Tensor) -> CResult<Tensor> {
        let w = weights(K);
        move |x: &Tensor| x.max_pool2d(2)?.flatten_from(1)?.matmul(&w)
    }

    fn is_quarter(autograd: f64, finite_difference: f64) -> bool {
        (autograd / finite_difference - 0.25).abs() < 0.05
    }

    #[test]
    fn max_pool_gradient_is_rejected_by_pgd() {
        let model = max_pooled();
        let res = Pgd::new(budget()).check_gradient(true).run(
            &model,
            &pool_input(),
            &Goal::untargeted(&labels()),
        );
        assert_err!(
            res,
            Error::GradientMismatch { autograd, finite_difference, relative_error }
                if relative_error > 0.5 && is_quarter(autograd, finite_difference)
        );
    }

    #[test]
    fn max_pool_gradient_is_rejected_by_fgsm() {
        let model = max_pooled();
        let res = Fgsm::new(Budget::l2(0.5).unwrap()).run(
            &model,
            &pool_input(),
            &Goal::targeted(&u32s(&[1, 2])),
        );
        assert_err!(res, Error::GradientMismatch { relative_error, .. } if relative_error > 0.5);
    }

    #[test]
    fn gradient_check_verdict_is_mismatch() {
        let model = max_pooled();
        let verdict = GradientCheck::new().run(&model, &pool_input()).unwrap();
        assert!(
            matches!(verdict, GradVerdict::Mismatch { autograd, finite_difference, .. }
                if is_quarter(autograd, finite_difference)),
            "{verdict:?}"
        );
        assert_err!(verdict.into_result(), Error::GradientMismatch { .. });
    }

    #[test]
    fn disabled_check_lets_the_attack_run() {
        let model = max_pooled();
        Pgd::new(budget())
            .steps(2)
            .check_gradient(false)
            .run(&model, &pool_input(), &Goal::untargeted(&labels()))
            .unwrap();
    }
}

/// Display strings: lowercase first letter, no final period, and the offending value shown.
mod messages {
    use super::*;

    fn errors() -> Vec<Error> {
        let model = linear(K);
        let goal = Goal::untargeted(&labels());
        let run = |x: &Tensor, goal: &Goal| Fgsm::new(budget()).run(&model, x, goal).unwrap_err();
        vec![
            Budget::linf(-1.0).unwrap_err(),
            budget().with_bounds(1.0, 0.0).unwrap_err(),
            "x".parse::<Norm>().unwrap_err(),
            Loss::cw(f32::NAN).unwrap_err(),
            run(&input().squeeze(1).unwrap(), &goal),
            run(&input().to_dtype(DType::F64).unwrap(), &goal),
            run(&input_with(f32::NAN), &goal),
            run(&input_with(1.5), &goal),
            run(&input(), &Goal::untargeted(&u32s(&[0, 9]))),
            run(&input(), &Goal::targeted_with_labels(&labels(), &labels())),
            Fgsm::new(budget())
                .run(&linear(1), &input(), &goal)
                .unwrap_err(),
            Fgsm::new(budget())
                .loss(Loss::Dlr)
                .run(&linear(2), &input(), &goal)
                .unwrap_err(),
            GradVerdict::Missing.into_result().unwrap_err(),
            GradVerdict::Mismatch {
                autograd: 0.25,
                finite_difference: 1.0,
                relative_error: 0.75,
            }
            .into_result()
            .unwrap_err(),
        ]
    }

    #[test]
    fn lowercase_first_and_no_trailing_period() {
        for e in errors() {
            let msg = e.to_string();
            let first = msg.chars().next().expect("empty message");
            assert!(first.is_lowercase(), "{msg:?} ({e:?})");
            assert!(!msg.ends_with('.'), "{msg:?}");
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }

    #[test]
    fn messages_name_the_offending_value() {
        let msgs: Vec<String> = errors().iter().map(ToString::to_string).collect();
        assert!(msgs[0].contains("-1"), "{}", msgs[0]);
        assert!(
            msgs[1].contains('1') && msgs[1].contains('0'),
            "{}",
            msgs[1]
        );
        assert!(
            msgs[2].contains("norm") && msgs[2].contains('x'),
            "{}",
            msgs[2]
        );
        assert!(
            msgs[3].contains("kappa") && msgs[3].contains("NaN"),
            "{}",
            msgs[3]
        );
        assert!(msgs[4].starts_with("input"), "{}", msgs[4]);
        assert!(msgs[5].contains("F64"), "{}", msgs[5]);
        assert!(msgs[6].starts_with("input"), "{}", msgs[6]);
        assert!(msgs[7].contains("1.5"), "{}", msgs[7]);
        assert!(msgs[8].contains("labels[1] = 9"), "{}", msgs[8]);
        assert!(msgs[11].contains("dlr"), "{}", msgs[11]);
    }

    #[test]
    fn errors_are_std_errors_and_candle_errors_convert() {
        fn takes_std_error(_: &dyn std::error::Error) {}
        for e in errors() {
            takes_std_error(&e);
        }
        let candle = Tensor::zeros(2, DType::F32, &DEV)
            .unwrap()
            .reshape(3)
            .unwrap_err();
        let e: Error = candle.into();
        assert!(matches!(e, Error::Candle(_)));
        assert!(e.to_string().starts_with("candle: "), "{e}");
    }
}

/// Bad user input returns `Err` instead of unwinding.
mod no_panics {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn returns_err<T: std::fmt::Debug>(f: impl FnOnce() -> perturb::Result<T>) {
        let res = catch_unwind(AssertUnwindSafe(f));
        match res {
            Ok(r) => assert!(r.is_err(), "expected an error, got {r:?}"),
            Err(_) => panic!("panicked on bad input"),
        }
    }

    #[test]
    fn bad_calls_return_err() {
        let model = linear(K);
        let goal = Goal::untargeted(&labels());
        let pgd = Pgd::new(budget()).steps(2);
        returns_err(|| {
            pgd.run(
                &model,
                &Tensor::zeros((0, 1, 2, 2), DType::F32, &DEV)?,
                &goal,
            )
        });
        returns_err(|| pgd.run(&model, &Tensor::new(1f32, &DEV)?, &goal));
        returns_err(|| {
            pgd.run(
                &model,
                &input(),
                &Goal::untargeted(&Tensor::new(&[0u32; 0], &DEV)?),
            )
        });
        returns_err(|| {
            pgd.run(
                &model,
                &input(),
                &Goal::untargeted(&i64s(&[i64::MIN, i64::MAX])),
            )
        });
        returns_err(|| pgd.run(&linear(1), &input(), &goal));
        returns_err(|| pgd.run(&|x: &Tensor| x.sum_all(), &input(), &goal));
        returns_err(|| Fgsm::new(budget()).run(&model, &input_with(f32::NAN), &goal));
        returns_err(|| {
            loss_and_grad(
                &model,
                &Tensor::zeros((0, 1, 2, 2), DType::F32, &DEV)?,
                &goal,
                Loss::Dlr,
            )
        });
        returns_err(|| {
            GradientCheck::new().run(&model, &Tensor::zeros((0, 1, 2, 2), DType::F32, &DEV)?)
        });
        returns_err(|| budget().project(&input().flatten_all()?, &input()));
        returns_err(|| budget().project(&Tensor::new(0f32, &DEV)?, &Tensor::new(0f32, &DEV)?));
        returns_err(|| budget().distances(&input().flatten_all()?, &input()));
        returns_err(|| budget().ascent_direction(&Tensor::new(0f32, &DEV)?, &input(), 0.5));
        returns_err(|| {
            Budget::l1(1.0)?.ascent_direction(&input(), &Tensor::zeros(3, DType::F32, &DEV)?, 0.5)
        });
    }
}

/// A model whose logits are a non-contiguous view (here a narrowed tensor) is attacked like any
/// other: every loss works on it.
#[test]
fn non_contiguous_logits_are_accepted() {
    use perturb::{Attack, Budget, Goal, Loss, Pgd};
    let dev = candle_core::Device::Cpu;
    let model = |x: &candle_core::Tensor| x.flatten_from(1)?.narrow(1, 0, 4);
    let x = candle_core::Tensor::full(0.4f32, (2, 1, 3, 3), &dev).unwrap();
    let y = candle_core::Tensor::new(&[1u32, 2], &dev).unwrap();
    for loss in [Loss::CrossEntropy, Loss::cw(0.0).unwrap(), Loss::Dlr] {
        let pgd = Pgd::new(Budget::linf(0.1).unwrap()).steps(3).loss(loss);
        let adv = pgd.run(&model, &x, &Goal::untargeted(&y)).unwrap();
        assert_eq!(adv.success.len(), 2);
    }
}
