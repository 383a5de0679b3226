//! Split evaluations: the same run as one process and as 3 and 4 shards (separate processes,
//! `perturb attack --shard I/N`), merged with `perturb merge`, gives the single run's report
//! field by field (wall time aside) and its adversarial examples bit for bit; a scheduler's
//! array index picks the shard; `merge` refuses shards of different runs, twice-given,
//! overlapping and missing shards with exit 2 and one line naming the problem.

use crate::common::bits;
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

/// A report or a sweep as JSON without its wall times (a sweep has one per report).
fn without_wall_time(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    match v.get_mut("reports").and_then(|r| r.as_array_mut()) {
        Some(reports) => reports.iter_mut().for_each(|r| {
            r.as_object_mut().unwrap().remove("wall_time_s");
        }),
        None => {
            v.as_object_mut().unwrap().remove("wall_time_s");
        }
    }
    v
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
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

/// deploy/slurm/eval.sbatch, run as Slurm would run two array tasks of it (bash, with the
/// array variables), on a small selection: its reports merge into the single run's.
#[test]
fn the_sbatch_script_runs_shards_that_merge() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/eval.sbatch");
    let dir = tmp("sbatch");
    let _ = std::fs::remove_dir_all(&dir);
    let settings = [
        ("PERTURB", env!("CARGO_BIN_EXE_perturb")),
        ("MODEL", "mnist-linear"),
        ("EPS", "0.1"),
        ("N", "48"),
        ("BATCH", "16"),
        ("OUT", dir.to_str().unwrap()),
        ("SLURM_ARRAY_TASK_MIN", "5"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
    ];
    for id in ["5", "6"] {
        let out = Command::new("bash")
            .arg(&script)
            .envs(settings)
            .env("SLURM_ARRAY_TASK_ID", id)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let reports = vec![dir.join("shard-5.json"), dir.join("shard-6.json")];
    let merged = dir.join("all.json");
    let out = merge(&reports, &merged);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let whole = tmp("sbatch-whole.json");
    let single = perturb(&[
        "attack",
        "--model",
        "mnist-linear",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--n",
        "48",
        "--batch-size",
        "16",
        "--quiet",
        "--json",
        whole.to_str().unwrap(),
    ]);
    assert!(single.status.success(), "{}", text(&single.stderr));
    assert_eq!(without_wall_time(&merged), without_wall_time(&whole));
}

/// deploy/kubernetes/eval-indexed-job.yaml: an Indexed Job whose pods run the shards of one
/// run (`--shards` equal to `completions`) and write their reports to the mounted volume.
#[test]
fn the_kubernetes_manifest_is_an_indexed_job_of_the_shards() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/eval-indexed-job.yaml");
    let job: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    assert!(spec["parallelism"].as_u64().unwrap() <= completions);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    assert!(container["image"].as_str().unwrap().starts_with("perturb:"));
    let line = container["args"][0].as_str().unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..2], ["perturb", "attack"]);
    let flag = |name: &str| {
        let at = words.iter().position(|w| *w == name).unwrap();
        words[at + 1]
    };
    assert_eq!(flag("--shards").parse::<u64>().unwrap(), completions);
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(flag("--json").starts_with(&format!("{mount}/")));
    assert!(flag("--json").contains("$JOB_COMPLETION_INDEX"));
    let volume = &pod["volumes"][0];
    assert_eq!(volume["name"], container["volumeMounts"][0]["name"]);
    // the pod's command line, as the shell would run it in pod 1, on a small selection
    let shell = line
        .replace(
            "perturb attack",
            &format!("{} attack", env!("CARGO_BIN_EXE_perturb")),
        )
        .replace("--n 10000", "--n 32")
        .replace("--batch-size 250", "--batch-size 16")
        .replace(mount, tmp("k8s").to_str().unwrap());
    std::fs::create_dir_all(tmp("k8s")).unwrap();
    let out = Command::new("sh")
        .args(["-c", &shell])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
    let report = perturb::export::read_report(&tmp("k8s").join("shard-1.json")).unwrap();
    let info = report.shard.unwrap();
    assert_eq!((info.index, info.count as u64), (1, completions));
}

