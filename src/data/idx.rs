//! MNIST-format IDX files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally gzipped (`.gz`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, Splits};

const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;

/// Finds `stem` or `stem.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{}: neither {stem} nor {stem}.gz exists; --data-dir must hold the four IDX files",
        dir.display()
    )
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    gunzip_maybe(raw, &path.display().to_string())
}

/// A file's bytes, gunzipped when they start with the gzip magic bytes; `source` names the
/// file in errors.
pub fn gunzip_maybe(raw: Vec<u8>, source: &str) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{source}: not a valid gzip file"))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses an IDX file with `dims` dimensions; returns the dimensions and the payload.
pub fn parse(
    source: impl std::fmt::Display,
    bytes: &[u8],
    magic: u32,
    dims: usize,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        bail!(
            "{}: too short for an IDX header ({} bytes)",
            source,
            bytes.len()
        );
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        bail!(
            "{}: IDX magic {found:#010x}, expected {magic:#010x} (unsigned bytes, {dims} dimensions)",
            source
        );
    }
    let shape: Vec<u32> = (0..dims).map(|d| be_u32(bytes, 4 + 4 * d)).collect();
    if shape.contains(&0) {
        bail!("{}: IDX dimensions {shape:?} hold nothing", source);
    }
    let len = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize));
    if len != Some(bytes.len() - header) {
        bail!(
            "{}: header says {shape:?} but the file has {} bytes of data",
            source,
            bytes.len() - header
        );
    }
    Ok((shape, bytes[header..].to_vec()))
}

fn load_split(dir: &Path, prefix: &str, class_names: &[String]) -> Result<Dataset> {
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = (ipath.display().to_string(), read_maybe_gz(&ipath)?);
    let labels = (lpath.display().to_string(), read_maybe_gz(&lpath)?);
    split_of(images, labels, class_names)
}

/// One split from its images file and its labels file, each (name, ungzipped bytes).
pub fn split_of(
    (iname, ibytes): (String, Vec<u8>),
    (lname, lbytes): (String, Vec<u8>),
    class_names: &[String],
) -> Result<Dataset> {
    let (ishape, images) = parse(&iname, &ibytes, IMAGES_MAGIC, 3)?;
    let (lshape, labels) = parse(&lname, &lbytes, LABELS_MAGIC, 1)?;
    if ishape[0] != lshape[0] {
        bail!(
            "{iname} has {} images but {lname} has {} labels",
            ishape[0],
            lshape[0]
        );
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
        bail!("{lname}: label {bad} is not below {}", class_names.len());
    }
    Ok(Dataset {
        images,
        labels,
        channels: 1,
        height: ishape[1],
        width: ishape[2],
        class_names: class_names.to_vec(),
        targets: None,
    })
}

pub fn load(dir: &Path, class_names: Vec<String>) -> Result<Splits> {
    Ok(Splits {
        train: load_split(dir, "train", &class_names)?,
        test: load_split(dir, "t10k", &class_names)?,
    })
}

/// Writes an IDX file (used by tests and tools to make small datasets).
pub fn encode(shape: &[u32], data: &[u8]) -> Vec<u8> {
    let magic = 0x0800 | shape.len() as u32;
    let mut out = magic.to_be_bytes().to_vec();
    for d in shape {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
