//! The adapter's own ceilings, measured by two micro-kernels: multiply-add throughput and
//! streaming bandwidth (the roofline `bench --profile` rates every kernel against).

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{read, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct RooflineParams {
    /// Invocations (and output vec4s).
    pub count: u32,
    /// Steps of 8 vec4 multiply-adds per invocation (the FMA kernel).
    pub iters: u32,
    pub _pad: [u32; 2],
}

const OP: &str = "roofline";

pub static SHADER: Shader = Shader {
    op: OP,
    file: "roofline.wgsl",
    source: Source::File(include_str!("../../shaders/roofline.wgsl")),
    entries: &[&FMA, &STREAM],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32],
};

pub static FMA: Entry = Entry::new::<RooflineParams>(&SHADER, "roofline_fma", &[write(2)], 256);
pub static STREAM: Entry =
    Entry::new::<RooflineParams>(&SHADER, "roofline_stream", &[read(1), write(2)], 256);

/// `count` invocations of `iters` steps of 8 independent vec4 multiply-adds each, into `out`
/// (`count` vec4s): 64 flops per step.
pub fn roofline_fma(k: &Kernels, count: u32, iters: u32, out: View<'_>) -> Result<Dispatch> {
    ensure_shape!(
        out.len >= 4 * count as u64,
        OP,
        "out holds {} floats, {count} vec4s needed",
        out.len
    );
    let p = RooflineParams {
        count,
        iters,
        _pad: [0; 2],
    };
    let d = k.dispatch(
        FMA.kernel(out.dtype),
        &p,
        &[(2, out)],
        Grid::Threads(count as u64),
    )?;
    Ok(d.with_cost(64 * iters as u64 * count as u64, 16 * count as u64))
}

/// out = src * 2 + 1 over `count` vec4s: 32 bytes moved per vec4.
pub fn roofline_stream(k: &Kernels, count: u32, src: View<'_>, out: View<'_>) -> Result<Dispatch> {
    let need = 4 * count as u64;
    ensure_shape!(
        src.len >= need && out.len >= need,
        OP,
        "src and out need {need} floats"
    );
    let p = RooflineParams {
        count,
        iters: 0,
        _pad: [0; 2],
    };
    let views = [(1, src), (2, out)];
    let d = k.dispatch(
        STREAM.kernel(out.dtype),
        &p,
        &views,
        Grid::Threads(count as u64),
    )?;
    Ok(d.with_cost(8 * count as u64, 32 * count as u64))
}
