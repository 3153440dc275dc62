//! The self-check through the binary: `selftest` passes on this adapter with one table and
//! keeps its verdicts; it catches a wrong kernel (`DENSENET_FAULT` spoils one output of a
//! configuration), fails, and names the configuration and the `--kernels` setting that avoids
//! it; `train` replaces a configuration of its plan that fails with one that passes (a
//! warning) and stops when the user forced the failing one; a second run checks nothing.

mod support;

use std::process::Output;

use densenet_wgpu::kernels::DeviceClass;
use support::harness::case;
use support::{k, temp_dir};

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case(
            "selftest_passes_with_one_table",
            selftest_passes_with_one_table,
        ),
        case(
            "selftest_catches_a_wrong_kernel",
            selftest_catches_a_wrong_kernel,
        ),
        case(
            "train_replaces_a_failing_configuration",
            train_replaces_a_failing_configuration,
        ),
        case(
            "a_forced_failing_configuration_stops_the_run",
            a_forced_failing_configuration_stops_the_run,
        ),
    ])
}

/// The binary with a tuning cache of its own in `dir`, `args` and `env`.
fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let out = support::binary()
        .env("DENSENET_TUNE_CACHE", dir.join("tuning.json"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The convolution configuration this adapter's policy runs the tiny preset's wide layers
/// with (in f32): what a fault must hit to matter.
fn policy_conv() -> &'static str {
    match k().policy().class {
        DeviceClass::Cpu => "tile16",
        DeviceClass::Gpu => "wgtile",
    }
}

fn selftest_passes_with_one_table() {
    let dir = temp_dir("selftest-pass");
    let (out, text) = run(&dir, &["selftest"], &[]);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("max error").count(), 1, "one table: {text}");
    let rows = text.lines().filter(|l| l.ends_with(" ok")).count();
    assert!(rows > 20, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    for want in [
        "conv2d_forward",
        "conv2d_backward_weight",
        "batchnorm_backward",
        "network",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(text.contains("pass ("), "the summary line: {text}");
    let verdicts = std::fs::read_to_string(dir.join("selfcheck.json")).unwrap();
    assert!(verdicts.contains("\"conv2d tile16 f32\""), "{verdicts}");
}

fn selftest_catches_a_wrong_kernel() {
    for (fault, op, variant) in [
        ("conv2d=tile8", "conv2d", "tile8"),
        ("batchnorm=plain", "batchnorm", "plain"),
    ] {
        let dir = temp_dir("selftest-fault");
        let (out, text) = run(&dir, &["selftest"], &[("DENSENET_FAULT", fault)]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let failed: Vec<&str> = text.lines().filter(|l| l.contains("FAIL")).collect();
        assert!(!failed.is_empty(), "{text}");
        // Only the spoiled configuration's rows fail (in every split setting and type).
        let spoiled =
            |l: &&str| l.contains(&format!(" {variant} ")) || l.contains(&format!(" {variant}@"));
        assert!(failed.iter().all(spoiled), "{failed:#?}");
        let named = text
            .lines()
            .find(|l| l.starts_with(&format!("FAILED {op} {variant} f32")))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(named.contains(&format!("--kernels {op}=")), "{named}");
        assert!(
            !named.contains(&format!("--kernels {op}={variant} ")),
            "{named}"
        );
        assert!(text.contains("error: selftest:"), "{text}");
    }
}

/// The tiny preset on this adapter with its policy's wide convolutions spoiled: the run
/// warns, trains on another configuration and records no spoiled one in its checkpoint; a
/// second run finds the verdicts in the cache.
fn train_replaces_a_failing_configuration() {
    let dir = temp_dir("selftest-train");
    let conv = policy_conv();
    let args = [
        "train",
        "--limit-train",
        "128",
        "--limit-test",
        "64",
        "--epochs",
        "1",
        "--tune",
        "off",
        "--out",
    ];
    let out_dir = dir.join("run");
    let args = [&args[..], &[out_dir.to_str().unwrap()]].concat();
    let fault = [("DENSENET_FAULT", format!("conv2d={conv}"))];
    let env: Vec<(&str, &str)> = fault.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (out, text) = run(&dir, &args, &env);
    assert!(out.status.success(), "{text}");
    let warning = text
        .lines()
        .find(|l| l.contains(&format!("conv2d {conv} f32 fails the self-check")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(warning.contains("instead"), "{warning}");
    let ck = densenet_wgpu::checkpoint::Checkpoint::load(&out_dir.join("checkpoint.safetensors"))
        .unwrap();
    assert!(
        !ck.kernel_choices.values().any(|c| c == conv),
        "{:?}",
        ck.kernel_choices
    );
    let (out, again) = run(&dir, &args, &env);
    assert!(out.status.success(), "{again}");
    assert!(again.contains("self-check: 0 checked"), "{again}");
    assert!(
        again.contains("fails the self-check"),
        "the warning stays: {again}"
    );
}

fn a_forced_failing_configuration_stops_the_run() {
    let dir = temp_dir("selftest-forced");
    let out_dir = dir.join("run");
    let (out, text) = run(
        &dir,
        &[
            "train",
            "--kernels",
            "conv2d=tile8",
            "--limit-train",
            "64",
            "--limit-test",
            "64",
            "--epochs",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[("DENSENET_FAULT", "conv2d=tile8")],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The last line is ours (drivers may print their own "error:" lines first).
    let error = text.lines().rfind(|l| l.starts_with("error:")).unwrap();
    assert!(
        error.contains("--kernels conv2d=tile8") && error.contains("self-check"),
        "{error}"
    );
    assert!(!out_dir.join("checkpoint.safetensors").exists());
}
