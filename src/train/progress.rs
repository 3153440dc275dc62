//! What a run shows while it trains: a progress bar, fed by the step metrics read back every
//! few steps through a staging buffer, without waiting for the device.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::gpu::Gpu;
use crate::model::Plan;

/// The accumulated (loss, correct) of the epoch so far, copied back asynchronously.
pub(super) struct Probe {
    staging: wgpu::Buffer,
    ready: Arc<AtomicBool>,
    pending: bool,
}

impl Probe {
    pub(super) fn new(gpu: &Gpu) -> Probe {
        Probe {
            staging: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("progress readback"),
                size: 8,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            ready: Arc::new(false.into()),
            pending: false,
        }
    }

    /// Queues a copy of the accumulated (loss, correct) unless one is still on its way.
    pub(super) fn request(&mut self, gpu: &Gpu, plan: &Plan) {
        if self.pending {
            return;
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let b = &plan.buffers;
        enc.copy_buffer_to_buffer(&b.loss_sum.buffer, 0, &self.staging, 0, 4);
        enc.copy_buffer_to_buffer(&b.correct.buffer, 0, &self.staging, 4, 4);
        gpu.queue.submit([enc.finish()]);
        let ready = self.ready.clone();
        self.staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                if r.is_ok() {
                    ready.store(true, Ordering::Release);
                }
            });
        self.pending = true;
    }

    /// The latest (loss sum, correct) if a copy has landed.
    pub(super) fn take(&mut self, gpu: &Gpu) -> Option<(f64, u64)> {
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        if !self.pending || !self.ready.swap(false, Ordering::Acquire) {
            return None;
        }
        let v = {
            let data = self.staging.get_mapped_range(..).ok()?;
            let loss = f32::from_le_bytes(data[0..4].try_into().ok()?) as f64;
            let correct = u32::from_le_bytes(data[4..8].try_into().ok()?) as u64;
            (loss, correct)
        };
        self.staging.unmap();
        self.pending = false;
        Some(v)
    }
}

/// An epoch's bar (hidden when `progress` is off).
pub(super) fn bar(progress: bool, len: u64, prefix: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(prefix);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
