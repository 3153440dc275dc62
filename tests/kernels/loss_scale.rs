//! Dynamic loss scaling on the GPU: the check flags exactly inf and NaN, the update halves
//! the scale on overflow and doubles it after the interval, the loss gradient is scaled, and
//! the optimizer unscales the gradients or skips the step.

use crate::support::harness::{case, Case};
use crate::support::*;
use densenet_wgpu::ops::cross_entropy::{self, CrossEntropyParams};
use densenet_wgpu::ops::grad_clip::{self, GradClipParams};
use densenet_wgpu::ops::loss_scale::{self, LossScaleParams, LossScaleState};
use densenet_wgpu::ops::sgd::{self, SgdInputs, SgdParams};
use densenet_wgpu::reference as cpu;
use densenet_wgpu::GpuBuffer;

pub fn cases() -> Vec<Case> {
    vec![
        case(
            "loss_scale::loss_scale_flags_exactly_inf_and_nan",
            loss_scale_flags_exactly_inf_and_nan,
        ),
        case(
            "loss_scale::loss_scale_doubles_after_the_interval_of_clean_steps",
            loss_scale_doubles_after_the_interval_of_clean_steps,
        ),
        case(
            "loss_scale::scaled_loss_gradient_and_unscaled_update",
            scaled_loss_gradient_and_unscaled_update,
        ),
        case(
            "loss_scale::gradient_clipping_by_global_norm",
            gradient_clipping_by_global_norm,
        ),
    ]
}

fn state_buffer(s: LossScaleState) -> GpuBuffer {
    up_u32(&s.to_words())
}

fn state_of(b: &GpuBuffer) -> LossScaleState {
    LossScaleState::from_words(&read_u32(b))
}

/// One step of check + update on `grads` from `state`.
fn step(p: &LossScaleParams, grads: &GpuBuffer, state: &GpuBuffer) {
    let check = loss_scale::loss_scale_check(k(), p, grads.view(), state.view()).unwrap();
    let update = loss_scale::loss_scale_update(k(), p, state.view()).unwrap();
    run(vec![check, update]);
}

fn loss_scale_flags_exactly_inf_and_nan() {
    let mut rng = Rand::new();
    let count = 70_001; // past one workgroup row of the folded grid
    let p = LossScaleParams::new(count, 1000).unwrap();
    let start = LossScaleState {
        scale: 1024.0,
        ..LossScaleState::initial()
    };
    for (what, bad) in [
        ("finite", None),
        ("largest finite", Some(f32::MAX)),
        ("+inf", Some(f32::INFINITY)),
        ("-inf", Some(f32::NEG_INFINITY)),
        ("NaN", Some(f32::NAN)),
    ] {
        let mut g = rng.vec(count as u64);
        if let Some(v) = bad {
            g[rng.below(count) as usize] = v;
        }
        let (grads, state) = (up(&g), state_buffer(start));
        step(&p, &grads, &state);
        let s = state_of(&state);
        let overflow = bad.is_some_and(|v| !v.is_finite());
        let want = match overflow {
            true => (512.0, 0, 1),
            false => (1024.0, 1, 0),
        };
        assert_eq!((s.scale, s.clean, s.skipped), want, "{what}: {s:?}");
        assert!(!s.overflow, "{what}: the update clears the flag");
    }
}

fn loss_scale_doubles_after_the_interval_of_clean_steps() {
    let p = LossScaleParams::new(4, 3).unwrap();
    let grads = up(&[1.0, -2.0, 0.0, 3.0]);
    let state = state_buffer(LossScaleState {
        scale: 8.0,
        ..LossScaleState::initial()
    });
    let mut seen = Vec::new();
    for _ in 0..7 {
        step(&p, &grads, &state);
        let s = state_of(&state);
        seen.push((s.scale, s.clean));
    }
    let want = [
        (8.0, 1),
        (8.0, 2),
        (16.0, 0),
        (16.0, 1),
        (16.0, 2),
        (32.0, 0),
        (32.0, 1),
    ];
    assert_eq!(seen, want);
    assert!(LossScaleParams::new(4, 0).is_err());
}

