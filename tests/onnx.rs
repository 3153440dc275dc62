//! ONNX export: the model decodes back to what was written and names every parameter, and
//! onnxruntime (Python, through scripts/onnx-python, which installs it on first use) gives
//! the logits the CPU reference gives for networks of every shape we build (both stems, with
//! and without bottlenecks, conv biases and input normalization), and the logits `eval`
//! gives for a trained checkpoint, within 1e-4, at any batch size.

mod support;

use std::path::Path;
use std::process::Command;

use densenet_wgpu::data::idx;
use densenet_wgpu::model::config::{DenseNetConfig, Init, Stem};
use densenet_wgpu::model::layout::{Layout, ParamRole};
use densenet_wgpu::model::reference_net::reference_eval;
use densenet_wgpu::onnx::{self, proto::ModelProto, Weights};
use prost::Message;
use support::harness::{case, note};
use support::temp_dir;

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case(
            "the_model_decodes_and_holds_every_parameter",
            the_model_decodes_and_holds_every_parameter,
        ),
        case(
            "onnxruntime_matches_the_reference",
            onnxruntime_matches_the_reference,
        ),
        case(
            "exported_checkpoint_matches_eval_in_onnxruntime",
            exported_checkpoint_matches_eval_in_onnxruntime,
        ),
        case(
            "an_imported_torchvision_network_matches_torchvision_in_onnxruntime",
            an_imported_torchvision_network_matches_torchvision_in_onnxruntime,
        ),
    ])
}

/// Runs tests/onnx_parity.py on `model` against `want_csv` with extra arguments; fails the
/// test (never skips) when Python or onnxruntime cannot be set up.
fn onnxruntime_agrees(model: &Path, want_csv: &Path, images: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/onnx-python"))
        .arg(format!("{root}/tests/onnx_parity.py"))
        .arg(model)
        .arg(want_csv)
        .args(images)
        .output()
        .expect("scripts/onnx-python runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "onnxruntime parity failed:\n{text}\n{err}"
    );
    note(text);
}

/// Logits (N, classes) as `eval --logits` writes them, labels 0.
fn logits_csv(logits: &[f32], classes: usize) -> String {
    let head: Vec<String> = (0..classes).map(|c| format!("logit_{c}")).collect();
    let mut out = format!("label,{}\n", head.join(","));
    for row in logits.chunks(classes) {
        let values: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        out.push_str(&format!("0,{}\n", values.join(",")));
    }
    out
}

/// A network with trained-looking values: initialized weights, BN scales and shifts away
/// from 1 and 0, running statistics away from 0 and 1.
struct Trained {
    cfg: DenseNetConfig,
    layout: Layout,
    params: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    normalize: Option<Vec<(f32, f32)>>,
}

fn trained(cfg: DenseNetConfig, seed: u64, normalize: bool) -> Trained {
    let mut rng = fastrand::Rng::with_seed(seed);
    let layout = Layout::new(&cfg, 1);
    let mut params = layout.init_params(cfg.init, seed);
    for (slot, role) in layout.params.slots.iter().zip(&layout.roles) {
        let values = &mut params[slot.offset as usize..][..slot.len as usize];
        match role {
            ParamRole::Gamma => values.iter_mut().for_each(|v| *v = 0.5 + rng.f32()),
            ParamRole::Beta | ParamRole::Bias { .. } => {
                values.iter_mut().for_each(|v| *v = 0.4 * rng.f32() - 0.2)
            }
            ParamRole::Weight { .. } => {}
        }
    }
    let stats = layout.stats.len as usize;
    let mean = (0..stats).map(|_| 0.4 * rng.f32() - 0.2).collect();
    let var = (0..stats).map(|_| 0.5 + 1.5 * rng.f32()).collect();
    let normalize = normalize.then(|| {
        let c = cfg.in_channels as usize;
        (0..c)
            .map(|_| (0.3 + 0.4 * rng.f32(), 0.2 + 0.3 * rng.f32()))
            .collect()
    });
    Trained {
        cfg,
        layout,
        params,
        mean,
        var,
        normalize,
    }
}

impl Trained {
    fn model(&self) -> ModelProto {
        let weights = Weights {
            params: &self.params,
            running_mean: &self.mean,
            running_var: &self.var,
            normalize: self.normalize.as_deref(),
        };
        let names: Vec<String> = (0..self.cfg.classes)
            .map(|c| format!("class {c}"))
            .collect();
        onnx::model(&self.cfg, &weights, &names)
    }
}

