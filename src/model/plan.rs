//! The static plan of a DenseNet on one device: every buffer allocated once, every dispatch
//! (with its bind group and params) created once, for a training step and for an evaluation
//! pass, or for the evaluation pass alone. Recording a step walks these lists into one
//! command encoder; nothing is allocated, compiled or read back inside it.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer, View};
use crate::model::buffers::{Buffers, MemoryPlan, Tensors};
use crate::model::config::DenseNetConfig;
use crate::model::layout::{Layout, SlotId};
use crate::model::nodes::Mode;
use crate::ops::adam::AdamParams;
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::loss_scale::LossScaleState;
use crate::ops::sgd::SgdParams;

pub use super::cmd::{encode, Cmd, Sync};

/// Optimizer settings of a training plan (the learning rate may change every step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// Clip the gradients to this global L2 norm first (`torch.nn.utils.clip_grad_norm_`).
    pub clip_norm: Option<f32>,
    /// Adam or AdamW instead of SGD (momentum and Nesterov then unused).
    pub adam: Option<AdamConfig>,
}

/// Adam's settings (torch.optim.Adam / AdamW, amsgrad off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub betas: (f32, f32),
    pub eps: f32,
    /// AdamW: weight decay applied to the parameters, not added to the gradients.
    pub decoupled: bool,
}

impl SgdConfig {
    /// What the optimizer keeps per parameter.
    pub fn state(&self) -> crate::model::buffers::OptimizerState {
        use crate::model::buffers::OptimizerState as S;
        match (self.adam, self.momentum > 0.0) {
            (Some(_), _) => S::Adam,
            (None, true) => S::Momentum,
            (None, false) => S::None,
        }
    }
}

/// The update of one optimizer dispatch.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Update {
    Sgd(SgdParams),
    Adam(AdamParams),
}

/// One SGD dispatch of a step: over the features' parameters (everything before the
/// classifier) or over the classifier's, each with its own rate.
pub(crate) struct SgdPart {
    /// Index of the dispatch in `cmds`, and its params (rewritten for a new rate).
    pub(crate) index: usize,
    pub(crate) params: Update,
    pub(crate) features: bool,
}

/// What only a training plan has: the step's commands and its SGD dispatches.
pub(crate) struct Training {
    pub(crate) cmds: Vec<Cmd>,
    pub(crate) sgd: Vec<SgdPart>,
    /// The base rate, and the factor on the features' rate (`--lr-features`; 0 freezes
    /// them: `--freeze-features`).
    pub(crate) lr: f32,
    pub(crate) features_factor: f32,
    /// The optimizer step the next update is (1-based; Adam's bias corrections).
    pub(crate) step: u64,
    /// Index of the loss dispatch in `cmds`, and its params (rewritten for label smoothing).
    pub(crate) loss_index: usize,
    pub(crate) loss: CrossEntropyParams,
    /// Where each node's backward ends, in step order, and the gradients it wrote.
    pub(crate) grad_marks: Vec<GradMark>,
    /// Index of the first command of the update (after every gradient is written).
    pub(crate) update_start: usize,
}

/// The end of one node's backward in a step's commands: after command `end - 1` no later
/// command writes the gradient elements `range` (none for a node without parameters)
/// before the update, so a data-parallel step may reduce them from there on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradMark {
    pub end: usize,
    pub range: Option<(u64, u64)>,
}

impl Training {
    fn write_rates(&mut self, gpu: &Gpu) {
        for part in &mut self.sgd {
            let lr = match part.features {
                true => self.lr * self.features_factor,
                false => self.lr,
            };
            let Cmd::Run(d) = &self.cmds[part.index] else {
                continue;
            };
            match &mut part.params {
                Update::Sgd(p) => {
                    p.lr = lr;
                    d.set_params(gpu, p);
                }
                Update::Adam(p) => {
                    *p = AdamParams { lr, ..*p }.at_step(self.step);
                    d.set_params(gpu, p);
                }
            }
        }
    }
}

/// A DenseNet on the device: its buffers and its command lists.
pub struct Plan {
    pub cfg: DenseNetConfig,
    pub batch: u32,
    pub layout: Layout,
    /// The buffers that live across steps, by name.
    pub buffers: Buffers<GpuBuffer>,
    /// Activations, their gradients and workspaces, shared by lifetime.
    pub tensors: Tensors,
    /// What was planned: tensors, lifetimes, slots, bytes by category.
    pub memory: MemoryPlan,
    pub(crate) eval: Vec<Cmd>,
    pub(crate) training: Option<Training>,
}

