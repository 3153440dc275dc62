//! f16 activations through whole networks: one training step against the f32 reference
//! (the loss, every parameter's unscaled gradient, and an update that used them unscaled),
//! the evaluation logits of an f16 plan, a step whose scaled loss gradient overflows f16
//! (skipped: nothing changes but the halved scale and the skip count), and the memory.

mod support;

use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{DeviceClass, Policy};
use densenet_wgpu::model::reference_net::{reference_eval, reference_step};
use densenet_wgpu::model::{DenseNetConfig, Init, Layout, MemoryPlan, Mode, Plan, PlanLimits};
use densenet_wgpu::model::{PlanTarget, SgdConfig, Stem};
use densenet_wgpu::ops::loss_scale::LossScaleState;
use densenet_wgpu::ops::sgd::SgdParams;
use densenet_wgpu::reference as cpu;
use densenet_wgpu::Kernels;
use support::harness::{case, note, F16};
use support::{check, f16_rounded, gpu, gpu_arc, k, seed};

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case(
            "f16_training_step_matches_the_f32_reference",
            f16_training_step_matches_the_f32_reference,
        )
        .needs(F16),
        case(
            "f16_evaluation_matches_the_f32_reference",
            f16_evaluation_matches_the_f32_reference,
        )
        .needs(F16),
        case(
            "f16_step_whose_gradients_overflow_is_skipped",
            f16_step_whose_gradients_overflow_is_skipped,
        )
        .needs(F16),
        case(
            "f16_plans_take_at_most_55_percent_of_f32",
            f16_plans_take_at_most_55_percent_of_f32,
        ),
    ])
}

fn small(stem: Stem, image_size: u32) -> DenseNetConfig {
    DenseNetConfig {
        in_channels: 2,
        image_size,
        classes: 5,
        stem,
        blocks: vec![2, 2],
        growth_rate: 3,
        bottleneck: Some(2),
        compression: 0.5,
        conv_bias: false,
        init: Init::KaimingNormal,
        layer_stats: false,
        multi_label: false,
    }
}

const OPT: SgdConfig = SgdConfig {
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 1e-4,
    nesterov: false,
    clip_norm: None,
    adam: None,
};

/// A plan's loss scale set to `scale` (nothing skipped yet).
fn set_scale(plan: &Plan, scale: f32) {
    let state = LossScaleState {
        scale,
        ..LossScaleState::initial()
    };
    plan.write_loss_scale(gpu(), state).unwrap();
}

