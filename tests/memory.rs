//! Planned memory, without a device: the d2l plans fit their budgets on adapters with small
//! and large bindings, evaluation plans need less than half of training, and a dense
//! block's memory grows linearly with depth where a naive DenseNet's grows quadratically.

use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{DeviceClass, Policy};
use densenet_wgpu::model::memory::{mib, Category};
use densenet_wgpu::model::naive::naive_training_bytes;
use densenet_wgpu::model::{
    DenseNetConfig, Init, Layout, MemoryPlan, Mode, PlanLimits, PlanTarget, Stem,
};

const MIB: u64 = 1 << 20;

/// llvmpipe's (128 MiB bindings: the d2l stem runs in two channel groups at batch 256), and
/// a large GPU's (2 GiB bindings: no channel groups, so the stem's temporaries are whole).
const LIMITS: [PlanLimits; 2] = [
    PlanLimits {
        align_bytes: 32,
        max_binding: 128 * MIB,
    },
    PlanLimits {
        align_bytes: 16,
        max_binding: 2048 * MIB - 4,
    },
];

/// The plan for a CPU driver's kernels (register tiles: the larger workspaces).
fn plan(cfg: &DenseNetConfig, batch: u32, mode: Mode, limits: PlanLimits) -> MemoryPlan {
    plan_for(cfg, batch, mode, limits, DeviceClass::Cpu)
}

fn plan_for(
    cfg: &DenseNetConfig,
    batch: u32,
    mode: Mode,
    limits: PlanLimits,
    class: DeviceClass,
) -> MemoryPlan {
    let layout = Layout::new(cfg, limits.align());
    let target = PlanTarget {
        limits,
        dtype: DType::F32,
        policy: Policy::auto(class),
    };
    MemoryPlan::new(cfg, &layout, batch, mode, true, &target).unwrap()
}

#[test]
fn d2l_at_batch_256_fits_its_budget() {
    let cfg = DenseNetConfig::d2l();
    for (limits, class) in LIMITS
        .into_iter()
        .flat_map(|l| [(l, DeviceClass::Cpu), (l, DeviceClass::Gpu)])
    {
        let train = plan_for(&cfg, 256, Mode::Train, limits, class)
            .report
            .total();
        let eval = plan_for(&cfg, 256, Mode::Eval, limits, class)
            .report
            .total();
        println!(
            "binding limit {} MiB, {class:?} kernels: training {:.1} MiB, evaluation {:.1} MiB",
            limits.max_binding / MIB,
            mib(train),
            mib(eval)
        );
        // PyTorch + cuDNN peaks at 1,586 MiB for this step on an H200.
        assert!(train <= 700 * MIB, "training plan {:.1} MiB", mib(train));
        assert!(2 * eval < train, "evaluation {:.1} MiB", mib(eval));
    }
}

#[test]
fn an_evaluation_plan_has_no_training_state() {
    let cfg = DenseNetConfig::small();
    let eval = plan(&cfg, 64, Mode::Eval, LIMITS[0]);
    let b = &eval.buffers;
    assert!(b.grads.is_none() && b.velocity.is_none() && b.batch_mean.is_none());
    assert_eq!(eval.report.get(Category::Gradients), 0);
    let grads: Vec<&str> = eval
        .tensors()
        .iter()
        .filter(|t| t.spec.category == Category::Gradients)
        .map(|t| t.spec.name.as_str())
        .collect();
    assert!(
        grads.is_empty(),
        "gradients in an evaluation plan: {grads:?}"
    );
    let train = plan(&cfg, 64, Mode::Train, LIMITS[0]);
    assert!(
        train.buffers.velocity.is_some(),
        "momentum keeps a velocity"
    );
}

/// Sharing by lifetime: the plan's tensors take less than their sum, and no slot holds two
/// tensors live in the same stage.
#[test]
fn tensors_share_slots_only_when_their_lifetimes_do_not_overlap() {
    let m = plan(&DenseNetConfig::d2l(), 64, Mode::Train, LIMITS[1]);
    let specs = m.tensors();
    let slots = &m.placement.slot_of;
    for (i, a) in specs.iter().enumerate() {
        assert!(a.spec.bytes() <= m.placement.slot_bytes[slots[i]]);
        for (j, b) in specs.iter().enumerate().skip(i + 1) {
            let overlap = a.first <= b.last && b.first <= a.last;
            assert!(
                slots[i] != slots[j] || !overlap,
                "{} and {} share a slot while both live",
                a.spec.name,
                b.spec.name
            );
        }
    }
    assert!(m.placement.total() * 2 < m.unshared_bytes());
}

/// One dense block of L layers: growth 12, 24 input channels, 32x32, batch 64.
fn block(layers: u32) -> DenseNetConfig {
    DenseNetConfig {
        in_channels: 3,
        image_size: 32,
        classes: 10,
        stem: Stem::Cifar { channels: 24 },
        blocks: vec![layers],
        growth_rate: 12,
        bottleneck: None,
        compression: 0.5,
        conv_bias: false,
        init: Init::KaimingNormal,
        layer_stats: false,
        multi_label: false,
    }
}

/// Feature-map memory (activations, their gradients, workspaces): everything but the
/// parameter state and the per-channel statistics. Parameters themselves grow
/// quadratically with depth in any DenseNet (each layer's conv reads all channels before
/// it), in a plan and in the naive figure alike, so they are left out of both.
#[test]
fn planned_bytes_grow_linearly_with_depth_and_naive_bytes_quadratically() {
    let depths = [8u32, 16, 32, 64];
    let limits = LIMITS[1];
    let planned: Vec<u64> = depths
        .iter()
        .map(|&l| {
            let r = plan(&block(l), 64, Mode::Train, limits).report;
            r.total() - r.get(Category::Parameters) - r.get(Category::Statistics)
        })
        .collect();
    let naive: Vec<u64> = depths
        .iter()
        .map(|&l| {
            let cfg = block(l);
            let layout = Layout::new(&cfg, limits.align());
            naive_training_bytes(&cfg, &layout, 64, true, DType::F32).feature_maps
        })
        .collect();
    for (i, l) in depths.iter().enumerate() {
        println!(
            "L = {l}: planned {:.1} MiB, naive {:.1} MiB",
            mib(planned[i]),
            mib(naive[i])
        );
    }
    // Per added layer, from one depth to the next (the depths double: 8, 16, 32 more layers).
    let per_layer =
        |v: &[u64], i: usize| (v[i + 1] - v[i]) as f64 / (depths[i + 1] - depths[i]) as f64;
    let planned_steps: Vec<f64> = (0..3).map(|i| per_layer(&planned, i)).collect();
    let naive_steps: Vec<f64> = (0..3).map(|i| per_layer(&naive, i)).collect();
    println!("bytes per added layer: planned {planned_steps:?}, naive {naive_steps:?}");
    for s in &planned_steps[1..] {
        let ratio = s / planned_steps[0];
        assert!(
            (0.95..=1.05).contains(&ratio),
            "planned increments {planned_steps:?}"
        );
    }
    // Quadratic: the cost of a layer grows with the layers before it.
    assert!(naive_steps[1] > 1.5 * naive_steps[0] && naive_steps[2] > 1.5 * naive_steps[1]);
}
