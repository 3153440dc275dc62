//! Checkpoint files without a device: a round trip keeps every tensor and the metadata; F16
//! and BF16 tensors are read as f32; a tensor of another type is refused by name; a network
//! whose shapes differ is refused by tensor.

mod support;

use std::collections::HashMap;

use densenet_wgpu::checkpoint::{Checkpoint, State, FORMAT};
use densenet_wgpu::data::DatasetKind;
use densenet_wgpu::model::{DenseNetConfig, Layout};
use densenet_wgpu::recipe::Preset;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use support::temp_dir;

fn checkpoint(cfg: &DenseNetConfig) -> (Checkpoint, Vec<f32>) {
    let layout = Layout::new(cfg, 8);
    let params = layout.init_params(cfg.init, 3);
    let stats: Vec<f32> = (0..layout.stats.len).map(|i| i as f32 * 0.25).collect();
    let state = State {
        params: &params,
        running_mean: &stats,
        running_var: &stats,
        velocity: Some(&params),
        exp_avg_sq: None,
    };
    let recipe = Preset::Tiny.recipe();
    let ck = Checkpoint::new(
        cfg.clone(),
        recipe,
        DatasetKind::Synthetic,
        (2, 40),
        &layout,
        state,
    );
    (ck, params)
}

#[test]
fn a_round_trip_keeps_every_tensor() {
    let cfg = DenseNetConfig::tiny();
    let (ck, params) = checkpoint(&cfg);
    let dir = temp_dir("ck");
    let path = dir.join("ck.safetensors");
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(
        (back.epoch, back.step, back.dataset),
        (2, 40, DatasetKind::Synthetic)
    );
    assert_eq!(back.config, cfg);
    assert_eq!(back.tensors, ck.tensors);
    let layout = Layout::new(&cfg, 8);
    assert_eq!(back.arena(&layout.params, "", "").unwrap(), params);
    let v = back
        .optional_arena(&layout.params, "optimizer.velocity.", "")
        .unwrap();
    assert_eq!(v.unwrap(), params);
    // Another alignment of the same network scatters the same values.
    let packed = Layout::new(&cfg, 1);
    let values = back.arena(&packed.params, "", "").unwrap();
    assert_eq!(values.len() as u64, packed.parameter_count());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file with `tensors` (name, dtype, shape, bytes) and our metadata.
fn write_file(path: &std::path::Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let (ck, _) = checkpoint(&DenseNetConfig::tiny());
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(&ck.config).unwrap(),
    );
    meta.insert(
        "recipe".to_string(),
        serde_json::to_string(&ck.recipe).unwrap(),
    );
    meta.insert("dataset".to_string(), "fashion-mnist".to_string());
    meta.insert("epoch".to_string(), "1".to_string());
    meta.insert("step".to_string(), "7".to_string());
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn half_precision_tensors_are_read_as_f32() {
    let values = [1.5f32, -0.25, 3.0];
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let dir = temp_dir("half");
    let path = dir.join("half.safetensors");
    write_file(
        &path,
        &[
            ("a", Dtype::F16, vec![3], f16),
            ("b", Dtype::BF16, vec![1, 3], bf16),
        ],
    );
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.dataset, DatasetKind::FashionMnist);
    assert_eq!(ck.tensors["a"], (vec![3], values.to_vec()));
    assert_eq!(ck.tensors["b"], (vec![1, 3], values.to_vec()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_tensor_types_and_wrong_shapes_are_refused_by_name() {
    let dir = temp_dir("int");
    let path = dir.join("int.safetensors");
    write_file(
        &path,
        &[("stem.conv.weight", Dtype::I32, vec![2], vec![0; 8])],
    );
    let err = Checkpoint::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("stem.conv.weight") && err.contains("I32") && err.contains("F16"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");

    write_file(
        &path,
        &[("stem.conv.weight", Dtype::F32, vec![2], vec![0; 8])],
    );
    let ck = Checkpoint::load(&path).unwrap();
    let layout = Layout::new(&DenseNetConfig::tiny(), 1);
    let err = ck.arena(&layout.params, "", "").err().unwrap().to_string();
    assert!(
        err.contains("stem.conv.weight") && err.contains("shape"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dataset_names_round_trip() {
    for kind in [
        DatasetKind::Synthetic,
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
    ] {
        assert_eq!(DatasetKind::from_name(kind.name()), Some(kind));
    }
    assert_eq!(DatasetKind::from_name("imagenet"), None);
}
