//! The network as a list of nodes (stem, dense layers, transitions, head) in forward order,
//! with every op's params computed once from the layout, and every per-step tensor declared
//! with the stages in which it is live. Pure: no device is needed, so the memory of a plan
//! can be computed (and tested) anywhere.
//!
//! Stages of a training step: each node's forward, in order, then each node's backward
//! stages, nodes in reverse. Stems and transitions have two backward stages (their halves
//! need different temporaries, which may then share memory); layers and the head have one.

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{DType, Gpu};
use crate::kernels::Policy;
use crate::model::config::DenseNetConfig;
use crate::model::layout::{BnSlots, ConvSlots, Layout, SlotId};
use crate::model::memory::{Category, Stage, TensorId, TensorTable};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::conv2d::{self, Conv2dParams};
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::global_avgpool::GlobalAvgPoolParams;
use crate::ops::linear::LinearParams;
use crate::ops::maxpool::Pool2dParams;

use Category::Scratch;

/// What a plan is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Forward, loss, backward and SGD (and the evaluation forward, on the same buffers).
    Train,
    /// The evaluation forward only: no gradients, no batch statistics, no optimizer state.
    Eval,
}

/// The adapter facts a plan's layout depends on.
#[derive(Clone, Copy, Debug)]
pub struct PlanLimits {
    /// Storage offset alignment in bytes: views start on multiples of it.
    pub align_bytes: u64,
    /// The largest binding in bytes: larger tensors are processed in channel groups.
    pub max_binding: u64,
}

impl PlanLimits {
    pub fn of(gpu: &Gpu) -> PlanLimits {
        PlanLimits {
            align_bytes: gpu.limits.min_storage_buffer_offset_alignment as u64,
            max_binding: gpu.limits.max_storage_buffer_binding_size,
        }
    }

    /// The alignment in f32 elements (at least 1).
    pub fn align(&self) -> u64 {
        (self.align_bytes / 4).max(1)
    }
}

/// What a plan is built for besides the network: the adapter's limits, the element type of
/// activations, and the kernel policy (whose choice of implementations decides the
/// workspaces).
#[derive(Clone, Debug)]
pub struct PlanTarget {
    pub limits: PlanLimits,
    pub dtype: DType,
    pub policy: Policy,
}

/// The stages of a step, named for the memory report.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub names: Vec<String>,
    fwd: Vec<Stage>,
    bwd: Vec<Vec<Stage>>,
}

impl Timeline {
    /// `nodes`: each node's name and backward stage count, in forward order.
    pub(super) fn new(nodes: &[(String, usize)], mode: Mode) -> Timeline {
        let mut names: Vec<String> = nodes.iter().map(|(n, _)| format!("fwd {n}")).collect();
        let fwd = (0..nodes.len() as Stage).collect();
        let mut bwd = vec![Vec::new(); nodes.len()];
        if mode == Mode::Train {
            for (i, (name, count)) in nodes.iter().enumerate().rev() {
                for s in 0..*count {
                    bwd[i].push(names.len() as Stage);
                    names.push(match count {
                        1 => format!("bwd {name}"),
                        _ => format!("bwd {name} ({}/{count})", s + 1),
                    });
                }
            }
        }
        Timeline { names, fwd, bwd }
    }

    pub fn fwd(&self, node: usize) -> Stage {
        self.fwd[node]
    }

    /// Backward stage `stage` of `node` (training plans only).
    pub fn bwd(&self, node: usize, stage: usize) -> Stage {
        self.bwd[node][stage]
    }

    /// How many backward stages `node` has (none in an evaluation plan).
    pub fn bwd_stages(&self, node: usize) -> usize {
        self.bwd[node].len()
    }

    pub fn last_bwd(&self, node: usize) -> Stage {
        *self.bwd[node].last().expect("a training plan")
    }
}

/// Training-only tensors of a conv: the split-K partial sums of the weight gradient, and
/// what the chosen implementation packs (dy for the weight gradient, the weights for the
/// data gradient where the input needs one).
pub(super) struct ConvGrads {
    pub(super) packed_dy: Option<TensorId>,
    pub(super) partials: TensorId,
    pub(super) data_ws: Option<TensorId>,
}

