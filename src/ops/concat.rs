//! Channel concatenation as an explicit op (the plain path and the tests use it; dense
//! blocks write in place instead). In the channel-major layout, channels [c0, c0 + C) of a
//! (C_total, N, H, W) buffer are the contiguous run from element c0 * N * H * W.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{read, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN};

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
        let plane = n as u64 * h as u64 * w as u64;
        let total = total_channels as u64 * plane;
        ensure_shape!(
            total <= u32::MAX as u64,
            OP,
            "{total} elements do not fit the kernels' u32 indices"
        );
        Ok(ConcatParams {
            count: (c as u64 * plane) as u32,
            offset: super::channel_offset(c0, plane),
            total: total as u32,
            _pad: 0,
        })
    }

    fn check(&self, what: &str, view: &View<'_>, need: u32) -> Result<()> {
        super::check_len(OP, what, view, need as u64, self)
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "concat.wgsl",
    source: Source::File(include_str!("../../shaders/concat.wgsl")),
    entries: &[&FORWARD, &BACKWARD],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static FORWARD: Entry =
    Entry::new::<ConcatParams>(&SHADER, "concat_forward", &[read(1), write(2)], 256);
pub static BACKWARD: Entry =
    Entry::new::<ConcatParams>(&SHADER, "concat_backward", &[read(3), write(4)], 256);

/// Copies `part` into its channel range of `whole`.
pub fn concat_forward(
    k: &Kernels,
    p: &ConcatParams,
    part: View<'_>,
    whole: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("part", &part, p.count)?;
    p.check("whole", &whole, p.total)?;
    let dtype = super::float_dtype(OP, &[&part, &whole])?;
    let grid = Grid::Threads(p.count as u64);
    let views = [(1, part), (2, whole)];
    Ok(vec![k.dispatch(FORWARD.kernel(dtype), p, &views, grid)?])
}

/// dpart += the part's channel range of dwhole.
pub fn concat_backward(
    k: &Kernels,
    p: &ConcatParams,
    dwhole: View<'_>,
    dpart: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dwhole", &dwhole, p.total)?;
    p.check("dpart", &dpart, p.count)?;
    let dtype = super::float_dtype(OP, &[&dwhole, &dpart])?;
    let grid = Grid::Threads(p.count as u64);
    let views = [(3, dwhole), (4, dpart)];
    Ok(vec![k.dispatch(BACKWARD.kernel(dtype), p, &views, grid)?])
}
