//! Timing a plan: whole training steps by wall clock, and a per-kernel breakdown from GPU
//! timestamp queries (one compute pass per dispatch, timestamps at its ends).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::gpu::Gpu;
use crate::model::plan::{Cmd, Plan};

/// Seconds per training step: `warmup` steps, then the mean over `steps`, waiting for the
/// GPU at the end (the data stays as uploaded: this times the device, not the loader).
pub fn time_train_steps(gpu: &Gpu, plan: &Plan, warmup: u32, steps: u32) -> Result<f64> {
    for _ in 0..warmup {
        plan.submit_train(gpu);
    }
    gpu.wait()?;
    let start = Instant::now();
    for _ in 0..steps {
        plan.submit_train(gpu);
    }
    gpu.wait()?;
    Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
}

/// GPU time of one kernel (summed over its dispatches in one step).
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub name: &'static str,
    pub calls: u32,
    pub seconds: f64,
}

/// Times every dispatch of `cmds` with timestamp queries; per kernel name, slowest first.
pub fn profile(gpu: &Gpu, cmds: &[Cmd]) -> Result<Vec<KernelTime>> {
    if !gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        bail!(
            "{} has no timestamp queries; per-kernel times are unavailable",
            gpu.info.name
        );
    }
    let runs: Vec<&Cmd> = cmds.iter().filter(|c| matches!(c, Cmd::Run(_))).collect();
    let count = (2 * runs.len()) as u32;
    if count > wgpu::QUERY_SET_MAX_QUERIES {
        bail!(
            "{} dispatches are more than one query set can time",
            runs.len()
        );
    }
    let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile"),
        ty: wgpu::QueryType::Timestamp,
        count,
    });
    let bytes = count as u64 * 8;
    let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile resolve"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
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
    let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
    let mut by_name: HashMap<&'static str, (u32, f64)> = HashMap::new();
    for (i, cmd) in runs.iter().enumerate() {
        if let Cmd::Run(d) = cmd {
            let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            let e = by_name.entry(d.name()).or_default();
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
