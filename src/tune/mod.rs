//! Choosing each launch's kernel configuration on the user's own device, checked before
//! trusted.
//!
//! Every convolution direction and batch-norm backward of a step (the plan's own launches,
//! before any buffer exists, each distinct entry, element type and shape once) has a default
//! (the op's rule) and candidates (every variant and split setting the adapter runs). A run:
//!
//! 1. checks each configuration it may launch with the self-check ([`crate::selfcheck`];
//!    verdicts cached per device): a default that fails is replaced by the first candidate
//!    that passes, with a warning, and becomes the launch's *baseline*; if none passes, the
//!    run stops with an error; so do the kernels with a single implementation (a small
//!    network's step), which nothing can replace;
//! 2. tunes, as `--tune` says: `exact` (the default) among the candidates that give the
//!    baseline's bits, so the same command gives the same result whatever the cache holds;
//!    `fast` among all of them (results may then differ in rounding as the cache fills);
//!    `full` likewise, timing everything again; `off` not at all. A candidate is timed only
//!    after its output on seeded non-zero inputs agrees with the baseline's (bit for bit for
//!    `exact`), and is never picked otherwise. Choices persist in a cache file ([`cache`]);
//!    a time budget bounds what one run spends, compilation and checks included, the most
//!    expensive launches first, and later runs go on where it stopped.
//!
//! The result is a table of configurations the [`Policy`](crate::kernels::Policy) hands to
//! the launchers (and the memory plan, whose workspaces follow them); training records it in
//! the checkpoint so a resumed run launches exactly the same kernels.

pub mod cache;
mod launches;
mod report;
mod timing;
pub mod trust;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::gpu::DType;
use crate::kernels::{Config, Kernels, Tuned};
use crate::model::nodes::Mode;
use crate::model::DenseNetConfig;
use crate::ops::{batchnorm, conv2d};
use crate::selfcheck::{self, Item, Net, Target};
use cache::{CachedChoice, TuneCache};
use launches::{Todo, Work};
use trust::{CheckReport, Checker, Kind};

/// How a run picks its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TuneMode {
    /// The per-adapter policy; no timing, no cache.
    Off,
    /// Tunes among the configurations that give the policy's bits: the same command gives
    /// the same result whatever the cache holds. Cached, within the budget.
    Exact,
    /// Tunes among every configuration (results may differ in rounding from the policy's,
    /// and between runs as the cache fills). Cached, within the budget.
    #[value(alias = "cached")]
    Fast,
    /// As `fast`, timing every launch again (no budget unless one is given).
    Full,
}

/// What `--tune`, `--tune-budget`, `--tune-cache` and `--self-check` ask for.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    pub mode: TuneMode,
    /// Seconds one run may spend tuning and checking; `None`: the mode's default
    /// ([`DEFAULT_BUDGET`] for `exact` and `fast`, unlimited for `full`).
    pub budget: Option<f64>,
    /// The cache file; `None`: [`cache::default_path`]. The self-check's verdicts go
    /// beside it.
    pub cache: Option<PathBuf>,
    /// Draw a progress bar (a terminal).
    pub progress: bool,
    /// Check every configuration before it is trusted (see [`crate::selfcheck`]).
    pub check: bool,
}

/// The default modes' budget: small enough to keep the cold start (a run reaches its first
/// step in a few seconds), and later runs go on where it stopped.
pub const DEFAULT_BUDGET: f64 = 1.0;

impl TuneOptions {
    /// No tuning: the policy's choices, still checked.
    pub fn off() -> TuneOptions {
        TuneOptions {
            mode: TuneMode::Off,
            budget: None,
            cache: None,
            progress: false,
            check: true,
        }
    }

    fn budget(&self) -> Option<Duration> {
        let secs = match (self.budget, self.mode) {
            (Some(b), _) => Some(b),
            (None, TuneMode::Exact | TuneMode::Fast) => Some(DEFAULT_BUDGET),
            (None, _) => None,
        };
        secs.map(|s| Duration::from_secs_f64(s.max(0.0)))
    }
}

