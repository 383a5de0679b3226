//! The `perturb` command line. The attack, eval and gate subcommands arrive with the model zoo;
//! until then the binary reports its version and what the library offers.

use std::process::ExitCode;

const HELP: &str = "\
perturb — adversarial attacks and robustness tests for candle image classifiers

USAGE:
    perturb [--help | --version]

The library (crate `perturb`) provides FGSM and PGD under L-inf, L2 and L1 budgets, input
gradients checked against finite differences, and a gradient self-check. Subcommands that
attack shipped models (`models`, `attack`, `eval`, `gate`) come with the model zoo.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("perturb {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: unknown argument '{other}' (see perturb --help)");
            ExitCode::from(2)
        }
    }
}
