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
use crate::gpu::{DType, GpuBuffer};
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
    let mut rows = Vec::new();
    for (i, shape) in shapes()?.iter().enumerate() {
        let mut run = Run::new(k, config, dtype, shape, i as u64)?;
        let name = ["A", "B"][i];
        rows.push(run.forward(name)?);
        rows.push(run.data(name)?);
        rows.push(run.weight(name)?);
    }
    Ok(rows)
}

/// One shape's inputs, on the host and the device, and how the configuration is judged.
struct Run<'k> {
    k: &'k Kernels,
    config: Config,
    shape: &'k Shape,
    probe: Probe<'k>,
    inputs: Inputs,
    /// Cooperative-matrix variants multiply f16 operands: the reference gets the same
    /// rounded operands, and the tolerance their f32 sums in another order.
    f16_operands: bool,
    dtype: DType,
    x_len: usize,
    bias: Vec<f32>,
    /// What the GEMMs see: x after the fused BN -> ReLU, the weights and dy (rounded to f16
    /// for cooperative matrices).
    xr: Vec<f32>,
    w_op: Vec<f32>,
    dy_op: Vec<f32>,
    x: GpuBuffer,
    dy: GpuBuffer,
    weight: GpuBuffer,
    affine: Option<GpuBuffer>,
    workspace: GpuBuffer,
}

impl<'k> Run<'k> {
    fn new(k: &'k Kernels, config: Config, dtype: DType, shape: &'k Shape, i: u64) -> Result<Self> {
        let p = shape.params;
        let mut inputs = Inputs::new(0x5e1f_c0de ^ i, dtype);
        let plane_x = p.x_len() / p.c_in as u64;
        let plane_y = p.y_len() / p.c_out as u64;
        let x = inputs.act(shape.x_channels as u64 * plane_x);
        let dy = inputs.act(shape.y_channels as u64 * plane_y);
        let weight = inputs.floats(p.weight_len(), -0.5, 0.5);
        let bias = inputs.floats(p.c_out as u64, -0.5, 0.5);
        let affine = affine_pairs(&mut inputs, p.c_in);
        // BN -> ReLU applied in the op's own channels.
        let mut xr = x.clone();
        if shape.fused_bn {
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
        let f16_operands = matches!(config.variant.needs, Needs::CoopMatrix { .. });
        let round = |v: Vec<f32>| match f16_operands {
            true => super::f16_rounded(v),
            false => v,
        };
        let probe = Probe::new(k, dtype);
        Ok(Run {
            affine: shape
                .fused_bn
                .then(|| probe.f32s("affine", &affine))
                .transpose()?,
            x: probe.act("x", &x)?,
            dy: probe.act("dy", &dy)?,
            weight: probe.f32s("weight", &weight)?,
            workspace: probe.zeros("workspace", p.workspace_len().max(1))?,
            x_len: x.len(),
            xr: round(xr),
            w_op: round(weight),
            dy_op: round(dy),
            bias,
            k,
            config,
            shape,
            probe,
            inputs,
            f16_operands,
            dtype,
        })
    }

    fn tol(&self, t: Tol) -> Tol {
        match self.f16_operands {
            true => t.max(Tol::F16_OPERANDS).stored_as(self.dtype),
            false => t.stored_as(self.dtype),
        }
    }

    /// The forward into a y whose other channels are NaN and must stay so.
    fn forward(&mut self, name: &str) -> Result<Row> {
        let p = &self.shape.params;
        let has_bias = p.has_bias != 0;
        let mut want = vec![f32::NAN; self.dy_op.len()];
        let bias = has_bias.then_some(&self.bias[..]);
        cpu::conv2d_forward(&mut want, &self.xr, &self.w_op, bias, p);
        let bias = has_bias
            .then(|| self.probe.f32s("bias", &self.bias))
            .transpose()?;
        let y = self.probe.act("y", &vec![f32::NAN; want.len()])?;
        let d = conv2d::forward_in(
            Some(self.config),
            self.k,
            p,
            self.x.view(),
            self.affine.as_ref().map(|a| a.view()),
            self.weight.view(),
            bias.as_ref().map(|b| b.view()),
            y.view(),
            Some(self.workspace.view()),
        )?;
        let got = self.probe.run_and_read(&d, &y)?;
        let kernel = format!("conv2d_forward {name}");
        Ok(Row::compare(kernel, &got, &want, self.tol(Tol::FWD)))
    }

    /// The data gradient into values already there, or over NaNs.
    fn data(&mut self, name: &str) -> Result<Row> {
        let p = self.shape.params;
        let (dp, start) = match self.shape.overwrite {
            true => (p.overwriting(), vec![f32::NAN; self.x_len]),
            false => (p, self.inputs.act(self.x_len as u64)),
        };
        let mut want = start.clone();
        if self.shape.overwrite {
            let r = p.x_offset as usize..(p.x_offset as u64 + p.x_len()) as usize;
            want[r].iter_mut().for_each(|v| *v = 0.0);
        }
        cpu::conv2d_backward_data(&mut want, &self.dy_op, &self.w_op, &dp);
        let dx = self.probe.act("dx", &start)?;
        let (dy, w) = (self.dy.view(), self.weight.view());
        let ws = Some(self.workspace.view());
        let d = conv2d::data_in(Some(self.config), self.k, &dp, dy, w, dx.view(), ws)?;
        let got = self.probe.run_and_read(&d, &dx)?;
        let kernel = format!("conv2d_backward_data {name}");
        Ok(Row::compare(kernel, &got, &want, self.tol(Tol::GRAD)))
    }

    /// The weight gradient, added into the values already there.
    fn weight(&mut self, name: &str) -> Result<Row> {
        let p = &self.shape.params;
        let start = self.inputs.floats(p.weight_len(), -0.5, 0.5);
        let mut want = start.clone();
        cpu::conv2d_backward_weight(&mut want, &self.xr, &self.dy_op, p);
        let dw = self.probe.f32s("dweight", &start)?;
        let partials = self.probe.zeros("partials", p.partials_len().max(1))?;
        // The register tiles pack dy into a workspace of the activations' type.
        let packed = vec![0.0; p.workspace_len().max(1) as usize];
        let packed_dy = self.probe.act("packed dy", &packed)?;
        let d = conv2d::weight_in(
            Some(self.config),
            self.k,
            p,
            self.x.view(),
            self.affine.as_ref().map(|a| a.view()),
            self.dy.view(),
            Some(packed_dy.view()),
            partials.view(),
            dw.view(),
        )?;
        let got = self.probe.run_and_read(&d, &dw)?;
        let kernel = format!("conv2d_backward_weight {name}");
        Ok(Row::compare(kernel, &got, &want, self.tol(Tol::GRAD)))
    }
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
