//! Each node's commands: its forward (training, with batch statistics; evaluation, with the
//! running ones) and its backward stages, built on [`Bufs`].

use crate::error::Result;
use crate::gpu::View;
use crate::model::cmd::Cmd;
use crate::model::dispatches::{cmds, zero, Bufs};
use crate::model::nodes::{HeadNode, LayerNode, Mode, Node, StemNode, TransitionNode};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::{avgpool, cross_entropy, global_avgpool, linear, maxpool};

/// A node's commands.
#[derive(Default)]
pub(super) struct NodeCmds {
    pub(super) forward_train: Vec<Cmd>,
    pub(super) forward_eval: Vec<Cmd>,
    /// Its backward stages, in order (training).
    pub(super) backward: Vec<Cmd>,
}

/// The commands of node `i`.
pub(super) fn node_cmds(b: &Bufs<'_>, i: usize, node: &Node) -> Result<NodeCmds> {
    let t = &b.nodes.timeline;
    let train = b.nodes.mode == Mode::Train;
    let mut out = NodeCmds::default();
    b.enter(t.fwd(i));
    for eval in [false, true] {
        if !eval && !train {
            continue;
        }
        let f = match node {
            Node::Stem(n) => stem_forward(b, n, eval)?,
            Node::Layer(n) => layer_forward(b, n, eval)?,
            Node::Transition(n) => transition_forward(b, n, eval)?,
            Node::Head(n) => head_forward(b, n, eval)?,
        };
        match eval {
            true => out.forward_eval = f,
            false => out.forward_train = f,
        }
    }
    for s in 0..t.bwd_stages(i) {
        b.enter(t.bwd(i, s));
        out.backward.extend(match node {
            Node::Stem(n) => stem_backward(b, n, s)?,
            Node::Layer(n) => layer_backward(b, n)?,
            Node::Transition(n) => transition_backward(b, n, s)?,
            Node::Head(n) => head_backward(b, n)?,
        });
    }
    Ok(out)
}

/// Channels [g0, g0 + gc) of a channel-major tensor of `plane` values per channel.
fn channels<'a>(v: View<'a>, plane: u64, g0: u32, gc: u32) -> Result<View<'a>> {
    v.sub(g0 as u64 * plane, gc as u64 * plane)
}

fn stem_forward(b: &Bufs<'_>, node: &StemNode, eval: bool) -> Result<Vec<Cmd>> {
    let (x, a0) = (b.b.input.view(), b.block(0)?);
    let mut f = Vec::new();
    match &node.imagenet {
        None => f.extend(b.conv(&node.conv, &node.conv.p, 0, x, None, a0)?),
        Some(inet) => {
            let s_all = b.tensor(inet.conv_out)?;
            let plane = s_all.len / node.channels as u64;
            for g in node.groups()? {
                let gc = g.conv.c_out;
                let s = channels(s_all, plane, g.g0, gc)?;
                f.extend(b.conv(&node.conv, &g.conv, g.g0, x, None, s)?);
                if !eval {
                    f.extend(b.stats(&g.bn, s)?);
                }
                let bn = b.bn(inet.bn, g.g0, gc, false)?;
                let fused = b.fused(&g.bn, &bn, eval)?;
                let argmax = match eval {
                    true => None,
                    false => {
                        let am = b.train_tensor(inet.argmax)?;
                        Some(channels(am, am.len / node.channels as u64, g.g0, gc)?)
                    }
                };
                let pool = maxpool::maxpool_forward(b.k, &g.pool, s, Some(fused), a0, argmax)?;
                f.extend(cmds(pool));
            }
        }
    }
    if let (false, Some(p)) = (eval, &node.first_stats) {
        f.extend(b.stats(p, a0)?);
    }
    Ok(f)
}

/// Stage 0: the pool's and the BN's backward into the conv-output gradient; stage 1 (and the
/// CIFAR stem's only stage): the conv's weight gradients.
fn stem_backward(b: &Bufs<'_>, node: &StemNode, stage: usize) -> Result<Vec<Cmd>> {
    let x = b.b.input.view();
    let Some(inet) = &node.imagenet else {
        return b.conv_grads(&node.conv, &node.conv.p, 0, x, None, b.block_grad(0)?);
    };
    let dconv_all = b.train_tensor(inet.dconv)?;
    let plane = dconv_all.len / node.channels as u64;
    let mut out = Vec::new();
    for g in node.groups()? {
        let gc = g.conv.c_out;
        let dconv = channels(dconv_all, plane, g.g0, gc)?;
        if stage == 1 {
            out.extend(b.conv_grads(&node.conv, &g.conv, g.g0, x, None, dconv)?);
            continue;
        }
        let g0_all = b.block_grad(0)?;
        let s = channels(b.tensor(inet.conv_out)?, plane, g.g0, gc)?;
        let am_all = b.train_tensor(inet.argmax)?;
        let am = channels(am_all, am_all.len / node.channels as u64, g.g0, gc)?;
        let dpool = b.train_tensor(inet.dpool)?;
        // The gather writes every element of dpool: no clearing first.
        let pool = g.pool.overwriting();
        out.extend(cmds(maxpool::maxpool_backward(
            b.k, &pool, g0_all, am, dpool,
        )?));
        out.push(zero(dconv, g.bn.len()));
        let bn = b.bn(inet.bn, g.g0, gc, true)?;
        out.extend(b.bn_relu_backward(&g.bn, s, dpool, dconv, &bn)?);
    }
    Ok(out)
}

