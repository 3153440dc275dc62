//! Whole networks on the GPU against the plain CPU reference (explicit concatenation, a
//! batch norm per layer with its own statistics, BN and ReLU as separate ops, conv before
//! pool in transitions): after one training step, the loss, the gradient of EVERY
//! parameter, the batch statistics, the running statistics and the SGD update; then the
//! evaluation pass of the training plan and of an evaluation-only plan. Shared tensor slots
//! start filled with NaN, so a stage that reads a tensor before it is written fails.

mod support;

use densenet_wgpu::data::DatasetKind;
use densenet_wgpu::kernels::DeviceClass;
use densenet_wgpu::model::plan::Cmd;
use densenet_wgpu::model::reference_net::{reference_eval, reference_step, ReferenceStep};
use densenet_wgpu::model::{DenseNetConfig, Init, Layout, Mode, Plan, SgdConfig, Stem};
use densenet_wgpu::ops::sgd::SgdParams;
use densenet_wgpu::recipe::Preset;
use densenet_wgpu::reference as cpu;
use densenet_wgpu::{Gpu, GpuOptions, Kernels, Policy};
use support::harness::{case, note};
use support::{check, gpu, k, seed, FWD};

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case(
            "imagenet_stem_network_matches_reference",
            imagenet_stem_network_matches_reference,
        ),
        case(
            "stem_in_channel_groups_matches_reference",
            stem_in_channel_groups_matches_reference,
        ),
        case(
            "cifar_stem_network_matches_reference",
            cifar_stem_network_matches_reference,
        ),
        case(
            "bottleneck_network_matches_reference",
            bottleneck_network_matches_reference,
        ),
        case(
            "momentum_network_matches_reference",
            momentum_network_matches_reference,
        ),
        case(
            "network_with_gpu_kernels_matches_reference",
            network_with_gpu_kernels_matches_reference,
        ),
        case(
            "dense_blocks_concatenate_in_place",
            dense_blocks_concatenate_in_place,
        ),
        case(
            "d2l_has_the_lectures_parameter_count",
            d2l_has_the_lectures_parameter_count,
        ),
        case(
            "label_smoothing_reaches_the_training_loss",
            label_smoothing_reaches_the_training_loss,
        ),
        case(
            "clipped_step_matches_the_reference",
            clipped_step_matches_the_reference,
        ),
        case(
            "webgpu_default_limits_bc100_matches_reference",
            webgpu_default_limits_bc100_matches_reference,
        ),
    ])
}

/// Two blocks, a transition, stem and head.
fn small(stem: Stem, image_size: u32, bottleneck: Option<u32>) -> DenseNetConfig {
    DenseNetConfig {
        in_channels: 2,
        image_size,
        classes: 5,
        stem,
        blocks: vec![2, 2],
        growth_rate: 3,
        bottleneck,
        compression: 0.5,
        conv_bias: true,
        init: Init::KaimingNormal,
        layer_stats: false,
        multi_label: false,
    }
}

const PLAIN_SGD: SgdConfig = SgdConfig {
    lr: 0.1,
    momentum: 0.0,
    weight_decay: 0.0,
    nesterov: false,
    clip_norm: None,
    adam: None,
};

const NESTEROV: SgdConfig = SgdConfig {
    lr: 0.05,
    momentum: 0.9,
    weight_decay: 1e-3,
    nesterov: true,
    clip_norm: None,
    adam: None,
};

/// Parameters from `seed`, with batch-norm scales and shifts away from 1 and 0
/// ([`Layout::init_params_varied`]).
fn params(layout: &Layout, cfg: &DenseNetConfig, seed: u64) -> Vec<f32> {
    layout.init_params_varied(cfg.init, seed)
}

/// One training step and what it started from.
struct Stepped {
    params: Vec<f32>,
    x: Vec<f32>,
    labels: Vec<u32>,
    /// The mean loss over the batch.
    loss: f64,
    grads: Vec<f32>,
}

