//! A DenseNet's training step on the CPU, written the plain way with the reference ops:
//! every dense layer concatenates by copying into a new buffer, every batch norm computes
//! its own statistics over its whole input, BN and ReLU are separate ops, and transitions
//! run the 1x1 conv before the pool (as PyTorch's DenseNet). The GPU plan does none of these
//! things the same way, so agreeing with this is the test of its in-place blocks, shared
//! statistics, fused BN-ReLU and reordered transitions.

use crate::model::config::DenseNetConfig;
use crate::model::layout::{BnSlots, ConvSlots, Layout, SlotId};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::concat::ConcatParams;
use crate::ops::conv2d::Conv2dParams;
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::global_avgpool::GlobalAvgPoolParams;
use crate::ops::linear::LinearParams;
use crate::ops::maxpool::Pool2dParams;
use crate::ops::relu::ReluParams;
use crate::reference as cpu;

/// An activation: (C, N, H, W) values and its shape.
#[derive(Clone)]
struct Act {
    v: Vec<f32>,
    c: u32,
    size: u32,
}

/// What the backward of one op needs, saved by the forward (llm.c style).
enum Saved {
    /// BN then ReLU: input, ReLU output, batch statistics.
    BnRelu {
        x: Act,
        out: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        slots: BnSlots,
    },
    Conv {
        x: Act,
        p: Conv2dParams,
        slots: ConvSlots,
    },
    /// The layer's new channels were appended to an input of c_in channels.
    Concat {
        c_in: u32,
        k: u32,
        size: u32,
    },
    MaxPool {
        p: Pool2dParams,
        argmax: Vec<u32>,
    },
    AvgPool {
        p: Pool2dParams,
    },
    /// Where a dense layer starts: its input also flows around the layer into the
    /// concatenation, so here that part of the gradient joins the part through the layer.
    Branch,
}

/// The loss and the gradient of every parameter (arena layout) of one training step, and
/// the batch statistics it normalized with (statistics arena layout).
pub struct ReferenceStep {
    pub loss: f64,
    pub correct: u32,
    pub logits: Vec<f32>,
    pub grads: Vec<f32>,
    pub batch_mean: Vec<f32>,
    pub batch_var: Vec<f32>,
}

struct Net<'a> {
    layout: &'a Layout,
    params: &'a [f32],
    n: u32,
    tape: Vec<Saved>,
    /// Evaluation: normalize with these (running mean, running variance), statistics arena.
    running: Option<(&'a [f32], &'a [f32])>,
    /// Training: the batch statistics each BN computed, written at its statistics offset.
    batch_mean: Vec<f32>,
    batch_var: Vec<f32>,
}

