//! The dispatches of each node: its forward for training and for evaluation, and its
//! backward, over the plan's buffers.

use crate::error::Result;
use crate::gpu::{Gpu, GpuBuffer, View};
use crate::kernels::Dispatch;
use crate::model::layout::{BnSlots, ConvSlots, Layout, SlotId};
use crate::model::nodes::{HeadNode, LayerNode, StemNode, TransitionNode};
use crate::model::plan::Cmd;
use crate::ops::avgpool;
use crate::ops::batchnorm::{self, BatchNormParams};
use crate::ops::conv2d::{self, Conv2dParams};
use crate::ops::cross_entropy;
use crate::ops::global_avgpool;
use crate::ops::linear;
use crate::ops::maxpool::{self, Pool2dParams};

/// The buffers every node reads and writes.
pub(super) struct Bufs<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) layout: &'a Layout,
    pub(super) params: &'a GpuBuffer,
    pub(super) grads: &'a GpuBuffer,
    pub(super) mean: &'a GpuBuffer,
    pub(super) var: &'a GpuBuffer,
    pub(super) running_mean: &'a GpuBuffer,
    pub(super) running_var: &'a GpuBuffer,
    pub(super) input: &'a GpuBuffer,
    pub(super) blocks: &'a [GpuBuffer],
    pub(super) block_grads: &'a [GpuBuffer],
    pub(super) bottlenecks: &'a [Option<(GpuBuffer, GpuBuffer)>],
    pub(super) stem: Option<&'a (GpuBuffer, GpuBuffer)>,
    pub(super) t: &'a GpuBuffer,
    pub(super) d: &'a GpuBuffer,
    pub(super) e: &'a GpuBuffer,
    pub(super) workspace: &'a GpuBuffer,
    pub(super) partials: &'a GpuBuffer,
    pub(super) affine: &'a GpuBuffer,
}

/// Gamma, beta and their gradients for channels [c0, c0 + c) of a batch norm.
pub(super) struct BnViews<'a> {
    pub(super) gamma: View<'a>,
    pub(super) beta: View<'a>,
    pub(super) dgamma: View<'a>,
    pub(super) dbeta: View<'a>,
}

/// A node's commands: its forward for training and for evaluation, and its backward.
#[derive(Default)]
pub(super) struct Lists {
    pub(super) train: Vec<Cmd>,
    pub(super) eval: Vec<Cmd>,
    pub(super) backward: Vec<Cmd>,
}

impl Lists {
    /// Appends a forward built for evaluation (`eval`) or for training.
    fn forward(&mut self, eval: bool, f: Vec<Cmd>) {
        match eval {
            true => self.eval.extend(f),
            false => self.train.extend(f),
        }
    }
}

pub(super) fn cmds(d: Vec<Dispatch>) -> impl Iterator<Item = Cmd> {
    d.into_iter().map(Cmd::Run)
}

pub(super) fn zero(buf: &GpuBuffer, elems: u64) -> Cmd {
    Cmd::Zero {
        buffer: buf.buffer.clone(),
        offset: 0,
        size: elems * 4,
    }
}

impl<'a> Bufs<'a> {
    /// Elements [start, start + len) of parameter slot `slot` in `arena`.
    pub(super) fn sub(&self, arena: &'a GpuBuffer, slot: SlotId, start: u64, len: u64) -> View<'a> {
        arena.slice(self.layout.params.slots[slot].offset + start, len)
    }

    pub(super) fn whole(&self, arena: &'a GpuBuffer, slot: SlotId) -> View<'a> {
        self.sub(arena, slot, 0, self.layout.params.slots[slot].len)
    }

    pub(super) fn bn(&self, s: BnSlots, c0: u32, c: u32) -> BnViews<'a> {
        let (c0, c) = (c0 as u64, c as u64);
        BnViews {
            gamma: self.sub(self.params, s.gamma, c0, c),
            beta: self.sub(self.params, s.beta, c0, c),
            dgamma: self.sub(self.grads, s.gamma, c0, c),
            dbeta: self.sub(self.grads, s.beta, c0, c),
        }
    }

    pub(super) fn bn_all(&self, s: BnSlots) -> BnViews<'a> {
        let c = self.layout.params.slots[s.gamma].len as u32;
        self.bn(s, 0, c)
    }

    /// Batch statistics of the channels `p` covers in `x`, and the running update.
    pub(super) fn stats(&self, p: &BatchNormParams, x: View<'a>) -> Result<Vec<Cmd>> {
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
    pub(super) fn bn_relu(
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
    pub(super) fn bn_relu_backward(
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
    pub(super) fn conv(
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
    pub(super) fn conv_grads(
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
    pub(super) fn conv_data(
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

    pub(super) fn stem(&self, node: &StemNode, first_stats: &BatchNormParams) -> Result<Lists> {
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
                l.forward(eval, f);
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
    pub(super) fn affine(
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
    pub(super) fn affine_slot(&self, offset: u64, len: u32) -> View<'a> {
        self.affine.slice(offset, 2 * len as u64)
    }

    /// A dense layer: BN -> ReLU -> conv 3x3 (DenseNet-BC: BN -> ReLU -> conv 1x1 -> BN ->
    /// ReLU -> conv 3x3), each BN -> ReLU applied by the conv after it as it loads its
    /// input; the new channels land in place in the block's buffer.
    pub(super) fn layer(&self, node: &LayerNode) -> Result<Lists> {
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
                    l.forward(eval, f);
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
                    l.forward(eval, f);
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

    pub(super) fn transition(&self, node: &TransitionNode) -> Result<Lists> {
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
            l.forward(eval, f);
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
    pub(super) fn head(
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
            l.forward(eval, f);
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
