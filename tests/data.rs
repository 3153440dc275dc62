//! Datasets without a GPU: the synthetic set needs convolution, the IDX and CIFAR-10 readers
//! read files written here (gzipped or not) and refuse broken ones by name, and the loader
//! lays batches out channel-major.

use std::sync::Arc;

use densenet_wgpu::data::augment::{crop_flip, Augment, AugmentSpec};
use densenet_wgpu::data::loader::{Loader, Order};
use densenet_wgpu::data::{self, idx, synthetic, Dataset, DatasetKind};
use densenet_wgpu::ops::cross_entropy::IGNORE;
use flate2::write::GzEncoder;
use std::io::Write;

mod support;
use support::temp_dir;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Multinomial logistic regression on raw pixels, trained with minibatch SGD: the best a
/// model without convolution (or any hidden layer) does on the set.
fn softmax_regression_accuracy(train: &Dataset, test: &Dataset) -> f64 {
    let d = train.image_len();
    let k = train.classes();
    let mut w = vec![0f32; k * d];
    let mut b = vec![0f32; k];
    let features = |ds: &Dataset, i: usize| -> Vec<f32> {
        ds.image(i)
            .iter()
            .map(|&v| v as f32 / 255.0 - 0.5)
            .collect()
    };
    let scores = |w: &[f32], b: &[f32], x: &[f32]| -> Vec<f32> {
        (0..k)
            .map(|c| {
                b[c] + w[c * d..][..d]
                    .iter()
                    .zip(x)
                    .map(|(a, v)| a * v)
                    .sum::<f32>()
            })
            .collect()
    };
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let lr = 0.005;
    for _epoch in 0..8 {
        rng.shuffle(&mut order);
        for &i in &order {
            let x = features(train, i);
            let s = scores(&w, &b, &x);
            let max = s.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
            let z: f32 = e.iter().sum();
            for c in 0..k {
                let g = e[c] / z - (c == train.labels[i] as usize) as u8 as f32;
                b[c] -= lr * g;
                for (wv, xv) in w[c * d..][..d].iter_mut().zip(&x) {
                    *wv -= lr * g * xv;
                }
            }
        }
    }
    let correct = (0..test.len())
        .filter(|&i| {
            let s = scores(&w, &b, &features(test, i));
            let arg = (0..k).max_by(|&a, &c| s[a].total_cmp(&s[c])).unwrap();
            arg == test.labels[i] as usize
        })
        .count();
    correct as f64 / test.len() as f64
}

#[test]
fn synthetic_set_needs_convolution() {
    let splits = synthetic::generate(0);
    assert_eq!(splits.train.len(), synthetic::TRAIN);
    assert_eq!(splits.test.len(), synthetic::TEST);
    let acc = softmax_regression_accuracy(&splits.train, &splits.test);
    println!(
        "softmax regression on raw pixels: test accuracy {:.1}%",
        100.0 * acc
    );
    assert!(
        acc <= 0.60,
        "a linear model reaches {acc}: the set does not need convolution"
    );

    // The regression itself works: on images whose class is the brightness of one fixed
    // pixel (linearly separable) it is near perfect.
    let easy = |ds: &Dataset| {
        let mut ds = ds.clone();
        let n = ds.image_len();
        for (i, img) in ds.images.chunks_mut(n).enumerate() {
            img.fill(0);
            img[ds.labels[i] as usize] = 255;
        }
        ds
    };
    let (mut train, test) = (easy(&splits.train), easy(&splits.test));
    train.truncate(2000);
    let easy_acc = softmax_regression_accuracy(&train, &test);
    assert!(
        easy_acc > 0.95,
        "the regression fails an easy set: {easy_acc}"
    );
}

#[test]
fn synthetic_set_is_deterministic_by_seed() {
    let (a, b, c) = (
        synthetic::generate(3),
        synthetic::generate(3),
        synthetic::generate(4),
    );
    assert_eq!(a.train.images, b.train.images);
    assert_eq!(a.test.labels, b.test.labels);
    assert_ne!(a.train.images, c.train.images);
    // Balanced classes.
    for class in 0..10u8 {
        let n = a.train.labels.iter().filter(|&&l| l == class).count();
        assert_eq!(n, synthetic::TRAIN / 10);
    }
}

