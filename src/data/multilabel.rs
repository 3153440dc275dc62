//! Multi-label image sets described by a CSV file, in ChestX-ray14's layout by default: a
//! column naming each image (`Image Index`) and one listing its findings (`Finding Labels`,
//! separated by `|`, `No Finding` meaning none). The labels are every finding that occurs,
//! sorted; the split is the set's own lists (`train_val_list.txt`, `test_list.txt`: one
//! image name per line) where given, else 20% of the images, drawn by the seed, to test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{Dataset, Splits};

/// Where the labels are and how the CSV says them.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvSpec {
    pub labels: PathBuf,
    pub image_column: String,
    pub label_column: String,
    pub separator: String,
    /// The value that means "no label" (ChestX-ray14: `No Finding`).
    pub none: String,
    pub train_list: Option<PathBuf>,
    pub test_list: Option<PathBuf>,
}

impl CsvSpec {
    /// ChestX-ray14's layout for the labels in `labels`.
    pub fn chestxray14(labels: PathBuf) -> CsvSpec {
        CsvSpec {
            labels,
            image_column: "Image Index".into(),
            label_column: "Finding Labels".into(),
            separator: "|".into(),
            none: "No Finding".into(),
            train_list: None,
            test_list: None,
        }
    }
}

/// Each image's name and findings, in the CSV's order.
fn read_labels(spec: &CsvSpec) -> Result<Vec<(String, Vec<String>)>> {
    let shown = spec.labels.display();
    let mut reader = csv::Reader::from_path(&spec.labels)
        .with_context(|| format!("reading --labels {shown}"))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{shown}: no header row"))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                anyhow!(
                    "{shown}: no column {name:?} (it has {}); name them with --image-column and \
                 --label-column",
                    headers.iter().collect::<Vec<_>>().join(", ")
                )
            })
    };
    let (image, label) = (column(&spec.image_column)?, column(&spec.label_column)?);
    let mut out = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{shown}: row {}", row + 2))?;
        let name = record.get(image).unwrap_or_default().trim().to_string();
        let findings = record
            .get(label)
            .unwrap_or_default()
            .split(spec.separator.as_str())
            .map(str::trim)
            .filter(|f| !f.is_empty() && *f != spec.none)
            .map(String::from)
            .collect();
        if !name.is_empty() {
            out.push((name, findings));
        }
    }
    if out.is_empty() {
        bail!("{shown}: no rows");
    }
    Ok(out)
}

fn read_list(path: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the split list {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The set in `dir` labelled by `spec`, its images resized to `size`, split as the module
/// says.
pub fn load(dir: &Path, spec: &CsvSpec, size: u32, seed: u64) -> Result<Splits> {
    let rows = read_labels(spec)?;
    let names: Vec<String> = rows
        .iter()
        .flat_map(|(_, f)| f.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.is_empty() {
        bail!("{}: no image has a label", spec.labels.display());
    }
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let (train, test): (Vec<usize>, Vec<usize>) = match (&spec.train_list, &spec.test_list) {
        (Some(tr), Some(te)) => {
            let (tr, te) = (read_list(tr)?, read_list(te)?);
            let pick = |set: &BTreeSet<String>| {
                (0..rows.len())
                    .filter(|&i| set.contains(&rows[i].0))
                    .collect::<Vec<_>>()
            };
            (pick(&tr), pick(&te))
        }
        (None, None) => {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            super::shuffle(
                &mut fastrand::Rng::with_seed(seed ^ 0x5EED_C5F1),
                &mut order,
            );
            let n_test = ((rows.len() as f64 * super::folder::TEST_FRACTION).round() as usize)
                .clamp(1, rows.len().saturating_sub(1).max(1));
            let mut test = order.split_off(order.len() - n_test);
            let mut train = order;
            train.sort_unstable();
            test.sort_unstable();
            (train, test)
        }
        _ => bail!("give both --train-list and --test-list, or neither"),
    };
    // Decoded and resized on every core (ChestX-ray14's are 1024x1024 PNGs).
    let images: Vec<image::RgbImage> = super::map_all(&rows, |(name, _)| {
        let path = dir.join(name);
        let img = image::open(&path)
            .with_context(|| format!("reading image {} (named in --labels)", path.display()))?;
        Ok(super::resize::rgb(&img.to_rgb8(), size, size))
    })
    .into_iter()
    .collect::<Result<_>>()?;
    let color = images
        .iter()
        .any(|i| i.pixels().any(|p| p[0] != p[1] || p[1] != p[2]));
    let dataset = |which: &[usize]| -> Dataset {
        let k = names.len();
        let channels = if color { 3 } else { 1 };
        let mut pixels = Vec::new();
        let (mut labels, mut targets) = (Vec::new(), vec![0u8; which.len() * k]);
        for (slot, &i) in which.iter().enumerate() {
            let raw = images[i].as_raw();
            for c in 0..channels {
                pixels.extend(raw.iter().skip(c).step_by(3));
            }
            let mut first = None;
            for f in &rows[i].1 {
                let c = index[f.as_str()];
                targets[slot * k + c] = 1;
                first = first.or(Some(c));
            }
            labels.push(first.unwrap_or(0) as u8);
        }
        Dataset {
            images: pixels,
            labels,
            channels: channels as u32,
            height: size,
            width: size,
            class_names: names.clone(),
            targets: Some(targets),
        }
    };
    if names.len() > 256 {
        bail!(
            "{}: {} labels; at most 256 are supported",
            spec.labels.display(),
            names.len()
        );
    }
    Ok(Splits {
        train: dataset(&train),
        test: dataset(&test),
    })
}
