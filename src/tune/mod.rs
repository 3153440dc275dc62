//! Autotuning: every convolution and batch-norm backward launch of a step timed in each of
//! its candidate configurations on the user's own device, the fastest kept, as cuDNN's
//! benchmark mode does.
//!
//! The launches are the plan's own (its nodes, before any buffer exists), each distinct
//! (entry, element type, shape) once. Each candidate runs on zero-filled scratch tensors of
//! the launch's shape: a warm-up, then a few repetitions (fewer for slow launches), timed
//! with GPU timestamps where the adapter has them and the wall clock around a wait
//! otherwise; the median counts. Choices persist in a cache file ([`cache`]) so later runs
//! start without timing; a time budget bounds what one run spends, the most expensive
//! launches first, and what it leaves is tuned by later runs. The result is a table of
//! configurations the [`Policy`](crate::kernels::Policy) hands to the launchers (and the
//! memory plan, whose workspaces follow them); training records it in the checkpoint so a
//! resumed run launches exactly the same kernels.

pub mod cache;
mod report;
mod timing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::gpu::DType;
use crate::kernels::{Config, Kernels, Tuned};
use crate::model::nodes::{nodes, Mode, PlanLimits, PlanTarget};
use crate::model::{DenseNetConfig, Layout};
use crate::ops::batchnorm::{self, tune as bn_tune, BatchNormParams};
use crate::ops::conv2d::{self, tune as conv_tune, Conv2dParams, Direction};
use cache::{CachedChoice, TuneCache};

/// How a run picks its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TuneMode {
    /// The per-adapter policy; no timing, no cache.
    Off,
    /// Cached choices; times what the cache lacks, within the budget, and caches it.
    Cached,
    /// Times every launch again (no budget unless one is given) and updates the cache.
    Full,
}

/// What `--tune`, `--tune-budget` and `--tune-cache` ask for.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    pub mode: TuneMode,
    /// Seconds of tuning one run may spend; `None`: the mode's default ([`DEFAULT_BUDGET`]
    /// for `cached`, unlimited for `full`).
    pub budget: Option<f64>,
    /// The cache file; `None`: [`cache::default_path`].
    pub cache: Option<PathBuf>,
    /// Draw a progress bar (a terminal).
    pub progress: bool,
}

/// The default mode's budget: small enough to keep the cold start (a run reaches its first
/// step in a few seconds), and later runs go on where it stopped.
pub const DEFAULT_BUDGET: f64 = 1.0;

impl TuneOptions {
    /// No tuning: the policy's choices.
    pub fn off() -> TuneOptions {
        TuneOptions {
            mode: TuneMode::Off,
            budget: None,
            cache: None,
            progress: false,
        }
    }

    fn budget(&self) -> Option<Duration> {
        let secs = match (self.budget, self.mode) {
            (Some(b), _) => Some(b),
            (None, TuneMode::Cached) => Some(DEFAULT_BUDGET),
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
}

/// One launch's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Launch {
    pub key: String,
    pub op: String,
    pub chosen: String,
    pub default: String,
    pub source: Source,
    /// Median times in microseconds, where known.
    pub micros: Option<f64>,
    pub default_micros: Option<f64>,
    /// Candidates this launch had.
    pub candidates: usize,
}

/// What tuning did: every launch's choice, and the time it took.
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub mode: TuneMode,
    pub launches: Vec<Launch>,
    /// Seconds spent tuning (scratch tensors, compilation and timing included).
    pub seconds: f64,
    /// Launches the budget left untuned or partly tuned (later runs go on with them).
    pub left_for_later: usize,
    pub cache: Option<PathBuf>,
    /// Cache or checkpoint entries that were ignored, and why.
    pub warnings: Vec<String>,
}

/// The tuned table and its report.
pub struct Tuning {
    pub tuned: Tuned,
    pub report: TuneReport,
}

/// What a launch computes: a convolution's GEMM, or a batch norm's backward.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Work {
    Conv(Conv2dParams, Direction),
    BnBackward(BatchNormParams),
}

