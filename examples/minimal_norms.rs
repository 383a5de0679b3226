//! How far is the nearest adversarial example? DeepFool and DDN (L2) on the three shipped MNIST
//! models, one run each, drawn as robust accuracy against ε (the CDF of the minimal distances):
//! `cargo run --release --example minimal_norms -- [N] [OUT.png]` (default 500 digits,
//! `minimal_norms.png`). Prints the median distance and robust accuracy at ε = 1, 2 per run.

use anyhow::Result;
use candle_core::Device;
use perturb::attack::{AtEps, Ddn, DeepFool};
use perturb::data::Mnist;
use perturb::eval::Evaluator;
use perturb::export::{plot_lines, Line};
use perturb::metrics::MinimalNorms;
use perturb::{zoo, Attack, Norm};

fn main() -> Result<()> {
    perturb::tune_allocator();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let out = args.next().unwrap_or_else(|| "minimal_norms.png".into());
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev)?;
    let (x, y) = (images.narrow(0, 0, n)?, labels.narrow(0, 0, n)?);
    let unbounded = MinimalNorms::unbounded(Norm::L2, 28 * 28)?;
    let mut lines = Vec::new();
    for name in ["mnist-linear", "mnist-cnn", "mnist-cnn-fgsm-rs"] {
        let model = zoo::load(name, &dev)?;
        let eval = Evaluator::new(&model, &x, &y)?.model_name(name);
        let attacks: [Box<dyn Attack>; 2] = [
            Box::new(AtEps::new(DeepFool::new(Norm::L2), unbounded)),
            Box::new(AtEps::new(Ddn::new(), unbounded)),
        ];
        for attack in &attacks {
            let run = eval.run(attack.as_ref(), None)?;
            let m = MinimalNorms::new(&run.report, &run.outcome)?;
            println!(
                "{name:<17} {:<9} found {:>4}/{:<4} median L2 {:>7} robust at 1: {:>6.2} %, at 2: {:>6.2} %  ({:.0} s)",
                m.attack.name,
                m.found,
                m.clean_correct,
                m.median.map_or("none".into(), |v| format!("{v:.3}")),
                100.0 * m.robust_accuracy_at(1.0),
                100.0 * m.robust_accuracy_at(2.0),
                run.report.wall_time_s
            );
            lines.push(Line {
                name: format!("{name} {}", m.attack.name),
                points: m.curve(4.0),
                thin: false,
                band: Vec::new(),
            });
        }
    }
    plot_lines(
        &format!("L2 distance to the nearest adversarial example, first {n} test digits"),
        ("eps (L2)", "robust accuracy"),
        &lines,
        std::path::Path::new(&out),
    )?;
    println!("wrote {out}");
    Ok(())
}
