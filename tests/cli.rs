//! The command line end to end on small runs: train writes its outputs, eval reproduces
//! the test figures training reported, resume continues, predict classifies PNG files, and
//! user errors end in one line and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::data::synthetic;
use densenet_wgpu::report::read_metrics;

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "densenet-cli-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet-wgpu"))
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

#[test]
fn train_eval_resume_and_predict() {
    let dir = temp_dir("run");
    // A non-default seed: eval and resume must find the same synthetic data without it.
    let printed = train(&dir, "2", &["--seed", "5"]);
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

    // Resume to 3 epochs: the history keeps the first two and gains a third.
    train(&dir, "3", &["--resume", ck_arg]);
    let metrics = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(Checkpoint::load(&ck_path).unwrap().epoch, 3);

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

#[test]
fn user_errors_are_one_line_and_fail() {
    let cases: [(&[&str], &str); 5] = [
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
    ];
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
