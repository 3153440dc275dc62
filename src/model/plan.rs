//! The static plan of a DenseNet on one device: every buffer allocated once, every
//! dispatch (with its bind group and params) created once, for a training step and for an
//! evaluation pass. Recording a step walks these lists into one command encoder; nothing
//! is allocated, compiled or read back inside it.

use std::fmt;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer, View};
use crate::kernels::Dispatch;
use crate::model::config::DenseNetConfig;
use crate::model::layout::{Layout, SlotId};

use crate::ops::sgd::SgdParams;

/// One command of a recorded pass.
pub enum Cmd {
    Run(Dispatch),
    /// Zero `size` bytes of a buffer from `offset` (gradients accumulate, so the buffers
    /// they accumulate into start at zero).
    Zero {
        buffer: wgpu::Buffer,
        offset: u64,
        size: u64,
    },
}

impl Cmd {
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Run(d) => d.name(),
            Cmd::Zero { .. } => "clear_buffer",
        }
    }
}

/// Records commands into `enc`: consecutive dispatches share one compute pass, clears sit
/// between passes.
pub fn encode(cmds: &[Cmd], enc: &mut wgpu::CommandEncoder) {
    let mut i = 0;
    while i < cmds.len() {
        match &cmds[i] {
            Cmd::Zero {
                buffer,
                offset,
                size,
            } => {
                enc.clear_buffer(buffer, *offset, Some(*size));
                i += 1;
            }
            Cmd::Run(_) => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("densenet"),
                    timestamp_writes: None,
                });
                while let Some(Cmd::Run(d)) = cmds.get(i) {
                    d.record(&mut pass);
                    i += 1;
                }
            }
        }
    }
}

/// Planned device memory, by what it holds.
#[derive(Clone, Debug, Default)]
pub struct MemoryReport {
    pub rows: Vec<(&'static str, u64)>,
}

impl MemoryReport {
    pub fn add(&mut self, category: &'static str, bytes: u64) {
        match self.rows.iter_mut().find(|(c, _)| *c == category) {
            Some(row) => row.1 += bytes,
            None => self.rows.push((category, bytes)),
        }
    }

    pub fn total(&self) -> u64 {
        self.rows.iter().map(|r| r.1).sum()
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        for (c, b) in &self.rows {
            write!(f, "{c} {:.1} MiB, ", mib(*b))?;
        }
        write!(f, "total {:.1} MiB", mib(self.total()))
    }
}

/// Optimizer settings of a plan (the learning rate may change every step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// A DenseNet on the device: parameters, statistics, activations, and its command lists.
pub struct Plan {
    pub cfg: DenseNetConfig,
    pub batch: u32,
    pub layout: Layout,
    pub params: GpuBuffer,
    pub grads: GpuBuffer,
    pub velocity: GpuBuffer,
    pub batch_mean: GpuBuffer,
    pub batch_var: GpuBuffer,
    pub running_mean: GpuBuffer,
    pub running_var: GpuBuffer,
    /// The batch, (C, N, H, W).
    pub input: GpuBuffer,
    pub labels: GpuBuffer,
    /// (N, classes).
    pub logits: GpuBuffer,
    pub dlogits: GpuBuffer,
    /// Summed loss and correct predictions since the last [`Plan::zero_metrics`].
    pub loss_sum: GpuBuffer,
    pub correct: GpuBuffer,
    /// One activation buffer per dense block, sized for its final channel count.
    pub blocks: Vec<GpuBuffer>,
    /// The blocks' gradients, same shapes.
    pub block_grads: Vec<GpuBuffer>,
    pub(crate) train: Vec<Cmd>,
    pub(crate) eval: Vec<Cmd>,
    pub(crate) sgd: Option<(usize, SgdParams)>,
    pub memory: MemoryReport,
    /// Buffers only the dispatches name (scratch, stem and bottleneck activations); held
    /// here so the plan owns all of its memory.
    pub(crate) internal: Vec<GpuBuffer>,
}

impl Plan {
    /// A view of parameter slot `slot` in `arena` (params, grads or velocity).
    pub fn slot<'a>(&self, arena: &'a GpuBuffer, slot: SlotId) -> View<'a> {
        let s = &self.layout.params.slots[slot];
        arena.slice(s.offset, s.len)
    }

    /// The commands of one training step (forward, loss, backward, SGD).
    pub fn train_commands(&self) -> &[Cmd] {
        &self.train
    }

    /// The commands of one evaluation batch (forward with running statistics, loss).
    pub fn eval_commands(&self) -> &[Cmd] {
        &self.eval
    }

    /// Writes all parameters (arena layout, as [`Layout::init_params`] returns them).
    pub fn write_params(&self, gpu: &Gpu, values: &[f32]) -> Result<()> {
        if values.len() as u64 != self.params.len {
            return Err(Error::shape(
                "params",
                format!(
                    "{} values for an arena of {}",
                    values.len(),
                    self.params.len
                ),
            ));
        }
        gpu.write(&self.params, values);
        Ok(())
    }

    /// Uploads a batch: x (C, N, H, W) and labels (N), padded with IGNORE.
    pub fn upload(&self, gpu: &Gpu, x: &[f32], labels: &[u32]) -> Result<()> {
        if x.len() as u64 != self.input.len || labels.len() as u64 != self.labels.len {
            return Err(Error::shape(
                "batch",
                format!(
                    "got {} input values and {} labels, the plan takes {} and {}",
                    x.len(),
                    labels.len(),
                    self.input.len,
                    self.labels.len
                ),
            ));
        }
        gpu.write(&self.input, x);
        gpu.write(&self.labels, labels);
        Ok(())
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, gpu: &Gpu, lr: f32) {
        if let Some((i, p)) = &mut self.sgd {
            p.lr = lr;
            if let Cmd::Run(d) = &self.train[*i] {
                d.set_params(gpu, p);
            }
        }
    }

    pub fn encode_train(&self, enc: &mut wgpu::CommandEncoder) {
        encode(&self.train, enc);
    }

    pub fn encode_eval(&self, enc: &mut wgpu::CommandEncoder) {
        encode(&self.eval, enc);
    }

    pub fn zero_metrics(&self, enc: &mut wgpu::CommandEncoder) {
        enc.clear_buffer(&self.loss_sum.buffer, 0, None);
        enc.clear_buffer(&self.correct.buffer, 0, None);
    }

    /// Runs one training step on the uploaded batch and returns without waiting.
    pub fn submit_train(&self, gpu: &Gpu) -> wgpu::SubmissionIndex {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train step"),
            });
        self.encode_train(&mut enc);
        gpu.queue.submit([enc.finish()])
    }

    /// Runs the evaluation pass on the uploaded batch and returns without waiting.
    pub fn submit_eval(&self, gpu: &Gpu) -> wgpu::SubmissionIndex {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("eval batch"),
            });
        self.encode_eval(&mut enc);
        gpu.queue.submit([enc.finish()])
    }

    /// Reads (summed loss, correct predictions) since the last zeroing; waits for the GPU.
    pub fn read_metrics(&self, gpu: &Gpu) -> Result<(f64, u64)> {
        let loss: Vec<f32> = gpu.read_all(&self.loss_sum)?;
        let correct: Vec<u32> = gpu.read_all(&self.correct)?;
        Ok((loss[0] as f64, correct[0] as u64))
    }

    /// Clears the loss and accuracy accumulators now.
    pub fn reset_metrics(&self, gpu: &Gpu) {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("zero metrics"),
            });
        self.zero_metrics(&mut enc);
        gpu.queue.submit([enc.finish()]);
    }
}
