//! Turns a [`DenseNetConfig`] into a [`Plan`]: the memory is planned without the device
//! ([`MemoryPlan`]: nodes, tensors and their lifetimes, slots), then every buffer is allocated
//! and every node's commands created. Each node appends its forward and its backward
//! stages; the step runs the backwards in reverse order (no autodiff).
//!
//! Dense blocks: one activation tensor per block, sized for its final channel count: the
//! stem or transition writes channels [0, c_in), layer i writes its k channels at
//! c_in + i*k in place and reads the prefix before it. No concatenation exists. The block's
//! gradient has the same shape; each layer's backward adds into the prefix. Every BN -> ReLU
//! is applied by the op after it as it loads its input (the convs from (scale, shift)
//! pairs, the pools exactly as batch norm computes it), so no normalized copy is stored.

use crate::error::{Error, Result};
use crate::gpu::{DType, GpuBuffer};
use crate::kernels::Kernels;
use crate::model::buffers::OptimizerState;
use crate::model::buffers::{Buffers, MemoryPlan, Tensors};
use crate::model::cmd::Cmd;
use crate::model::config::DenseNetConfig;
use crate::model::dispatches::{cmds, zero, Bufs};
use crate::model::layout::Layout;
use crate::model::nodes::{Mode, Node, Nodes, PlanLimits, PlanTarget};
use crate::model::plan::{GradMark, Plan, SgdConfig, SgdPart, Training, Update};
use crate::model::steps::node_cmds;
use crate::ops::adam::{self, AdamParams};
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::grad_clip::{self, GradClipParams};
use crate::ops::loss_scale::{self, LossScaleParams, LossScaleState, GROWTH_INTERVAL};
use crate::ops::sgd::{self, SgdInputs, SgdParams};

impl Plan {
    /// A training plan of `cfg` at batch size `batch` (training step and evaluation pass on
    /// the same buffers). Parameters start at zero: write them with [`Plan::write_params`]
    /// (e.g. from [`Layout::init_params`]).
    pub fn train(k: &Kernels, cfg: &DenseNetConfig, batch: u32, opt: SgdConfig) -> Result<Plan> {
        Self::train_in(k, cfg, batch, opt, DType::F32)
    }

    /// As [`Plan::train`] with activations and their gradients stored as `precision` (f32 or
    /// f16). Parameters, their gradients, momentum and statistics stay f32; in f16 the loss
    /// is scaled dynamically ([`crate::ops::loss_scale`]).
    pub fn train_in(
        k: &Kernels,
        cfg: &DenseNetConfig,
        batch: u32,
        opt: SgdConfig,
        precision: DType,
    ) -> Result<Plan> {
        let limits = PlanLimits::of(k.gpu());
        Self::build(k, cfg, batch, Some(opt), limits, precision, None)
    }

    /// As [`Plan::train_in`] for one replica of a data-parallel run whose batch norms are
    /// synchronized across `replicas` ([`Cmd::Sync`] marks where the replicas agree: the
    /// batch statistics after each is computed, the backward's sums before dx). `None`:
    /// per-replica batch norm, a plain training plan.
    pub fn train_replica(
        k: &Kernels,
        cfg: &DenseNetConfig,
        batch: u32,
        opt: SgdConfig,
        precision: DType,
        sync_bn: Option<u32>,
    ) -> Result<Plan> {
        let limits = PlanLimits::of(k.gpu());
        Self::build(k, cfg, batch, Some(opt), limits, precision, sync_bn)
    }

    /// As [`Plan::train`], planning as if no binding could exceed `max_binding` bytes (at
    /// most the adapter's own limit): large tensors are then processed in channel groups.
    /// Tests use it to exercise on any device what small-binding adapters need.
    pub fn train_with_binding_limit(
        k: &Kernels,
        cfg: &DenseNetConfig,
        batch: u32,
        opt: SgdConfig,
        max_binding: u64,
    ) -> Result<Plan> {
        let mut limits = PlanLimits::of(k.gpu());
        limits.max_binding = limits.max_binding.min(max_binding);
        Self::build(k, cfg, batch, Some(opt), limits, DType::F32, None)
    }

    /// An evaluation-only plan: the forward with running statistics and the loss, with no
    /// gradients, batch statistics, optimizer state or backward workspaces.
    pub fn eval(k: &Kernels, cfg: &DenseNetConfig, batch: u32) -> Result<Plan> {
        Self::eval_in(k, cfg, batch, DType::F32)
    }

