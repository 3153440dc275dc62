//! The network as nodes in forward order: which nodes (stem, each block's layers, the
//! transitions between blocks, the head), the tensors of each block, and each node declared
//! by its builder ([`super::stem`], [`super::layers`]) on a shared [`Ctx`].

use crate::error::Result;
use crate::model::config::{DenseNetConfig, Stem};
use crate::model::layout::Layout;
use crate::model::memory::Category::{Activations, Gradients};
use crate::model::memory::{TensorId, TensorTable};
use crate::model::nodes::{Ctx, Indices, Mode, Node, Nodes, PlanTarget, Timeline};
use crate::model::{layers, stem};

/// Where a node sits in the forward order.
enum Kind {
    Stem,
    Layer(usize, usize),
    Transition(usize),
    Head,
}

impl Kind {
    fn name(&self) -> String {
        match self {
            Kind::Stem => "stem".into(),
            Kind::Layer(b, l) => format!("blocks.{b}.layers.{l}"),
            Kind::Transition(i) => format!("transitions.{i}"),
            Kind::Head => "head".into(),
        }
    }
}

/// Plans `cfg` at batch `n` for `mode`: nodes, timeline and tensors.
pub fn nodes(
    cfg: &DenseNetConfig,
    layout: &Layout,
    n: u32,
    mode: Mode,
    target: &PlanTarget,
) -> Result<Nodes> {
    let mut kinds = vec![Kind::Stem];
    for (b, block) in layout.blocks.iter().enumerate() {
        if b > 0 {
            kinds.push(Kind::Transition(b - 1));
        }
        kinds.extend((0..block.layers.len()).map(|l| Kind::Layer(b, l)));
    }
    kinds.push(Kind::Head);
    let imagenet = matches!(cfg.stem, Stem::ImageNet { .. });
    let skeleton: Vec<(String, usize)> = kinds
        .iter()
        .map(|k| {
            let bwd = match k {
                Kind::Stem if imagenet => 2,
                Kind::Transition(_) => 2,
                _ => 1,
            };
            (k.name(), bwd)
        })
        .collect();
    let mut index = Indices::default();
    for (i, k) in kinds.iter().enumerate() {
        match k {
            Kind::Transition(_) => index.transitions.push(i),
            Kind::Layer(_, 0) => index.first_layers.push(i),
            Kind::Head => index.head = i,
            _ => {}
        }
    }
    let mut ctx = Ctx {
        cfg,
        layout,
        n,
        mode,
        limits: target.limits,
        dtype: target.dtype,
        policy: &target.policy,
        timeline: Timeline::new(&skeleton, mode),
        tensors: TensorTable::default(),
        affine_len: 0,
        index,
    };
    let (blocks, block_grads) = block_tensors(&mut ctx);
    let mut list = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        list.push(match *k {
            Kind::Stem => Node::Stem(stem::stem(&mut ctx, i)?),
            Kind::Layer(b, l) => Node::Layer(layers::layer(&mut ctx, i, b, l)?),
            Kind::Transition(t) => Node::Transition(layers::transition(&mut ctx, i, t)?),
            Kind::Head => Node::Head(layers::head(&mut ctx, i)?),
        });
    }
    Ok(Nodes {
        list,
        timeline: ctx.timeline,
        tensors: ctx.tensors,
        blocks,
        block_grads,
        affine_len: ctx.affine_len,
        mode,
    })
}

/// Each block's activations, live from the node that writes its first channels (the stem
/// or the transition before it) to its first layer's backward (evaluation: to the node
/// after the block), and their gradients, live from the backward of the node after the
/// block to the backward of the node before it.
fn block_tensors(ctx: &mut Ctx<'_>) -> (Vec<TensorId>, Vec<Option<TensorId>>) {
    let (mut acts, mut grads) = (Vec::new(), Vec::new());
    for (b, block) in ctx.layout.blocks.iter().enumerate() {
        let shape = ctx.chw(block.shape.c_out, block.shape.size);
        let producer = match b {
            0 => 0,
            _ => ctx.index.transitions[b - 1],
        };
        let consumer = ctx
            .index
            .transitions
            .get(b)
            .copied()
            .unwrap_or(ctx.index.head);
        let t = &ctx.timeline;
        let live = match ctx.mode {
            Mode::Train => (t.fwd(producer), t.bwd(ctx.index.first_layers[b], 0)),
            Mode::Eval => (t.fwd(producer), t.fwd(consumer)),
        };
        let grad_live =
            (ctx.mode == Mode::Train).then(|| (t.last_bwd(consumer), t.bwd(producer, 0)));
        acts.push(ctx.tensor(format!("blocks.{b}"), &shape, Activations, live));
        grads.push(
            grad_live.map(|live| ctx.tensor(format!("blocks.{b}.grad"), &shape, Gradients, live)),
        );
    }
    (acts, grads)
}
