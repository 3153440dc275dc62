//! Timing candidate configurations: warm-up, repetitions, median; GPU timestamps where the
//! adapter has them, the wall clock around a wait otherwise.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Todo, Work};
use crate::gpu::{DType, Gpu, Timestamps};
use crate::kernels::Config;
use crate::kernels::{submit, Dispatch, Kernels};
use crate::ops::batchnorm::tune as bn_tune;
use crate::ops::conv2d::tune as conv_tune;

/// What timing found: every launch's measured candidates (name -> median microseconds,
/// earlier runs' included), which launches this run measured, and candidates that could
/// not run.
pub(super) struct Timed {
    pub measured: Vec<(usize, BTreeMap<String, f64>)>,
    pub new: HashSet<usize>,
    pub warnings: Vec<String>,
}

/// Times the candidates of the launches `order` (indices into `todos`, with what earlier
/// runs measured of them) that are not measured yet, in that order, the default first,
/// until `deadline`: a candidate is not started when it would likely end after it (its
/// launch's default took as long).
pub(super) fn time_all(
    k: &Kernels,
    todos: &[Todo],
    order: &[(usize, BTreeMap<String, f64>)],
    deadline: Option<Instant>,
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
        measured: order.to_vec(),
        new: HashSet::new(),
        warnings: Vec::new(),
    };
    let out_of_time = |est_us: f64| {
        deadline.is_some_and(|d| Instant::now() + Duration::from_secs_f64(est_us * 1e-6) >= d)
    };
    // Launches of one conv share its scratch tensors (they come in order of cost, so a
    // conv's directions are usually neighbours).
    let mut scratch: Option<(usize, Scratch)> = None;
    'launches: for (slot, (i, _)) in order.iter().enumerate() {
        let t = &todos[*i];
        let measured = &mut timed.measured[slot].1;
        bar.set_message(t.key.clone());
        for &c in &t.candidates {
            let name = c.name();
            if measured.contains_key(&name) {
                continue;
            }
            let estimate = measured.get(&t.default.name()).copied().unwrap_or(0.0);
            if out_of_time(2.0 * estimate) {
                break 'launches;
            }
            if !scratch
                .as_ref()
                .is_some_and(|(j, _)| same_tensors(&todos[*j].work, &t.work))
            {
                drop(scratch.take()); // free the last launch's tensors first
                scratch = Some((*i, Scratch::new(k, &t.work, t.dtype)?));
            }
            let s = &scratch.as_ref().expect("just made").1;
            let dispatches = match s.dispatches(k, &t.work, c) {
                Ok(d) => d,
                Err(e) if c != t.default => {
                    timed.warnings.push(format!("{name} for {}: {e}", t.key));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let best = measured.values().copied().reduce(f64::min);
            measured.insert(name, median_micros(k.gpu(), &dispatches, best)?);
            timed.new.insert(*i);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(timed)
}

/// Scratch tensors of a launch's shape.
enum Scratch {
    Conv(conv_tune::Scratch),
    Bn(bn_tune::Scratch),
}

impl Scratch {
    fn new(k: &Kernels, work: &Work, dtype: DType) -> crate::error::Result<Scratch> {
        Ok(match work {
            Work::Conv(p, _) => Scratch::Conv(conv_tune::Scratch::new(k, p, dtype)?),
            Work::BnBackward(p) => Scratch::Bn(bn_tune::Scratch::new(k, p, dtype)?),
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
}

/// Whether two launches can share scratch tensors: one conv's three directions can.
fn same_tensors(a: &Work, b: &Work) -> bool {
    match (a, b) {
        (Work::Conv(p, _), Work::Conv(q, _)) => p == q,
        _ => a == b,
    }
}

/// Runs `dispatches` once to warm up, then 1 to 7 more times (about 0.1 s), and
/// returns the median time in microseconds. A candidate whose warm-up already takes twice
/// the `best` so far (microseconds) is not repeated: it has lost, and on slow devices the
/// repetitions of losers are most of the tuning time.
fn median_micros(gpu: &Gpu, dispatches: &[Dispatch], best: Option<f64>) -> Result<f64> {
    let t0 = Instant::now();
    submit(gpu, dispatches);
    gpu.wait()?;
    let warm = t0.elapsed().as_secs_f64();
    if best.is_some_and(|b| warm * 1e6 > 2.0 * b) {
        return Ok(warm * 1e6);
    }
    // About 0.1 s of repetitions: 7 of a fast launch, 1 of a slow one.
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
