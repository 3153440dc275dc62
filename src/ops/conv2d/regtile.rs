//! The register-tile implementation of conv2d (what CPU drivers run best): each invocation
//! owns a tile of 16 or 8 channels by 4 pixels or taps, with no workgroup memory and no
//! barriers; the channel-indexed operand of each GEMM is first packed channel-last into a
//! workspace, so a tile's channels load as vec4s.

use super::{Conv2dParams, Workspace, OP};
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, write_f32, Dispatch, Entry, Grid, Kernels, Needs, Shader, Source, Split,
    Variant,
};

/// The register-tile variants (conv2d.wgsl is a template; see `generate`).
pub static SHADER: Shader = Shader {
    op: OP,
    file: "conv2d.wgsl",
    source: Source::Generated(generate),
    entries: &[
        &PACK_WEIGHT_FORWARD,
        &FORWARD,
        &PACK_WEIGHT_DATA,
        &BACKWARD_DATA,
        &PACK_DY,
        &BACKWARD_WEIGHT,
        &BACKWARD_WEIGHT_REDUCE,
        &BACKWARD_BIAS,
    ],
    variants: &[
        Variant {
            name: "tile16",
            about: "16 channels x 4 pixels per invocation, no workgroup memory",
            needs: Needs::Nothing,
            splits: Split::ALL,
        },
        Variant {
            name: "tile8",
            about: "8 channels x 4 pixels per invocation, no workgroup memory",
            needs: Needs::Nothing,
            splits: Split::ALL,
        },
    ],
    choice: "GPUs: wgtile, in f16 coop16 or coop8 where the adapter runs one; CPU drivers: \
             tile8 where the tiled channels (output channels forward and for the weight \
             gradient, input channels for the data gradient) number at most 8, else tile16",
    dtypes: &[DType::F32, DType::F16],
};

pub static PACK_WEIGHT_FORWARD: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_pack_weight_forward",
    &[read_f32(2), write_f32(12)],
    64,
);
pub static FORWARD: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_forward",
    &[write(1), read_f32(3), write(4), read_f32(11), read_f32(14)],
    64,
);
pub static PACK_WEIGHT_DATA: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_pack_weight_data",
    &[read_f32(2), write_f32(12)],
    64,
);
pub static BACKWARD_DATA: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_data",
    &[read(5), write(6), read_f32(11)],
    64,
);
pub static PACK_DY: Entry =
    Entry::new::<Conv2dParams>(&SHADER, "conv2d_pack_dy", &[read(5), write(15)], 64);
pub static BACKWARD_WEIGHT: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_weight",
    &[write(1), write_f32(7), read(13), read_f32(14)],
    64,
);
pub static BACKWARD_WEIGHT_REDUCE: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_weight_reduce",
    &[read_f32(8), write_f32(9)],
    64,
);
pub static BACKWARD_BIAS: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_bias",
    &[read(5), write_f32(10)],
    256,
);

/// The channels of the largest register tile: packed operands are padded to it, whatever the
/// variant, so one workspace size serves all.
const MAX_TILE: u32 = 16;
/// Pixels or taps per invocation, and invocations per workgroup (conv2d.wgsl's TN and WG).
const TN: u32 = 4;
const WG: u32 = 64;

/// The register tile (channels) of a variant.
fn tile(v: &Variant) -> u32 {
    match v.name {
        "tile8" => 8,
        _ => 16,
    }
}

/// conv2d.wgsl with the tile code of `variant` at its marker: the TM constant, the TM
/// accumulators, the multiply-adds from the packed operands, and the accessor.
fn generate(variant: &Variant, _dtype: DType) -> String {
    let tm = tile(variant) as usize;
    let code = [
        format!("const TM: u32 = {tm}u;\n"),
        acc_struct(tm),
        fma_fn("fma_w", "packed", tm),
        fma_fn("fma_dy", "packed_dy", tm),
        acc_get_fn(tm),
    ]
    .join("\n");
    let template = include_str!("../../../shaders/conv2d.wgsl");
    template.replace("// @generated-tile-code\n", &code)
}

