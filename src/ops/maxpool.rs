//! 2-D max pooling over channel-major (C, N, H, W) tensors, as PyTorch's `max_pool2d`
//! (ceil_mode=False, dilation 1): forward with a saved argmax, and a gather backward.
//!
//! Shapes (channel-major): x (C, N, H, W), y (C, N, P, Q) with P = (H + 2 PH - KH) / SH + 1,
//! Q likewise; argmax (C, N, P, Q) of u32, each the index h * W + w of the winning input
//! element within its own (c, n) plane. Padding positions never win; ties go to the first
//! maximum in row-major window order; a NaN in a window wins (and the last NaN's index is
//! kept), as in PyTorch.
//!
//! [`Pool2dParams`] is shared with average pooling ([`crate::ops::avgpool`]).

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, Access::*, Dispatch, Entry, Shader};

/// Shapes of one max or average pooling, also its uniform (binding 0). Build with
/// [`Pool2dParams::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Pool2dParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    /// First element of x (and dx): a channel offset times N*H*W.
    pub x_offset: u32,
    /// First element of y (and dy): a channel offset times N*P*Q. The argmax buffer of max
    /// pooling is its own (C, N, P, Q) tensor and starts at element 0.
    pub y_offset: u32,
    pub _pad: [u32; 2],
}

const OP: &str = "pool2d";

impl Pool2dParams {
    /// `input` is (N, C, H, W) in PyTorch order; kernel, stride and padding are (h, w).
    /// Refused like PyTorch: non-positive sizes, padding above half the kernel, an empty
    /// output.
    pub fn new(
        input: [u32; 4],
        kernel: (u32, u32),
        stride: (u32, u32),
        pad: (u32, u32),
    ) -> Result<Self> {
        let [n, c, h, w] = input;
        ensure_shape!(
            n > 0 && c > 0 && h > 0 && w > 0,
            OP,
            "input {input:?} must be positive in every dimension"
        );
        ensure_shape!(
            kernel.0 > 0 && kernel.1 > 0 && stride.0 > 0 && stride.1 > 0,
            OP,
            "kernel {kernel:?} and stride {stride:?} must be positive"
        );
        ensure_shape!(
            pad.0 <= kernel.0 / 2 && pad.1 <= kernel.1 / 2,
            OP,
            "padding {pad:?} must be at most half of the kernel {kernel:?}"
        );
        // u64: no size a caller passes can wrap.
        let padded = (h as u64 + 2 * pad.0 as u64, w as u64 + 2 * pad.1 as u64);
        ensure_shape!(
            padded.0 >= kernel.0 as u64 && padded.1 >= kernel.1 as u64,
            OP,
            "kernel {kernel:?} is larger than the padded input {}x{}: the output would be empty",
            padded.0,
            padded.1
        );
        let out_h = (padded.0 - kernel.0 as u64) / stride.0 as u64 + 1;
        let out_w = (padded.1 - kernel.1 as u64) / stride.1 as u64 + 1;
        let nc = n as u64 * c as u64;
        let len = (nc * h as u64 * w as u64).max(nc * out_h * out_w);
        ensure_shape!(
            len <= u32::MAX as u64,
            OP,
            "input {input:?} gives tensors of {len} elements; at most {} fit the kernels' u32 indices",
            u32::MAX
        );
        let (out_h, out_w) = (out_h as u32, out_w as u32);
        Ok(Pool2dParams {
            n,
            c,
            h,
            w,
            out_h,
            out_w,
            kernel_h: kernel.0,
            kernel_w: kernel.1,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_h: pad.0,
            pad_w: pad.1,
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

    /// Writes y (and reads dy) at channel `c` of a larger buffer (in-place concatenation).
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        self.y_offset = offset(c, self.n * self.out_h * self.out_w);
        self
    }

    pub fn x_len(&self) -> u64 {
        self.c as u64 * self.n as u64 * self.h as u64 * self.w as u64
    }
    /// Elements of y, dy and the argmax buffer.
    pub fn y_len(&self) -> u64 {
        self.c as u64 * self.n as u64 * self.out_h as u64 * self.out_w as u64
    }

    pub(crate) fn check(
        &self,
        op: &'static str,
        what: &str,
        view: &View<'_>,
        need: u64,
    ) -> Result<()> {
        super::check_len(op, what, view, need, self)
    }
}

/// A channel offset in elements; one past u32 (saturated) is refused by the launchers'
/// length checks, never wrapped into a wrong but valid offset.
pub(crate) fn offset(channel: u32, plane: u32) -> u32 {
    (channel as u64 * plane as u64)
        .try_into()
        .unwrap_or(u32::MAX)
}

const MAXPOOL: &str = "maxpool";

pub static SHADER: Shader = Shader {
    file: "maxpool.wgsl",
    source: include_str!("../../shaders/maxpool.wgsl"),
    entries: &[
        Entry::new::<Pool2dParams>(
            "maxpool_forward",
            &[(1, Read), (2, ReadWrite), (3, ReadWrite)],
            64,
        ),
        Entry::new::<Pool2dParams>(
            "maxpool_backward",
            &[(4, Read), (5, Read), (6, ReadWrite)],
            64,
        ),
    ],
};

/// y = max over each window of x, written at `p.y_offset`; argmax (from element 0) gets the
/// in-plane index of each maximum, for [`maxpool_backward`].
pub fn maxpool_forward(
    gpu: &Gpu,
    p: &Pool2dParams,
    x: View<'_>,
    y: View<'_>,
    argmax: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check(MAXPOOL, "x", &x, p.x_offset as u64 + p.x_len())?;
    p.check(MAXPOOL, "y", &y, p.y_offset as u64 + p.y_len())?;
    p.check(MAXPOOL, "argmax", &argmax, p.y_len())?;
    let d = dispatch(
        gpu,
        "maxpool_forward",
        p,
        &[(1, x), (2, y), (3, argmax)],
        (p.n * p.c * p.out_h) as u64,
    )?;
    Ok(vec![d])
}

/// dx += dy routed to each window's saved argmax, accumulated at `p.x_offset`. A gather: one
/// invocation per input element sums the windows that chose it, so overlapping windows
/// need no atomics.
pub fn maxpool_backward(
    gpu: &Gpu,
    p: &Pool2dParams,
    dy: View<'_>,
    argmax: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check(MAXPOOL, "dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check(MAXPOOL, "argmax", &argmax, p.y_len())?;
    p.check(MAXPOOL, "dx", &dx, p.x_offset as u64 + p.x_len())?;
    let d = dispatch(
        gpu,
        "maxpool_backward",
        p,
        &[(4, dy), (5, argmax), (6, dx)],
        (p.n * p.c * p.h) as u64,
    )?;
    Ok(vec![d])
}