impl Net<'_> {
    fn slot(&self, s: SlotId) -> &[f32] {
        let sl = &self.layout.params.slots[s];
        &self.params[sl.offset as usize..][..sl.len as usize]
    }

    /// BN (its own batch statistics, or in evaluation the running ones at `stat`) -> ReLU.
    fn bn_relu(&mut self, x: Act, slots: BnSlots, stat: SlotId) -> Act {
        let p = BatchNormParams::new([self.n, x.c, x.size, x.size]).expect("valid shape");
        let at = self.layout.stats.slots[stat].offset as usize;
        let range = at..at + x.c as usize;
        let (mut mean, mut var) = (vec![0.0; x.c as usize], vec![0.0; x.c as usize]);
        match self.running {
            Some((rm, rv)) => {
                mean.copy_from_slice(&rm[range.clone()]);
                var.copy_from_slice(&rv[range]);
            }
            None => {
                cpu::batchnorm_stats(&mut mean, &mut var, &x.v, &p);
                self.batch_mean[range.clone()].copy_from_slice(&mean);
                self.batch_var[range].copy_from_slice(&var);
            }
        }
        let mut bn_out = vec![0.0; x.v.len()];
        let (g, b) = (self.slot(slots.gamma), self.slot(slots.beta));
        cpu::batchnorm_forward(&mut bn_out, &x.v, &mean, &var, g, b, &p);
        let mut out = vec![0.0; x.v.len()];
        cpu::relu_forward(&mut out, &bn_out, &ReluParams::new(x.v.len() as u32));
        let y = Act {
            v: out.clone(),
            c: x.c,
            size: x.size,
        };
        self.tape.push(Saved::BnRelu {
            x,
            out,
            mean,
            var,
            slots,
        });
        y
    }

    fn conv(&mut self, x: Act, slots: ConvSlots, k: u32, r: u32, stride: u32, pad: u32) -> Act {
        let input = [self.n, x.c, x.size, x.size];
        let p = Conv2dParams::new(
            input,
            k,
            (r, r),
            (stride, stride),
            (pad, pad),
            slots.bias.is_some(),
        )
        .expect("valid conv");
        let mut y = vec![0.0; p.y_len() as usize];
        let bias = slots.bias.map(|b| self.slot(b));
        cpu::conv2d_forward(&mut y, &x.v, self.slot(slots.weight), bias, &p);
        self.tape.push(Saved::Conv { x, p, slots });
        Act {
            v: y,
            c: k,
            size: p.out_h,
        }
    }

    fn concat(&mut self, x: Act, new: Act) -> Act {
        let total = x.c + new.c;
        let mut out = vec![0.0; (total as usize) * (x.v.len() / x.c as usize)];
        let shape = |a: &Act| [self.n, a.c, a.size, a.size];
        cpu::concat_forward(
            &mut out,
            &x.v,
            &ConcatParams::new(shape(&x), total, 0).expect("fits"),
        );
        cpu::concat_forward(
            &mut out,
            &new.v,
            &ConcatParams::new(shape(&new), total, x.c).expect("fits"),
        );
        self.tape.push(Saved::Concat {
            c_in: x.c,
            k: new.c,
            size: x.size,
        });
        Act {
            v: out,
            c: total,
            size: x.size,
        }
    }

    fn pool(&mut self, x: Act, max: bool) -> Act {
        let input = [self.n, x.c, x.size, x.size];
        let p = match max {
            true => Pool2dParams::new(input, (3, 3), (2, 2), (1, 1)),
            false => Pool2dParams::new(input, (2, 2), (2, 2), (0, 0)),
        }
        .expect("valid pool");
        let mut y = vec![0.0; p.y_len() as usize];
        if max {
            let mut argmax = vec![0u32; p.y_len() as usize];
            cpu::maxpool_forward(&mut y, &mut argmax, &x.v, &p);
            self.tape.push(Saved::MaxPool { p, argmax });
        } else {
            cpu::avgpool_forward(&mut y, &x.v, &p);
            self.tape.push(Saved::AvgPool { p });
        }
        Act {
            v: y,
            c: x.c,
            size: p.out_h,
        }
    }
}

/// The forward to the logits; `running`: evaluation with these statistics.
fn forward<'a>(
    cfg: &DenseNetConfig,
    layout: &'a Layout,
    params: &'a [f32],
    x: &[f32],
    n: u32,
    running: Option<(&'a [f32], &'a [f32])>,
) -> (Net<'a>, Act) {
    let stats = layout.stats.len as usize;
    let mut net = Net {
        layout,
        params,
        n,
        tape: Vec::new(),
        running,
        batch_mean: vec![0.0; stats],
        batch_var: vec![0.0; stats],
    };
    let input = Act {
        v: x.to_vec(),
        c: cfg.in_channels,
        size: cfg.image_size,
    };
    let c0 = cfg.stem.channels();
    let mut cur = match layout.stem.bn {
        Some((bn, stat)) => {
            let s = net.conv(input, layout.stem.conv, c0, 7, 2, 3);
            let s = net.bn_relu(s, bn, stat);
            net.pool(s, true)
        }
        None => net.conv(input, layout.stem.conv, c0, 3, 1, 1),
    };
    for (bi, block) in layout.blocks.iter().enumerate() {
        if bi > 0 {
            let tr = layout.transitions[bi - 1];
            let t = net.bn_relu(cur, tr.bn, layout.blocks[bi - 1].stats);
            let t = net.conv(t, tr.conv, tr.c_out, 1, 1, 0);
            cur = net.pool(t, false);
        }
        for l in &block.layers {
            net.tape.push(Saved::Branch);
            let mut h = net.bn_relu(cur.clone(), l.bn, block.stats);
            if let Some(bt) = l.bottleneck {
                h = net.conv(h, bt.conv, bt.width, 1, 1, 0);
                h = net.bn_relu(h, bt.bn, bt.stats);
            }
            let new = net.conv(h, l.conv, cfg.growth_rate, 3, 1, 1);
            cur = net.concat(cur, new);
        }
    }
    let last = layout.blocks.last().expect("a block").stats;
    let h = net.bn_relu(cur, layout.head.bn, last);
    (net, h)
}

