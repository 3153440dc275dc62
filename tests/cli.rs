//! The command line end to end on small runs: training lowers the loss and beats chance,
//! eval reproduces the test figures training reported, a resumed run reproduces an
//! uninterrupted one's metrics, predict classifies PNG files, `plan` reports both plans'
//! memory, `--kernels` forces variants, every flag documents its default, and user errors
//! end in one line and a non-zero exit, never a panic.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::data::{synthetic, DatasetKind};
use densenet_wgpu::report::{read_metrics, EpochMetrics};
use support::harness::{case, F16, TIMESTAMPS};
use support::temp_dir;

/// The harness opens the adapter the binary will choose (the same selection), to skip the
/// cases that need a feature it lacks and to run the cases one at a time on GL.
fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case(
            "train_eval_resume_and_predict",
            train_eval_resume_and_predict,
        ),
        case(
            "adamw_learns_and_resumes_exactly",
            adamw_learns_and_resumes_exactly,
        ),
        case(
            "a_multi_label_csv_set_trains_to_a_high_auroc",
            a_multi_label_csv_set_trains_to_a_high_auroc,
        ),
        case(
            "f16_training_resumes_exactly_and_evaluates_in_either_precision",
            f16_training_resumes_exactly_and_evaluates_in_either_precision,
        )
        .needs(F16),
        case(
            "a_diverging_run_stops_and_keeps_its_checkpoint",
            a_diverging_run_stops_and_keeps_its_checkpoint,
        ),
        case("ctrl_c_says_where_the_run_is", ctrl_c_says_where_the_run_is),
        case(
            "simulated_ranks_train_and_resume_exactly",
            simulated_ranks_train_and_resume_exactly,
        ),
        case("paper_presets_plan_and_train", paper_presets_plan_and_train),
        case(
            "best_checkpoint_and_early_stopping",
            best_checkpoint_and_early_stopping,
        ),
        case(
            "image_folders_train_and_predict_with_class_names",
            image_folders_train_and_predict_with_class_names,
        ),
        case(
            "training_lowers_the_loss_and_beats_chance",
            training_lowers_the_loss_and_beats_chance,
        ),
        case(
            "plan_reports_training_and_evaluation_memory",
            plan_reports_training_and_evaluation_memory,
        ),
        case(
            "kernels_flag_forces_a_variant",
            kernels_flag_forces_a_variant,
        ),
        // `bench --profile` times each kernel with GPU timestamps; without them it fails.
        case(
            "profile_shows_the_forced_variant_on_the_roofline",
            profile_shows_the_forced_variant_on_the_roofline,
        )
        .needs(TIMESTAMPS),
        case(
            "every_flag_documents_its_default",
            every_flag_documents_its_default,
        ),
        case(
            "a_resumed_run_names_its_checkpoints_preset",
            a_resumed_run_names_its_checkpoints_preset,
        ),
        case(
            "user_errors_are_one_line_and_fail",
            user_errors_are_one_line_and_fail,
        ),
    ])
}

