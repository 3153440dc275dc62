//! Class activation maps (Zhou et al. 2016, as CheXNet draws them): the last dense block's
//! feature maps after the head's BN -> ReLU, weighted by the classifier's row of a class,
//! summed over channels; normalized, upsampled to the image and overlaid as a heat map.

use anyhow::{anyhow, Result};

use crate::checkpoint::Checkpoint;
use crate::model::Layout;

/// What a map needs from a checkpoint: the head BN's per-channel (scale, shift) from its
/// running statistics, and the classifier's weights (K, C).
pub struct Head {
    pub affine: Vec<(f32, f32)>,
    pub weight: Vec<f32>,
    pub channels: usize,
}

impl Head {
    pub fn of(ck: &Checkpoint) -> Result<Head> {
        let layout = Layout::new(&ck.config, 1);
        let c = layout.head.channels as usize;
        let get = |name: &str| {
            ck.tensors
                .get(name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| anyhow!("the checkpoint lacks {name}"))
        };
        // The head's own running statistics (`layer_stats`), else its block's first c.
        let stats = match layout.head.running {
            Some(_) => "head.bn".to_string(),
            None => format!("blocks.{}", layout.blocks.len() - 1),
        };
        let (mean, var) = (
            get(&format!("{stats}.running_mean"))?,
            get(&format!("{stats}.running_var"))?,
        );
        let (gamma, beta) = (get("head.bn.weight")?, get("head.bn.bias")?);
        let eps = 1e-5f32;
        let affine = (0..c)
            .map(|i| {
                let scale = gamma[i] / (var[i] + eps).sqrt();
                (scale, beta[i] - mean[i] * scale)
            })
            .collect();
        Ok(Head {
            affine,
            weight: get("head.linear.weight")?,
            channels: c,
        })
    }

    /// The map of `class` over `plane` positions from one example's pre-BN features
    /// (C planes of `plane` values), normalized to [0, 1].
    pub fn map(&self, features: &[f32], plane: usize, class: usize) -> Vec<f32> {
        let w = &self.weight[class * self.channels..][..self.channels];
        let mut m = vec![0f32; plane];
        for (c, (&(scale, shift), &wc)) in self.affine.iter().zip(w).enumerate() {
            for (o, &f) in m.iter_mut().zip(&features[c * plane..][..plane]) {
                *o += wc * (f * scale + shift).max(0.0);
            }
        }
        let (lo, hi) = m
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = (hi - lo).max(f32::MIN_POSITIVE);
        m.iter().map(|v| (v - lo) / span).collect()
    }
}

/// A jet-like color for t in [0, 1]: blue, cyan, yellow, red.
fn jet(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let ramp = |c: f32| (1.5 - (4.0 * t - c).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// `img` with `map` (side x side, [0, 1]) upsampled bilinearly to its size and blended in
/// at half strength.
pub fn overlay(img: &image::RgbImage, map: &[f32], side: usize) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let at = |x: f32, y: f32| {
        // Cell centers at (i + 0.5) / side of the image.
        let fx = (x * side as f32 - 0.5).clamp(0.0, (side - 1) as f32);
        let fy = (y * side as f32 - 0.5).clamp(0.0, (side - 1) as f32);
        let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
        let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
        let v = |x, y| map[y * side + x];
        let top = v(x0, y0) * (1.0 - ax) + v(x1, y0) * ax;
        let bottom = v(x0, y1) * (1.0 - ax) + v(x1, y1) * ax;
        top * (1.0 - ay) + bottom * ay
    };
    image::RgbImage::from_fn(w, h, |x, y| {
        let t = at((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
        let heat = jet(t);
        let p = img.get_pixel(x, y).0;
        image::Rgb(std::array::from_fn(|c| {
            (0.5 * p[c] as f32 + 0.5 * 255.0 * heat[c]).round() as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map follows the weighted, rectified features: one hot channel with a positive
    /// weight puts the maximum where that channel is largest.
    #[test]
    fn the_map_peaks_where_the_weighted_features_do() {
        let head = Head {
            affine: vec![(1.0, 0.0), (1.0, -10.0)],
            weight: vec![1.0, 5.0, -1.0, 0.0],
            channels: 2,
        };
        // Channel 0 peaks at position 3; channel 1 is below its shift everywhere (ReLU 0).
        let f = [0.0, 1.0, 2.0, 9.0, 1.0, 1.0, 1.0, 1.0];
        let m = head.map(&f, 4, 0);
        assert_eq!(m, vec![0.0, 1.0 / 9.0, 2.0 / 9.0, 1.0]);
        let inverted = head.map(&f, 4, 1);
        assert_eq!(inverted[0], 1.0);
        assert_eq!(inverted[3], 0.0);
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([0, 0, 0]));
        let out = overlay(&img, &[0.0, 0.0, 0.0, 1.0], 2);
        // Bottom right is hot (red), top left cold (blue): jet's ends, at half strength.
        let (hot, cold) = (out.get_pixel(7, 7).0, out.get_pixel(0, 0).0);
        assert!(hot[0] > 50 && hot[2] == 0, "{hot:?}");
        assert!(cold[2] > 50 && cold[0] == 0, "{cold:?}");
    }
}
