//! The dense layers, transitions and head as nodes: their op params and the per-step tensors
//! each declares (see [`super::nodes`]).

use crate::error::{Error, Result};
use crate::model::memory::Category::{Activations, Gradients, Scratch};
use crate::model::nodes::{BottleneckNode, Ctx, HeadNode, LayerNode, TransitionNode};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::conv2d::Conv2dParams;
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::global_avgpool::GlobalAvgPoolParams;
use crate::ops::linear::LinearParams;
use crate::ops::maxpool::Pool2dParams;

/// Statistics of channels [c0, c0 + c) of a block tensor, computed when they are written.
pub(super) fn stats_params(
    n: u32,
    size: u32,
    c0: u32,
    c: u32,
    stat: u32,
) -> Result<BatchNormParams> {
    Ok(BatchNormParams::new([n, c, size, size])?
        .with_x_channel_offset(c0)
        .with_stat_offset(stat + c0))
}

/// BN -> ReLU over channels [0, c) of a block tensor.
pub(super) fn bn_relu_params(n: u32, size: u32, c: u32, stat: u32) -> Result<BatchNormParams> {
    Ok(BatchNormParams::new([n, c, size, size])?
        .with_stat_offset(stat)
        .with_relu(true))
}

/// Dense layer `l` of block `b` (node `i`).
pub(super) fn layer(ctx: &mut Ctx<'_>, i: usize, b: usize, l: usize) -> Result<LayerNode> {
    let (n, k, bias) = (ctx.n, ctx.cfg.growth_rate, ctx.cfg.conv_bias);
    let layout = ctx.layout;
    let block = &layout.blocks[b];
    let (s, st) = (block.shape.size, ctx.stat(block.stats));
    let ll = block.layers[l];
    let name = format!("blocks.{b}.layers.{l}");
    let bn = bn_relu_params(n, s, ll.c_in, st)?;
    let affine = ctx.affine_slot(ll.c_in);
    let (f, train) = (ctx.timeline.fwd(i), ctx.train());
    let bottleneck = match ll.bottleneck {
        Some(bt) => {
            let w = bt.width;
            let p = Conv2dParams::new([n, ll.c_in, s, s], w, (1, 1), (1, 1), (0, 0), bias)?;
            let shape = ctx.chw(w, s);
            let b0 = train.then(|| ctx.timeline.bwd(i, 0));
            let out = ctx.tensor(
                format!("{name}.bottleneck"),
                &shape,
                Activations,
                (f, b0.unwrap_or(f)),
            );
            let grad = b0.map(|b0| {
                ctx.tensor(
                    format!("{name}.bottleneck.grad"),
                    &shape,
                    Gradients,
                    (b0, b0),
                )
            });
            Some(BottleneckNode {
                conv: ctx.conv(&format!("{name}.conv1"), p, bt.conv, i, 0, true),
                bn: BatchNormParams::new([n, w, s, s])?
                    .with_stat_offset(ctx.stat(bt.stats))
                    .with_relu(true),
                bn_slots: bt.bn,
                affine: ctx.affine_slot(w),
                out,
                grad,
            })
        }
        None => None,
    };
    let conv_in = ll.bottleneck.map_or(ll.c_in, |bt| bt.width);
    let p = Conv2dParams::new([n, conv_in, s, s], k, (3, 3), (1, 1), (1, 1), bias)?
        .with_y_channel_offset(ll.c_in);
    let dinput = train.then(|| {
        let b0 = ctx.timeline.bwd(i, 0);
        let shape = ctx.chw(ll.c_in.max(conv_in), s);
        ctx.tensor(format!("{name}.dinput"), &shape, Gradients, (b0, b0))
    });
    Ok(LayerNode {
        block: b,
        bn,
        bn_slots: ll.bn,
        own: ll.running.map(|s| ctx.stat(s)),
        affine,
        bottleneck,
        conv: ctx.conv(&format!("{name}.conv"), p, ll.conv, i, 0, true),
        new_stats: match train {
            true => Some(stats_params(n, s, ll.c_in, k, st)?),
            false => None,
        },
        dinput,
    })
}