impl Work {
    /// The launcher's name.
    fn entry(&self) -> &'static str {
        match self {
            Work::Conv(_, dir) => dir.entry(),
            Work::BnBackward(_) => "batchnorm_backward",
        }
    }

    /// The op, as `--kernels` names it (a forced op is not tuned).
    fn op(&self) -> &'static str {
        match self {
            Work::Conv(..) => conv2d::OP,
            Work::BnBackward(_) => batchnorm::OP,
        }
    }

    /// Multiply-adds or their equivalent: the order in which launches are tuned.
    fn cost(&self) -> u64 {
        match self {
            Work::Conv(p, _) => p.macs(),
            Work::BnBackward(p) => 7 * p.len(),
        }
    }
}

/// One launch to decide: what it computes, its key, default and candidates.
struct Todo {
    work: Work,
    dtype: DType,
    key: String,
    default: Config,
    candidates: Vec<Config>,
}

impl Todo {
    fn launch(&self, c: Config, source: Source, (micros, default_micros): Times) -> Launch {
        Launch {
            key: self.key.clone(),
            op: self.work.entry().to_string(),
            chosen: c.name(),
            default: self.default.name(),
            source,
            micros,
            default_micros,
            candidates: self.candidates.len(),
        }
    }
}

/// Median microseconds of a launch's chosen and default configurations, where known.
type Times = (Option<f64>, Option<f64>);

/// The configuration called `name` if it runs `todo` on this device.
fn resolve(k: &Kernels, todo: &Todo, name: &str) -> Option<Config> {
    match todo.work {
        Work::Conv(..) => conv_tune::config_named(k, name, todo.dtype),
        Work::BnBackward(_) => bn_tune::config_named(k, name, todo.dtype),
    }
}

/// Chooses every tunable launch (convolutions, batch-norm backwards) of `cfg`'s step
/// (`mode`, batch `batch`, `dtype` activations) on `k`'s device. `recorded`: a resumed
/// run's choices by launch key, used first whatever the mode (a run is fixed once started).
pub fn tune(
    k: &Kernels,
    (cfg, batch, mode, dtype): (&DenseNetConfig, u32, Mode, DType),
    opts: &TuneOptions,
    recorded: Option<&BTreeMap<String, String>>,
) -> Result<Tuning> {
    let start = Instant::now();
    let todos = launches(k, cfg, batch, mode, dtype)?;
    let path = opts.cache.clone().or_else(cache::default_path);
    let device = cache::device_key(k.gpu());
    let mut warnings = Vec::new();
    let cached = match (opts.mode, &path) {
        (TuneMode::Cached, Some(p)) => {
            let (c, warning) = TuneCache::load(p);
            warnings.extend(warning.map(|w| format!("{w}; ignoring it and tuning again")));
            c.device(&device).cloned().unwrap_or_default()
        }
        _ => BTreeMap::new(),
    };
    let mut out: Vec<Option<(Config, Launch)>> = vec![None; todos.len()];
    // Launches to time, with what earlier runs measured of them.
    let mut to_time: Vec<(usize, BTreeMap<String, f64>)> = Vec::new();
    let forced = |t: &Todo| k.policy().forced(t.work.op()).is_some();
    for (i, t) in todos.iter().enumerate().filter(|(_, t)| !forced(t)) {
        if let Some(name) = recorded.and_then(|r| r.get(&t.key)) {
            match resolve(k, t, name) {
                Some(c) => {
                    out[i] = Some((c, t.launch(c, Source::Recorded, (None, None))));
                    continue;
                }
                None => warnings.push(format!(
                    "the checkpoint's {name} for {} does not run here; choosing again",
                    t.key
                )),
            }
        }
        let mut entry = cached.get(&t.key);
        match entry.map(|e| (e, resolve(k, t, &e.config))) {
            Some((e, Some(c))) if e.complete => {
                let times = (Some(e.micros), Some(e.default_micros));
                out[i] = Some((c, t.launch(c, Source::Cached, times)));
                continue;
            }
            Some((e, None)) => {
                warnings.push(format!(
                    "the cache's {} for {} does not run here; tuning it again",
                    e.config, t.key
                ));
                entry = None; // nor are its measurements trusted
            }
            _ => {}
        }
        match opts.mode {
            TuneMode::Off => {
                out[i] = Some((t.default, t.launch(t.default, Source::Policy, (None, None))))
            }
            _ => to_time.push((i, entry.map(|e| e.measured.clone()).unwrap_or_default())),
        }
    }
    // The most expensive launches first: within a budget, they are where time is won.
    to_time.sort_by_key(|(i, _)| std::cmp::Reverse(todos[*i].work.cost()));
    let deadline = opts.budget().map(|b| start + b);
    let timed = timing::time_all(k, &todos, &to_time, deadline, opts.progress)?;
    warnings.extend(timed.warnings);
    let mut fresh = BTreeMap::new();
    let mut left = 0;
    for (i, measured) in timed.measured {
        let t = &todos[i];
        let (c, launch, entry) = settle(k, t, &measured, timed.new.contains(&i));
        left += usize::from(entry.as_ref().is_none_or(|e| !e.complete));
        if let Some(e) = entry.filter(|_| timed.new.contains(&i)) {
            fresh.insert(t.key.clone(), e);
        }
        out[i] = Some((c, launch));
    }
    if let (false, Some(p)) = (fresh.is_empty(), &path) {
        if let Err(e) = TuneCache::store(p, &device, &fresh) {
            warnings.push(format!("{e:#}; the choices are used but not cached"));
        }
    }
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
    };
    Ok(Tuning { tuned, report })
}