/// The loss gradient times the scale (the summed loss unscaled); SGD divides by the scale,
/// and leaves parameters and velocity alone on a flagged step.
fn scaled_loss_gradient_and_unscaled_update() {
    let mut rng = Rand::new();
    let ce = CrossEntropyParams::new(6, 5).unwrap();
    let logits = rng.range(ce.logits_len(), -3.0, 3.0);
    let labels: Vec<u32> = (0..6).map(|_| rng.below(5)).collect();
    let state = state_buffer(LossScaleState {
        scale: 1024.0,
        ..LossScaleState::initial()
    });
    let (lb, yb, db) = (up(&logits), up_u32(&labels), up(&[0.0; 30]));
    let (loss, correct) = (up(&[0.0f32]), up_u32(&[0]));
    let scaled = ce.with_loss_scale();
    let views = (lb.view(), yb.view(), db.view(), loss.view(), correct.view());
    let launch = cross_entropy::softmax_cross_entropy(
        k(),
        &scaled,
        views.0,
        views.1,
        views.2,
        views.3,
        views.4,
        Some(state.view()),
    );
    run(launch.unwrap());
    let mut want = vec![0.0; 30];
    let (want_loss, _) = cpu::softmax_cross_entropy(&mut want, &logits, &labels, &ce);
    let want: Vec<f32> = want.iter().map(|v| v * 1024.0).collect();
    check("scaled dlogits", rng.seed, &read(&db), &want, GRAD);
    check("unscaled loss", rng.seed, &read(&loss), &[want_loss], FWD);
    // The state must be given exactly when the params say so.
    let unscaled = cross_entropy::softmax_cross_entropy(
        k(),
        &ce,
        views.0,
        views.1,
        views.2,
        views.3,
        views.4,
        Some(state.view()),
    );
    assert!(unscaled.is_err());

    let count = 500;
    let p = SgdParams::new(count, 0.1, 0.9, 1e-3, false)
        .unwrap()
        .with_loss_scale();
    let param = rng.vec(count as u64);
    let grad = rng.vec(count as u64);
    let (pb, gb, vb) = (up(&param), up(&grad), up(&vec![0.0; count as usize]));
    run(sgd::sgd_update(
        k(),
        &p,
        pb.view(),
        gb.view(),
        Some(vb.view()),
        SgdInputs {
            scale_state: Some(state.view()),
            clip: None,
        },
    )
    .unwrap());
    let (mut want, mut vel) = (param.clone(), vec![0.0; count as usize]);
    let unscaled: Vec<f32> = grad.iter().map(|g| g / 1024.0).collect();
    cpu::sgd_update(&mut want, &unscaled, &mut vel, &p);
    check("unscaled update", rng.seed, &read(&pb), &want, FWD);
    check("unscaled velocity", rng.seed, &read(&vb), &vel, FWD);
    // A flagged step changes nothing.
    let flagged = state_buffer(LossScaleState {
        overflow: true,
        ..LossScaleState::initial()
    });
    let before = (read(&pb), read(&vb));
    run(sgd::sgd_update(
        k(),
        &p,
        pb.view(),
        gb.view(),
        Some(vb.view()),
        SgdInputs {
            scale_state: Some(flagged.view()),
            clip: None,
        },
    )
    .unwrap());
    assert_eq!((read(&pb), read(&vb)), before, "a skipped step");
}

/// Gradient clipping: the global norm and factor against the CPU (a count past one
/// workgroup chunk; a limit above the norm leaves the gradients alone), the norm of a scaled
/// loss's gradients unscaled, and the update multiplied by the factor.
fn gradient_clipping_by_global_norm() {
    let mut rng = Rand::new();
    let count = 70_001u32;
    let grad = rng.vec(count as u64);
    let norm = grad
        .iter()
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt();
    let gb = up(&grad);
    for (max, scale) in [(1.0f32, None), (1e6, None), (2.0, Some(64.0f32))] {
        let mut p = GradClipParams::new(count, max).unwrap();
        let state = scale.map(|s| {
            state_buffer(LossScaleState {
                scale: s,
                ..LossScaleState::initial()
            })
        });
        if state.is_some() {
            p = p.with_loss_scale();
        }
        let (parts, clip) = (poisoned(p.partials_len()), poisoned(2));
        let sv = state.as_ref().map(|s| s.view());
        run(grad_clip::grad_clip(k(), &p, gb.view(), parts.view(), clip.view(), sv).unwrap());
        let got = read(&clip);
        let want_norm = norm / scale.unwrap_or(1.0) as f64;
        let want_factor = (max as f64 / (want_norm + 1e-6)).min(1.0);
        check("clip norm", rng.seed, &got[..1], &[want_norm as f32], FWD);
        check(
            "clip factor",
            rng.seed,
            &got[1..],
            &[want_factor as f32],
            FWD,
        );
    }
    assert!(GradClipParams::new(10, 0.0).is_err());

    // The update applies the factor.
    let (p, clip) = (GradClipParams::new(count, 1.0).unwrap(), poisoned(2));
    let parts = poisoned(p.partials_len());
    run(grad_clip::grad_clip(k(), &p, gb.view(), parts.view(), clip.view(), None).unwrap());
    let factor = read(&clip)[1];
    let sp = SgdParams::new(count, 0.1, 0.0, 0.0, false)
        .unwrap()
        .with_clip();
    let param = rng.vec(count as u64);
    let pb = up(&param);
    let inputs = SgdInputs {
        scale_state: None,
        clip: Some(clip.view()),
    };
    run(sgd::sgd_update(k(), &sp, pb.view(), gb.view(), None, inputs).unwrap());
    let clipped: Vec<f32> = grad.iter().map(|g| g * factor).collect();
    let (mut want, mut vel) = (param, vec![0.0; count as usize]);
    cpu::sgd_update(&mut want, &clipped, &mut vel, &sp);
    check("clipped update", rng.seed, &read(&pb), &want, FWD);
}