/// Transition `t` (node `i`) between blocks t and t + 1.
pub(super) fn transition(ctx: &mut Ctx<'_>, i: usize, t: usize) -> Result<TransitionNode> {
    let (n, layout) = (ctx.n, ctx.layout);
    let tr = layout.transitions[t];
    let (from, next) = (&layout.blocks[t], &layout.blocks[t + 1]);
    let (s, half) = (from.shape.size, next.shape.size);
    let (st, next_st) = (ctx.stat(from.stats), ctx.stat(next.stats));
    let name = format!("transitions.{t}");
    let p = Conv2dParams::new(
        [n, tr.c_in, half, half],
        tr.c_out,
        (1, 1),
        (1, 1),
        (0, 0),
        ctx.cfg.conv_bias,
    )?;
    let f = ctx.timeline.fwd(i);
    let pooled_shape = ctx.chw(tr.c_in, half);
    let pooled = ctx.tensor(format!("{name}.pooled"), &pooled_shape, Activations, (f, f));
    let (mut pooled_again, mut dpooled, mut dbn) = (None, None, None);
    if ctx.train() {
        let (b0, b1) = (ctx.timeline.bwd(i, 0), ctx.timeline.bwd(i, 1));
        let full = ctx.chw(tr.c_in, s);
        pooled_again = Some(ctx.tensor(
            format!("{name}.pooled.recomputed"),
            &pooled_shape,
            Activations,
            (b0, b0),
        ));
        dpooled = Some(ctx.tensor(
            format!("{name}.pooled.grad"),
            &pooled_shape,
            Gradients,
            (b0, b1),
        ));
        dbn = Some(ctx.tensor(format!("{name}.bn.grad"), &full, Gradients, (b1, b1)));
    }
    Ok(TransitionNode {
        from: t,
        bn: bn_relu_params(n, s, tr.c_in, st)?,
        bn_slots: tr.bn,
        own: tr.running.map(|s| ctx.stat(s)),
        pool: Pool2dParams::new([n, tr.c_in, s, s], (2, 2), (2, 2), (0, 0))?,
        conv: ctx.conv(&format!("{name}.conv"), p, tr.conv, i, 0, true),
        next_stats: match ctx.train() {
            true => Some(stats_params(n, half, 0, tr.c_out, next_st)?),
            false => None,
        },
        pooled,
        pooled_again,
        dpooled,
        dbn,
    })
}

/// BN -> ReLU -> global average pool -> linear -> softmax cross-entropy (node `i`).
pub(super) fn head(ctx: &mut Ctx<'_>, i: usize) -> Result<HeadNode> {
    let (n, classes, layout) = (ctx.n, ctx.cfg.classes, ctx.layout);
    let last = layout.blocks.last().ok_or_else(|| {
        Error::shape("DenseNetConfig", "a network needs at least one dense block")
    })?;
    let (s, c) = (last.shape.size, last.shape.c_out);
    let st = ctx.stat(last.stats);
    let f = ctx.timeline.fwd(i);
    let b0 = ctx.train().then(|| ctx.timeline.bwd(i, 0));
    let keep = (f, b0.unwrap_or(f));
    let features = ctx.tensor("head.features", &[c as u64, n as u64], Activations, keep);
    // The loss kernel writes the loss gradient in evaluation too, where it is scratch (of
    // the activations' type all the same).
    let cat = if ctx.train() { Gradients } else { Scratch };
    let shape = [n as u64, classes as u64];
    let dlogits = ctx
        .tensors
        .add("head.logits.grad", &shape, ctx.dtype, cat, keep);
    let dfeatures = b0.map(|b| {
        ctx.tensor(
            "head.features.grad",
            &[c as u64, n as u64],
            Gradients,
            (b, b),
        )
    });
    let dbn = b0.map(|b| {
        let shape = ctx.chw(c, s);
        ctx.tensor("head.bn.grad", &shape, Gradients, (b, b))
    });
    Ok(HeadNode {
        bn: bn_relu_params(n, s, c, st)?,
        bn_slots: layout.head.bn,
        own: layout.head.running.map(|s| ctx.stat(s)),
        gap: GlobalAvgPoolParams::new([n, c, s, s])?,
        linear: LinearParams::new(n, c, classes, true)?,
        weight: layout.head.weight,
        bias: layout.head.bias,
        ce: CrossEntropyParams::new(n, classes)?,
        multi_label: ctx.cfg.multi_label,
        features,
        dlogits,
        dfeatures,
        dbn,
    })
}