/// DenseNet-BC with the ImageNet stem (conv bias, max-pool), a bottleneck and three channels.
fn imagenet_bc() -> DenseNetConfig {
    DenseNetConfig {
        in_channels: 3,
        image_size: 20,
        classes: 7,
        stem: Stem::ImageNet { channels: 8 },
        blocks: vec![2, 2],
        growth_rate: 4,
        bottleneck: Some(2),
        compression: 0.5,
        conv_bias: true,
        init: Init::XavierUniform,
        layer_stats: false,
        multi_label: false,
    }
}

fn the_model_decodes_and_holds_every_parameter() {
    for cfg in [
        DenseNetConfig::tiny(),
        imagenet_bc(),
        DenseNetConfig::bc100(),
    ] {
        let t = trained(cfg.clone(), 3, true);
        let model = t.model();
        let bytes = model.encode_to_vec();
        let back = ModelProto::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back, model);
        let graph = back.graph.expect("a graph");
        let names: Vec<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
        for slot in &t.layout.params.slots {
            let init = graph.initializer.iter().find(|i| i.name == slot.name);
            let init = init.unwrap_or_else(|| panic!("no initializer {}: {names:?}", slot.name));
            let want: Vec<u8> = t.params[slot.offset as usize..][..slot.len as usize]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            assert_eq!(init.raw_data, want, "{}", slot.name);
        }
        // Every BN has its own running statistics (a slice of its block's).
        let bns = graph
            .node
            .iter()
            .filter(|n| n.op_type == "BatchNormalization");
        for bn in bns {
            let mean = graph
                .initializer
                .iter()
                .find(|i| i.name == bn.input[3])
                .unwrap();
            let gamma = graph
                .initializer
                .iter()
                .find(|i| i.name == bn.input[1])
                .unwrap();
            assert_eq!(mean.dims, gamma.dims, "{}", bn.name);
        }
        let concats = graph.node.iter().filter(|n| n.op_type == "Concat").count();
        assert_eq!(concats as u32, cfg.blocks.iter().sum::<u32>());
        let dim = &graph.input[0]
            .r#type
            .as_ref()
            .unwrap()
            .tensor_type
            .as_ref()
            .unwrap();
        let batch = &dim.shape.as_ref().unwrap().dim[0];
        assert_eq!(batch.dim_param.as_deref(), Some("batch"));
        assert_eq!(batch.dim_value, None);
        assert_eq!(graph.node.last().unwrap().output, ["logits"]);
    }
}

/// (C, N, H, W) planes to (N, C, H, W).
fn to_nchw(x: &[f32], c: usize, n: usize, plane: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for ci in 0..c {
        for ni in 0..n {
            let src = &x[(ci * n + ni) * plane..][..plane];
            out[(ni * c + ci) * plane..][..plane].copy_from_slice(src);
        }
    }
    out
}

fn onnxruntime_matches_the_reference() {
    let dir = temp_dir("onnx-reference");
    for (i, (cfg, normalize)) in [
        (DenseNetConfig::tiny(), false),
        (imagenet_bc(), true),
        (
            DenseNetConfig {
                image_size: 12,
                blocks: vec![2, 1, 2],
                ..DenseNetConfig::bc100()
            },
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let t = trained(cfg.clone(), 10 + i as u64, normalize);
        let n = 5;
        let (c, plane) = (
            cfg.in_channels as usize,
            (cfg.image_size * cfg.image_size) as usize,
        );
        let mut rng = fastrand::Rng::with_seed(20 + i as u64);
        let raw: Vec<f32> = (0..c * n * plane).map(|_| rng.f32()).collect();
        // The reference takes normalized inputs, as the loader gives the plan.
        let mut x = raw.clone();
        if let Some(stats) = &t.normalize {
            for (ci, &(mean, std)) in stats.iter().enumerate() {
                for v in &mut x[ci * n * plane..][..n * plane] {
                    *v = (*v - mean) / std;
                }
            }
        }
        let labels = vec![0u32; n];
        let (_, _, logits) =
            reference_eval(&cfg, &t.layout, &t.params, (&t.mean, &t.var), &x, &labels);
        let model = dir.join(format!("model{i}.onnx"));
        onnx::save(&t.model(), &model).unwrap();
        let want = dir.join(format!("want{i}.csv"));
        std::fs::write(&want, logits_csv(&logits, cfg.classes as usize)).unwrap();
        let images = dir.join(format!("images{i}.f32"));
        let nchw = to_nchw(&raw, c, n, plane);
        let bytes: Vec<u8> = nchw.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&images, bytes).unwrap();
        onnxruntime_agrees(&model, &want, &["--raw", images.to_str().unwrap()]);
    }
}

