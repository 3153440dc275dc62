//! Softmax cross-entropy and SGD on the GPU against the reference.

use crate::support::harness::{case, per_act, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::ops::adam::{self, AdamParams};
use densenet_wgpu::ops::cross_entropy::{self, CrossEntropyParams, IGNORE};
use densenet_wgpu::ops::sgd::{self, SgdParams};
use densenet_wgpu::reference as cpu;

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "cross_entropy::softmax_cross_entropy_matches_reference",
            softmax_cross_entropy_matches_reference,
        ),
        per_act(
            "cross_entropy::sigmoid_cross_entropy_matches_reference",
            sigmoid_cross_entropy_matches_reference,
        ),
        vec![
            case(
                "cross_entropy::sgd_update_matches_reference",
                sgd_update_matches_reference,
            ),
            case(
                "cross_entropy::adam_update_matches_reference",
                adam_update_matches_reference,
            ),
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn softmax_cross_entropy_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    // (batch, classes, padding samples): one sample, the d2l head, a batch wider than the
    // workgroup, padding labels in the last batch.
    // The last case also smooths its labels.
    let cases = [(1, 10, 0), (3, 13, 0), (256, 10, 0), (300, 7, 21)];
    for (i, &(n, classes, pad)) in cases.iter().enumerate() {
        let smoothing = if i == 3 { 0.1 } else { 0.0 };
        let p = CrossEntropyParams::new(n, classes)
            .unwrap()
            .with_smoothing(smoothing)
            .unwrap();
        // Logits of a larger scale make the softmax sharp, some rows with exact ties.
        let mut logits = as_act(dtype, rng.range(p.logits_len(), -6.0, 6.0));
        logits[classes as usize - 1] = logits[0];
        let mut labels: Vec<u32> = (0..n).map(|_| rng.below(classes)).collect();
        for l in labels.iter_mut().rev().take(pad) {
            *l = IGNORE;
        }
        let dl0 = as_act(dtype, rng.vec(p.logits_len()));
        let (lb, yb, db) = (up_act(dtype, &logits), up_u32(&labels), up_act(dtype, &dl0));
        let (loss, correct) = (up(&[0.5f32]), up_u32(&[7]));
        let launch = cross_entropy::softmax_cross_entropy(
            k(),
            &p,
            lb.view(),
            yb.view(),
            db.view(),
            loss.view(),
            correct.view(),
            None,
        );
        run(launch.unwrap());
        let mut want = dl0.clone();
        let (want_loss, want_correct) = cpu::softmax_cross_entropy(&mut want, &logits, &labels, &p);
        check(
            &format!("softmax_cross_entropy[{dtype}] dlogits case {i}"),
            rng.seed,
            &read_act(&db),
            &want,
            tol_for(dtype, GRAD),
        );
        check(
            &format!("softmax_cross_entropy[{dtype}] loss case {i}"),
            rng.seed,
            &read(&loss),
            &[0.5 + want_loss],
            FWD,
        );
        assert_eq!(
            read_u32(&correct),
            [7 + want_correct],
            "correct count, case {i} (seed {})",
            rng.seed
        );
    }
}

fn sgd_update_matches_reference() {
    let mut rng = Rand::new();
    // (lr, momentum, weight decay, nesterov): plain SGD (the d2l recipe), each term alone,
    // and all together; three steps each so the momentum buffer matters.
    let cases = [
        (0.1, 0.0, 0.0, false),
        (0.05, 0.9, 0.0, false),
        (0.1, 0.0, 5e-4, false),
        (0.02, 0.9, 1e-3, true),
    ];
    for (i, &(lr, mom, wd, nesterov)) in cases.iter().enumerate() {
        let count = 1000 + i as u32 * 77;
        let p = SgdParams::new(count, lr, mom, wd, nesterov).unwrap();
        let mut param = rng.vec(count as u64);
        let mut vel = vec![0.0; count as usize];
        let (pb, vb) = (up(&param), up(&vel));
        for step in 0..3 {
            let grad = rng.vec(count as u64);
            let gb = up(&grad);
            let velocity = (mom > 0.0).then(|| vb.view());
            let none = sgd::SgdInputs::default();
            run(sgd::sgd_update(k(), &p, pb.view(), gb.view(), velocity, none).unwrap());
            cpu::sgd_update(&mut param, &grad, &mut vel, &p);
            check(
                &format!("sgd_update case {i} step {step}"),
                rng.seed,
                &read(&pb),
                &param,
                FWD,
            );
        }
    }
    assert!(SgdParams::new(10, 0.1, 1.5, 0.0, false).is_err());
    assert!(SgdParams::new(10, f32::NAN, 0.0, 0.0, false).is_err());
}