/// `struct Acc`: one vec4 accumulator (TN pixels) per channel of the tile.
fn acc_struct(tm: usize) -> String {
    let fields: String = (0..tm).map(|m| format!("    a{m}: vec4<f32>,\n")).collect();
    format!("// TM accumulators of TN values.\nstruct Acc {{\n{fields}}}\n")
}

/// `fn name(acc, i, v)`: acc.m += array[i .. i + TM / 4][m] * v for the TM channels.
fn fma_fn(name: &str, array: &str, tm: usize) -> String {
    let lane = |m: usize| ["x", "y", "z", "w"][m % 4];
    let loads: String = (0..tm / 4)
        .map(|q| format!("    let w{q} = vec4<f32>({array}[i + {q}u]);\n"))
        .collect();
    let fmas: String = (0..tm)
        .map(|m| format!("    (*acc).a{m} += w{}.{} * v;\n", m / 4, lane(m)))
        .collect();
    let doc = format!("// acc.m += {array}[i .. i + TM / 4][m] * v for the TM channels.\n");
    let signature = format!("fn {name}(acc: ptr<function, Acc>, i: u32, v: vec4<f32>)");
    format!("{doc}{signature} {{\n{loads}{fmas}}}\n")
}

/// `fn acc_get(acc, m)`: channel m's accumulator.
fn acc_get_fn(tm: usize) -> String {
    let cases: String = (0..tm - 1)
        .map(|m| format!("        case {m}u: {{ return acc.a{m}; }}\n"))
        .collect();
    let default = format!("        default: {{ return acc.a{}; }}\n", tm - 1);
    let body = format!("    switch m {{\n{cases}{default}    }}\n");
    format!("fn acc_get(acc: Acc, m: u32) -> vec4<f32> {{\n{body}}}\n")
}

/// A channel count padded to the largest tile, as the packed operands are sized (so one
/// workspace serves both variants).
fn padded(c: u32) -> u64 {
    c.next_multiple_of(MAX_TILE) as u64
}

/// Workgroups covering `channels` in tiles of `tm` and `other` in groups of WG * TN.
fn groups(tm: u32, channels: u32, other: u32) -> u64 {
    channels.div_ceil(tm) as u64 * other.div_ceil(WG * TN) as u64
}

/// The workspaces of this implementation: packed weights (forward and data gradient),
/// packed output gradient and split-K partial sums (weight gradient, split as `s` says).
pub(super) fn workspace(p: &Conv2dParams, s: Split) -> Workspace {
    let rs = p.kernel_h as u64 * p.kernel_w as u64;
    let splits = p.with_splits_for(weight_workgroups(p), s).splits as u64;
    Workspace {
        forward: padded(p.c_out) * p.taps(),
        data: padded(p.c_in) * p.c_out as u64 * rs,
        packed_dy: p.npq() * padded(p.c_out),
        partials: splits * p.weight_len(),
    }
}

/// Workgroups of one split of the weight gradient, counted for the 16-channel tile whatever
/// the variant: both variants then split alike, sum in the same order and give the same bits.
pub(super) fn weight_workgroups(p: &Conv2dParams) -> u64 {
    groups(MAX_TILE, p.c_out, p.taps() as u32)
}

