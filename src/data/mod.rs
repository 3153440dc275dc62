//! Datasets held in host memory as 8-bit images, and the background loader that turns them
//! into ready-to-upload batches.
//!
//! - [`synthetic`]: a procedurally generated 10-class set built into the binary.
//! - [`idx`]: MNIST and Fashion-MNIST (the four standard IDX files, gzipped or not).
//! - [`cifar`]: CIFAR-10 binary batches.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod multilabel;
pub mod resize;
pub mod synthetic;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Images (count, channels, height, width) in PyTorch order, one byte per value, and labels.
#[derive(Clone)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub class_names: Vec<String>,
    /// Multi-label sets: each example's targets over the classes (count x classes, 0 or 1);
    /// `labels` then holds each example's first positive (0 when it has none).
    pub targets: Option<Vec<u8>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Keeps the first `n` examples (`--limit-train`, `--limit-test`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
            let k = self.classes();
            if let Some(t) = &mut self.targets {
                t.truncate(n * k);
            }
        }
    }

    /// Multi-label: each label's negatives / positives over the set (CheXNet's weighting of
    /// its loss; a label without positives gets 1).
    pub fn pos_weights(&self) -> Vec<f32> {
        let k = self.classes();
        let Some(t) = &self.targets else {
            return vec![1.0; k];
        };
        (0..k)
            .map(|c| {
                let pos = t.iter().skip(c).step_by(k).filter(|&&v| v != 0).count();
                match pos {
                    0 => 1.0,
                    p => (self.len() - p) as f32 / p as f32,
                }
            })
            .collect()
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// Gray images as RGB, each plane three times (what PIL's `convert("RGB")` gives), for
    /// networks that read three channels.
    pub fn gray_to_rgb(&mut self) {
        if self.channels != 1 {
            return;
        }
        let plane = (self.height * self.width) as usize;
        self.images = self
            .images
            .chunks(plane)
            .flat_map(|p| p.iter().chain(p).chain(p).copied().collect::<Vec<u8>>())
            .collect();
        self.channels = 3;
    }
}

/// `f` over `items`, in order: on every core natively (rayon: decoding and resizing a set's
/// images is the host's heaviest work), one after another in a browser.
pub fn map_all<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        items.par_iter().map(f).collect()
    }
    #[cfg(target_arch = "wasm32")]
    {
        items.iter().map(f).collect()
    }
}

/// fastrand's `shuffle` as it runs on 64-bit machines, on every target: there it draws each
/// index as a u64, but where `usize` has 32 bits (wasm32) as a u32, which would give a
/// browser other synthetic data and another epoch order than the native tool.
pub fn shuffle<T>(rng: &mut fastrand::Rng, v: &mut [T]) {
    for i in 1..v.len() {
        v.swap(i, rng.u64(..=i as u64) as usize);
    }
}

pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

/// The datasets the CLI knows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Synthetic,
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
    /// Image folders (`--data-dir DIR`: DIR/train/CLASS/*.png|jpg and DIR/test/CLASS/...).
    Folder,
    /// Multi-label images named in a CSV file (`--labels FILE.csv`, ChestX-ray14's layout).
    Csv,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Folder => "folder",
            DatasetKind::Csv => "csv",
        }
    }

    /// The dataset named `name` as the CLI and checkpoints spell it (`fashion-mnist`).
    pub fn from_name(name: &str) -> Option<DatasetKind> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    /// (channels, height, width) of the raw images (a folder's: nominal; its images are
    /// resized to the network's input, and their channels known once loaded).
    pub fn image_shape(self) -> (u32, u32, u32) {
        match self {
            DatasetKind::Synthetic => (1, synthetic::SIZE, synthetic::SIZE),
            DatasetKind::FashionMnist | DatasetKind::Mnist => (1, 28, 28),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Folder => (3, 32, 32),
            DatasetKind::Csv => (1, 224, 224),
        }
    }

    pub fn class_names(self) -> Vec<String> {
        let names: &[&str] = match self {
            DatasetKind::Cifar100 => &CIFAR100_NAMES,
            // A folder's names are its class folders, a CSV set's its findings: known once
            // loaded.
            DatasetKind::Folder | DatasetKind::Csv => &[],
            DatasetKind::Synthetic => &synthetic::CLASS_NAMES,
            DatasetKind::FashionMnist => &[
                "t-shirt",
                "trouser",
                "pullover",
                "dress",
                "coat",
                "sandal",
                "shirt",
                "sneaker",
                "bag",
                "ankle boot",
            ],
            DatasetKind::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::Cifar10 => &[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

/// CIFAR-100's fine classes, in label order.
const CIFAR100_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Loads a dataset's train and test splits. File datasets need `data_dir`; a folder's and a
/// CSV set's images are resized to `size` (the network's input) and split by `seed` when the
/// set has no split of its own; a CSV set needs `csv`, where its labels are.
pub fn load_sized(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    seed: u64,
    size: u32,
    csv: Option<&multilabel::CsvSpec>,
) -> Result<Splits> {
    match (kind, data_dir, csv) {
        (DatasetKind::Folder, Some(d), _) => folder::load(d, size, seed),
        (DatasetKind::Csv, Some(d), Some(spec)) => multilabel::load(d, spec, size, seed),
        _ => load(kind, data_dir, seed),
    }
}

/// Loads a dataset's train and test splits. File datasets need `data_dir`.
pub fn load(kind: DatasetKind, data_dir: Option<&Path>, seed: u64) -> Result<Splits> {
    let dir = || -> Result<PathBuf> {
        match data_dir {
            Some(d) => Ok(d.to_path_buf()),
            None => bail!(
                "--dataset {} needs --data-dir DIR (the folder with its files)",
                kind.name()
            ),
        }
    };
    match kind {
        DatasetKind::Synthetic => Ok(synthetic::generate(seed)),
        DatasetKind::FashionMnist | DatasetKind::Mnist => idx::load(&dir()?, kind.class_names()),
        DatasetKind::Cifar10 => cifar::load(&dir()?),
        DatasetKind::Cifar100 => cifar::load_100(&dir()?),
        DatasetKind::Folder => folder::load(&dir()?, 32, seed),
        DatasetKind::Csv => bail!(
            "--dataset csv needs --data-dir IMAGES and --labels FILE.csv (ChestX-ray14's \
             Data_Entry_2017.csv layout, or name the columns)"
        ),
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// On 64-bit machines the portable shuffle is fastrand's own, so native runs keep their
    /// data and epoch orders.
    #[test]
    fn shuffle_is_fastrands_on_64_bit() {
        for (seed, len) in [(0u64, 1usize), (1, 2), (7, 100), (0x5EED_DA7A, 12_000)] {
            let mut ours: Vec<usize> = (0..len).collect();
            let mut theirs = ours.clone();
            super::shuffle(&mut fastrand::Rng::with_seed(seed), &mut ours);
            fastrand::Rng::with_seed(seed).shuffle(&mut theirs);
            assert_eq!(ours, theirs, "seed {seed}, {len} elements");
        }
    }
}
