//! Batches prepared on a background thread: shuffling, resizing, conversion to f32 in the
//! channel-major (C, N, H, W) layout the kernels use. The channel holds at most two ready
//! batches, so the GPU never waits for the host and the host never runs far ahead.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::augment::{crop_flip, Augment};
use super::Dataset;
use crate::ops::cross_entropy::IGNORE;

/// One batch, ready to upload: x (C, N, H, W) in [0, 1], labels padded with [`IGNORE`].
pub struct Batch {
    pub x: Vec<f32>,
    pub labels: Vec<u32>,
    /// Real examples in the batch; the rest is padding.
    pub count: usize,
}

/// The order of an epoch.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// A fresh permutation from this seed; the last partial batch is dropped, since padding
    /// would distort the batch statistics of training-mode batch norm.
    Shuffled(u64),
    /// Dataset order; the last batch is padded (evaluation uses running statistics).
    Sequential,
}

/// Bilinear resize of one 8-bit plane (`h` x `w`, row-major) to `out_h` x `out_w`, then
/// the division by 255 of torchvision's `ToTensor`. The bytes before that division are
/// exactly Pillow's (13.0) `Image.resize((out_w, out_h), Image.BILINEAR)` of the plane as a
/// mode "L" image, which is what torchvision's `Resize` (`InterpolationMode.BILINEAR`, the
/// antialiased default) does to a PIL image: see [`super::resize`]. Same size: a plain copy.
pub fn resize_plane(plane: &[u8], h: u32, w: u32, out_h: u32, out_w: u32) -> Vec<f32> {
    let to_unit = |v: &u8| *v as f32 / 255.0;
    if (h, w) == (out_h, out_w) {
        return plane.iter().map(to_unit).collect();
    }
    let (h, w, out_h, out_w) = (h as usize, w as usize, out_h as usize, out_w as usize);
    super::resize::bilinear(plane, h, w, out_h, out_w)
        .iter()
        .map(to_unit)
        .collect()
}

/// Example `src` as the network sees it: resized, then (`random`: its crop offsets and flip)
/// augmented, then normalized; planes (C, H, W).
fn example(
    ds: &Dataset,
    src: usize,
    out: (u32, u32),
    aug: &Augment,
    random: Option<(u32, u32, bool)>,
) -> Vec<f32> {
    let (oh, ow) = out;
    let img = ds.image(src);
    let in_plane = (ds.height * ds.width) as usize;
    let mut v = Vec::with_capacity((oh * ow * ds.channels) as usize);
    for c in 0..ds.channels as usize {
        let p = resize_plane(
            &img[c * in_plane..][..in_plane],
            ds.height,
            ds.width,
            oh,
            ow,
        );
        match random {
            Some((oy, ox, flip)) => v.extend(crop_flip(&p, out, aug.pad, (oy, ox), flip)),
            None => v.extend(p),
        }
    }
    aug.normalize_planes(&mut v, (oh * ow) as usize);
    v
}

/// Fills `x` (C, n, H, W) with one example's planes (C, H, W) at batch position `slot`.
fn put(planes: &[f32], plane: usize, slot: usize, n: usize, x: &mut [f32]) {
    for (c, p) in planes.chunks(plane).enumerate() {
        x[(c * n + slot) * plane..][..plane].copy_from_slice(p);
    }
}

/// Iterates the batches of one epoch, prepared ahead on a worker thread.
pub struct Loader {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    pub batches: usize,
}

impl Loader {
    /// Batches of `ds` as they are: no augmentation, no normalization.
    pub fn new(ds: Arc<Dataset>, batch: usize, order: Order, out: (u32, u32)) -> Loader {
        Self::with_augment(ds, batch, order, out, Arc::new(Augment::default()))
    }

    /// Batches with `aug`'s normalization, and in a shuffled (training) epoch its random
    /// crop and flip, drawn from the epoch's seed and each example's index.
    pub fn with_augment(
        ds: Arc<Dataset>,
        batch: usize,
        order: Order,
        out: (u32, u32),
        aug: Arc<Augment>,
    ) -> Loader {
        let mut indices: Vec<usize> = (0..ds.len()).collect();
        let batches = match order {
            Order::Shuffled(seed) => {
                fastrand::Rng::with_seed(seed).shuffle(&mut indices);
                ds.len() / batch
            }
            Order::Sequential => ds.len().div_ceil(batch),
        };
        let (tx, rx) = sync_channel(2);
        let worker = std::thread::spawn(move || {
            let per_example = (ds.channels * out.0 * out.1) as usize;
            for b in 0..batches {
                let chunk = &indices[b * batch..((b + 1) * batch).min(indices.len())];
                let mut x = vec![0f32; per_example * batch];
                let mut labels = vec![IGNORE; batch];
                for (slot, &src) in chunk.iter().enumerate() {
                    let random = match order {
                        Order::Shuffled(seed) if aug.is_random() => Some(aug.choices(seed, src)),
                        _ => None,
                    };
                    let planes = example(&ds, src, out, &aug, random);
                    put(&planes, (out.0 * out.1) as usize, slot, batch, &mut x);
                    labels[slot] = ds.labels[src] as u32;
                }
                let ready = Batch {
                    x,
                    labels,
                    count: chunk.len(),
                };
                if tx.send(ready).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Loader {
            rx,
            worker: Some(worker),
            batches,
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the worker, then reap it.
        let (_, dead) = sync_channel(0);
        self.rx = dead;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
