//! Classifying image files with a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checkpoint::Checkpoint;
use crate::data::resize;
use crate::gpu::DType;
use crate::kernels::Kernels;
use crate::model::Plan;
use crate::ops::cross_entropy::IGNORE;

pub struct Prediction {
    pub path: PathBuf,
    pub class: usize,
    pub name: String,
    pub probability: f32,
    /// The class activation map written for it (`--cam`).
    pub cam: Option<PathBuf>,
    /// Multi-label: every label's name and probability, in label order.
    pub labels: Option<Vec<(String, f32)>>,
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
    cam: Option<&Path>,
) -> Result<Vec<Prediction>> {
    let gpu = k.gpu();
    let ck = Checkpoint::load(checkpoint)?;
    let cfg = &ck.config;
    let batch = (images.len() as u32).clamp(1, 64);
    let plan = Plan::eval_in(k, cfg, batch, precision)?;
    ck.restore(gpu, &plan)?;
    let names = ck.class_names.clone();
    let head = cam.map(|_| crate::cam::Head::of(&ck)).transpose()?;
    let mut out = Vec::new();
    for chunk in images.chunks(batch as usize) {
        let x = batch_input(&ck, chunk, batch as usize)?;
        // Multi-label plans take a row of targets per example.
        let per = if cfg.multi_label { cfg.classes } else { 1 };
        plan.upload(gpu, &x, &vec![IGNORE; (batch * per) as usize])?;
        plan.submit_eval(gpu);
        let logits = plan.read_logits(gpu)?;
        let features = match &head {
            Some(_) => Some(last_features(&plan, gpu, cfg.blocks.len() - 1)?),
            None => None,
        };
        for (slot, path) in chunk.iter().enumerate() {
            let row = &logits[slot * cfg.classes as usize..][..cfg.classes as usize];
            // Multi-label: each label's own sigmoid; else the softmax over classes.
            let probs: Vec<f32> = match cfg.multi_label {
                true => row.iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect(),
                false => crate::evaluate::probabilities(row),
            };
            let (class, probability) =
                probs
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |(a, b), (i, &v)| if v > b { (i, v) } else { (a, b) },
                    );
            let cam = match (&head, &features, cam) {
                (Some(h), Some((f, side)), Some(dir)) => {
                    let at = (slot, batch as usize);
                    Some(write_cams(
                        h,
                        (f, *side),
                        at,
                        (&probs, class),
                        path,
                        dir,
                        &ck,
                    )?)
                }
                _ => None,
            };
            let labels = cfg.multi_label.then(|| {
                probs
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| (names.get(i).cloned().unwrap_or_else(|| i.to_string()), p))
                    .collect()
            });
            out.push(Prediction {
                labels,
                cam,
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

/// The network's input for `paths` (C, n, H, W), each image prepared as `ck`'s evaluation
/// prepares it: ImageNet's transform where the run trained with its crops (resized to
/// 256/224 of the input, then the center), and its normalization.
fn batch_input(ck: &Checkpoint, paths: &[PathBuf], n: usize) -> Result<Vec<f32>> {
    let (c, size) = (ck.config.in_channels as usize, ck.config.image_size);
    let plane = (size * size) as usize;
    let mut x = vec![0f32; c * n * plane];
    let stored = ck.recipe.augment.load_size(size);
    for (slot, path) in paths.iter().enumerate() {
        let mut img = resize::center_crop(&load_image(path, c as u32, stored)?, stored, size);
        ck.recipe.augment.normalize_planes(&mut img, plane);
        for ch in 0..c {
            let dst = (ch * n + slot) * plane;
            x[dst..dst + plane].copy_from_slice(&img[ch * plane..][..plane]);
        }
    }
    Ok(x)
}

/// Writes an image's class activation maps into `dir`: the top class's; multi-label, one
/// per label above 0.5 (the top one when none is), named after the label. Returns the
/// first map's path.
fn write_cams(
    head: &crate::cam::Head,
    (features, side): (&[f32], usize),
    at: (usize, usize),
    (probs, top): (&[f32], usize),
    path: &Path,
    dir: &Path,
    ck: &Checkpoint,
) -> Result<PathBuf> {
    let multi = ck.config.multi_label;
    let chosen: Vec<usize> = match multi {
        true => (0..probs.len()).filter(|&i| probs[i] > 0.5).collect(),
        false => Vec::new(),
    };
    let classes = if chosen.is_empty() { vec![top] } else { chosen };
    let tag = |c: usize| {
        multi.then(|| {
            ck.class_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| c.to_string())
        })
    };
    let mut first = None;
    for c in classes {
        let drawn = write_cam(head, features, side, at, c, path, (dir, tag(c)))?;
        first.get_or_insert(drawn);
    }
    Ok(first.expect("at least the top class"))
}

/// The last dense block's features after an evaluation pass, as f32 (C, N, S, S), and S.
fn last_features(plan: &Plan, gpu: &crate::gpu::Gpu, block: usize) -> Result<(Vec<f32>, usize)> {
    let view = plan
        .tensor(&format!("blocks.{block}"))
        .ok_or_else(|| anyhow::anyhow!("the plan keeps no blocks.{block} tensor"))?;
    let values: Vec<f32> = match view.dtype {
        DType::F16 => gpu
            .read::<half::f16>(view)?
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => gpu.read::<f32>(view)?,
    };
    let side = plan.layout.blocks[block].shape.size as usize;
    Ok((values, side))
}

/// Writes the class activation map of `class` for batch slot `slot` of `n`, over the
/// image at `path`, to `dir/<file stem>.cam.png` (multi-label: `<stem>.<label>.cam.png`);
/// returns that path.
fn write_cam(
    head: &crate::cam::Head,
    features: &[f32],
    side: usize,
    (slot, n): (usize, usize),
    class: usize,
    path: &Path,
    (dir, label): (&Path, Option<String>),
) -> Result<PathBuf> {
    let plane = side * side;
    let mine: Vec<f32> = (0..head.channels)
        .flat_map(|c| features[(c * n + slot) * plane..][..plane].iter().copied())
        .collect();
    let map = head.map(&mine, plane, class);
    let img = image::open(path).with_context(|| format!("reading image {}", path.display()))?;
    let drawn = crate::cam::overlay(&img.to_rgb8(), &map, side);
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    // Multi-label maps carry their label's name (made safe for a file name).
    let name = match label {
        Some(l) => {
            let safe: String = l
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{stem}.{safe}.cam.png")
        }
        None => format!("{stem}.cam.png"),
    };
    let out = dir.join(name);
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(drawn)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    crate::atomic_file::write_atomic(&out, &png)?;
    Ok(out)
}
