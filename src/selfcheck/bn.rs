//! The self-check of one batch-norm configuration: the training statistics with the running
//! update, and the backward with and without the fused ReLU, against the CPU reference, on
//! 6 channels of 3 x 5 x 7 values at channel offsets of larger buffers (as in a dense block).
//! The inputs sit around 3, so statistics that cancel would show.

use super::compare::Tol;
use super::{Inputs, Probe, Row};
use crate::error::Result;
use crate::gpu::DType;
use crate::kernels::{Config, Kernels};
use crate::ops::batchnorm::{self, BatchNormParams};
use crate::reference as cpu;

const X_CHANNELS: u64 = 9;
const DY_CHANNELS: u64 = 8;
const STATS: u64 = 10;

/// The rows of `config` in `dtype`.
pub(super) fn check(k: &Kernels, config: Config, dtype: DType) -> Result<Vec<Row>> {
    let base = BatchNormParams::new([3, 6, 5, 7])?
        .with_x_channel_offset(1)
        .with_y_channel_offset(2)
        .with_stat_offset(3);
    let m = base.m as u64;
    let mut inputs = Inputs::new(0xb47c_4a11, dtype);
    let x: Vec<f32> = inputs.act_around(X_CHANNELS * m, 3.0);
    let probe = Probe::new(k, dtype);
    let c = base.c as u64;
    let partials = probe.zeros("partials", batchnorm::partials_bound(base.c))?;
    let mut rows = Vec::new();

    // Statistics into NaN-filled arrays (other slots must stay NaN); the running update
    // from values already there.
    let (mut mean, mut var) = (
        vec![f32::NAN; STATS as usize],
        vec![f32::NAN; STATS as usize],
    );
    cpu::batchnorm_stats(&mut mean, &mut var, &x, &base);
    let running = [
        inputs.floats(STATS, -0.5, 0.5),
        inputs.floats(STATS, 0.5, 1.5),
    ];
    let (mut rm, mut rv) = (running[0].clone(), running[1].clone());
    cpu::batchnorm_update_running(&mut rm, &mut rv, &mean, &var, &base);
    let x_buf = probe.act("x", &x)?;
    let nan = vec![f32::NAN; STATS as usize];
    let outs = [
        probe.f32s("mean", &nan)?,
        probe.f32s("var", &nan)?,
        probe.f32s("running mean", &running[0])?,
        probe.f32s("running var", &running[1])?,
    ];
    let [mb, vb, rmb, rvb] = &outs;
    let views = [x_buf.view(), mb.view(), vb.view(), rmb.view(), rvb.view()];
    let d = batchnorm::stats_update_in(Some(config), k, &base, views, Some(partials.view()))?;
    probe.run(&d)?;
    // The statistics are f32 whatever the activations' type.
    for (what, buf, want) in [
        ("mean", mb, &mean),
        ("variance", vb, &var),
        ("running mean", rmb, &rm),
        ("running variance", rvb, &rv),
    ] {
        let got = probe.read(buf)?;
        rows.push(Row::compare(
            format!("batchnorm_stats {what}"),
            &got,
            want,
            Tol::FWD,
        ));
    }

    // Backward with the batch statistics, adding into values already there.
    let gamma = inputs.floats(c, 0.5, 1.5);
    let beta = inputs.floats(c, -0.5, 0.5);
    let dy = inputs.act(DY_CHANNELS * m);
    let stats = [probe.f32s("mean", &mean)?, probe.f32s("var", &var)?];
    // gamma and beta as a layout holds them: ranges of one buffer (so are their gradients).
    let params = probe.f32s("gamma beta", &[gamma.clone(), beta.clone()].concat())?;
    let dy_buf = probe.act("dy", &dy)?;
    for relu in [true, false] {
        let p = base.with_relu(relu);
        let dx0 = inputs.act(X_CHANNELS * m);
        let dgb0 = [inputs.floats(c, -0.5, 0.5), inputs.floats(c, -0.5, 0.5)];
        let (mut dx, mut dg, mut db) = (dx0.clone(), dgb0[0].clone(), dgb0[1].clone());
        let tail = format!(" ({})", if relu { "relu" } else { "no relu" });
        cpu::batchnorm_backward(
            &mut dx, &mut dg, &mut db, &dy, &x, &mean, &var, &gamma, &beta, &p,
        );
        let dx_buf = probe.act("dx", &dx0)?;
        let grads = probe.f32s("dgamma dbeta", &dgb0.concat())?;
        let views = [
            x_buf.view(),
            dy_buf.view(),
            stats[0].view(),
            stats[1].view(),
            params.slice(0, c),
            params.slice(c, c),
            dx_buf.view(),
            grads.slice(0, c),
            grads.slice(c, c),
        ];
        let d = batchnorm::backward_in(Some(config), k, &p, views, Some(partials.view()))?;
        let got = probe.run_and_read(&d, &dx_buf)?;
        let name = format!("batchnorm_backward dx{tail}");
        rows.push(Row::compare(name, &got, &dx, Tol::GRAD.stored_as(dtype)));
        let got = probe.read(&grads)?;
        let (got_dg, got_db) = got.split_at(c as usize);
        for (what, got, want) in [("dgamma", got_dg, &dg), ("dbeta", got_db, &db)] {
            let name = format!("batchnorm_backward {what}{tail}");
            rows.push(Row::compare(name, got, want, Tol::GRAD));
        }
    }
    Ok(rows)
}
