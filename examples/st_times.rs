use std::sync::Arc;
fn main() {
    let gpu = Arc::new(densenet_wgpu::Gpu::new(&Default::default()).unwrap());
    let k = densenet_wgpu::Kernels::with_default_policy(gpu.clone());
    let s = densenet_wgpu::selfcheck::suite(&k, |c| println!("{:40} {:.3}s", c.item.label(), c.seconds));
    println!("{}", s.seconds);
}
