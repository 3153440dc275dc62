//! Autotuning: the cache round-trips and merges; a corrupt cache or a stale entry gives a
//! warning and a retune, never a wrong kernel; a second run times nothing; a budget leaves
//! launches to the policy and later runs; and through the binary, a run interrupted and
//! resumed with tuning on reproduces the uninterrupted run's metrics exactly, with the
//! kernels recorded in its checkpoint even when the resumed run is told not to tune.
//! (Each candidate configuration of each variant is compared with the reference in
//! tests/kernels: `each_variant` yields every split setting too.)

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::model::{DenseNetConfig, Mode};
use densenet_wgpu::report::read_metrics;
use densenet_wgpu::tune::cache::{device_key, CachedChoice, TuneCache};
use densenet_wgpu::tune::{tune, Source, TuneMode, TuneOptions};
use support::{k, temp_dir};

fn options(mode: TuneMode, cache: &Path, budget: Option<f64>) -> TuneOptions {
    TuneOptions {
        mode,
        budget,
        cache: Some(cache.to_path_buf()),
        progress: false,
    }
}

/// The tiny network's training step at batch 8: a few dozen small launches.
fn step() -> (&'static DenseNetConfig, u32, Mode, DType) {
    static CFG: std::sync::OnceLock<DenseNetConfig> = std::sync::OnceLock::new();
    (
        CFG.get_or_init(DenseNetConfig::tiny),
        8,
        Mode::Train,
        DType::F32,
    )
}

/// A configuration the CPU policy never picks for the launch `key`: workgroup tiles with
/// more splits for the convolutions, the split batch norm.
fn unusual(key: &str) -> &'static str {
    match key.starts_with("batchnorm") {
        true => "split",
        false => "wgtile@more-splits",
    }
}

fn sources(report: &densenet_wgpu::tune::TuneReport) -> BTreeMap<Source, usize> {
    let mut out = BTreeMap::new();
    for l in &report.launches {
        *out.entry(l.source).or_default() += 1;
    }
    out
}

#[test]
fn cache_round_trips_and_merges() {
    let path = temp_dir("tune-cache").join("sub").join("tuning.json");
    let choice = |c: &str, us| CachedChoice {
        config: c.into(),
        micros: us,
        default_micros: 2.0 * us,
        measured: BTreeMap::from([(c.to_string(), us)]),
        complete: false,
    };
    let a = BTreeMap::from([("conv2d_forward[f32] a".to_string(), choice("tile8", 10.0))]);
    let b = BTreeMap::from([(
        "conv2d_forward[f32] b".to_string(),
        choice("wgtile@fewer-splits", 5.5),
    )]);
    TuneCache::store(&path, "dev", &a).unwrap();
    TuneCache::store(&path, "dev", &b).unwrap();
    TuneCache::store(&path, "other", &a).unwrap();
    let (cache, warning) = TuneCache::load(&path);
    assert_eq!(warning, None);
    let dev = cache.device("dev").unwrap();
    assert_eq!(dev.len(), 2);
    assert_eq!(dev["conv2d_forward[f32] b"], b["conv2d_forward[f32] b"]);
    assert_eq!(cache.device("other").unwrap(), &a);
}

#[test]
fn a_second_run_times_nothing_and_chooses_the_same() {
    let path = temp_dir("tune-second").join("tuning.json");
    let first = tune(k(), step(), &options(TuneMode::Full, &path, None), None).unwrap();
    let n = first.report.launches.len();
    assert!(n > 10, "{}", first.report.table());
    assert_eq!(sources(&first.report)[&Source::Timed], n);
    for l in &first.report.launches {
        let (best, default) = (l.micros.unwrap(), l.default_micros.unwrap());
        assert!(best <= default, "{}: {best} > {default}", l.key);
    }
    let second = tune(k(), step(), &options(TuneMode::Cached, &path, None), None).unwrap();
    assert_eq!(
        sources(&second.report),
        BTreeMap::from([(Source::Cached, n)])
    );
    assert_eq!(second.tuned, first.tuned);
    assert!(second.report.seconds < 1.0, "{}", second.report.seconds);
}

#[test]
fn a_corrupt_cache_warns_and_retunes() {
    let path = temp_dir("tune-corrupt").join("tuning.json");
    std::fs::write(&path, "{ this is not json").unwrap();
    let t = tune(
        k(),
        step(),
        &options(TuneMode::Cached, &path, Some(60.0)),
        None,
    )
    .unwrap();
    assert!(
        t.report.warnings.iter().any(|w| w.contains("corrupt")),
        "{:?}",
        t.report.warnings
    );
    assert_eq!(sources(&t.report)[&Source::Timed], t.report.launches.len());
    let (cache, warning) = TuneCache::load(&path);
    assert_eq!(warning, None, "the file is rewritten whole");
    assert_eq!(
        cache.device(&device_key(k().gpu())).unwrap().len(),
        t.report.launches.len()
    );

    // An entry naming a configuration this device does not have is not trusted.
    let (mut cache, _) = TuneCache::load(&path);
    let entries = cache.devices.get_mut(&device_key(k().gpu())).unwrap();
    let stale = entries.keys().next().unwrap().clone();
    entries.get_mut(&stale).unwrap().config = "tile99".into();
    std::fs::write(&path, serde_json::to_string(&cache).unwrap()).unwrap();
    let t = tune(
        k(),
        step(),
        &options(TuneMode::Cached, &path, Some(60.0)),
        None,
    )
    .unwrap();
    assert!(
        t.report.warnings.iter().any(|w| w.contains("tile99")),
        "{:?}",
        t.report.warnings
    );
    let retuned: Vec<_> = t
        .report
        .launches
        .iter()
        .filter(|l| l.source == Source::Timed)
        .collect();
    assert_eq!(retuned.len(), 1);
    assert_eq!(retuned[0].key, stale);
}

