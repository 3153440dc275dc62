//! Training-time augmentation on the loader thread, and the input normalization every pass
//! shares: zero-pad then crop back to size at a random offset, mirror left-right, and
//! per-channel (x - mean) / std. All in [0, 1] units after resizing, in that order, as
//! torchvision's RandomCrop(padding), RandomHorizontalFlip, ToTensor, Normalize.
//!
//! The random choices of an example come from the epoch's shuffling seed and the example's
//! index alone, never from thread timing, so a run and its resumption see the same pixels.

use serde::{Deserialize, Serialize};

use super::{Dataset, DatasetKind};

/// What the loader does to inputs. Crop and flip apply to training batches only; the
/// normalization to every batch (training, evaluation, prediction), so it is kept in the
/// recipe and the checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Pixels of zero padding on each side before the random crop (0: no crop).
    pub pad: u32,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Per-channel (mean, std) the inputs are normalized with, from the training split.
    pub normalize: Option<Vec<(f32, f32)>>,
    /// ImageNet's crops, from images stored at [`Augment::load_size`]: training takes a
    /// random box of 8-100% of the area, aspect 3/4 to 4/3, resized to the input
    /// (torchvision's RandomResizedCrop); evaluation the center (Resize(256) then
    /// CenterCrop(224), in proportion).
    #[serde(default)]
    pub resized_crop: bool,
}

/// What `--augment` asks for; normalization's statistics come from the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugmentSpec {
    pub pad: u32,
    pub flip: bool,
    pub normalize: bool,
    pub resized_crop: bool,
}

impl AugmentSpec {
    pub const NONE: AugmentSpec = AugmentSpec {
        pad: 0,
        flip: false,
        normalize: false,
        resized_crop: false,
    };

    /// Each dataset's default: CIFAR-10 and -100 as in the DenseNet paper (pad 4 and crop, flip,
    /// normalize); the digit sets crop only (pad 2: a mirrored digit or shoe is another
    /// thing); the synthetic set nothing (its shapes sit at random places already).
    pub fn default_for(kind: DatasetKind) -> AugmentSpec {
        match kind {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => AugmentSpec {
                pad: 4,
                flip: true,
                normalize: true,
                resized_crop: false,
            },
            DatasetKind::FashionMnist | DatasetKind::Mnist => AugmentSpec {
                pad: 2,
                ..Self::NONE
            },
            DatasetKind::Synthetic | DatasetKind::Folder => Self::NONE,
            // CheXNet: random horizontal flips, ImageNet normalization (from the weights).
            DatasetKind::Csv => AugmentSpec {
                flip: true,
                ..Self::NONE
            },
        }
    }

    /// `none`, or a comma-separated list of `crop` (pad 4), `crop=P`, `flip`, `normalize`.
    pub fn parse(text: &str) -> Result<AugmentSpec, String> {
        let mut spec = Self::NONE;
        if text.trim() == "none" {
            return Ok(spec);
        }
        for item in text.split(',').map(str::trim) {
            match item.split_once('=') {
                None if item == "crop" => spec.pad = 4,
                None if item == "flip" => spec.flip = true,
                None if item == "normalize" => spec.normalize = true,
                None if item == "resized-crop" => spec.resized_crop = true,
                Some(("crop", p)) => {
                    spec.pad = p
                        .parse()
                        .map_err(|_| format!("crop={p}: the padding must be a whole number"))?
                }
                _ => {
                    return Err(format!(
                        "{item:?}: choose none, or a list of crop, crop=PIXELS, flip, normalize, resized-crop"
                    ))
                }
            }
        }
        Ok(spec)
    }

    /// The augmentation, with normalization statistics taken from `train` when asked for.
    pub fn build(self, train: &Dataset) -> Augment {
        Augment {
            pad: self.pad,
            flip: self.flip,
            normalize: self.normalize.then(|| channel_stats(train)),
            resized_crop: self.resized_crop,
        }
    }
}

impl Augment {
    /// Whether a training batch changes at all beyond normalization.
    pub fn is_random(&self) -> bool {
        self.pad > 0 || self.flip || self.resized_crop
    }

    /// The size images are stored at for an input of `size`: larger by 256/224 with
    /// ImageNet's crops (torchvision's Resize(256) before CenterCrop(224)).
    pub fn load_size(&self, size: u32) -> u32 {
        stored_size(size, self.resized_crop)
    }

