//! Average pooling over channel-major (C, N, H, W) tensors, as PyTorch's `avg_pool2d`
//! (ceil_mode=False, count_include_pad=True, so the divisor is always KH*KW; the 2x2
//! stride-2 DenseNet transition). Forward and gather backward.
//!
//! Shapes (channel-major): x (C, N, H, W), y (C, N, P, Q) with P, Q as in [`Pool2dParams`].

use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, Access::*, Dispatch, Entry, Shader};

pub use super::maxpool::Pool2dParams;

const AVGPOOL: &str = "avgpool";

pub static SHADER: Shader = Shader {
    file: "avgpool.wgsl",
    source: include_str!("../../shaders/avgpool.wgsl"),
    entries: &[
        Entry::new::<Pool2dParams>("avgpool_forward", &[(1, Read), (2, ReadWrite)], 64),
        Entry::new::<Pool2dParams>("avgpool_backward", &[(3, Read), (4, ReadWrite)], 64),
    ],
};

/// y = the mean of each KH x KW window of x (padding counted as zeros), written at
/// `p.y_offset`.
pub fn avgpool_forward(
    gpu: &Gpu,
    p: &Pool2dParams,
    x: View<'_>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check(AVGPOOL, "x", &x, p.x_offset as u64 + p.x_len())?;
    p.check(AVGPOOL, "y", &y, p.y_offset as u64 + p.y_len())?;
    let rows = (p.n * p.c * p.out_h) as u64;
    let d = dispatch(gpu, "avgpool_forward", p, &[(1, x), (2, y)], rows)?;
    Ok(vec![d])
}

/// dx += sum over the windows containing each element of dy / (KH*KW), accumulated at
/// `p.x_offset`. A gather, one invocation per input element: no atomics.
pub fn avgpool_backward(
    gpu: &Gpu,
    p: &Pool2dParams,
    dy: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check(AVGPOOL, "dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check(AVGPOOL, "dx", &dx, p.x_offset as u64 + p.x_len())?;
    let rows = (p.n * p.c * p.h) as u64;
    let d = dispatch(gpu, "avgpool_backward", p, &[(3, dy), (4, dx)], rows)?;
    Ok(vec![d])
}