/// Adam and AdamW, with and without weight decay, over four steps (the bias corrections
/// change every step), against the f64 reference.
fn adam_update_matches_reference() {
    let mut rng = Rand::new();
    // (lr, weight decay, decoupled): Adam, Adam with L2, AdamW.
    let cases = [(1e-3, 0.0, false), (1e-2, 1e-2, false), (1e-3, 0.05, true)];
    for (i, &(lr, wd, decoupled)) in cases.iter().enumerate() {
        let count = 900 + i as u32 * 101;
        let base = AdamParams::new(count, lr, (0.9, 0.999), 1e-8, wd, decoupled).unwrap();
        let mut param = rng.vec(count as u64);
        let (mut m, mut v) = (vec![0.0; count as usize], vec![0.0; count as usize]);
        let (pb, mb, vb) = (up(&param), up(&m), up(&v));
        for step in 1..=4 {
            let p = base.at_step(step);
            let grad = rng.vec(count as u64);
            let gb = up(&grad);
            let none = sgd::SgdInputs::default();
            let moments = (mb.view(), vb.view());
            run(adam::adam_update(k(), &p, pb.view(), gb.view(), moments, none).unwrap());
            cpu::adam_update(&mut param, &grad, &mut m, &mut v, &p);
            let what = format!("adam_update case {i} step {step}");
            check(&what, rng.seed, &read(&pb), &param, FWD);
            check(&what, rng.seed, &read(&vb), &v, FWD);
        }
    }
    assert!(AdamParams::new(10, 1e-3, (1.0, 0.999), 1e-8, 0.0, false).is_err());
    assert!(AdamParams::new(10, 1e-3, (0.9, 0.999), 0.0, 0.0, false).is_err());
}

/// Multi-label: per-label weights, padding rows, a batch wider than the workgroup.
fn sigmoid_cross_entropy_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    // (batch, labels, padding rows)
    for (i, &(n, classes, pad)) in [(1u32, 3u32, 0usize), (37, 14, 0), (300, 5, 9)]
        .iter()
        .enumerate()
    {
        let p = CrossEntropyParams::new(n, classes).unwrap();
        let logits = as_act(dtype, rng.range(p.logits_len(), -5.0, 5.0));
        let mut targets: Vec<u32> = (0..p.logits_len()).map(|_| rng.below(2)).collect();
        for row in (n as usize - pad)..n as usize {
            targets[row * classes as usize] = IGNORE;
        }
        let weights: Vec<f32> = (0..classes)
            .map(|_| 0.5 + 4.0 * rng.range(1, 0.0, 1.0)[0])
            .collect();
        let (lb, yb, wb) = (up_act(dtype, &logits), up_u32(&targets), up(&weights));
        let db = up_act(dtype, &vec![0.0; p.logits_len() as usize]);
        let (loss, correct) = (up(&[0.25f32]), up_u32(&[2]));
        let launch = cross_entropy::sigmoid_cross_entropy(
            k(),
            &p,
            lb.view(),
            yb.view(),
            wb.view(),
            db.view(),
            (loss.view(), correct.view()),
            None,
        );
        run(launch.unwrap());
        let (want_loss, want_grad, want_right) =
            cpu::sigmoid_cross_entropy(&logits, &targets, &weights, (n as usize, classes as usize));
        let what = |x: &str| format!("sigmoid_cross_entropy[{dtype}] {x} case {i}");
        check(
            &what("dlogits"),
            rng.seed,
            &read_act(&db),
            &want_grad,
            tol_for(dtype, GRAD),
        );
        check(
            &what("loss"),
            rng.seed,
            &read(&loss),
            &[0.25 + want_loss as f32],
            FWD,
        );
        assert_eq!(
            read_u32(&correct),
            vec![2 + want_right],
            "{}",
            what("correct")
        );
    }
}