    /// The box (top, left, height, width) of example `index`'s random resized crop in an
    /// image of `h` x `w`, in an epoch shuffled with `seed`: torchvision's
    /// RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3, ten tries, then the
    /// largest centered box within the ratios), and its flip.
    pub fn resized_box(&self, seed: u64, index: usize, (h, w): (u32, u32)) -> ([u32; 4], bool) {
        let key = seed ^ (index as u64 + 1).wrapping_mul(0x9FB2_1C65_1E98_DF25);
        let mut rng = fastrand::Rng::with_seed(key);
        let flip = self.flip && rng.bool();
        let area = (h * w) as f64;
        let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        for _ in 0..10 {
            let target = area * (0.08 + rng.f64() * 0.92);
            let ratio = (lo + rng.f64() * (hi - lo)).exp();
            let bw = (target * ratio).sqrt().round() as u32;
            let bh = (target / ratio).sqrt().round() as u32;
            if bw > 0 && bw <= w && bh > 0 && bh <= h {
                let top = rng.u32(..=h - bh);
                let left = rng.u32(..=w - bw);
                return ([top, left, bh, bw], flip);
            }
        }
        let ratio = w as f64 / h as f64;
        let (bh, bw) = match ratio {
            r if r < 3.0 / 4.0 => (((w as f64) / (3.0 / 4.0)).round() as u32, w),
            r if r > 4.0 / 3.0 => (h, ((h as f64) * (4.0 / 3.0)).round() as u32),
            _ => (h, w),
        };
        ([(h - bh) / 2, (w - bw) / 2, bh, bw], flip)
    }

    /// The spec that rebuilds this augmentation (for a resumed run's overrides).
    pub fn spec(&self) -> AugmentSpec {
        AugmentSpec {
            pad: self.pad,
            flip: self.flip,
            normalize: self.normalize.is_some(),
            resized_crop: self.resized_crop,
        }
    }

    /// One line for logs: `crop (pad 4), flip, normalize` or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.pad > 0 {
            parts.push(format!("crop (pad {})", self.pad));
        }
        if self.resized_crop {
            parts.push("random resized crop (evaluation: center crop)".to_string());
        }
        if self.flip {
            parts.push("flip".to_string());
        }
        if self.normalize.is_some() {
            parts.push("normalize".to_string());
        }
        match parts.is_empty() {
            true => "none".to_string(),
            false => parts.join(", "),
        }
    }

    /// Crop offsets (y, x) in [0, 2 pad] and the flip of example `index` in an epoch
    /// shuffled with `seed`.
    pub fn choices(&self, seed: u64, index: usize) -> (u32, u32, bool) {
        let key = seed ^ (index as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut rng = fastrand::Rng::with_seed(key);
        let span = 2 * self.pad + 1;
        let (oy, ox) = (rng.u32(..span), rng.u32(..span));
        (oy, ox, self.flip && rng.bool())
    }

    /// Normalizes one example's planes (C, H, W) in place.
    pub fn normalize_planes(&self, x: &mut [f32], plane: usize) {
        let Some(stats) = &self.normalize else {
            return;
        };
        for (c, &(mean, std)) in stats.iter().enumerate() {
            for v in &mut x[c * plane..][..plane] {
                *v = (*v - mean) / std;
            }
        }
    }
}

/// One plane (H, W) padded by `pad` zeros on each side, cropped back to H x W from offset
/// (oy, ox) of the padded plane, then mirrored left-right when `flip`.
pub fn crop_flip(
    plane: &[f32],
    (h, w): (u32, u32),
    pad: u32,
    (oy, ox): (u32, u32),
    flip: bool,
) -> Vec<f32> {
    let (h, w) = (h as i64, w as i64);
    let mut out = vec![0f32; (h * w) as usize];
    for y in 0..h {
        for x in 0..w {
            let sy = y + oy as i64 - pad as i64;
            let sx = x + ox as i64 - pad as i64;
            if sy < 0 || sy >= h || sx < 0 || sx >= w {
                continue;
            }
            let dx = if flip { w - 1 - x } else { x };
            out[(y * w + dx) as usize] = plane[(sy * w + sx) as usize];
        }
    }
    out
}

/// The size images are stored at for an input of `size`: with ImageNet's `crops`, larger by
/// 256/224 (torchvision's Resize(256) before CenterCrop(224)).
pub fn stored_size(size: u32, crops: bool) -> u32 {
    match crops {
        true => (size as f64 * 256.0 / 224.0).round() as u32,
        false => size,
    }
}

/// Per-channel mean and standard deviation (population) of a dataset's pixels in [0, 1].
pub fn channel_stats(ds: &Dataset) -> Vec<(f32, f32)> {
    let plane = (ds.height * ds.width) as usize;
    (0..ds.channels as usize)
        .map(|c| {
            let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
            for i in 0..ds.len() {
                for &v in &ds.image(i)[c * plane..][..plane] {
                    let v = v as f64 / 255.0;
                    sum += v;
                    sq += v * v;
                    n += 1.0;
                }
            }
            let mean = sum / n.max(1.0);
            let var = (sq / n.max(1.0) - mean * mean).max(0.0);
            (mean as f32, var.sqrt().max(1e-6) as f32)
        })
        .collect()
}
