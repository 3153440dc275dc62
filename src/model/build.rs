//! Turns a [`DenseNetConfig`] into a [`Plan`]. The network becomes a list of nodes (stem,
//! dense layers, transitions, head) whose op params are computed once; the nodes first say
//! how much scratch they need, then, with every buffer allocated, create the dispatches of
//! the training step and of the evaluation pass. Each node appends its forward and returns
//! its backward; the step runs the backwards in reverse order (no autodiff).
//!
//! Buffers (channel-major, N = batch):
//! - one activation buffer per dense block, sized for its final channel count: the stem or
//!   transition writes channels [0, c_in), layer i writes its k channels at c_in + i*k in
//!   place and reads the prefix before it. No concatenation exists. The block's gradient
//!   buffer has the same shape; each layer's backward adds into the prefix.
//! - the scratch the nodes share ([`super::nodes`]); each dense layer's BN -> ReLU is applied
//!   by its conv while loading, so no layer stores a normalized copy of its input.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer};
use crate::model::config::DenseNetConfig;
use crate::model::dispatches::{cmds, zero, Bufs};
use crate::model::layout::Layout;
use crate::model::nodes::nodes;
use crate::model::plan::{MemoryReport, Plan, SgdConfig};
use crate::ops::sgd::{self, SgdParams};

impl Plan {
    /// Allocates every buffer of `cfg` at batch size `batch` and creates the dispatches of
    /// the training step and of the evaluation pass. Parameters start at zero: write them
    /// with [`Plan::write_params`] (e.g. from [`Layout::init_params`]).
    pub fn new(gpu: &Gpu, cfg: &DenseNetConfig, batch: u32, opt: SgdConfig) -> Result<Plan> {
        let limit = gpu.limits.max_storage_buffer_binding_size;
        Self::with_binding_limit(gpu, cfg, batch, opt, limit)
    }

    /// As [`Plan::new`], planning as if no binding could exceed `max_binding` bytes (at most
    /// the adapter's own limit): large tensors are then processed in channel groups. Tests
    /// use it to exercise on any device what small-binding adapters need.
    pub fn with_binding_limit(
        gpu: &Gpu,
        cfg: &DenseNetConfig,
        batch: u32,
        opt: SgdConfig,
        max_binding: u64,
    ) -> Result<Plan> {
        let max_binding = max_binding.min(gpu.limits.max_storage_buffer_binding_size);
        cfg.validate()?;
        if batch < 2 {
            return Err(Error::shape(
                "batch",
                format!("batch size {batch}: training-mode batch norm needs at least 2"),
            ));
        }
        let align = (gpu.limits.min_storage_buffer_offset_alignment as u64 / 4).max(1);
        let layout = Layout::new(cfg, align);
        let nodes = nodes(gpu, cfg, &layout, batch, max_binding)?;
        let scratch = nodes.scratch();
        let mut memory = MemoryReport::default();
        let mut alloc = |category: &'static str, label: &str, len: u64| -> Result<GpuBuffer> {
            let b = gpu.zeros(label, len)?;
            memory.add(category, b.bytes());
            Ok(b)
        };
        let plen = layout.params.len;
        let params = alloc("parameters", "params", plen)?;
        let grads = alloc("parameters", "grads", plen)?;
        let velocity = alloc(
            "parameters",
            "velocity",
            if opt.momentum > 0.0 { plen } else { 1 },
        )?;
        let slen = layout.stats.len;
        let batch_mean = alloc("batch-norm statistics", "batch mean", slen)?;
        let batch_var = alloc("batch-norm statistics", "batch var", slen)?;
        let running_mean = alloc("batch-norm statistics", "running mean", slen)?;
        let running_var = alloc("batch-norm statistics", "running var", slen)?;
        gpu.write(&running_var, &vec![1f32; slen as usize]);
        let n = batch as u64;
        let size = cfg.image_size as u64;
        let input = alloc("input", "input", cfg.in_channels as u64 * n * size * size)?;
        let labels = alloc("input", "labels", n)?;
        let classes = cfg.classes as u64;
        let logits = alloc("activations", "logits", n * classes)?;
        let dlogits = alloc("gradients", "dlogits", n * classes)?;
        let loss_sum = alloc("metrics", "loss sum", 1)?;
        let correct = alloc("metrics", "correct", 1)?;
        let head_c = cfg.head_channels() as u64;
        let feat = alloc("activations", "features", head_c * n)?;
        let dfeat = alloc("gradients", "feature grads", head_c * n)?;
        let mut blocks = Vec::new();
        let mut block_grads = Vec::new();
        let mut bottlenecks = Vec::new();
        for (i, b) in layout.blocks.iter().enumerate() {
            let len = b.shape.c_out as u64 * n * b.shape.size as u64 * b.shape.size as u64;
            blocks.push(alloc("activations", &format!("block {i}"), len)?);
            block_grads.push(alloc("gradients", &format!("block {i} grads"), len)?);
            bottlenecks.push(match cfg.bottleneck {
                Some(w) => {
                    let c = (w * cfg.growth_rate * b.shape.layers) as u64;
                    let len = c * n * b.shape.size as u64 * b.shape.size as u64;
                    Some((
                        alloc("activations", &format!("block {i} bottlenecks"), len)?,
                        alloc("gradients", &format!("block {i} bottleneck grads"), len)?,
                    ))
                }
                None => None,
            });
        }
        let stem = match nodes.stem.imagenet {
            Some(_) => {
                let p = &nodes.stem.p;
                let plane = p.y_len() / p.c_out as u64;
                let s = alloc(
                    "activations",
                    "stem conv output",
                    nodes.stem.channels as u64 * plane,
                )?;
                let pool_plane = {
                    let b0 = &layout.blocks[0].shape;
                    n * b0.size as u64 * b0.size as u64
                };
                let am = alloc(
                    "activations",
                    "stem max-pool argmax",
                    nodes.stem.channels as u64 * pool_plane,
                )?;
                Some((s, am))
            }
            None => None,
        };
        let t = alloc("scratch", "scratch t", scratch.t)?;
        let d = alloc("scratch", "scratch d", scratch.d)?;
        let e = alloc("scratch", "scratch e", scratch.e)?;
        let workspace = alloc("scratch", "conv workspace", scratch.workspace)?;
        let partials = alloc("scratch", "weight-gradient partial sums", scratch.partials)?;
        let affine = alloc(
            "batch-norm statistics",
            "fused BN scale and shift",
            nodes.affine_len,
        )?;

