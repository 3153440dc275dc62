//! Image folders: `DIR/train/CLASS/*.png|jpg` and `DIR/test/CLASS/...`, or one tree
//! `DIR/CLASS/...` split into train and test by a seeded fraction. Class names are the
//! folder names, sorted; every image is resized to the network's input size and kept in
//! color if any pixel of the set has color, else in gray.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, Splits};

/// Each class's name and its images (files, or a dropped file's path and bytes).
type Classes<T> = Vec<(String, Vec<T>)>;
type ClassFiles = Classes<PathBuf>;

/// The share of a single tree's images (per class) that goes to the test split.
pub const TEST_FRACTION: f64 = 0.2;

fn is_image(p: &Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    out.sort();
    Ok(out)
}

/// (class name, image files) of every class folder under `dir`.
fn classes(dir: &Path) -> Result<ClassFiles> {
    let mut out = Vec::new();
    for d in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let files: Vec<PathBuf> = sorted_entries(&d)?
            .into_iter()
            .filter(|p| is_image(p))
            .collect();
        out.push((name, files));
    }
    if out.is_empty() {
        bail!(
            "{}: no class folders (DIR/CLASS/*.png or DIR/train/CLASS/...)",
            dir.display()
        );
    }
    Ok(out)
}

/// Loads `dir` at `size` x `size` pixels; a single tree is split with `seed`.
pub fn load(dir: &Path, size: u32, seed: u64) -> Result<Splits> {
    let (train, test) = match (dir.join("train").is_dir(), dir.join("test").is_dir()) {
        (true, true) => (classes(&dir.join("train"))?, classes(&dir.join("test"))?),
        _ => split(classes(dir)?, seed),
    };
    let open =
        |f: &PathBuf| image::open(f).with_context(|| format!("reading image {}", f.display()));
    assemble(&dir.display().to_string(), train, test, size, open)
}

/// A dropped folder, as a browser gives it: each file's path below the drop (`/`-separated,
/// its first part the folder's own name, as `webkitRelativePath`) and bytes. The layouts
/// are [`load`]'s: `train/CLASS/*` and `test/CLASS/*`, or `CLASS/*` split with `seed`.
pub fn from_files(files: Vec<(String, Vec<u8>)>, size: u32, seed: u64) -> Result<Splits> {
    let mut files: Vec<(Vec<String>, Vec<u8>)> = files
        .into_iter()
        .filter(|(p, _)| is_image(Path::new(p)))
        .map(|(p, b)| {
            let parts = p.split('/').filter(|s| !s.is_empty()).map(String::from);
            (parts.collect(), b)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    // The dropped folder's own name (and any single folder inside it) is not a class.
    while files.iter().all(|(p, _)| p.len() >= 3)
        && files.windows(2).all(|w| w[0].0[0] == w[1].0[0])
    {
        files.iter_mut().for_each(|(p, _)| {
            p.remove(0);
        });
        if files.is_empty() {
            break;
        }
    }
    let group = |files: Vec<(Vec<String>, Vec<u8>)>| -> Classes<(String, Vec<u8>)> {
        let mut out: Classes<(String, Vec<u8>)> = Vec::new();
        for (path, bytes) in files.into_iter().filter(|(p, _)| p.len() >= 2) {
            let name = path.join("/");
            match out.last_mut() {
                Some((class, list)) if *class == path[0] => list.push((name, bytes)),
                _ => out.push((path[0].clone(), vec![(name, bytes)])),
            }
        }
        out
    };
    let in_split = |f: &(Vec<String>, Vec<u8>), s: &str| f.0.len() >= 3 && f.0[0] == s;
    let two_trees = files.iter().any(|f| in_split(f, "train"))
        && files.iter().any(|f| in_split(f, "test"))
        && files
            .iter()
            .all(|f| in_split(f, "train") || in_split(f, "test"));
    let (train, test) = match two_trees {
        true => {
            let (train, test): (Vec<_>, Vec<_>) =
                files.into_iter().partition(|f| in_split(f, "train"));
            let strip = |v: Vec<(Vec<String>, Vec<u8>)>| {
                v.into_iter().map(|(p, b)| (p[1..].to_vec(), b)).collect()
            };
            (group(strip(train)), group(strip(test)))
        }
        false => split(group(files), seed),
    };
    if train.is_empty() {
        bail!("the dropped folder holds no class folders of PNG or JPEG images (CLASS/*.png, or train/CLASS/... and test/CLASS/...)");
    }
    let decode = |(name, bytes): &(String, Vec<u8>)| {
        image::load_from_memory(bytes).with_context(|| format!("{name}: not a PNG or JPEG image"))
    };
    assemble("the dropped folder", train, test, size, decode)
}

/// The splits of class-grouped images, each read by `read`, converted to RGB and resized to
/// `size` (as torchvision's ImageFolder); `place` names the source in errors.
fn assemble<T: Sync>(
    place: &str,
    train: Classes<T>,
    test: Classes<T>,
    size: u32,
    read: impl Fn(&T) -> Result<image::DynamicImage> + Sync + Send,
) -> Result<Splits> {
    let names: Vec<String> = train.iter().map(|(n, _)| n.clone()).collect();
    if let Some((extra, _)) = test.iter().find(|(n, _)| !names.contains(n)) {
        bail!("{place}: test class {extra:?} has no training folder");
    }
    let images = |set: &[(String, Vec<T>)]| -> Result<Vec<(image::DynamicImage, u8)>> {
        let mut todo: Vec<(&T, u8)> = Vec::new();
        for (name, files) in set {
            let label = names.iter().position(|n| n == name).unwrap_or(0) as u8;
            todo.extend(files.iter().map(|f| (f, label)));
        }
        // Decoded and resized on every core, kept in the set's order.
        super::map_all(&todo, |&(f, label)| {
            let img = read(f)?;
            // As torchvision's ImageFolder: RGB first, then Pillow's bilinear resize.
            let rgb = super::resize::rgb(&img.to_rgb8(), size, size);
            Ok((image::DynamicImage::ImageRgb8(rgb), label))
        })
        .into_iter()
        .collect()
    };
    if names.len() > 256 {
        bail!(
            "{place}: {} classes; at most 256 are supported",
            names.len()
        );
    }
    let (train, test) = (images(&train)?, images(&test)?);
    if train.is_empty() || test.is_empty() {
        bail!("{place}: the training or the test split holds no PNG or JPEG image");
    }
    let color = train.iter().chain(&test).any(|(i, _)| has_color(i));
    let dataset = |set: Vec<(image::DynamicImage, u8)>| to_dataset(set, color, size, &names);
    Ok(Splits {
        train: dataset(train),
        test: dataset(test),
    })
}

/// Whether an image shows color (an RGB file of gray pixels does not).
fn has_color(img: &image::DynamicImage) -> bool {
    img.color().has_color() && img.to_rgb8().pixels().any(|p| p[0] != p[1] || p[1] != p[2])
}

/// A single tree's images split per class: the first 20% of a seeded shuffle to test.
fn split<T>(all: Classes<T>, seed: u64) -> (Classes<T>, Classes<T>) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5EED_F01D);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (name, mut files) in all {
        super::shuffle(&mut rng, &mut files);
        let n_test = ((files.len() as f64 * TEST_FRACTION).round() as usize).min(files.len());
        let rest = files.split_off(n_test);
        test.push((name.clone(), files));
        train.push((name, rest));
    }
    (train, test)
}