/// The choice for launch `t` from the microseconds `measured` of its candidates (this run
/// and earlier ones): the fastest, or the default when nothing was measured; and what to
/// cache (complete once every candidate is measured). `timed_now`: this run measured some.
fn settle(
    k: &Kernels,
    t: &Todo,
    measured: &BTreeMap<String, f64>,
    timed_now: bool,
) -> (Config, Launch, Option<CachedChoice>) {
    let best = measured
        .iter()
        .filter_map(|(name, &us)| Some((resolve(k, t, name)?, us)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let default_us = measured.get(&t.default.name()).copied();
    let Some((c, us)) = best.filter(|_| default_us.is_some()) else {
        return (
            t.default,
            t.launch(t.default, Source::Policy, (None, None)),
            None,
        );
    };
    let source = match timed_now {
        true => Source::Timed,
        false => Source::Cached,
    };
    let complete = t
        .candidates
        .iter()
        .all(|c| measured.contains_key(&c.name()));
    let entry = CachedChoice {
        config: c.name(),
        micros: us,
        default_micros: default_us.unwrap_or(us),
        measured: measured.clone(),
        complete,
    };
    (c, t.launch(c, source, (Some(us), default_us)), Some(entry))
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
    let chosen = t
        .report
        .launches
        .iter()
        .filter(|l| l.source != Source::Policy);
    let n = chosen.count();
    if n > 0 {
        policy.origin = format!("{}, {n} launches tuned", policy.origin);
    }
    Ok((k.with_policy(policy), t.report))
}

/// Every distinct convolution and batch-norm backward launch of the step, with its default
/// and candidates.
fn launches(
    k: &Kernels,
    cfg: &DenseNetConfig,
    batch: u32,
    mode: Mode,
    dtype: DType,
) -> Result<Vec<Todo>> {
    let limits = PlanLimits::of(k.gpu());
    let layout = Layout::new(cfg, limits.align());
    let target = PlanTarget {
        limits,
        dtype,
        policy: k.policy().clone(),
    };
    let plan_nodes = nodes(cfg, &layout, batch, mode, &target)?;
    let convs = plan_nodes.conv_launches().into_iter().map(|(p, dir)| Todo {
        work: Work::Conv(p, dir),
        key: p.launch_key(dir, dtype),
        default: conv_tune::default_config(k, dir, &p, dtype),
        candidates: conv_tune::candidates(k, dir, &p, dtype),
        dtype,
    });
    let bns = plan_nodes
        .bn_backward_launches()?
        .into_iter()
        .map(|p| Todo {
            work: Work::BnBackward(p),
            key: batchnorm::backward_key(&p, dtype),
            default: bn_tune::default_config(k),
            candidates: bn_tune::candidates(k, dtype),
            dtype,
        });
    Ok(convs.chain(bns).collect())
}