/// Parameters ([`params`]) and a batch drawn from `seed`, and one training step of `plan` on
/// them, every shared tensor slot filled with NaN first (a read before a write shows).
fn train_step(k: &Kernels, plan: &Plan, cfg: &DenseNetConfig, seed: u64) -> Stepped {
    let g = k.gpu();
    let params = params(&plan.layout, cfg, seed);
    plan.write_params(g, &params).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(g, &x, &labels).unwrap();
    plan.fill_tensors(g, f32::NAN);
    plan.reset_metrics(g);
    plan.submit_train(g).unwrap();
    let (loss_sum, _) = plan.read_metrics(g).unwrap();
    let grads = g.read_all(plan.buffers.grads.as_ref().unwrap()).unwrap();
    Stepped {
        params,
        x,
        labels,
        loss: loss_sum / plan.batch as f64,
        grads,
    }
}

fn matches_reference(cfg: &DenseNetConfig, batch: u32) {
    matches_reference_with(cfg, batch, u64::MAX, PLAIN_SGD);
}

fn matches_reference_with(cfg: &DenseNetConfig, batch: u32, max_binding: u64, opt: SgdConfig) {
    matches_reference_on(k(), cfg, batch, max_binding, opt);
}

fn matches_reference_on(
    k: &Kernels,
    cfg: &DenseNetConfig,
    batch: u32,
    max_binding: u64,
    opt: SgdConfig,
) {
    let seed = seed();
    let plan = Plan::train_with_binding_limit(k, cfg, batch, opt, max_binding).unwrap();
    let Stepped {
        params,
        x,
        labels,
        loss,
        grads,
    } = train_step(k, &plan, cfg, seed);
    let want = reference_step(cfg, &plan.layout, &params, &x, &labels);
    assert!(
        (loss - want.loss).abs() <= 1e-4 * want.loss.abs(),
        "loss {loss} vs reference {} (seed {seed})",
        want.loss
    );
    note(format!(
        "{:?}: loss {loss:.6} vs {:.6}",
        cfg.stem, want.loss
    ));
    check_grads(&plan, &grads, &want, seed);
    check_stats(k, &plan, &want, (batch, cfg), seed);
    check_update(k, &plan, &params, &want.grads, (opt, seed));
    check_eval(k, &plan, cfg, (&x, &labels), seed);
}

/// Every parameter tensor: largest difference relative to the tensor's largest gradient.
/// Conv biases feed only batch norms, which subtract the mean, so their true gradient is
/// zero and both sides hold rounding noise: their scale is floored at 1e-3 of the network's
/// largest gradient (the noise is near 1e-7 of it), which still catches any real error.
fn check_grads(plan: &Plan, grads: &[f32], want: &ReferenceStep, seed: u64) {
    let largest = want.grads.iter().fold(0f32, |m, v| m.max(v.abs()));
    for slot in &plan.layout.params.slots {
        let r = slot.offset as usize..(slot.offset + slot.len) as usize;
        let (got, exp) = (&grads[r.clone()], &want.grads[r]);
        let scale = exp
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-3 * largest);
        let err = got
            .iter()
            .zip(exp)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(
            err <= 1e-3,
            "{}: gradient relative error {err:.2e} (max |grad| {scale:.2e}); replay with DENSENET_SEED={seed}",
            slot.name
        );
        note(format!(
            "  {:<34} rel err {err:.2e}  max|g| {scale:.2e}",
            slot.name
        ));
    }
}

/// The batch statistics of every normalized channel, and the running statistics after one
/// update from (0, 1): 0.1 of the batch mean, 0.9 + 0.1 of the unbiased batch variance.
fn check_stats(
    k: &Kernels,
    plan: &Plan,
    want: &ReferenceStep,
    (batch, cfg): (u32, &DenseNetConfig),
    seed: u64,
) {
    let g = k.gpu();
    let b = &plan.buffers;
    let read = |buf| -> Vec<f32> { g.read_all(buf).unwrap() };
    check(
        "batch mean",
        seed,
        &read(b.batch_mean.as_ref().unwrap()),
        &want.batch_mean,
        FWD,
    );
    check(
        "batch var",
        seed,
        &read(b.batch_var.as_ref().unwrap()),
        &want.batch_var,
        FWD,
    );
    let mut running_var = Vec::new();
    let mut running_mean = Vec::new();
    for slot in &plan.layout.stats.slots {
        // Values per channel: N times the spatial size where the statistics were taken.
        let m = batch as f64 * stats_plane(&plan.layout, cfg, &slot.name) as f64;
        for c in 0..slot.len as usize {
            let i = slot.offset as usize + c;
            running_mean.push((0.1 * want.batch_mean[i] as f64) as f32);
            let unbiased = want.batch_var[i] as f64 * m / (m - 1.0);
            running_var.push((0.9 + 0.1 * unbiased) as f32);
        }
    }
    check(
        "running mean",
        seed,
        &read(&b.running_mean),
        &running_mean,
        FWD,
    );
    check(
        "running var",
        seed,
        &read(&b.running_var),
        &running_var,
        FWD,
    );
}