        let bufs = Bufs {
            gpu,
            layout: &layout,
            params: &params,
            grads: &grads,
            mean: &batch_mean,
            var: &batch_var,
            running_mean: &running_mean,
            running_var: &running_var,
            input: &input,
            blocks: &blocks,
            block_grads: &block_grads,
            bottlenecks: &bottlenecks,
            stem: stem.as_ref(),
            t: &t,
            d: &d,
            e: &e,
            workspace: &workspace,
            partials: &partials,
            affine: &affine,
        };
        let mut parts = vec![bufs.stem(&nodes.stem, &nodes.first_stats)?];
        let mut transitions = nodes.transitions.iter();
        let mut block = 0;
        for layer in &nodes.layers {
            if layer.block != block {
                let tr = transitions.next().expect("a transition between blocks");
                parts.push(bufs.transition(tr)?);
                block = layer.block;
            }
            parts.push(bufs.layer(layer)?);
        }
        parts.push(bufs.head(
            &nodes.head,
            &feat,
            &dfeat,
            &logits,
            &dlogits,
            &labels,
            &loss_sum,
            &correct,
        )?);

        // The step: clear what backward accumulates into, forward, backward in reverse, SGD.
        let mut train = vec![zero(&grads, grads.len), zero(&dlogits, dlogits.len)];
        for g in block_grads
            .iter()
            .chain(bottlenecks.iter().flatten().map(|(_, g)| g))
        {
            train.push(zero(g, g.len));
        }
        let mut eval = Vec::new();
        let mut backward = Vec::new();
        for part in parts {
            train.extend(part.train);
            eval.extend(part.eval);
            backward.push(part.backward);
        }
        train.extend(backward.into_iter().rev().flatten());
        let sgd_params = SgdParams::new(
            plen as u32,
            opt.lr,
            opt.momentum,
            opt.weight_decay,
            opt.nesterov,
        )?;
        let vel = (opt.momentum > 0.0).then(|| velocity.view());
        let sgd_index = train.len();
        train.extend(cmds(sgd::sgd_update(
            gpu,
            &sgd_params,
            params.view(),
            grads.view(),
            vel,
        )?));

        let mut plan = Plan {
            cfg: cfg.clone(),
            batch,
            layout,
            params,
            grads,
            velocity,
            batch_mean,
            batch_var,
            running_mean,
            running_var,
            input,
            labels,
            logits,
            dlogits,
            loss_sum,
            correct,
            blocks,
            block_grads,
            train,
            eval,
            sgd: Some((sgd_index, sgd_params)),
            memory,
            internal: Vec::new(),
        };
        plan.internal = vec![feat, dfeat, t, d, e, workspace, partials, affine];
        plan.internal
            .extend(stem.into_iter().flat_map(|(a, b)| [a, b]));
        plan.internal
            .extend(bottlenecks.into_iter().flatten().flat_map(|(a, b)| [a, b]));
        Ok(plan)
    }
}
