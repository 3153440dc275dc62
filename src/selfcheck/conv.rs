//! The self-check of one convolution configuration: its forward, data gradient and weight
//! gradient at two small uneven shapes against the CPU reference.
//!
//! - A: 13 -> 10 channels, 7x7, 3x3 stride 1 pad 1, with bias and the fused BN -> ReLU on the
//!   input, x and y at channel offsets of larger buffers (as in a dense block); the
//!   gradients add into buffers that already hold values.
//! - B: 5 -> 17 channels, 9x9, 3x3 stride 2 no padding; the data gradient overwrites a
//!   buffer of NaNs.
//!
//! Every element outside the output's range must keep its value (a stray write fails).

use super::compare::Tol;
use super::{Inputs, Probe, Row};
use crate::error::Result;
use crate::gpu::DType;
use crate::kernels::{Config, Kernels, Needs};
use crate::ops::conv2d::{self, Conv2dParams};
use crate::reference as cpu;

struct Shape {
    params: Conv2dParams,
    /// Channels of x's and y's buffers (the op's own start at its offsets).
    x_channels: u32,
    y_channels: u32,
    fused_bn: bool,
    /// The data gradient overwrites (a fresh dx) instead of adding.
    overwrite: bool,
}

fn shapes() -> Result<[Shape; 2]> {
    let a = Conv2dParams::new([3, 13, 7, 7], 10, (3, 3), (1, 1), (1, 1), true)?
        .with_x_channel_offset(2)
        .with_y_channel_offset(3);
    let b = Conv2dParams::new([2, 5, 9, 9], 17, (3, 3), (2, 2), (0, 0), false)?;
    Ok([
        Shape {
            params: a,
            x_channels: 15,
            y_channels: 14,
            fused_bn: true,
            overwrite: false,
        },
        Shape {
            params: b,
            x_channels: 5,
            y_channels: 17,
            fused_bn: false,
            overwrite: true,
        },
    ])
}

