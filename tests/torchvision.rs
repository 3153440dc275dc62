//! torchvision's DenseNets imported (`densenet_wgpu::import`) against what torchvision's own
//! modules computed (tests/fixtures/torchvision, and densenet121's in $DENSENET_FIXTURES:
//! made in f64 from f32 weights whose batch norms were perturbed layer by layer): densenet121's
//! evaluation logits through the evaluation plan, its training-mode loss, ten parameter
//! gradients and three batch norms' running statistics after one step through the training
//! plan; a legacy `.pth` of a small DenseNet and its logits; the presets' parameter counts;
//! the names written back for torchvision; one-line errors for files that are not DenseNets.

mod support;

use std::path::PathBuf;

use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::import::{self, Tensors, IMAGENET_NORMALIZE};
use densenet_wgpu::model::{DenseNetConfig, Layout, Plan, SgdConfig};
use support::harness::{case, FIXTURES};
use support::k;

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case("preset_parameter_counts_are_torchvisions", parameter_counts),
        case("names_map_both_ways", names_map_both_ways).needs(FIXTURES),
        case(
            "densenet121_evaluation_logits",
            densenet121_evaluation_logits,
        )
        .needs(FIXTURES),
        case("densenet121_training_step", densenet121_training_step).needs(FIXTURES),
        case("legacy_pth_imports_with_its_logits", legacy_pth_logits),
        case(
            "files_that_are_not_densenets_are_one_line_errors",
            not_densenets,
        ),
        case(
            "fine_tuning_from_a_pth_replaces_the_classifier",
            fine_tuning,
        ),
    ])
}

/// A fixture: the small ones are in the repository, densenet121's beside it (the cases that
/// read them need `FIXTURES`).
fn fixture(name: &str) -> PathBuf {
    match name.starts_with("small-") {
        true => support::small_fixture(name),
        false => support::shared_fixtures()
            .expect("the torchvision fixtures (the case needs FIXTURES)")
            .join(name),
    }
}

fn tensors(name: &str) -> Tensors {
    let bytes = std::fs::read(fixture(name)).expect("the fixture is readable");
    import::read_safetensors(&bytes, name).expect("a safetensors fixture")
}

fn parameter_counts() {
    for (cfg, want) in [
        (DenseNetConfig::densenet121(), 7_978_856),
        (DenseNetConfig::densenet169(), 14_149_480),
        (DenseNetConfig::densenet201(), 20_013_928),
        (DenseNetConfig::densenet161(), 28_681_000),
    ] {
        assert_eq!(
            Layout::new(&cfg, 1).parameter_count(),
            want,
            "{:?}",
            cfg.blocks
        );
    }
}

/// Our names and torchvision's, both ways: the imported checkpoint written back under
/// torchvision's names gives exactly the file's tensors (its counters aside).
fn names_map_both_ways() {
    assert_eq!(
        import::canonical("features.denseblock1.denselayer1.norm.1.weight"),
        "features.denseblock1.denselayer1.norm1.weight"
    );
    assert_eq!(
        import::canonical("module.features.denseblock2.denselayer10.conv.2.weight"),
        "features.denseblock2.denselayer10.conv2.weight"
    );
    assert_eq!(
        import::torchvision_name("blocks.0.layers.2.conv.weight").as_deref(),
        Some("features.denseblock1.denselayer3.conv2.weight")
    );
    let sd = tensors("densenet121.safetensors");
    let ck = import::to_checkpoint(&sd, "densenet121.safetensors").unwrap();
    let back = import::to_torchvision(&ck).unwrap();
    assert_eq!(back.len(), sd.len(), "every float tensor once");
    for (name, t) in &sd {
        assert_eq!(back.get(name), Some(t), "{name}");
    }
}

/// (C, N, H, W) inputs from NCHW pixels in [0, 1], normalized with ImageNet's statistics.
fn channel_major(pixels: &(Vec<usize>, Vec<f32>)) -> Vec<f32> {
    let (s, v) = pixels;
    let (n, c, plane) = (s[0], s[1], s[2] * s[3]);
    let mut out = vec![0f32; v.len()];
    for i in 0..n {
        for ch in 0..c {
            let (mean, std) = IMAGENET_NORMALIZE[ch];
            for p in 0..plane {
                out[(ch * n + i) * plane + p] = (v[(i * c + ch) * plane + p] - mean) / std;
            }
        }
    }
    out
}

/// max |a - b| / max |b|: a difference relative to the largest value expected.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let worst = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    worst / scale.max(f64::MIN_POSITIVE)
}

/// The batch's labels (int64, which the float reader leaves out).
fn int64_labels(name: &str) -> Vec<u32> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("labels").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