/// H*W of the tensor a statistics slot normalizes.
fn stats_plane(layout: &Layout, cfg: &DenseNetConfig, name: &str) -> u32 {
    let size = match name {
        "stem.bn" => cfg.image_size.div_ceil(2),
        _ => {
            let b: usize = name
                .trim_start_matches("blocks.")
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("a block's statistics");
            layout.blocks[b].shape.size
        }
    };
    size * size
}

/// The SGD step: parameters (and momentum) as the reference optimizer leaves them.
fn check_update(
    k: &Kernels,
    plan: &Plan,
    params: &[f32],
    grads: &[f32],
    (opt, seed): (SgdConfig, u64),
) {
    let g = k.gpu();
    let n = params.len() as u32;
    let p = SgdParams::new(n, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov).unwrap();
    let (mut want, mut velocity) = (params.to_vec(), vec![0f32; params.len()]);
    cpu::sgd_update(&mut want, grads, &mut velocity, &p);
    let b = &plan.buffers;
    let got: Vec<f32> = g.read_all(&b.params).unwrap();
    // The update moves each parameter by lr * (gradient terms): compare at that scale.
    let scale = opt.lr as f64 * grads.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    check(
        "updated parameters",
        seed,
        &got,
        &want,
        (1e-3 * scale, 1e-6),
    );
    assert_eq!(
        b.velocity.is_some(),
        opt.momentum > 0.0,
        "momentum keeps a velocity"
    );
    if let Some(v) = &b.velocity {
        let got: Vec<f32> = g.read_all(v).unwrap();
        let vs = grads.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        check("velocity", seed, &got, &velocity, (1e-3 * vs, 1e-6));
    }
}

/// The evaluation pass with the updated parameters and running statistics: the training
/// plan's and an evaluation-only plan's logits against the reference's.
fn check_eval(
    k: &Kernels,
    plan: &Plan,
    cfg: &DenseNetConfig,
    (x, labels): (&[f32], &[u32]),
    seed: u64,
) {
    let g = k.gpu();
    let b = &plan.buffers;
    let params: Vec<f32> = g.read_all(&b.params).unwrap();
    let rm: Vec<f32> = g.read_all(&b.running_mean).unwrap();
    let rv: Vec<f32> = g.read_all(&b.running_var).unwrap();
    let (loss, _, logits) = reference_eval(cfg, &plan.layout, &params, (&rm, &rv), x, labels);
    let eval = Plan::eval(k, cfg, plan.batch).unwrap();
    assert_eq!(eval.mode(), Mode::Eval);
    assert!(eval.buffers.grads.is_none() && eval.buffers.batch_mean.is_none());
    eval.write_params(g, &params).unwrap();
    g.write(&eval.buffers.running_mean, &rm).unwrap();
    g.write(&eval.buffers.running_var, &rv).unwrap();
    for (what, p) in [("training plan", plan), ("evaluation plan", &eval)] {
        p.upload(g, x, labels).unwrap();
        p.fill_tensors(g, f32::NAN);
        p.reset_metrics(g);
        p.submit_eval(g);
        let got: Vec<f32> = g.read_all(&p.buffers.logits).unwrap();
        check(
            &format!("{what} eval logits"),
            seed,
            &got,
            &logits,
            (1e-4, 1e-3),
        );
        let (sum, _) = p.read_metrics(g).unwrap();
        let mean = sum / labels.len() as f64;
        assert!(
            (mean - loss).abs() <= 1e-4 * loss.abs().max(1.0),
            "{what} eval loss {mean} vs {loss}"
        );
    }
}

fn imagenet_stem_network_matches_reference() {
    matches_reference(&small(Stem::ImageNet { channels: 4 }, 16, None), 3);
}

