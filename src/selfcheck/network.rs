//! The self-check of every kernel with a single implementation, through a whole network: one
//! training step (with momentum, Nesterov, weight decay and gradient clipping; in f16 with a
//! loss scale) and one evaluation of a small DenseNet with a transition (average pool), and as
//! [`Net`] says an ImageNet stem (max pool), bottlenecks and conv biases, against the
//! reference network. The
//! convolutions and batch norms run in configurations that passed their own check, so what
//! fails here is one of the other kernels.

use super::compare::Tol;
use super::{f16_rounded, Net, Row};
use crate::error::Result;
use crate::gpu::DType;
use crate::kernels::{Config, Kernels, Policy};
use crate::model::reference_net::{reference_eval, reference_step};
use crate::model::{DenseNetConfig, Init, Layout, Plan, SgdConfig, Stem};
use crate::ops::loss_scale::LossScaleState;
use crate::ops::sgd::SgdParams;
use crate::reference as cpu;

const SEED: u64 = 0x2e7_c4ec;
const BATCH: u32 = 4;
/// f16 runs scale the loss by this (a power of two: unscaling is exact).
const LOSS_SCALE: f32 = 256.0;

const OPT: SgdConfig = SgdConfig {
    lr: 0.05,
    momentum: 0.9,
    weight_decay: 1e-3,
    nesterov: true,
    // Far below this step's gradient norm: the clipping factor matters.
    clip_norm: Some(1e-2),
    adam: None,
};

/// Two blocks of two layers, a transition between them, shaped as `net` says.
fn config(net: Net) -> DenseNetConfig {
    DenseNetConfig {
        in_channels: 2,
        image_size: if net.imagenet_stem { 16 } else { 8 },
        classes: 5,
        stem: match net.imagenet_stem {
            true => Stem::ImageNet { channels: 4 },
            false => Stem::Cifar { channels: 4 },
        },
        blocks: vec![2, 2],
        growth_rate: 3,
        bottleneck: net.bottleneck.then_some(2),
        compression: 0.5,
        conv_bias: net.conv_bias,
        init: Init::KaimingNormal,
        layer_stats: false,
        multi_label: false,
    }
}

pub(super) fn check(
    k: &Kernels,
    dtype: DType,
    net: Net,
    (conv, bn): (Config, Config),
) -> Result<Vec<Row>> {
    let spec = format!("conv2d={},batchnorm={}", conv.name(), bn.name());
    let k = &k.with_policy(Policy::parse(&spec, k.policy().class, crate::ops::SHADERS)?);
    let gpu = k.gpu();
    let cfg = config(net);
    let plan = Plan::train_in(k, &cfg, BATCH, OPT, dtype)?;
    let params = plan.layout.init_params_varied(Init::KaimingNormal, SEED);
    plan.write_params(gpu, &params)?;
    let scale = match dtype {
        DType::F16 => LOSS_SCALE,
        _ => 1.0,
    };
    if dtype == DType::F16 {
        let state = LossScaleState {
            scale,
            ..LossScaleState::initial()
        };
        plan.write_loss_scale(gpu, state)?;
    }
    let mut rng = fastrand::Rng::with_seed(SEED);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let x = match dtype {
        DType::F16 => f16_rounded(x),
        _ => x,
    };
    let labels: Vec<u32> = (0..BATCH).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(gpu, &x, &labels)?;
    plan.reset_metrics(gpu);
    plan.submit_train(gpu)?;
    let (loss_sum, _) = plan.read_metrics(gpu)?;
    let grads_buf = plan
        .buffers
        .grads
        .as_ref()
        .expect("a training plan has gradients");
    let grads: Vec<f32> = gpu
        .read_all::<f32>(grads_buf)?
        .iter()
        .map(|g| g / scale)
        .collect();
    let want = reference_step(&cfg, &plan.layout, &params, &x, &labels);

    // f16 stores activations and their gradients rounded: errors grow from the head to the
    // stem, so the loss and the gradients get a wider tolerance there (docs/DESIGN.md).
    let f16 = dtype == DType::F16;
    let loss = loss_sum / BATCH as f64;
    let loss_err = (loss - want.loss).abs() / want.loss.abs().max(1e-6);
    let loss_tol = if f16 { 1e-2 } else { 1e-4 };
    let mut rows = vec![
        row("network loss", loss_err, loss_tol),
        gradients(&plan.layout, &grads, &want.grads, f16),
    ];
    let updated: Vec<f32> = gpu.read_all(&plan.buffers.params)?;
    rows.push(update(&params, &grads, &updated)?);
    rows.push(evaluation(
        k,
        (&cfg, &plan, dtype),
        &updated,
        (&x, &labels),
    )?);
    Ok(rows)
}