fn cli(args: &[&str]) -> Output {
    // Tuning is tested in tests/tune.rs; here runs must not time kernels or touch the
    // user's tuning cache.
    support::binary()
        .env("DENSENET_TUNE", "off")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = cli(args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "densenet-wgpu {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn train(out: &Path, epochs: &str, extra: &[&str]) -> String {
    let out = out.to_str().unwrap();
    let mut args = vec![
        "train",
        "--limit-train",
        "384",
        "--limit-test",
        "200",
        "--batch-size",
        "32",
        "--epochs",
        epochs,
        "--out",
        out,
    ];
    args.extend(extra);
    ok(&args)
}

fn train_eval_resume_and_predict() {
    let dir = temp_dir("run");
    // A non-default seed: eval and resume must find the same synthetic data without it.
    // A constant rate: the schedule does not depend on the epoch count, so a 2-epoch run
    // resumed to 3 must equal a 3-epoch run.
    // Augmented (the crops and flips seeded, the normalization kept in the checkpoint for
    // eval, predict and the resumed run).
    let run = [
        "--seed",
        "5",
        "--schedule",
        "constant",
        "--augment",
        "crop=2,flip,normalize",
    ];
    let printed = train(&dir, "2", &run);
    assert!(printed.contains("epoch   2/2"), "{printed}");
    let metrics = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 2);
    assert!(metrics
        .iter()
        .all(|m| m.train_loss.is_finite() && m.images_per_sec > 0.0));

    let png = std::fs::read(dir.join("curves.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let ck_path = dir.join("checkpoint.safetensors");
    let ck = Checkpoint::load(&ck_path).unwrap();
    assert_eq!(ck.epoch, 2);
    let aug = &ck.recipe.augment;
    assert!(aug.pad == 2 && aug.flip && aug.normalize.as_ref().is_some_and(|n| n.len() == 1));
    assert!(ck.tensors.contains_key("blocks.0.layers.1.conv.weight"));
    assert!(ck.tensors.contains_key("blocks.0.running_mean"));
    assert!(ck
        .tensors
        .contains_key("optimizer.velocity.head.linear.weight"));

    // eval prints the test figures training reported for this checkpoint.
    let ck_arg = ck_path.to_str().unwrap();
    let eval = ok(&["eval", "--checkpoint", ck_arg, "--limit-test", "200"]);
    let last = metrics.last().unwrap();
    let want = format!(
        "test loss {:.4} acc {:.2}%",
        last.test_loss,
        100.0 * last.test_acc
    );
    assert!(
        eval.contains(&want),
        "eval printed {eval:?}, training reported {want:?}"
    );
    // Per class: every class named with its accuracy; the confusion matrix drawn beside the
    // checkpoint (10 classes of 64-pixel cells).
    for name in synthetic::CLASS_NAMES {
        assert!(
            eval.lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains("% of ")),
            "{eval}"
        );
    }
    assert!(!eval.contains("top-5"), "top-5 only past 10 classes");
    let confusion = image::open(dir.join("confusion.png")).unwrap();
    assert_eq!((confusion.width(), confusion.height()), (640, 640));

    // Resume to 3 epochs: the history keeps the first two and gains a third, and every
    // figure equals that of a run that trained 3 epochs without stopping.
    train(&dir, "3", &["--resume", ck_arg]);
    let resumed = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        resumed.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(Checkpoint::load(&ck_path).unwrap().epoch, 3);
    let straight_dir = temp_dir("straight");
    train(&straight_dir, "3", &run);
    let straight = read_metrics(&straight_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        figures(&resumed),
        figures(&straight),
        "resumed vs uninterrupted"
    );
    std::fs::remove_dir_all(&straight_dir).unwrap();

    // predict on PNGs of synthetic test images.
    let test = synthetic::generate(5).test;
    let mut files = Vec::new();
    for i in 0..3 {
        let path = dir.join(format!("img{i}.png"));
        image::GrayImage::from_raw(synthetic::SIZE, synthetic::SIZE, test.image(i).to_vec())
            .unwrap()
            .save(&path)
            .unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec!["predict", "--checkpoint", ck_arg];
    args.extend(files.iter().map(String::as_str));
    let printed = ok(&args);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    for line in lines {
        assert!(
            synthetic::CLASS_NAMES.iter().any(|c| line.contains(c)) && line.ends_with("%)"),
            "{line}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// f16 training: metrics carry the skipped steps and the loss scale; the checkpoint is f32
/// with the scale in its metadata; eval reproduces the figures in f16 and evaluates the same
/// checkpoint in f32; a 2-epoch f16 run resumed to 3 equals a 3-epoch one.
fn f16_training_resumes_exactly_and_evaluates_in_either_precision() {
    let dir = temp_dir("f16");
    let f16 = [
        "--precision",
        "f16",
        "--seed",
        "5",
        "--schedule",
        "constant",
    ];
    let printed = train(&dir, "2", &f16);
    assert!(printed.contains("epoch   2/2"), "{printed}");
    let metrics = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert!(
        metrics
            .iter()
            .all(|m| m.skipped_steps.is_some() && m.loss_scale.is_some_and(|s| s > 0.0)),
        "{metrics:?}"
    );
    let ck_path = dir.join("checkpoint.safetensors");
    let ck = Checkpoint::load(&ck_path).unwrap();
    assert!(ck.loss_scale.is_some(), "the scale is kept for resuming");
    let raw = std::fs::read(&ck_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    assert!(st
        .tensors()
        .iter()
        .all(|(_, v)| v.dtype() == safetensors::Dtype::F32));

    let ck_arg = ck_path.to_str().unwrap();
    let last = metrics.last().unwrap();
    let want = format!(
        "test loss {:.4} acc {:.2}%",
        last.test_loss,
        100.0 * last.test_acc
    );
    let eval16 = ok(&[
        "eval",
        "--checkpoint",
        ck_arg,
        "--limit-test",
        "200",
        "--precision",
        "f16",
    ]);
    assert!(
        eval16.contains(&want) && eval16.contains("f16"),
        "{eval16:?} vs {want:?}"
    );
    let eval32 = ok(&["eval", "--checkpoint", ck_arg, "--limit-test", "200"]);
    // The summary line's accuracy (per-class lines follow it).
    let acc = |text: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.contains("test loss"))
            .expect("a summary");
        let at = line.find(" acc ").expect("an accuracy");
        line[at + 5..]
            .trim_end()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    assert!(
        (acc(&eval32) - 100.0 * last.test_acc).abs() <= 2.0,
        "f32 eval of an f16 run: {eval32:?} vs {want:?}"
    );

    train(&dir, "3", &["--resume", ck_arg, "--precision", "f16"]);
    let resumed = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let straight_dir = temp_dir("f16-straight");
    train(&straight_dir, "3", &f16);
    let straight = read_metrics(&straight_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        figures(&resumed),
        figures(&straight),
        "resumed vs uninterrupted"
    );
    let skips = |m: &[EpochMetrics]| {
        m.iter()
            .map(|m| (m.skipped_steps, m.loss_scale))
            .collect::<Vec<_>>()
    };
    assert_eq!(skips(&resumed), skips(&straight));
    std::fs::remove_dir_all(&straight_dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A loss that stops being a number ends the run with the epoch and step, and leaves the
/// last good checkpoint as it was.
fn a_diverging_run_stops_and_keeps_its_checkpoint() {
    let dir = temp_dir("diverge");
    train(&dir, "1", &[]);
    let ck_path = dir.join("checkpoint.safetensors");
    let before = std::fs::read(&ck_path).unwrap();
    let ck = ck_path.to_str().unwrap();
    let out = cli(&[
        "train",
        "--limit-train",
        "384",
        "--limit-test",
        "200",
        "--batch-size",
        "32",
        "--epochs",
        "3",
        "--out",
        dir.to_str().unwrap(),
        "--resume",
        ck,
        "--lr",
        "1e30",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("diverged") && err.contains("epoch 2") && err.contains("untouched"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ck_path).unwrap(),
        before,
        "the checkpoint is untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Ctrl-C stops training after a step with one line that names the checkpoint holding the
/// run and how to resume it, and exit status 130.
fn ctrl_c_says_where_the_run_is() {
    let dir = temp_dir("ctrl-c");
    let child = support::binary()
        .env("DENSENET_TUNE", "off")
        .args([
            "train",
            "--limit-train",
            "128",
            "--limit-test",
            "50",
            "--epochs",
            "500",
            "--out",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ck = dir.join("checkpoint.safetensors");
    let start = std::time::Instant::now();
    while !ck.exists() {
        assert!(
            start.elapsed().as_secs() < 300,
            "no checkpoint after 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rfind(|l| l.starts_with("interrupted"))
        .unwrap_or_default();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        line.contains(ck.to_str().unwrap()) && line.contains("--resume"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The DenseNet paper's CIFAR networks: parameter counts as the paper gives them (1.0M and
/// 0.8M), the plan at the recipe's batch 64, and training steps on CIFAR-10 shapes (at batch
/// 2: a step at 64 takes minutes on a CPU driver).
fn paper_presets_plan_and_train() {
    for (preset, paper) in [("densenet40", 1.0e6), ("bc100", 0.8e6)] {
        let args = ["plan", "--preset", preset, "--dataset", "cifar10", "--json"];
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        let params = v["parameters"].as_f64().unwrap();
        assert!(
            (params / paper - 1.0).abs() < 0.05,
            "{preset}: {params} parameters"
        );
        assert_eq!(v["batch"], 64, "{preset}: the paper's batch");
        let bench = ok(&[
            "bench",
            "--preset",
            preset,
            "--dataset",
            "cifar10",
            "--batch-size",
            "2",
            "--steps",
            "1",
        ]);
        assert!(bench.contains(&format!("{preset} on")), "{bench}");
    }
}

/// The best epoch's checkpoint is kept beside the last; with a patience, a run whose test
/// accuracy stops improving ends early (a rate of 1e-9 barely moves the weights).
fn best_checkpoint_and_early_stopping() {
    let dir = temp_dir("patience");
    let printed = ok(&[
        "train",
        "--limit-train",
        "256",
        "--limit-test",
        "20",
        "--batch-size",
        "32",
        "--epochs",
        "6",
        "--lr",
        "1e-9",
        "--patience",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let m = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert!(
        m.len() < 6 && printed.contains("stopping early"),
        "{printed}"
    );
    // The first best epoch, and no better one in the last epoch that ended the run.
    let best = m
        .iter()
        .fold(&m[0], |b, x| if x.test_acc > b.test_acc { x } else { b });
    assert!(m.last().unwrap().test_acc <= best.test_acc);
    assert_eq!(
        m.len() as u32,
        best.epoch + 1,
        "stopped one epoch after the best"
    );
    let best_ck = Checkpoint::load(&dir.join("best.safetensors")).unwrap();
    assert_eq!(best_ck.epoch, best.epoch);
    let last = Checkpoint::load(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(last.epoch, m.len() as u32);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes `n` 32x32 PNGs of stripes per class into `dir/CLASS/`: horizontal or vertical,
/// at a random phase, gray or (`color`) red on blue.
fn stripes(dir: &Path, n: usize, color: bool, rng: &mut fastrand::Rng) {
    for class in ["horizontal", "vertical"] {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let phase = rng.u32(..4);
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                let t = if class == "horizontal" { y } else { x };
                let on = (t + phase) % 4 < 2;
                match (on, color) {
                    (true, true) => image::Rgb([220, 30, 30]),
                    (false, true) => image::Rgb([20, 20, 200]),
                    (true, false) => image::Rgb([230, 230, 230]),
                    (false, false) => image::Rgb([20, 20, 20]),
                }
            });
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// A folder of generated PNGs trains, keeps its class names in the checkpoint, and predict
/// prints them; one tree without train/ and test/ is split by the seed; color is kept.
fn image_folders_train_and_predict_with_class_names() {
    let dir = temp_dir("folder");
    let mut rng = fastrand::Rng::with_seed(3);
    stripes(&dir.join("train"), 16, false, &mut rng);
    stripes(&dir.join("test"), 4, false, &mut rng);
    let out = dir.join("run");
    ok(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        dir.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--schedule",
        "constant",
        "--out",
        out.to_str().unwrap(),
    ]);
    let ck_path = out.join("checkpoint.safetensors");
    let ck = Checkpoint::load(&ck_path).unwrap();
    assert_eq!(ck.class_names, ["horizontal", "vertical"]);
    assert_eq!(
        (ck.config.in_channels, ck.config.image_size),
        (1, 24),
        "gray, tiny's size"
    );
    let probe = dir.join("test/vertical/0.png");
    let printed = ok(&[
        "predict",
        "--checkpoint",
        ck_path.to_str().unwrap(),
        probe.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("horizontal") || printed.contains("vertical"),
        "{printed}"
    );
    let eval = ok(&[
        "eval",
        "--checkpoint",
        ck_path.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        eval.contains("horizontal") && eval.contains("% of 4"),
        "{eval}"
    );

    let tree = dir.join("tree");
    stripes(&tree, 10, true, &mut rng);
    let s = densenet_wgpu::data::load_sized(DatasetKind::Folder, Some(&tree), 1, 16, None).unwrap();
    assert_eq!(
        (s.train.len(), s.test.len()),
        (16, 4),
        "20% of each class to test"
    );
    assert_eq!((s.train.channels, s.train.height), (3, 16));
    let again =
        densenet_wgpu::data::load_sized(DatasetKind::Folder, Some(&tree), 1, 16, None).unwrap();
    assert_eq!(
        s.test.images, again.test.images,
        "the split follows the seed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 64 steps on the synthetic set lower the loss and beat chance (10 classes) by twice.
fn training_lowers_the_loss_and_beats_chance() {
    let dir = temp_dir("learn");
    let out = dir.to_str().unwrap();
    ok(&[
        "train",
        "--limit-train",
        "1024",
        "--limit-test",
        "300",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--schedule",
        "constant",
        "--out",
        out,
    ]);
    let m = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert!(m[1].train_loss < m[0].train_loss, "{m:?}");
    assert!(m[1].train_loss < 10f64.ln() && m[1].test_acc > 0.2, "{m:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An epoch's figures without its timings.
fn figures(m: &[EpochMetrics]) -> Vec<[f64; 6]> {
    m.iter()
        .map(|m| {
            [
                m.epoch as f64,
                m.train_loss,
                m.train_acc,
                m.test_loss,
                m.test_acc,
                m.lr,
            ]
        })
        .collect()
}

/// `plan` prints both plans without running a step; `--json` gives the same as one object.
fn plan_reports_training_and_evaluation_memory() {
    let args = ["plan", "--preset", "d2l", "--dataset", "fashion-mnist"];
    let text = ok(&args);
    assert!(
        text.contains("training plan") && text.contains("evaluation plan"),
        "{text}"
    );
    assert!(
        text.contains("blocks.0.grad") && text.contains("naive DenseNet"),
        "{text}"
    );
    let json = ok(&[&args[..], &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let train = v["training"]["total_bytes"].as_u64().unwrap();
    let eval = v["evaluation"]["total_bytes"].as_u64().unwrap();
    assert!(train <= 700 << 20, "d2l training plan {train} bytes");
    assert!(2 * eval < train, "evaluation {eval}, training {train}");
    assert!(v["naive_training_bytes"].as_u64().unwrap() > train);
    let buffers = v["training"]["buffers"].as_array().unwrap();
    let total: u64 = v["training"]["categories"]
        .as_object()
        .unwrap()
        .values()
        .map(|b| b.as_u64().unwrap())
        .sum();
    assert_eq!(total, train, "categories add up");
    assert!(buffers
        .iter()
        .any(|b| b["name"] == "blocks.0" && b["slot"].is_u64()));
    let f16 = ok(&[&args[..], &["--precision", "f16", "--json"]].concat());
    let f16: serde_json::Value = serde_json::from_str(&f16).unwrap();
    assert!(f16["training"]["total_bytes"].as_u64().unwrap() < train * 6 / 10);
}

/// `--kernels` forces a variant everywhere; `info` prints the policy.
fn kernels_flag_forces_a_variant() {
    let info = ok(&["info", "--kernels", "tile8"]);
    assert!(
        info.contains("kernel policy: --kernels tile8") && info.contains("forced tile8"),
        "{info}"
    );
}

/// A bench with `--kernels` runs the forced variant only: its profile names no other, and
/// gives every kernel's rates against the ceilings measured here.
fn profile_shows_the_forced_variant_on_the_roofline() {
    let dir = temp_dir("bench");
    let json = dir.join("bench.json");
    let bench = ok(&[
        "bench",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--kernels",
        "conv2d=tile16",
        "--profile",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(bench.contains("kernels --kernels conv2d=tile16"), "{bench}");
    assert!(
        bench.contains("conv2d_forward[tile16,f32]") && !bench.contains("tile8"),
        "{bench}"
    );
    // The roofline: measured ceilings, and every kernel's rates and share of them.
    assert!(
        bench.contains("ceilings measured here") && bench.contains("roofline floor"),
        "{bench}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["ceilings"]["flops_per_s"].as_f64().unwrap() > 1e8, "{v}");
    assert!(v["ceilings"]["bytes_per_s"].as_f64().unwrap() > 1e7, "{v}");
    let kernels = v["kernels"].as_array().unwrap();
    let conv = kernels
        .iter()
        .find(|k| k["name"] == "conv2d_forward[tile16,f32]")
        .unwrap();
    assert!(conv["flops"].as_u64().unwrap() > 0 && conv["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["dispatches"].as_u64().unwrap() as usize >= kernels.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every option of every command says what it does and what its default is.
fn every_flag_documents_its_default() {
    for cmd in [
        "train", "eval", "bench", "plan", "predict", "info", "export", "import",
    ] {
        let help = ok(&[cmd, "--help"]);
        let mut blocks: Vec<String> = Vec::new();
        for line in help.lines() {
            let t = line.trim_start();
            if t.starts_with("--")
                || (t.starts_with('-') && t.chars().nth(1).is_some_and(|c| c.is_alphabetic()))
            {
                blocks.push(t.to_string());
            } else if let Some(b) = blocks.last_mut() {
                b.push(' ');
                b.push_str(t);
            }
        }
        for b in blocks
            .iter()
            .filter(|b| !b.contains("--help") && !b.contains("--version"))
        {
            assert!(
                b.contains("default") || b.contains("[required]"),
                "{cmd}: {b}"
            );
        }
    }
}

fn user_errors_are_one_line_and_fail() {
    let cases: [(&[&str], &str); 13] = [
        (
            &[
                "train",
                "--limit-train",
                "100",
                "--batch-size",
                "64",
                "--simulate-ranks",
                "2",
            ],
            "global batch",
        ),
        (&["train", "--sync-bn"], "mpirun"),
        (&["train", "--simulate-ranks", "0"], "--simulate-ranks 0"),
        (&["train", "--bucket-mib", "0"], "--bucket-mib"),
        (&["info", "--adapter", "no-such-gpu"], "no-such-gpu"),
        (&["train", "--dataset", "mnist"], "--data-dir"),
        (
            &[
                "train",
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                "/nonexistent",
            ],
            "/nonexistent",
        ),
        (
            &["eval", "--checkpoint", "/nonexistent/ck.safetensors"],
            "/nonexistent/ck.safetensors",
        ),
        (
            &["train", "--limit-train", "10", "--batch-size", "64"],
            "--batch-size",
        ),
        (&["info", "--kernels", "conv2d=tile99"], "tile99"),
        (&["train", "--augment", "rotate"], "rotate"),
        (&["train", "--label-smoothing", "1.5"], "label smoothing"),
        (
            &[
                "export",
                "--checkpoint",
                "/nonexistent/ck.safetensors",
                "--onnx",
                "m.onnx",
            ],
            "/nonexistent/ck.safetensors",
        ),
    ];
    // Counts of zero are usage errors (status 2), caught before any device is opened.
    for flag in ["--epochs", "--batch-size"] {
        let out = cli(&["train", flag, "0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} 0: {err}");
        assert!(err.contains(flag), "{err}");
    }
    for (args, needle) in cases {
        let out = cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        // Drivers may print their own "error:" lines first; ours is the last.
        let err_line = err
            .lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err_line.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

/// `--simulate-ranks 2`: a global batch of 2 x 32 in one process; resumed, the same
/// numbers; the checkpoint refuses another replica count; and a binary without MPI refuses
/// to run under mpirun (each process would train alone).
fn simulated_ranks_train_and_resume_exactly() {
    let (whole, cut) = (temp_dir("sim-whole"), temp_dir("sim-cut"));
    // A constant rate: the schedule does not depend on the epoch count, so a 1-epoch run
    // resumed to 2 must equal a 2-epoch run.
    let sim = ["--simulate-ranks", "2", "--schedule", "constant"];
    let text = train(&whole, "2", &sim);
    assert!(text.contains("done"), "{text}");
    train(&cut, "1", &sim);
    let ck = cut.join("checkpoint.safetensors");
    let ck = ck.to_str().unwrap();
    let mut resume = sim.to_vec();
    resume.extend(["--resume", ck]);
    train(&cut, "2", &resume);
    let read = |d: &Path| read_metrics(&d.join("metrics.jsonl")).unwrap();
    assert_eq!(figures(&read(&whole)), figures(&read(&cut)));
    let out = cli(&[
        "train",
        "--epochs",
        "3",
        "--resume",
        ck,
        "--out",
        cut.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("trained on 2 ranks"),
        "{err}"
    );
    if !cfg!(feature = "mpi") {
        let out = support::binary()
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .args(["train"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--features mpi"),
            "{err}"
        );
    }
}

/// A resumed run's banner names the network of its checkpoint, not the default preset.
fn a_resumed_run_names_its_checkpoints_preset() {
    let dir = temp_dir("resume-banner");
    let args = [
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--batch-size",
        "32",
    ];
    let out = dir.to_str().unwrap();
    let first = [
        &["train", "--preset", "small", "--epochs", "1", "--out", out],
        &args[..],
    ]
    .concat();
    ok(&first);
    let ck = dir.join("checkpoint.safetensors");
    let resumed = cli(&[
        &[
            "train",
            "--epochs",
            "2",
            "--out",
            out,
            "--resume",
            ck.to_str().unwrap(),
        ],
        &args[..],
    ]
    .concat());
    let banner = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{banner}");
    assert!(
        banner.contains("densenet-wgpu: small on synthetic"),
        "{banner}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// AdamW trains the tiny preset (the loss falls), keeps both moments in its checkpoint, and
/// a run stopped after epoch 1 and resumed equals the uninterrupted one in every metric.
fn adamw_learns_and_resumes_exactly() {
    let dir = temp_dir("adamw");
    let run = |out: &Path, epochs: &str, resume: Option<&Path>| {
        let mut args = vec![
            "train",
            "--optimizer",
            "adamw",
            // A schedule that does not depend on the run's length, so the first epoch of a
            // 1-epoch run is the first of a 2-epoch one.
            "--schedule",
            "constant",
            "--lr",
            "0.003",
            "--weight-decay",
            "0.05",
            "--epochs",
            epochs,
            "--limit-train",
            "512",
            "--limit-test",
            "128",
            "--batch-size",
            "32",
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(r) = resume {
            args.extend(["--resume", r.to_str().unwrap()]);
        }
        let o = support::binary().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_metrics(&out.join("metrics.jsonl")).unwrap()
    };
    let whole = run(&dir.join("whole"), "2", None);
    assert!(whole[1].train_loss < whole[0].train_loss, "{whole:?}");
    run(&dir.join("half"), "1", None);
    let ck = Checkpoint::load(&dir.join("half/checkpoint.safetensors")).unwrap();
    assert!(ck
        .tensors
        .contains_key("optimizer.exp_avg.head.linear.weight"));
    assert!(ck
        .tensors
        .contains_key("optimizer.exp_avg_sq.head.linear.weight"));
    assert!(!ck
        .tensors
        .contains_key("optimizer.velocity.head.linear.weight"));
    let resumed = run(
        &dir.join("half"),
        "2",
        Some(&dir.join("half/checkpoint.safetensors")),
    );
    let key = |m: &EpochMetrics| (m.train_loss, m.train_acc, m.test_loss, m.test_acc);
    assert_eq!(key(&resumed[1]), key(&whole[1]));
}

/// A generated multi-label set in ChestX-ray14's CSV layout (labels "Top", "Bottom" and
/// "Dot", each a bright shape on a noisy gray image, present independently; "No Finding"
/// where none is): the tiny preset's per-label AUROC rises above 0.9, `eval` and `predict`
/// report every label, and a CSV without the label column is one line naming it.
fn a_multi_label_csv_set_trains_to_a_high_auroc() {
    let dir = temp_dir("multilabel");
    let mut rng = fastrand::Rng::with_seed(11);
    let mut csv = String::from("Image Index,Finding Labels,Patient Age\n");
    std::fs::create_dir_all(dir.join("images")).unwrap();
    for i in 0..400 {
        let labels: Vec<&str> = ["Top", "Bottom", "Dot"]
            .into_iter()
            .filter(|_| rng.f32() < 0.4)
            .collect();
        let img = image::GrayImage::from_fn(48, 48, |x, y| {
            let (x, y) = (x as i32, y as i32);
            let lit = (labels.contains(&"Top") && y < 8)
                || (labels.contains(&"Bottom") && y >= 40)
                || (labels.contains(&"Dot") && (x - 24).pow(2) + (y - 24).pow(2) < 36);
            image::Luma([if lit { 220 } else { 20 + rng.u8(..40) }])
        });
        img.save(dir.join(format!("images/{i:04}.png"))).unwrap();
        let findings = match labels.is_empty() {
            true => "No Finding".to_string(),
            false => labels.join("|"),
        };
        csv.push_str(&format!("{i:04}.png,{findings},{}\n", 40 + i % 30));
    }
    let labels = dir.join("Data_Entry.csv");
    std::fs::write(&labels, &csv).unwrap();
    let out = dir.join("run");
    let data = [
        "--dataset".to_string(),
        "csv".into(),
        "--data-dir".into(),
        dir.join("images").display().to_string(),
        "--labels".into(),
        labels.display().to_string(),
    ];
    let run = support::binary()
        .args(["train", "--epochs", "6", "--batch-size", "32", "--out"])
        .arg(&out)
        .args(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let metrics = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let last = metrics.last().unwrap();
    let per_label = last.auroc.clone().unwrap();
    assert_eq!(per_label.len(), 3);
    assert!(last.mean_auroc.unwrap() > 0.9, "{said}");
    assert!(said.contains("mean AUROC"), "{said}");
    let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert!(ck.config.multi_label);
    assert_eq!(ck.class_names, ["Bottom", "Dot", "Top"]);
    let eval = support::binary()
        .args(["eval", "--checkpoint"])
        .arg(out.join("checkpoint.safetensors"))
        .args(&data[2..])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(
        text.contains("Dot") && text.contains("mean AUROC"),
        "{text}"
    );
    let predict = support::binary()
        .args(["predict", "--checkpoint"])
        .arg(out.join("checkpoint.safetensors"))
        .arg("--cam")
        .arg(dir.join("cams"))
        .arg(dir.join("images/0000.png"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&predict.stdout);
    assert!(text.contains("Bottom") && text.contains("Top"), "{text}");
    // A map per label above 0.5 (the top label's where none is), named after the label.
    let maps: Vec<String> = std::fs::read_dir(dir.join("cams"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!maps.is_empty(), "{text}");
    assert!(
        maps.iter().all(|m| m.starts_with("0000.")
            && m.ends_with(".cam.png")
            && ["Bottom", "Dot", "Top"].iter().any(|l| m.contains(l))),
        "{maps:?}"
    );
    std::fs::write(&labels, "Image,Labels\n0000.png,Top\n").unwrap();
    let bad = support::binary()
        .args(["train", "--epochs", "1", "--out"])
        .arg(dir.join("bad"))
        .args(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("Image Index"),
        "{err}"
    );
    let lines = err.lines().filter(|l| !l.contains("XDG_RUNTIME_DIR"));
    assert_eq!(lines.count(), 1, "{err}");
}
