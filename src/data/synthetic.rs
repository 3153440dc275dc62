//! A procedurally generated 10-class image set built into the binary, deterministic by seed.
//!
//! Each image is one stroke shape (bars, diagonals, plus, cross, ring, disk, square, corner)
//! of random size and position, drawn brighter OR darker than a random background, with
//! noise. Position and polarity change per image, so no fixed pixel weighting separates the
//! classes: softmax regression on raw pixels stays far below what a small convolutional
//! network reaches (a test checks it).

use super::{Dataset, Splits};

/// Images are SIZE x SIZE, one channel.
pub const SIZE: u32 = 24;
pub const TRAIN: usize = 12_000;
pub const TEST: usize = 2_000;

pub const CLASS_NAMES: [&str; 10] = [
    "horizontal bars",
    "vertical bars",
    "backslash",
    "slash",
    "plus",
    "cross",
    "ring",
    "disk",
    "square",
    "corner",
];

/// A shape as a distance function: how far pixel (x, y) is from the ink, in pixels.
fn distance(class: usize, x: f32, y: f32, cx: f32, cy: f32, r: f32) -> f32 {
    let seg = |ax: f32, ay: f32, bx: f32, by: f32| {
        let (dx, dy) = (bx - ax, by - ay);
        let t = (((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
        ((x - ax - t * dx).powi(2) + (y - ay - t * dy).powi(2)).sqrt()
    };
    let (l, t, rt, b) = (cx - r, cy - r, cx + r, cy + r);
    let h = r * 0.5;
    match class {
        0 => seg(l, cy - h, rt, cy - h).min(seg(l, cy + h, rt, cy + h)),
        1 => seg(cx - h, t, cx - h, b).min(seg(cx + h, t, cx + h, b)),
        2 => seg(l, t, rt, b),
        3 => seg(l, b, rt, t),
        4 => seg(l, cy, rt, cy).min(seg(cx, t, cx, b)),
        5 => seg(l, t, rt, b).min(seg(l, b, rt, t)),
        6 => (((x - cx).powi(2) + (y - cy).powi(2)).sqrt() - r).abs(),
        7 => (((x - cx).powi(2) + (y - cy).powi(2)).sqrt() - r).max(0.0),
        8 => seg(l, t, rt, t)
            .min(seg(rt, t, rt, b))
            .min(seg(rt, b, l, b))
            .min(seg(l, b, l, t)),
        _ => seg(l, t, l, b).min(seg(l, b, rt, b)),
    }
}

/// Draws one image of `class` into `out` (SIZE * SIZE bytes).
fn draw(class: usize, rng: &mut fastrand::Rng, out: &mut [u8]) {
    let s = SIZE as f32;
    let r = 3.5 + rng.f32() * 3.0;
    let margin = r + 1.5;
    let cx = margin + rng.f32() * (s - 2.0 * margin);
    let cy = margin + rng.f32() * (s - 2.0 * margin);
    let thickness = 1.2 + rng.f32() * 1.3;
    let dark_on_light = rng.bool();
    let background = if dark_on_light {
        0.6 + rng.f32() * 0.3
    } else {
        0.1 + rng.f32() * 0.3
    };
    let contrast = (0.35 + rng.f32() * 0.25) * if dark_on_light { -1.0 } else { 1.0 };
    for (i, px) in out.iter_mut().enumerate() {
        let (x, y) = (
            (i as u32 % SIZE) as f32 + 0.5,
            (i as u32 / SIZE) as f32 + 0.5,
        );
        let ink = (thickness * 0.5 + 0.5 - distance(class, x, y, cx, cy, r)).clamp(0.0, 1.0);
        // Roughly Gaussian noise: the sum of three uniforms.
        let noise = (rng.f32() + rng.f32() + rng.f32() - 1.5) * 0.12;
        let v = background + contrast * ink + noise;
        *px = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    }
}

fn split(count: usize, rng: &mut fastrand::Rng) -> Dataset {
    let pixels = (SIZE * SIZE) as usize;
    let mut images = vec![0u8; count * pixels];
    let mut labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    super::shuffle(rng, &mut labels);
    for (img, &label) in images.chunks_mut(pixels).zip(&labels) {
        draw(label as usize, rng, img);
    }
    Dataset {
        images,
        labels,
        channels: 1,
        height: SIZE,
        width: SIZE,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        targets: None,
    }
}

/// The train and test splits for `seed` (the same seed gives the same bytes).
pub fn generate(seed: u64) -> Splits {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5EED_DA7A);
    let train = split(TRAIN, &mut rng);
    let test = split(TEST, &mut rng);
    Splits { train, test }
}