fn write_idx_set(dir: &std::path::Path, gz: bool, n_train: u32, n_test: u32) -> (Vec<u8>, Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(1);
    let write = |stem: &str, shape: &[u32], data: &[u8]| {
        let bytes = idx::encode(shape, data);
        let (name, bytes) = match gz {
            true => (format!("{stem}.gz"), gzip(&bytes)),
            false => (stem.to_string(), bytes),
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let train_images: Vec<u8> = (0..n_train * 28 * 28).map(|_| rng.u8(..)).collect();
    let train_labels: Vec<u8> = (0..n_train).map(|_| rng.u8(..10)).collect();
    let test_images: Vec<u8> = (0..n_test * 28 * 28).map(|_| rng.u8(..)).collect();
    let test_labels: Vec<u8> = (0..n_test).map(|_| rng.u8(..10)).collect();
    write("train-images-idx3-ubyte", &[n_train, 28, 28], &train_images);
    write("train-labels-idx1-ubyte", &[n_train], &train_labels);
    write("t10k-images-idx3-ubyte", &[n_test, 28, 28], &test_images);
    write("t10k-labels-idx1-ubyte", &[n_test], &test_labels);
    (train_images, test_labels)
}

#[test]
fn idx_files_load_gzipped_or_not() {
    for gz in [true, false] {
        let dir = temp_dir("idx");
        let (train_images, test_labels) = write_idx_set(&dir, gz, 7, 5);
        let s = data::load(DatasetKind::FashionMnist, Some(&dir), 0).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (7, 5));
        assert_eq!(
            (s.train.channels, s.train.height, s.train.width),
            (1, 28, 28)
        );
        assert_eq!(s.train.images, train_images);
        assert_eq!(s.test.labels, test_labels);
        assert_eq!(s.train.class_names[9], "ankle boot");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn broken_idx_files_are_refused_by_name() {
    let dir = temp_dir("idx-bad");
    write_idx_set(&dir, false, 4, 3);
    // Labels for 4 images, but 5 claimed in the header.
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx::encode(&[5], &[1, 2, 3, 4]),
    )
    .unwrap();
    let err = data::load(DatasetKind::Mnist, Some(&dir), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("train-labels-idx1-ubyte"), "{err}");
    write_idx_set(&dir, false, 4, 3);
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
    let err = data::load(DatasetKind::Mnist, Some(&dir), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("t10k-images-idx3-ubyte"), "{err}");
    let err = data::load(DatasetKind::Mnist, None, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--data-dir"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cifar10_batches_load() {
    let dir = temp_dir("cifar").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend((0..3 * 1024).map(|i| fill.wrapping_add((i / 1024) as u8)));
        r
    };
    for i in 1..=5u8 {
        let bytes: Vec<u8> = [record(i, 10 * i), record(9, 1)].concat();
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), record(3, 200)).unwrap();
    let s = data::load(DatasetKind::Cifar10, dir.parent(), 0).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (10, 1));
    assert_eq!(
        (s.train.channels, s.train.height, s.train.width),
        (3, 32, 32)
    );
    assert_eq!(s.train.labels[..4], [1, 9, 2, 9]);
    // Channel planes in order: red 200, green 201, blue 202.
    let img = s.test.image(0);
    assert_eq!((img[0], img[1024], img[2048]), (200, 201, 202));
    std::fs::write(dir.join("data_batch_3.bin"), vec![0u8; 100]).unwrap();
    let err = data::load(DatasetKind::Cifar10, Some(&dir), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("data_batch_3.bin"), "{err}");
}

