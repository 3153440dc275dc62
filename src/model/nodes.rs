//! The network as nodes (stem, dense layers, transitions, head) with every op's params
//! computed once from the layout, and the scratch each node needs.
//!
//! Scratch (shared by all nodes): `t` (a BN -> ReLU output where no conv can apply it while
//! loading: before pools and the head), `d` (the gradient of a conv input), `e` (a pooled
//! transition input, or the stem's output gradient), the conv workspace and the weight
//! gradients' partial sums.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::config::{DenseNetConfig, Stem};
use crate::model::layout::{BnSlots, ConvSlots, Layout, SlotId};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::conv2d::Conv2dParams;
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::global_avgpool::GlobalAvgPoolParams;
use crate::ops::linear::LinearParams;
use crate::ops::maxpool::Pool2dParams;

/// Elements the shared scratch buffers must hold.
#[derive(Default, Clone, Copy)]
pub(super) struct Scratch {
    pub(super) t: u64,
    pub(super) d: u64,
    pub(super) e: u64,
    pub(super) workspace: u64,
    pub(super) partials: u64,
}

impl Scratch {
    pub(super) fn conv(&mut self, p: &Conv2dParams) {
        self.workspace = self.workspace.max(p.workspace_len());
        self.partials = self.partials.max(p.partials_len());
    }
}

/// Statistics of channels [c0, c0 + c) of a block buffer, computed when they are written.
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

/// BN -> ReLU over channels [0, c) of a block buffer.
pub(super) fn bn_relu_params(n: u32, size: u32, c: u32, stat: u32) -> Result<BatchNormParams> {
    Ok(BatchNormParams::new([n, c, size, size])?
        .with_stat_offset(stat)
        .with_relu(true))
}

pub(super) struct StemNode {
    pub(super) conv: ConvSlots,
    /// The ImageNet stem: BN slots, statistics slot, max-pool, and the output channel
    /// groups (more than one when the conv output exceeds the adapter's binding limit).
    pub(super) imagenet: Option<(BnSlots, SlotId, u32)>,
    /// Conv of one channel group (all channels when there is one group).
    pub(super) p: Conv2dParams,
    pub(super) channels: u32,
}

/// DenseNet-BC's 1x1 conv (into the block's bottleneck buffer) and the BN after it.
pub(super) struct BottleneckNode {
    pub(super) conv: Conv2dParams,
    pub(super) conv_slots: ConvSlots,
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    /// Where bn's (scale, shift) pairs live in the affine buffer.
    pub(super) affine: u64,
}

pub(super) struct LayerNode {
    pub(super) block: usize,
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    /// Where bn's (scale, shift) pairs live in the affine buffer.
    pub(super) affine: u64,
    pub(super) bottleneck: Option<BottleneckNode>,
    /// Reads its input through the BN -> ReLU before it (fused).
    pub(super) conv: Conv2dParams,
    pub(super) conv_slots: ConvSlots,
    /// Statistics of the k new channels.
    pub(super) new_stats: BatchNormParams,
}

pub(super) struct TransitionNode {
    pub(super) from: usize,
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    pub(super) pool: Pool2dParams,
    pub(super) conv: Conv2dParams,
    pub(super) conv_slots: ConvSlots,
    pub(super) next_stats: BatchNormParams,
}

pub(super) struct HeadNode {
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    pub(super) gap: GlobalAvgPoolParams,
    pub(super) linear: LinearParams,
    pub(super) weight: SlotId,
    pub(super) bias: SlotId,
    pub(super) ce: CrossEntropyParams,
}

pub(super) struct Nodes {
    pub(super) stem: StemNode,
    /// Elements of the buffer of fused BN (scale, shift) pairs.
    pub(super) affine_len: u64,
    pub(super) first_stats: BatchNormParams,
    pub(super) layers: Vec<LayerNode>,
    pub(super) transitions: Vec<TransitionNode>,
    pub(super) head: HeadNode,
}

/// Channels per group of the ImageNet stem: all of them, unless its conv output exceeds the
/// adapter's binding limit (d2l at batch 256 on a 128 MiB-binding adapter); then groups of
/// channels small enough, each bound as its own aligned range of the buffer.
pub(super) fn stem_group_channels(gpu: &Gpu, full: &Conv2dParams, limit: u64) -> Result<u32> {
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

pub(super) fn nodes(
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
    pub(super) fn scratch(&self) -> Scratch {
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