/// The SGD step (clipping, momentum, Nesterov, weight decay) from the gradients the step
/// computed, so that only the update is judged: `updated` against the reference optimizer.
fn update(params: &[f32], grads: &[f32], updated: &[f32]) -> Result<Row> {
    let norm = grads
        .iter()
        .map(|g| *g as f64 * *g as f64)
        .sum::<f64>()
        .sqrt();
    let factor = OPT
        .clip_norm
        .map_or(1.0, |max| (max as f64 / (norm + 1e-6)).min(1.0)) as f32;
    let clipped: Vec<f32> = grads.iter().map(|g| g * factor).collect();
    let n = params.len() as u32;
    let sp = SgdParams::new(n, OPT.lr, OPT.momentum, OPT.weight_decay, OPT.nesterov)?;
    let (mut want, mut velocity) = (params.to_vec(), vec![0f32; params.len()]);
    cpu::sgd_update(&mut want, &clipped, &mut velocity, &sp);
    // The update moves each parameter by lr times the gradient terms: compared at that scale.
    let step = OPT.lr as f64 * clipped.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let tol = Tol::new(1e-3 * step.max(1e-12), 1e-6);
    Ok(Row::compare(
        "network sgd_update".into(),
        updated,
        &want,
        tol,
    ))
}

/// An evaluation plan with the step's updated parameters and running statistics: its
/// logits against the reference network's.
fn evaluation(
    k: &Kernels,
    (cfg, plan, dtype): (&DenseNetConfig, &Plan, DType),
    updated: &[f32],
    (x, labels): (&[f32], &[u32]),
) -> Result<Row> {
    let gpu = k.gpu();
    let rm: Vec<f32> = gpu.read_all(&plan.buffers.running_mean)?;
    let rv: Vec<f32> = gpu.read_all(&plan.buffers.running_var)?;
    let (_, _, want) = reference_eval(cfg, &plan.layout, updated, (&rm, &rv), x, labels);
    let eval = Plan::eval_in(k, cfg, BATCH, dtype)?;
    eval.write_params(gpu, updated)?;
    gpu.write(&eval.buffers.running_mean, &rm)?;
    gpu.write(&eval.buffers.running_var, &rv)?;
    eval.upload(gpu, x, labels)?;
    eval.reset_metrics(gpu);
    eval.submit_eval(gpu);
    let got = eval.read_logits(gpu)?;
    let largest = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let tol = match dtype {
        DType::F16 => Tol::new(1e-2 * largest, 1e-2),
        _ => Tol::new(1e-4, 1e-3),
    };
    Ok(Row::compare(
        "network evaluation logits".into(),
        &got,
        &want,
        tol,
    ))
}

/// Every parameter tensor's gradient, its largest difference relative to the tensor's
/// largest gradient (floored at 1e-3 of the network's: conv biases before a batch norm have
/// a true gradient of zero). f32 within 1e-3. f16, whose stored activation gradients lose
/// digits wherever batch norm's backward cancels: the classifier within 1e-2 and the whole
/// gradient's direction (cosine at least 0.95), as the f16 network tests judge it.
fn gradients(layout: &Layout, got: &[f32], want: &[f32], f16: bool) -> Row {
    let largest = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    let mut pass = true;
    for slot in &layout.params.slots {
        let r = slot.offset as usize..(slot.offset + slot.len) as usize;
        let (g, w) = (&got[r.clone()], &want[r]);
        let scale = w
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-3 * largest) as f64;
        let err = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0f64, f64::max)
            / scale;
        let err = if err.is_nan() { f64::INFINITY } else { err };
        let limit = match (f16, slot.name.starts_with("head.linear.")) {
            (false, _) => 1e-3,
            (true, true) => 1e-2,
            (true, false) => continue,
        };
        pass &= err <= limit;
        worst = worst.max(err);
    }
    if f16 {
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
        };
        let cos = dot(got, want) / (dot(got, got) * dot(want, want)).sqrt();
        pass &= cos >= 0.95;
        worst = worst.max(if cos.is_nan() {
            f64::INFINITY
        } else {
            1.0 - cos
        });
    }
    Row {
        kernel: "network gradients".into(),
        max_rel_err: worst,
        pass,
    }
}

fn row(kernel: &str, err: f64, limit: f64) -> Row {
    let err = if err.is_nan() { f64::INFINITY } else { err };
    Row {
        kernel: kernel.into(),
        max_rel_err: err,
        pass: err <= limit,
    }
}