/// CIFAR-100's binary version: coarse then fine label bytes; the fine label (100 classes)
/// is used, with its class names.
#[test]
fn cifar100_uses_fine_labels() {
    let dir = temp_dir("cifar100").join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |coarse: u8, fine: u8, fill: u8| {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(fill, 3 * 1024));
        r
    };
    let train = [record(4, 99, 1), record(19, 0, 2), record(1, 57, 3)].concat();
    std::fs::write(dir.join("train.bin"), train).unwrap();
    std::fs::write(dir.join("test.bin"), record(0, 42, 7)).unwrap();
    let s = data::load(DatasetKind::Cifar100, dir.parent(), 0).unwrap();
    assert_eq!(s.train.labels, [99, 0, 57]);
    assert_eq!(s.train.classes(), 100);
    assert_eq!(s.train.class_names[99], "worm");
    assert_eq!(s.test.class_names[42], "leopard");
    assert_eq!(s.test.image(0)[3071], 7);
    // A fine label past 99 is refused by name.
    std::fs::write(dir.join("test.bin"), record(0, 100, 7)).unwrap();
    let err = data::load(DatasetKind::Cifar100, Some(&dir), 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("label 100"), "{err}");
    assert_eq!(
        DatasetKind::from_name("cifar100"),
        Some(DatasetKind::Cifar100)
    );
}

#[test]
fn loader_lays_batches_out_channel_major() {
    // 5 RGB 2x2 images whose values encode (image, channel, pixel).
    let images: Vec<u8> = (0..5u8)
        .flat_map(|i| (0..3u8).flat_map(move |c| (0..4u8).map(move |p| i * 50 + c * 10 + p)))
        .collect();
    let ds = Arc::new(Dataset {
        images,
        labels: vec![0, 1, 2, 3, 4],
        channels: 3,
        height: 2,
        width: 2,
        class_names: (0..5).map(|i| i.to_string()).collect(),
        targets: None,
    });
    let batches: Vec<_> = Loader::new(ds.clone(), 2, Order::Sequential, (2, 2)).collect();
    assert_eq!(
        batches.len(),
        3,
        "the last, partial batch is padded, not dropped"
    );
    let b = &batches[1];
    // (C, N, H, W): channel 1 of image 3 (batch slot 1) sits at (1 * 2 + 1) * 4.
    assert_eq!(b.x[(2 + 1) * 4 + 2], (3 * 50 + 10 + 2) as f32 / 255.0);
    assert_eq!(b.labels, [2, 3]);
    assert_eq!((batches[2].count, batches[2].labels[1]), (1, IGNORE));
    let shuffled: Vec<_> = Loader::new(ds, 2, Order::Shuffled(5), (2, 2)).collect();
    assert_eq!(shuffled.len(), 2, "training drops the last partial batch");
    let mut seen: Vec<u32> = shuffled.iter().flat_map(|b| b.labels.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "no example twice in an epoch");
}

#[test]
fn loader_resizes_bilinearly() {
    let ds = Arc::new(Dataset {
        images: vec![0, 255, 0, 255],
        labels: vec![0],
        channels: 1,
        height: 2,
        width: 2,
        class_names: vec!["a".into()],
        targets: None,
    });
    let b = Loader::new(ds, 1, Order::Sequential, (4, 4))
        .next()
        .unwrap();
    assert_eq!(b.x.len(), 16);
    // Columns go dark, dark-ish, bright-ish, bright: a ramp, not nearest-neighbour blocks.
    let row: Vec<f32> = b.x[..4].to_vec();
    assert!(
        row[0] < row[1] && row[1] < row[2] && row[2] < row[3],
        "{row:?}"
    );
}

/// One case of tests/fixtures/pil_bilinear.json (written by scripts/pil-resize-fixture.py):
/// a seeded random 8-bit plane and Pillow's `Image.resize((out_w, out_h), Image.BILINEAR)`.
struct PilCase {
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// The Pillow fixture's cases, and the Pillow version that wrote them.
fn pil_bilinear_fixture() -> (Vec<PilCase>, String) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pil_bilinear.json"
    );
    let text = std::fs::read_to_string(path).expect("the Pillow fixture");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hex = |v: &serde_json::Value| -> Vec<u8> {
        let s = v.as_str().unwrap().as_bytes();
        s.chunks(2)
            .map(|b| u8::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap())
            .collect()
    };
    let size = |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap() as u32;
    let cases: Vec<PilCase> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| PilCase {
            h: size(c, "h"),
            w: size(c, "w"),
            out_h: size(c, "out_h"),
            out_w: size(c, "out_w"),
            input: hex(&c["input"]),
            output: hex(&c["output"]),
        })
        .collect();
    for c in &cases {
        assert_eq!(c.input.len(), (c.h * c.w) as usize);
        assert_eq!(c.output.len(), (c.out_h * c.out_w) as usize);
    }
    assert!(cases.len() >= 5, "the fixture has its cases");
    (cases, json["pillow"].as_str().unwrap().to_string())
}

