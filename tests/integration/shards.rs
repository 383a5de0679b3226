//! Split evaluations: the same run as one process and as 3 and 4 shards (separate processes,
//! `perturb attack --shard I/N`), merged with `perturb merge`, gives the single run's report
//! field by field (wall time aside) and its adversarial examples bit for bit; a scheduler's
//! array index picks the shard; `merge` refuses shards of different runs, twice-given,
//! overlapping and missing shards with exit 2 and one line naming the problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use perturb::eval::{Shard, ShardInfo};

use crate::cli::{perturb, text, tmp};

/// PGD with random start and two restarts (per-sample random draws), early stopping (samples
/// leave their batch), batches of 16 over 90 digits (a short last batch).
/// Each call adds `--n` and `--eps`, and batches of 16 unless it says otherwise.
const RUN: [&str; 11] = [
    "attack",
    "--model",
    "mnist-cnn",
    "--attack",
    "pgd",
    "--param",
    "steps=4",
    "--param",
    "restarts=2",
    "--offset",
    "7",
];

/// 90 digits at ε = 0.2.
const BASE: [&str; 4] = ["--n", "90", "--eps", "0.2"];
/// 40 digits at ε = 0.2.
const SMALL: [&str; 4] = ["--n", "40", "--eps", "0.2"];