/// The binary, untuned (tuning is tested in tests/tune.rs).
fn cli_ok(args: &[&str]) -> String {
    support::cli_ok(args, &[("DENSENET_TUNE", "off")])
}

/// Train -> eval --logits -> export --onnx -> onnxruntime on the same IDX images.
fn exported_checkpoint_matches_eval_in_onnxruntime() {
    let dir = temp_dir("onnx-cli");
    let mut rng = fastrand::Rng::with_seed(5);
    for (stem, n) in [("train", 64u32), ("t10k", 24)] {
        let images: Vec<u8> = (0..n * 28 * 28).map(|_| rng.u8(..)).collect();
        let labels: Vec<u8> = (0..n).map(|_| rng.u8(..10)).collect();
        let at = |kind: &str| {
            dir.join(format!(
                "{stem}-{kind}-idx{}-ubyte",
                1 + 2 * (kind == "images") as u8
            ))
        };
        std::fs::write(at("images"), idx::encode(&[n, 28, 28], &images)).unwrap();
        std::fs::write(at("labels"), idx::encode(&[n], &labels)).unwrap();
    }
    let (d, run) = (dir.to_str().unwrap(), dir.join("run"));
    let data = ["--dataset", "fashion-mnist", "--data-dir", d];
    let mut args = vec![
        "train",
        "--preset",
        "small",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ];
    args.extend(data);
    args.extend([
        "--augment",
        "crop=2,normalize",
        "--out",
        run.to_str().unwrap(),
    ]);
    cli_ok(&args);
    let ck = run.join("checkpoint.safetensors");
    let (ck, csv) = (ck.to_str().unwrap(), dir.join("eval.csv"));
    let mut args = vec![
        "eval",
        "--checkpoint",
        ck,
        "--logits",
        csv.to_str().unwrap(),
    ];
    args.extend(data);
    cli_ok(&args);
    let model = dir.join("model.onnx");
    let text = cli_ok(&[
        "export",
        "--checkpoint",
        ck,
        "--onnx",
        model.to_str().unwrap(),
    ]);
    assert!(text.contains("input images [batch, 1, 28, 28]"), "{text}");
    let images = dir.join("t10k-images-idx3-ubyte");
    onnxruntime_agrees(&model, &csv, &["--idx", images.to_str().unwrap()]);
}

/// A torchvision DenseNet imported from its legacy `.pth` (each batch norm with its own
/// running statistics) and exported: onnxruntime gives torchvision's logits (the fixture's,
/// computed by torchvision in f64) from pixels in [0, 1].
fn an_imported_torchvision_network_matches_torchvision_in_onnxruntime() {
    let sd = densenet_wgpu::import::read_file(&support::small_fixture("small-legacy.pth")).unwrap();
    let mut ck = densenet_wgpu::import::to_checkpoint(&sd, "small-legacy.pth").unwrap();
    ck.config.image_size = 64;
    let dir = support::temp_dir("onnx-imported");
    let model = densenet_wgpu::onnx::from_checkpoint(&ck).unwrap();
    densenet_wgpu::onnx::save(&model, &dir.join("small.onnx")).unwrap();
    let bytes = std::fs::read(support::small_fixture("small-legacy-batch.safetensors")).unwrap();
    let batch = densenet_wgpu::import::read_safetensors(&bytes, "batch").unwrap();
    let pixels: Vec<u8> = batch["pixels"]
        .1
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(dir.join("pixels.f32"), pixels).unwrap();
    std::fs::write(dir.join("want.csv"), logits_csv(&batch["eval_logits"].1, 5)).unwrap();
    let raw = dir.join("pixels.f32").display().to_string();
    onnxruntime_agrees(
        &dir.join("small.onnx"),
        &dir.join("want.csv"),
        &["--raw", &raw],
    );
}
