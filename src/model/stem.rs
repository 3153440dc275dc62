//! The stem node: the layers before the first dense block, and how its tensors are planned.

use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::model::config::Stem;
use crate::model::layers::stats_params;
use crate::model::memory::Category::{Activations, Gradients};
use crate::model::nodes::{Ctx, ImageNetStem, StemNode};
use crate::ops::conv2d::Conv2dParams;

/// The stem (node `i`), writing block 0's first channels. The ImageNet stem is conv
/// 7x7/2 -> BN -> ReLU -> max-pool 3x3/2 (the BN -> ReLU applied by the pool as it loads); the
/// CIFAR stem is one conv 3x3 writing into block 0 directly.
pub(super) fn stem(ctx: &mut Ctx<'_>, i: usize) -> Result<StemNode> {
    let (cfg, layout, n) = (ctx.cfg, ctx.layout, ctx.n);
    let (size, c0, bias) = (cfg.image_size, cfg.stem.channels(), cfg.conv_bias);
    let input = [n, cfg.in_channels, size, size];
    let b0 = &layout.blocks[0].shape;
    let first_stats = match ctx.train() {
        true => Some(stats_params(
            n,
            b0.size,
            0,
            b0.c_in,
            ctx.stat(layout.blocks[0].stats),
        )?),
        false => None,
    };
    if let Stem::Cifar { .. } = cfg.stem {
        let p = Conv2dParams::new(input, c0, (3, 3), (1, 1), (1, 1), bias)?;
        return Ok(StemNode {
            conv: ctx.conv("stem.conv", p, layout.stem.conv, i, 0, false),
            channels: c0,
            imagenet: None,
            first_stats,
        });
    }
    let full = Conv2dParams::new(input, c0, (7, 7), (2, 2), (3, 3), bias)?;
    let per = group_channels(ctx, &full)?;
    let p = Conv2dParams { c_out: per, ..full };
    let (bn, stats) = layout
        .stem
        .bn
        .ok_or_else(|| Error::shape("stem", "the ImageNet stem has no batch norm slots"))?;
    let f = ctx.timeline.fwd(i);
    let conv_shape = ctx.chw(c0, full.out_h);
    let pool_shape = ctx.chw(c0, b0.size);
    let mut stem = ImageNetStem {
        bn,
        stat: ctx.stat(stats),
        conv_out: ctx.tensor("stem.conv", &conv_shape, Activations, (f, f)),
        argmax: None,
        dpool: None,
        dconv: None,
    };
    if ctx.train() {
        let (b0, b1) = (ctx.timeline.bwd(i, 0), ctx.timeline.bwd(i, 1));
        ctx.tensors.specs[stem.conv_out].last = b0;
        let group_shape = ctx.chw(per, full.out_h);
        stem.argmax = Some(ctx.tensors.add(
            "stem.pool.argmax",
            &pool_shape,
            DType::U32,
            Activations,
            (f, b0),
        ));
        stem.dpool = Some(ctx.tensor("stem.bn.grad", &group_shape, Gradients, (b0, b0)));
        stem.dconv = Some(ctx.tensor("stem.conv.grad", &conv_shape, Gradients, (b0, b1)));
    }
    Ok(StemNode {
        conv: ctx.conv("stem.conv", p, layout.stem.conv, i, 1, false),
        channels: c0,
        imagenet: Some(stem),
        first_stats,
    })
}

/// Channels per group of the ImageNet stem, each group bound as its own aligned range of
/// the stem's tensors: groups small enough for the adapter's binding limit (d2l at batch 256
/// in f32 on a 128 MiB-binding adapter needs 2), and in training at least 2 where the
/// alignment allows, since the BN's gradient is then a temporary of one group's size (18
/// MiB less for d2l in f16, 36 in f32) for one more set of stem dispatches.
fn group_channels(ctx: &Ctx<'_>, full: &Conv2dParams) -> Result<u32> {
    let limit = ctx.limits.max_binding.max(1);
    let c = full.c_out;
    let bytes = ctx.dtype.bytes(full.y_len());
    let needed = bytes.div_ceil(limit);
    let groups = match ctx.train() && c >= 2 {
        true => needed.max(2),
        false => needed,
    };
    if groups <= 1 {
        return Ok(c);
    }
    let align = ctx.limits.align();
    let plane = full.y_len() / c as u64;
    let per = (c as u64).div_ceil(groups).next_multiple_of(align);
    let pooled = plane / 4;
    let aligned =
        plane % align == 0 && pooled % align == 0 && full.c_in as u64 * 49 * per % align == 0;
    if needed <= 1 && (!aligned || per >= c as u64) {
        return Ok(c); // grouping was only to save memory: go without
    }
    if !aligned || ctx.dtype.bytes(per * plane) > limit {
        return Err(Error::Limit {
            what: format!("the stem's conv output ({c} x {plane} values)"),
            needed: bytes,
            limit,
            hint: "use a smaller batch size (--batch-size)",
        });
    }
    Ok(per as u32)
}
