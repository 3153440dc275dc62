//! Timing candidate configurations, each trusted only once it earns it: it passes the
//! self-check, its output on seeded non-zero inputs agrees with the launch's baseline (bit
//! for bit for `--tune exact`), then it is timed (a warm-up, repetitions, the median; GPU
//! timestamps where the adapter has them, the wall clock around a wait otherwise).
//!
//! The budget covers all of it: before a candidate's real launch is risked it runs once on a
//! small launch of the same kind (batch 1), and a candidate whose real launch would end past
//! the deadline is not started.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::launches::{Todo, Work};
use super::trust::{Checker, Kind};
use super::TuneMode;
use crate::gpu::{DType, Gpu, Timestamps};
use crate::kernels::{submit, Config, Dispatch, Kernels};
use crate::ops::batchnorm::tune as bn_tune;
use crate::ops::conv2d::tune as conv_tune;
use crate::selfcheck::compare::{compare, identical, Tol};

use super::cache::CachedChoice;

/// What timing found: every launch's entry (this run's measurements added to what earlier
/// runs left), and which launches this run measured.
pub(super) struct Timed {
    pub entries: Vec<(usize, CachedChoice)>,
    pub new: HashSet<usize>,
    pub warnings: Vec<String>,
}

/// How one candidate fared.
enum Attempt {
    /// Median microseconds; whether its output was the baseline's bit for bit.
    Timed(f64, bool),
    Rejected(String),
    /// The deadline would pass before it ended: left for a later run.
    OutOfTime,
}

/// Times what `order` (launch indices into `todos`, with what earlier runs measured) has not
/// measured yet among each launch's candidates for `mode`, baselines first, the launches in
/// order, until `deadline`.
#[allow(clippy::too_many_arguments)]
pub(super) fn time_all(
    k: &Kernels,
    todos: &[Todo],
    baselines: &[Config],
    order: Vec<(usize, CachedChoice)>,
    mode: TuneMode,
    deadline: Option<Instant>,
    checker: &mut Checker<'_>,
    progress: bool,
) -> Result<Timed> {
    let bar = match progress && !order.is_empty() {
        true => indicatif::ProgressBar::new(order.len() as u64),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "tuning {bar:30} {pos}/{len} launches, {elapsed} {msg}",
        )
        .expect("a valid template"),
    );
    let mut timed = Timed {
        entries: Vec::new(),
        new: HashSet::new(),
        warnings: Vec::new(),
    };
    let mut out_of_time = false;
    let overhead = round_trip(k.gpu())?;
    for (i, mut entry) in order {
        let t = &todos[i];
        let baseline = baselines[i];
        let todo: Vec<Config> = t
            .candidates_for(mode, baseline)
            .into_iter()
            .filter(|c| !entry.settled(&c.name()))
            .collect();
        if !out_of_time && !todo.is_empty() {
            bar.set_message(t.key.clone());
            let mut launch = Launch::new(k, t, seed_of(&t.key), overhead)?;
            // The baseline runs first, measured or not: the others are compared with it.
            let mut all = vec![baseline];
            all.extend(todo.into_iter().filter(|&c| c != baseline));
            for c in all {
                let kind = match t.work {
                    Work::Conv(..) => Kind::Conv,
                    Work::BnBackward(_) => Kind::BatchNorm,
                };
                // Checking a candidate compiles it: not started once the budget is spent.
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    out_of_time = true;
                    break;
                }
                if c != baseline && !checker.config_passes(kind, c, t.dtype) {
                    entry
                        .rejected
                        .insert(c.name(), "fails the self-check".into());
                    timed.new.insert(i);
                    continue;
                }
                let known = entry.measured.get(&c.name()).copied();
                let best = entry.measured.values().copied().reduce(f64::min);
                match launch.attempt(k, c, c == baseline, (known, best), deadline)? {
                    Attempt::Timed(us, same) => {
                        entry.measured.insert(c.name(), us);
                        if same {
                            entry.identical.insert(c.name());
                        }
                    }
                    Attempt::Rejected(why) => {
                        let why = format!("{why} ({})", t.key);
                        timed.warnings.push(format!("{} rejected: {why}", c.name()));
                        entry.rejected.insert(c.name(), why);
                    }
                    Attempt::OutOfTime => {
                        out_of_time = true;
                        break;
                    }
                }
                timed.new.insert(i);
            }
        }
        bar.inc(1);
        timed.entries.push((i, entry));
    }
    bar.finish_and_clear();
    Ok(timed)
}

