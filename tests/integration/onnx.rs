//! `perturb::onnx`: the shipped MNIST models exported to ONNX (by PyTorch's exporter and by
//! onnx.helper, `scripts/export_onnx.py`) give the native models' logits and gradients, pass the
//! gradient check, and are attacked exactly as the native models are; bad graphs and truncated
//! files are typed errors that say why.

use std::path::{Path, PathBuf};

use crate::cli::{perturb, text};
use crate::common::{max_abs, test_digits};
use candle_core::{Device, Module};
use perturb::onnx::OnnxModel;
use perturb::{
    loss_and_grad, zoo, Attack, Budget, Classifier, Error, Goal, GradientCheck, Loss, Pgd,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

/// `got` equals `want` to `rel` of `want`'s largest entry.
fn assert_close(got: &candle_core::Tensor, want: &candle_core::Tensor, rel: f32, what: &str) {
    let (err, scale) = (max_abs(&(got - want).unwrap()), max_abs(want));
    assert!(err <= rel * scale, "{what} differ by {err} of {scale}");
}

/// The input gradient of the cross-entropy.
fn ce_gradient(
    model: &dyn Classifier,
    x: &candle_core::Tensor,
    goal: &Goal,
) -> candle_core::Tensor {
    loss_and_grad(model, x, goal, Loss::CrossEntropy)
        .unwrap()
        .grad
}

/// The gradient self-check passes on the first sample of `x`.
fn first_sample_passes_the_gradient_check(model: &dyn Classifier, x: &candle_core::Tensor) {
    let verdict = GradientCheck::new()
        .run(model, &x.narrow(0, 0, 1).unwrap())
        .unwrap();
    assert!(verdict.passed(), "{verdict:?}");
}

/// The binary's exit code and its stdout and stderr together.
fn exit_and_output(args: &[&str]) -> (Option<i32>, String) {
    let out = perturb(args);
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

/// The fixtures are the files `scripts/export_onnx.py` wrote.
#[test]
fn fixtures_match_their_checksums() {
    let sums = std::fs::read_to_string(fixture("SHA256SUMS")).unwrap();
    let mut seen = 0;
    for line in sums.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(fixture(name)).unwrap();
        assert_eq!(zoo::sha256_hex(&bytes), hash, "{name}");
        seen += 1;
    }
    assert_eq!(seen, 11);
}

/// Logits to 1e-5 and input gradients to 1e-4 (relative to their largest entry) of the native
/// model, for the PyTorch-exported CNN and the hand-built linear model, and the gradient check.
#[test]
fn exported_models_match_the_native_models() {
    let (x, y) = test_digits(64);
    let goal = Goal::untargeted(&y);
    for (file, native) in [
        ("mnist-cnn.onnx", "mnist-cnn"),
        ("mnist-linear-helper.onnx", "mnist-linear"),
    ] {
        let onnx = OnnxModel::load(fixture(file), &Device::Cpu).unwrap();
        let native = zoo::load(native, &Device::Cpu).unwrap();
        assert_eq!(onnx.input_shape(), [Some(1), Some(28), Some(28)], "{file}");
        let (a, b) = (onnx.logits(&x).unwrap(), native.forward(&x).unwrap());
        let err = max_abs(&(&a - &b).unwrap());
        assert!(
            err <= 1e-5 * max_abs(&b).max(1.0),
            "{file}: logits differ by {err}"
        );
        let (ga, gb) = (
            ce_gradient(&onnx, &x, &goal),
            ce_gradient(&native, &x, &goal),
        );
        let (err, scale) = (max_abs(&(&ga - &gb).unwrap()), max_abs(&gb));
        assert!(
            scale > 0.0 && err <= 1e-4 * scale,
            "{file}: gradients differ by {err} of {scale}"
        );
        assert!(
            GradientCheck::new()
                .run(&onnx, &x.narrow(0, 0, 8).unwrap())
                .unwrap()
                .passed(),
            "{file}"
        );
    }
}

/// EfficientNet-Lite0 as `torch.onnx.export` writes it (TensorFlow "same" paddings as Pad nodes
/// fed by shape arithmetic, depthwise convolutions, ReLU6 as Clip, batch norm folded by the
/// exporter, the batch size read with Shape for the flatten) on the five sample photos: the native
/// model's logits to 1e-4; input gradients to 1e-4 of their largest entry where no ReLU6 changes
/// side (the cat), and to a few percent (relative L2) elsewhere; the gradient check.
///
/// Why not 1e-4 everywhere: the exporter folds batch norm into the convolutions in its own float
/// order, so pre-activations differ from the native model's by about 1e-6. Of the network's
/// millions of ReLU6 inputs a few lie that close to 0 or 6 and take the other side, and each
/// such unit adds or drops its whole contribution to the input gradient in its receptive field
/// (the native model's own two kernel paths differ the same way, 0.27 % at the coffee photo; see
/// its card). The logits do not see it: they agree to 1e-6.
#[test]
fn exported_efficientnet_matches_the_native_model() {
    let dev = Device::Cpu;
    let onnx = OnnxModel::load(fixture("efficientnet-lite0.onnx"), &dev).unwrap();
    assert_eq!(onnx.input_shape(), [Some(3), Some(224), Some(224)]);
    for (op, n) in [("Conv", 49), ("Pad", 17), ("Clip", 33), ("Shape", 1)] {
        assert_eq!(onnx.op_counts().get(op), Some(&n), "{op}");
    }
    let native = zoo::load("efficientnet-lite0", &dev).unwrap();
    // the cat first: the photo whose ReLU6 inputs all keep their side
    let photos = [
        ("chelsea.png", 282u32),
        ("coffee.png", 967),
        ("rocket.png", 657),
        ("motorcycle_left.png", 665),
        ("astronaut.png", 518),
    ];
    let crops: Vec<_> = photos
        .iter()
        .map(|(p, _)| {
            let path = perturb::data::sample_photo(p);
            perturb::data::load_photo(path, 224, perturb::data::Fit::Crop, &dev).unwrap()
        })
        .collect();
    let x = candle_core::Tensor::stack(&crops, 0).unwrap();
    let (a, b) = (onnx.logits(&x).unwrap(), native.forward(&x).unwrap());
    let err = max_abs(&(&a - &b).unwrap());
    assert!(err <= 1e-4 * max_abs(&b).max(1.0), "logits differ by {err}");
    let labels: Vec<u32> = photos.iter().map(|p| p.1).collect();
    let goal = Goal::untargeted(&candle_core::Tensor::new(labels.as_slice(), &dev).unwrap());
    let (ga, gb) = (
        ce_gradient(&onnx, &x, &goal),
        ce_gradient(&native, &x, &goal),
    );
    let norm = |t: &candle_core::Tensor| {
        let sq = t.sqr().unwrap().sum_all().unwrap();
        sq.to_scalar::<f32>().unwrap().sqrt()
    };
    for (i, (photo, _)) in photos.iter().enumerate() {
        let (a, b) = (ga.get(i).unwrap(), gb.get(i).unwrap());
        let d = (&a - &b).unwrap();
        let (err, scale, rel_l2) = (max_abs(&d), max_abs(&b), norm(&d) / norm(&b));
        assert!(scale > 0.0, "{photo}");
        match i {
            0 => assert!(
                err <= 1e-4 * scale,
                "{photo}: gradients differ by {err} of {scale}"
            ),
            _ => assert!(
                rel_l2 <= 0.05,
                "{photo}: gradients differ by {rel_l2} (relative L2)"
            ),
        }
    }
    first_sample_passes_the_gradient_check(&onnx, &x);
}

/// A graph from another exporter, shipped in a PyPI package: the `onnx` package's SqueezeNet test
/// model, written by onnx-caffe2 at opset 9 (initializers listed as graph inputs, Dropout with a
/// ratio, a Softmax over `[1, 1000, 1, 1]` scores with the old flattening semantics), with seeded
/// random weights. The onnx package's reference evaluator's scores and opset 9's probabilities
/// to 1e-5, the final Softmax skipped so that attacks read scores, the batch of 1 the graph
/// declares no limit, and the gradient check.
#[test]
fn a_caffe2_squeezenet_matches_the_onnx_reference_evaluator() {
    let dev = Device::Cpu;
    let model = OnnxModel::load(fixture("squeezenet-caffe2.onnx"), &dev).unwrap();
    assert!(model.ends_in_softmax());
    assert_eq!(model.input_shape(), [Some(3), Some(224), Some(224)]);
    let want =
        candle_core::safetensors::load(fixture("squeezenet-caffe2-reference.safetensors"), &dev)
            .unwrap();
    let x = candle_core::Tensor::cat(&[&want["x0"], &want["x1"]], 0).unwrap();
    let probs = candle_core::Tensor::cat(&[&want["probs0"], &want["probs1"]], 0).unwrap();
    let reference = candle_core::Tensor::cat(&[&want["scores0"], &want["scores1"]], 0).unwrap();
    let scores = model.logits(&x).unwrap();
    assert_eq!(scores.dims(), [2, 1000]);
    assert_close(&scores, &reference, 1e-5, "scores");
    let ours = candle_nn::ops::softmax(&scores, 1).unwrap();
    assert_close(&ours, &probs, 1e-5, "probabilities");
    first_sample_passes_the_gradient_check(&model, &x);
}

/// A random CNN with the operators beyond SmallCNN's (strided, padded and grouped convolutions,
/// HardSwish, LeakyReLU, Sigmoid, padded max- and average-pooling without the padding in the
/// divisor, concatenation, a squeeze-and-excitation product, mean reduction): PyTorch's logits
/// and input gradient to 1e-5 and 1e-4 of their largest entry, and the gradient check.
#[test]
fn more_operators_match_pytorch() {
    let dev = Device::Cpu;
    let model = OnnxModel::load(fixture("ops-zoo.onnx"), &dev).unwrap();
    for op in [
        "AveragePool",
        "HardSwish",
        "LeakyRelu",
        "MaxPool",
        "ReduceMean",
        "Sigmoid",
        "Concat",
    ] {
        assert!(model.op_counts().contains_key(op), "{op}");
    }
    let want =
        candle_core::safetensors::load(fixture("ops-zoo-reference.safetensors"), &dev).unwrap();
    let (x, r) = (&want["x"], &want["r"]);
    let var = candle_core::Var::from_tensor(x).unwrap();
    let logits = model.logits(var.as_tensor()).unwrap();
    let err = max_abs(&(&logits - &want["logits"]).unwrap());
    assert!(
        err <= 1e-5 * max_abs(&want["logits"]).max(1.0),
        "logits differ by {err}"
    );
    let grads = (&logits * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = grads.get(var.as_tensor()).unwrap();
    let (err, scale) = (
        max_abs(&(grad - &want["grad"]).unwrap()),
        max_abs(&want["grad"]),
    );
    assert!(
        scale > 0.0 && err <= 1e-4 * scale,
        "gradients differ by {err} of {scale}"
    );
    assert!(GradientCheck::new().run(&model, x).unwrap().passed());
}

/// PGD on the ONNX CNN fools exactly the digits it fools on the native CNN, on 1,000 digits.
#[test]
fn pgd_on_the_onnx_cnn_equals_pgd_on_the_native_cnn() {
    let (x, y) = test_digits(1000);
    let goal = Goal::untargeted(&y);
    let onnx = OnnxModel::load(fixture("mnist-cnn.onnx"), &Device::Cpu).unwrap();
    let native = zoo::load("mnist-cnn", &Device::Cpu).unwrap();
    let pgd = Pgd::new(Budget::linf(0.1).unwrap())
        .steps(10)
        .check_gradient(false);
    let (a, b) = (
        pgd.run(&onnx, &x, &goal).unwrap(),
        pgd.run(&native, &x, &goal).unwrap(),
    );
    assert_eq!(a.success, b.success);
    assert!(b.success.iter().filter(|s| **s).count() > 10);
}

/// Each bad graph is refused with the reason; no truncation of a good file panics.
#[test]
fn bad_graphs_and_truncated_files_are_typed_errors() {
    let dev = Device::Cpu;
    match OnnxModel::load(fixture("bad-unsupported.onnx"), &dev) {
        Err(Error::OnnxUnsupported { ops, .. }) => assert_eq!(ops, ["Erf"]),
        other => panic!("{other:?}"),
    }
    for (file, words) in [
        ("bad-two-inputs.onnx", "2 inputs (image, mask)"),
        ("bad-uint8-input.onnx", "uint8"),
    ] {
        match OnnxModel::load(fixture(file), &dev) {
            Err(e @ Error::Onnx { .. }) => assert!(e.to_string().contains(words), "{file}: {e}"),
            other => panic!("{file}: {other:?}"),
        }
    }
    let bytes = std::fs::read(fixture("mnist-cnn.onnx")).unwrap();
    for cut in [0, 1, 10, 100, 1000, bytes.len() / 2, bytes.len() - 1] {
        let got = OnnxModel::from_bytes(&bytes[..cut], Path::new("cut.onnx"), &dev);
        assert!(
            matches!(got, Err(Error::Onnx { .. })),
            "cut at {cut}: {got:?}"
        );
    }
    assert!(matches!(
        OnnxModel::load(fixture("absent.onnx"), &dev),
        Err(Error::Io { .. })
    ));
}

/// `perturb inspect`: exit 0 with the operators, classes, gradient check and determinism of
/// a model gradient attacks can trust (ONNX and shipped); exit 1 naming the unsupported and the
/// gradient-free operators of one they cannot; exit 2 for a file that is not a model.
#[test]
fn inspect_says_whether_gradient_attacks_can_be_trusted() {
    let inspect = |model: &str| exit_and_output(&["inspect", "--model", model]);
    let cnn = fixture("mnist-cnn.onnx");
    let (code, text) = inspect(cnn.to_str().unwrap());
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "operators: Conv 4, Flatten 1, Gemm 3, MaxPool 2, Relu 6",
        "classes: 10",
        "deterministic: yes",
        "gradient check: passed",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let (code, text) = inspect("mnist-cnn");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("312202 parameters"), "{text}");
    let quantized = fixture("quantized-input.onnx");
    let (code, text) = inspect(quantized.to_str().unwrap());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("unsupported: Round"), "{text}");
    assert!(
        text.contains("without gradient (masking risk): Round"),
        "{text}"
    );
    let scan = perturb::onnx::scan(&quantized).unwrap();
    assert_eq!(scan.zero_gradient, ["Round"]);
    let not_onnx = fixture("SHA256SUMS");
    let bogus = std::env::temp_dir().join(format!("perturb-inspect-{}.onnx", std::process::id()));
    std::fs::copy(&not_onnx, &bogus).unwrap();
    let (code, text) = inspect(bogus.to_str().unwrap());
    std::fs::remove_file(&bogus).unwrap();
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
}