/// One convolution: params, parameter slots, and its launches' workspaces.
pub(super) struct ConvCall {
    pub(super) p: Conv2dParams,
    pub(super) slots: ConvSlots,
    /// The packed weights of the forward, where the implementation packs them.
    pub(super) fwd_ws: Option<TensorId>,
    pub(super) grads: Option<ConvGrads>,
    /// Training computes the input's gradient.
    pub(super) dx: bool,
}

/// The ImageNet stem's BN -> ReLU -> max-pool after its conv.
pub(super) struct ImageNetStem {
    pub(super) bn: BnSlots,
    pub(super) stat: u32,
    /// (C0, N, H/2, W/2) the conv output.
    pub(super) conv_out: TensorId,
    /// Training: (C0, N, H/4, W/4) u32 max-pool argmax, (group, N, H/2, W/2) the gradient of
    /// the BN -> ReLU output, (C0, N, H/2, W/2) the gradient of the conv output.
    pub(super) argmax: Option<TensorId>,
    pub(super) dpool: Option<TensorId>,
    pub(super) dconv: Option<TensorId>,
}

pub(super) struct StemNode {
    /// The conv of one channel group (all channels when there is one group: more only when
    /// the conv output exceeds the adapter's binding limit).
    pub(super) conv: ConvCall,
    pub(super) channels: u32,
    pub(super) imagenet: Option<ImageNetStem>,
    /// Training: statistics of block 0's first channels, which the stem writes.
    pub(super) first_stats: Option<BatchNormParams>,
}

/// DenseNet-BC's 1x1 conv into the layer's bottleneck tensor and the BN after it.
pub(super) struct BottleneckNode {
    pub(super) conv: ConvCall,
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    /// Where bn's (scale, shift) pairs live in the affine buffer.
    pub(super) affine: u64,
    /// (width, N, S, S), and its gradient (training).
    pub(super) out: TensorId,
    pub(super) grad: Option<TensorId>,
}

pub(super) struct LayerNode {
    pub(super) block: usize,
    /// BN -> ReLU of the block's channels [0, c_in), applied by the conv after it.
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    /// Where the BN's own running statistics start (`layer_stats`), else it uses the block's.
    pub(super) own: Option<u32>,
    pub(super) affine: u64,
    pub(super) bottleneck: Option<BottleneckNode>,
    /// The 3x3 conv, writing the layer's k channels in place at c_in.
    pub(super) conv: ConvCall,
    /// Training: statistics of the k new channels, and the gradient of a conv input.
    pub(super) new_stats: Option<BatchNormParams>,
    pub(super) dinput: Option<TensorId>,
}

pub(super) struct TransitionNode {
    pub(super) from: usize,
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    pub(super) own: Option<u32>,
    /// BN -> ReLU -> 2x2 average pool (fused), then the 1x1 conv: both are linear per pixel
    /// after the ReLU, so the order does not change the result, and the conv runs on a
    /// quarter of the pixels.
    pub(super) pool: Pool2dParams,
    pub(super) conv: ConvCall,
    pub(super) next_stats: Option<BatchNormParams>,
    /// (C, N, S/2, S/2) the pooled input of the conv; training recomputes it in its backward
    /// (a tensor of its own, so nothing this size lives from forward to backward), and needs
    /// its gradient and the gradient of the BN -> ReLU output (C, N, S, S).
    pub(super) pooled: TensorId,
    pub(super) pooled_again: Option<TensorId>,
    pub(super) dpooled: Option<TensorId>,
    pub(super) dbn: Option<TensorId>,
}

pub(super) struct HeadNode {
    pub(super) bn: BatchNormParams,
    pub(super) bn_slots: BnSlots,
    pub(super) own: Option<u32>,
    pub(super) gap: GlobalAvgPoolParams,
    pub(super) linear: LinearParams,
    pub(super) weight: SlotId,
    pub(super) bias: SlotId,
    pub(super) ce: CrossEntropyParams,
    /// Multi-label: sigmoid cross-entropy with per-label positive weights.
    pub(super) multi_label: bool,
    /// (C, N) pooled features; (N, K) the loss gradient the loss kernel writes.
    pub(super) features: TensorId,
    pub(super) dlogits: TensorId,
    /// Training: (C, N) and (C, N, S, S) the gradients of the features and of the BN output.
    pub(super) dfeatures: Option<TensorId>,
    pub(super) dbn: Option<TensorId>,
}

