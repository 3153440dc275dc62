//! Per-kernel GPU times of a step from timestamp queries: one compute pass per dispatch,
//! timestamps at its ends, summed per kernel with the kernels' cost model.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::gpu::{Gpu, Timestamps};
use crate::model::plan::Cmd;

/// GPU time of one kernel (summed over its dispatches in one step), and what those
/// dispatches compute and move.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    /// `entry[variant,dtype]`.
    pub name: String,
    pub calls: u32,
    pub seconds: f64,
    pub flops: u64,
    pub bytes: u64,
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
    let period = Timestamps::period(gpu);
    let mut by_name: HashMap<String, KernelTime> = HashMap::new();
    for (i, cmd) in runs.iter().enumerate() {
        if let Cmd::Run(d) = cmd {
            let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            let name = d.kernel().label();
            let e = by_name.entry(name.clone()).or_insert(KernelTime {
                name,
                calls: 0,
                seconds: 0.0,
                flops: 0,
                bytes: 0,
            });
            e.calls += 1;
            e.seconds += dt;
            e.flops += d.cost.flops;
            e.bytes += d.cost.bytes;
        }
    }
    let mut out: Vec<KernelTime> = by_name.into_values().collect();
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(out)
}

/// Runs `cmds` once, each of its `dispatches` in a compute pass of its own with timestamps
/// at both ends; returns the ticks (begin, end per dispatch).
pub(super) fn timestamps(gpu: &Gpu, cmds: &[Cmd], dispatches: usize) -> Result<Vec<u64>> {
    let stamps = Timestamps::new(gpu, "profile", (2 * dispatches) as u32)?;
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    let mut q = 0;
    for cmd in cmds {
        match cmd {
            Cmd::Zero {
                buffer,
                offset,
                size,
            } => enc.clear_buffer(buffer, *offset, Some(*size)),
            Cmd::Sync(_) => {}
            Cmd::Run(d) => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.name()),
                    timestamp_writes: Some(stamps.around_pass(q)),
                });
                d.record(&mut pass);
                q += 2;
            }
        }
    }
    Ok(stamps.submit_and_read(gpu, enc)?)
}