impl Plan {
    pub fn mode(&self) -> Mode {
        self.memory.mode
    }

    /// A view of parameter slot `slot` in an arena laid out as the parameters (params,
    /// grads or velocity).
    pub fn slot<'a>(&self, arena: &'a GpuBuffer, slot: SlotId) -> View<'a> {
        let s = &self.layout.params.slots[slot];
        arena.slice(s.offset, s.len)
    }

    /// The per-step tensor called `name` (e.g. `blocks.0`), as a view of its slot.
    pub fn tensor(&self, name: &str) -> Option<View<'_>> {
        self.tensors.find(name).map(|id| self.tensors.view(id))
    }

    /// The commands of one training step (forward, loss, backward, SGD); empty for an
    /// evaluation plan.
    pub fn train_commands(&self) -> &[Cmd] {
        self.training.as_ref().map_or(&[], |t| &t.cmds)
    }

    /// The step's gradient marks (one per node, in backward order) and the index of the
    /// update's first command: where a data-parallel step cuts the step.
    pub fn grad_marks(&self) -> (&[GradMark], usize) {
        self.training
            .as_ref()
            .map_or((&[], 0), |t| (&t.grad_marks, t.update_start))
    }

    /// The commands of one evaluation batch (forward with running statistics, loss).
    pub fn eval_commands(&self) -> &[Cmd] {
        &self.eval
    }

    /// Writes all parameters (arena layout, as [`Layout::init_params`] returns them).
    pub fn write_params(&self, gpu: &Gpu, values: &[f32]) -> Result<()> {
        if values.len() as u64 != self.buffers.params.len {
            return Err(Error::shape(
                "params",
                format!(
                    "{} values for an arena of {}",
                    values.len(),
                    self.buffers.params.len
                ),
            ));
        }
        gpu.write(&self.buffers.params, values)
    }

    /// Uploads a batch: x (C, N, H, W; converted to the plan's precision) and labels (N),
    /// padded with IGNORE.
    pub fn upload(&self, gpu: &Gpu, x: &[f32], labels: &[u32]) -> Result<()> {
        let (input, lab) = (&self.buffers.input, &self.buffers.labels);
        if x.len() as u64 != input.len || labels.len() as u64 != lab.len {
            return Err(Error::shape(
                "batch",
                format!(
                    "got {} input values and {} labels, the plan takes {} and {}",
                    x.len(),
                    labels.len(),
                    input.len,
                    lab.len
                ),
            ));
        }
        gpu.write_floats(input, x)?;
        gpu.write(lab, labels)
    }

    /// Sets the learning rate of the next steps (no effect on an evaluation plan).
    pub fn set_lr(&mut self, gpu: &Gpu, lr: f32) {
        if let Some(t) = &mut self.training {
            t.lr = lr;
            t.write_rates(gpu);
        }
    }

    /// Sets which optimizer step the next update is (1-based; `step` steps done + 1): Adam's
    /// bias corrections depend on it. Takes effect with the next [`Plan::set_lr`].
    pub fn set_step(&mut self, step: u64) {
        if let Some(t) = &mut self.training {
            t.step = step.max(1);
        }
    }

    /// Scales the rate of every parameter before the classifier by `factor` from the next
    /// step (fine-tuning: 0 freezes the features, 0.1 trains them ten times slower); the
    /// classifier keeps the base rate. No effect on an evaluation plan.
    pub fn set_features_lr_factor(&mut self, gpu: &Gpu, factor: f32) {
        if let Some(t) = &mut self.training {
            t.features_factor = factor;
            t.write_rates(gpu);
        }
    }

    /// Trains against (1 - e) onehot + e / classes from now on (label smoothing `e` in
    /// [0, 1); the evaluation loss stays plain). No effect on an evaluation plan.
    pub fn set_label_smoothing(&mut self, gpu: &Gpu, e: f32) -> Result<()> {
        if self.cfg.multi_label && e != 0.0 {
            return Err(Error::Usage(
                "label smoothing is for one label per example; a multi-label run has none".into(),
            ));
        }
        if let Some(t) = &mut self.training {
            t.loss = t.loss.with_smoothing(e)?;
            if let Cmd::Run(d) = &t.cmds[t.loss_index] {
                d.set_params(gpu, &t.loss);
            }
        }
        Ok(())
    }

    pub fn encode_train(&self, enc: &mut wgpu::CommandEncoder) {
        encode(self.train_commands(), enc);
    }

    pub fn encode_eval(&self, enc: &mut wgpu::CommandEncoder) {
        encode(&self.eval, enc);
    }

    pub fn zero_metrics(&self, enc: &mut wgpu::CommandEncoder) {
        enc.clear_buffer(&self.buffers.loss_sum.buffer, 0, None);
        enc.clear_buffer(&self.buffers.correct.buffer, 0, None);
    }

    /// Runs one training step on the uploaded batch and returns without waiting.
    pub fn submit_train(&self, gpu: &Gpu) -> Result<wgpu::SubmissionIndex> {
        if self.training.is_none() {
            return Err(Error::Device(
                "an evaluation plan has no training step; build one with Plan::train".into(),
            ));
        }
        Ok(self.submit(gpu, "train step", Self::encode_train))
    }

    /// Runs the evaluation pass on the uploaded batch and returns without waiting.
    pub fn submit_eval(&self, gpu: &Gpu) -> wgpu::SubmissionIndex {
        self.submit(gpu, "eval batch", Self::encode_eval)
    }

    fn submit(
        &self,
        gpu: &Gpu,
        label: &str,
        record: fn(&Self, &mut wgpu::CommandEncoder),
    ) -> wgpu::SubmissionIndex {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        record(self, &mut enc);
        gpu.queue.submit([enc.finish()])
    }

    /// The logits of the last batch (N, K), as f32 whatever the plan's precision.
    pub async fn read_logits_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read_floats_async(&self.buffers.logits).await
    }

    /// [`Plan::read_logits_async`], waiting for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_logits(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        pollster::block_on(self.read_logits_async(gpu))
    }

    /// The activations' element type: f32, or f16 (`--precision f16`).
    pub fn precision(&self) -> crate::gpu::DType {
        self.memory.dtype
    }

    /// The dynamic loss scale's state (training in f16 only).
    pub async fn read_loss_scale_async(&self, gpu: &Gpu) -> Result<Option<LossScaleState>> {
        let Some(s) = &self.buffers.loss_scale else {
            return Ok(None);
        };
        let words: Vec<u32> = gpu.read_all_async(s).await?;
        Ok(Some(LossScaleState::from_words(&words)))
    }

    /// [`Plan::read_loss_scale_async`], waiting for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_loss_scale(&self, gpu: &Gpu) -> Result<Option<LossScaleState>> {
        pollster::block_on(self.read_loss_scale_async(gpu))
    }

    /// Restores the loss scale (a resumed run continues with the scale it had).
    pub fn write_loss_scale(&self, gpu: &Gpu, state: LossScaleState) -> Result<()> {
        match &self.buffers.loss_scale {
            Some(s) => gpu.write(s, &state.to_words()),
            None => Ok(()),
        }
    }

    /// Reads (summed loss, correct predictions) since the last zeroing.
    pub async fn read_metrics_async(&self, gpu: &Gpu) -> Result<(f64, u64)> {
        let loss: Vec<f32> = gpu.read_all_async(&self.buffers.loss_sum).await?;
        let correct: Vec<u32> = gpu.read_all_async(&self.buffers.correct).await?;
        Ok((loss[0] as f64, correct[0] as u64))
    }

    /// [`Plan::read_metrics_async`], waiting for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_metrics(&self, gpu: &Gpu) -> Result<(f64, u64)> {
        pollster::block_on(self.read_metrics_async(gpu))
    }

    /// Clears the loss and accuracy accumulators now.
    pub fn reset_metrics(&self, gpu: &Gpu) {
        self.submit(gpu, "zero metrics", Self::zero_metrics);
    }

    /// Multi-label: the weight of each label's positives in the loss (`--pos-weight auto`:
    /// negatives / positives in the training set, as CheXNet weights its loss).
    pub fn set_pos_weight(&self, gpu: &Gpu, weights: &[f32]) -> Result<()> {
        match &self.buffers.pos_weight {
            Some(w) => gpu.write(w, weights),
            None => Err(Error::Usage(
                "positive weights are for multi-label networks".into(),
            )),
        }
    }

    /// Fills every shared tensor slot with `value` (tests: a stage that reads a tensor
    /// before writing it then shows).
    pub fn fill_tensors(&self, gpu: &Gpu, value: f32) {
        for slot in &self.tensors.slots {
            let words = vec![value.to_bits(); slot.len as usize];
            gpu.queue
                .write_buffer(&slot.buffer, 0, bytemuck::cast_slice(&words));
        }
    }
}