/// Where a launch's configuration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Timed in this run.
    Timed,
    /// From the cache file.
    Cached,
    /// From the checkpoint being resumed.
    Recorded,
    /// The policy's: tuning is off, the op is forced, or the budget ran out first.
    Policy,
    /// The policy's choice failed the self-check on this device: the first candidate that
    /// passed instead.
    Replaced,
}

/// One launch's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Launch {
    pub key: String,
    pub op: String,
    pub chosen: String,
    pub default: String,
    pub source: Source,
    /// Median times in microseconds of the chosen and the baseline configurations, where
    /// known.
    pub micros: Option<f64>,
    pub default_micros: Option<f64>,
    /// Candidates this launch had in the mode.
    pub candidates: usize,
}

/// What tuning and the self-check did: every launch's choice, and the time it took.
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub mode: TuneMode,
    pub launches: Vec<Launch>,
    /// Seconds spent tuning and checking (scratch tensors, compilation, checks and timing).
    pub seconds: f64,
    /// Launches the budget left untuned or partly tuned (later runs go on with them).
    pub left_for_later: usize,
    pub cache: Option<PathBuf>,
    /// Cache or checkpoint entries that were ignored, configurations replaced or rejected,
    /// and why.
    pub warnings: Vec<String>,
    pub check: CheckReport,
    /// An op forced for the whole run because its policy choice failed the self-check.
    pub forced: Vec<(String, String)>,
}

/// The tuned table and its report.
pub struct Tuning {
    pub tuned: Tuned,
    pub report: TuneReport,
}

/// The self-check kind of a launch's configurations.
fn kind(t: &Todo) -> Kind {
    match t.work {
        Work::Conv(..) => Kind::Conv,
        Work::BnBackward(_) => Kind::BatchNorm,
    }
}

impl Todo {
    fn launch(
        &self,
        c: Config,
        source: Source,
        times: (Option<f64>, Option<f64>),
        n: usize,
    ) -> Launch {
        Launch {
            key: self.key.clone(),
            op: self.work.entry().to_string(),
            chosen: c.name(),
            default: self.default.name(),
            source,
            micros: times.0,
            default_micros: times.1,
            candidates: n,
        }
    }
}