/// `resize_plane` gives Pillow's bytes exactly (times 1/255): enlarging, shrinking by
/// non-integer factors, one axis unchanged, one pixel to many and many to one, and images
/// that Pillow resizes vertically first.
#[test]
fn resize_matches_pillow_bilinear() {
    let (cases, pillow) = pil_bilinear_fixture();
    for c in &cases {
        let got: Vec<u8> = data::loader::resize_plane(&c.input, c.h, c.w, c.out_h, c.out_w)
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect();
        let wrong: Vec<usize> = (0..got.len()).filter(|&i| got[i] != c.output[i]).collect();
        assert!(
            wrong.is_empty(),
            "{}x{} -> {}x{}: {} of {} pixels differ from Pillow {pillow}'s, the first at {} \
             ({} here, {} in Pillow)",
            c.h,
            c.w,
            c.out_h,
            c.out_w,
            wrong.len(),
            got.len(),
            wrong[0],
            got[wrong[0]],
            c.output[wrong[0]]
        );
    }
}

/// The fixture tells a float resize from Pillow's: the `image` crate's Triangle filter (what
/// `resize_plane` used before, with an f32 intermediate) misses Pillow by one level on 2100
/// of the fixture's 12735 pixels (Pillow 13.0.0's fixture), never by more.
#[test]
fn image_crate_triangle_resize_differs_from_pillow() {
    use image::imageops::{resize, FilterType};
    use image::{ImageBuffer, Luma};
    let (cases, _) = pil_bilinear_fixture();
    let (mut wrong, mut total) = (0, 0);
    for c in &cases {
        let img: ImageBuffer<Luma<u8>, &[u8]> =
            ImageBuffer::from_raw(c.w, c.h, &c.input[..]).unwrap();
        let old = resize(&img, c.out_w, c.out_h, FilterType::Triangle).into_raw();
        for (a, b) in old.iter().zip(&c.output) {
            assert!(a.abs_diff(*b) <= 1, "off by more than one level");
            wrong += (a != b) as usize;
        }
        total += old.len();
    }
    assert!(
        wrong * 50 > total,
        "{wrong} of {total} pixels differ: the fixture no longer tells the two apart"
    );
}

/// Zero-pad, crop at an offset, mirror: exact pixels of a 3x3 plane.
#[test]
fn crop_and_flip_move_exact_pixels() {
    let plane: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // rows 1 2 3 / 4 5 6 / 7 8 9
                                                               // Offset (pad, pad) is the identity; flipping mirrors each row.
    assert_eq!(crop_flip(&plane, (3, 3), 1, (1, 1), false), plane);
    assert_eq!(
        crop_flip(&plane, (3, 3), 1, (1, 1), true),
        [3., 2., 1., 6., 5., 4., 9., 8., 7.]
    );
    // Offset (0, 0): the image moves down-right by one, zeros come in from the top-left.
    assert_eq!(
        crop_flip(&plane, (3, 3), 1, (0, 0), false),
        [0., 0., 0., 0., 1., 2., 0., 4., 5.]
    );
    // Offset (2, 1) then mirror: moved up by one, the bottom row zero, rows mirrored.
    assert_eq!(
        crop_flip(&plane, (3, 3), 1, (2, 1), true),
        [6., 5., 4., 9., 8., 7., 0., 0., 0.]
    );
    // A 2x3 plane, pad 2, offset (4, 0): only the bottom-left corner's source survives.
    let wide: Vec<f32> = (1..=6).map(|v| v as f32).collect();
    assert_eq!(
        crop_flip(&wide, (2, 3), 2, (4, 0), false),
        [0., 0., 0., 0., 0., 0.]
    );
    assert_eq!(
        crop_flip(&wide, (2, 3), 2, (2, 0), false),
        [0., 0., 1., 0., 0., 4.]
    );
}