#[test]
fn a_budget_leaves_launches_for_later_runs() {
    let path = temp_dir("tune-budget").join("tuning.json");
    let none = tune(
        k(),
        step(),
        &options(TuneMode::Cached, &path, Some(0.0)),
        None,
    )
    .unwrap();
    let n = none.report.launches.len();
    assert_eq!(none.report.left_for_later, n);
    assert!(none.report.launches.iter().all(|l| l.chosen == l.default));
    assert!(!path.exists(), "nothing timed, nothing cached");
    // Later runs with room go on where the first stopped.
    let later = tune(
        k(),
        step(),
        &options(TuneMode::Cached, &path, Some(60.0)),
        None,
    )
    .unwrap();
    assert_eq!(later.report.left_for_later, 0);
    let again = tune(
        k(),
        step(),
        &options(TuneMode::Cached, &path, Some(0.0)),
        None,
    )
    .unwrap();
    assert_eq!(
        sources(&again.report),
        BTreeMap::from([(Source::Cached, n)])
    );
}

#[test]
fn recorded_choices_come_first() {
    let path = temp_dir("tune-recorded").join("tuning.json");
    let off = tune(k(), step(), &options(TuneMode::Off, &path, None), None).unwrap();
    let recorded: BTreeMap<String, String> = off
        .report
        .launches
        .iter()
        .map(|l| (l.key.clone(), unusual(&l.key).to_string()))
        .collect();
    let t = tune(
        k(),
        step(),
        &options(TuneMode::Full, &path, None),
        Some(&recorded),
    )
    .unwrap();
    assert!(t
        .report
        .launches
        .iter()
        .all(|l| l.source == Source::Recorded));
    assert!(t.tuned.iter().all(|(key, c)| c.name() == unusual(key)));
    assert!(t
        .tuned
        .keys()
        .any(|key| key.starts_with("batchnorm_backward")));
}

fn cli(args: &[&str]) -> String {
    support::cli_ok(args, &[])
}

/// Every launch of the tiny step at batch 32 in a configuration the policy never picks on
/// this device ([`unusual`]), written into a cache: a run that uses it differs from an untuned one in
/// its bits, so only the recorded choices can make a resumption exact.
fn doctored_cache(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tuning.json");
    let step = (step().0, 32, Mode::Train, DType::F32);
    let off = tune(k(), step, &options(TuneMode::Off, &path, None), None).unwrap();
    let entries = off
        .report
        .launches
        .iter()
        .map(|l| {
            let choice = CachedChoice {
                config: unusual(&l.key).into(),
                micros: 1.0,
                default_micros: 2.0,
                measured: BTreeMap::new(),
                complete: true,
            };
            (l.key.clone(), choice)
        })
        .collect();
    TuneCache::store(&path, &device_key(k().gpu()), &entries).unwrap();
    path
}

#[test]
fn a_resumed_tuned_run_reproduces_the_uninterrupted_one() {
    let dir = temp_dir("tune-resume");
    let cache = doctored_cache(&dir);
    let c = cache.to_str().unwrap();
    let run = |out: &Path, epochs: &str, extra: &[&str]| {
        let out = out.to_str().unwrap();
        // A constant rate: the schedule does not depend on the epoch count.
        let base = [
            "train",
            "--schedule",
            "constant",
            "--limit-train",
            "128",
            "--limit-test",
            "64",
            "--batch-size",
            "32",
        ];
        let more = ["--epochs", epochs, "--out", out];
        cli(&[&base[..], &more[..], extra].concat())
    };
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    let text = run(&whole, "2", &["--tune", "cached", "--tune-cache", c]);
    assert!(text.contains("0 timed"), "{text}");
    run(&parts, "1", &["--tune", "cached", "--tune-cache", c]);
    let ck = parts.join("checkpoint.safetensors");
    let recorded = Checkpoint::load(&ck).unwrap().kernel_choices;
    assert!(!recorded.is_empty());
    assert!(
        recorded.iter().all(|(key, c)| c == unusual(key)),
        "{recorded:?}"
    );
    // Resumed with tuning off and no cache: the checkpoint's kernels all the same.
    run(
        &parts,
        "2",
        &["--tune", "off", "--resume", ck.to_str().unwrap()],
    );
    let figures = |dir: &Path| -> Vec<[f64; 5]> {
        read_metrics(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|m| [m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.lr])
            .collect()
    };
    assert_eq!(figures(&whole), figures(&parts));
    // An untuned run takes other kernels, and other bits.
    let untuned = dir.join("untuned");
    run(&untuned, "2", &["--tune", "off"]);
    assert_ne!(
        figures(&untuned),
        figures(&whole),
        "the doctored choices changed nothing"
    );
}

#[test]
fn plan_and_bench_show_each_launch() {
    let dir = temp_dir("tune-show");
    let cache = dir.join("tuning.json");
    let c = cache.to_str().unwrap();
    let bench = cli(&[
        "bench",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--tune",
        "full",
        "--tune-cache",
        c,
        "--profile",
    ]);
    assert!(
        bench.contains("tuning (Full)") && bench.contains("first step done"),
        "{bench}"
    );
    assert!(bench.contains("conv2d_backward_weight[f32] n8"), "{bench}");
    let again = cli(&[
        "bench",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--tune-cache",
        c,
    ]);
    assert!(again.contains(" 0 timed"), "{again}");
    let plan = cli(&["plan", "--batch-size", "8", "--tune-cache", c]);
    assert!(
        plan.contains("kernels of the convolutions") && plan.contains("cached"),
        "{plan}"
    );
}
