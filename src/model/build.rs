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
//! - scratch `t` (a BN -> ReLU output, recomputed in backward rather than kept, so memory
//!   stays linear in depth), `d` (the gradient of a conv input), `e` (a pooled transition
//!   input, or the stem's output gradient) and the weight-gradient workspace, shared by all.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer, View};
use crate::kernels::Dispatch;
use crate::model::config::{DenseNetConfig, Stem};
use crate::model::layout::{BnSlots, ConvSlots, Layout, SlotId};
use crate::model::plan::{Cmd, MemoryReport, Plan, SgdConfig};
use crate::ops::avgpool;
use crate::ops::batchnorm::{self, BatchNormParams};
use crate::ops::conv2d::{self, Conv2dParams};
use crate::ops::cross_entropy::{self, CrossEntropyParams};
use crate::ops::global_avgpool::{self, GlobalAvgPoolParams};
use crate::ops::linear::{self, LinearParams};
use crate::ops::maxpool::{self, Pool2dParams};
use crate::ops::sgd::{self, SgdParams};

/// Elements the shared scratch buffers must hold.
#[derive(Default, Clone, Copy)]
struct Scratch {
    t: u64,
    d: u64,
    e: u64,
    workspace: u64,
    partials: u64,
}

impl Scratch {
    fn conv(&mut self, p: &Conv2dParams) {
        self.workspace = self.workspace.max(p.workspace_len());
        self.partials = self.partials.max(p.partials_len());
    }
}

/// Statistics of channels [c0, c0 + c) of a block buffer, computed when they are written.
fn stats_params(n: u32, size: u32, c0: u32, c: u32, stat: u32) -> Result<BatchNormParams> {
    Ok(BatchNormParams::new([n, c, size, size])?
        .with_x_channel_offset(c0)
        .with_stat_offset(stat + c0))
}

/// BN -> ReLU over channels [0, c) of a block buffer.
fn bn_relu_params(n: u32, size: u32, c: u32, stat: u32) -> Result<BatchNormParams> {
    Ok(BatchNormParams::new([n, c, size, size])?
        .with_stat_offset(stat)
        .with_relu(true))
}

// ---------------------------------------------------------------------------------------
// nodes

struct StemNode {
    conv: ConvSlots,
    /// The ImageNet stem: BN slots, statistics slot, max-pool, and the output channel
    /// groups (more than one when the conv output exceeds the adapter's binding limit).
    imagenet: Option<(BnSlots, SlotId, u32)>,
    /// Conv of one channel group (all channels when there is one group).
    p: Conv2dParams,
    channels: u32,
}

/// DenseNet-BC's 1x1 conv (into the block's bottleneck buffer) and the BN after it.
struct BottleneckNode {
    conv: Conv2dParams,
    conv_slots: ConvSlots,
    bn: BatchNormParams,
    bn_slots: BnSlots,
    /// Where bn's (scale, shift) pairs live in the affine buffer.
    affine: u64,
}

struct LayerNode {
    block: usize,
    bn: BatchNormParams,
    bn_slots: BnSlots,
    /// Where bn's (scale, shift) pairs live in the affine buffer.
    affine: u64,
    bottleneck: Option<BottleneckNode>,
    /// Reads its input through the BN -> ReLU before it (fused).
    conv: Conv2dParams,
    conv_slots: ConvSlots,
    /// Statistics of the k new channels.
    new_stats: BatchNormParams,
}

struct TransitionNode {
    from: usize,
    bn: BatchNormParams,
    bn_slots: BnSlots,
    pool: Pool2dParams,
    conv: Conv2dParams,
    conv_slots: ConvSlots,
    next_stats: BatchNormParams,
}

struct HeadNode {
    bn: BatchNormParams,
    bn_slots: BnSlots,
    gap: GlobalAvgPoolParams,
    linear: LinearParams,
    weight: SlotId,
    bias: SlotId,
    ce: CrossEntropyParams,
}

