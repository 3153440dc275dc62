//! Batches prepared on a background thread: shuffling, resizing, conversion to f32 in the
//! channel-major (C, N, H, W) layout the kernels use. The channel holds at most two ready
//! batches, so the GPU never waits for the host and the host never runs far ahead.

#[cfg(not(target_arch = "wasm32"))]
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
#[cfg(not(target_arch = "wasm32"))]
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

/// Rows [top, top + bh) and columns [left, left + bw) of a plane `w` wide.
fn crop_plane(plane: &[u8], w: u32, [top, left, bh, bw]: [u32; 4]) -> Vec<u8> {
    (top..top + bh)
        .flat_map(|y| &plane[(y * w + left) as usize..][..bw as usize])
        .copied()
        .collect()
}

/// ImageNet's crops of example `src` (planes (C, H, W) in [0, 1]): training (`random`:
/// the epoch's seed and the example) a random resized crop and maybe a flip; evaluation the
/// center `out` box (resized when the image is smaller).
fn resized_crop(
    ds: &Dataset,
    src: usize,
    out: (u32, u32),
    aug: &Augment,
    random: Option<(u64, usize)>,
) -> Vec<f32> {
    let (h, w) = (ds.height, ds.width);
    let (oh, ow) = out;
    let (area, flip) = match random {
        Some((seed, index)) => aug.resized_box(seed, index, (h, w)),
        None if h >= oh && w >= ow => {
            // torchvision's CenterCrop: offsets rounded half to even as Python's round().
            let mid = |a: u32, b: u32| ((a - b) as f64 / 2.0).round_ties_even() as u32;
            ([mid(h, oh), mid(w, ow), oh, ow], false)
        }
        None => ([0, 0, h, w], false),
    };
    let img = ds.image(src);
    let in_plane = (h * w) as usize;
    let mut v = Vec::with_capacity((oh * ow * ds.channels) as usize);
    for c in 0..ds.channels as usize {
        let crop = crop_plane(&img[c * in_plane..][..in_plane], w, area);
        let p = resize_plane(&crop, area[2], area[3], oh, ow);
        match flip {
            true => v.extend(
                p.chunks(ow as usize)
                    .flat_map(|row| row.iter().rev().copied()),
            ),
            false => v.extend(p),
        }
    }
    aug.normalize_planes(&mut v, (oh * ow) as usize);
    v
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

/// One rank's part of every epoch in a data-parallel run of `count` ranks.
///
/// Training (shuffled): the permutation is the same on every rank; global batch b is
/// examples [b * count * batch, (b + 1) * count * batch) of it and rank `index` takes
/// the `index`-th `batch` of them. A last global batch with fewer than count x batch
/// examples is dropped, as a single process drops its last partial batch (padding would
/// distort training-mode batch norm). Evaluation (sequential): rank `index` takes batches
/// index, index + count, ... of the dataset order, the last one padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// A single process: everything.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };
}

/// The examples of one epoch, in order, and the batches they make.
pub struct Epoch {
    indices: Vec<usize>,
    pub batches: usize,
    batch: usize,
    order: Order,
    shard: Shard,
}

impl Epoch {
    /// `len` examples in batches of `batch`, in `order`.
    pub fn new(len: usize, batch: usize, order: Order) -> Epoch {
        Self::sharded(len, batch, order, Shard::WHOLE)
    }

    /// `shard`'s batches of `len` examples in batches of `batch`, in `order`.
    pub fn sharded(len: usize, batch: usize, order: Order, shard: Shard) -> Epoch {
        let mut indices: Vec<usize> = (0..len).collect();
        let batches = match order {
            Order::Shuffled(seed) => {
                super::shuffle(&mut fastrand::Rng::with_seed(seed), &mut indices);
                len / (batch * shard.count)
            }
            Order::Sequential => len
                .div_ceil(batch)
                .saturating_sub(shard.index)
                .div_ceil(shard.count),
        };
        Epoch {
            indices,
            batches,
            batch,
            order,
            shard,
        }
    }

