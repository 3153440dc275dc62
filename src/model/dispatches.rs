//! The commands of each node: its forward for training and for evaluation, and its backward
//! stages, over the plan's buffers. Every per-step tensor is reached through
//! [`Bufs::tensor`], which refuses a use outside the stages the tensor was declared live in,
//! so a wrong lifetime fails when the plan is built, not as a silently shared buffer.

use std::cell::Cell;

use crate::error::{Error, Result};
use crate::gpu::{GpuBuffer, View};
use crate::kernels::{Dispatch, Kernels};
use crate::model::buffers::{Buffers, Tensors};
use crate::model::cmd::{Cmd, Sync};
use crate::model::layout::{BnSlots, Layout, SlotId};
use crate::model::memory::{Stage, TensorId};
use crate::model::nodes::{ConvCall, Nodes};
use crate::ops::batchnorm::{self, BatchNormParams, BnRelu};
use crate::ops::conv2d::{self, Conv2dParams};

/// What the nodes' commands are built from.
pub(super) struct Bufs<'a> {
    pub(super) k: &'a Kernels,
    pub(super) layout: &'a Layout,
    pub(super) b: &'a Buffers<GpuBuffer>,
    pub(super) tensors: &'a Tensors,
    pub(super) nodes: &'a Nodes,
    stage: Cell<Stage>,
    /// Synchronized batch norm across this many replicas (data-parallel runs).
    pub(super) sync_bn: Option<u32>,
    /// The hull of the gradient elements requested since the last [`Bufs::take_touched`]:
    /// what a node's backward writes, so a data-parallel step can reduce it once done.
    touched: Cell<Option<(u64, u64)>>,
}

/// Gamma and beta (and in training their gradients) of channels [c0, c0 + c) of a BN.
pub(super) struct BnViews<'a> {
    pub(super) gamma: View<'a>,
    pub(super) beta: View<'a>,
    pub(super) dgamma: Option<View<'a>>,
    pub(super) dbeta: Option<View<'a>>,
}

pub(super) fn cmds(d: Vec<Dispatch>) -> impl Iterator<Item = Cmd> {
    d.into_iter().map(Cmd::Run)
}

/// Zeroes the first `elems` elements of a view.
pub(super) fn zero(view: View<'_>, elems: u64) -> Cmd {
    Cmd::Zero {
        buffer: view.buffer.clone(),
        offset: view.byte_offset(),
        size: view.dtype.bytes(elems),
    }
}

impl<'a> Bufs<'a> {
    pub(super) fn new(
        k: &'a Kernels,
        layout: &'a Layout,
        b: &'a Buffers<GpuBuffer>,
        tensors: &'a Tensors,
        nodes: &'a Nodes,
    ) -> Self {
        Bufs {
            k,
            layout,
            b,
            tensors,
            nodes,
            stage: Cell::new(0),
            sync_bn: None,
            touched: Cell::new(None),
        }
    }

    /// The gradient elements [start, end) requested since the last call, if any.
    pub(super) fn take_touched(&self) -> Option<(u64, u64)> {
        self.touched.take()
    }

    /// Commands built from now on run in `stage`.
    pub(super) fn enter(&self, stage: Stage) {
        self.stage.set(stage);
    }

