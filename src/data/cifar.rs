//! CIFAR-10 binary version: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`,
//! each record one label byte then 3 x 32 x 32 bytes (channel planes, row-major). The
//! files may sit in DIR or in DIR/cifar-10-batches-bin as the archive unpacks them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, DatasetKind, Splits};

const RECORD: usize = 1 + 3 * 32 * 32;

fn folder(dir: &Path) -> Result<PathBuf> {
    for d in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        if d.join("test_batch.bin").is_file() {
            return Ok(d);
        }
    }
    bail!(
        "{}: no test_batch.bin here or in cifar-10-batches-bin/; --data-dir must hold the \
         CIFAR-10 binary batches",
        dir.display()
    )
}

fn read_batches(paths: &[PathBuf]) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            bail!(
                "{}: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                path.display(),
                bytes.len()
            );
        }
        for rec in bytes.chunks(RECORD) {
            if rec[0] >= 10 {
                bail!("{}: label {} is not below 10", path.display(), rec[0]);
            }
            labels.push(rec[0]);
            images.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        class_names: DatasetKind::Cifar10.class_names(),
    })
}

pub fn load(dir: &Path) -> Result<Splits> {
    let d = folder(dir)?;
    let train: Vec<PathBuf> = (1..=5)
        .map(|i| d.join(format!("data_batch_{i}.bin")))
        .collect();
    if let Some(missing) = train.iter().find(|p| !p.is_file()) {
        bail!(
            "{}: missing; CIFAR-10 has data_batch_1.bin .. data_batch_5.bin",
            missing.display()
        );
    }
    Ok(Splits {
        train: read_batches(&train)?,
        test: read_batches(&[d.join("test_batch.bin")])?,
    })
}
