//! The workgroup-tiled implementation of conv2d (what GPUs run best): implicit GEMMs over
//! 32 x 64 output tiles staged through workgroup memory, 4 x 4 outputs per invocation, no
//! packing pass; the weight gradient walks output pixels with split-K. The forward and the
//! data gradient split their reduced dimension too where their output alone would launch too
//! few workgroups to fill a large GPU (the small late layers), the partial sums then added in
//! order by a reduce pass. The staged tiles are multiplied either by every invocation in f32
//! registers (`wgtile`) or by subgroups with f16 cooperative matrices (`coop8`, `coop16`;
//! see [`coop`](super::coop)).

use super::{coop, Conv2dParams, Workspace, OP};
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, write_f32, Dispatch, Entry, Grid, Kernels, Needs, Shader, Source, Split,
    Variant,
};

pub static SHADER: Shader = Shader {
    op: OP,
    file: "conv2d_tiled.wgsl",
    source: Source::Generated(generate),
    entries: &[
        &FORWARD,
        &FORWARD_REDUCE,
        &BACKWARD_DATA,
        &BACKWARD_DATA_REDUCE,
        &BACKWARD_WEIGHT,
    ],
    variants: &[
        Variant {
            name: "wgtile",
            about: "32 x 64 output tiles through workgroup memory, 4 x 4 per invocation",
            needs: Needs::Nothing,
            splits: Split::ALL,
        },
        Variant {
            name: "coop8",
            about: "wgtile's tiles in f16, multiplied by 8x8x8 cooperative matrices into f32 \
                    (Mesa lavapipe 26.1)",
            needs: Needs::CoopMatrix {
                size: 8,
                subgroup: coop::subgroup_for(8),
            },
            splits: Split::ALL,
        },
        Variant {
            name: "coop16",
            about: "wgtile's tiles in f16, multiplied by 16x16x16 cooperative matrices into \
                    f32 (NVIDIA tensor cores)",
            needs: Needs::CoopMatrix {
                size: 16,
                subgroup: coop::subgroup_for(16),
            },
            splits: Split::ALL,
        },
    ],
    choice: "see the register-tile shader; GPUs in f16 take a coop variant the adapter runs",
    dtypes: &[DType::F32, DType::F16],
};

/// The cooperative-matrix variants, largest fragments first.
pub(super) fn coop_variants() -> impl Iterator<Item = &'static Variant> {
    SHADER
        .variants
        .iter()
        .rev()
        .filter(|v| matches!(v.needs, Needs::CoopMatrix { .. }))
}

/// conv2d_tiled.wgsl with `variant`'s code at each marker line (a comment `// @name`), the
/// code indented as the marker.
fn generate(variant: &Variant, _dtype: DType) -> String {
    let markers = match variant.needs {
        Needs::CoopMatrix { size, .. } => coop::markers(size),
        Needs::Nothing => wgtile_markers(),
    };
    let template = include_str!("../../../shaders/conv2d_tiled.wgsl");
    let mut out = String::with_capacity(template.len() + 4096);
    for line in template.lines() {
        let marker = line.trim().strip_prefix("// ");
        match marker.and_then(|m| markers.iter().find(|(name, _)| *name == m)) {
            Some((_, code)) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                for l in code.lines() {
                    out.push_str(&format!("{indent}{l}\n"));
                }
            }
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// The f32 register-tile multiply: padded rows, so that a column written by consecutive
/// invocations falls in different banks, and 4 x 4 x BK multiply-adds per invocation.
fn wgtile_markers() -> [(&'static str, String); 5] {
    let code = [
        "alias tile_t = f32;",
        "const AS: u32 = BM + 1u;",
        "const BS: u32 = BN + 1u;",
        "var<workgroup> tile_a: array<tile_t, BK * AS>;",
        "var<workgroup> tile_b: array<tile_t, BK * BS>;",
        "",
        "fn mac_step(acc: ptr<function, Acc>, tx: u32, ty: u32) {",
        "    for (var kk = 0u; kk < BK; kk++) {",
        "        let ai = kk * AS + ty * 4u;",
        "        let bi = kk * BS + tx * 4u;",
        "        let a = vec4<f32>(tile_a[ai], tile_a[ai + 1u], tile_a[ai + 2u], tile_a[ai + 3u]);",
        "        let b = vec4<f32>(tile_b[bi], tile_b[bi + 1u], tile_b[bi + 2u], tile_b[bi + 3u]);",
        "        (*acc).r0 += a.x * b;",
        "        (*acc).r1 += a.y * b;",
        "        (*acc).r2 += a.z * b;",
        "        (*acc).r3 += a.w * b;",
        "    }",
        "}",
    ];
    [
        ("@generated-tile-code", code.join("\n")),
        ("@entry-builtins", String::new()),
        ("@acc-init", String::new()),
        ("@mac", "mac_step(&acc, tx, ty);".into()),
        ("@acc-finish", String::new()),
    ]
}

pub static FORWARD: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_forward",
    &[
        write(1),
        read_f32(2),
        read_f32(3),
        write(4),
        write_f32(7),
        read_f32(14),
    ],
    128,
);
pub static FORWARD_REDUCE: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_forward_reduce",
    &[read_f32(3), write(4), read_f32(8)],
    128,
);
pub static BACKWARD_DATA: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_data",
    &[read_f32(2), read(5), write(6), write_f32(7)],
    128,
);
pub static BACKWARD_DATA_REDUCE: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_data_reduce",
    &[write(6), read_f32(8)],
    128,
);
pub static BACKWARD_WEIGHT: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_weight",
    &[write(1), read(5), write_f32(7), read_f32(14)],
    128,
);