struct Nodes {
    stem: StemNode,
    /// Elements of the buffer of fused BN (scale, shift) pairs.
    affine_len: u64,
    first_stats: BatchNormParams,
    layers: Vec<LayerNode>,
    transitions: Vec<TransitionNode>,
    head: HeadNode,
}

/// Channels per group of the ImageNet stem: all of them, unless its conv output exceeds the
/// adapter's binding limit (d2l at batch 256 on a 128 MiB-binding adapter); then groups of
/// channels small enough, each bound as its own aligned range of the buffer.
fn stem_group_channels(gpu: &Gpu, full: &Conv2dParams, limit: u64) -> Result<u32> {
    let limit = limit.max(1);
    let c = full.c_out;
    let groups = (full.y_len() * 4).div_ceil(limit);
    if groups <= 1 {
        return Ok(c);
    }
    let align = (gpu.limits.min_storage_buffer_offset_alignment as u64 / 4).max(1);
    let plane = full.y_len() / c as u64;
    let per = (c as u64).div_ceil(groups).next_multiple_of(align);
    let pooled = plane / 4;
    let aligned =
        plane % align == 0 && pooled % align == 0 && full.c_in as u64 * 49 * per % align == 0;
    if !aligned || per * plane * 4 > limit {
        return Err(Error::Limit {
            what: format!("the stem's conv output ({c} x {plane} values)"),
            needed: full.y_len() * 4,
            limit,
            hint: "use a smaller batch size (--batch-size)",
        });
    }
    Ok(per as u32)
}