/// The stem's conv output planned as if bindings held only half of it: the stem runs in
/// two channel groups, each bound as its own range, as the d2l network does at batch 256 on
/// adapters with 128 MiB bindings.
fn stem_in_channel_groups_matches_reference() {
    // Groups start on aligned elements (channel slices of gamma, beta, bias, and planes).
    let align = (gpu().limits.min_storage_buffer_offset_alignment / 4).max(4);
    let channels = 2 * align;
    let cfg = small(Stem::ImageNet { channels }, 16, None);
    let batch = align;
    let conv_out = channels as u64 * batch as u64 * 8 * 8 * 4;
    let plan = Plan::train_with_binding_limit(k(), &cfg, batch, PLAIN_SGD, conv_out / 2).unwrap();
    let pools = plan
        .train_commands()
        .iter()
        .filter(|c| c.name() == "maxpool_forward")
        .count();
    assert_eq!(pools, 2, "the stem runs in two channel groups");
    matches_reference_with(&cfg, batch, conv_out / 2, PLAIN_SGD);
}

fn cifar_stem_network_matches_reference() {
    matches_reference(&small(Stem::Cifar { channels: 5 }, 9, None), 3);
}

fn bottleneck_network_matches_reference() {
    matches_reference(&small(Stem::Cifar { channels: 4 }, 8, Some(2)), 3);
}

/// Nesterov momentum with weight decay: the first update and the velocity it leaves.
fn momentum_network_matches_reference() {
    let cfg = small(Stem::Cifar { channels: 4 }, 8, None);
    matches_reference_with(&cfg, 4, u64::MAX, NESTEROV);
}

/// The whole step with the kernels GPUs get (workgroup-tiled convolutions, split batch-norm
/// statistics and backward), whatever the adapter, on DenseNet-BC with the ImageNet stem.
fn network_with_gpu_kernels_matches_reference() {
    let k = &Kernels::new(support::gpu_arc().clone(), Policy::auto(DeviceClass::Gpu));
    let cfg = small(Stem::ImageNet { channels: 4 }, 16, Some(2));
    matches_reference_on(k, &cfg, 3, u64::MAX, NESTEROV);
    let names: Vec<String> = Plan::train(k, &cfg, 3, PLAIN_SGD)
        .unwrap()
        .train_commands()
        .iter()
        .filter_map(|c| match c {
            Cmd::Run(d) => Some(d.kernel().label()),
            _ => None,
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "conv2d_forward[wgtile,f32]"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("pack")),
        "no packing pass: {names:?}"
    );
}

fn dense_blocks_concatenate_in_place() {
    let cfg = small(Stem::ImageNet { channels: 4 }, 16, None);
    let plan = Plan::train(k(), &cfg, 3, PLAIN_SGD).unwrap();
    for cmds in [plan.train_commands(), plan.eval_commands()] {
        let names: Vec<&str> = cmds.iter().map(|c| c.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with("concat") && *n != "batchnorm_forward"),
            "a concatenation or a stored BN output in the plan: {names:?}"
        );
        // The only non-dispatch command is clear_buffer: no copy exists in the plan.
        assert!(names.contains(&"conv2d_forward"));
    }
    let shape = cfg.block_shapes();
    for (b, s) in shape.iter().enumerate() {
        let t = plan
            .tensor(&format!("blocks.{b}"))
            .expect("one tensor per block");
        assert_eq!(
            t.len,
            (s.c_out * 3 * s.size * s.size) as u64,
            "sized for the final channels"
        );
    }
}

fn d2l_has_the_lectures_parameter_count() {
    let layout = Layout::new(&DenseNetConfig::d2l(), 1);
    assert_eq!(layout.parameter_count(), 758_226);
    let shapes = DenseNetConfig::d2l().block_shapes();
    let channels: Vec<(u32, u32)> = shapes.iter().map(|b| (b.c_in, b.c_out)).collect();
    assert_eq!(channels, [(64, 192), (96, 224), (112, 240), (120, 248)]);
}

