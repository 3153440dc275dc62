//! Every buffer of a plan, named and shape-commented in one struct (llm.c's
//! `ActivationTensors`): first as specs computed from the network and the batch size
//! ([`MemoryPlan`], no device needed), then allocated ([`Buffers<GpuBuffer>`] and
//! [`Tensors`]).
//!
//! Dimension letters: P parameters (the layout's arena), S normalized channels (the
//! statistics arena), A the fused BN (scale, shift) pairs, N batch, C/H/W the input image,
//! K classes.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuBuffer, View};
use crate::model::config::DenseNetConfig;
use crate::model::graph::nodes;
use crate::model::layout::Layout;
use crate::model::memory::{
    place, BufferSpec, Category, MemoryReport, Placement, TensorId, TensorSpec,
};
use crate::model::nodes::{Mode, Nodes, PlanTarget};
use crate::ops::{batchnorm, loss_scale};

/// The buffers that live across steps.
#[derive(Debug, Serialize)]
pub struct Buffers<B> {
    /// (P) weights, biases, BN scales and shifts.
    pub params: B,
    /// (P) their gradients (training).
    pub grads: Option<B>,
    /// (P) SGD momentum (training with momentum > 0); Adam's two moments, the second from
    /// the first aligned element after P (training with Adam or AdamW).
    pub velocity: Option<B>,
    /// (S) batch mean and biased variance of every normalized channel (training).
    pub batch_mean: Option<B>,
    pub batch_var: Option<B>,
    /// (2 x chunks) partial sums of the batch-norm statistics and backward, where the
    /// implementation splits channels into chunks (training on GPUs).
    pub bn_partials: Option<B>,
    /// (S) running mean and unbiased variance.
    pub running_mean: B,
    pub running_var: B,
    /// (A, 2) (scale, shift) of every BN a conv applies to its input as it loads it.
    pub affine: B,
    /// (C, N, H, W) the batch, channel-major.
    pub input: B,
    /// (N) u32 labels, IGNORE for padding; multi-label: (N, K) u32 targets (0 or 1), a row
    /// starting with IGNORE for padding.
    pub labels: B,
    /// (K) the weight of each label's positives (multi-label only; 1: unweighted).
    pub pos_weight: Option<B>,
    /// (N, K) logits of the last batch.
    pub logits: B,
    /// (1) summed loss and (1) u32 correct predictions since the last zeroing.
    pub loss_sum: B,
    pub correct: B,
    /// (4) u32 dynamic loss-scale state (training in f16; see `ops::loss_scale`).
    pub loss_scale: Option<B>,
    /// (2) [norm, factor] of gradient clipping, and its partial sums (training with a norm
    /// limit; see `ops::grad_clip`).
    pub clip: Option<B>,
    pub clip_partials: Option<B>,
}