    /// As [`Plan::eval`] with activations stored as `precision`.
    pub fn eval_in(
        k: &Kernels,
        cfg: &DenseNetConfig,
        batch: u32,
        precision: DType,
    ) -> Result<Plan> {
        Self::build(
            k,
            cfg,
            batch,
            None,
            PlanLimits::of(k.gpu()),
            precision,
            None,
        )
    }

    fn build(
        k: &Kernels,
        cfg: &DenseNetConfig,
        batch: u32,
        opt: Option<SgdConfig>,
        limits: PlanLimits,
        precision: DType,
        sync_bn: Option<u32>,
    ) -> Result<Plan> {
        if !matches!(precision, DType::F32 | DType::F16) {
            return Err(Error::Usage(format!(
                "precision {precision}: activations are stored as f32 or f16"
            )));
        }
        if precision == DType::F16 && !k.gpu().features.contains(wgpu::Features::SHADER_F16) {
            return Err(Error::Device(format!(
                "{} has no SHADER_F16: use --precision f32",
                k.gpu().info.name
            )));
        }
        let gpu = k.gpu();
        let layout = Layout::new(cfg, limits.align());
        let mode = match opt {
            Some(_) => Mode::Train,
            None => Mode::Eval,
        };
        let state = opt.map_or(OptimizerState::None, |o| o.state());
        let target = PlanTarget {
            limits,
            dtype: precision,
            policy: k.policy().clone(),
        };
        let memory = MemoryPlan::new(cfg, &layout, batch, mode, state, &target)?;
        let mut buffers = Buffers::allocate(gpu, &memory.buffers)?;
        if let Some(max) = opt.and_then(|o| o.clip_norm) {
            let p = GradClipParams::new(buffers.params.len as u32, max)?;
            buffers.clip = Some(gpu.zeros("clip", 2)?);
            buffers.clip_partials = Some(gpu.zeros("clip partials", p.partials_len())?);
        }
        gpu.write(&buffers.running_var, &vec![1f32; layout.stats.len as usize])?;
        if let Some(w) = &buffers.pos_weight {
            gpu.write(w, &vec![1f32; cfg.classes as usize])?;
        }
        if let Some(s) = &buffers.loss_scale {
            gpu.write(s, &LossScaleState::initial().to_words())?;
        }
        let tensors = Tensors::allocate(gpu, &memory)?;
        let mut bufs = Bufs::new(k, &layout, &buffers, &tensors, &memory.nodes);
        bufs.sync_bn = sync_bn;
        let (mut eval, mut forward, mut backward) = (Vec::new(), Vec::new(), Vec::new());
        for (i, node) in memory.nodes.list.iter().enumerate() {
            bufs.take_touched();
            let c = node_cmds(&bufs, i, node)?;
            eval.extend(c.forward_eval);
            forward.extend(c.forward_train);
            backward.push((c.backward, bufs.take_touched()));
        }
        let training = opt
            .map(|opt| {
                let head = layout.params.slots[layout.head.weight].offset;
                training(k, (&buffers, &memory), (forward, backward), opt, head)
            })
            .transpose()?;
        Ok(Plan {
            cfg: cfg.clone(),
            batch,
            layout,
            buffers,
            tensors,
            memory,
            eval,
            training,
        })
    }
}

/// A node's backward commands and the gradient elements they write.
type Backward = (Vec<Cmd>, Option<(u64, u64)>);

/// The training step: gradients cleared, the forward, the nodes' backwards in reverse (each
/// end marked with the gradients it wrote), the update.
fn training(
    k: &Kernels,
    (buffers, memory): (&Buffers<GpuBuffer>, &MemoryPlan),
    (forward, backward): (Vec<Cmd>, Vec<Backward>),
    opt: SgdConfig,
    head: u64,
) -> Result<Training> {
    let mut cmds = Vec::new();
    if let Some(g) = &buffers.grads {
        cmds.push(zero(g.view(), g.len));
    }
    cmds.extend(forward);
    let mut grad_marks = Vec::new();
    for (b, touched) in backward.into_iter().rev() {
        cmds.extend(b);
        grad_marks.push(GradMark {
            end: cmds.len(),
            range: touched,
        });
    }
    let update_start = cmds.len();
    let (cmds, sgd) = sgd_step(k, buffers, cmds, opt, head)?;
    let (loss_index, loss) = loss_dispatch(&cmds, &memory.nodes, buffers)?;
    Ok(Training {
        cmds,
        sgd,
        lr: opt.lr,
        features_factor: 1.0,
        step: 1,
        loss_index,
        loss,
        grad_marks,
        update_start,
    })
}