/// Label smoothing set on a training plan reaches its loss dispatch: the step's loss is the
/// smoothed loss of the logits it computed.
fn label_smoothing_reaches_the_training_loss() {
    use densenet_wgpu::ops::cross_entropy::CrossEntropyParams;
    let cfg = small(Stem::Cifar { channels: 4 }, 8, None);
    let mut plan = Plan::train(k(), &cfg, 4, PLAIN_SGD).unwrap();
    let seed = seed();
    plan.write_params(gpu(), &params(&plan.layout, &cfg, seed))
        .unwrap();
    plan.set_label_smoothing(gpu(), 0.2).unwrap();
    assert!(plan.set_label_smoothing(gpu(), 1.0).is_err());
    let mut rng = fastrand::Rng::with_seed(seed);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..4).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(gpu(), &x, &labels).unwrap();
    plan.reset_metrics(gpu());
    plan.submit_train(gpu()).unwrap();
    let (loss, _) = plan.read_metrics(gpu()).unwrap();
    let logits = plan.read_logits(gpu()).unwrap();
    let ce = CrossEntropyParams::new(4, cfg.classes)
        .unwrap()
        .with_smoothing(0.2)
        .unwrap();
    let mut d = vec![0.0; logits.len()];
    let (want, _) = cpu::softmax_cross_entropy(&mut d, &logits, &labels, &ce);
    let plain = cpu::softmax_cross_entropy(
        &mut d,
        &logits,
        &labels,
        &CrossEntropyParams::new(4, cfg.classes).unwrap(),
    )
    .0;
    assert!(
        (loss - want as f64).abs() <= 1e-4 * want as f64,
        "{loss} vs {want} (plain {plain})"
    );
    assert!((want - plain).abs() > 1e-3, "smoothing changes the loss");
}

/// A training plan that clips: the update is the reference's with every gradient scaled by
/// max_norm / |grad| (the limit is far below this step's norm).
fn clipped_step_matches_the_reference() {
    let cfg = small(Stem::Cifar { channels: 4 }, 8, None);
    let opt = SgdConfig {
        clip_norm: Some(1e-3),
        ..NESTEROV
    };
    let plan = Plan::train(k(), &cfg, 4, opt).unwrap();
    let seed = seed();
    let params = params(&plan.layout, &cfg, seed);
    plan.write_params(gpu(), &params).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..4).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(gpu(), &x, &labels).unwrap();
    plan.submit_train(gpu()).unwrap();
    let want = reference_step(&cfg, &plan.layout, &params, &x, &labels);
    let norm = want
        .grads
        .iter()
        .map(|g| *g as f64 * *g as f64)
        .sum::<f64>()
        .sqrt();
    let clip: Vec<f32> = gpu().read_all(plan.buffers.clip.as_ref().unwrap()).unwrap();
    assert!(
        (clip[0] as f64 - norm).abs() <= 1e-3 * norm,
        "{clip:?} vs {norm}"
    );
    let factor = (1e-3 / (norm + 1e-6)) as f32;
    let clipped: Vec<f32> = want.grads.iter().map(|g| g * factor).collect();
    check_update(k(), &plan, &params, &clipped, (opt, seed));
}

/// A device created with exactly WebGPU's default limits: what a browser gives (256
/// invocations and 16 KiB of workgroup memory per workgroup, 8 storage buffers per stage,
/// 128 MiB per binding, 256-byte offset alignment, 4 bind groups).
fn webgpu_device() -> std::sync::Arc<Gpu> {
    let limits = wgpu::Limits::default();
    let opts = GpuOptions {
        limits: Some(limits.clone()),
        ..GpuOptions::default()
    };
    let gpu = Gpu::new(&opts).unwrap();
    assert_eq!(gpu.limits, limits);
    assert_eq!(gpu.limits.max_storage_buffers_per_shader_stage, 8);
    std::sync::Arc::new(gpu)
}

