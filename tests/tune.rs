//! Autotuning: the cache round-trips and merges; a corrupt, old or stale cache gives a
//! warning and a retune, never a wrong kernel; a second run times nothing; a budget leaves
//! launches to the policy and later runs; `exact` picks only configurations that give the
//! policy's bits, so the same command gives the same metrics whatever the cache holds; a
//! candidate whose output disagrees with the baseline's is rejected, never picked; and
//! through the binary, a run interrupted and resumed with tuning on reproduces the
//! uninterrupted run's metrics exactly, with the kernels recorded in its checkpoint even when
//! the resumed run is told not to tune. (Each configuration of each variant is compared with
//! the reference in tests/kernels.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::DeviceClass;
use densenet_wgpu::model::{DenseNetConfig, Mode};
use densenet_wgpu::report::read_metrics;
use densenet_wgpu::tune::cache::{device_key, CachedChoice, TuneCache};
use densenet_wgpu::tune::{tune, Source, TuneMode, TuneOptions};
use support::harness::{case, Case, TIMESTAMPS};
use support::{k, temp_dir};

fn main() -> std::process::ExitCode {
    let cases: Vec<Case> = vec![
        case("cache_round_trips_and_merges", cache_round_trips_and_merges),
        case(
            "a_second_run_times_nothing_and_chooses_the_same",
            a_second_run_times_nothing_and_chooses_the_same,
        ),
        case(
            "a_corrupt_old_or_stale_cache_warns_and_retunes",
            a_corrupt_old_or_stale_cache_warns_and_retunes,
        ),
        case(
            "a_budget_leaves_launches_for_later_runs",
            a_budget_leaves_launches_for_later_runs,
        ),
        case("recorded_choices_come_first", recorded_choices_come_first),
        case(
            "exact_tuning_keeps_the_policys_bits",
            exact_tuning_keeps_the_policys_bits,
        ),
        case(
            "the_same_command_gives_the_same_metrics_whatever_the_cache_holds",
            the_same_command_gives_the_same_metrics_whatever_the_cache_holds,
        ),
        case(
            "a_candidate_that_disagrees_is_rejected",
            a_candidate_that_disagrees_is_rejected,
        ),
        case(
            "a_resumed_tuned_run_reproduces_the_uninterrupted_one",
            a_resumed_tuned_run_reproduces_the_uninterrupted_one,
        ),
        case(
            "plan_and_bench_show_each_launch",
            plan_and_bench_show_each_launch,
        )
        .needs(TIMESTAMPS),
    ];
    support::harness::run(cases)
}

