//! The workgroup-tiled implementation of conv2d (what GPUs run best): implicit GEMMs over
//! 32 x 64 output tiles staged through workgroup memory, 4 x 4 outputs per invocation, no
//! packing pass; the weight gradient walks output pixels with split-K.

use super::{Conv2dParams, Workspace, OP};
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{read, write, Dispatch, Entry, Grid, Kernels, Shader, Source, Variant};

pub static SHADER: Shader = Shader {
    op: OP,
    file: "conv2d_tiled.wgsl",
    source: Source::File(include_str!("../../../shaders/conv2d_tiled.wgsl")),
    entries: &[&FORWARD, &BACKWARD_DATA, &BACKWARD_WEIGHT],
    variants: &[Variant {
        name: "wgtile",
        about: "32 x 64 output tiles through workgroup memory, 4 x 4 per invocation",
    }],
    choice: "see the register-tile shader",
    dtypes: &[DType::F32],
};

pub static FORWARD: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_forward",
    &[write(1), read(2), read(3), write(4), read(14)],
    128,
);
pub static BACKWARD_DATA: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_data",
    &[read(2), read(5), write(6)],
    128,
);
pub static BACKWARD_WEIGHT: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_weight",
    &[write(1), read(5), write(7), read(14)],
    128,
);

/// The output tile of a workgroup (conv2d_tiled.wgsl's BM x BN).
const BM: u32 = 32;
const BN: u32 = 64;

/// Workgroups covering an M x N output in tiles.
fn tiles(m: u64, n: u64) -> u64 {
    m.div_ceil(BM as u64) * n.div_ceil(BN as u64)
}

/// This implementation packs nothing: its only workspace is the split-K partial sums.
pub(super) fn workspace(p: &Conv2dParams) -> Workspace {
    let splits = p.with_splits_for(weight_workgroups(p)).splits as u64;
    Workspace {
        partials: splits * p.weight_len(),
        ..Workspace::default()
    }
}

/// Workgroups of one split of the weight gradient: the K x CRS output in tiles.
pub(super) fn weight_workgroups(p: &Conv2dParams) -> u64 {
    tiles(p.c_out as u64, p.taps())
}

/// [x, affine, weight, bias, y] -> y.
pub(super) fn forward(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [x, affine, weight, bias, y]: [View<'_>; 5],
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (x.dtype, x.dtype.size());
    let views = [(1, x), (2, weight), (3, bias), (4, y), (14, affine)];
    let grid = Grid::Workgroups(tiles(p.c_out as u64, p.npq()));
    let d = k.dispatch(FORWARD.variant(v, dtype), p, &views, grid)?;
    Ok(vec![d.with_cost(
        2 * p.macs(),
        e * (p.x_len() + p.y_len() + p.weight_len()),
    )])
}

/// [dy, weight, dx] -> dx (`=` or `+=` as the params say).
pub(super) fn backward_data(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [dy, weight, dx]: [View<'_>; 3],
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (dy.dtype, dy.dtype.size());
    let nhw = p.x_len() / p.c_in as u64;
    let grid = Grid::Workgroups(tiles(p.c_in as u64, nhw));
    let views = [(2, weight), (5, dy), (6, dx)];
    let d = k.dispatch(BACKWARD_DATA.variant(v, dtype), p, &views, grid)?;
    let dx_bytes = e * p.x_len() * (2 - p.overwrite as u64);
    Ok(vec![d.with_cost(
        2 * p.macs(),
        e * (p.y_len() + p.weight_len()) + dx_bytes,
    )])
}

/// [x, affine, dy, partials, dweight] with the params' splits: split-K partial sums over
/// output pixels, then their sum added into dweight.
pub(super) fn backward_weight(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [x, affine, dy, partials, dweight]: [View<'_>; 5],
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (x.dtype, x.dtype.size());
    let views = [(1, x), (5, dy), (7, partials), (14, affine)];
    let grid = Grid::Workgroups(weight_workgroups(p) * p.splits as u64);
    let d = k.dispatch(BACKWARD_WEIGHT.variant(v, dtype), p, &views, grid)?;
    let bytes = e * (p.x_len() + p.y_len() + p.splits as u64 * p.weight_len());
    Ok(vec![
        d.with_cost(2 * p.macs(), bytes),
        super::regtile::reduce(k, v, p, partials, dweight)?,
    ])
}