/// [x, affine, weight, bias, y, packed workspace]: the packed weights, then y.
pub(super) fn forward(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [x, affine, weight, bias, y, packed]: [View<'_>; 6],
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (x.dtype, x.dtype.size());
    let views = [(1, x), (3, bias), (4, y), (11, packed), (14, affine)];
    Ok(vec![
        k.dispatch(
            PACK_WEIGHT_FORWARD.variant(v, dtype),
            p,
            &[(2, weight), (12, packed)],
            Grid::Threads(packed.len),
        )?,
        k.dispatch(
            FORWARD.variant(v, dtype),
            p,
            &views,
            Grid::Workgroups(groups(tile(v), p.c_out, p.npq() as u32)),
        )?
        .with_cost(2 * p.macs(), e * (p.x_len() + p.y_len() + packed.len)),
    ])
}

/// [dy, weight, dx, packed workspace]: the packed weights, then dx.
pub(super) fn backward_data(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [dy, weight, dx, packed]: [View<'_>; 4],
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (dy.dtype, dy.dtype.size());
    let nhw = p.n * p.h * p.w;
    let dx_bytes = e * p.x_len() * (2 - p.overwrite as u64);
    Ok(vec![
        k.dispatch(
            PACK_WEIGHT_DATA.variant(v, dtype),
            p,
            &[(2, weight), (12, packed)],
            Grid::Threads(packed.len),
        )?,
        k.dispatch(
            BACKWARD_DATA.variant(v, dtype),
            p,
            &[(5, dy), (6, dx), (11, packed)],
            Grid::Workgroups(groups(tile(v), p.c_in, nhw)),
        )?
        .with_cost(2 * p.macs(), e * (p.y_len() + packed.len) + dx_bytes),
    ])
}

/// [x, affine, dy, packed workspace, partials, dweight] with the params' splits: dy packed
/// channel-last, split-K partial sums, then their sum added into dweight.
pub(super) fn backward_weight(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [x, affine, dy, packed, partials, dweight]: [View<'_>; 6],
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (x.dtype, x.dtype.size());
    let views = [(1, x), (7, partials), (13, packed), (14, affine)];
    let workgroups = groups(tile(v), p.c_out, p.taps() as u32) * p.splits as u64;
    Ok(vec![
        k.dispatch(
            PACK_DY.variant(v, dtype),
            p,
            &[(5, dy), (15, packed)],
            Grid::Threads(packed.len),
        )?
        .with_cost(0, e * (p.y_len() + packed.len)),
        k.dispatch(
            BACKWARD_WEIGHT.variant(v, dtype),
            p,
            &views,
            Grid::Workgroups(workgroups),
        )?
        .with_cost(
            2 * p.macs(),
            e * (p.x_len() + packed.len + p.splits as u64 * p.weight_len()),
        ),
        reduce(k, v, p, partials, dweight)?,
    ])
}

/// dweight += the sum of the params' split-K partial sums (every implementation's last pass).
pub(super) fn reduce(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    partials: View<'_>,
    dweight: View<'_>,
) -> Result<Dispatch> {
    let kernel = BACKWARD_WEIGHT_REDUCE.variant(regtile_variant(v), dweight.dtype);
    let views = [(8, partials), (9, dweight)];
    k.dispatch(kernel, p, &views, Grid::Threads(p.weight_len()))
}

/// `v` if it is one of this shader's variants, else its first (for the passes every
/// implementation shares: the split-K sum and the bias gradient).
fn regtile_variant(v: &'static Variant) -> &'static Variant {
    match SHADER.variants.iter().any(|r| std::ptr::eq(r, v)) {
        true => v,
        false => &SHADER.variants[0],
    }
}

/// dbias += dy summed over N, P, Q: one workgroup per channel, a tree reduction.
pub(super) fn backward_bias(
    k: &Kernels,
    dtype: DType,
    p: &Conv2dParams,
    dy: View<'_>,
    dbias: View<'_>,
) -> Result<Vec<Dispatch>> {
    let kernel = BACKWARD_BIAS.variant(&SHADER.variants[0], dtype);
    let views = [(5, dy), (10, dbias)];
    let d = k.dispatch(kernel, p, &views, Grid::Workgroups(p.c_out as u64))?;
    Ok(vec![d.with_cost(
        p.y_len(),
        dtype.size() * (p.y_len() + p.c_out as u64),
    )])
}