/// The output tile of a workgroup and the reduced rows per step (conv2d_tiled.wgsl's BM x BN,
/// BK).
const BM: u32 = 32;
const BN: u32 = 64;
const BK: u64 = 16;
/// Workgroups a launch should have to fill a large GPU (about two per compute unit).
const TARGET_WORKGROUPS: u64 = 256;

/// Workgroups covering an M x N output in tiles.
fn tiles(m: u64, n: u64) -> u64 {
    m.div_ceil(BM as u64) * n.div_ceil(BN as u64)
}

/// (splits, rows per split) of a reduced dimension of `len` rows for an output of `tiles`
/// tiles: enough splits to reach the target number of workgroups (scaled by `s`), each at
/// least 4 steps.
fn split(tiles: u64, len: u64, s: Split) -> (u32, u32) {
    let wanted = s
        .scale(TARGET_WORKGROUPS)
        .div_ceil(tiles)
        .min(len.div_ceil(4 * BK))
        .max(1);
    let chunk = len.div_ceil(wanted).next_multiple_of(BK);
    (len.div_ceil(chunk) as u32, chunk as u32)
}

/// The forward's params with its split of C*R*S.
pub(super) fn forward_params(p: &Conv2dParams, s: Split) -> Conv2dParams {
    let (splits, chunk) = split(tiles(p.c_out as u64, p.npq()), p.taps(), s);
    Conv2dParams {
        splits,
        chunk,
        ..*p
    }
}

/// The data gradient's params with its split of K*R*S.
pub(super) fn data_params(p: &Conv2dParams, s: Split) -> Conv2dParams {
    let nhw = p.x_len() / p.c_in as u64;
    let krs = p.c_out as u64 * p.kernel_h as u64 * p.kernel_w as u64;
    let (splits, chunk) = split(tiles(p.c_in as u64, nhw), krs, s);
    Conv2dParams {
        splits,
        chunk,
        ..*p
    }
}

/// This implementation packs nothing: its workspaces are partial sums, of the forward and
/// the data gradient where they split, and of the weight gradient; every split as `s` says.
pub(super) fn workspace(p: &Conv2dParams, s: Split) -> Workspace {
    let splits = p.with_splits_for(weight_workgroups(p), s).splits as u64;
    let (f, d) = (forward_params(p, s), data_params(p, s));
    let if_split = |q: &Conv2dParams, len: u64| {
        if q.splits > 1 {
            q.splits as u64 * len
        } else {
            0
        }
    };
    Workspace {
        forward: if_split(&f, p.y_len()),
        data: if_split(&d, p.x_len()),
        packed_dy: 0,
        partials: splits * p.weight_len(),
    }
}