/// BN -> ReLU -> conv 3x3 (DenseNet-BC: BN -> ReLU -> conv 1x1 -> BN -> ReLU -> conv 3x3),
/// each BN -> ReLU applied by the conv after it as it loads its input; the new channels land
/// in place in the block's tensor.
/// A reader's BN params for this pass and, training, its own running statistics' update:
/// evaluation reads the reader's own running statistics where it keeps them.
fn reader(
    b: &Bufs<'_>,
    p: &BatchNormParams,
    own: Option<u32>,
    eval: bool,
) -> Result<(BatchNormParams, Vec<Cmd>)> {
    match (own, eval) {
        (Some(o), true) => Ok((p.with_stat_offset(o), Vec::new())),
        (Some(o), false) => Ok((*p, b.own_running(p, o)?)),
        (None, _) => Ok((*p, Vec::new())),
    }
}

fn layer_forward(b: &Bufs<'_>, node: &LayerNode, eval: bool) -> Result<Vec<Cmd>> {
    let a = b.block(node.block)?;
    let bn = b.bn_all(node.bn_slots, false)?;
    let (p, mut f) = reader(b, &node.bn, node.own, eval)?;
    let (f0, aff) = b.affine(&p, &bn, node.affine, eval)?;
    f.extend(f0);
    match &node.bottleneck {
        None => f.extend(b.conv(&node.conv, &node.conv.p, 0, a, Some(aff), a)?),
        Some(bt) => {
            let o = b.tensor(bt.out)?;
            f.extend(b.conv(&bt.conv, &bt.conv.p, 0, a, Some(aff), o)?);
            if !eval {
                f.extend(b.stats(&bt.bn, o)?);
            }
            let bn2 = b.bn_all(bt.bn_slots, false)?;
            let (f2, aff2) = b.affine(&bt.bn, &bn2, bt.affine, eval)?;
            f.extend(f2);
            f.extend(b.conv(&node.conv, &node.conv.p, 0, o, Some(aff2), a)?);
        }
    }
    if let (false, Some(p)) = (eval, &node.new_stats) {
        f.extend(b.stats(p, a)?);
    }
    Ok(f)
}

/// The forward reversed: the 3x3 conv's gradients, then (BC) bn2's and the 1x1 conv's, then
/// the layer BN's, adding into the block's gradient.
fn layer_backward(b: &Bufs<'_>, node: &LayerNode) -> Result<Vec<Cmd>> {
    let (a, g) = (b.block(node.block)?, b.block_grad(node.block)?);
    let bn = b.bn_all(node.bn_slots, true)?;
    let aff = b.b.affine.slice(node.affine, 2 * node.bn.c as u64);
    let d = b.train_tensor(node.dinput)?;
    let conv = &node.conv;
    let mut out = Vec::new();
    match &node.bottleneck {
        None => {
            out.extend(b.conv_grads(conv, &conv.p, 0, a, Some(aff), g)?);
            out.extend(b.conv_data(conv, g, d)?);
        }
        Some(bt) => {
            let (o, go) = (b.tensor(bt.out)?, b.train_tensor(bt.grad)?);
            let bn2 = b.bn_all(bt.bn_slots, true)?;
            let aff2 = b.b.affine.slice(bt.affine, 2 * bt.bn.c as u64);
            out.extend(b.conv_grads(conv, &conv.p, 0, o, Some(aff2), g)?);
            out.extend(b.conv_data(conv, g, d)?);
            out.push(zero(go, bt.bn.len()));
            out.extend(b.bn_relu_backward(&bt.bn, o, d, go, &bn2)?);
            out.extend(b.conv_grads(&bt.conv, &bt.conv.p, 0, a, Some(aff), go)?);
            out.extend(b.conv_data(&bt.conv, go, d)?);
        }
    }
    out.extend(b.bn_relu_backward(&node.bn, a, d, g, &bn)?);
    Ok(out)
}

fn transition_forward(b: &Bufs<'_>, node: &TransitionNode, eval: bool) -> Result<Vec<Cmd>> {
    let (a, a2) = (b.block(node.from)?, b.block(node.from + 1)?);
    let bn = b.bn_all(node.bn_slots, false)?;
    let e = b.tensor(node.pooled)?;
    let (p, mut f) = reader(b, &node.bn, node.own, eval)?;
    let fused = b.fused(&p, &bn, eval)?;
    f.extend(cmds(avgpool::avgpool_forward(
        b.k,
        &node.pool,
        a,
        Some(fused),
        e,
    )?));
    f.extend(b.conv(&node.conv, &node.conv.p, 0, e, None, a2)?);
    if let (false, Some(p)) = (eval, &node.next_stats) {
        f.extend(b.stats(p, a2)?);
    }
    Ok(f)
}