/// `perturb gate --model FILE.onnx` passes or fails exactly as the native model, with the same
/// robust accuracy; bad graphs and a truncated file are exit 2 with one line saying why.
#[test]
fn the_gate_takes_onnx_files() {
    let run = |model: &str, n: &str| {
        exit_and_output(&[
            "gate",
            "--model",
            model,
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--min-robust-accuracy",
            "0.5",
            "--n",
            n,
        ])
    };
    let cnn = fixture("mnist-cnn.onnx");
    let (onnx_code, onnx_text) = run(cnn.to_str().unwrap(), "200");
    let (native_code, native_text) = run("mnist-cnn", "200");
    assert_eq!(onnx_code, Some(0), "{onnx_text}");
    assert_eq!(onnx_code, native_code, "{onnx_text}\n{native_text}");
    let verdict = |t: &str| t.split(" (").next().unwrap_or_default().to_string();
    assert_eq!(verdict(&onnx_text), verdict(&native_text));
    let bytes = std::fs::read(&cnn).unwrap();
    let cut = std::env::temp_dir().join(format!("perturb-cut-{}.onnx", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    for (file, words) in [
        (
            fixture("bad-unsupported.onnx"),
            "unsupported ONNX operators: Erf",
        ),
        (fixture("bad-two-inputs.onnx"), "2 inputs"),
        (fixture("bad-uint8-input.onnx"), "uint8"),
        (cut.clone(), "truncated"),
    ] {
        let (code, text) = run(file.to_str().unwrap(), "20");
        assert_eq!(code, Some(2), "{text}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
        assert!(text.contains(words), "{words}: {text}");
    }
    std::fs::remove_file(&cut).unwrap();
}

/// `--mean` and `--std` put a normalisation the graph lacks in front of it: the clean accuracy of
/// the ONNX CNN behind `(x − 1) / 0.5` is that of the native CNN wrapped in
/// `perturb::Normalized` with the same numbers, and the report names the normalisation. Half a
/// pair, a wrong channel count, a zero std and a zoo model each exit 2 with one line.
#[test]
fn mean_and_std_normalise_an_onnx_models_input() {
    let cnn = fixture("mnist-cnn.onnx");
    let json = std::env::temp_dir().join(format!("perturb-meanstd-{}.json", std::process::id()));
    let (code, text) = exit_and_output(&[
        "attack",
        "--model",
        cnn.to_str().unwrap(),
        "--mean",
        "1",
        "--std",
        "0.5",
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--n",
        "200",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    let native = zoo::load("mnist-cnn", &Device::Cpu).unwrap();
    let wrapped = perturb::Normalized::new(native, &[1.0], &[0.5], &Device::Cpu).unwrap();
    let (x, y) = test_digits(200);
    let predicted = wrapped.logits(&x).unwrap().argmax(1).unwrap();
    let correct = predicted
        .eq(&y)
        .unwrap()
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    assert_eq!(report["clean_correct"], u64::from(correct), "{report}");
    // the normalisation changes the model: 198 of these digits are read right without it
    assert!(correct < 190, "{correct}");
    assert!(report["model"]
        .as_str()
        .unwrap()
        .ends_with("--mean 1 --std 0.5"));
    let cnn = cnn.to_str().unwrap();
    for (args, words) in [
        (vec!["--model", cnn, "--mean", "0.5"], "--std"),
        (
            vec!["--model", cnn, "--mean", "0.5,0.5", "--std", "1,1"],
            "one value per input channel",
        ),
        (
            vec!["--model", cnn, "--mean", "0.5", "--std", "0"],
            "positive",
        ),
        (
            vec!["--model", "mnist-cnn", "--mean", "0.5", "--std", "1"],
            "ONNX",
        ),
    ] {
        let mut all = vec!["attack", "--attack", "fgsm", "--eps", "0.1", "--n", "10"];
        all.extend(args);
        let (code, text) = exit_and_output(&all);
        assert_eq!(code, Some(2), "{text}");
        assert!(text.contains(words), "{words}: {text}");
    }
}

/// `perturb transfer --targets` takes ONNX files: each exported model's column equals its native
/// model's, cell by cell.
#[test]
fn transfer_targets_take_onnx_files() {
    let (cnn, linear) = (
        fixture("mnist-cnn.onnx"),
        fixture("mnist-linear-helper.onnx"),
    );
    let targets = format!(
        "mnist-cnn,{},mnist-linear,{}",
        cnn.display(),
        linear.display()
    );
    let out = perturb(&[
        "transfer",
        "--source",
        "mnist-cnn-fgsm-rs",
        "--targets",
        &targets,
        "--eps",
        "0.2",
        "--n",
        "40",
        "--attacks",
        "fgsm,pgd",
    ]);
    let text = text(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("fgsm") || l.starts_with("pgd"))
        .map(|l| l.split_whitespace().filter(|c| c.ends_with('%')).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        // the source's own column first
        assert_eq!(row.len(), 5, "{text}");
        assert_eq!((row[1], row[3]), (row[2], row[4]), "{text}");
    }
}
