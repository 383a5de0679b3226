//! The training curve of a model card: clean and robust accuracy per epoch, with their 95 %
//! Wilson intervals, from one `perturb attack --json` report per epoch checkpoint.
//!
//! ```sh
//! for e in 01 02 03; do
//!   perturb attack --model epoch-$e.safetensors --arch small-cnn --attack pgd --eps 0.3 \
//!       --steps 40 --step-size 0.01 --n 1000 --json eval/pgd40-$e.json
//! done
//! cargo run --example training_curve -- --out curve.png eval/pgd40-*.json
//! ```
//! Epoch k is the k-th report given (sorted by name by the shell's glob). Prints the table the
//! card shows.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use perturb::export::{plot_lines, read_report, Line};

/// Plot clean and robust accuracy per epoch from per-epoch reports.
#[derive(Parser)]
struct Cli {
    /// Where to write the PNG
    #[arg(long)]
    out: PathBuf,
    /// Title of the plot
    #[arg(long, default_value = "accuracy per training epoch")]
    title: String,
    /// One report per epoch, in epoch order
    reports: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.reports.is_empty() {
        bail!("give one report per epoch");
    }
    let mut clean = Vec::new();
    let mut robust = Vec::new();
    let (mut clean_band, mut robust_band) = (Vec::new(), Vec::new());
    let mut attack = String::new();
    println!("| epoch | clean | robust | attack | samples |");
    println!("|---|---|---|---|---|");
    for (k, path) in cli.reports.iter().enumerate() {
        let r = read_report(path)?;
        let epoch = (k + 1) as f32;
        attack = match r.attack.eps {
            Some(eps) => format!("{} eps {eps}", r.attack.name),
            None => r.attack.name.clone(),
        };
        clean.push((epoch, r.clean_accuracy));
        robust.push((epoch, r.robust_accuracy));
        if let Some(i) = &r.intervals {
            clean_band.push((i.clean_accuracy.lower, i.clean_accuracy.upper));
            robust_band.push((i.robust_accuracy.lower, i.robust_accuracy.upper));
        }
        println!(
            "| {} | {:.1} % | {:.1} % | {attack} | {} |",
            k + 1,
            100.0 * r.clean_accuracy,
            100.0 * r.robust_accuracy,
            r.samples
        );
    }
    let lines = [
        Line {
            name: "clean".into(),
            points: clean,
            thin: false,
            band: clean_band,
        },
        Line {
            name: format!("robust ({attack})"),
            points: robust,
            thin: false,
            band: robust_band,
        },
    ];
    plot_lines(&cli.title, ("epoch", "accuracy"), &lines, &cli.out)?;
    println!("wrote {}", cli.out.display());
    Ok(())
}