/// A batch for `plan`: f16-exact inputs (so the reference sees what the plan stores).
fn batch(plan: &Plan, cfg: &DenseNetConfig, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let labels = (0..plan.batch).map(|_| rng.u32(..cfg.classes)).collect();
    (f16_rounded(&x), labels)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// |got - want| / |want| in the L2 norm.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let d: Vec<f32> = got.iter().zip(want).map(|(a, b)| a - b).collect();
    (dot(&d, &d) / dot(want, want)).sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

/// One f16 step against the f32 reference, on the kernels CPU drivers and GPUs get.
fn f16_training_step_matches_the_f32_reference() {
    let gpu_kernels = Kernels::new(gpu_arc().clone(), Policy::auto(DeviceClass::Gpu));
    let cases = [
        (small(Stem::Cifar { channels: 4 }, 8), k()),
        (small(Stem::ImageNet { channels: 4 }, 16), &gpu_kernels),
    ];
    for (cfg, k) in cases {
        let seed = seed();
        let plan = Plan::train_in(k, &cfg, 4, OPT, DType::F16).unwrap();
        assert_eq!(plan.precision(), DType::F16);
        let params = plan.layout.init_params(cfg.init, seed);
        plan.write_params(gpu(), &params).unwrap();
        set_scale(&plan, 256.0);
        let (x, labels) = batch(&plan, &cfg, seed);
        plan.upload(gpu(), &x, &labels).unwrap();
        plan.reset_metrics(gpu());
        plan.submit_train(gpu()).unwrap();
        let (loss_sum, _) = plan.read_metrics(gpu()).unwrap();
        let state = plan.read_loss_scale(gpu()).unwrap().unwrap();
        assert_eq!((state.scale, state.skipped), (256.0, 0), "{state:?}");
        let b = &plan.buffers;
        let scaled: Vec<f32> = gpu().read_all(b.grads.as_ref().unwrap()).unwrap();
        let grads: Vec<f32> = scaled.iter().map(|g| g / 256.0).collect();

        let want = reference_step(&cfg, &plan.layout, &params, &x, &labels);
        let loss = loss_sum / 4.0;
        assert!(
            (loss - want.loss).abs() <= 1e-2 * want.loss,
            "{:?}: loss {loss} vs {} (seed {seed})",
            cfg.stem,
            want.loss
        );
        // Activation gradients stored in f16 lose digits wherever batch norm's backward
        // cancels (dy - mean(dy) - xhat * mean(dy * xhat)), and a ReLU mask flips where an
        // f16 activation rounds across 0; the error grows from the head (a few 1e-4 on the
        // classifier) towards the stem (tens of percent on small tensors for some seeds).
        // The classifier is checked tightly, the whole gradient by its direction.
        for slot in plan
            .layout
            .params
            .slots
            .iter()
            .filter(|s| s.name.starts_with("head.linear."))
        {
            let r = slot.offset as usize..(slot.offset + slot.len) as usize;
            let err = rel_l2(&grads[r.clone()], &want.grads[r]);
            assert!(
                err <= 1e-2,
                "{:?} {}: {err:.2e} (seed {seed})",
                cfg.stem,
                slot.name
            );
        }
        let cos = cosine(&grads, &want.grads);
        note(format!(
            "{:?}: gradient cosine {cos:.5}, relative error {:.2e}",
            cfg.stem,
            rel_l2(&grads, &want.grads)
        ));
        assert!(
            cos >= 0.95,
            "{:?}: gradient cosine {cos} (seed {seed})",
            cfg.stem
        );
        // The update used the unscaled gradients.
        let n = params.len() as u32;
        let p = SgdParams::new(n, OPT.lr, OPT.momentum, OPT.weight_decay, OPT.nesterov).unwrap();
        let (mut updated, mut velocity) = (params.clone(), vec![0f32; params.len()]);
        cpu::sgd_update(&mut updated, &grads, &mut velocity, &p);
        let got: Vec<f32> = gpu().read_all(&b.params).unwrap();
        check("f16 step's update", seed, &got, &updated, (1e-6, 1e-5));
    }
}

/// The evaluation pass of an f16 plan against the f32 reference's logits.
fn f16_evaluation_matches_the_f32_reference() {
    let seed = seed();
    let cfg = small(Stem::ImageNet { channels: 4 }, 16);
    let plan = Plan::eval_in(k(), &cfg, 5, DType::F16).unwrap();
    assert!(
        plan.buffers.loss_scale.is_none(),
        "no loss scale in evaluation"
    );
    let params = plan.layout.init_params(cfg.init, seed);
    plan.write_params(gpu(), &params).unwrap();
    let s = plan.layout.stats.len as usize;
    let mut rng = fastrand::Rng::with_seed(seed ^ 7);
    let rm: Vec<f32> = (0..s).map(|_| rng.f32() * 0.2).collect();
    let rv: Vec<f32> = (0..s).map(|_| 0.5 + rng.f32()).collect();
    gpu().write(&plan.buffers.running_mean, &rm).unwrap();
    gpu().write(&plan.buffers.running_var, &rv).unwrap();
    let (x, labels) = batch(&plan, &cfg, seed);
    plan.upload(gpu(), &x, &labels).unwrap();
    plan.reset_metrics(gpu());
    plan.submit_eval(gpu());
    let (_, _, want) = reference_eval(&cfg, &plan.layout, &params, (&rm, &rv), &x, &labels);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let got = plan.read_logits(gpu()).unwrap();
    check("f16 logits", seed, &got, &want, (1e-2 * scale, 1e-2));
}

/// A loss scale so large that the f16 loss gradient overflows: the step is skipped (the
/// parameters and the momentum keep every bit), the scale halves and the skip is counted;
/// the next step at a sane scale updates.
fn f16_step_whose_gradients_overflow_is_skipped() {
    let seed = seed();
    let cfg = small(Stem::Cifar { channels: 4 }, 8);
    let plan = Plan::train_in(k(), &cfg, 4, OPT, DType::F16).unwrap();
    plan.write_params(gpu(), &plan.layout.init_params(cfg.init, seed))
        .unwrap();
    let (x, labels) = batch(&plan, &cfg, seed);
    plan.upload(gpu(), &x, &labels).unwrap();
    let b = &plan.buffers;
    let read = |buf| -> Vec<u32> {
        let v: Vec<f32> = gpu().read_all(buf).unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    };
    let before = (read(&b.params), read(b.velocity.as_ref().unwrap()));
    set_scale(&plan, 16_777_216.0);
    plan.submit_train(gpu()).unwrap();
    let s = plan.read_loss_scale(gpu()).unwrap().unwrap();
    assert_eq!(
        (s.scale, s.skipped, s.clean, s.overflow),
        (8_388_608.0, 1, 0, false)
    );
    let after = (read(&b.params), read(b.velocity.as_ref().unwrap()));
    assert!(before == after, "a skipped step changes no parameter");
    set_scale(&plan, 64.0);
    plan.submit_train(gpu()).unwrap();
    let s = plan.read_loss_scale(gpu()).unwrap().unwrap();
    assert_eq!((s.scale, s.skipped, s.clean), (64.0, 0, 1));
    assert!(read(&b.params) != before.0, "a clean step updates");
}

/// The d2l training plan at batch 256 in f16 takes at most 55% of the f32 plan's bytes, for
/// the kernels of both device classes, with large bindings and with llvmpipe's 128 MiB ones
/// (the stem then runs in channel groups).
fn f16_plans_take_at_most_55_percent_of_f32() {
    let cfg = DenseNetConfig::d2l();
    for max_binding in [2048 << 20, 128 << 20] {
        let limits = PlanLimits {
            align_bytes: 32,
            max_binding,
        };
        let layout = Layout::new(&cfg, limits.align());
        for class in [DeviceClass::Cpu, DeviceClass::Gpu] {
            let total = |dtype| {
                let target = PlanTarget {
                    limits,
                    dtype,
                    policy: Policy::auto(class),
                };
                MemoryPlan::new(&cfg, &layout, 256, Mode::Train, false, &target)
                    .unwrap()
                    .report
                    .total()
            };
            let (f32_bytes, f16_bytes) = (total(DType::F32), total(DType::F16));
            let ratio = f16_bytes as f64 / f32_bytes as f64;
            let mib = |b| b as f64 / (1 << 20) as f64;
            note(format!(
                "{class:?} kernels, {} MiB bindings: f32 {:.1} MiB, f16 {:.1} MiB ({ratio:.3})",
                max_binding >> 20,
                mib(f32_bytes),
                mib(f16_bytes)
            ));
            assert!(ratio <= 0.55, "{class:?}: f16 plan is {ratio:.3} of f32");
        }
    }
}
