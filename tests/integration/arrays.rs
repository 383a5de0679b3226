//! `perturb::arrays`: exact round trips between tensors and `ndarray` arrays, attacks on arrays
//! equal to attacks on tensors, and `FnClassifier`, a model that is only a function.

use crate::common::{bits, test_digits};
use candle_core::{Device, Module, Tensor};
use ndarray::{Array2, ArrayView4};
use perturb::arrays::{self, FnClassifier, FnLogits};
use perturb::attack::{Apgd, Square};
use perturb::{zoo, Attack, Budget, Error, Fgsm, Goal, Pgd};

/// Tensor → array → tensor keeps every bit, special values included, and a transposed view
/// converts in its logical order.
#[test]
fn round_trips_are_bit_exact() {
    let special = [
        0.0f32,
        -0.0,
        f32::MIN_POSITIVE / 2.0,
        1.0,
        f32::MAX,
        f32::NAN,
        -f32::INFINITY,
    ];
    let values: Vec<f32> = (0..2 * 3 * 4 * 5)
        .map(|i| match i % 9 {
            k if k < special.len() => special[k],
            _ => (i as f32 * 0.37).sin(),
        })
        .collect();
    let t = Tensor::from_vec(values, (2, 3, 4, 5), &Device::Cpu).unwrap();
    let a = arrays::to_array4(&t).unwrap();
    assert_eq!(
        bits(&arrays::to_tensor(a.view(), &Device::Cpu).unwrap()),
        bits(&t)
    );
    let logits = t.flatten_from(1).unwrap();
    let l = arrays::to_array2(&logits).unwrap();
    assert_eq!(
        bits(&arrays::logits_to_tensor(l.view(), &Device::Cpu).unwrap()),
        bits(&logits)
    );
    let labels = Tensor::new(&[0u32, 9, u32::MAX], &Device::Cpu).unwrap();
    let y = arrays::to_labels(&labels).unwrap();
    let back = arrays::labels_to_tensor(y.view(), &Device::Cpu).unwrap();
    assert_eq!(back.to_vec1::<u32>().unwrap(), [0, 9, u32::MAX]);
    // a non-contiguous view (H and W swapped) reads as its own shape
    let swapped = a.view().permuted_axes([0, 1, 3, 2]);
    let st = arrays::to_tensor(swapped, &Device::Cpu).unwrap();
    assert_eq!(bits(&st), bits(&t.transpose(2, 3).unwrap()));
    // shapes that are not a batch or logits are typed errors
    assert!(matches!(
        arrays::to_array4(&logits),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        arrays::to_array2(&t),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        arrays::to_labels(&logits),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// PGD with a random start and APGD on arrays give the tensors' results bit for bit.
#[test]
fn attacks_on_arrays_equal_attacks_on_tensors() {
    let model = zoo::load("mnist-cnn", &Device::Cpu).unwrap();
    let (x, y) = test_digits(24);
    let (xa, ya) = (
        arrays::to_array4(&x).unwrap(),
        arrays::to_labels(&y).unwrap(),
    );
    let budget = Budget::linf(0.2).unwrap();
    let attacks: [Box<dyn Attack>; 2] = [
        Box::new(Pgd::new(budget).steps(10).random_start(true).seed(4)),
        Box::new(Apgd::new(budget).steps(10)),
    ];
    for attack in attacks {
        let on_arrays = arrays::run(attack.as_ref(), &model, xa.view(), ya.view()).unwrap();
        let on_tensors = attack.run(&model, &x, &Goal::untargeted(&y)).unwrap();
        assert_eq!(
            bits(&arrays::to_tensor(on_arrays.x_adv.view(), &Device::Cpu).unwrap()),
            bits(&on_tensors.x_adv)
        );
        assert_eq!(on_arrays.outcome.success, on_tensors.success);
        assert_eq!(on_arrays.outcome.predictions, on_tensors.predictions);
        assert!(
            on_tensors.success.iter().any(|s| *s),
            "{}: the attack must do something",
            attack.name()
        );
    }
}

/// The native CNN behind a function of arrays.
fn as_function(native: zoo::ZooModel) -> FnClassifier<impl Fn(ArrayView4<'_, f32>) -> FnLogits> {
    FnClassifier::new(move |x: ArrayView4<'_, f32>| {
        let logits = native.forward(&arrays::to_tensor(x, &Device::Cpu)?)?;
        Ok(arrays::to_array2(&logits)?)
    })
}

/// Gradient attacks refuse a `FnClassifier` with the typed error; Square attacks it through its
/// outputs and fools as many digits as on the candle model at the same query budget (the logits
/// are the same bits, so the same digits).
#[test]
fn function_models_take_black_box_attacks_only() {
    let native = zoo::load("mnist-cnn", &Device::Cpu).unwrap();
    let model = as_function(native.clone());
    let (x, y) = test_digits(30);
    let goal = Goal::untargeted(&y);
    let budget = Budget::linf(0.3).unwrap();
    let gradient_attacks: [Box<dyn Attack>; 3] = [
        Box::new(Pgd::new(budget)),
        Box::new(Fgsm::new(budget)),
        Box::new(Apgd::new(budget)),
    ];
    for attack in gradient_attacks {
        let got = attack.run(&model, &x, &goal);
        assert!(
            matches!(got, Err(Error::NotDifferentiable)),
            "{}: {got:?}",
            attack.name()
        );
    }
    let message = Error::NotDifferentiable.to_string();
    assert!(
        message.contains("square") && message.contains("transfer"),
        "{message}"
    );
    let square = Square::new(budget).queries(300).seed(1);
    let on_function = square.run(&model, &x, &goal).unwrap();
    let on_native = square.run(&native, &x, &goal).unwrap();
    let rate = |a: &perturb::Adversarial| a.success_rate();
    assert!(
        rate(&on_native) > 0.3,
        "Square must fool some digits: {}",
        rate(&on_native)
    );
    assert!(
        (rate(&on_function) - rate(&on_native)).abs() <= 0.02,
        "{} vs {}",
        rate(&on_function),
        rate(&on_native)
    );
    assert_eq!(on_function.forward_evals, on_native.forward_evals);
}

/// A function that returns the wrong number of rows, or fails, gives an error, not a panic or
/// a silent answer.
#[test]
fn misbehaving_functions_are_errors() {
    let (x, y) = test_digits(3);
    let goal = Goal::untargeted(&y);
    let square = Square::new(Budget::linf(0.1).unwrap()).queries(5);
    let short =
        FnClassifier::new(|_: ArrayView4<'_, f32>| -> FnLogits { Ok(Array2::zeros((1, 10))) });
    let err = square.run(&short, &x, &goal).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 rows of logits for a batch of 3"),
        "{err}"
    );
    let failing = FnClassifier::new(|_: ArrayView4<'_, f32>| -> FnLogits {
        Err("endpoint unreachable".into())
    });
    let err = square.run(&failing, &x, &goal).unwrap_err();
    assert!(err.to_string().contains("endpoint unreachable"), "{err}");
}
