//! The deepest torchvision-style DenseNet whose training plan fits a memory budget: growth
//! 32, bottlenecks of 4k, blocks (6, 12, n, 48) (DenseNet-264's with its third block
//! grown), 224x224 RGB, 1000 classes, SGD with momentum, planned for a GPU (256-byte views,
//! 2 GiB bindings) without one.
//!
//!     cargo run --release --example deepest -- [GIB] [BATCH]     (defaults 16 and 64)

use densenet_wgpu::kernels::{DeviceClass, Policy};
use densenet_wgpu::model::{DenseNetConfig, Layout, MemoryPlan, Mode, PlanLimits, PlanTarget};
use densenet_wgpu::DType;

fn training_bytes(cfg: &DenseNetConfig, batch: u32, dtype: DType) -> u64 {
    let limits = PlanLimits {
        align_bytes: 256,
        max_binding: 2 << 30,
    };
    let target = PlanTarget {
        limits,
        dtype,
        policy: Policy::auto(DeviceClass::Gpu),
    };
    let layout = Layout::new(cfg, limits.align());
    let plan =
        MemoryPlan::new(cfg, &layout, batch, Mode::Train, true, &target).expect("a valid DenseNet");
    plan.report.total()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: f64 = args
        .next()
        .map_or(16.0, |a| a.parse().expect("GIB: a number"));
    let batch: u32 = args
        .next()
        .map_or(64, |a| a.parse().expect("BATCH: a whole number"));
    let budget = (gib * (1u64 << 30) as f64) as u64;
    let net = |n: u32| DenseNetConfig::torchvision(32, &[6, 12, n, 48], 64, 4, 1000);
    println!("| dtype | blocks | depth | parameters | training plan at batch {batch} |");
    println!("|---|---|---|---|---|");
    for dtype in [DType::F32, DType::F16] {
        // The plan grows with n: the largest n within the budget, by bisection.
        let (mut lo, mut hi) = (1u32, 4096u32);
        if training_bytes(&net(lo), batch, dtype) > budget {
            println!("| {dtype} | not even (6, 12, 1, 48) fits {gib} GiB | | | |");
            continue;
        }
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            match training_bytes(&net(mid), batch, dtype) <= budget {
                true => lo = mid,
                false => hi = mid - 1,
            }
        }
        let cfg = net(lo);
        let depth = 2 * cfg.blocks.iter().sum::<u32>() + 5;
        let params = Layout::new(&cfg, 1).parameter_count();
        let mib = training_bytes(&cfg, batch, dtype) as f64 / (1u64 << 20) as f64;
        println!(
            "| {dtype} | {:?} | DenseNet-{depth} | {params} | {mib:.0} MiB |",
            cfg.blocks
        );
    }
}