impl<B> Buffers<B> {
    /// Every buffer, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = &B> {
        [
            Some(&self.params),
            self.grads.as_ref(),
            self.velocity.as_ref(),
            self.batch_mean.as_ref(),
            self.batch_var.as_ref(),
            self.bn_partials.as_ref(),
            Some(&self.running_mean),
            Some(&self.running_var),
            Some(&self.affine),
            Some(&self.input),
            Some(&self.labels),
            Some(&self.logits),
            Some(&self.loss_sum),
            Some(&self.correct),
            self.loss_scale.as_ref(),
            self.pos_weight.as_ref(),
            self.clip.as_ref(),
            self.clip_partials.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// The same struct with `f` applied to every buffer.
    pub fn map<C>(&self, mut f: impl FnMut(&B) -> Result<C>) -> Result<Buffers<C>> {
        let mut opt = |b: &Option<B>| b.as_ref().map(&mut f).transpose();
        Ok(Buffers {
            grads: opt(&self.grads)?,
            velocity: opt(&self.velocity)?,
            batch_mean: opt(&self.batch_mean)?,
            batch_var: opt(&self.batch_var)?,
            bn_partials: opt(&self.bn_partials)?,
            loss_scale: opt(&self.loss_scale)?,
            pos_weight: opt(&self.pos_weight)?,
            clip: opt(&self.clip)?,
            clip_partials: opt(&self.clip_partials)?,
            params: f(&self.params)?,
            running_mean: f(&self.running_mean)?,
            running_var: f(&self.running_var)?,
            affine: f(&self.affine)?,
            input: f(&self.input)?,
            labels: f(&self.labels)?,
            logits: f(&self.logits)?,
            loss_sum: f(&self.loss_sum)?,
            correct: f(&self.correct)?,
        })
    }
}

/// A plan's memory, computed from the network, batch and mode alone.
pub struct MemoryPlan {
    pub mode: Mode,
    pub batch: u32,
    pub dtype: DType,
    pub buffers: Buffers<BufferSpec>,
    pub nodes: Nodes,
    pub placement: Placement,
    pub report: MemoryReport,
}

impl MemoryPlan {
    /// The memory of `cfg` at batch `batch` for `mode` (`state`: what the optimizer keeps;
    /// `true` for SGD's momentum), for `target`'s limits, activation type (parameters and
    /// statistics stay f32) and kernel policy.
    pub fn new(
        cfg: &DenseNetConfig,
        layout: &Layout,
        batch: u32,
        mode: Mode,
        state: impl Into<OptimizerState>,
        target: &PlanTarget,
    ) -> Result<MemoryPlan> {
        let state = state.into();
        let dtype = target.dtype;
        cfg.validate()?;
        if mode == Mode::Train && batch < 2 {
            return Err(Error::shape(
                "batch",
                format!("batch size {batch}: training-mode batch norm needs at least 2"),
            ));
        }
        if batch == 0 {
            return Err(Error::shape("batch", "batch size 0"));
        }
        let nodes = nodes(cfg, layout, batch, mode, target)?;
        let bn_partials = match mode {
            Mode::Train => batchnorm::partials_bound(layout.stats.len as u32),
            Mode::Eval => 0,
        };
        let sizes = (nodes.affine_len, bn_partials);
        let align = target.limits.align();
        let buffers = buffer_specs(cfg, layout, batch, mode, (state, align), sizes, dtype);
        let placement = place(&nodes.tensors.specs);
        let mut report = MemoryReport::default();
        for b in buffers.iter() {
            report.add(b.category, b.bytes());
        }
        // A slot's bytes go to the category of its largest tensor.
        for (slot, &bytes) in placement.slot_bytes.iter().enumerate() {
            let owner = nodes
                .tensors
                .specs
                .iter()
                .zip(&placement.slot_of)
                .filter(|(_, &s)| s == slot)
                .max_by_key(|(t, _)| t.spec.bytes())
                .map(|(t, _)| t.spec.category);
            report.add(owner.unwrap_or(Category::Scratch), bytes);
        }
        Ok(MemoryPlan {
            mode,
            batch,
            dtype,
            buffers,
            nodes,
            placement,
            report,
        })
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.nodes.tensors.specs
    }

    /// Bytes the per-step tensors would take without sharing.
    pub fn unshared_bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.spec.bytes()).sum()
    }
}

/// What the optimizer of a training plan keeps per parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerState {
    /// Plain SGD: nothing.
    None,
    /// SGD with momentum: a velocity.
    Momentum,
    /// Adam and AdamW: two moments.
    Adam,
}

impl From<bool> for OptimizerState {
    /// `true`: SGD's momentum.
    fn from(momentum: bool) -> Self {
        match momentum {
            true => OptimizerState::Momentum,
            false => OptimizerState::None,
        }
    }
}