fn imported(name: &str) -> Checkpoint {
    let sd = match name.ends_with(".pth") {
        true => import::read_file(&fixture(name)).unwrap(),
        false => tensors(name),
    };
    import::to_checkpoint(&sd, name).unwrap()
}

/// The logits of `ck` on the batch's pixels (at their size: the network is convolutional
/// up to its global pool) against the batch's expected ones.
fn evaluation_logits(ck: &mut Checkpoint, batch: &Tensors) -> f64 {
    let k = k();
    let pixels = &batch["pixels"];
    let n = pixels.0[0] as u32;
    ck.config.image_size = pixels.0[2] as u32;
    let plan = Plan::eval_in(k, &ck.config, n, DType::F32).unwrap();
    ck.restore(k.gpu(), &plan).unwrap();
    plan.upload(k.gpu(), &channel_major(pixels), &vec![0; n as usize])
        .unwrap();
    plan.submit_eval(k.gpu());
    let logits = plan.read_logits(k.gpu()).unwrap();
    let diff = relative(&logits, &batch["eval_logits"].1);
    support::harness::note(format!("logits within {diff:.2e} of the largest"));
    diff
}

fn densenet121_evaluation_logits() {
    let mut ck = imported("densenet121.safetensors");
    let diff = evaluation_logits(&mut ck, &tensors("densenet121-batch.safetensors"));
    assert!(diff <= 1e-4, "logits differ by {diff:e} of the largest");
}

fn legacy_pth_logits() {
    let mut ck = imported("small-legacy.pth");
    assert_eq!(
        (
            ck.config.growth_rate,
            ck.config.blocks.clone(),
            ck.config.classes
        ),
        (8, vec![2, 3, 2], 5)
    );
    let diff = evaluation_logits(&mut ck, &tensors("small-legacy-batch.safetensors"));
    assert!(diff <= 1e-4, "logits differ by {diff:e} of the largest");
}

/// One training step (the learning rate 0: only the gradients and running statistics move):
/// the mean cross-entropy, ten gradients, and the running statistics of norm0, a dense
/// layer's norm1 (its own copy) and norm5 after the step.
fn densenet121_training_step() {
    let k = k();
    let ck = imported("densenet121.safetensors");
    let batch = tensors("densenet121-batch.safetensors");
    let pixels = &batch["pixels"];
    let n = pixels.0[0] as u32;
    let sgd = SgdConfig {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
        clip_norm: None,
        adam: None,
    };
    let plan = Plan::train_in(k, &ck.config, n, sgd, DType::F32).unwrap();
    ck.restore(k.gpu(), &plan).unwrap();
    let labels = int64_labels("densenet121-batch.safetensors");
    plan.upload(k.gpu(), &channel_major(pixels), &labels)
        .unwrap();
    plan.reset_metrics(k.gpu());
    plan.submit_train(k.gpu()).unwrap();
    let (loss_sum, _) = plan.read_metrics(k.gpu()).unwrap();
    let loss = loss_sum / n as f64;
    let want = batch["train_loss"].1[0] as f64;
    assert!((loss - want).abs() <= 1e-5, "loss {loss} against {want}");
    let grads: Vec<f32> = k
        .gpu()
        .read_all(plan.buffers.grads.as_ref().unwrap())
        .unwrap();
    let after = Checkpoint::capture(k.gpu(), &plan, &ck.recipe, ck.dataset, (0, 1)).unwrap();
    let tv = import::to_torchvision(&after).unwrap();
    let mut worst = 0f64;
    for (name, (_, expected)) in batch.iter().filter(|(n, _)| n.starts_with("grad.")) {
        let tv_name = &name["grad.".len()..];
        let ours = plan
            .layout
            .params
            .slots
            .iter()
            .find(|s| import::torchvision_name(&s.name).as_deref() == Some(tv_name))
            .unwrap_or_else(|| panic!("no slot for {tv_name}"));
        let got = &grads[ours.offset as usize..][..ours.len as usize];
        let d = relative(got, expected);
        // The gradients before the last block are ill-conditioned at this batch of 4 (small
        // batch statistics, perturbed batch norms): in the f64 reference network, scaling
        // the input by 1 + 1e-7 noise moves transition2's by 3.0e-3 and conv0's by 5.4e-3,
        // so f32 cannot give them to 1e-4; measured here: 3e-3 to 1e-2 of their largest.
        let late = ["classifier.", "features.norm5.", "features.denseblock4."];
        let tolerance = match late.iter().any(|p| tv_name.starts_with(p)) {
            true => 1e-4,
            false => 2e-2,
        };
        assert!(d <= tolerance, "{tv_name}: gradient differs by {d:e}");
        support::harness::note(format!("{tv_name}: {d:.1e}"));
        worst = worst.max(d);
    }
    for (name, (_, expected)) in batch.iter().filter(|(n, _)| n.starts_with("after_step.")) {
        let tv_name = &name["after_step.".len()..];
        let got = &tv[tv_name].1;
        let d = relative(got, expected);
        assert!(d <= 1e-4, "{tv_name} after the step differs by {d:e}");
        worst = worst.max(d);
    }
    support::harness::note(format!("loss {loss} ({want}); worst {worst:.2e}"));
}