fn run(extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perturb"));
    cmd.args(RUN).args(extra).arg("--quiet");
    if !extra.contains(&"--batch-size") {
        cmd.args(["--batch-size", "16"]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run perturb");
    assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
    out
}

/// `perturb attack` writing `<stem>.json` and `<stem>.safetensors`.
fn attack(stem: &Path, extra: &[&str], env: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let json = stem.with_extension("json");
    let adv = stem.with_extension("safetensors");
    let mut args = vec![
        "--json",
        json.to_str().unwrap(),
        "--save-adversarials",
        adv.to_str().unwrap(),
        "--force",
    ];
    args.extend_from_slice(extra);
    run(&args, env);
    (json, adv)
}

fn without_wall_time(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("wall_time_s");
    v
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn merge(reports: &[PathBuf], out: &Path) -> Output {
    let mut args = vec!["merge".to_string()];
    args.extend(reports.iter().map(|p| p.to_str().unwrap().to_string()));
    args.extend(["--json".to_string(), out.to_str().unwrap().to_string()]);
    perturb(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn three_and_four_shards_merge_into_the_single_run() {
    let (whole_json, whole_adv) = attack(&tmp("whole"), &BASE, &[]);
    let whole = without_wall_time(&whole_json);
    let whole_x_adv = bits(&tensors(&whole_adv)["x_adv"]);
    for count in [3usize, 4] {
        let mut reports = Vec::new();
        let mut x_adv = Vec::new();
        for index in 0..count {
            let shard = format!("{index}/{count}");
            let (json, adv) = attack(
                &tmp(&format!("shard-{index}-of-{count}")),
                &[&BASE[..], &["--shard", &shard]].concat(),
                &[],
            );
            let report = perturb::export::read_report(&json).unwrap();
            let info = report.shard.expect("a shard report names its shard");
            assert_eq!(info, Shard::new(index, count).unwrap().info(90, 16));
            x_adv.extend(bits(&tensors(&adv)["x_adv"]));
            reports.push(json);
        }
        assert_eq!(x_adv, whole_x_adv, "{count} shards: adversarials differ");
        // any order
        reports.reverse();
        let merged = tmp(&format!("merged-{count}.json"));
        let out = merge(&reports, &merged);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("merged from {count} shards")));
        assert_eq!(without_wall_time(&merged), whole, "{count} shards");
    }
    // random draws belong to the sample, not to its batch: other batch sizes, same points
    for batch in ["30", "90"] {
        let (_, adv) = attack(
            &tmp(&format!("batch-{batch}")),
            &[&BASE[..], &["--batch-size", batch]].concat(),
            &[],
        );
        assert_eq!(
            bits(&tensors(&adv)["x_adv"]),
            whole_x_adv,
            "batches of {batch}"
        );
    }
}

#[test]
fn shard_ranges_are_whole_batches_covering_the_run_once() {
    for (samples, batch) in [(90, 16), (1000, 250), (7, 3), (5, 10), (0, 4)] {
        for count in 1..=9 {
            let mut next = 0;
            for index in 0..count {
                let r = Shard::new(index, count).unwrap().range(samples, batch);
                assert_eq!(r.start, next, "{samples} {batch} {index}/{count}");
                assert!(r.start.is_multiple_of(batch) || r.start == samples);
                next = r.end;
            }
            assert_eq!(next, samples);
        }
    }
    // sizes differ by at most one batch
    let sizes: Vec<usize> = (0..4)
        .map(|i| Shard::new(i, 4).unwrap().range(1000, 10).len())
        .collect();
    assert_eq!(sizes, [250, 250, 250, 250]);
    assert!("4/4".parse::<Shard>().is_err() && "a/4".parse::<Shard>().is_err());
}

#[test]
fn array_jobs_pick_their_shard_from_the_scheduler() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let slurm = vars(&[
        ("SLURM_ARRAY_TASK_ID", "12"),
        ("SLURM_ARRAY_TASK_MIN", "10"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]);
    assert_eq!(
        Shard::from_vars(slurm, None).unwrap(),
        Some(Shard::new(2, 4).unwrap())
    );
    let k8s = vars(&[("JOB_COMPLETION_INDEX", "3")]);
    assert_eq!(
        Shard::from_vars(k8s, Some(5)).unwrap(),
        Some(Shard::new(3, 5).unwrap())
    );
    assert!(Shard::from_vars(k8s, None).is_err(), "the count is needed");
    assert_eq!(Shard::from_vars(vars(&[]), Some(3)).unwrap(), None);
    assert!(Shard::from_vars(vars(&[("SLURM_ARRAY_TASK_ID", "x")]), None).is_err());
    // the same command line in an Indexed Job's pod runs shard 1 of 3
    let stem = tmp("k8s-1-of-3");
    let (json, _) = attack(
        &stem,
        &[&BASE[..], &["--shards", "3"]].concat(),
        &[("JOB_COMPLETION_INDEX", "1")],
    );
    let info: ShardInfo = perturb::export::read_report(&json).unwrap().shard.unwrap();
    // 90 digits in 6 batches of 16: shard 1 of 3 is batches 2 and 3
    assert_eq!(
        (info.index, info.count, info.start, info.end),
        (1, 3, 32, 64)
    );
}

#[test]
fn merge_refuses_what_is_not_one_run() {
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| {
            attack(
                &tmp(&format!("refuse-{i}-of-3")),
                &[&SMALL[..], &["--shard", &format!("{i}/3")]].concat(),
                &[],
            )
            .0
        })
        .collect();
    let out = tmp("refused.json");
    let rejects = |reports: &[PathBuf], needle: &str| {
        let o = merge(reports, &out);
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    };
    rejects(&shards[..2], "missing shards: 2/3");
    rejects(
        &[shards[0].clone(), shards[0].clone(), shards[1].clone()],
        "given twice",
    );
    // another ε is another run
    let other = attack(
        &tmp("refuse-other-eps"),
        &["--shard", "2/3", "--n", "40", "--eps", "0.1"],
        &[],
    )
    .0;
    rejects(
        &[shards[0].clone(), shards[1].clone(), other],
        "different run",
    );
    // a shard of a 2-way split overlaps the 3-way shards
    let two = attack(
        &tmp("refuse-1-of-2"),
        &[&SMALL[..], &["--shard", "1/2"]].concat(),
        &[],
    )
    .0;
    rejects(&[shards[0].clone(), shards[1].clone(), two], "shard count");
    let whole = attack(&tmp("refuse-whole"), &SMALL, &[]).0;
    rejects(&[whole], "not a shard");
    assert!(!out.exists(), "a refused merge writes nothing");
    let ok = merge(&shards, &out);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}