fn nodes(
    gpu: &Gpu,
    cfg: &DenseNetConfig,
    layout: &Layout,
    n: u32,
    max_binding: u64,
) -> Result<Nodes> {
    let bias = cfg.conv_bias;
    let size = cfg.image_size;
    let c0 = cfg.stem.channels();
    let stat = |slot: SlotId| layout.stats.slots[slot].offset as u32;
    let stem = match cfg.stem {
        Stem::ImageNet { .. } => {
            let full = Conv2dParams::new(
                [n, cfg.in_channels, size, size],
                c0,
                (7, 7),
                (2, 2),
                (3, 3),
                bias,
            )?;
            let per = stem_group_channels(gpu, &full, max_binding)?;
            let (bn, stats) = layout.stem.bn.expect("ImageNet stem has a BN");
            StemNode {
                conv: layout.stem.conv,
                imagenet: Some((bn, stats, per)),
                p: Conv2dParams::new(
                    [n, cfg.in_channels, size, size],
                    per,
                    (7, 7),
                    (2, 2),
                    (3, 3),
                    bias,
                )?,
                channels: c0,
            }
        }
        Stem::Cifar { .. } => StemNode {
            conv: layout.stem.conv,
            imagenet: None,
            p: Conv2dParams::new(
                [n, cfg.in_channels, size, size],
                c0,
                (3, 3),
                (1, 1),
                (1, 1),
                bias,
            )?,
            channels: c0,
        },
    };
    let b0 = &layout.blocks[0];
    let first_stats = stats_params(n, b0.shape.size, 0, b0.shape.c_in, stat(b0.stats))?;
    let k = cfg.growth_rate;
    // Each fused BN's (scale, shift) pairs get an aligned slot, so they bind as a view.
    let align = (gpu.limits.min_storage_buffer_offset_alignment as u64 / 4).max(1);
    let mut affine_len = 0u64;
    let affine_slot = |len: &mut u64, c: u32| -> u64 {
        let at = len.next_multiple_of(align);
        *len = at + 2 * c as u64;
        at
    };
    let mut layers = Vec::new();
    let mut transitions = Vec::new();
    for (bi, block) in layout.blocks.iter().enumerate() {
        let s = block.shape.size;
        let st = stat(block.stats);
        for (li, l) in block.layers.iter().enumerate() {
            let bn = bn_relu_params(n, s, l.c_in, st)?;
            let affine = affine_slot(&mut affine_len, l.c_in);
            let bottleneck = match l.bottleneck {
                Some(bt) => {
                    let w = bt.width;
                    let conv =
                        Conv2dParams::new([n, l.c_in, s, s], w, (1, 1), (1, 1), (0, 0), bias)?
                            .with_y_channel_offset(li as u32 * w)
                            .with_input_bn_relu();
                    let bn = BatchNormParams::new([n, w, s, s])?
                        .with_x_channel_offset(li as u32 * w)
                        .with_stat_offset(stat(bt.stats))
                        .with_relu(true);
                    Some(BottleneckNode {
                        conv,
                        conv_slots: bt.conv,
                        bn,
                        bn_slots: bt.bn,
                        affine: affine_slot(&mut affine_len, w),
                    })
                }
                None => None,
            };
            // The 3x3 conv reads the block's prefix, or the layer's bottleneck channels.
            let conv = match l.bottleneck {
                Some(bt) => {
                    Conv2dParams::new([n, bt.width, s, s], k, (3, 3), (1, 1), (1, 1), bias)?
                        .with_x_channel_offset(li as u32 * bt.width)
                }
                None => Conv2dParams::new([n, l.c_in, s, s], k, (3, 3), (1, 1), (1, 1), bias)?,
            }
            .with_y_channel_offset(l.c_in)
            .with_input_bn_relu();
            layers.push(LayerNode {
                block: bi,
                bn,
                bn_slots: l.bn,
                affine,
                bottleneck,
                conv,
                conv_slots: l.conv,
                new_stats: stats_params(n, s, l.c_in, k, st)?,
            });
        }
        if let Some(tr) = layout.transitions.get(bi) {
            let next = &layout.blocks[bi + 1];
            let half = next.shape.size;
            transitions.push(TransitionNode {
                from: bi,
                bn: bn_relu_params(n, s, tr.c_in, st)?,
                bn_slots: tr.bn,
                pool: Pool2dParams::new([n, tr.c_in, s, s], (2, 2), (2, 2), (0, 0))?,
                // Pool first, then the 1x1 conv: both are linear per pixel, so the order
                // does not change the result, and the conv runs on a quarter of the pixels.
                conv: Conv2dParams::new(
                    [n, tr.c_in, half, half],
                    tr.c_out,
                    (1, 1),
                    (1, 1),
                    (0, 0),
                    bias,
                )?,
                conv_slots: tr.conv,
                next_stats: stats_params(n, half, 0, tr.c_out, stat(next.stats))?,
            });
        }
    }
    let last = layout.blocks.last().expect("at least one block");
    let (s, c) = (last.shape.size, last.shape.c_out);
    let head = HeadNode {
        bn: bn_relu_params(n, s, c, stat(last.stats))?,
        bn_slots: layout.head.bn,
        gap: GlobalAvgPoolParams::new([n, c, s, s])?,
        linear: LinearParams::new(n, c, cfg.classes, true)?,
        weight: layout.head.weight,
        bias: layout.head.bias,
        ce: CrossEntropyParams::new(n, cfg.classes)?,
    };
    Ok(Nodes {
        stem,
        affine_len,
        first_stats,
        layers,
        transitions,
        head,
    })
}

impl Nodes {
    fn scratch(&self) -> Scratch {
        let mut s = Scratch::default();
        let st = &self.stem;
        s.conv(&st.p);
        if st.imagenet.is_some() {
            s.t = s.t.max(st.p.y_len());
            s.e = s.e.max(st.p.y_len());
        }
        for l in &self.layers {
            s.d = s.d.max(l.bn.len());
            s.conv(&l.conv);
            if let Some(bt) = &l.bottleneck {
                s.d = s.d.max(bt.bn.len());
                s.conv(&bt.conv);
            }
        }
        for tr in &self.transitions {
            s.t = s.t.max(tr.bn.len());
            s.e = s.e.max(tr.pool.y_len());
            s.d = s.d.max(tr.pool.y_len());
            s.conv(&tr.conv);
        }
        s.t = s.t.max(self.head.bn.len());
        s
    }
}