/// Workgroups of one split of the weight gradient: the K x CRS output in tiles.
pub(super) fn weight_workgroups(p: &Conv2dParams) -> u64 {
    tiles(p.c_out as u64, p.taps())
}

/// [x, affine, weight, bias, y] -> y, through `partials` (the params' forward split times
/// y's elements) where C*R*S is split ([`forward_params`]).
pub(super) fn forward(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [x, affine, weight, bias, y]: [View<'_>; 5],
    partials: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (x.dtype, x.dtype.size());
    let partials = k.optional(partials, dtype);
    let views = [
        (1, x),
        (2, weight),
        (3, bias),
        (4, y),
        (7, partials),
        (14, affine),
    ];
    let grid = Grid::Workgroups(tiles(p.c_out as u64, p.npq()) * p.splits as u64);
    let d = k.dispatch(FORWARD.variant(v, dtype), p, &views, grid)?;
    let out_bytes = e * p.y_len() * p.splits as u64;
    let mut all = vec![d.with_cost(2 * p.macs(), e * (p.x_len() + p.weight_len()) + out_bytes)];
    if p.splits > 1 {
        let views = [(3, bias), (4, y), (8, partials)];
        let grid = Grid::Threads(p.y_len());
        all.push(k.dispatch(FORWARD_REDUCE.variant(v, dtype), p, &views, grid)?);
    }
    Ok(all)
}

/// [dy, weight, dx] -> dx (`=` or `+=` as the params say), through `partials` (the params'
/// data split times dx's elements) where K*R*S is split ([`data_params`]).
pub(super) fn backward_data(
    k: &Kernels,
    v: &'static Variant,
    p: &Conv2dParams,
    [dy, weight, dx]: [View<'_>; 3],
    partials: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let (dtype, e) = (dy.dtype, dy.dtype.size());
    let partials = k.optional(partials, dtype);
    let nhw = p.x_len() / p.c_in as u64;
    let grid = Grid::Workgroups(tiles(p.c_in as u64, nhw) * p.splits as u64);
    let views = [(2, weight), (5, dy), (6, dx), (7, partials)];
    let d = k.dispatch(BACKWARD_DATA.variant(v, dtype), p, &views, grid)?;
    let dx_bytes = e * p.x_len() * (2 - p.overwrite as u64);
    let bytes = e * (p.y_len() + p.weight_len());
    if p.splits == 1 {
        return Ok(vec![d.with_cost(2 * p.macs(), bytes + dx_bytes)]);
    }
    let views = [(6, dx), (8, partials)];
    let grid = Grid::Threads(p.x_len());
    let reduce = k.dispatch(BACKWARD_DATA_REDUCE.variant(v, dtype), p, &views, grid)?;
    let split_bytes = e * p.x_len() * p.splits as u64;
    Ok(vec![d.with_cost(2 * p.macs(), bytes + split_bytes), reduce])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The d2l network's last block at batch 256 (3x3 pixels): its output alone would be 36
    /// workgroups, so the reduced dimension is split until the launch fills a large GPU; its
    /// first block (24x24) is large enough whole.
    #[test]
    fn small_layers_split_to_fill_the_device() {
        let small = Conv2dParams::new([256, 216, 3, 3], 32, (3, 3), (1, 1), (1, 1), true).unwrap();
        let f = forward_params(&small, Split::Default);
        assert!(
            tiles(32, small.npq()) * f.splits as u64 >= TARGET_WORKGROUPS,
            "{f:?}"
        );
        assert_eq!(f.chunk as u64 % BK, 0);
        assert!(f.splits as u64 * f.chunk as u64 >= small.taps());
        let d = data_params(&small, Split::Default);
        assert!(tiles(216, small.x_len() / 216) * d.splits as u64 >= TARGET_WORKGROUPS);
        let big = Conv2dParams::new([256, 64, 24, 24], 32, (3, 3), (1, 1), (1, 1), true).unwrap();
        assert_eq!(forward_params(&big, Split::Default).splits, 1);
        assert_eq!(workspace(&big, Split::Default).forward, 0);
        // The tuner's other split settings split the small layer less and more.
        assert!(forward_params(&small, Split::Fewer).splits < f.splits);
        assert!(forward_params(&small, Split::More).splits > f.splits);
    }
}