    /// Per-step tensor `id`, checked to be live in the current stage.
    pub(super) fn tensor(&self, id: TensorId) -> Result<View<'a>> {
        let t = &self.tensors.specs[id];
        let now = self.stage.get();
        if now < t.first || now > t.last {
            let names = &self.nodes.timeline.names;
            return Err(Error::Device(format!(
                "plan error: tensor {} is used in stage {:?} but declared live in {:?} .. {:?}",
                t.spec.name, names[now as usize], names[t.first as usize], names[t.last as usize]
            )));
        }
        Ok(self.tensors.view(id))
    }

    /// A tensor that only training plans have.
    pub(super) fn train_tensor(&self, id: Option<TensorId>) -> Result<View<'a>> {
        self.tensor(id.ok_or_else(|| {
            Error::Device("plan error: a training tensor in an evaluation plan".into())
        })?)
    }

    pub(super) fn block(&self, b: usize) -> Result<View<'a>> {
        self.tensor(self.nodes.blocks[b])
    }

    pub(super) fn block_grad(&self, b: usize) -> Result<View<'a>> {
        self.train_tensor(self.nodes.block_grads[b])
    }

    fn training<'b>(&self, b: &'b Option<GpuBuffer>, what: &str) -> Result<&'b GpuBuffer> {
        b.as_ref()
            .ok_or_else(|| Error::Device(format!("plan error: an evaluation plan has no {what}")))
    }

    /// Elements [start, start + len) of parameter slot `slot` of the parameters.
    pub(super) fn param(&self, slot: SlotId, start: u64, len: u64) -> View<'a> {
        self.b
            .params
            .slice(self.layout.params.slots[slot].offset + start, len)
    }

    /// The same range of the parameter gradients.
    pub(super) fn grad(&self, slot: SlotId, start: u64, len: u64) -> Result<View<'a>> {
        let grads = self.training(&self.b.grads, "gradients")?;
        let from = self.layout.params.slots[slot].offset + start;
        let hull = match self.touched.get() {
            Some((a, b)) => (a.min(from), b.max(from + len)),
            None => (from, from + len),
        };
        self.touched.set(Some(hull));
        Ok(grads.slice(from, len))
    }

    pub(super) fn whole_param(&self, slot: SlotId) -> View<'a> {
        self.param(slot, 0, self.layout.params.slots[slot].len)
    }

    pub(super) fn whole_grad(&self, slot: SlotId) -> Result<View<'a>> {
        self.grad(slot, 0, self.layout.params.slots[slot].len)
    }

    pub(super) fn bn(&self, s: BnSlots, c0: u32, c: u32, train: bool) -> Result<BnViews<'a>> {
        let (c0, c) = (c0 as u64, c as u64);
        Ok(BnViews {
            gamma: self.param(s.gamma, c0, c),
            beta: self.param(s.beta, c0, c),
            dgamma: train.then(|| self.grad(s.gamma, c0, c)).transpose()?,
            dbeta: train.then(|| self.grad(s.beta, c0, c)).transpose()?,
        })
    }

    pub(super) fn bn_all(&self, s: BnSlots, train: bool) -> Result<BnViews<'a>> {
        let c = self.layout.params.slots[s.gamma].len as u32;
        self.bn(s, 0, c, train)
    }

    /// (mean, var): the batch statistics (training) or the running ones (evaluation).
    pub(super) fn stats_views(&self, eval: bool) -> Result<(View<'a>, View<'a>)> {
        match eval {
            true => Ok((self.b.running_mean.view(), self.b.running_var.view())),
            false => Ok((
                self.training(&self.b.batch_mean, "batch statistics")?
                    .view(),
                self.training(&self.b.batch_var, "batch statistics")?.view(),
            )),
        }
    }

    /// Batch statistics of the channels `p` covers in `x`, and the running update.
    pub(super) fn stats(&self, p: &BatchNormParams, x: View<'a>) -> Result<Vec<Cmd>> {
        let (mean, var) = self.stats_views(false)?;
        let mut out: Vec<Cmd> =
            cmds(batchnorm::batchnorm_stats(self.k, p, x, mean, var)?).collect();
        let (rm, rv) = (self.b.running_mean.view(), self.b.running_var.view());
        // Synchronized: the global batch's statistics, whose unbiased variance counts every
        // replica's examples.
        if self.sync_bn.is_some() {
            out.push(Cmd::Sync(Sync::BnStats {
                offset: p.stat_offset as u64,
                len: p.c as u64,
            }));
        }
        out.extend(cmds(batchnorm::batchnorm_update_running(
            self.k,
            &self.running_params(p),
            mean,
            var,
            rm,
            rv,
        )?));
        Ok(out)
    }

    /// `p` for a running-statistics update: synchronized, the unbiased variance counts
    /// every replica's examples.
    fn running_params(&self, p: &BatchNormParams) -> BatchNormParams {
        match self.sync_bn {
            Some(n) => p.with_count(p.m * n),
            None => *p,
        }
    }

    /// A reader's own running statistics (`layer_stats`, starting at `own`) moved toward
    /// the batch statistics of the block channels `p` reads, as torchvision updates each
    /// layer's: the batch statistics are the block's, the running ones the reader's.
    pub(super) fn own_running(&self, p: &BatchNormParams, own: u32) -> Result<Vec<Cmd>> {
        let (mean, var) = self.stats_views(false)?;
        let (from, c) = (p.stat_offset as u64, p.c as u64);
        let (rm, rv) = (self.b.running_mean.view(), self.b.running_var.view());
        let (mean, var) = (mean.sub(from, c)?, var.sub(from, c)?);
        let (rm, rv) = (rm.sub(own as u64, c)?, rv.sub(own as u64, c)?);
        let p = self.running_params(p).with_stat_offset(0);
        Ok(cmds(batchnorm::batchnorm_update_running(
            self.k, &p, mean, var, rm, rv,
        )?)
        .collect())
    }

    /// The BN -> ReLU of `p` for a pool to apply as it loads its input.
    pub(super) fn fused(
        &self,
        p: &BatchNormParams,
        bn: &BnViews<'a>,
        eval: bool,
    ) -> Result<BnRelu<'a>> {
        let (mean, var) = self.stats_views(eval)?;
        Ok(BnRelu::of(p, mean, var, bn.gamma, bn.beta))
    }

    /// BN of `p`'s channels as (scale, shift) pairs into the affine buffer at `offset`, for
    /// the conv that applies it while loading.
    pub(super) fn affine(
        &self,
        p: &BatchNormParams,
        bn: &BnViews<'a>,
        offset: u64,
        eval: bool,
    ) -> Result<(Vec<Cmd>, View<'a>)> {
        let (mean, var) = self.stats_views(eval)?;
        let aff = self.b.affine.slice(offset, 2 * p.c as u64);
        let d = batchnorm::batchnorm_affine(self.k, p, mean, var, bn.gamma, bn.beta, aff)?;
        Ok((cmds(d).collect(), aff))
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
        let (mean, var) = self.stats_views(false)?;
        let missing = || Error::Device("plan error: BN gradients in an evaluation plan".into());
        let (dgamma, dbeta) = (
            bn.dgamma.ok_or_else(missing)?,
            bn.dbeta.ok_or_else(missing)?,
        );
        let partials = self.b.bn_partials.as_ref().map(|b| b.view());
        if self.sync_bn.is_some() {
            let views = [x, dy, mean, var, bn.gamma, bn.beta, dx, dgamma, dbeta];
            let [sums, apply] = batchnorm::batchnorm_backward_synced(self.k, p, views)?;
            let sync = Sync::BnSums {
                dgamma: dgamma.offset,
                dbeta: dbeta.offset,
                len: p.c as u64,
            };
            return Ok(vec![Cmd::Run(sums), Cmd::Sync(sync), Cmd::Run(apply)]);
        }
        let d = batchnorm::batchnorm_backward(
            self.k, p, x, dy, mean, var, bn.gamma, bn.beta, dx, dgamma, dbeta, partials,
        )?;
        Ok(cmds(d).collect())
    }

    /// Conv `c` forward into `y` with params `p` (`c.p`, or one channel group of it) and
    /// weight (and bias) rows [k0, k0 + p.c_out); `affine` when the conv applies its input's
    /// BN -> ReLU itself.
    pub(super) fn conv(
        &self,
        c: &ConvCall,
        p: &Conv2dParams,
        k0: u32,
        x: View<'a>,
        affine: Option<View<'a>>,
        y: View<'a>,
    ) -> Result<Vec<Cmd>> {
        let rows = p.weight_len();
        let w = self.param(c.slots.weight, k0 as u64 * rows / p.c_out as u64, rows);
        let b = c
            .slots
            .bias
            .map(|b| self.param(b, k0 as u64, p.c_out as u64));
        let ws = self.optional(c.fwd_ws)?;
        Ok(cmds(conv2d::conv2d_forward(self.k, p, x, affine, w, b, y, ws)?).collect())
    }

    /// Weight (and bias) gradients of conv `c` with params `p`, rows [k0, k0 + p.c_out),
    /// from input x and output gradient dy; `affine` as for [`Bufs::conv`].
    pub(super) fn conv_grads(
        &self,
        c: &ConvCall,
        p: &Conv2dParams,
        k0: u32,
        x: View<'a>,
        affine: Option<View<'a>>,
        dy: View<'a>,
    ) -> Result<Vec<Cmd>> {
        let g = self.conv_tensors(c)?;
        let rows = p.weight_len();
        let dw = self.grad(c.slots.weight, k0 as u64 * rows / p.c_out as u64, rows)?;
        let (ws, partials) = (self.optional(g.packed_dy)?, self.tensor(g.partials)?);
        let d = conv2d::conv2d_backward_weight(self.k, p, x, affine, dy, ws, partials, dw)?;
        let mut out: Vec<Cmd> = cmds(d).collect();
        if let Some(b) = c.slots.bias {
            let db = self.grad(b, k0 as u64, p.c_out as u64)?;
            out.extend(cmds(conv2d::conv2d_backward_bias(self.k, p, dy, db)?));
        }
        Ok(out)
    }

    /// `dx` (from its element 0 whatever the conv's x offset) = the conv's input gradient,
    /// written, not added: no clearing first.
    pub(super) fn conv_data(&self, c: &ConvCall, dy: View<'a>, dx: View<'a>) -> Result<Vec<Cmd>> {
        let p = Conv2dParams { x_offset: 0, ..c.p }.overwriting();
        let ws = self.optional(self.conv_tensors(c)?.data_ws)?;
        let w = self.whole_param(c.slots.weight);
        Ok(cmds(conv2d::conv2d_backward_data(self.k, &p, dy, w, dx, ws)?).collect())
    }

    /// A per-step tensor the chosen implementation may not need.
    fn optional(&self, id: Option<TensorId>) -> Result<Option<View<'a>>> {
        id.map(|t| self.tensor(t)).transpose()
    }

    fn conv_tensors<'c>(&self, c: &'c ConvCall) -> Result<&'c crate::model::nodes::ConvGrads> {
        c.grads
            .as_ref()
            .ok_or_else(|| Error::Device("plan error: conv gradients in an evaluation plan".into()))
    }
}
