use std::sync::Arc;
fn main() {
    let gpu = Arc::new(densenet_wgpu::Gpu::new(&Default::default()).unwrap());
    println!("{:?}", gpu.info.backend);
    let k = densenet_wgpu::Kernels::with_default_policy(gpu.clone());
    for s in densenet_wgpu::ops::SHADERS {
        for kern in s.kernels() {
            if kern.dtype != densenet_wgpu::gpu::DType::F32 { continue; }
            let t = std::time::Instant::now();
            let r = k.pipeline(kern);
            println!("{:50} {:8.1} ms {}", kern.label(), t.elapsed().as_secs_f64()*1e3, r.is_ok());
        }
    }
}