/// The rows of `config` in `dtype`: each direction at each shape.
pub(super) fn check(k: &Kernels, config: Config, dtype: DType) -> Result<Vec<Row>> {
    // Cooperative-matrix variants multiply f16 operands: the reference gets the same
    // rounded operands, and the tolerance their f32 sums in another order.
    let f16_operands = matches!(config.variant.needs, Needs::CoopMatrix { .. });
    let tol = |t: Tol| match f16_operands {
        true => t.max(Tol::F16_OPERANDS).stored_as(dtype),
        false => t.stored_as(dtype),
    };
    let round = |v: Vec<f32>| match f16_operands {
        true => super::f16_rounded(v),
        false => v,
    };
    let mut rows = Vec::new();
    for (i, s) in shapes()?.iter().enumerate() {
        let p = s.params;
        let shape = ["A", "B"][i];
        let mut inputs = Inputs::new(0x5e1f_c0de ^ i as u64, dtype);
        let plane_x = p.x_len() / p.c_in as u64;
        let plane_y = p.y_len() / p.c_out as u64;
        let x = inputs.act(s.x_channels as u64 * plane_x);
        let dy = inputs.act(s.y_channels as u64 * plane_y);
        let weight = inputs.floats(p.weight_len(), -0.5, 0.5);
        let bias = inputs.floats(p.c_out as u64, -0.5, 0.5);
        let affine = affine_pairs(&mut inputs, p.c_in);
        // What the GEMMs see of x: BN -> ReLU applied (in the op's own channels).
        let mut xr = x.clone();
        if s.fused_bn {
            let start = p.x_offset as usize;
            for (c, run) in xr[start..start + p.x_len() as usize]
                .chunks_mut(plane_x as usize)
                .enumerate()
            {
                let (scale, shift) = (affine[2 * c], affine[2 * c + 1]);
                run.iter_mut()
                    .for_each(|v| *v = (*v * scale + shift).max(0.0));
            }
        }
        let (xr, w_op, dy_op) = (round(xr), round(weight.clone()), round(dy.clone()));
        let probe = Probe::new(k, dtype);
        let affine_buf = s
            .fused_bn
            .then(|| probe.f32s("affine", &affine))
            .transpose()?;
        let affine_view = affine_buf.as_ref().map(|b| b.view());
        let x_buf = probe.act("x", &x)?;
        let w_buf = probe.f32s("weight", &weight)?;
        let b_buf = (p.has_bias != 0)
            .then(|| probe.f32s("bias", &bias))
            .transpose()?;
        let ws = probe.zeros("workspace", p.workspace_len().max(1))?;
        let c = Some(config);

        // Forward: y's other channels are NaN and must stay so.
        let mut want = vec![f32::NAN; dy.len()];
        cpu::conv2d_forward(
            &mut want,
            &xr,
            &w_op,
            b_buf.is_some().then_some(&bias[..]),
            &p,
        );
        let y_buf = probe.act("y", &vec![f32::NAN; dy.len()])?;
        let d = conv2d::forward_in(
            c,
            k,
            &p,
            x_buf.view(),
            affine_view,
            w_buf.view(),
            b_buf.as_ref().map(|b| b.view()),
            y_buf.view(),
            Some(ws.view()),
        )?;
        let got = probe.run_and_read(&d, &y_buf)?;
        rows.push(Row::compare(
            format!("conv2d_forward {shape}"),
            &got,
            &want,
            tol(Tol::FWD),
        ));

        // Data gradient: into values already there, or over NaNs.
        let (dp, start) = match s.overwrite {
            true => (p.overwriting(), vec![f32::NAN; x.len()]),
            false => (p, inputs.act(x.len() as u64)),
        };
        let mut want = start.clone();
        if s.overwrite {
            let r = p.x_offset as usize..(p.x_offset as u64 + p.x_len()) as usize;
            want[r].iter_mut().for_each(|v| *v = 0.0);
        }
        cpu::conv2d_backward_data(&mut want, &dy_op, &w_op, &dp);
        let dx_buf = probe.act("dx", &start)?;
        let dy_buf = probe.act("dy", &dy)?;
        let d = conv2d::data_in(
            c,
            k,
            &dp,
            dy_buf.view(),
            w_buf.view(),
            dx_buf.view(),
            Some(ws.view()),
        )?;
        let got = probe.run_and_read(&d, &dx_buf)?;
        rows.push(Row::compare(
            format!("conv2d_backward_data {shape}"),
            &got,
            &want,
            tol(Tol::GRAD),
        ));

        // Weight gradient: adds into the values already there.
        let start = inputs.floats(p.weight_len(), -0.5, 0.5);
        let mut want = start.clone();
        cpu::conv2d_backward_weight(&mut want, &xr, &dy_op, &p);
        let dw_buf = probe.f32s("dweight", &start)?;
        let partials = probe.zeros("partials", p.partials_len().max(1))?;
        // The register tiles pack dy into the workspace, in the activations' type.
        let packed_dy = probe.act("packed dy", &vec![0.0; p.workspace_len().max(1) as usize])?;
        let d = conv2d::weight_in(
            c,
            k,
            &p,
            x_buf.view(),
            affine_view,
            dy_buf.view(),
            Some(packed_dy.view()),
            partials.view(),
            dw_buf.view(),
        )?;
        let got = probe.run_and_read(&d, &dw_buf)?;
        rows.push(Row::compare(
            format!("conv2d_backward_weight {shape}"),
            &got,
            &want,
            tol(Tol::GRAD),
        ));
    }
    Ok(rows)
}

/// Random BN (scale, shift) pairs for `channels` channels: scales near 1, shifts around 0,
/// so the ReLU cuts a fair share of the inputs.
fn affine_pairs(inputs: &mut Inputs, channels: u32) -> Vec<f32> {
    let scale = inputs.floats(channels as u64, 0.5, 1.5);
    let shift = inputs.floats(channels as u64, -0.5, 0.5);
    scale
        .iter()
        .zip(&shift)
        .flat_map(|(&a, &b)| [a, b])
        .collect()
}