/// Chooses every tunable launch (convolutions, batch-norm backwards) of `cfg`'s step
/// (`mode`, batch `batch`, `dtype` activations) on `k`'s device, checking what it trusts.
/// `recorded`: a resumed run's choices by launch key, used first whatever the mode (a run is
/// fixed once started) if they pass the self-check.
pub fn tune(
    k: &Kernels,
    (cfg, batch, mode, dtype): (&DenseNetConfig, u32, Mode, DType),
    opts: &TuneOptions,
    recorded: Option<&BTreeMap<String, String>>,
) -> Result<Tuning> {
    let start = Instant::now();
    let todos = launches::launches(k, cfg, batch, mode, dtype)?;
    let path = opts.cache.clone().or_else(cache::default_path);
    let device = cache::device_key(k.gpu());
    let mut warnings = Vec::new();
    let mut checker = Checker::new(k, opts.check, path.as_deref(), &mut warnings);
    let baselines = baselines(k, &todos, &mut checker, &mut warnings)?;
    let cached = match (opts.mode, &path) {
        (TuneMode::Exact | TuneMode::Fast, Some(p)) => {
            let (c, warning) = TuneCache::load(p);
            warnings.extend(warning.map(|w| format!("{w}; ignoring it and tuning again")));
            c.device(&device).cloned().unwrap_or_default()
        }
        _ => BTreeMap::new(),
    };
    let mut out: Vec<Option<(Config, Launch)>> = vec![None; todos.len()];
    let mut to_time: Vec<(usize, CachedChoice)> = Vec::new();
    for (i, t) in todos.iter().enumerate() {
        let given = (recorded.and_then(|r| r.get(&t.key)), cached.get(&t.key));
        let ctx = (&mut checker, &mut warnings);
        match decide(k, t, baselines[i], opts.mode, given, ctx) {
            Decided::Chosen(c, launch) => out[i] = Some((c, launch)),
            Decided::ToTime(entry) => to_time.push((i, entry)),
        }
    }
    // The most expensive launches first: within a budget, they are where time is won.
    to_time.sort_by_key(|(i, _)| std::cmp::Reverse(todos[*i].work.cost()));
    let deadline = opts.budget().map(|b| start + b);
    let timed = timing::time_all(
        k,
        &todos,
        &baselines,
        to_time,
        opts.mode,
        deadline,
        &mut checker,
        opts.progress,
    )?;
    warnings.extend(timed.warnings);
    let mut fresh = BTreeMap::new();
    let mut left = 0;
    for (i, entry) in timed.entries {
        let t = &todos[i];
        let timed_now = timed.new.contains(&i);
        let (c, launch) = settle(
            k,
            t,
            baselines[i],
            opts.mode,
            (&entry, timed_now),
            &mut checker,
        );
        left += usize::from(!complete(t, opts.mode, baselines[i], &entry));
        out[i] = Some((c, launch));
        if timed_now {
            fresh.insert(t.key.clone(), entry);
        }
    }
    if let (false, Some(p)) = (fresh.is_empty(), &path) {
        if let Err(e) = TuneCache::store(p, &device, &fresh) {
            warnings.push(format!("{e:#}; the choices are used but not cached"));
        }
    }
    let forced = check_the_rest(
        k,
        (cfg, dtype),
        &todos,
        &baselines,
        &mut checker,
        &mut warnings,
    )?;
    warnings.extend(checker.store());
    let mut tuned = Tuned::new();
    let mut launches = Vec::new();
    for (c, l) in out.into_iter().flatten() {
        tuned.insert(l.key.clone(), c);
        launches.push(l);
    }
    let report = TuneReport {
        mode: opts.mode,
        launches,
        seconds: start.elapsed().as_secs_f64(),
        left_for_later: left,
        cache: path,
        warnings,
        check: checker.report.clone(),
        forced,
    };
    Ok(Tuning { tuned, report })
}

/// What a launch needs before any timing.
enum Decided {
    /// Its configuration: forced, tuning off, recorded in the checkpoint, or complete in the
    /// cache.
    Chosen(Config, Launch),
    /// What earlier runs measured of it, to go on timing from.
    ToTime(CachedChoice),
}