/// The head after the last BN -> ReLU: pooled features, logits.
fn head(cfg: &DenseNetConfig, net: &Net<'_>, h: &Act) -> (Vec<f32>, Vec<f32>) {
    let n = net.n;
    let gp = GlobalAvgPoolParams::new([n, h.c, h.size, h.size]).expect("valid pool");
    let mut feat = vec![0.0; gp.y_len() as usize];
    cpu::global_avgpool_forward(&mut feat, &h.v, &gp);
    let lp = LinearParams::new(n, h.c, cfg.classes, true).expect("valid linear");
    let mut logits = vec![0.0; lp.y_len() as usize];
    let head = net.layout.head;
    let (w, b) = (net.slot(head.weight), net.slot(head.bias));
    cpu::linear_forward(&mut logits, &feat, w, Some(b), &lp);
    (feat, logits)
}

/// An evaluation pass: (mean loss, correct predictions, logits (N, classes)) with the
/// running statistics `running` (statistics arena layout).
pub fn reference_eval(
    cfg: &DenseNetConfig,
    layout: &Layout,
    params: &[f32],
    running: (&[f32], &[f32]),
    x: &[f32],
    labels: &[u32],
) -> (f64, u32, Vec<f32>) {
    let n = labels.len() as u32;
    let (net, h) = forward(cfg, layout, params, x, n, Some(running));
    let (_, logits) = head(cfg, &net, &h);
    let ce = CrossEntropyParams::new(n, cfg.classes).expect("valid loss");
    let mut dlogits = vec![0.0; logits.len()];
    let (loss_sum, correct) = cpu::softmax_cross_entropy(&mut dlogits, &logits, labels, &ce);
    let valid = labels.iter().filter(|&&l| l < cfg.classes).count().max(1);
    (loss_sum as f64 / valid as f64, correct, logits)
}

/// One training step's loss and parameter gradients for `params` (arena layout of
/// `layout`) on the batch `x` (C, N, H, W), `labels` (N).
pub fn reference_step(
    cfg: &DenseNetConfig,
    layout: &Layout,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
) -> ReferenceStep {
    let n = labels.len() as u32;
    let (mut net, h) = forward(cfg, layout, params, x, n, None);
    let (feat, logits) = head(cfg, &net, &h);
    let head = layout.head;
    let w = net.slot(head.weight).to_vec();
    let gp = GlobalAvgPoolParams::new([n, h.c, h.size, h.size]).expect("valid pool");
    let lp = LinearParams::new(n, h.c, cfg.classes, true).expect("valid linear");
    let ce = CrossEntropyParams::new(n, cfg.classes).expect("valid loss");
    let mut dlogits = vec![0.0; logits.len()];
    let (loss_sum, correct) = cpu::softmax_cross_entropy(&mut dlogits, &logits, labels, &ce);
    let valid = labels.iter().filter(|&&l| l < cfg.classes).count().max(1);

    // Backward: the head, then the tape in reverse.
    let mut grads = vec![0f32; params.len()];
    let range = |s: SlotId| -> std::ops::Range<usize> {
        let sl = &layout.params.slots[s];
        sl.offset as usize..(sl.offset + sl.len) as usize
    };
    let mut dfeat = vec![0.0; feat.len()];
    cpu::linear_backward_data(&mut dfeat, &dlogits, &w, &lp);
    let r = range(head.weight);
    cpu::linear_backward_weight(&mut grads[r], &feat, &dlogits, &lp);
    let r = range(head.bias);
    cpu::linear_backward_bias(&mut grads[r], &dlogits, &lp);
    let mut dcur = vec![0.0; h.v.len()];
    cpu::global_avgpool_backward(&mut dcur, &dfeat, &gp);

    backward(&mut net, dcur, &mut grads);
    ReferenceStep {
        loss: loss_sum as f64 / valid as f64,
        correct,
        logits,
        grads,
        batch_mean: net.batch_mean,
        batch_var: net.batch_var,
    }
}

