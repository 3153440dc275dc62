//! How fast this machine prepares ChestX-ray14-like images for densenet121: 1024x1024 8-bit
//! gray PNGs (smooth anatomy-like shading plus noise), decoded, made RGB and resized to
//! 224x224 with Pillow's bilinear filter, as `--dataset csv` and `--dataset folder` load them,
//! on 1 core and on every core. Prints images/s.
//!
//!     cargo run --release --example decode_rate -- [IMAGES]     (default 24)

use std::time::Instant;

use densenet_wgpu::data::{map_all, resize};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(24, |a| a.parse().expect("IMAGES: a whole number"));
    let dir = std::env::temp_dir().join(format!("decode-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let mut rng = fastrand::Rng::with_seed(7);
    let files: Vec<std::path::PathBuf> = (0..n)
        .map(|i| {
            let (cx, cy) = (400.0 + rng.f32() * 200.0, 450.0 + rng.f32() * 150.0);
            let img = image::GrayImage::from_fn(1024, 1024, |x, y| {
                let (dx, dy) = ((x as f32 - cx) / 300.0, (y as f32 - cy) / 380.0);
                let body = (1.0 - (dx * dx + dy * dy)).max(0.0).sqrt();
                let ribs = 0.5 + 0.5 * ((y as f32) / 23.0).sin();
                let v = 30.0 + 150.0 * body * (0.8 + 0.2 * ribs) + rng.f32() * 12.0;
                image::Luma([v.min(255.0) as u8])
            });
            let path = dir.join(format!("{i:05}.png"));
            img.save(&path).expect("writing a PNG");
            path
        })
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    println!(
        "{n} images of 1024x1024 gray, {:.0} KiB each on average",
        bytes as f64 / n as f64 / 1024.0
    );
    let prepare = |path: &std::path::PathBuf| {
        let img = image::open(path).expect("decoding a PNG");
        resize::rgb(&img.to_rgb8(), 224, 224)
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    for threads in [1, cores] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        let start = Instant::now();
        let out = pool.install(|| map_all(&files, prepare));
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(out.len(), n);
        println!(
            "{threads} thread(s): {:.1} images/s ({:.1} per core)",
            n as f64 / secs,
            n as f64 / secs / threads as f64
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
