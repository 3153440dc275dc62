//! Timing a plan (`densenet-wgpu bench`): whole training steps by wall clock, and a
//! per-kernel breakdown from GPU timestamp queries (one compute pass per dispatch,
//! timestamps at its ends), each kernel named with its variant and element type.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::data::DatasetKind;
use crate::gpu::Gpu;
use crate::kernels::Kernels;
use crate::model::plan::{Cmd, Plan};
use crate::recipe::Preset;

/// What `densenet-wgpu bench` times.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub preset: Preset,
    /// Whose image shape and classes to use (no files are read).
    pub dataset: DatasetKind,
    pub batch_size: Option<u32>,
    /// Timed steps, after two warm-up steps.
    pub steps: u32,
    /// Also time every kernel of one step.
    pub profile: bool,
}

/// Times training steps of a preset's network on random data; returns the report.
pub fn bench(k: &Kernels, a: &BenchArgs) -> Result<String> {
    let gpu = k.gpu();
    let cfg = a
        .preset
        .config(a.dataset, a.dataset.class_names().len() as u32);
    let recipe = a.preset.recipe();
    let batch = a.batch_size.unwrap_or(recipe.batch_size);
    let plan = Plan::train(k, &cfg, batch, recipe.sgd())?;
    plan.write_params(gpu, &plan.layout.init_params(cfg.init, 0))?;
    let mut rng = fastrand::Rng::with_seed(0);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(gpu, &x, &labels)?;
    let secs = time_train_steps(gpu, &plan, 2, a.steps)?;
    let dispatches = plan
        .train_commands()
        .iter()
        .filter(|c| matches!(c, Cmd::Run(_)))
        .count();
    let mut out = format!(
        "{} on {} ({:?}), batch {batch}: {:.2} ms per training step, {:.0} images/s, \
         {dispatches} dispatches per step; kernels {}; memory: {}\n",
        a.preset.name(),
        gpu.info.name,
        gpu.info.backend,
        secs * 1e3,
        batch as f64 / secs,
        k.policy().origin,
        plan.memory.report
    );
    if a.profile {
        let times = profile(gpu, plan.train_commands())?;
        let total: f64 = times.iter().map(|t| t.seconds).sum();
        let _ = writeln!(
            out,
            "{:<48} {:>6} {:>10} {:>6}",
            "kernel", "calls", "ms", "%"
        );
        for t in &times {
            let share = 100.0 * t.seconds / total;
            let ms = t.seconds * 1e3;
            let _ = writeln!(
                out,
                "{:<48} {:>6} {:>10.3} {share:>5.1}%",
                t.name, t.calls, ms
            );
        }
        let _ = writeln!(
            out,
            "{:<48} {:>6} {:>10.3}",
            "sum of kernels",
            "",
            total * 1e3
        );
    }
    Ok(out)
}

/// Seconds per training step: `warmup` steps, then the mean over `steps`, waiting for the
/// GPU at the end (the data stays as uploaded: this times the device, not the loader).
pub fn time_train_steps(gpu: &Gpu, plan: &Plan, warmup: u32, steps: u32) -> Result<f64> {
    for _ in 0..warmup {
        plan.submit_train(gpu)?;
    }
    gpu.wait()?;
    let start = Instant::now();
    for _ in 0..steps {
        plan.submit_train(gpu)?;
    }
    gpu.wait()?;
    Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
}

/// GPU time of one kernel (summed over its dispatches in one step).
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// `entry[variant,dtype]`.
    pub name: String,
    pub calls: u32,
    pub seconds: f64,
}

/// Times every dispatch of `cmds` with timestamp queries; per kernel, slowest first.
pub fn profile(gpu: &Gpu, cmds: &[Cmd]) -> Result<Vec<KernelTime>> {
    if !gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        bail!(
            "{} has no timestamp queries; per-kernel times are unavailable",
            gpu.info.name
        );
    }
    let runs: Vec<&Cmd> = cmds.iter().filter(|c| matches!(c, Cmd::Run(_))).collect();
    let ticks = timestamps(gpu, cmds, runs.len())?;
    let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
    let mut by_name: HashMap<String, (u32, f64)> = HashMap::new();
    for (i, cmd) in runs.iter().enumerate() {
        if let Cmd::Run(d) = cmd {
            let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            let e = by_name.entry(d.kernel().label()).or_default();
            e.0 += 1;
            e.1 += dt;
        }
    }
    let mut out: Vec<KernelTime> = by_name
        .into_iter()
        .map(|(name, (calls, seconds))| KernelTime {
            name,
            calls,
            seconds,
        })
        .collect();
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(out)
}

/// Runs `cmds` once, each of its `dispatches` in a compute pass of its own with timestamps
/// at both ends; returns the ticks (begin, end per dispatch).
fn timestamps(gpu: &Gpu, cmds: &[Cmd], dispatches: usize) -> Result<Vec<u64>> {
    let count = (2 * dispatches) as u32;
    if count > wgpu::QUERY_SET_MAX_QUERIES {
        bail!("{dispatches} dispatches are more than one query set can time");
    }
    let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile"),
        ty: wgpu::QueryType::Timestamp,
        count,
    });
    let bytes = count as u64 * 8;
    let buffer = |label, usage| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    use wgpu::BufferUsages as U;
    let resolve = buffer("profile resolve", U::QUERY_RESOLVE | U::COPY_SRC);
    let staging = buffer("profile readback", U::MAP_READ | U::COPY_DST);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    let mut q = 0;
    for cmd in cmds {
        match cmd {
            Cmd::Zero {
                buffer,
                offset,
                size,
            } => enc.clear_buffer(buffer, *offset, Some(*size)),
            Cmd::Run(d) => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.name()),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(q),
                        end_of_pass_write_index: Some(q + 1),
                    }),
                });
                d.record(&mut pass);
                q += 2;
            }
        }
    }
    enc.resolve_query_set(&queries, 0..count, &resolve, 0);
    enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
    gpu.queue.submit([enc.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv().context("timestamp readback")??;
    let ticks: Vec<u64> = bytemuck::cast_slice(&staging.get_mapped_range(..)?).to_vec();
    staging.unmap();
    Ok(ticks)
}
