//! The file readers against arbitrary bytes (proptest, a fixed number of cases per run, so CI
//! spends a bounded time): IDX files (raw and gzipped, any header), CIFAR-10 batches of any
//! length and content, image folders of arbitrary files, checkpoints (random bytes, and a
//! real checkpoint truncated or with bytes flipped), torchvision's `.pth` and safetensors
//! state dicts (truncated, bytes flipped) and multi-label CSV files. Each either loads
//! something consistent or returns a one-line error; none panics.

mod support;

use std::path::Path;

use densenet_wgpu::checkpoint::{Checkpoint, State};
use densenet_wgpu::data::{cifar, idx, DatasetKind};
use densenet_wgpu::model::Layout;
use densenet_wgpu::recipe::Preset;
use proptest::collection::vec;
use proptest::prelude::*;
use support::temp_dir;

const CASES: u32 = 48;

fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out
}

/// Writes the four Fashion-MNIST files into `dir`: images with header dims `dims` and
/// `payload`, labels with `labels`.
fn write_idx(dir: &Path, dims: [u32; 3], payload: &[u8], labels: &[u8]) {
    for split in ["train", "t10k"] {
        let mut images = header(0x803, &dims);
        images.extend(payload);
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
        let mut l = header(0x801, &[labels.len() as u32]);
        l.extend(labels);
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), l).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn idx_parse_takes_any_bytes(bytes in vec(any::<u8>(), 0..80), dims in 1usize..4) {
        let _ = idx::parse("fuzz", &bytes, 0x803, dims);
    }

    /// Any header dimensions (zero, huge, overflowing their product) with any payload.
    #[test]
    fn idx_files_with_any_header(
        n in prop_oneof![0u32..4, any::<u32>()],
        h in prop_oneof![0u32..4, any::<u32>()],
        w in prop_oneof![0u32..4, any::<u32>()],
        payload in vec(any::<u8>(), 0..64),
        labels in vec(any::<u8>(), 0..4),
    ) {
        let dir = temp_dir("fuzz-idx");
        write_idx(&dir, [n, h, w], &payload, &labels);
        if let Ok(s) = idx::load(&dir, DatasetKind::FashionMnist.class_names()) {
            for d in [&s.train, &s.test] {
                prop_assert!(d.height > 0 && d.width > 0 && !d.is_empty());
                prop_assert_eq!(d.images.len(), d.len() * d.image_len());
                prop_assert!(d.labels.iter().all(|&l| (l as usize) < d.classes()));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gzip_garbage_is_an_error(bytes in vec(any::<u8>(), 0..80)) {
        let dir = temp_dir("fuzz-gz");
        let path = dir.join("x.gz");
        let mut raw = vec![0x1f, 0x8b];
        raw.extend(bytes);
        std::fs::write(&path, raw).unwrap();
        let _ = idx::read_maybe_gz(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// CIFAR-10 batches of any length: whole records with any label byte, or ragged ones.
    #[test]
    fn cifar_batches_of_any_content(records in 0usize..3, extra in 0usize..5, fill in any::<u8>()) {
        let dir = temp_dir("fuzz-cifar");
        let bytes = vec![fill; records * 3073 + extra];
        for name in ["test_batch.bin", "data_batch_1.bin", "data_batch_2.bin",
                     "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"] {
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
        if let Ok(s) = cifar::load(&dir) {
            prop_assert!(extra == 0 && records > 0 && fill < 10);
            prop_assert_eq!(s.test.len(), records);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Image folders whose files are arbitrary bytes named .png or .jpg.
    #[test]
    fn image_folders_of_any_bytes(files in vec(vec(any::<u8>(), 0..120), 1..4), jpg in any::<bool>()) {
        let dir = temp_dir("fuzz-folder");
        for (i, bytes) in files.iter().enumerate() {
            let class = dir.join(format!("class{}", i % 2));
            std::fs::create_dir_all(&class).unwrap();
            let ext = if jpg { "jpg" } else { "png" };
            std::fs::write(class.join(format!("{i}.{ext}")), bytes).unwrap();
        }
        let _ = densenet_wgpu::data::load_sized(DatasetKind::Folder, Some(&dir), 0, 8, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoint_of_random_bytes(bytes in vec(any::<u8>(), 0..200)) {
        let dir = temp_dir("fuzz-ck");
        let path = dir.join("ck.safetensors");
        std::fs::write(&path, bytes).unwrap();
        prop_assert!(Checkpoint::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real checkpoint cut short or with bytes changed anywhere (header, metadata, data).
    #[test]
    fn checkpoint_damaged(cut in any::<prop::sample::Index>(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        let dir = temp_dir("fuzz-ck2");
        let path = dir.join("ck.safetensors");
        let mut bytes = valid_checkpoint(&path);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep.max(bytes.len() / 2));
        std::fs::write(&path, &bytes).unwrap();
        let _ = Checkpoint::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The bytes of a real checkpoint of the tiny preset.
fn valid_checkpoint(path: &Path) -> Vec<u8> {
    let cfg = Preset::Tiny.config(DatasetKind::Synthetic, 10);
    let layout = Layout::new(&cfg, 8);
    let params = layout.init_params(cfg.init, 1);
    let stats = vec![0.5f32; layout.stats.len as usize];
    let state = State {
        params: &params,
        running_mean: &stats,
        running_var: &stats,
        velocity: None,
        exp_avg_sq: None,
    };
    let recipe = Preset::Tiny.recipe();
    Checkpoint::new(cfg, recipe, DatasetKind::Synthetic, (1, 10), &layout, state)
        .save(path)
        .unwrap();
    std::fs::read(path).unwrap()
}

fn torchvision_fixture(name: &str) -> Vec<u8> {
    std::fs::read(support::small_fixture(name)).expect("tests/fixtures/torchvision")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// A torchvision `.pth` (zip + pickle) cut short or with a byte changed: read into a
    /// DenseNet checkpoint, or a one-line error.
    #[test]
    fn pth_files_damaged_anywhere(cut in 0.0f64..1.0, flip in any::<(usize, u8)>()) {
        let mut bytes = torchvision_fixture("small-legacy.pth");
        let at = flip.0 % bytes.len();
        bytes[at] ^= flip.1.max(1);
        bytes.truncate(((bytes.len() as f64) * cut) as usize + 1);
        let dir = temp_dir("fuzz-pth");
        let path = dir.join("model.pth");
        std::fs::write(&path, &bytes).unwrap();
        match densenet_wgpu::import::read_file(&path) {
            Ok(sd) => {
                if let Err(e) = densenet_wgpu::import::to_checkpoint(&sd, "model.pth") {
                    let line = format!("{e:#}");
                    prop_assert!(!line.contains('\n'));
                }
            }
            Err(e) => {
                let line = format!("{e:#}");
                prop_assert!(!line.contains('\n'), "{}", line);
            }
        }
    }

    /// A timm/torchvision safetensors state dict with a byte changed or cut short.
    #[test]
    fn state_dict_safetensors_damaged(cut in 0.0f64..1.0, flip in any::<(usize, u8)>()) {
        let mut bytes = torchvision_fixture("small-legacy-batch.safetensors");
        let at = flip.0 % bytes.len();
        bytes[at] ^= flip.1.max(1);
        bytes.truncate(((bytes.len() as f64) * cut) as usize + 1);
        match densenet_wgpu::import::read_safetensors(&bytes, "fuzz.safetensors") {
            Ok(sd) => {
                let r = densenet_wgpu::import::to_checkpoint(&sd, "fuzz.safetensors");
                prop_assert!(r.is_err(), "a batch file is no DenseNet");
            }
            Err(e) => {
                let line = format!("{e:#}");
                prop_assert!(!line.contains('\n'));
            }
        }
    }

    /// Any text as a multi-label CSV: a set, or an error naming the file.
    #[test]
    fn multilabel_csv_takes_any_text(text in "[a-zA-Z ,|\"\n.0-9]{0,120}") {
        let dir = temp_dir("fuzz-csv");
        let labels = dir.join("labels.csv");
        std::fs::write(&labels, &text).unwrap();
        let spec = densenet_wgpu::data::multilabel::CsvSpec::chestxray14(labels);
        if let Err(e) = densenet_wgpu::data::multilabel::load(&dir, &spec, 8, 0) {
            let line = format!("{e:#}");
            prop_assert!(line.contains("labels.csv") || line.contains("image"), "{}", line);
        }
    }
}