// ---------------------------------------------------------------------------------------
// dispatches

/// The buffers every node reads and writes.
struct Bufs<'a> {
    gpu: &'a Gpu,
    layout: &'a Layout,
    params: &'a GpuBuffer,
    grads: &'a GpuBuffer,
    mean: &'a GpuBuffer,
    var: &'a GpuBuffer,
    running_mean: &'a GpuBuffer,
    running_var: &'a GpuBuffer,
    input: &'a GpuBuffer,
    blocks: &'a [GpuBuffer],
    block_grads: &'a [GpuBuffer],
    bottlenecks: &'a [Option<(GpuBuffer, GpuBuffer)>],
    stem: Option<&'a (GpuBuffer, GpuBuffer)>,
    t: &'a GpuBuffer,
    d: &'a GpuBuffer,
    e: &'a GpuBuffer,
    workspace: &'a GpuBuffer,
    partials: &'a GpuBuffer,
    affine: &'a GpuBuffer,
}

/// Gamma, beta and their gradients for channels [c0, c0 + c) of a batch norm.
struct BnViews<'a> {
    gamma: View<'a>,
    beta: View<'a>,
    dgamma: View<'a>,
    dbeta: View<'a>,
}

/// A node's commands: its forward for training and for evaluation, and its backward.
#[derive(Default)]
struct Lists {
    train: Vec<Cmd>,
    eval: Vec<Cmd>,
    backward: Vec<Cmd>,
}

fn cmds(d: Vec<Dispatch>) -> impl Iterator<Item = Cmd> {
    d.into_iter().map(Cmd::Run)
}

fn zero(buf: &GpuBuffer, elems: u64) -> Cmd {
    Cmd::Zero {
        buffer: buf.buffer.clone(),
        offset: 0,
        size: elems * 4,
    }
}

impl<'a> Bufs<'a> {
    /// Elements [start, start + len) of parameter slot `slot` in `arena`.
    fn sub(&self, arena: &'a GpuBuffer, slot: SlotId, start: u64, len: u64) -> View<'a> {
        arena.slice(self.layout.params.slots[slot].offset + start, len)
    }

    fn whole(&self, arena: &'a GpuBuffer, slot: SlotId) -> View<'a> {
        self.sub(arena, slot, 0, self.layout.params.slots[slot].len)
    }

    fn bn(&self, s: BnSlots, c0: u32, c: u32) -> BnViews<'a> {
        let (c0, c) = (c0 as u64, c as u64);
        BnViews {
            gamma: self.sub(self.params, s.gamma, c0, c),
            beta: self.sub(self.params, s.beta, c0, c),
            dgamma: self.sub(self.grads, s.gamma, c0, c),
            dbeta: self.sub(self.grads, s.beta, c0, c),
        }
    }

    fn bn_all(&self, s: BnSlots) -> BnViews<'a> {
        let c = self.layout.params.slots[s.gamma].len as u32;
        self.bn(s, 0, c)
    }

    /// Batch statistics of the channels `p` covers in `x`, and the running update.
    fn stats(&self, p: &BatchNormParams, x: View<'a>) -> Result<Vec<Cmd>> {
        let (mean, var) = (self.mean.view(), self.var.view());
        let mut out: Vec<Cmd> =
            cmds(batchnorm::batchnorm_stats(self.gpu, p, x, mean, var)?).collect();
        let (rm, rv) = (self.running_mean.view(), self.running_var.view());
        out.extend(cmds(batchnorm::batchnorm_update_running(
            self.gpu, p, mean, var, rm, rv,
        )?));
        Ok(out)
    }