/// Random choices depend only on the epoch's seed and the example: all offsets and both
/// flips occur, the same seed repeats them, and another seed changes them.
#[test]
fn augmentation_choices_are_seeded() {
    let aug = Augment {
        pad: 2,
        flip: true,
        normalize: None,
        resized_crop: false,
    };
    let draws: Vec<_> = (0..400).map(|i| aug.choices(7, i)).collect();
    assert_eq!(
        draws,
        (0..400).map(|i| aug.choices(7, i)).collect::<Vec<_>>()
    );
    assert_ne!(
        draws,
        (0..400).map(|i| aug.choices(8, i)).collect::<Vec<_>>()
    );
    for o in 0..5 {
        assert!(draws.iter().any(|d| d.0 == o) && draws.iter().any(|d| d.1 == o));
    }
    assert!(draws.iter().any(|d| d.2) && draws.iter().any(|d| !d.2));
    assert!(draws.iter().all(|d| d.0 <= 4 && d.1 <= 4));
    let no_flip = Augment { flip: false, ..aug };
    assert!((0..100).all(|i| !no_flip.choices(7, i).2));
}

#[test]
fn augment_flag_and_dataset_defaults() {
    let spec = AugmentSpec::parse("crop=3,flip,normalize").unwrap();
    assert_eq!((spec.pad, spec.flip, spec.normalize), (3, true, true));
    assert_eq!(AugmentSpec::parse("none").unwrap(), AugmentSpec::NONE);
    assert_eq!(AugmentSpec::parse("crop").unwrap().pad, 4);
    assert!(AugmentSpec::parse("crop=x").unwrap_err().contains("crop=x"));
    assert!(AugmentSpec::parse("rotate").unwrap_err().contains("rotate"));
    let cifar = AugmentSpec::default_for(DatasetKind::Cifar10);
    assert_eq!((cifar.pad, cifar.flip, cifar.normalize), (4, true, true));
    let digits = AugmentSpec::default_for(DatasetKind::FashionMnist);
    assert_eq!((digits.pad, digits.flip), (2, false));
    assert_eq!(
        AugmentSpec::default_for(DatasetKind::Synthetic),
        AugmentSpec::NONE
    );
}

/// The loader: a shuffled (training) epoch crops, flips and normalizes each example as its
/// seeded choices say; a sequential (evaluation) pass only normalizes.
#[test]
fn loader_augments_training_batches_only() {
    // Two 2-channel 3x3 images: channel c of image i holds i*100 + c*10 + pixel.
    let images: Vec<u8> = (0..2u8)
        .flat_map(|i| (0..2u8).flat_map(move |c| (0..9u8).map(move |p| i * 100 + c * 10 + p)))
        .collect();
    let ds = Arc::new(Dataset {
        images,
        labels: vec![0, 1],
        channels: 2,
        height: 3,
        width: 3,
        class_names: vec!["a".into(), "b".into()],
        targets: None,
    });
    let aug = AugmentSpec::parse("crop=1,flip,normalize")
        .unwrap()
        .build(&ds);
    let stats = aug.normalize.clone().unwrap();
    let plane = |i: usize, c: usize| -> Vec<f32> {
        (0..9)
            .map(|p| (i * 100 + c * 10 + p) as f32 / 255.0)
            .collect()
    };
    // The statistics are the training set's per channel.
    let mean0: f32 = (0..2).flat_map(|i| plane(i, 0)).sum::<f32>() / 18.0;
    assert!((stats[0].0 - mean0).abs() < 1e-6);
    let aug = Arc::new(aug);
    let shuffled = Loader::with_augment(ds.clone(), 2, Order::Shuffled(3), (3, 3), aug.clone());
    let batch = shuffled.into_iter().next().unwrap();
    for slot in 0..2 {
        let i = batch.labels[slot] as usize;
        let (oy, ox, flip) = aug.choices(3, i);
        for (c, &(mean, std)) in stats.iter().enumerate() {
            let want: Vec<f32> = crop_flip(&plane(i, c), (3, 3), 1, (oy, ox), flip)
                .iter()
                .map(|v| (v - mean) / std)
                .collect();
            assert_eq!(
                batch.x[(c * 2 + slot) * 9..][..9],
                want[..],
                "image {i} channel {c}"
            );
        }
    }
    let eval = Loader::with_augment(ds, 2, Order::Sequential, (3, 3), aug)
        .next()
        .unwrap();
    let want: Vec<f32> = plane(1, 1)
        .iter()
        .map(|v| (v - stats[1].0) / stats[1].1)
        .collect();
    assert_eq!(
        eval.x[(2 + 1) * 9..][..9],
        want[..],
        "evaluation: normalized only"
    );
}

