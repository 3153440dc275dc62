//! 2-D max pooling over channel-major (C, N, H, W) tensors, as PyTorch's `max_pool2d`
//! (ceil_mode=False, dilation 1): forward with a saved argmax, and a gather backward.
//!
//! Shapes (channel-major): x (C, N, H, W), y (C, N, P, Q) with P = (H + 2 PH - KH) / SH + 1,
//! Q likewise; argmax (C, N, P, Q) of u32, each the index h * W + w of the winning input
//! element within its own (c, n) plane. Padding positions never win; ties go to the first
//! maximum in row-major window order; a NaN in a window wins (and the last NaN's index is
//! kept), as in PyTorch.
//!
//! With a [`BnRelu`], the BN -> ReLU before the pool (the ImageNet stem's) is applied while
//! loading x, so the normalized tensor is never stored; the argmax then indexes x, as the
//! backward of the BN -> ReLU expects its output gradient there.
//!
//! [`Pool2dParams`] is shared with average pooling ([`crate::ops::avgpool`]).

use bytemuck::{Pod, Zeroable};

use super::batchnorm::BnRelu;
use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, read_u32, write, write_u32, Dispatch, Entry, Grid, Kernels, Shader, Source,
    PLAIN,
};

/// Shapes of one max or average pooling, also its uniform (binding 0). Build with
/// [`Pool2dParams::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
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
    /// Set by the launchers from the [`BnRelu`] they are given: non-zero applies it to x.
    pub input_bn_relu: u32,
    /// The first channel of the fused BN's statistics in its mean / var arrays.
    pub stat_offset: u32,
    pub eps: f32,
    /// Set by [`maxpool_forward`]: non-zero writes the argmax (training), zero skips it.
    pub save_argmax: u32,
    /// Non-zero: the backward writes dx (`=`) instead of adding into it; see
    /// [`Pool2dParams::overwriting`].
    pub overwrite: u32,
    pub _pad: u32,
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
            input_bn_relu: 0,
            stat_offset: 0,
            eps: 0.0,
            save_argmax: 0,
            overwrite: 0,
            _pad: 0,
        })
    }

    /// Reads x (and accumulates dx) at channel `c` of a larger buffer.
    pub fn with_x_channel_offset(mut self, c: u32) -> Self {
        self.x_offset = super::channel_offset(c, self.n as u64 * self.h as u64 * self.w as u64);
        self
    }

    /// Writes y (and reads dy) at channel `c` of a larger buffer (in-place concatenation).
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        let plane = self.n as u64 * self.out_h as u64 * self.out_w as u64;
        self.y_offset = super::channel_offset(c, plane);
        self
    }

    pub fn x_len(&self) -> u64 {
        self.c as u64 * self.n as u64 * self.h as u64 * self.w as u64
    }
    /// The backward writes dx (`=`) instead of adding into it: for a dx that holds nothing
    /// yet, so it needs no clearing first. Every element of dx is written.
    pub fn overwriting(mut self) -> Self {
        self.overwrite = 1;
        self
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

    /// These params with the fused input BN -> ReLU, if any, checked against x's channels.
    pub(crate) fn with_input(&self, op: &'static str, bn: &Option<BnRelu<'_>>) -> Result<Self> {
        let mut p = *self;
        if let Some(bn) = bn {
            bn.check(op, p.c)?;
            p.input_bn_relu = 1;
            p.stat_offset = bn.stat_offset;
            p.eps = bn.eps;
        }
        Ok(p)
    }
}

const MAXPOOL: &str = "maxpool";

pub static SHADER: Shader = Shader {
    op: MAXPOOL,
    file: "maxpool.wgsl",
    source: Source::File(include_str!("../../shaders/maxpool.wgsl")),
    entries: &[&FORWARD, &BACKWARD],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static FORWARD: Entry = Entry::new::<Pool2dParams>(
    &SHADER,
    "maxpool_forward",
    &[
        read(1),
        write(2),
        write_u32(3),
        read_f32(7),
        read_f32(8),
        read_f32(9),
        read_f32(10),
    ],
    64,
);
pub static BACKWARD: Entry = Entry::new::<Pool2dParams>(
    &SHADER,
    "maxpool_backward",
    &[read(4), read_u32(5), write(6)],
    64,
);

/// y = max over each window of x (or of BN -> ReLU of x, with `bn`), written at
/// `p.y_offset`; `argmax` (from element 0), when given, gets the in-plane index of each
/// maximum for [`maxpool_backward`] (evaluation needs none).
pub fn maxpool_forward(
    k: &Kernels,
    p: &Pool2dParams,
    x: View<'_>,
    bn: Option<BnRelu<'_>>,
    y: View<'_>,
    argmax: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let mut p = p.with_input(MAXPOOL, &bn)?;
    p.check(MAXPOOL, "x", &x, p.x_offset as u64 + p.x_len())?;
    p.check(MAXPOOL, "y", &y, p.y_offset as u64 + p.y_len())?;
    if let Some(a) = &argmax {
        p.check(MAXPOOL, "argmax", a, p.y_len())?;
        p.save_argmax = 1;
    }
    let dtype = super::float_dtype(MAXPOOL, &[&x, &y])?;
    let [mean, var, gamma, beta] = BnRelu::views(k, &bn, dtype);
    let views = [
        (1, x),
        (2, y),
        (3, k.optional(argmax, DType::U32)),
        (7, mean),
        (8, var),
        (9, gamma),
        (10, beta),
    ];
    let rows = (p.n * p.c * p.out_h) as u64;
    let d = k.dispatch(FORWARD.kernel(dtype), &p, &views, Grid::Threads(rows))?;
    Ok(vec![d.with_cost(
        0,
        dtype.size() * (p.x_len() + p.y_len()) + 4 * p.save_argmax as u64 * p.y_len(),
    )])
}

/// dx += dy routed to each window's saved argmax, accumulated at `p.x_offset`. A gather: one
/// invocation per input row sums the windows that chose its elements, so overlapping
/// windows need no atomics.
pub fn maxpool_backward(
    k: &Kernels,
    p: &Pool2dParams,
    dy: View<'_>,
    argmax: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check(MAXPOOL, "dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check(MAXPOOL, "argmax", &argmax, p.y_len())?;
    p.check(MAXPOOL, "dx", &dx, p.x_offset as u64 + p.x_len())?;
    let dtype = super::float_dtype(MAXPOOL, &[&dy, &dx])?;
    let views = [(4, dy), (5, argmax), (6, dx)];
    let rows = (p.n * p.c * p.h) as u64;
    let d = k.dispatch(BACKWARD.kernel(dtype), p, &views, Grid::Threads(rows))?;
    Ok(vec![d.with_cost(
        0,
        (dtype.size() + 4) * p.y_len() + (2 - p.overwrite as u64) * dtype.size() * p.x_len(),
    )])
}
