//! Datasets without a GPU: the synthetic set needs convolution, the IDX and CIFAR-10 readers
//! read files written here (gzipped or not) and refuse broken ones by name, and the loader
//! lays batches out channel-major.

use std::sync::Arc;

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