/// Decides launch `t` (of baseline `base`) without timing where it can: from `recorded` (a
/// resumed run's choice) or a `cached` entry complete for `mode`.
fn decide(
    k: &Kernels,
    t: &Todo,
    base: Config,
    mode: TuneMode,
    (recorded, cached): (Option<&String>, Option<&CachedChoice>),
    (checker, warnings): (&mut Checker<'_>, &mut Vec<String>),
) -> Decided {
    let n = t.candidates_for(mode, base).len();
    if k.policy().forced(t.work.op()).is_some() || mode == TuneMode::Off {
        let untuned = match base == t.default {
            true => Source::Policy,
            false => Source::Replaced,
        };
        return Decided::Chosen(base, t.launch(base, untuned, (None, None), n));
    }
    if let Some(name) = recorded {
        match t.resolve(k, name) {
            Some(c) if checker.config_passes(kind(t), c, t.dtype) => {
                return Decided::Chosen(c, t.launch(c, Source::Recorded, (None, None), n));
            }
            Some(_) => warnings.push(format!(
                "the checkpoint's {name} for {} fails the self-check here; choosing again",
                t.key
            )),
            None => warnings.push(format!(
                "the checkpoint's {name} for {} does not run here; choosing again",
                t.key
            )),
        }
    }
    // An entry compared with another baseline is stale.
    let entry = cached
        .filter(|e| e.baseline == base.name())
        .cloned()
        .unwrap_or_else(|| CachedChoice::new(&base.name()));
    for name in entry.measured.keys().chain(entry.rejected.keys()) {
        if t.resolve(k, name).is_none() {
            warnings.push(format!(
                "the cache's {name} for {} does not run here; tuning it again",
                t.key
            ));
        }
    }
    let entry = usable(k, t, entry);
    match complete(t, mode, base, &entry) {
        true => {
            let (c, times) = best(k, t, mode, base, &entry, checker);
            Decided::Chosen(c, t.launch(c, Source::Cached, times, n))
        }
        false => Decided::ToTime(entry),
    }
}

/// Launch `t`'s choice once timing has had its turn: the best of `entry` (measured in this
/// run when `timed_now`), else the baseline.
fn settle(
    k: &Kernels,
    t: &Todo,
    base: Config,
    mode: TuneMode,
    (entry, timed_now): (&CachedChoice, bool),
    checker: &mut Checker<'_>,
) -> (Config, Launch) {
    let n = t.candidates_for(mode, base).len();
    let (c, times) = best(k, t, mode, base, entry, checker);
    let source = match (c == base, timed_now) {
        (true, _) if times.0.is_none() && base != t.default => Source::Replaced,
        (true, _) if times.0.is_none() => Source::Policy,
        (_, true) => Source::Timed,
        (_, false) => Source::Cached,
    };
    (c, t.launch(c, source, times, n))
}

/// Every launch's baseline: its default where that passes the self-check, else the first
/// candidate that does (with a warning, once per configuration). None passing, or a forced
/// configuration failing, stops the run.
fn baselines(
    k: &Kernels,
    todos: &[Todo],
    checker: &mut Checker<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Config>> {
    let mut out = Vec::with_capacity(todos.len());
    for t in todos {
        let op = t.work.op();
        let default = Item {
            target: match kind(t) {
                Kind::Conv => Target::Conv(t.default),
                Kind::BatchNorm => Target::BatchNorm(t.default),
            },
            dtype: t.dtype,
        };
        // Same-bits candidates first, so a replacement changes as little as it can.
        let same = t.candidates_for(TuneMode::Exact, t.default);
        let others = t.candidates.iter().filter(|c| !same.contains(c)).copied();
        let order: Vec<Config> = same.iter().copied().chain(others).collect();
        let Some(base) = checker.first_passing(kind(t), t.dtype, order) else {
            bail!(
                "no {op} configuration passes the self-check in {} on {} ({} fails: {}); \
                 `densenet-wgpu selftest` shows every check",
                t.dtype,
                k.gpu().info.name,
                default.label(),
                checker.failures(&default.label())
            );
        };
        if base != t.default {
            if k.policy().forced(op).is_some() {
                bail!(
                    "--kernels {op}={}: it fails the self-check on {} in {} ({}); choose another \
                     (`densenet-wgpu selftest` lists those that pass)",
                    t.default.name(),
                    k.gpu().info.name,
                    t.dtype,
                    checker.failures(&default.label())
                );
            }
            let line = format!(
                "{} fails the self-check on this device ({}); its launches run {} instead",
                default.label(),
                checker.failures(&default.label()),
                base.name()
            );
            if !warnings.contains(&line) {
                warnings.push(line);
            }
        }
        out.push(base);
    }
    Ok(out)
}

/// The batch norm's statistics configuration (chosen for the whole run, not per launch) and
/// the kernels with a single implementation, through the network check. A failing statistics
/// configuration forces the op to one that passes (returned); failing single kernels stop
/// the run, since nothing can replace them.
fn check_the_rest(
    k: &Kernels,
    (cfg, dtype): (&DenseNetConfig, DType),
    todos: &[Todo],
    baselines: &[Config],
    checker: &mut Checker<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, String)>> {
    let mut forced = Vec::new();
    let stats = batchnorm::stats_config(k.policy());
    let bn_all = selfcheck::configs(k, &batchnorm::SHADERS, dtype);
    let bn = checker.first_passing(Kind::BatchNorm, dtype, std::iter::once(stats).chain(bn_all));
    let Some(bn) = bn else {
        bail!("no batchnorm configuration passes the self-check in {dtype} on this device; `densenet-wgpu selftest` shows every check");
    };
    if bn != stats {
        warnings.push(format!(
            "batchnorm {} {dtype} fails the self-check on this device; every batch norm runs {} instead",
            stats.name(),
            bn.name()
        ));
        forced.push((batchnorm::OP.to_string(), bn.name()));
    }
    let conv = todos
        .iter()
        .zip(baselines)
        .find(|(t, _)| kind(t) == Kind::Conv)
        .map_or_else(|| conv2d::rule_config(k, dtype), |(_, &c)| c);
    let network = Item {
        target: Target::Network(Net::of(cfg)),
        dtype,
    };
    if !checker.passes(network, (conv, bn)) {
        warnings.extend(checker.store());
        bail!(
            "kernels with a single implementation fail the self-check on {} in {dtype} ({}); \
             no --kernels setting avoids them: please report it with the output of \
             `densenet-wgpu selftest`",
            k.gpu().info.name,
            checker.failures(&network.label())
        );
    }
    Ok(forced)
}

/// `entry` without what names configurations this build or adapter does not run.
fn usable(k: &Kernels, t: &Todo, mut entry: CachedChoice) -> CachedChoice {
    entry
        .measured
        .retain(|name, _| t.resolve(k, name).is_some());
    entry.identical.retain(|name| t.resolve(k, name).is_some());
    entry
        .rejected
        .retain(|name, _| t.resolve(k, name).is_some());
    entry
}

/// Whether every candidate of `mode` has been measured or rejected.
fn complete(t: &Todo, mode: TuneMode, baseline: Config, entry: &CachedChoice) -> bool {
    t.candidates_for(mode, baseline)
        .iter()
        .all(|c| entry.settled(&c.name()))
}

/// The fastest measured candidate of `mode` that passes the self-check (for `exact`, one
/// that gave the baseline's bits), else the baseline; with its time and the baseline's.
fn best(
    k: &Kernels,
    t: &Todo,
    mode: TuneMode,
    baseline: Config,
    entry: &CachedChoice,
    checker: &mut Checker<'_>,
) -> (Config, (Option<f64>, Option<f64>)) {
    let base_us = entry.measured.get(&baseline.name()).copied();
    let Some(base_us) = base_us else {
        return (baseline, (None, None));
    };
    let mut eligible: Vec<(Config, f64)> = entry
        .measured
        .iter()
        .filter(|(name, _)| mode != TuneMode::Exact || entry.identical.contains(*name))
        .filter_map(|(name, &us)| Some((t.resolve(k, name)?, us)))
        .collect();
    eligible.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (c, us) in eligible {
        if c == baseline || checker.config_passes(kind(t), c, t.dtype) {
            return (c, (Some(us), Some(base_us)));
        }
    }
    (baseline, (Some(base_us), Some(base_us)))
}

/// [`tune`], and `k`'s device and pipelines under a policy with the result.
pub fn tuned_kernels(
    k: &Kernels,
    step: (&DenseNetConfig, u32, Mode, DType),
    opts: &TuneOptions,
    recorded: Option<&BTreeMap<String, String>>,
) -> Result<(Kernels, TuneReport)> {
    let t = tune(k, step, opts, recorded)?;
    let mut policy = k.policy().clone().with_tuned(t.tuned);
    for (op, name) in &t.report.forced {
        if let Some(c) =
            batchnorm::tune::config_named(k, name, step.3).filter(|_| op == batchnorm::OP)
        {
            policy = policy.with_forced(batchnorm::OP, c);
        }
    }
    let n = t
        .report
        .launches
        .iter()
        .filter(|l| l.source != Source::Policy)
        .count();
    if n > 0 {
        policy.origin = format!("{}, {n} launches tuned or checked", policy.origin);
    }
    Ok((k.with_policy(policy), t.report))
}