    /// Batch `b` of the epoch from `ds`, at size `out`, augmented and normalized as `aug`
    /// says (its random crop and flip only in a shuffled epoch).
    pub fn batch(&self, ds: &Dataset, b: usize, out: (u32, u32), aug: &Augment) -> Batch {
        let batch = self.batch;
        let per_example = (ds.channels * out.0 * out.1) as usize;
        // This shard's b-th batch is the dataset's (or the permutation's) b * count + index.
        let b = b * self.shard.count + self.shard.index;
        let chunk = &self.indices[b * batch..((b + 1) * batch).min(self.indices.len())];
        let mut x = vec![0f32; per_example * batch];
        // Multi-label: a row of targets per example (padding rows start with IGNORE).
        let k = ds.targets.as_ref().map_or(1, |_| ds.classes());
        let mut labels = vec![IGNORE; batch * k];
        // Each example's resize, crop and flip on every core (its random choices depend on
        // the epoch's seed and the example alone, so the batch is the same either way).
        let order = self.order;
        let prepared = super::map_all(chunk, |&src| match (aug.resized_crop, order) {
            (true, Order::Shuffled(seed)) => resized_crop(ds, src, out, aug, Some((seed, src))),
            (true, Order::Sequential) => resized_crop(ds, src, out, aug, None),
            (false, Order::Shuffled(seed)) if aug.is_random() => {
                example(ds, src, out, aug, Some(aug.choices(seed, src)))
            }
            (false, _) => example(ds, src, out, aug, None),
        });
        for (slot, (&src, planes)) in chunk.iter().zip(prepared).enumerate() {
            put(&planes, (out.0 * out.1) as usize, slot, batch, &mut x);
            match &ds.targets {
                Some(t) => {
                    for (o, &v) in labels[slot * k..][..k].iter_mut().zip(&t[src * k..][..k]) {
                        *o = v as u32;
                    }
                }
                None => labels[slot] = ds.labels[src] as u32,
            }
        }
        Batch {
            x,
            labels,
            count: chunk.len(),
        }
    }
}

/// Iterates the batches of one epoch. Natively they are prepared ahead on a worker thread;
/// in a browser (no threads) each is made when asked for.
pub struct Loader {
    #[cfg(not(target_arch = "wasm32"))]
    rx: Receiver<Batch>,
    #[cfg(not(target_arch = "wasm32"))]
    worker: Option<JoinHandle<()>>,
    #[cfg(target_arch = "wasm32")]
    inline: Inline,
    pub batches: usize,
}

/// A browser's loader: what it needs to make the next batch.
#[cfg(target_arch = "wasm32")]
struct Inline {
    ds: Arc<Dataset>,
    epoch: Epoch,
    next: usize,
    out: (u32, u32),
    aug: Arc<Augment>,
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
        Self::sharded(ds, batch, order, out, aug, Shard::WHOLE)
    }

    /// [`Loader::with_augment`] of one rank's [`Shard`].
    pub fn sharded(
        ds: Arc<Dataset>,
        batch: usize,
        order: Order,
        out: (u32, u32),
        aug: Arc<Augment>,
        shard: Shard,
    ) -> Loader {
        let epoch = Epoch::sharded(ds.len(), batch, order, shard);
        Self::start(ds, epoch, out, aug)
    }

    /// Natively: the epoch's batches made ahead on a worker thread.
    #[cfg(not(target_arch = "wasm32"))]
    fn start(ds: Arc<Dataset>, epoch: Epoch, out: (u32, u32), aug: Arc<Augment>) -> Loader {
        let batches = epoch.batches;
        let (tx, rx) = sync_channel(2);
        let worker = std::thread::spawn(move || {
            for b in 0..epoch.batches {
                if tx.send(epoch.batch(&ds, b, out, &aug)).is_err() {
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

    /// In a browser: each batch made when asked for.
    #[cfg(target_arch = "wasm32")]
    fn start(ds: Arc<Dataset>, epoch: Epoch, out: (u32, u32), aug: Arc<Augment>) -> Loader {
        Loader {
            batches: epoch.batches,
            inline: Inline {
                ds,
                epoch,
                next: 0,
                out,
                aug,
            },
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    #[cfg(not(target_arch = "wasm32"))]
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }

    #[cfg(target_arch = "wasm32")]
    fn next(&mut self) -> Option<Batch> {
        let l = &mut self.inline;
        if l.next >= l.epoch.batches {
            return None;
        }
        l.next += 1;
        Some(l.epoch.batch(&l.ds, l.next - 1, l.out, &l.aug))
    }
}

#[cfg(not(target_arch = "wasm32"))]
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
