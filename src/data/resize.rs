//! Pillow's bilinear resampling of an 8-bit single-channel image, reproduced bit for bit.
//!
//! torchvision's `Resize` (`InterpolationMode.BILINEAR`) on a PIL image calls
//! `Image.resize(size, Image.BILINEAR)`, which lands in Pillow's `ImagingResample`
//! (`src/libImaging/Resample.c`). That is not textbook bilinear interpolation:
//!
//! - it is a separable convolution with a triangle ("tent") filter whose support is 1 pixel
//!   when enlarging and is widened by the scale factor when shrinking, so a reduction
//!   averages every source pixel under the footprint (antialiasing) instead of sampling 2;
//! - each output pixel's weights are normalized to sum to 1 in `f64`, then turned into
//!   fixed-point integers with 22 fractional bits (32 bits less 8 for the value, less 2
//!   for headroom);
//! - the first pass's result is rounded and clamped to 8 bits before the second pass reads
//!   it, so which pass runs first matters. Pillow 13 runs the vertical pass first when the
//!   height loses more than twice as many pixels as the width does (to make the horizontal
//!   pass cheaper), and the horizontal pass first otherwise. (Pillow 12.3 and earlier ran
//!   the horizontal pass first, except, from 12.2, for an image more than 100 times taller
//!   than wide that shrinks vertically; this follows 13.)
//! - a pass whose dimension does not change is skipped (not run as an identity).
//!
//! A float implementation (the `image` crate's `Triangle` filter keeps its intermediate in
//! `f32`) lands 1/255 away on 12 to 16% of the pixels; this one gives Pillow's bytes. The
//! test `resize_matches_pillow_bilinear` in `tests/data.rs` holds it to a fixture written by
//! Pillow itself (`scripts/pil-resize-fixture.py`).

/// Fractional bits of the fixed-point weights: Pillow's `PRECISION_BITS` (32 - 8 - 2).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear filter: a triangle of half-width 1 (its `support`).
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// The weights of one output pixel: source pixels `start..start + weights.len()`.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Fixed-point weights mapping `in_size` source pixels to `out_size` output pixels along one
/// axis, the source region being the whole axis (Pillow's default box, `(0, 0, w, h)`).
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    // Pillow computes these in f64 from a box of f32 corners; for any real image size the
    // corners 0 and `in_size` are exact in f32, so `in_size as f64` is the same number.
    let scale = in_size as f64 / out_size as f64;
    // Shrinking widens the filter by the scale factor (antialiasing); enlarging keeps it.
    let filter_scale = scale.max(1.0);
    // The triangle's support (1.0) times filter_scale.
    let support = filter_scale;
    // Pillow (since 12.3) multiplies by this reciprocal rather than dividing by
    // filter_scale; the two can differ in the last bit, so the reciprocal it is.
    let inv_filter_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            // The output pixel's center in source coordinates (pixel centers at i + 0.5).
            let center = (xx as f64 + 0.5) * scale;
            // Pillow rounds the footprint's ends by adding 0.5 and truncating toward zero
            // (a C cast), then clamps them to the image: `as` truncates the same way.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (start..end)
                .map(|x| triangle((x as f64 - center + 0.5) * inv_filter_scale))
                .collect();
            // Normalize so the weights sum to 1 (near the borders part of the triangle
            // falls outside the image, and the remaining weights are scaled up).
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            // To fixed point, rounding half away from zero as Pillow's
            // `(int)(±0.5 + v * (1 << PRECISION_BITS))` does: the addition happens in f64
            // before the truncation, which `f64::round` would not reproduce exactly.
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = w
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            Taps { start, weights }
        })
        .collect()
}