/// `--data DIR`: a directory of photos with `labels.csv` (indices and names mixed), sharded and
/// merged like MNIST; rows are named by their position in the labels file, and bad rows are one
/// line and exit 2.
#[test]
fn a_labelled_image_directory_shards_and_merges() {
    let dir = tmp("photos");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/images");
    let mut csv = String::from("file,label\n");
    for (name, label) in [
        ("chelsea.png", "285"),
        ("coffee.png", "espresso"),
        ("astronaut.png", "457"),
        ("rocket.png", "812"),
        ("motorcycle_left.png", "670"),
    ] {
        std::fs::copy(photos.join(name), dir.join(name)).unwrap();
        csv.push_str(&format!("{name},{label}\n"));
    }
    std::fs::write(dir.join("labels.csv"), csv).unwrap();
    let d = dir.to_str().unwrap();
    let base = |extra: &[&str], json: &Path| {
        let mut args = vec![
            "attack",
            "--model",
            "efficientnet-lite0",
            "--data",
            d,
            "--attack",
            "pgd",
            "--eps",
            "0.004",
            "--param",
            "steps=2",
            "--batch-size",
            "2",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = perturb(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
    };
    let whole = dir.join("whole.json");
    base(&[], &whole);
    let report = perturb::export::read_report(&whole).unwrap();
    assert_eq!(report.samples, 5);
    let per = report.per_sample.as_ref().unwrap();
    assert_eq!(per.index, [0, 1, 2, 3, 4]);
    assert_eq!(per.label[..2], [285, 967]); // espresso is class 967
    let shards: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.join(format!("shard-{i}.json"));
            base(&["--shard", &format!("{i}/2")], &p);
            p
        })
        .collect();
    let merged = dir.join("merged.json");
    let out = merge(&shards, &merged);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(without_wall_time(&merged), without_wall_time(&whole));
    // --n and --offset select rows
    let two = dir.join("two.json");
    base(&["--offset", "3", "--n", "2"], &two);
    let two = perturb::export::read_report(&two).unwrap();
    assert_eq!(two.per_sample.unwrap().index, [3, 4]);
    // a shard decodes its own rows alone: a missing sixth photo stops the whole run and the
    // shard that holds it, not the first shard
    let mut csv = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    csv.push_str("missing.png,1\n");
    std::fs::write(dir.join("labels.csv"), csv).unwrap();
    base(&["--shard", "0/2"], &dir.join("first.json"));
    let out = perturb(&[
        "attack",
        "--model",
        "efficientnet-lite0",
        "--data",
        d,
        "--eps",
        "0.004",
        "--batch-size",
        "2",
        "--shard",
        "1/2",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("missing.png"),
        "{}",
        text(&out.stderr)
    );
    // a bad row is one line naming the file and the row
    let attack_dir = || {
        perturb(&[
            "attack",
            "--model",
            "efficientnet-lite0",
            "--data",
            d,
            "--eps",
            "0.004",
            "--quiet",
        ])
    };
    std::fs::write(dir.join("labels.csv"), "chelsea.png,285\ncoffee.png\n").unwrap();
    let bad = attack_dir();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = text(&bad.stderr);
    assert!(
        stderr.contains("labels.csv") && stderr.contains("line 2"),
        "{stderr}"
    );
    std::fs::write(dir.join("labels.csv"), "chelsea.png,not a class at all\n").unwrap();
    let bad = attack_dir();
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("row 1"), "{}", text(&bad.stderr));
}

/// `perturb eval --shard I/N`: the sweeps of three shards merge into the single sweep — every
/// (attack, ε) report, the worst case per ε, the warnings — wall times aside.
#[test]
fn eval_sweeps_shard_and_merge() {
    let sweep = |extra: &[&str], json: &Path| {
        let mut args = vec![
            "eval",
            "--model",
            "mnist-cnn",
            "--attacks",
            "fgsm,pgd",
            "--eps",
            "0,0.1,0.2",
            "--param",
            "steps=3",
            "--n",
            "40",
            "--batch-size",
            "8",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = perturb(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
    };
    let whole = tmp("sweep-whole.json");
    sweep(&[], &whole);
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = tmp(&format!("sweep-{i}-of-3.json"));
            sweep(&["--shard", &format!("{i}/3")], &p);
            p
        })
        .collect();
    let merged = tmp("sweep-merged.json");
    let out = merge(&shards, &merged);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(without_wall_time(&merged), without_wall_time(&whole));
    // a sweep and a report are not one kind
    let report = tmp("sweep-report.json");
    attack(
        &tmp("sweep-report"),
        &["--n", "40", "--eps", "0.1", "--shard", "2/3"],
        &[],
    );
    let o = merge(
        &[shards[0].clone(), shards[1].clone(), report],
        &tmp("mixed.json"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

/// `attack --resume DIR`, killed with SIGKILL after a random number of batches and run again:
/// the final report is the uninterrupted run's (wall time aside); the parts written before the
/// kill are kept as they were; DIR never holds a partial report.
#[test]
fn a_killed_run_resumes_to_the_uninterrupted_report() {
    let args = |json: &Path, resume: Option<&Path>| {
        let mut v: Vec<String> = RUN.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--n",
                "64",
                "--eps",
                "0.2",
                "--batch-size",
                "8",
                "--quiet",
                "--json",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        v.push(json.to_str().unwrap().to_string());
        if let Some(dir) = resume {
            v.push("--resume".into());
            v.push(dir.to_str().unwrap().into());
        }
        v
    };
    let whole = tmp("resume-whole.json");
    let out = Command::new(env!("CARGO_BIN_EXE_perturb"))
        .args(args(&whole, None))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tmp("resume-progress");
    let _ = std::fs::remove_dir_all(&dir);
    let resumed = tmp("resume-resumed.json");
    // kill after 1 to 4 of the 8 parts, a different count from run to run
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let kill_after = 1 + nanos % 4;
    let parts = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-") && n.ends_with(".json"))
        });
        v.sort();
        v
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_perturb"))
        .args(args(&resumed, Some(&dir)))
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while parts(&dir).len() < kill_after && start.elapsed().as_secs() < 120 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept: Vec<(PathBuf, Vec<u8>)> = parts(&dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            // whole reports only: each part parses
            perturb::export::read_report(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(!kept.is_empty() && kept.len() < 8, "{} parts", kept.len());
    let out = Command::new(env!("CARGO_BIN_EXE_perturb"))
        .args(args(&resumed, Some(&dir)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(without_wall_time(&resumed), without_wall_time(&whole));
    for (p, bytes) in kept {
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{} rewritten",
            p.display()
        );
    }
    assert_eq!(parts(&dir).len(), 8);
    // progress of another run (another ε) is refused, not mixed in
    let mut other_args = args(&tmp("resume-other.json"), Some(&dir));
    let at = other_args.iter().position(|a| a == "0.2").unwrap();
    other_args[at] = "0.1".into();
    let other = Command::new(env!("CARGO_BIN_EXE_perturb"))
        .args(other_args)
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2), "{}", text(&other.stderr));
    assert!(
        text(&other.stderr).contains("different run"),
        "{}",
        text(&other.stderr)
    );
}