/// Walks the tape in reverse from `dcur`, the gradient of the last BN -> ReLU's output,
/// adding every parameter's gradient into `grads` (arena layout).
fn backward(net: &mut Net<'_>, mut dcur: Vec<f32>, grads: &mut [f32]) {
    let (layout, n) = (net.layout, net.n);
    let range = |s: SlotId| -> std::ops::Range<usize> {
        let sl = &layout.params.slots[s];
        sl.offset as usize..(sl.offset + sl.len) as usize
    };
    // Gradients of layer inputs that went around the layer, waiting for its Branch.
    let mut pending: Vec<Vec<f32>> = Vec::new();
    while let Some(saved) = net.tape.pop() {
        dcur = match saved {
            Saved::BnRelu {
                x,
                out,
                mean,
                var,
                slots,
            } => {
                let mut dbn = vec![0.0; out.len()];
                cpu::relu_backward(&mut dbn, &out, &dcur, &ReluParams::new(out.len() as u32));
                let p = BatchNormParams::new([n, x.c, x.size, x.size]).expect("valid shape");
                let mut dx = vec![0.0; x.v.len()];
                let (g, b) = (
                    net.slot(slots.gamma).to_vec(),
                    net.slot(slots.beta).to_vec(),
                );
                let (rg, rb) = (range(slots.gamma), range(slots.beta));
                let (mut dg, mut db) = (grads[rg.clone()].to_vec(), grads[rb.clone()].to_vec());
                cpu::batchnorm_backward(
                    &mut dx, &mut dg, &mut db, &dbn, &x.v, &mean, &var, &g, &b, &p,
                );
                grads[rg].copy_from_slice(&dg);
                grads[rb].copy_from_slice(&db);
                dx
            }
            Saved::Conv { x, p, slots } => {
                let r = range(slots.weight);
                cpu::conv2d_backward_weight(&mut grads[r], &x.v, &dcur, &p);
                if let Some(b) = slots.bias {
                    let r = range(b);
                    cpu::conv2d_backward_bias(&mut grads[r], &dcur, &p);
                }
                let mut dx = vec![0.0; x.v.len()];
                cpu::conv2d_backward_data(&mut dx, &dcur, net.slot(slots.weight), &p);
                dx
            }
            Saved::Concat { c_in, k, size } => {
                // The gradient splits into the new channels' part, which flows back through
                // the layer (the next entries of the tape), and the input's part, which waits
                // for the layer's Branch.
                let total = c_in + k;
                let plane = n * size * size;
                let mut dnew = vec![0.0; (k * plane) as usize];
                let pn = ConcatParams::new([n, k, size, size], total, c_in).expect("fits");
                cpu::concat_backward(&mut dnew, &dcur, &pn);
                let mut dold = vec![0.0; (c_in * plane) as usize];
                let po = ConcatParams::new([n, c_in, size, size], total, 0).expect("fits");
                cpu::concat_backward(&mut dold, &dcur, &po);
                pending.push(dold);
                dnew
            }
            Saved::MaxPool { p, argmax } => {
                let mut dx = vec![0.0; p.x_len() as usize];
                cpu::maxpool_backward(&mut dx, &dcur, &argmax, &p);
                dx
            }
            Saved::AvgPool { p } => {
                let mut dx = vec![0.0; p.x_len() as usize];
                cpu::avgpool_backward(&mut dx, &dcur, &p);
                dx
            }
            Saved::Branch => {
                let around = pending.pop().expect("a concatenation after every branch");
                dcur.iter().zip(&around).map(|(a, b)| a + b).collect()
            }
        };
    }
}
