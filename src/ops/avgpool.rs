//! Average pooling over channel-major (C, N, H, W) tensors, as PyTorch's `avg_pool2d`
//! (ceil_mode=False, count_include_pad=True, so the divisor is always KH*KW; the 2x2
//! stride-2 DenseNet transition). Forward and gather backward. With a [`BnRelu`], the
//! transition's BN -> ReLU is applied while loading x, so its output is never stored.
//!
//! Shapes (channel-major): x (C, N, H, W), y (C, N, P, Q) with P, Q as in [`Pool2dParams`].

use super::batchnorm::BnRelu;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN,
};

pub use super::maxpool::Pool2dParams;

const AVGPOOL: &str = "avgpool";

pub static SHADER: Shader = Shader {
    op: AVGPOOL,
    file: "avgpool.wgsl",
    source: Source::File(include_str!("../../shaders/avgpool.wgsl")),
    entries: &[&FORWARD, &BACKWARD],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static FORWARD: Entry = Entry::new::<Pool2dParams>(
    &SHADER,
    "avgpool_forward",
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
    Entry::new::<Pool2dParams>(&SHADER, "avgpool_backward", &[read(3), write(4)], 64);

/// y = the mean of each KH x KW window of x, or of BN -> ReLU of x with `bn` (padding counted
/// as zeros), written at `p.y_offset`.
pub fn avgpool_forward(
    k: &Kernels,
    p: &Pool2dParams,
    x: View<'_>,
    bn: Option<BnRelu<'_>>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    let p = p.with_input(AVGPOOL, &bn)?;
    p.check(AVGPOOL, "x", &x, p.x_offset as u64 + p.x_len())?;
    p.check(AVGPOOL, "y", &y, p.y_offset as u64 + p.y_len())?;
    let dtype = super::float_dtype(AVGPOOL, &[&x, &y])?;
    let [mean, var, gamma, beta] = BnRelu::views(k, &bn, dtype);
    let views = [(1, x), (2, y), (5, mean), (6, var), (7, gamma), (8, beta)];
    let rows = (p.n * p.c * p.out_h) as u64;
    let d = k.dispatch(FORWARD.kernel(dtype), &p, &views, Grid::Threads(rows))?;
    Ok(vec![d.with_cost(
        p.x_len(),
        dtype.size() * (p.x_len() + p.y_len()),
    )])
}

/// dx += sum over the windows containing each element of dy / (KH*KW), accumulated at
/// `p.x_offset`. A gather, one invocation per input row: no atomics.
pub fn avgpool_backward(
    k: &Kernels,
    p: &Pool2dParams,
    dy: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check(AVGPOOL, "dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check(AVGPOOL, "dx", &dx, p.x_offset as u64 + p.x_len())?;
    let dtype = super::float_dtype(AVGPOOL, &[&dy, &dx])?;
    let rows = (p.n * p.c * p.h) as u64;
    let views = [(3, dy), (4, dx)];
    let d = k.dispatch(BACKWARD.kernel(dtype), p, &views, Grid::Threads(rows))?;
    Ok(vec![d.with_cost(
        p.x_len(),
        dtype.size() * (p.y_len() + (2 - p.overwrite as u64) * p.x_len()),
    )])
}
