//! The transfer matrix equals separate runs (craft on the source, judge with each model), and
//! the distribution of minimal norms gives, at every ε, the robust accuracy of the attack's
//! fixed-ε view run over the same data.

use crate::common;

use candle_core::{Device, Tensor};
use common::{host, LinearModel};
use perturb::attack::{AtEps, DeepFool, FixedBudget, MiFgsm};
use perturb::eval::{predict, transfer, Evaluator};
use perturb::metrics::MinimalNorms;
use perturb::{Budget, Classifier, Error, Fgsm, Norm, Pgd};

fn data(seed: u64, n: usize, model: &LinearModel) -> (Tensor, Tensor) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let px = common::pixels(&mut rng, n * 16);
    // labels: the source's predictions, but every fourth one shifted (some wrong when clean)
    let labels: Vec<u32> = (0..n)
        .map(|i| {
            let z = model.logits_f64(&px[i * 16..(i + 1) * 16]);
            let best = (0..model.k).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap() as u32;
            if i % 4 == 3 {
                (best + 1) % model.k as u32
            } else {
                best
            }
        })
        .collect();
    let x = Tensor::from_vec(px, (n, 1, 4, 4), &Device::Cpu).unwrap();
    (x, Tensor::new(labels.as_slice(), &Device::Cpu).unwrap())
}

#[test]
fn the_transfer_matrix_equals_separate_runs() {
    let source = LinearModel::random(1, 4, 16);
    let (t1, t2) = (LinearModel::random(2, 4, 16), LinearModel::random(3, 4, 16));
    let (x, y) = data(7, 40, &source);
    let eval = Evaluator::new(&source, &x, &y)
        .unwrap()
        .model_name("source")
        .batch_size(16);
    let budget = Budget::linf(0.1).unwrap();
    let fgsm = Fgsm::new(budget);
    let pgd = Pgd::new(budget).steps(10).seed(3);
    let mi = MiFgsm::new(budget).diversity(0.5).seed(3);
    let attacks: [&dyn FixedBudget; 3] = [&fgsm, &pgd, &mi];
    let targets: [(&str, &dyn Classifier); 2] = [("t1", &t1), ("t2", &t2)];
    let m = transfer(&eval, &targets, &attacks).unwrap();
    assert_eq!(m.models, ["source", "t1", "t2"]);
    assert_eq!(m.cells.len(), 9);
    let labels = y.to_vec1::<u32>().unwrap();
    for attack in attacks {
        // a separate run on the source, then each model's predictions on its examples
        let run = Evaluator::new(&source, &x, &y)
            .unwrap()
            .batch_size(16)
            .run(attack, None)
            .unwrap();
        let judges: [(&str, &dyn Classifier); 3] = [("source", &source), ("t1", &t1), ("t2", &t2)];
        for (name, judge) in judges {
            let clean = predict(judge, &x, 7).unwrap();
            let adv = predict(judge, &run.x_adv, 7).unwrap();
            let correct: Vec<usize> = (0..40).filter(|&i| clean[i] == labels[i]).collect();
            let fooled = correct.iter().filter(|&&i| adv[i] != labels[i]).count();
            let cell = m.cell(attack.name(), name).unwrap();
            assert_eq!(
                (cell.clean_correct, cell.fooled),
                (correct.len(), fooled),
                "{} on {name}",
                attack.name()
            );
            assert_eq!(cell.robust_accuracy, (correct.len() - fooled) as f64 / 40.0);
            if name == "source" {
                // the white-box column is the run's own success rate
                assert_eq!(cell.transfer_rate, run.report.attack_success_rate);
            }
        }
    }
    assert_eq!(m.to_csv().lines().count(), 10);
    let dup: [(&str, &dyn Classifier); 1] = [("source", &t1)];
    assert!(matches!(
        transfer(&eval, &dup, &attacks),
        Err(Error::InvalidParameter {
            name: "targets",
            ..
        })
    ));
}

/// One minimum-norm run gives robust accuracy at every ε; a fixed-ε run of the same attack at
/// that ε (the evaluator over AtEps) counts the same samples robust.
#[test]
fn minimal_norms_give_the_fixed_eps_robust_accuracy_at_every_eps() {
    let model = LinearModel::random(4, 5, 16);
    let (x, y) = data(8, 32, &model);
    let deepfool = DeepFool::new(Norm::L2);
    let eval = Evaluator::new(&model, &x, &y).unwrap().batch_size(10);
    let unbounded = MinimalNorms::unbounded(Norm::L2, 16).unwrap();
    assert_eq!(unbounded.eps(), 4.0);
    let run = eval
        .run(&AtEps::new(deepfool.clone(), unbounded), None)
        .unwrap();
    let m = MinimalNorms::new(&run.report, &run.outcome).unwrap();
    assert_eq!(m.clean_correct, run.report.clean_correct);
    assert_eq!(m.samples, 32);
    assert_eq!(
        m.norms.iter().filter(|d| **d == Some(0.0)).count(),
        32 - m.clean_correct
    );
    let mut found: Vec<f32> = m
        .norms
        .iter()
        .flatten()
        .copied()
        .filter(|d| *d > 0.0)
        .collect();
    found.sort_by(f32::total_cmp);
    assert_eq!(found.len(), m.found);
    for eps in [
        0.0,
        found[2] * 1.001,
        found[found.len() / 2] * 1.001,
        0.5 * (found[5] + found[6]),
        3.9,
    ] {
        if eps == 0.0 {
            assert_eq!(m.robust_accuracy_at(0.0), run.report.clean_accuracy);
            continue;
        }
        let fixed = eval
            .run(
                &AtEps::new(deepfool.clone(), Budget::l2(eps).unwrap()),
                None,
            )
            .unwrap();
        assert_eq!(
            m.robust_accuracy_at(eps),
            fixed.report.robust_accuracy,
            "eps {eps}"
        );
    }
    // the curve falls and ends at the robust accuracy of its last ε
    let curve = m.curve(3.0);
    assert!(curve
        .windows(2)
        .all(|w| w[1].0 >= w[0].0 && w[1].1 <= w[0].1));
    assert_eq!(curve.last().unwrap().1, m.robust_accuracy_at(3.0));
    // the median over the samples classified correctly
    let mut correct: Vec<f64> = m
        .norms
        .iter()
        .zip(host(&x).chunks(16))
        .filter_map(|(d, _)| *d)
        .filter(|d| *d > 0.0)
        .map(f64::from)
        .collect();
    correct.sort_by(f64::total_cmp);
    if m.found == m.clean_correct {
        let k = correct.len();
        let median = if k % 2 == 1 {
            correct[k / 2]
        } else {
            0.5 * (correct[k / 2 - 1] + correct[k / 2])
        };
        assert!((m.median.unwrap() - median).abs() < 1e-12);
    }
}