fn to_dataset(
    set: Vec<(image::DynamicImage, u8)>,
    color: bool,
    size: u32,
    names: &[String],
) -> Dataset {
    let channels = if color { 3 } else { 1 };
    let plane = (size * size) as usize;
    let mut images = Vec::with_capacity(set.len() * plane * channels);
    let mut labels = Vec::with_capacity(set.len());
    for (img, label) in set {
        let raw = match color {
            true => img.to_rgb8().into_raw(),
            false => img.to_luma8().into_raw(),
        };
        // Interleaved pixels to channel planes.
        for c in 0..channels {
            images.extend(raw.iter().skip(c).step_by(channels));
        }
        labels.push(label);
    }
    Dataset {
        images,
        labels,
        channels: channels as u32,
        height: size,
        width: size,
        class_names: names.to_vec(),
        targets: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(gray: u8) -> Vec<u8> {
        let img = image::GrayImage::from_pixel(4, 4, image::Luma([gray]));
        let mut out = Vec::new();
        image::DynamicImage::ImageLuma8(img)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    /// A dropped folder: its own name is not a class; one tree is split as `load` splits;
    /// train/ and test/ trees are kept; other files are ignored.
    #[test]
    fn dropped_folders_read_as_the_cli_reads_folders() {
        let mut files = vec![("drop/readme.txt".to_string(), b"x".to_vec())];
        for (class, gray) in [("cat", 10u8), ("dog", 200)] {
            for i in 0..5 {
                files.push((format!("drop/{class}/{i}.png"), png(gray)));
            }
        }
        let s = from_files(files.clone(), 8, 0).unwrap();
        assert_eq!(s.train.class_names, ["cat", "dog"]);
        assert_eq!((s.train.len(), s.test.len()), (8, 2));
        assert_eq!((s.train.channels, s.train.height), (1, 8));
        let trees: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .skip(1)
            .enumerate()
            .map(|(i, (p, b))| {
                let split = if i % 5 == 0 { "test" } else { "train" };
                (p.replacen("drop/", &format!("drop/{split}/"), 1), b)
            })
            .collect();
        let s = from_files(trees, 8, 0).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (8, 2));
        assert_eq!(s.test.labels, [0, 1]);
        let err = from_files(vec![("a.txt".into(), vec![1])], 8, 0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("no class folders"), "{err}");
    }
}