/// Color images (folders, `predict`) resize each band as Pillow does an RGB image: the same
/// bytes per band as the single-plane resize.
#[test]
fn rgb_images_resize_each_band_as_pillow() {
    let (cases, _) = pil_bilinear_fixture();
    for c in &cases {
        let inverse: Vec<u8> = c.input.iter().map(|v| 255 - v).collect();
        let pixels = (0..c.input.len())
            .flat_map(|i| [c.input[i], inverse[i], c.input[i]])
            .collect();
        let img = image::RgbImage::from_raw(c.w, c.h, pixels).unwrap();
        let out = data::resize::rgb(&img, c.out_w, c.out_h);
        let band =
            |b: usize| -> Vec<u8> { out.as_raw().iter().skip(b).step_by(3).copied().collect() };
        let (h, w, oh, ow) = (
            c.h as usize,
            c.w as usize,
            c.out_h as usize,
            c.out_w as usize,
        );
        assert_eq!(band(0), c.output, "{h}x{w} -> {oh}x{ow}");
        assert_eq!(band(1), data::resize::bilinear(&inverse, h, w, oh, ow));
        assert_eq!(band(2), c.output);
    }
}

/// ImageNet's crops: the random box stays inside the image, covers 8-100% of it at an
/// aspect in [3/4, 4/3] (or the fallback), repeats for a seed and changes with it; a
/// training batch is the box resized to the input; evaluation takes the exact center.
#[test]
fn imagenet_crops_are_torchvisions() {
    let aug = Augment {
        pad: 0,
        flip: true,
        normalize: None,
        resized_crop: true,
    };
    assert_eq!(aug.load_size(224), 256);
    let (h, w) = (256u32, 256u32);
    let mut flips = 0;
    for i in 0..500 {
        let ([top, left, bh, bw], flip) = aug.resized_box(3, i, (h, w));
        assert!(top + bh <= h && left + bw <= w && bh > 0 && bw > 0);
        let share = (bh * bw) as f64 / (h * w) as f64;
        let aspect = bw as f64 / bh as f64;
        assert!((0.07..=1.0).contains(&share), "{share}");
        assert!((0.74..=1.35).contains(&aspect), "{aspect}");
        flips += flip as u32;
        assert_eq!(aug.resized_box(3, i, (h, w)), ([top, left, bh, bw], flip));
    }
    assert!((150..350).contains(&flips), "{flips} flips of 500");
    assert_ne!(aug.resized_box(3, 0, (h, w)), aug.resized_box(4, 0, (h, w)));
    // A 16x16 image of one channel whose pixel is its index; the input is 14x14.
    let ds = Arc::new(Dataset {
        images: (0..=255u8).collect(),
        labels: vec![0],
        channels: 1,
        height: 16,
        width: 16,
        class_names: vec!["a".into()],
        targets: None,
    });
    let eval = Loader::with_augment(
        ds.clone(),
        1,
        Order::Sequential,
        (14, 14),
        Arc::new(aug.clone()),
    );
    let x = eval.into_iter().next().unwrap().x;
    // The center 14x14: rows and columns 1..15.
    let want: Vec<f32> = (1..15)
        .flat_map(|y| (1..15).map(move |c| (y * 16 + c) as f32 / 255.0))
        .collect();
    assert_eq!(x, want);
    let train = Loader::with_augment(ds, 1, Order::Shuffled(9), (14, 14), Arc::new(aug));
    let x = train.into_iter().next().unwrap().x;
    assert_eq!(x.len(), 14 * 14);
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
}