/// Stage 0: the pooled input recomputed, the conv's gradients; stage 1: the pool's and the
/// BN's backward into the block's gradient (first written here).
fn transition_backward(b: &Bufs<'_>, node: &TransitionNode, stage: usize) -> Result<Vec<Cmd>> {
    let a = b.block(node.from)?;
    let dp = b.train_tensor(node.dpooled)?;
    if stage == 0 {
        let g2 = b.block_grad(node.from + 1)?;
        let bn = b.bn_all(node.bn_slots, false)?;
        let e = b.train_tensor(node.pooled_again)?;
        let fused = b.fused(&node.bn, &bn, false)?;
        let mut out: Vec<Cmd> = cmds(avgpool::avgpool_forward(
            b.k,
            &node.pool,
            a,
            Some(fused),
            e,
        )?)
        .collect();
        out.extend(b.conv_grads(&node.conv, &node.conv.p, 0, e, None, g2)?);
        out.extend(b.conv_data(&node.conv, g2, dp)?);
        return Ok(out);
    }
    let g = b.block_grad(node.from)?;
    let dbn = b.train_tensor(node.dbn)?;
    let bn = b.bn_all(node.bn_slots, true)?;
    let pool = node.pool.overwriting();
    let mut out: Vec<Cmd> = cmds(avgpool::avgpool_backward(b.k, &pool, dp, dbn)?).collect();
    out.push(zero(g, g.len));
    out.extend(b.bn_relu_backward(&node.bn, a, dbn, g, &bn)?);
    Ok(out)
}

fn head_forward(b: &Bufs<'_>, node: &HeadNode, eval: bool) -> Result<Vec<Cmd>> {
    let a = b.block(b.nodes.blocks.len() - 1)?;
    let bn = b.bn_all(node.bn_slots, false)?;
    let (feat, dlogits) = (b.tensor(node.features)?, b.tensor(node.dlogits)?);
    let (w, bias) = (b.whole_param(node.weight), b.whole_param(node.bias));
    let (logits, labels) = (b.b.logits.view(), b.b.labels.view());
    let (p, mut f) = reader(b, &node.bn, node.own, eval)?;
    let fused = b.fused(&p, &bn, eval)?;
    f.extend(cmds(global_avgpool::global_avgpool_forward(
        b.k,
        &node.gap,
        a,
        Some(fused),
        feat,
    )?));
    f.extend(cmds(linear::linear_forward(
        b.k,
        &node.linear,
        feat,
        w,
        Some(bias),
        logits,
    )?));
    f.push(zero(dlogits, dlogits.len));
    // Training in f16: the loss gradient is scaled (the loss itself is not).
    let scale = b.b.loss_scale.as_ref().map(|s| s.view());
    let ce = match scale {
        Some(_) => node.ce.with_loss_scale(),
        None => node.ce,
    };
    let sums = (b.b.loss_sum.view(), b.b.correct.view());
    let loss = match (node.multi_label, &b.b.pos_weight) {
        (true, Some(w)) => cross_entropy::sigmoid_cross_entropy(
            b.k,
            &ce,
            logits,
            labels,
            w.view(),
            dlogits,
            sums,
            scale,
        )?,
        _ => cross_entropy::softmax_cross_entropy(
            b.k, &ce, logits, labels, dlogits, sums.0, sums.1, scale,
        )?,
    };
    f.extend(cmds(loss));
    Ok(f)
}

fn head_backward(b: &Bufs<'_>, node: &HeadNode) -> Result<Vec<Cmd>> {
    let last = b.nodes.blocks.len() - 1;
    let (a, g) = (b.block(last)?, b.block_grad(last)?);
    let bn = b.bn_all(node.bn_slots, true)?;
    let (feat, dlogits) = (b.tensor(node.features)?, b.tensor(node.dlogits)?);
    let (dfeat, dbn) = (b.train_tensor(node.dfeatures)?, b.train_tensor(node.dbn)?);
    let w = b.whole_param(node.weight);
    let (dw, db) = (b.whole_grad(node.weight)?, b.whole_grad(node.bias)?);
    let lin = &node.linear;
    let mut out = vec![zero(dfeat, lin.x_len())];
    out.extend(cmds(linear::linear_backward_data(
        b.k, lin, dlogits, w, dfeat,
    )?));
    out.extend(cmds(linear::linear_backward_weight(
        b.k, lin, feat, dlogits, dw,
    )?));
    out.extend(cmds(linear::linear_backward_bias(b.k, lin, dlogits, db)?));
    let gap = node.gap.overwriting();
    out.extend(cmds(global_avgpool::global_avgpool_backward(
        b.k, &gap, dfeat, dbn,
    )?));
    out.push(zero(g, g.len));
    out.extend(b.bn_relu_backward(&node.bn, a, dbn, g, &bn)?);
    Ok(out)
}
