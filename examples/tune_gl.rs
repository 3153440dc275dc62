use std::sync::Arc;
use densenet_wgpu::tune::*;
fn main() {
    let gpu = Arc::new(densenet_wgpu::Gpu::new(&Default::default()).unwrap());
    let k = densenet_wgpu::Kernels::with_default_policy(gpu.clone());
    let cfg = densenet_wgpu::recipe::Preset::Tiny.config(densenet_wgpu::data::DatasetKind::Synthetic, 10);
    for budget in [1.0, 1.0] {
    let opts = TuneOptions { mode: TuneMode::Full, budget: Some(budget), cache: Some("/tmp/tc.json".into()), progress: false };
    let t = std::time::Instant::now();
    let r = tune(&k, (&cfg, 64, densenet_wgpu::model::Mode::Train, densenet_wgpu::gpu::DType::F32), &opts, None).unwrap();
    println!("{:.2}s {}", t.elapsed().as_secs_f64(), r.report.seconds);
    for l in &r.report.launches { if l.micros.is_some() { println!("{} {:?} {:?}", l.key, l.micros, l.source); } }
    }
}
