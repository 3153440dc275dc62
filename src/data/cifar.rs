//! The CIFAR binary versions. CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and
//! `test_batch.bin`, each record one label byte then 3 x 32 x 32 bytes (channel planes,
//! row-major). CIFAR-100: `train.bin` and `test.bin`, each record a coarse and a fine label
//! byte (the fine one, 100 classes, is used) then the image. The files may sit in DIR or in
//! the folder their archive unpacks to (`cifar-10-batches-bin/`, `cifar-100-binary/`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, DatasetKind, Splits};

const IMAGE: usize = 3 * 32 * 32;

/// How one CIFAR version lays out its files and records.
struct Format {
    kind: DatasetKind,
    /// The folder its archive unpacks to.
    folder: &'static str,
    train: &'static [&'static str],
    test: &'static str,
    /// Label bytes before each image, and which of them is the label used.
    label_bytes: usize,
    label_at: usize,
}

const CIFAR10: Format = Format {
    kind: DatasetKind::Cifar10,
    folder: "cifar-10-batches-bin",
    train: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test: "test_batch.bin",
    label_bytes: 1,
    label_at: 0,
};

const CIFAR100: Format = Format {
    kind: DatasetKind::Cifar100,
    folder: "cifar-100-binary",
    train: &["train.bin"],
    test: "test.bin",
    label_bytes: 2,
    label_at: 1,
};

fn folder(dir: &Path, f: &Format) -> Result<PathBuf> {
    for d in [dir.to_path_buf(), dir.join(f.folder)] {
        if d.join(f.test).is_file() {
            return Ok(d);
        }
    }
    bail!(
        "{}: no {} here or in {}/; --data-dir must hold the {} binary version",
        dir.display(),
        f.test,
        f.folder,
        f.kind.name()
    )
}

fn read_batches(paths: &[PathBuf], f: &Format) -> Result<Dataset> {
    let record = f.label_bytes + IMAGE;
    let classes = f.kind.class_names();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            bail!(
                "{}: {} bytes is not a whole number of {record}-byte {} records",
                path.display(),
                bytes.len(),
                f.kind.name()
            );
        }
        for rec in bytes.chunks(record) {
            let label = rec[f.label_at];
            if label as usize >= classes.len() {
                bail!(
                    "{}: label {label} is not below {}",
                    path.display(),
                    classes.len()
                );
            }
            labels.push(label);
            images.extend_from_slice(&rec[f.label_bytes..]);
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        class_names: classes,
        targets: None,
    })
}

fn load_format(dir: &Path, f: &Format) -> Result<Splits> {
    let d = folder(dir, f)?;
    let train: Vec<PathBuf> = f.train.iter().map(|n| d.join(n)).collect();
    if let Some(missing) = train.iter().find(|p| !p.is_file()) {
        bail!(
            "{}: missing; {} has {}",
            missing.display(),
            f.kind.name(),
            f.train.join(", ")
        );
    }
    Ok(Splits {
        train: read_batches(&train, f)?,
        test: read_batches(&[d.join(f.test)], f)?,
    })
}

/// CIFAR-10 from `dir`.
pub fn load(dir: &Path) -> Result<Splits> {
    load_format(dir, &CIFAR10)
}

/// CIFAR-100 (fine labels) from `dir`.
pub fn load_100(dir: &Path) -> Result<Splits> {
    load_format(dir, &CIFAR100)
}
