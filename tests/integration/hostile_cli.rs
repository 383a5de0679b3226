//! The command line under hostile conditions: a batch that cannot fit in memory is refused up
//! front with the figure; a model whose logits overflow is an error naming the data set's samples
//! (never counted as fooled or robust); weights holding NaN are a corrupted file; an empty
//! selection is a usage error. Each is exit code 2 and one line on stderr.

use std::collections::HashMap;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use perturb::data::Mnist;
use perturb::zoo;

use crate::cli::{perturb, text, tmp};

fn perturb_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perturb"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the perturb binary")
}

/// Exit code 2 and one line on stderr that contains every needle.
fn one_line_error(out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
    stderr
}

#[test]
fn a_batch_too_big_for_memory_is_refused_with_the_figure() {
    let args = [
        "attack",
        "--model",
        "mnist-cnn",
        "--eps",
        "0.1",
        "--n",
        "10000",
        "--batch-size",
        "10000",
        "--quiet",
    ];
    let out = perturb_with_env(&args, &[("PERTURB_MEMORY_LIMIT", "1GiB")]);
    // 4 copies of 10,000 digits (125 MB) and 10,000 samples of the CNN's working set
    let need = zoo::Arch::SmallCnn.memory_plan(10_000, 10_000).needed();
    let figure = perturb::eval::human_bytes(need);
    one_line_error(
        &out,
        &[
            "--batch-size",
            "10000 samples in batches of 10000",
            &figure,
            "1.0 GiB",
        ],
    );
    // the same run in batches that fit goes through the plan
    let plan = zoo::Arch::SmallCnn.memory_plan(10_000, 250);
    assert!(plan.check(1 << 30).is_ok(), "{}", plan.needed());
    let bad = perturb_with_env(&args, &[("PERTURB_MEMORY_LIMIT", "plenty")]);
    one_line_error(&bad, &["PERTURB_MEMORY_LIMIT", "plenty"]);
}

/// mnist-linear with two central pixels weighted `f32::MAX` toward class 0: a digit whose two
/// pixels sum above 1 overflows that logit to +inf in f32; below 1 its logits stay finite.
/// Pixels are multiples of 1/255, so no sum lies between 254/255 and 256/255 but 1 itself, and
/// the pair is chosen so that no digit sums to exactly 1.
#[test]
fn overflowing_logits_name_the_samples_of_the_data_set() {
    let dev = Device::Cpu;
    let (images, _) = Mnist::load_test_default(&dev).unwrap();
    let levels: Vec<Vec<u32>> = images
        .narrow(0, 0, 60)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.iter().map(|v| (v * 255.0).round() as u32).collect())
        .collect();
    let (hot, overflowing) = (14 * 28 + 10..14 * 28 + 18)
        .map(|p| [p, p + 1])
        .find_map(|hot: [usize; 2]| {
            let sums: Vec<u32> = levels.iter().map(|x| x[hot[0]] + x[hot[1]]).collect();
            let over: Vec<usize> = (0..60).filter(|&i| sums[i] > 255).collect();
            (!sums.contains(&255) && over.len() >= 2 && over.len() <= 58).then_some((hot, over))
        })
        .expect("a pair of central pixels that splits the digits");
    let original = zoo::models_dir().join("mnist-linear.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&original, &dev).unwrap();
    let mut w = tensors["fc.weight"].to_vec2::<f32>().unwrap();
    for p in hot {
        w[0][p] = f32::MAX;
    }
    let flat: Vec<f32> = w.concat();
    tensors.insert(
        "fc.weight".into(),
        Tensor::from_vec(flat, (10, 784), &dev).unwrap(),
    );
    let path = tmp("overflowing.safetensors");
    zoo::save(&tensors, &path).unwrap();
    let named = format!("{:?}", &overflowing[..overflowing.len().min(10)]);
    let p = path.to_str().unwrap();
    for attack in ["fgsm", "pgd", "deepfool"] {
        let out = perturb(&[
            "attack",
            "--model",
            p,
            "--arch",
            "mnist-linear",
            "--attack",
            attack,
            "--eps",
            "0.1",
            "--n",
            "60",
            "--batch-size",
            "16",
            "--quiet",
        ]);
        one_line_error(&out, &["not finite", &format!("on samples {named}")]);
    }
    // and from the evaluation's ε sweep and the gate
    let out = perturb(&[
        "eval",
        "--model",
        p,
        "--arch",
        "mnist-linear",
        "--eps",
        "0.1,0.2",
        "--n",
        "60",
        "--quiet",
    ]);
    one_line_error(&out, &["not finite", &named]);
    let out = perturb(&[
        "gate",
        "--model",
        p,
        "--arch",
        "mnist-linear",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--min-robust-accuracy",
        "0.5",
        "--n",
        "60",
        "--quiet",
    ]);
    one_line_error(&out, &["not finite", &named]);
}

#[test]
fn weights_holding_nan_are_a_corrupted_file() {
    let dev = Device::Cpu;
    let original = zoo::models_dir().join("mnist-linear.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&original, &dev).unwrap();
    let mut b = tensors["fc.bias"].to_vec1::<f32>().unwrap();
    b[7] = f32::NAN;
    tensors.insert("fc.bias".into(), Tensor::new(b.as_slice(), &dev).unwrap());
    let path = tmp("nan-bias.safetensors");
    zoo::save(&tensors, &path).unwrap();
    let err = zoo::load_file(zoo::Arch::MnistLinear, &path, None, &dev).unwrap_err();
    assert!(
        matches!(&err, perturb::Error::Weights { reason, .. } if reason.contains("fc.bias") && reason.contains("index 7")),
        "{err}"
    );
    let out = perturb(&[
        "attack",
        "--model",
        path.to_str().unwrap(),
        "--arch",
        "mnist-linear",
        "--eps",
        "0.1",
        "--n",
        "4",
        "--quiet",
    ]);
    one_line_error(&out, &["fc.bias", "non-finite"]);
}

#[test]
fn an_empty_selection_is_a_usage_error() {
    for extra in [["--n", "0"], ["--batch-size", "0"]] {
        let mut args = vec![
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--quiet",
        ];
        args.extend(extra);
        one_line_error(&perturb(&args), &["at least 1"]);
    }
}