/// A seed from a launch key: the same inputs in every run.
fn seed_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Scratch tensors of a launch's shape.
enum Scratch {
    Conv(conv_tune::Scratch),
    Bn(bn_tune::Scratch),
}

impl Scratch {
    fn new(k: &Kernels, work: &Work, dtype: DType, seed: u64) -> crate::error::Result<Scratch> {
        Ok(match work {
            Work::Conv(p, _) => Scratch::Conv(conv_tune::Scratch::new(k, p, dtype, seed)?),
            Work::BnBackward(p) => Scratch::Bn(bn_tune::Scratch::new(k, p, dtype, seed)?),
        })
    }

    fn dispatches(
        &self,
        k: &Kernels,
        work: &Work,
        c: Config,
    ) -> crate::error::Result<Vec<Dispatch>> {
        match (self, work) {
            (Scratch::Conv(s), Work::Conv(_, dir)) => s.dispatches(k, *dir, c),
            (Scratch::Bn(s), Work::BnBackward(_)) => s.dispatches(k, c),
            _ => unreachable!("scratch tensors are made for the launch they serve"),
        }
    }

    /// Runs `dispatches` once on cleared outputs: the output and the seconds it took.
    fn run_once(
        &self,
        k: &Kernels,
        work: &Work,
        dispatches: &[Dispatch],
    ) -> crate::error::Result<(Vec<f32>, f64)> {
        match (self, work) {
            (Scratch::Conv(s), Work::Conv(_, dir)) => s.clear_output(k, *dir)?,
            (Scratch::Bn(s), _) => s.clear_output(k)?,
            _ => unreachable!("scratch tensors are made for the launch they serve"),
        }
        let t0 = Instant::now();
        submit(k.gpu(), dispatches);
        k.gpu().wait()?;
        let seconds = t0.elapsed().as_secs_f64();
        let out = match (self, work) {
            (Scratch::Conv(s), Work::Conv(_, dir)) => s.output(k, *dir)?,
            (Scratch::Bn(s), _) => s.output(k)?,
            _ => unreachable!("scratch tensors are made for the launch they serve"),
        };
        Ok((out, seconds))
    }
}

/// One launch being tuned: its tensors, its probe's, and the baseline's output.
struct Launch<'t> {
    todo: &'t Todo,
    scratch: Scratch,
    probe: Option<(Work, f64, Scratch)>,
    baseline_out: Option<Vec<f32>>,
    /// Seconds of a submit and wait with nothing to run.
    overhead: f64,
}

/// Seconds of a submit and wait that run nothing (the best of three): what every
/// measurement pays on top of the kernels, so a probe's time is not scaled up with them.
fn round_trip(gpu: &Gpu) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        submit(gpu, &[]);
        gpu.wait()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

