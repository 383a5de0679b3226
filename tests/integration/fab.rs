//! FAB-T against the closed form: on a linear two-class model the closest point of the decision
//! boundary is at distance `|f(x)| / ‖w‖_dual` (‖w‖₁ for L∞, ‖w‖₂ for L2) when the box is not in
//! the way; FAB-T must find it (it returns a point just across). Also: the hyperplane steps, the
//! fixed-ε verdicts through the registry, and typed errors.

use crate::common;

use candle_core::{Device, Tensor};
use common::{host, LinearModel};
use perturb::attack::{AtEps, Fab, MinimumNorm};
use perturb::{Attack, Budget, Error, Goal, Norm};

/// Two classes with weights `w` (class 1) and 0 (class 0), bias `b` for class 0: `f = z₀ − z₁ =
/// b − w·x`.
fn two_class(w: &[f32], b: f32) -> LinearModel {
    let d = w.len();
    let mut all = vec![0f32; d];
    all.extend_from_slice(w);
    LinearModel::new(all, vec![b, 0.0], 2, d)
}

#[test]
fn finds_the_closest_boundary_point_of_a_linear_model() -> perturb::Result<()> {
    let w: Vec<f32> = (0..16)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
        .collect();
    let x_host = vec![0.5f32; 16];
    let wx: f64 = w.iter().map(|v| f64::from(*v) * 0.5).sum();
    // class 0 leads by 0.3 at x
    let b = (wx + 0.3) as f32;
    let model = two_class(&w, b);
    let x = Tensor::from_vec(x_host.clone(), (1, 1, 4, 4), &Device::Cpu)?;
    let goal = Goal::untargeted(&Tensor::new(&[0u32], &Device::Cpu)?);
    let l1: f64 = w.iter().map(|v| f64::from(v.abs())).sum();
    let l2: f64 = w.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    for (norm, dual) in [(Norm::Linf, l1), (Norm::L2, l2)] {
        let truth = 0.3 / dual;
        let adv = Fab::new(norm).steps(100).minimize(&model, &x, &goal)?;
        assert_eq!(adv.success, [true], "{norm}");
        let got = f64::from(adv.norms[0]);
        assert!(
            got >= truth - 1e-6,
            "{norm}: {got} is closer than the boundary {truth}"
        );
        assert!(got - truth <= 1e-4, "{norm}: {got} vs the closest {truth}");
        // the point is across the boundary: f < 0
        let z = host(&adv.x_adv);
        let f = f64::from(b) - w.iter().zip(&z).map(|(a, c)| f64::from(a * c)).sum::<f64>();
        assert!(f < 0.0, "{norm}: f = {f}");
    }
    Ok(())
}

#[test]
fn hyperplane_steps_reach_the_plane_with_the_least_norm() {
    let g = [0.5, -2.0, 1.0, 0.0];
    let (a, b) = ([-1.0; 4], [1.0; 4]);
    for r in [0.3, -0.7, 1.5] {
        let linf = Fab::hyperplane_step(Norm::Linf, &g, r, &a, &b);
        let reach: f64 = g.iter().zip(&linf).map(|(x, y)| x * y).sum();
        assert!((reach - r).abs() < 1e-12);
        // without the box: every moving coordinate at r/‖g‖₁
        let t = r.abs() / 3.5;
        assert!(linf
            .iter()
            .zip(&g)
            .all(|(d, gi)| *gi == 0.0 && *d == 0.0 || (d.abs() - t).abs() < 1e-12));
        let l2 = Fab::hyperplane_step(Norm::L2, &g, r, &a, &b);
        let n2: f64 = g.iter().map(|x| x * x).sum();
        for (d, gi) in l2.iter().zip(&g) {
            assert!((d - r * gi / n2).abs() < 1e-9);
        }
    }
    // the box binds: coordinate 1 may move only 0.1 down, so the others take over
    let b2 = [1.0, 1.0, 1.0, 1.0];
    let a2 = [-1.0, -0.1, -1.0, -1.0];
    let d = Fab::hyperplane_step(Norm::Linf, &g, 1.5, &a2, &b2);
    let reach: f64 = g.iter().zip(&d).map(|(x, y)| x * y).sum();
    assert!((reach - 1.5).abs() < 1e-12 && d[1] >= -0.1 - 1e-15);
    // unreachable inside the box: the best it can do
    let far = Fab::hyperplane_step(Norm::Linf, &g, 100.0, &a, &b);
    assert_eq!(far, [1.0, -1.0, 1.0, 0.0]);
}

#[test]
fn judged_at_eps_through_the_registry() -> perturb::Result<()> {
    let w: Vec<f32> = (0..16).map(|i| ((i * 5 % 9) as f32 - 4.0) / 8.0).collect();
    let wx: f64 = w.iter().map(|v| f64::from(*v) * 0.5).sum();
    let model = two_class(&w, (wx + 0.3) as f32);
    let x = Tensor::full(0.5f32, (1, 1, 4, 4), &Device::Cpu)?;
    let goal = Goal::untargeted(&Tensor::new(&[0u32], &Device::Cpu)?);
    let l1: f32 = w.iter().map(|v| v.abs()).sum();
    let truth = 0.3 / l1;
    let near =
        AtEps::new(Fab::new(Norm::Linf), Budget::linf(truth * 1.01)?).run(&model, &x, &goal)?;
    let far =
        AtEps::new(Fab::new(Norm::Linf), Budget::linf(truth * 0.99)?).run(&model, &x, &goal)?;
    assert_eq!((near.success[0], far.success[0]), (true, false));
    assert!(near.norms[0] <= truth * 1.01 && far.norms[0] == 0.0);
    let registry = perturb::attack::Registry::builtin();
    let spec =
        perturb::attack::AttackSpec::from_json(r#"{"attack": "fab-t", "norm": "l1", "eps": 1}"#)?;
    assert!(matches!(
        registry.build(&spec),
        Err(Error::AttackSpec { .. })
    ));
    Ok(())
}

#[test]
fn bad_parameters_and_goals_are_typed_errors() -> perturb::Result<()> {
    for bad in [
        Fab::new(Norm::Linf).steps(0),
        Fab::new(Norm::Linf).targets(0),
        Fab::new(Norm::L1),
    ] {
        assert!(matches!(bad.build(), Err(Error::InvalidParameter { .. })));
    }
    let model = LinearModel::random(1, 3, 16);
    let x = Tensor::full(0.5f32, (1, 1, 4, 4), &Device::Cpu)?;
    let goal = Goal::targeted(&Tensor::new(&[2u32], &Device::Cpu)?);
    assert!(matches!(
        Fab::new(Norm::L2).minimize(&model, &x, &goal),
        Err(Error::InvalidParameter {
            name: "targets",
            ..
        })
    ));
    Ok(())
}