    /// BN -> ReLU of `x` into scratch t, with batch (train) or running (eval) statistics.
    fn bn_relu(
        &self,
        p: &BatchNormParams,
        x: View<'a>,
        bn: &BnViews<'a>,
        eval: bool,
    ) -> Result<Vec<Cmd>> {
        let (mean, var) = match eval {
            true => (self.running_mean.view(), self.running_var.view()),
            false => (self.mean.view(), self.var.view()),
        };
        let t = self.t.view();
        Ok(cmds(batchnorm::batchnorm_forward(
            self.gpu, p, x, mean, var, bn.gamma, bn.beta, t,
        )?)
        .collect())
    }

    /// The backward of BN -> ReLU: dy in `dy`, dx added into `dx`.
    fn bn_relu_backward(
        &self,
        p: &BatchNormParams,
        x: View<'a>,
        dy: View<'a>,
        dx: View<'a>,
        bn: &BnViews<'a>,
    ) -> Result<Vec<Cmd>> {
        let (mean, var) = (self.mean.view(), self.var.view());
        let d = batchnorm::batchnorm_backward(
            self.gpu, p, x, dy, mean, var, bn.gamma, bn.beta, dx, bn.dgamma, bn.dbeta,
        )?;
        Ok(cmds(d).collect())
    }

    /// conv forward into `y`, with weight (and bias) rows [k0, k0 + p.c_out); `affine` when
    /// the conv applies its input's BN -> ReLU itself.
    fn conv(
        &self,
        p: &Conv2dParams,
        s: &ConvSlots,
        k0: u32,
        x: View<'a>,
        y: View<'a>,
        affine: Option<View<'a>>,
    ) -> Result<Vec<Cmd>> {
        let rows = p.weight_len();
        let w = self.sub(
            self.params,
            s.weight,
            k0 as u64 * rows / p.c_out as u64,
            rows,
        );
        let b = s
            .bias
            .map(|b| self.sub(self.params, b, k0 as u64, p.c_out as u64));
        Ok(cmds(conv2d::conv2d_forward(
            self.gpu,
            p,
            x,
            w,
            b,
            y,
            self.workspace.view(),
            affine,
        )?)
        .collect())
    }

    /// Weight (and bias) gradients of rows [k0, k0 + p.c_out) from input x and output grad
    /// dy; `affine` as for [`Bufs::conv`].
    fn conv_grads(
        &self,
        p: &Conv2dParams,
        s: &ConvSlots,
        k0: u32,
        x: View<'a>,
        dy: View<'a>,
        affine: Option<View<'a>>,
    ) -> Result<Vec<Cmd>> {
        let rows = p.weight_len();
        let dw = self.sub(
            self.grads,
            s.weight,
            k0 as u64 * rows / p.c_out as u64,
            rows,
        );
        let (ws, partials) = (self.workspace.view(), self.partials.view());
        let d = conv2d::conv2d_backward_weight(self.gpu, p, x, dy, ws, partials, dw, affine)?;
        let mut out: Vec<Cmd> = cmds(d).collect();
        if let Some(b) = s.bias {
            let db = self.sub(self.grads, b, k0 as u64, p.c_out as u64);
            out.extend(cmds(conv2d::conv2d_backward_bias(self.gpu, p, dy, db)?));
        }
        Ok(out)
    }

    /// dx (zeroed first, from element 0 whatever x's offset) = the conv's input gradient.
    fn conv_data(
        &self,
        p: &Conv2dParams,
        s: &ConvSlots,
        dy: View<'a>,
        dx: &'a GpuBuffer,
    ) -> Result<Vec<Cmd>> {
        let p = &Conv2dParams { x_offset: 0, ..*p };
        let mut out = vec![zero(dx, p.x_len())];
        let w = self.whole(self.params, s.weight);
        out.extend(cmds(conv2d::conv2d_backward_data(
            self.gpu,
            p,
            dy,
            w,
            dx.view(),
            self.workspace.view(),
        )?));
        Ok(out)
    }