pub(super) enum Node {
    Stem(StemNode),
    Layer(LayerNode),
    Transition(TransitionNode),
    Head(HeadNode),
}

/// The network as nodes, with its timeline and per-step tensors.
pub struct Nodes {
    pub(super) list: Vec<Node>,
    pub timeline: Timeline,
    pub tensors: TensorTable,
    /// (C_out, N, S, S) each dense block, and its gradient (training).
    pub(super) blocks: Vec<TensorId>,
    pub(super) block_grads: Vec<Option<TensorId>>,
    /// Elements of the buffer of fused BN (scale, shift) pairs.
    pub affine_len: u64,
    pub mode: Mode,
}

impl Nodes {
    /// Every convolution launch of a step (training: the forward, weight and data
    /// gradients; evaluation: the forward): params and direction, in step order, each
    /// distinct shape once. What the tuner times.
    pub fn conv_launches(&self) -> Vec<(Conv2dParams, conv2d::Direction)> {
        use conv2d::Direction::{Data, Forward, Weight};
        let mut out: Vec<(Conv2dParams, conv2d::Direction)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for node in &self.list {
            let convs: Vec<&ConvCall> = match node {
                Node::Stem(s) => vec![&s.conv],
                Node::Layer(l) => l
                    .bottleneck
                    .iter()
                    .map(|b| &b.conv)
                    .chain([&l.conv])
                    .collect(),
                Node::Transition(t) => vec![&t.conv],
                Node::Head(_) => vec![],
            };
            for c in convs {
                let train = c.grads.is_some();
                let dirs = [(Forward, true), (Weight, train), (Data, train && c.dx)];
                for (dir, used) in dirs {
                    if used && seen.insert(c.p.launch_key(dir, DType::F32)) {
                        out.push((c.p, dir));
                    }
                }
            }
        }
        out
    }
}

impl Nodes {
    /// Every batch norm backward of a training step (none in evaluation), each distinct
    /// shape once, in step order. What the tuner times besides the convolutions.
    pub fn bn_backward_launches(&self) -> Result<Vec<BatchNormParams>> {
        let mut out: Vec<BatchNormParams> = Vec::new();
        if self.mode != Mode::Train {
            return Ok(out);
        }
        for node in &self.list {
            let bns: Vec<BatchNormParams> = match node {
                Node::Stem(s) if s.imagenet.is_some() => {
                    s.groups()?.into_iter().map(|g| g.bn).collect()
                }
                Node::Stem(_) => vec![],
                Node::Layer(l) => l.bottleneck.iter().map(|b| b.bn).chain([l.bn]).collect(),
                Node::Transition(t) => vec![t.bn],
                Node::Head(h) => vec![h.bn],
            };
            for p in bns {
                let key = crate::ops::batchnorm::backward_key(&p, DType::F32);
                if !out
                    .iter()
                    .any(|q| crate::ops::batchnorm::backward_key(q, DType::F32) == key)
                {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }
}

/// The state of the build: what every node needs to declare itself.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a DenseNetConfig,
    pub(super) layout: &'a Layout,
    pub(super) n: u32,
    pub(super) mode: Mode,
    pub(super) limits: PlanLimits,
    pub(super) dtype: DType,
    pub(super) policy: &'a Policy,
    pub(super) timeline: Timeline,
    pub(super) tensors: TensorTable,
    pub(super) affine_len: u64,
    /// Node index of the stem, each transition, the head and each block's first layer.
    pub(super) index: Indices,
}

#[derive(Default)]
pub(super) struct Indices {
    pub(super) transitions: Vec<usize>,
    pub(super) first_layers: Vec<usize>,
    pub(super) head: usize,
}

impl Ctx<'_> {
    pub(super) fn train(&self) -> bool {
        self.mode == Mode::Train
    }

    /// Declares a tensor: activations and their gradients of the plan's element type,
    /// scratch (partial sums, packed operands) in f32, as the kernels keep them.
    pub(super) fn tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        category: Category,
        live: (Stage, Stage),
    ) -> TensorId {
        let dtype = match category {
            Scratch => DType::F32,
            _ => self.dtype,
        };
        self.tensors.add(name, shape, dtype, category, live)
    }