/// A file that is not a DenseNet, a truncated one, and a DenseNet missing a tensor: one line
/// each, naming the file and what is wrong.
fn not_densenets() {
    let dir = support::temp_dir("torchvision-errors");
    let garbage = dir.join("garbage.pth");
    std::fs::write(&garbage, b"not a pytorch file").unwrap();
    let err = format!("{:#}", import::read_file(&garbage).unwrap_err());
    assert!(err.contains("garbage.pth") && !err.contains('\n'), "{err}");
    let whole = std::fs::read(fixture("small-legacy.pth")).unwrap();
    let cut = dir.join("truncated.pth");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let err = format!("{:#}", import::read_file(&cut).unwrap_err());
    assert!(
        err.contains("truncated.pth") && !err.contains('\n'),
        "{err}"
    );
    let mut sd = import::read_file(&fixture("small-legacy.pth")).unwrap();
    sd.remove("features.denseblock2.denselayer2.conv2.weight");
    let err = format!("{:#}", import::to_checkpoint(&sd, "holey").err().unwrap());
    assert!(err.contains("denselayer2") && !err.contains('\n'), "{err}");
    let mut sd = Tensors::new();
    sd.insert("fc.weight".into(), (vec![2, 2], vec![0.0; 4]));
    let err = format!("{:#}", import::to_checkpoint(&sd, "resnet").err().unwrap());
    assert!(err.contains("not a torchvision DenseNet"), "{err}");
}

/// A folder of two classes of colored noise images.
fn image_folder(dir: &std::path::Path) {
    let mut rng = fastrand::Rng::with_seed(3);
    for (class, rgb) in [("red", [200u8, 40, 40]), ("blue", [40u8, 40, 200])] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..6 {
            let img = image::RgbImage::from_fn(40, 40, |_, _| {
                image::Rgb(rgb.map(|c| c.saturating_add(rng.u8(..40))))
            });
            img.save(dir.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
}

/// `train --init FILE.pth --num-classes 2 --freeze-features 1`: one epoch with the features
/// frozen changes the new classifier and the batch norms' running statistics, and no other
/// parameter; without --num-classes the mismatch is one line naming the fix.
fn fine_tuning() {
    let dir = support::temp_dir("fine-tuning");
    image_folder(&dir.join("images"));
    let pth = fixture("small-legacy.pth");
    let out = dir.join("run");
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "train",
            "--init",
            pth.to_str().unwrap(),
            "--dataset",
            "folder",
            "--data-dir",
            dir.join("images").to_str().unwrap(),
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = support::binary().args(args(&[])).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(err.contains("--num-classes 2"), "{err}");
    let run = support::binary()
        .args(args(&["--num-classes", "2", "--freeze-features", "1"]))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let after = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let before = imported("small-legacy.pth");
    assert_eq!(after.config.classes, 2);
    assert_eq!(after.class_names, ["blue", "red"]);
    let mut moved = Vec::new();
    for (name, (_, v)) in &after.tensors {
        let Some((_, b)) = before.tensors.get(name) else {
            continue;
        };
        if b != v && !name.starts_with("head.linear.") {
            moved.push(name.clone());
        }
    }
    assert!(
        moved
            .iter()
            .all(|n| n.ends_with("running_mean") || n.ends_with("running_var")),
        "frozen parameters moved: {moved:?}"
    );
    assert!(
        moved.iter().any(|n| n == "head.bn.running_mean"),
        "{moved:?}"
    );
    assert_ne!(
        after.tensors["head.linear.weight"].0,
        before.tensors["head.linear.weight"].0
    );
    // predict --cam: a heat map over each image, at the image's size.
    let image = dir.join("images/red/0.png");
    let cams = dir.join("cams");
    let run = support::binary()
        .args(["predict", "--checkpoint"])
        .arg(out.join("checkpoint.safetensors"))
        .arg("--cam")
        .arg(&cams)
        .arg(&image)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && said.contains("0.cam.png"), "{said}");
    let map = image::open(cams.join("0.cam.png")).unwrap();
    assert_eq!((map.width(), map.height()), (40, 40));
}