    fn stem(&self, node: &StemNode, first_stats: &BatchNormParams) -> Result<Lists> {
        let mut l = Lists::default();
        let (x, a1, g1) = (
            self.input.view(),
            self.blocks[0].view(),
            self.block_grads[0].view(),
        );
        let Some((bn, stat, per)) = node.imagenet else {
            l.train
                .extend(self.conv(&node.p, &node.conv, 0, x, a1, None)?);
            l.eval
                .extend(self.conv(&node.p, &node.conv, 0, x, a1, None)?);
            l.train.extend(self.stats(first_stats, a1)?);
            l.backward
                .extend(self.conv_grads(&node.p, &node.conv, 0, x, g1, None)?);
            return Ok(l);
        };
        let (s_buf, argmax) = self.stem.expect("ImageNet stem buffers");
        let stat = self.layout.stats.slots[stat].offset as u32;
        let full = &node.p;
        let plane = full.y_len() / full.c_out as u64;
        let size = full.out_h;
        let mut g0 = 0;
        while g0 < node.channels {
            let gc = per.min(node.channels - g0);
            let p = Conv2dParams { c_out: gc, ..*full };
            let s = s_buf.slice(g0 as u64 * plane, gc as u64 * plane);
            let stats = BatchNormParams::new([p.n, gc, size, size])?.with_stat_offset(stat + g0);
            let bnp = stats.with_relu(true);
            let pool = Pool2dParams::new([p.n, gc, size, size], (3, 3), (2, 2), (1, 1))?
                .with_y_channel_offset(g0);
            let am = argmax.slice(g0 as u64 * pool.y_len() / gc as u64, pool.y_len());
            let bnv = self.bn(bn, g0, gc);
            for eval in [false, true] {
                let mut f = self.conv(&p, &node.conv, g0, x, s, None)?;
                if !eval {
                    f.extend(self.stats(&stats, s)?);
                }
                f.extend(self.bn_relu(&bnp, s, &bnv, eval)?);
                f.extend(cmds(maxpool::maxpool_forward(
                    self.gpu,
                    &pool,
                    self.t.view(),
                    a1,
                    am,
                )?));
                if eval {
                    l.eval.extend(f)
                } else {
                    l.train.extend(f)
                }
            }
            l.backward.push(zero(self.t, pool.x_len()));
            l.backward.extend(cmds(maxpool::maxpool_backward(
                self.gpu,
                &pool,
                g1,
                am,
                self.t.view(),
            )?));
            l.backward.push(zero(self.e, p.y_len()));
            l.backward.extend(self.bn_relu_backward(
                &bnp,
                s,
                self.t.view(),
                self.e.view(),
                &bnv,
            )?);
            l.backward
                .extend(self.conv_grads(&p, &node.conv, g0, x, self.e.view(), None)?);
            g0 += gc;
        }
        l.train.extend(self.stats(first_stats, a1)?);
        Ok(l)
    }

    /// BN of `p`'s channels as (scale, shift) pairs into `affine`, from the batch statistics
    /// (training) or the running ones (evaluation).
    fn affine(
        &self,
        p: &BatchNormParams,
        bn: &BnViews<'a>,
        affine: View<'a>,
        eval: bool,
    ) -> Result<Vec<Cmd>> {
        let (mean, var) = match eval {
            true => (self.running_mean.view(), self.running_var.view()),
            false => (self.mean.view(), self.var.view()),
        };
        Ok(cmds(batchnorm::batchnorm_affine(
            self.gpu, p, mean, var, bn.gamma, bn.beta, affine,
        )?)
        .collect())
    }

