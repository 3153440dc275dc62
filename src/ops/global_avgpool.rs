//! Global average pooling, the network's head: x (C, N, H, W) channel-major to y (C, N),
//! feature-major as the linear layer reads it. Forward and backward.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, Access::*, Dispatch, Entry, Shader};

use super::maxpool::offset;

/// Shapes of one global average pool, also its uniform (binding 0). Build with
/// [`GlobalAvgPoolParams::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct GlobalAvgPoolParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    /// First element of x (and dx): a channel offset times N*H*W.
    pub x_offset: u32,
    /// First element of y (and dy): a channel offset times N.
    pub y_offset: u32,
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
            _pad: [0; 2],
        })
    }

    /// Reads x (and accumulates dx) at channel `c` of a larger buffer.
    pub fn with_x_channel_offset(mut self, c: u32) -> Self {
        self.x_offset = offset(c, self.n * self.h * self.w);
        self
    }

    /// Writes y (and reads dy) at feature `c` of a larger (C, N) buffer.
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        self.y_offset = offset(c, self.n);
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
    file: "global_avgpool.wgsl",
    source: include_str!("../../shaders/global_avgpool.wgsl"),
    entries: &[
        Entry::new::<GlobalAvgPoolParams>(
            "global_avgpool_forward",
            &[(1, Read), (2, ReadWrite)],
            64,
        ),
        Entry::new::<GlobalAvgPoolParams>(
            "global_avgpool_backward",
            &[(3, Read), (4, ReadWrite)],
            64,
        ),
    ],
};

/// y (C, N) = the mean of each (c, n) plane of x, written at `p.y_offset`.
pub fn global_avgpool_forward(
    gpu: &Gpu,
    p: &GlobalAvgPoolParams,
    x: View<'_>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("y", &y, p.y_offset as u64 + p.y_len())?;
    let d = dispatch(
        gpu,
        "global_avgpool_forward",
        p,
        &[(1, x), (2, y)],
        p.y_len(),
    )?;
    Ok(vec![d])
}

/// dx[c, n, h, w] += dy[c, n] / (H*W), accumulated at `p.x_offset`.
pub fn global_avgpool_backward(
    gpu: &Gpu,
    p: &GlobalAvgPoolParams,
    dy: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dx", &dx, p.x_offset as u64 + p.x_len())?;
    let d = dispatch(
        gpu,
        "global_avgpool_backward",
        p,
        &[(3, dy), (4, dx)],
        p.y_len(),
    )?;
    Ok(vec![d])
}