fn options(mode: TuneMode, cache: &Path, budget: Option<f64>) -> TuneOptions {
    TuneOptions {
        mode,
        budget,
        cache: Some(cache.to_path_buf()),
        progress: false,
        check: true,
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

/// A configuration this adapter's policy never picks for the launch `key`, and which sums
/// in another order than the policy's: the other device class's.
fn unusual(key: &str) -> &'static str {
    let cpu = k().policy().class == DeviceClass::Cpu;
    match (key.starts_with("batchnorm"), cpu) {
        (true, true) => "split",
        (true, false) => "plain",
        (false, true) => "wgtile@more-splits",
        (false, false) => "tile16@more-splits",
    }
}

fn sources(report: &densenet_wgpu::tune::TuneReport) -> BTreeMap<Source, usize> {
    let mut out = BTreeMap::new();
    for l in &report.launches {
        *out.entry(l.source).or_default() += 1;
    }
    out
}

fn cache_round_trips_and_merges() {
    let path = temp_dir("tune-cache").join("sub").join("tuning.json");
    let choice = |c: &str, us| CachedChoice {
        measured: BTreeMap::from([(c.to_string(), us), ("tile16".to_string(), 2.0 * us)]),
        identical: BTreeSet::from([c.to_string()]),
        rejected: BTreeMap::from([("tile8".to_string(), "differs".to_string())]),
        ..CachedChoice::new("tile16")
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

fn a_second_run_times_nothing_and_chooses_the_same() {
    let path = temp_dir("tune-second").join("tuning.json");
    let first = tune(k(), step(), &options(TuneMode::Full, &path, None), None).unwrap();
    let n = first.report.launches.len();
    assert!(n > 10, "{}", first.report.table());
    assert_eq!(first.report.left_for_later, 0);
    for l in &first.report.launches {
        let (best, default) = (l.micros.unwrap(), l.default_micros.unwrap());
        assert!(best <= default, "{}: {best} > {default}", l.key);
    }
    let second = tune(k(), step(), &options(TuneMode::Fast, &path, None), None).unwrap();
    assert_eq!(
        sources(&second.report),
        BTreeMap::from([(Source::Cached, n)])
    );
    assert_eq!(second.tuned, first.tuned);
    assert_eq!(
        second.report.check.checked, 0,
        "the verdicts are cached too"
    );
    assert!(second.report.seconds < 1.0, "{}", second.report.seconds);
    // Everything `exact` needs was measured by the full run too.
    let exact = tune(k(), step(), &options(TuneMode::Exact, &path, None), None).unwrap();
    assert_eq!(exact.report.left_for_later, 0, "{}", exact.report.table());
}

fn a_corrupt_old_or_stale_cache_warns_and_retunes() {
    let path = temp_dir("tune-corrupt").join("tuning.json");
    let fast = |budget| options(TuneMode::Fast, &path, Some(budget));
    for (text, says) in [
        ("{ this is not json", "corrupt"),
        (r#"{"format": 1, "devices": {}}"#, "has format 1"),
    ] {
        std::fs::write(&path, text).unwrap();
        let t = tune(k(), step(), &fast(60.0), None).unwrap();
        assert!(
            t.report.warnings.iter().any(|w| w.contains(says)),
            "{:?}",
            t.report.warnings
        );
        assert_eq!(sources(&t.report)[&Source::Timed], t.report.launches.len());
        let (cache, warning) = TuneCache::load(&path);
        assert_eq!(warning, None, "the file is rewritten whole");
        let entries = cache.device(&device_key(k().gpu())).unwrap();
        assert_eq!(entries.len(), t.report.launches.len());
    }

    // A measurement naming a configuration this device does not have is not trusted: its
    // launch is timed again (and nothing else).
    let (mut cache, _) = TuneCache::load(&path);
    let entries = cache.devices.get_mut(&device_key(k().gpu())).unwrap();
    let stale = entries.keys().next().unwrap().clone();
    let entry = entries.get_mut(&stale).unwrap();
    let (name, us) = entry.measured.pop_first().unwrap();
    entry.measured.insert("tile99".into(), us);
    std::fs::write(&path, serde_json::to_string(&cache).unwrap()).unwrap();
    let t = tune(k(), step(), &fast(60.0), None).unwrap();
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
    assert_eq!(retuned.len(), 1, "{name} of {stale}");
    assert_eq!(retuned[0].key, stale);
}

fn a_budget_leaves_launches_for_later_runs() {
    let path = temp_dir("tune-budget").join("tuning.json");
    let fast = |budget| options(TuneMode::Fast, &path, Some(budget));
    let none = tune(k(), step(), &fast(0.0), None).unwrap();
    let n = none.report.launches.len();
    assert_eq!(none.report.left_for_later, n);
    assert!(none.report.launches.iter().all(|l| l.chosen == l.default));
    assert!(!path.exists(), "nothing timed, nothing cached");
    // Later runs with room go on where the first stopped.
    let later = tune(k(), step(), &fast(60.0), None).unwrap();
    assert_eq!(later.report.left_for_later, 0);
    let again = tune(k(), step(), &fast(0.0), None).unwrap();
    assert_eq!(
        sources(&again.report),
        BTreeMap::from([(Source::Cached, n)])
    );
}

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

/// `exact` times only configurations that sum in the policy's order, proves each gives the
/// baseline's bits on the launch's own shape, and picks among those alone.
fn exact_tuning_keeps_the_policys_bits() {
    let path = temp_dir("tune-exact").join("tuning.json");
    let t = tune(
        k(),
        step(),
        &options(TuneMode::Exact, &path, Some(60.0)),
        None,
    )
    .unwrap();
    assert_eq!(t.report.left_for_later, 0);
    let (cache, _) = TuneCache::load(&path);
    let entries = cache.device(&device_key(k().gpu())).unwrap();
    for l in &t.report.launches {
        let e = &entries[&l.key];
        assert!(e.identical.contains(&l.chosen), "{}: {e:?}", l.key);
        assert!(e.rejected.is_empty(), "{}: {e:?}", l.key);
        // Register tiles of 16 or 8 channels: interchangeable; nothing else is.
        for name in e.measured.keys() {
            let same_family = name.starts_with("tile") == l.default.starts_with("tile");
            assert!(same_family, "{}: {name} timed against {}", l.key, l.default);
        }
    }
}

/// Every launch of the tiny step at `batch` in a configuration the policy never picks on
/// this device ([`unusual`]), written into a cache as measured fastest and agreeing with the
/// baseline: `fast` trusts it, `exact` must not (it was never shown to give the same bits).
fn doctored_cache(dir: &Path, batch: u32) -> std::path::PathBuf {
    let path = dir.join("tuning.json");
    let step = (step().0, batch, Mode::Train, DType::F32);
    let off = tune(k(), step, &options(TuneMode::Off, &path, None), None).unwrap();
    let entries = off
        .report
        .launches
        .iter()
        .map(|l| {
            let mut choice = CachedChoice::new(&l.default);
            choice.measured.insert(l.default.clone(), 2.0);
            choice.identical.insert(l.default.clone());
            choice.measured.insert(unusual(&l.key).into(), 1.0);
            // Every other candidate is settled, so no run times anything.
            for c in ["tile16", "tile8", "wgtile", "plain", "split"]
                .iter()
                .flat_map(|v| ["", "@fewer-splits", "@more-splits"].map(|s| format!("{v}{s}")))
                .chain(["coop8", "coop16"].map(String::from))
            {
                if !choice.measured.contains_key(&c) {
                    choice.rejected.insert(c, "not a candidate here".into());
                }
            }
            (l.key.clone(), choice)
        })
        .collect();
    TuneCache::store(&path, &device_key(k().gpu()), &entries).unwrap();
    path
}

fn cli(args: &[&str]) -> String {
    support::cli_ok(args, &[])
}

/// Trains the tiny preset briefly at batch 32 with a constant rate (so the schedule does not
/// depend on the epoch count); the metrics written to `out`.
fn train(out: &Path, epochs: &str, extra: &[&str]) -> Vec<[f64; 5]> {
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
    let more = ["--epochs", epochs, "--out", out.to_str().unwrap()];
    cli(&[&base[..], &more[..], extra].concat());
    read_metrics(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| [m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.lr])
        .collect()
}

/// The default (`--tune exact`) gives the same metrics with an empty cache and with a cache
/// full of faster configurations of other bits; `--tune fast` takes those, and other bits.
fn the_same_command_gives_the_same_metrics_whatever_the_cache_holds() {
    let dir = temp_dir("tune-same");
    let empty = dir.join("empty.json");
    let doctored = doctored_cache(&dir, 32);
    let run = |name: &str, cache: &Path, mode: &str| {
        let c = cache.to_str().unwrap();
        train(&dir.join(name), "1", &["--tune", mode, "--tune-cache", c])
    };
    let cold = run("cold", &empty, "exact");
    let warm = run("warm", &empty, "exact");
    let doctored_exact = run("doctored-exact", &doctored, "exact");
    assert_eq!(cold, warm);
    assert_eq!(cold, doctored_exact);
    let off = run("off", &empty, "off");
    assert_eq!(cold, off, "exact gives the policy's bits");
    let doctored_fast = run("doctored-fast", &doctored, "fast");
    assert_ne!(
        cold, doctored_fast,
        "fast took the cache's other configurations"
    );
}

/// With `DENSENET_FAULT` spoiling one variant the policy does not pick (in every split
/// setting), tuning rejects it with a warning, caches the rejection and never picks it:
/// through the self-check, or (with the self-check off) by comparing its output with the
/// baseline's on the launch's own shape.
fn a_candidate_that_disagrees_is_rejected() {
    let faulty = match k().policy().class {
        DeviceClass::Cpu => "wgtile",
        DeviceClass::Gpu => "tile16",
    };
    for (check, says) in [
        ("on", "fails the self-check"),
        ("off", "its output differs"),
    ] {
        let dir = temp_dir("tune-reject");
        let cache = dir.join("tuning.json");
        let out = support::cli_ok(
            &[
                "bench",
                "--steps",
                "1",
                "--batch-size",
                "8",
                "--tune",
                "full",
                "--tune-cache",
                cache.to_str().unwrap(),
                "--self-check",
                check,
                "--verbose",
            ],
            &[("DENSENET_FAULT", &format!("conv2d={faulty}"))],
        );
        let (cache, _) = TuneCache::load(&cache);
        let entries = cache.device(&device_key(k().gpu())).unwrap();
        let spoiled = |name: &String| name.split('@').next() == Some(faulty);
        let rejected: Vec<&String> = entries
            .values()
            .flat_map(|e| e.rejected.iter())
            .filter(|(name, _)| spoiled(name))
            .map(|(_, why)| why)
            .collect();
        assert!(!rejected.is_empty(), "{entries:?}");
        assert!(
            rejected.iter().all(|why| why.contains(says)),
            "{rejected:?}"
        );
        for (key, e) in entries {
            assert!(!e.measured.keys().any(spoiled), "{key}: {e:?}");
        }
        assert!(!out.contains(&format!("{faulty} x")), "never chosen: {out}");
    }
}

fn a_resumed_tuned_run_reproduces_the_uninterrupted_one() {
    let dir = temp_dir("tune-resume");
    let cache = doctored_cache(&dir, 32);
    let c = cache.to_str().unwrap();
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    let fast = ["--tune", "fast", "--tune-cache", c];
    let uninterrupted = train(&whole, "2", &fast);
    train(&parts, "1", &fast);
    let ck = parts.join("checkpoint.safetensors");
    let recorded = Checkpoint::load(&ck).unwrap().kernel_choices;
    assert!(!recorded.is_empty());
    assert!(
        recorded.iter().all(|(key, c)| c == unusual(key)),
        "{recorded:?}"
    );
    // Resumed with tuning off and no cache: the checkpoint's kernels all the same.
    let resumed = train(
        &parts,
        "2",
        &["--tune", "off", "--resume", ck.to_str().unwrap()],
    );
    assert_eq!(uninterrupted, resumed);
    // An untuned run takes other kernels, and other bits.
    let untuned = train(&dir.join("untuned"), "2", &["--tune", "off"]);
    assert_ne!(
        untuned, uninterrupted,
        "the doctored choices changed nothing"
    );
}

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
        bench.contains("tuning full:") && bench.contains("first step done"),
        "{bench}"
    );
    assert!(bench.contains("conv2d_backward_weight[f32] n8"), "{bench}");
    let again = cli(&[
        "bench",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--tune",
        "fast",
        "--tune-cache",
        c,
    ]);
    assert!(again.contains("(0 timed"), "{again}");
    let plan = cli(&["plan", "--batch-size", "8", "--tune-cache", c]);
    assert!(
        plan.contains("kernels of the convolutions") && plan.contains("cached"),
        "{plan}"
    );
}