    /// Elements [offset, offset + len) of the affine buffer.
    fn affine_slot(&self, offset: u64, len: u32) -> View<'a> {
        self.affine.slice(offset, 2 * len as u64)
    }

    /// A dense layer: BN -> ReLU -> conv 3x3 (DenseNet-BC: BN -> ReLU -> conv 1x1 -> BN ->
    /// ReLU -> conv 3x3), each BN -> ReLU applied by the conv after it as it loads its
    /// input; the new channels land in place in the block's buffer.
    fn layer(&self, node: &LayerNode) -> Result<Lists> {
        let mut l = Lists::default();
        let (a, g) = (
            self.blocks[node.block].view(),
            self.block_grads[node.block].view(),
        );
        let bn = self.bn_all(node.bn_slots);
        let aff = self.affine_slot(node.affine, node.bn.c);
        let d = self.d.view();
        match &node.bottleneck {
            None => {
                for eval in [false, true] {
                    let mut f = self.affine(&node.bn, &bn, aff, eval)?;
                    f.extend(self.conv(&node.conv, &node.conv_slots, 0, a, a, Some(aff))?);
                    if eval {
                        l.eval.extend(f)
                    } else {
                        l.train.extend(f)
                    }
                }
                l.train.extend(self.stats(&node.new_stats, a)?);
                l.backward.extend(self.conv_grads(
                    &node.conv,
                    &node.conv_slots,
                    0,
                    a,
                    g,
                    Some(aff),
                )?);
                l.backward
                    .extend(self.conv_data(&node.conv, &node.conv_slots, g, self.d)?);
                l.backward
                    .extend(self.bn_relu_backward(&node.bn, a, d, g, &bn)?);
            }
            Some(bt) => {
                let (b, gb) = self.bottlenecks[node.block]
                    .as_ref()
                    .expect("bottleneck buffers");
                let (b, gb) = (b.view(), gb.view());
                let bn2 = self.bn_all(bt.bn_slots);
                let aff2 = self.affine_slot(bt.affine, bt.bn.c);
                for eval in [false, true] {
                    let mut f = self.affine(&node.bn, &bn, aff, eval)?;
                    f.extend(self.conv(&bt.conv, &bt.conv_slots, 0, a, b, Some(aff))?);
                    if !eval {
                        f.extend(self.stats(&bt.bn, b)?);
                    }
                    f.extend(self.affine(&bt.bn, &bn2, aff2, eval)?);
                    f.extend(self.conv(&node.conv, &node.conv_slots, 0, b, a, Some(aff2))?);
                    if eval {
                        l.eval.extend(f)
                    } else {
                        l.train.extend(f)
                    }
                }
                l.train.extend(self.stats(&node.new_stats, a)?);
                // The 3x3 conv and bn2 first, then the 1x1 conv and bn1: the forward reversed.
                l.backward.extend(self.conv_grads(
                    &node.conv,
                    &node.conv_slots,
                    0,
                    b,
                    g,
                    Some(aff2),
                )?);
                l.backward
                    .extend(self.conv_data(&node.conv, &node.conv_slots, g, self.d)?);
                l.backward
                    .extend(self.bn_relu_backward(&bt.bn, b, d, gb, &bn2)?);
                l.backward.extend(self.conv_grads(
                    &bt.conv,
                    &bt.conv_slots,
                    0,
                    a,
                    gb,
                    Some(aff),
                )?);
                l.backward
                    .extend(self.conv_data(&bt.conv, &bt.conv_slots, gb, self.d)?);
                l.backward
                    .extend(self.bn_relu_backward(&node.bn, a, d, g, &bn)?);
            }
        }
        Ok(l)
    }

    fn transition(&self, node: &TransitionNode) -> Result<Lists> {
        let mut l = Lists::default();
        let (a, g) = (
            self.blocks[node.from].view(),
            self.block_grads[node.from].view(),
        );
        let (a2, g2) = (
            self.blocks[node.from + 1].view(),
            self.block_grads[node.from + 1].view(),
        );
        let bn = self.bn_all(node.bn_slots);
        let (t, e) = (self.t.view(), self.e.view());
        let pool = |s: &Self| -> Result<Vec<Cmd>> {
            Ok(cmds(avgpool::avgpool_forward(s.gpu, &node.pool, t, e)?).collect())
        };
        for eval in [false, true] {
            let mut f = self.bn_relu(&node.bn, a, &bn, eval)?;
            f.extend(pool(self)?);
            f.extend(self.conv(&node.conv, &node.conv_slots, 0, e, a2, None)?);
            if eval {
                l.eval.extend(f)
            } else {
                l.train.extend(f)
            }
        }
        l.train.extend(self.stats(&node.next_stats, a2)?);
        l.backward.extend(self.bn_relu(&node.bn, a, &bn, false)?);
        l.backward.extend(pool(self)?);
        l.backward
            .extend(self.conv_grads(&node.conv, &node.conv_slots, 0, e, g2, None)?);
        l.backward
            .extend(self.conv_data(&node.conv, &node.conv_slots, g2, self.d)?);
        l.backward.push(zero(self.t, node.bn.len()));
        l.backward.extend(cmds(avgpool::avgpool_backward(
            self.gpu,
            &node.pool,
            self.d.view(),
            t,
        )?));
        l.backward
            .extend(self.bn_relu_backward(&node.bn, a, t, g, &bn)?);
        Ok(l)
    }

    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        node: &HeadNode,
        feat: &'a GpuBuffer,
        dfeat: &'a GpuBuffer,
        logits: &'a GpuBuffer,
        dlogits: &'a GpuBuffer,
        labels: &'a GpuBuffer,
        loss: &'a GpuBuffer,
        correct: &'a GpuBuffer,
    ) -> Result<Lists> {
        let mut l = Lists::default();
        let last = self.blocks.len() - 1;
        let (a, g) = (self.blocks[last].view(), self.block_grads[last].view());
        let bn = self.bn_all(node.bn_slots);
        let t = self.t.view();
        let (w, b) = (
            self.whole(self.params, node.weight),
            self.whole(self.params, node.bias),
        );
        for eval in [false, true] {
            let mut f = self.bn_relu(&node.bn, a, &bn, eval)?;
            f.extend(cmds(global_avgpool::global_avgpool_forward(
                self.gpu,
                &node.gap,
                t,
                feat.view(),
            )?));
            f.extend(cmds(linear::linear_forward(
                self.gpu,
                &node.linear,
                feat.view(),
                w,
                Some(b),
                logits.view(),
            )?));
            f.extend(cmds(cross_entropy::softmax_cross_entropy(
                self.gpu,
                &node.ce,
                logits.view(),
                labels.view(),
                dlogits.view(),
                loss.view(),
                correct.view(),
            )?));
            if eval {
                l.eval.extend(f)
            } else {
                l.train.extend(f)
            }
        }
        let (dw, db) = (
            self.whole(self.grads, node.weight),
            self.whole(self.grads, node.bias),
        );
        let lin = &node.linear;
        l.backward.push(zero(dfeat, lin.x_len()));
        l.backward.extend(cmds(linear::linear_backward_data(
            self.gpu,
            lin,
            dlogits.view(),
            w,
            dfeat.view(),
        )?));
        l.backward.extend(cmds(linear::linear_backward_weight(
            self.gpu,
            lin,
            feat.view(),
            dlogits.view(),
            dw,
        )?));
        l.backward.extend(cmds(linear::linear_backward_bias(
            self.gpu,
            lin,
            dlogits.view(),
            db,
        )?));
        l.backward.push(zero(self.t, node.bn.len()));
        l.backward
            .extend(cmds(global_avgpool::global_avgpool_backward(
                self.gpu,
                &node.gap,
                dfeat.view(),
                t,
            )?));
        l.backward
            .extend(self.bn_relu_backward(&node.bn, a, t, g, &bn)?);
        Ok(l)
    }
}

// ---------------------------------------------------------------------------------------
// the plan

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
