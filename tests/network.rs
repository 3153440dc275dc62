//! Whole networks on the GPU against the plain CPU reference (explicit concatenation, a
//! batch norm per layer with its own statistics, conv before pool in transitions): the
//! loss and the gradient of EVERY parameter after one training step, and the plan's
//! promise that dense blocks concatenate in place.

use densenet_wgpu::model::layout::ParamRole;
use densenet_wgpu::model::plan::Cmd;
use densenet_wgpu::model::reference_net::reference_step;
use densenet_wgpu::model::{DenseNetConfig, Init, Plan, SgdConfig, Stem};
use densenet_wgpu::{Gpu, GpuOptions};

fn gpu() -> &'static Gpu {
    static GPU: std::sync::OnceLock<Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::new(&GpuOptions::default())
            .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
    })
}

fn seed() -> u64 {
    std::env::var("DENSENET_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.parse().expect("DENSENET_SEED must be an integer"),
    )
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
    }
}

const PLAIN_SGD: SgdConfig = SgdConfig {
    lr: 0.1,
    momentum: 0.0,
    weight_decay: 0.0,
    nesterov: false,
};

fn matches_reference(cfg: &DenseNetConfig, batch: u32) {
    matches_reference_with(cfg, batch, u64::MAX);
}

fn matches_reference_with(cfg: &DenseNetConfig, batch: u32, max_binding: u64) {
    let seed = seed();
    let gpu = gpu();
    let plan = Plan::with_binding_limit(gpu, cfg, batch, PLAIN_SGD, max_binding).unwrap();
    let mut params = plan.layout.init_params(cfg.init, seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    // Batch-norm scales and shifts away from 1 and 0: with a zero shift, BN -> ReLU ->
    // max-pool -> BN is invariant to the first scale and its gradient would be exactly 0.
    for (slot, role) in plan.layout.params.slots.iter().zip(&plan.layout.roles) {
        let base = match role {
            ParamRole::Gamma => 1.0,
            ParamRole::Beta => 0.0,
            _ => continue,
        };
        for v in &mut params[slot.offset as usize..][..slot.len as usize] {
            *v = base + rng.f32() - 0.5;
        }
    }
    plan.write_params(gpu, &params).unwrap();
    let x: Vec<f32> = (0..plan.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(gpu, &x, &labels).unwrap();
    plan.reset_metrics(gpu);
    plan.submit_train(gpu);
    let (loss_sum, _) = plan.read_metrics(gpu).unwrap();
    let grads: Vec<f32> = gpu.read_all(&plan.grads).unwrap();

    let want = reference_step(cfg, &plan.layout, &params, &x, &labels);
    let loss = loss_sum / batch as f64;
    assert!(
        (loss - want.loss).abs() <= 1e-4 * want.loss.abs(),
        "loss {loss} vs reference {} (seed {seed})",
        want.loss
    );
    println!("{:?}: loss {loss:.6} vs {:.6}", cfg.stem, want.loss);
    // Every parameter tensor: largest difference relative to the tensor's largest gradient.
    // Conv biases feed only batch norms, which subtract the mean, so their true gradient is
    // zero and both sides hold rounding noise: their scale is floored at 1e-3 of the
    // network's largest gradient (the noise is near 1e-7 of it), which still catches any
    // real error.
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
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let diff: Vec<f32> = got.iter().zip(exp).map(|(a, b)| a - b).collect();
        println!(
            "  {:<34} rel err {err:.2e}  l2 {:.2e}  max|g| {scale:.2e}",
            slot.name,
            norm(&diff) / norm(exp).max(1e-30)
        );
    }
}

#[test]
fn imagenet_stem_network_matches_reference() {
    matches_reference(&small(Stem::ImageNet { channels: 4 }, 16, None), 3);
}

/// The stem's conv output planned as if bindings held only half of it: the stem runs in
/// two channel groups, each bound as its own range, as the d2l network does at batch 256 on
/// adapters with 128 MiB bindings.
#[test]
fn stem_in_channel_groups_matches_reference() {
    // Groups start on aligned elements (channel slices of gamma, beta, bias, and planes).
    let align = (gpu().limits.min_storage_buffer_offset_alignment / 4).max(4);
    let channels = 2 * align;
    let cfg = small(Stem::ImageNet { channels }, 16, None);
    let batch = align;
    let conv_out = channels as u64 * batch as u64 * 8 * 8 * 4;
    let plan = Plan::with_binding_limit(gpu(), &cfg, batch, PLAIN_SGD, conv_out / 2).unwrap();
    let pools = plan
        .train_commands()
        .iter()
        .filter(|c| c.name() == "maxpool_forward")
        .count();
    assert_eq!(pools, 2, "the stem runs in two channel groups");
    matches_reference_with(&cfg, batch, conv_out / 2);
}

#[test]
fn cifar_stem_network_matches_reference() {
    matches_reference(&small(Stem::Cifar { channels: 5 }, 9, None), 3);
}

#[test]
fn bottleneck_network_matches_reference() {
    matches_reference(&small(Stem::Cifar { channels: 4 }, 8, Some(2)), 3);
}

#[test]
fn dense_blocks_concatenate_in_place() {
    let cfg = small(Stem::ImageNet { channels: 4 }, 16, None);
    let plan = Plan::new(gpu(), &cfg, 3, PLAIN_SGD).unwrap();
    for cmds in [plan.train_commands(), plan.eval_commands()] {
        let names: Vec<&str> = cmds.iter().map(Cmd::name).collect();
        assert!(
            names.iter().all(|n| !n.starts_with("concat")),
            "a concatenation kernel in the plan: {names:?}"
        );
        // The only non-dispatch command is clear_buffer: no copy exists in the plan.
        assert!(names.contains(&"conv2d_forward"));
    }
    assert_eq!(plan.blocks.len(), 2, "one activation buffer per block");
    let shape = cfg.block_shapes();
    for (buf, s) in plan.blocks.iter().zip(&shape) {
        assert_eq!(
            buf.len,
            (s.c_out * 3 * s.size * s.size) as u64,
            "sized for the final channels"
        );
    }
}

#[test]
fn d2l_has_the_lectures_parameter_count() {
    let layout = densenet_wgpu::model::Layout::new(&DenseNetConfig::d2l(), 1);
    assert_eq!(layout.parameter_count(), 758_226);
    let shapes = DenseNetConfig::d2l().block_shapes();
    let channels: Vec<(u32, u32)> = shapes.iter().map(|b| (b.c_in, b.c_out)).collect();
    assert_eq!(channels, [(64, 192), (96, 224), (112, 240), (120, 248)]);
}
