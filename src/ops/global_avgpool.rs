//! Global average pooling, the network's head: x (C, N, H, W) channel-major to y (C, N),
//! feature-major as the linear layer reads it. Forward (optionally through the head's
//! BN -> ReLU, applied while loading: a [`BnRelu`]) and backward.

use bytemuck::{Pod, Zeroable};

use super::batchnorm::BnRelu;
use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN,
};

/// Shapes of one global average pool, also its uniform (binding 0). Build with
/// [`GlobalAvgPoolParams::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct GlobalAvgPoolParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    /// First element of x (and dx): a channel offset times N*H*W.
    pub x_offset: u32,
    /// First element of y (and dy): a channel offset times N.
    pub y_offset: u32,
    /// Set by [`global_avgpool_forward`] from its [`BnRelu`]: non-zero applies it to x.
    pub input_bn_relu: u32,
    pub stat_offset: u32,
    pub eps: f32,
    /// Non-zero: the backward writes dx (`=`) instead of adding into it.
    pub overwrite: u32,
    pub _pad: [u32; 2],
}

const GLOBAL: &str = "global_avgpool";

impl GlobalAvgPoolParams {
    /// `input` is (N, C, H, W) in PyTorch order.
    pub fn new(input: [u32; 4]) -> Result<Self> {
        let [n, c, h, w] = input;
        ensure_shape!(
            n > 0 && c > 0 && h > 0 && w > 0,
            GLOBAL,
            "input {input:?} must be positive in every dimension"
        );
        let len = input.iter().map(|&d| d as u64).product::<u64>();
        ensure_shape!(
            len <= u32::MAX as u64,
            GLOBAL,
            "input {input:?} has {len} elements; at most {} fit the kernels' u32 indices",
            u32::MAX
        );
        Ok(GlobalAvgPoolParams {
            n,
            c,
            h,
            w,
            x_offset: 0,
            y_offset: 0,
            input_bn_relu: 0,
            stat_offset: 0,
            eps: 0.0,
            overwrite: 0,
            _pad: [0; 2],
        })
    }

    /// Reads x (and accumulates dx) at channel `c` of a larger buffer.
    pub fn with_x_channel_offset(mut self, c: u32) -> Self {
        self.x_offset = super::channel_offset(c, self.n as u64 * self.h as u64 * self.w as u64);
        self
    }

    /// Writes y (and reads dy) at feature `c` of a larger (C, N) buffer.
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        self.y_offset = super::channel_offset(c, self.n as u64);
        self
    }

    /// The backward writes dx (`=`) instead of adding into it: for a dx that holds nothing
    /// yet, so it needs no clearing first.
    pub fn overwriting(mut self) -> Self {
        self.overwrite = 1;
        self
    }

    pub fn x_len(&self) -> u64 {
        self.c as u64 * self.n as u64 * self.h as u64 * self.w as u64
    }
    pub fn y_len(&self) -> u64 {
        self.c as u64 * self.n as u64
    }

    fn check(&self, what: &str, view: &View<'_>, need: u64) -> Result<()> {
        super::check_len(GLOBAL, what, view, need, self)
    }
}

pub static SHADER: Shader = Shader {
    op: GLOBAL,
    file: "global_avgpool.wgsl",
    source: Source::File(include_str!("../../shaders/global_avgpool.wgsl")),
    entries: &[&FORWARD, &BACKWARD],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static FORWARD: Entry = Entry::new::<GlobalAvgPoolParams>(
    &SHADER,
    "global_avgpool_forward",
    &[
        read(1),
        write(2),
        read_f32(5),
        read_f32(6),
        read_f32(7),
        read_f32(8),
    ],
    64,
);
pub static BACKWARD: Entry =
    Entry::new::<GlobalAvgPoolParams>(&SHADER, "global_avgpool_backward", &[read(3), write(4)], 64);

/// y (C, N) = the mean of each (c, n) plane of x (or of BN -> ReLU of x, with `bn`), written
/// at `p.y_offset`.
pub fn global_avgpool_forward(
    k: &Kernels,
    p: &GlobalAvgPoolParams,
    x: View<'_>,
    bn: Option<BnRelu<'_>>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    let mut p = *p;
    if let Some(bn) = &bn {
        bn.check(GLOBAL, p.c)?;
        (p.input_bn_relu, p.stat_offset, p.eps) = (1, bn.stat_offset, bn.eps);
    }
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("y", &y, p.y_offset as u64 + p.y_len())?;
    let dtype = super::float_dtype(GLOBAL, &[&x, &y])?;
    let [mean, var, gamma, beta] = BnRelu::views(k, &bn, dtype);
    let views = [(1, x), (2, y), (5, mean), (6, var), (7, gamma), (8, beta)];
    let grid = Grid::Threads(p.y_len());
    let d = k.dispatch(FORWARD.kernel(dtype), &p, &views, grid)?;
    Ok(vec![d.with_cost(
        p.x_len(),
        dtype.size() * (p.x_len() + p.y_len()),
    )])
}

/// dx[c, n, h, w] += dy[c, n] / (H*W), accumulated at `p.x_offset`.
pub fn global_avgpool_backward(
    k: &Kernels,
    p: &GlobalAvgPoolParams,
    dy: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dx", &dx, p.x_offset as u64 + p.x_len())?;
    let dtype = super::float_dtype(GLOBAL, &[&dy, &dx])?;
    let grid = Grid::Threads(p.y_len());
    let d = k.dispatch(BACKWARD.kernel(dtype), p, &[(3, dy), (4, dx)], grid)?;
    Ok(vec![d.with_cost(
        p.x_len(),
        dtype.size() * (p.y_len() + (2 - p.overwrite as u64) * p.x_len()),
    )])
}