/// Where a training step's loss dispatch is, and the params it was created with.
fn loss_dispatch(
    cmds: &[Cmd],
    nodes: &Nodes,
    b: &Buffers<GpuBuffer>,
) -> Result<(usize, CrossEntropyParams)> {
    let index = cmds
        .iter()
        .position(|c| matches!(c.name(), "softmax_cross_entropy" | "sigmoid_cross_entropy"))
        .ok_or_else(|| Error::Device("plan error: a training step without a loss".into()))?;
    let ce = nodes
        .list
        .iter()
        .find_map(|n| match n {
            Node::Head(h) => Some(h.ce),
            _ => None,
        })
        .ok_or_else(|| Error::Device("plan error: a network without a head".into()))?;
    // As the head's forward built it: scaled where the loss is (training in f16).
    let ce = match b.loss_scale {
        Some(_) => ce.with_loss_scale(),
        None => ce,
    };
    Ok((index, ce))
}

/// Appends the SGD update of every parameter to a step's commands, in two dispatches: the
/// parameters before the classifier's (from element `head`) and the classifier's, so that
/// fine-tuning can give them different rates (elementwise, so the split changes no bit);
/// returns the commands and the two dispatches.
fn sgd_step(
    k: &Kernels,
    b: &Buffers<GpuBuffer>,
    mut step: Vec<Cmd>,
    opt: SgdConfig,
    head: u64,
) -> Result<(Vec<Cmd>, Vec<SgdPart>)> {
    let n = b.params.len as u32;
    let mut p = SgdParams::new(n, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov)?;
    let grads = b.grads.as_ref().expect("a training plan has gradients");
    let velocity = b.velocity.as_ref().map(|v| v.view());
    let scale = b.loss_scale.as_ref().map(|s| s.view());
    // A scaled loss: the gradients are checked for inf and NaN before the update, which
    // then unscales them or skips the step, and the scale follows afterwards.
    let scaling = scale
        .map(|s| Ok::<_, crate::Error>((LossScaleParams::new(n, GROWTH_INTERVAL)?, s)))
        .transpose()?;
    if let Some((lp, s)) = &scaling {
        step.push(Cmd::Run(loss_scale::loss_scale_check(
            k,
            lp,
            grads.view(),
            *s,
        )?));
        p = p.with_loss_scale();
    }
    // Clipping: the global norm and its factor, which the update applies.
    let clip = match (opt.clip_norm, &b.clip, &b.clip_partials) {
        (Some(max), Some(c), Some(parts)) => {
            let mut cp = GradClipParams::new(n, max)?;
            if scale.is_some() {
                cp = cp.with_loss_scale();
            }
            let d = grad_clip::grad_clip(k, &cp, grads.view(), parts.view(), c.view(), scale)?;
            step.extend(cmds(d));
            p = p.with_clip();
            Some(c.view())
        }
        _ => None,
    };
    let adam = opt
        .adam
        .map(|a| {
            let q = AdamParams::new(n, opt.lr, a.betas, a.eps, opt.weight_decay, a.decoupled)?;
            let q = if scaling.is_some() {
                q.with_loss_scale()
            } else {
                q
            };
            Ok::<_, crate::Error>(if clip.is_some() { q.with_clip() } else { q })
        })
        .transpose()?;
    let mut parts = Vec::new();
    for (start, end, features) in [(0, head, true), (head, n as u64, false)] {
        let inputs = SgdInputs {
            scale_state: scale,
            clip,
        };
        let len = end - start;
        let (param, grad) = (
            b.params.view().sub(start, len)?,
            grads.view().sub(start, len)?,
        );
        let (params, d) = match adam {
            Some(a) => {
                let q = AdamParams {
                    count: len as u32,
                    ..a
                };
                let v = velocity.expect("an Adam plan keeps its moments");
                let second = v.len - n as u64;
                let moments = (v.sub(start, len)?, v.sub(second + start, len)?);
                let d = adam::adam_update(k, &q, param, grad, moments, inputs)?;
                (Update::Adam(q), d)
            }
            None => {
                let q = SgdParams {
                    count: len as u32,
                    ..p
                };
                let vel = velocity.map(|v| v.sub(start, len)).transpose()?;
                (
                    Update::Sgd(q),
                    sgd::sgd_update(k, &q, param, grad, vel, inputs)?,
                )
            }
        };
        parts.push(SgdPart {
            index: step.len(),
            params,
            features,
        });
        step.extend(cmds(d));
    }
    if let Some((lp, s)) = &scaling {
        step.push(Cmd::Run(loss_scale::loss_scale_update(k, lp, *s)?));
    }
    Ok((step, parts))
}