/// Within WebGPU's default limits, with the kernels of either device class: a DenseNet-BC
/// (bottlenecks, compression, ImageNet stem) matches the reference in every gradient,
/// statistic, update and logit; and the bc100 preset (100 layers) trains one step and
/// evaluates as the reference does, and gives the very bits the adapter's own limits give
/// (the limits move buffers, not sums).
fn webgpu_default_limits_bc100_matches_reference() {
    let web = webgpu_device();
    let small_bc = small(Stem::ImageNet { channels: 4 }, 16, Some(2));
    let bc100 = Preset::Bc100.config(DatasetKind::Cifar10, 10);
    assert!(bc100.bottleneck.is_some());
    for class in [DeviceClass::Cpu, DeviceClass::Gpu] {
        let k = Kernels::new(web.clone(), Policy::auto(class));
        note(format!("{class:?} kernels"));
        matches_reference_on(&k, &small_bc, 3, u64::MAX, NESTEROV);
    }
    let class = k().policy().class;
    let on_web = step_by_name(&Kernels::new(web, Policy::auto(class)), &bc100);
    let on_adapter = step_by_name(k(), &bc100);
    assert_eq!(on_web.loss.to_bits(), on_adapter.loss.to_bits());
    assert!(
        on_web.tensors == on_adapter.tensors,
        "other bits under WebGPU's limits"
    );
    assert!(on_web.logits == on_adapter.logits);
    // Against the reference: 100 layers of f32, and ReLU masks that flip where a value
    // rounds across 0, leave errors of up to a few percent in single gradient elements
    // (measured: 1.4e-3 relative for the whole gradient); the classifier's, which no mask
    // touches, is checked tightly, the whole gradient loosely.
    let want = &on_web.reference;
    let loss_err = (on_web.loss - want.loss).abs() / want.loss;
    assert!(loss_err <= 1e-5, "{} vs {}", on_web.loss, want.loss);
    let got: Vec<f32> = on_web
        .tensors
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    let whole = rel_l2(&got, &on_web.reference_grads);
    let mut at = 0;
    let mut head_err = f64::NAN;
    for (name, v) in &on_web.tensors {
        if name == "head.linear.weight" {
            head_err = rel_l2(v, &on_web.reference_grads[at..at + v.len()]);
        }
        at += v.len();
    }
    note(format!(
        "bc100: gradient relative L2 error {whole:.2e}, classifier {head_err:.2e}"
    ));
    assert!(
        head_err <= 1e-4,
        "bc100 classifier gradient relative L2 error {head_err:.2e}"
    );
    assert!(
        whole <= 1e-2,
        "bc100 gradient relative L2 error {whole:.2e}"
    );
    check(
        "bc100 eval logits",
        0,
        &on_web.logits,
        &on_web.reference_logits,
        (1e-4, 1e-3),
    );
}

/// One training step and one evaluation of `cfg` at batch 2 on `k`'s device from fixed
/// parameters and data: the loss, every gradient tensor by name, the evaluation logits
/// (with the updated parameters), and the reference's.
struct Step {
    loss: f64,
    tensors: Vec<(String, Vec<f32>)>,
    logits: Vec<f32>,
    reference: ReferenceStep,
    reference_grads: Vec<f32>,
    reference_logits: Vec<f32>,
}

fn step_by_name(k: &Kernels, cfg: &DenseNetConfig) -> Step {
    let (g, batch) = (k.gpu(), 2);
    let plan = Plan::train(k, cfg, batch, NESTEROV).unwrap();
    let Stepped {
        params,
        x,
        labels,
        loss,
        grads,
    } = train_step(k, &plan, cfg, 7);
    let reference = reference_step(cfg, &plan.layout, &params, &x, &labels);
    let by_slot = |v: &[f32]| -> Vec<(String, Vec<f32>)> {
        let slots = &plan.layout.params.slots;
        let range =
            |s: &densenet_wgpu::model::layout::Slot| s.offset as usize..(s.offset + s.len) as usize;
        slots
            .iter()
            .map(|s| (s.name.clone(), v[range(s)].to_vec()))
            .collect()
    };
    let tensors = by_slot(&grads);
    let reference_grads = by_slot(&reference.grads)
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    let updated: Vec<f32> = g.read_all(&plan.buffers.params).unwrap();
    let rm: Vec<f32> = g.read_all(&plan.buffers.running_mean).unwrap();
    let rv: Vec<f32> = g.read_all(&plan.buffers.running_var).unwrap();
    let (_, _, reference_logits) =
        reference_eval(cfg, &plan.layout, &updated, (&rm, &rv), &x, &labels);
    let eval = Plan::eval(k, cfg, batch).unwrap();
    eval.write_params(g, &updated).unwrap();
    g.write(&eval.buffers.running_mean, &rm).unwrap();
    g.write(&eval.buffers.running_var, &rv).unwrap();
    eval.upload(g, &x, &labels).unwrap();
    eval.reset_metrics(g);
    eval.submit_eval(g);
    Step {
        loss,
        tensors,
        logits: eval.read_logits(g).unwrap(),
        reference,
        reference_grads,
        reference_logits,
    }
}

/// |got - want| / |want| in the L2 norm.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum() };
    let d: Vec<f32> = got.iter().zip(want).map(|(a, b)| a - b).collect();
    (dot(&d, &d) / dot(want, want)).sqrt()
}
