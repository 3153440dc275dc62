//! The page's data: the built-in synthetic set, the four IDX files of MNIST or
//! Fashion-MNIST (gzipped or not), or a dropped folder of class subfolders of images.

use std::sync::Arc;

use anyhow::{bail, Result};
use densenet_wgpu::data::{folder, idx, synthetic, Dataset, DatasetKind, Splits};

/// Where the examples come from; a folder is decoded once the network's input size is known.
pub enum Source {
    Ready(DatasetKind, Splits),
    Folder(Vec<(String, Vec<u8>)>),
}

/// How many examples of each split to use (None: all).
#[derive(Clone, Copy, Default)]
pub struct Limits {
    pub train: Option<usize>,
    pub test: Option<usize>,
}

/// The training and test sets of a run.
pub struct Data {
    pub kind: DatasetKind,
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
}

/// The built-in synthetic set (the CLI's default), from `seed`.
pub fn synthetic(seed: u64) -> Source {
    Source::Ready(DatasetKind::Synthetic, synthetic::generate(seed))
}

/// MNIST or Fashion-MNIST (`kind`) from the four standard IDX files, named as they ship
/// (`train-images-idx3-ubyte`, ..., each maybe with `.gz`).
pub fn idx_files(kind: &str, files: Vec<(String, Vec<u8>)>) -> Result<Source> {
    let kind = match DatasetKind::from_name(kind) {
        Some(k @ (DatasetKind::Mnist | DatasetKind::FashionMnist)) => k,
        _ => bail!("IDX files are MNIST or Fashion-MNIST, not {kind:?}"),
    };
    let mut files: Vec<(String, Option<Vec<u8>>)> =
        files.into_iter().map(|(n, b)| (n, Some(b))).collect();
    let mut take = |stem: &str| -> Result<(String, Vec<u8>)> {
        let found = files.iter_mut().find(|(n, _)| {
            let base = n.rsplit('/').next().unwrap_or(n);
            base == stem || base == format!("{stem}.gz")
        });
        match found {
            Some((name, bytes)) => {
                let raw = bytes.take().unwrap_or_default();
                Ok((name.clone(), idx::gunzip_maybe(raw, name)?))
            }
            None => bail!("{stem}(.gz) is missing: drop the four IDX files together"),
        }
    };
    let names = kind.class_names();
    let train = idx::split_of(
        take("train-images-idx3-ubyte")?,
        take("train-labels-idx1-ubyte")?,
        &names,
    )?;
    let test = idx::split_of(
        take("t10k-images-idx3-ubyte")?,
        take("t10k-labels-idx1-ubyte")?,
        &names,
    )?;
    Ok(Source::Ready(kind, Splits { train, test }))
}

impl Source {
    /// The sets at the network's input size `size` (a folder's images are resized to it),
    /// each cut to its first `limits` examples where set (the CLI's --limit-train and
    /// --limit-test); a folder given as one tree is split with `seed`.
    pub fn load(&self, size: u32, seed: u64, limits: Limits) -> Result<Data> {
        let (kind, mut splits) = match self {
            Source::Ready(kind, s) => (*kind, clone_splits(s)),
            Source::Folder(files) => (
                DatasetKind::Folder,
                folder::from_files(files.clone(), size, seed)?,
            ),
        };
        if let Some(n) = limits.train {
            splits.train.truncate(n);
        }
        if let Some(n) = limits.test {
            splits.test.truncate(n);
        }
        if splits.test.is_empty() {
            bail!("the test set is empty");
        }
        Ok(Data {
            kind,
            train: Arc::new(splits.train),
            test: Arc::new(splits.test),
        })
    }

    /// Which dataset this is (as checkpoints name it).
    pub fn kind(&self) -> DatasetKind {
        match self {
            Source::Ready(kind, _) => *kind,
            Source::Folder(_) => DatasetKind::Folder,
        }
    }
}

fn clone_splits(s: &Splits) -> Splits {
    Splits {
        train: s.train.clone(),
        test: s.test.clone(),
    }
}

/// What the page shows of a data set.
#[derive(serde::Serialize)]
pub struct Summary {
    pub dataset: &'static str,
    pub train: usize,
    pub test: usize,
    pub classes: Vec<String>,
    pub channels: u32,
    pub size: u32,
}

impl Data {
    pub fn summary(&self) -> Summary {
        Summary {
            dataset: self.kind.name(),
            train: self.train.len(),
            test: self.test.len(),
            classes: self.train.class_names.clone(),
            channels: self.train.channels,
            size: self.train.height,
        }
    }
}
