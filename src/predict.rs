//! Classifying image files with a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checkpoint::Checkpoint;
use crate::gpu::DType;
use crate::kernels::Kernels;
use crate::model::Plan;
use crate::ops::cross_entropy::IGNORE;

pub struct Prediction {
    pub path: PathBuf,
    pub class: usize,
    pub name: String,
    pub probability: f32,
}

/// An image file as the network's input: `channels` planes of size x size in [0, 1], resized
/// as training resized its images (RGB, then Pillow's bilinear resize, as torchvision).
pub fn load_image(path: &Path, channels: u32, size: u32) -> Result<Vec<f32>> {
    let img = image::open(path).with_context(|| format!("reading image {}", path.display()))?;
    Ok(crate::data::resize::planes(&img, channels, size))
}

/// Classifies `images` with the network of `checkpoint`, on an evaluation-only plan.
pub fn predict(
    k: &Kernels,
    checkpoint: &Path,
    images: &[PathBuf],
    precision: DType,
) -> Result<Vec<Prediction>> {
    let gpu = k.gpu();
    let ck = Checkpoint::load(checkpoint)?;
    let cfg = &ck.config;
    let batch = (images.len() as u32).clamp(1, 64);
    let plan = Plan::eval_in(k, cfg, batch, precision)?;
    ck.restore(gpu, &plan)?;
    let names = ck.class_names.clone();
    let (c, size) = (cfg.in_channels, cfg.image_size);
    let plane = (size * size) as usize;
    let mut out = Vec::new();
    for chunk in images.chunks(batch as usize) {
        let mut x = vec![0f32; (c * batch) as usize * plane];
        for (slot, path) in chunk.iter().enumerate() {
            let mut img = load_image(path, c, size)?;
            ck.recipe.augment.normalize_planes(&mut img, plane);
            for ch in 0..c as usize {
                let dst = (ch * batch as usize + slot) * plane;
                x[dst..dst + plane].copy_from_slice(&img[ch * plane..][..plane]);
            }
        }
        plan.upload(gpu, &x, &vec![IGNORE; batch as usize])?;
        plan.submit_eval(gpu);
        let logits = plan.read_logits(gpu)?;
        for (slot, path) in chunk.iter().enumerate() {
            let row = &logits[slot * cfg.classes as usize..][..cfg.classes as usize];
            let probs = crate::evaluate::probabilities(row);
            let (class, probability) =
                probs
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |(a, b), (i, &v)| if v > b { (i, v) } else { (a, b) },
                    );
            out.push(Prediction {
                path: path.clone(),
                class,
                name: names
                    .get(class)
                    .cloned()
                    .unwrap_or_else(|| class.to_string()),
                probability,
            });
        }
    }
    Ok(out)
}
