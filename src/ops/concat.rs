//! Channel concatenation as an explicit op (the plain path and the tests use it; dense
//! blocks write in place instead). In the channel-major layout, channels [c0, c0 + C) of a
//! (C_total, N, H, W) buffer are the contiguous run from element c0 * N * H * W.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, Access::*, Dispatch, Entry, Shader};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ConcatParams {
    /// Elements of the part: C * N * H * W.
    pub count: u32,
    /// First element of the part inside the whole: c0 * N * H * W.
    pub offset: u32,
    /// Elements of the whole: C_total * N * H * W.
    pub total: u32,
    pub _pad: u32,
}

const OP: &str = "concat";

impl ConcatParams {
    /// The part `[N, C, H, W]` (PyTorch order) goes to channels [c0, c0 + C) of a buffer of
    /// `total_channels` channels of the same N, H, W.
    pub fn new(part: [u32; 4], total_channels: u32, c0: u32) -> Result<Self> {
        let [n, c, h, w] = part;
        ensure_shape!(
            c0 + c <= total_channels,
            OP,
            "channels [{c0}, {}) do not fit in {total_channels} channels",
            c0 + c
        );
        let plane = n * h * w;
        Ok(ConcatParams {
            count: c * plane,
            offset: c0 * plane,
            total: total_channels * plane,
            _pad: 0,
        })
    }

    fn check(&self, what: &str, view: &View<'_>, need: u32) -> Result<()> {
        super::check_len(OP, what, view, need as u64, self)
    }
}

pub static SHADER: Shader = Shader {
    file: "concat.wgsl",
    source: include_str!("../../shaders/concat.wgsl"),
    entries: &[
        Entry::new::<ConcatParams>("concat_forward", &[(1, Read), (2, ReadWrite)], 256),
        Entry::new::<ConcatParams>("concat_backward", &[(3, Read), (4, ReadWrite)], 256),
    ],
};

/// Copies `part` into its channel range of `whole`.
pub fn concat_forward(
    gpu: &Gpu,
    p: &ConcatParams,
    part: View<'_>,
    whole: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("part", &part, p.count)?;
    p.check("whole", &whole, p.total)?;
    let d = dispatch(
        gpu,
        "concat_forward",
        p,
        &[(1, part), (2, whole)],
        p.count as u64,
    )?;
    Ok(vec![d])
}

/// dpart += the part's channel range of dwhole.
pub fn concat_backward(
    gpu: &Gpu,
    p: &ConcatParams,
    dwhole: View<'_>,
    dpart: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dwhole", &dwhole, p.total)?;
    p.check("dpart", &dpart, p.count)?;
    let d = dispatch(
        gpu,
        "concat_backward",
        p,
        &[(3, dwhole), (4, dpart)],
        p.count as u64,
    )?;
    Ok(vec![d])
}
