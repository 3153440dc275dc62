//! `scripts/gpu-report --dry-run` end to end on whatever adapter the machine has: it runs the
//! test binaries it is given, the d2l step with the roofline profile, the plan, skips
//! PyTorch when it or CUDA is missing and says so, and prints its table last.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::harness::{case, TIMESTAMPS};
use support::temp_dir;

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        // The report's step runs with `--profile`, which times each kernel with GPU
        // timestamps and fails without them.
        case(
            "gpu_report_dry_run_runs_end_to_end",
            gpu_report_dry_run_runs_end_to_end,
        )
        .needs(TIMESTAMPS),
    ])
}

fn gpu_report_dry_run_runs_end_to_end() {
    let dir = temp_dir("gpu-report");
    let bin = dir.join("bin");
    std::fs::create_dir_all(bin.join("tests")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_densenet-wgpu"),
        bin.join("densenet-wgpu"),
    )
    .unwrap();
    // A stand-in test binary: the report runs it and counts what it prints.
    let fake = bin.join("tests").join("stand-in");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'test result: ok. 3 passed; 0 failed; 0 ignored'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = dir.join("out");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-report");
    let out = Command::new(script)
        .args([
            "--dry-run",
            "--bin",
            bin.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .expect("the script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table_at = text.find("| run | ms per step").expect("a table");
    assert!(text[table_at..].contains("| densenet-wgpu f32"), "{text}");
    assert!(
        text[table_at..].contains("| densenet-wgpu f32 tuned (tuned in"),
        "{text}"
    );
    assert!(
        text.contains("slowest kernels") && text.contains("of the roofline"),
        "{text}"
    );
    assert!(text.contains("stand-in 3 passed, 0 failed"), "{text}");
    assert!(
        text.contains("selftest (status 0): selftest on ") && text.contains(" pass ("),
        "{text}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["batch"], 4);
    assert!(results["bench"]["step_ms"].as_f64().unwrap() > 0.0);
    assert!(results["plan"]["training"]["total_bytes"].as_u64().unwrap() > 0);
    // Without PyTorch or CUDA the comparison is skipped with a reason, never faked.
    match &results["pytorch"] {
        serde_json::Value::String(s) => assert!(s.starts_with("skipped: "), "{s}"),
        v => assert!(v["modes"]["fp32"]["step_ms"].is_number(), "{v}"),
    }
    assert!(out_dir.join("report.md").exists() && out_dir.join("bench.log").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