/// One output value: the weighted sum in fixed point, rounded (the accumulator starts at one
/// half) and clamped to 0..=255, as Pillow's `clip8`.
fn apply(weights: &[i32], values: impl Iterator<Item = u8>) -> u8 {
    let acc = weights
        .iter()
        .zip(values)
        .fold(1i32 << (PRECISION_BITS - 1), |acc, (&k, v)| {
            acc + i32::from(v) * k
        });
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes the rows of a `h` x `w` plane to `out_w` columns.
fn horizontal(plane: &[u8], h: usize, w: usize, out_w: usize) -> Vec<u8> {
    let taps = taps(w, out_w);
    let mut out = Vec::with_capacity(h * out_w);
    for row in plane.chunks_exact(w).take(h) {
        out.extend(
            taps.iter()
                .map(|t| apply(&t.weights, row[t.start..].iter().copied())),
        );
    }
    out
}

/// Resizes the columns of a `h` x `w` plane to `out_h` rows.
fn vertical(plane: &[u8], h: usize, w: usize, out_h: usize) -> Vec<u8> {
    let taps = taps(h, out_h);
    let mut out = Vec::with_capacity(out_h * w);
    for t in &taps {
        out.extend((0..w).map(|x| {
            let column = plane[t.start * w + x..].iter().step_by(w).copied();
            apply(&t.weights, column)
        }));
    }
    out
}

/// A `h` x `w` 8-bit plane (row-major) resized to `out_h` x `out_w` exactly as Pillow 13's
/// `Image.resize((out_w, out_h), Image.BILINEAR)` resizes a mode "L" image (no `box`, no
/// `reducing_gap`: what torchvision's `Resize` passes).
///
/// # Panics
/// If a size is zero or `plane` is not `h * w` long.
pub fn bilinear(plane: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
    assert!(h > 0 && w > 0 && out_h > 0 && out_w > 0, "empty image");
    assert_eq!(plane.len(), h * w, "plane is not {h}x{w}");
    // A dimension that does not change is not resampled at all: no pass, no rounding.
    let (resize_w, resize_h) = (out_w != w, out_h != h);
    // Pillow's `ImagingResampleInner`: the vertical pass goes first when the height shrinks
    // by more rows than twice the columns the width shrinks by (signed: a growing width
    // counts negative). The intermediate is 8-bit either way, so the order shows.
    let (rows_lost, cols_lost) = (h as i64 - out_h as i64, w as i64 - out_w as i64);
    let vertical_first = rows_lost > 0 && rows_lost > 2 * cols_lost;
    if vertical_first {
        let p = vertical(plane, h, w, out_h);
        if resize_w {
            horizontal(&p, out_h, w, out_w)
        } else {
            p
        }
    } else {
        let p = if resize_w {
            horizontal(plane, h, w, out_w)
        } else {
            plane.to_vec()
        };
        if resize_h {
            vertical(&p, h, out_w, out_h)
        } else {
            p
        }
    }
}

/// An RGB image resized as torchvision's `Resize` resizes a PIL image after the
/// `convert("RGB")` of its image loaders: [`bilinear`] on each band, with the same weights.
pub fn rgb(img: &image::RgbImage, out_w: u32, out_h: u32) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let bands: Vec<Vec<u8>> = (0..3)
        .map(|c| {
            let plane: Vec<u8> = raw.iter().skip(c).step_by(3).copied().collect();
            bilinear(&plane, h, w, out_h as usize, out_w as usize)
        })
        .collect();
    let pixels = (0..(out_w * out_h) as usize)
        .flat_map(|i| [bands[0][i], bands[1][i], bands[2][i]])
        .collect();
    image::RgbImage::from_raw(out_w, out_h, pixels).expect("3 bands of out_w x out_h")
}
/// An image as the network's input: `channels` planes (1: gray, 3: RGB) of size x size in
/// [0, 1], made as training made its images (RGB, then Pillow's bilinear resize, then gray
/// where the network reads one channel).
pub fn planes(img: &image::DynamicImage, channels: u32, size: u32) -> Vec<f32> {
    let img = image::DynamicImage::ImageRgb8(rgb(&img.to_rgb8(), size, size));
    let raw = match channels {
        1 => img.to_luma8().into_raw(),
        _ => img.to_rgb8().into_raw(),
    };
    let c = channels as usize;
    let plane = (size * size) as usize;
    // Interleaved pixels to channel planes.
    let mut out = vec![0f32; c * plane];
    for (i, px) in raw.chunks(raw.len() / plane).enumerate() {
        for ch in 0..c {
            out[ch * plane + i] = px[ch.min(px.len() - 1)] as f32 / 255.0;
        }
    }
    out
}
/// The center `to` x `to` of planes of `from` x `from` (torchvision's CenterCrop: offsets
/// rounded half to even, as Python's round()).
pub fn center_crop(planes: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from <= to {
        return planes.to_vec();
    }
    let off = ((from - to) as f64 / 2.0).round_ties_even() as usize;
    let (from, to) = (from as usize, to as usize);
    let mut out = Vec::with_capacity(planes.len() / (from * from) * to * to);
    for p in planes.chunks(from * from) {
        for y in off..off + to {
            out.extend_from_slice(&p[y * from + off..][..to]);
        }
    }
    out
}
