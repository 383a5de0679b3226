//! Memory stays flat in the number of steps: no graph or tensor survives a PGD step, so the peak
//! resident memory of PGD-100 is at most 1.2 times that of PGD-10 on the same batch.
//!
//! Each attack runs in a fresh child process (this test binary, re-run on the ignored helper),
//! which reports its peak resident set size (`VmHWM` in /proc/self/status) after the attack;
//! once with glibc's default allocator settings and once after [`perturb::tune_allocator`].

use std::process::Command;

use crate::common::peak_rss_kib;

use candle_core::Device;
use perturb::data::Mnist;
use perturb::{zoo, Attack, Budget, Goal, Pgd};

#[test]
#[ignore = "helper run in a child process by pgd_memory_is_flat_in_the_number_of_steps"]
fn child_runs_pgd() {
    let Ok(steps) = std::env::var("PERTURB_MEMORY_STEPS") else {
        return;
    };
    let steps: usize = steps.parse().unwrap();
    if std::env::var_os("PERTURB_MEMORY_TUNED").is_some() {
        assert_eq!(
            perturb::tune_allocator(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }
    let dev = Device::Cpu;
    let model = zoo::load("mnist-cnn", &dev).unwrap();
    let (x, y) = Mnist::load_test_default(&dev).unwrap();
    let (x, y) = (x.narrow(0, 0, 32).unwrap(), y.narrow(0, 0, 32).unwrap());
    // ε small enough that few digits fall early; early stop off, so every step runs on all 32
    let pgd = Pgd::new(Budget::linf(0.05).unwrap())
        .steps(steps)
        .check_gradient(false);
    let adv = pgd.run(&model, &x, &Goal::untargeted(&y)).unwrap();
    assert_eq!(adv.gradient_evals, 32 * steps);
    println!("PEAK_RSS_KIB {}", peak_rss_kib().unwrap());
}

/// Peak RSS of a child running PGD-`steps`, with [`perturb::tune_allocator`] if `tuned`.
fn child_peak(steps: usize, tuned: bool) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "memory::child_runs_pgd",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("PERTURB_MEMORY_STEPS", steps.to_string());
    if tuned {
        child.env("PERTURB_MEMORY_TUNED", "1");
    }
    let out = child.output().expect("spawn child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS_KIB "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in child output:\n{stdout}"))
}

#[test]
fn pgd_memory_is_flat_in_the_number_of_steps() {
    if peak_rss_kib().is_none() {
        eprintln!("no /proc/self/status: skipped (Linux only)");
        return;
    }
    // with glibc's defaults, and with freed memory kept for reuse (as the CLI runs)
    for tuned in [false, true] {
        let (ten, hundred) = (child_peak(10, tuned), child_peak(100, tuned));
        println!("peak RSS (tuned allocator: {tuned}): PGD-10 {ten} KiB, PGD-100 {hundred} KiB");
        assert!(
            hundred as f64 <= 1.2 * ten as f64,
            "tuned allocator {tuned}: PGD-100 peaked at {hundred} KiB, PGD-10 at {ten} KiB"
        );
    }
}