    pub(super) fn stat(&self, slot: SlotId) -> u32 {
        self.layout.stats.slots[slot].offset as u32
    }

    /// An aligned slot of 2 * c values in the affine buffer (so it binds as a view).
    pub(super) fn affine_slot(&mut self, c: u32) -> u64 {
        let at = self.affine_len.next_multiple_of(self.limits.align());
        self.affine_len = at + 2 * c as u64;
        at
    }

    /// A conv of node `node` and its workspaces: the forward's in its forward stage, the
    /// gradients' in backward stage `bwd` (training; `dx`: the input needs a gradient).
    pub(super) fn conv(
        &mut self,
        name: &str,
        p: Conv2dParams,
        slots: ConvSlots,
        node: usize,
        bwd: usize,
        dx: bool,
    ) -> ConvCall {
        let ws = conv2d::workspace(self.policy, &p, self.dtype);
        let f = self.timeline.fwd(node);
        let scratch = |ctx: &mut Self, what: &str, len: u64, stage: Stage| {
            (len > 0).then(|| ctx.tensor(format!("{name}.{what}"), &[len], Scratch, (stage, stage)))
        };
        let fwd_ws = scratch(self, "packed_weight", ws.forward, f);
        let grads = self.train().then(|| {
            let b = self.timeline.bwd(node, bwd);
            let partials = &[ws.partials];
            // The packed dy is a copy of dy, so of the activations' type.
            let packed_dy = (ws.packed_dy > 0).then(|| {
                let (name, dtype) = (format!("{name}.packed_dy"), self.dtype);
                self.tensors
                    .add(name, &[ws.packed_dy], dtype, Scratch, (b, b))
            });
            ConvGrads {
                packed_dy,
                partials: self.tensor(format!("{name}.weight_partials"), partials, Scratch, (b, b)),
                data_ws: scratch(self, "packed_weight_t", if dx { ws.data } else { 0 }, b),
            }
        });
        ConvCall {
            p,
            slots,
            fwd_ws,
            grads,
            dx,
        }
    }

    /// (C, N, S, S) for `c` channels of size `s`.
    pub(super) fn chw(&self, c: u32, s: u32) -> [u64; 4] {
        [c as u64, self.n as u64, s as u64, s as u64]
    }
}

/// One channel group of the ImageNet stem: its conv params and first channel, the pool and
/// the BN (statistics at `stat + g0`) over its channels.
pub(super) struct Group {
    pub(super) g0: u32,
    pub(super) conv: Conv2dParams,
    pub(super) pool: Pool2dParams,
    pub(super) bn: BatchNormParams,
}

impl StemNode {
    /// The ImageNet stem's channel groups (it runs in groups so that each group's conv
    /// output, before the pool, stays small).
    pub(super) fn groups(&self) -> Result<Vec<Group>> {
        let node = self;
        let inet = node.imagenet.as_ref().expect("an ImageNet stem");
        let full = &node.conv.p;
        let per = full.c_out;
        let mut out = Vec::new();
        let mut g0 = 0;
        while g0 < node.channels {
            let gc = per.min(node.channels - g0);
            let size = full.out_h;
            out.push(Group {
                g0,
                conv: Conv2dParams { c_out: gc, ..*full },
                pool: Pool2dParams::new([full.n, gc, size, size], (3, 3), (2, 2), (1, 1))?
                    .with_y_channel_offset(g0),
                bn: BatchNormParams::new([full.n, gc, size, size])?
                    .with_stat_offset(inet.stat + g0)
                    .with_relu(true),
            });
            g0 += gc;
        }
        Ok(out)
    }
}
