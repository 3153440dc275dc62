//! The adapter's own ceilings, measured with the roofline micro-kernels: multiply-add
//! throughput and streaming bandwidth. A kernel's floor is then the larger of its flops over
//! the first and its bytes over the second; its share of the ceiling is floor / time.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::profile::timestamps;
use crate::kernels::{DeviceClass, Dispatch, Kernels};
use crate::model::plan::Cmd;
use crate::ops::roofline;

/// Measured peaks.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ceilings {
    /// Multiply-adds (2 flops each) per second, f32.
    pub flops_per_s: f64,
    /// Bytes per second, reading one buffer and writing another.
    pub bytes_per_s: f64,
}

impl Ceilings {
    /// Seconds the roofline allows for `flops` and `bytes`: the larger of the two limits.
    pub fn floor(&self, flops: u64, bytes: u64) -> f64 {
        (flops as f64 / self.flops_per_s).max(bytes as f64 / self.bytes_per_s)
    }
}

/// Runs each micro-kernel a few times and keeps its best rate. Sizes suit the device class:
/// long enough to time on a large GPU, short enough for a CPU driver.
pub fn measure(k: &Kernels) -> Result<Ceilings> {
    let gpu = k.gpu();
    let (fma_count, iters, stream_count) = match k.policy().class {
        DeviceClass::Gpu => (1u32 << 20, 2048u32, 1u64 << 24),
        DeviceClass::Cpu => (1 << 14, 256, 1 << 20),
    };
    let max_vec4 = gpu.limits.max_storage_buffer_binding_size / 16;
    let stream_count = stream_count.min(max_vec4) as u32;
    let out = gpu.zeros("roofline out", 4 * fma_count.max(stream_count) as u64)?;
    let src = gpu.zeros("roofline src", 4 * stream_count as u64)?;
    let fma = roofline::roofline_fma(k, fma_count, iters, out.view())?;
    let stream = roofline::roofline_stream(k, stream_count, src.view(), out.view())?;
    let (flops, bytes) = (fma.cost.flops, stream.cost.bytes);
    Ok(Ceilings {
        flops_per_s: flops as f64 / best_seconds(k, fma, 3)?,
        bytes_per_s: bytes as f64 / best_seconds(k, stream, 3)?,
    })
}

/// The shortest of `reps` runs of `d`: GPU timestamps where the adapter has them, else the
/// wall clock around a wait.
fn best_seconds(k: &Kernels, d: Dispatch, reps: usize) -> Result<f64> {
    let gpu = k.gpu();
    let cmds = vec![Cmd::Run(d)];
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let s = match gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            true => {
                let t = timestamps(gpu, &cmds, 1)?;
                t[1].saturating_sub(t[0]) as f64 * gpu.queue.get_timestamp_period() as f64 * 1e-9
            }
            false => {
                let start = Instant::now();
                let Cmd::Run(d) = &cmds[0] else {
                    unreachable!()
                };
                crate::kernels::submit(gpu, std::slice::from_ref(d));
                gpu.wait()?;
                start.elapsed().as_secs_f64()
            }
        };
        best = best.min(s.max(1e-9));
    }
    Ok(best)
}