impl<'t> Launch<'t> {
    fn new(k: &Kernels, todo: &'t Todo, seed: u64, overhead: f64) -> Result<Launch<'t>> {
        let scratch = Scratch::new(k, &todo.work, todo.dtype, seed)?;
        let probe = match todo.work.probe() {
            Some((w, scale)) => Some((w, scale, Scratch::new(k, &w, todo.dtype, seed)?)),
            None => None,
        };
        Ok(Launch {
            todo,
            scratch,
            probe,
            baseline_out: None,
            overhead,
        })
    }

    /// Tries candidate `c` (the baseline when `is_baseline`; `known`: its time from an
    /// earlier run, `best`: the fastest so far, in microseconds): estimates its time on the
    /// probe, runs it once on cleared outputs and compares them with the baseline's, then
    /// times it.
    fn attempt(
        &mut self,
        k: &Kernels,
        c: Config,
        is_baseline: bool,
        (known, best): (Option<f64>, Option<f64>),
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        let work = &self.todo.work;
        let built = |s: &Scratch, w: &Work| s.dispatches(k, w, c);
        let dispatches = match built(&self.scratch, work) {
            Ok(d) => d,
            Err(e) if !is_baseline => return Ok(Attempt::Rejected(format!("cannot run: {e}"))),
            Err(e) => return Err(e.into()),
        };
        // The estimate: a measurement from an earlier run, else the probe's work scaled up
        // (the better of two runs, the first may compile; less the cost of any submit).
        let estimate = match (known, &self.probe) {
            (Some(us), _) => us * 1e-6,
            (None, Some((w, scale, s))) => {
                let probe = built(s, w)?;
                let t = s.run_once(k, w, &probe)?.1.min(s.run_once(k, w, &probe)?.1);
                (t - self.overhead).max(0.0) * scale + self.overhead
            }
            (None, None) => 0.0,
        };
        // A warm-up and about as long again of repetitions.
        let ends = Instant::now() + Duration::from_secs_f64(2.0 * estimate);
        if deadline.is_some_and(|d| ends >= d) {
            return Ok(Attempt::OutOfTime);
        }
        let (out, warm) = self.scratch.run_once(k, work, &dispatches)?;
        let same = match &self.baseline_out {
            None => {
                self.baseline_out = Some(out);
                true
            }
            Some(base) => {
                if !agrees(&out, base, self.todo) {
                    let a = compare(&out, base, agreement_tol(base, self.todo));
                    let err = crate::selfcheck::fmt_err(a.max_rel_err);
                    return Ok(Attempt::Rejected(format!(
                        "its output differs from the baseline's (relative error {err})"
                    )));
                }
                identical(&out, base)
            }
        };
        // A candidate whose warm-up already takes twice the best has lost: on slow devices
        // the repetitions of losers would be most of the tuning time.
        if best.is_some_and(|b| warm * 1e6 > 2.0 * b) {
            return Ok(Attempt::Timed(warm * 1e6, same));
        }
        let us = repeat_median(k.gpu(), &dispatches, warm)?;
        Ok(Attempt::Timed(us, same))
    }
}

/// The tolerance between two configurations' outputs of `todo`'s launch: the kernel tests'
/// (forward or gradient, f16 storage or operands), its absolute part relative to the
/// output's largest value (sums of thousands of random terms are far from 1).
fn agreement_tol(base: &[f32], todo: &Todo) -> Tol {
    let tol = match todo.work {
        Work::Conv(_, crate::ops::conv2d::Direction::Forward) => Tol::FWD,
        _ => Tol::GRAD,
    };
    let tol = match todo.dtype {
        DType::F16 => tol.max(Tol::F16_OPERANDS).stored_as(DType::F16),
        _ => tol,
    };
    let largest = base.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    Tol::new(tol.atol.max(tol.rtol * largest), tol.rtol)
}

fn agrees(out: &[f32], base: &[f32], todo: &Todo) -> bool {
    compare(out, base, agreement_tol(base, todo)).within
}

/// The median of 1 to 7 repetitions (about 0.1 s) of `dispatches`, whose warm-up took
/// `warm` seconds, in microseconds.
fn repeat_median(gpu: &Gpu, dispatches: &[Dispatch], warm: f64) -> Result<f64> {
    let reps = ((0.1 / warm.max(1e-9)) as usize).clamp(1, 7);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        times.push(once(gpu, dispatches)?);
    }
    times.sort_by(f64::total_cmp);
    let median = (times[(reps - 1) / 2] + times[reps / 2]) / 2.0;
    Ok(median * 1e6)
}

/// Seconds of one run of `dispatches`: between timestamps written at the start and end of
/// their compute pass, or the wall clock around submit and wait without timestamp queries.
fn once(gpu: &Gpu, dispatches: &[Dispatch]) -> Result<f64> {
    if !gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        let t0 = Instant::now();
        submit(gpu, dispatches);
        gpu.wait()?;
        return Ok(t0.elapsed().as_secs_f64());
    }
    let stamps = Timestamps::new(gpu, "tune", 2)?;
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("tune"),
            timestamp_writes: Some(stamps.around_pass(0)),
        });
        for d in dispatches {
            d.record(&mut pass);
        }
    }
    let ticks = stamps.submit_and_read(gpu, enc)?;
    Ok(ticks[1].saturating_sub(ticks[0]) as f64 * Timestamps::period(gpu))
}