/// The buffers of a plan: `state` keeps a velocity or two moments (`align`: elements the
/// second starts on a multiple of); `(affine, bn partials)` elements of
/// the fused-BN pairs and of the batch-norm partial sums (0: none).
fn buffer_specs(
    cfg: &DenseNetConfig,
    layout: &Layout,
    n: u32,
    mode: Mode,
    (state, align): (OptimizerState, u64),
    (affine_len, bn_partials): (u64, u64),
    dtype: DType,
) -> Buffers<BufferSpec> {
    let spec = |name: &str, shape: &[u64], dtype, category| BufferSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
        dtype,
        category,
    };
    let (p, s) = (layout.params.len, layout.stats.len);
    let (n, k) = (n as u64, cfg.classes as u64);
    let size = cfg.image_size as u64;
    let train = mode == Mode::Train;
    use Category::*;
    Buffers {
        params: spec("params", &[p], DType::F32, Parameters),
        grads: train.then(|| spec("grads", &[p], DType::F32, Parameters)),
        velocity: match (train, state) {
            (true, OptimizerState::Momentum) => {
                Some(spec("velocity", &[p], DType::F32, Parameters))
            }
            (true, OptimizerState::Adam) => {
                let second = p.next_multiple_of(align.max(1));
                Some(spec("moments", &[second + p], DType::F32, Parameters))
            }
            _ => None,
        },
        batch_mean: train.then(|| spec("batch_mean", &[s], DType::F32, Statistics)),
        batch_var: train.then(|| spec("batch_var", &[s], DType::F32, Statistics)),
        bn_partials: (bn_partials > 0)
            .then(|| spec("bn_partials", &[bn_partials], DType::F32, Statistics)),
        running_mean: spec("running_mean", &[s], DType::F32, Statistics),
        running_var: spec("running_var", &[s], DType::F32, Statistics),
        affine: spec("affine", &[affine_len.max(1)], DType::F32, Statistics),
        input: spec(
            "input",
            &[cfg.in_channels as u64, n, size, size],
            dtype,
            Input,
        ),
        labels: match cfg.multi_label {
            true => spec("labels", &[n, k], DType::U32, Input),
            false => spec("labels", &[n], DType::U32, Input),
        },
        pos_weight: cfg
            .multi_label
            .then(|| spec("pos_weight", &[k], DType::F32, Statistics)),
        logits: spec("logits", &[n, k], dtype, Outputs),
        loss_sum: spec("loss_sum", &[1], DType::F32, Outputs),
        correct: spec("correct", &[1], DType::U32, Outputs),
        loss_scale: (train && dtype == DType::F16).then(|| {
            spec(
                "loss_scale",
                &[loss_scale::STATE_LEN],
                DType::U32,
                Statistics,
            )
        }),
        // A few KiB, allocated by the training plan where it clips (the optimizer's choice).
        clip: None,
        clip_partials: None,
    }
}

/// The per-step tensors of a plan on a device: shared slot buffers and where each tensor is.
pub struct Tensors {
    pub specs: Vec<TensorSpec>,
    pub placement: Placement,
    pub slots: Vec<GpuBuffer>,
}

impl Tensors {
    pub fn allocate(gpu: &Gpu, plan: &MemoryPlan) -> Result<Tensors> {
        let slots = plan
            .placement
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| gpu.zeros_of(&format!("tensor slot {i}"), DType::U32, bytes / 4))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensors {
            specs: plan.tensors().to_vec(),
            placement: plan.placement.clone(),
            slots,
        })
    }

    /// Tensor `id` as a view of its slot.
    pub fn view(&self, id: TensorId) -> View<'_> {
        let spec = &self.specs[id].spec;
        View {
            buffer: &self.slots[self.placement.slot_of[id]].buffer,
            offset: 0,
            len: spec.elems(),
            dtype: spec.dtype,
        }
    }

    /// The id of the tensor called `name`.
    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.specs.iter().position(|t| t.spec.name == name)
    }
}

impl Buffers<GpuBuffer> {
    pub fn allocate(gpu: &Gpu, specs: &Buffers<BufferSpec>) -> Result<Buffers<GpuBuffer>> {
        specs.map(|s| gpu.zeros_of(&s.name, s.dtype, s.elems()))
    }
}
