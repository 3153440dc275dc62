//! The GPU implementation of batch-norm statistics and backward: many workgroups per
//! channel, each reducing one chunk of the channel's values, then a second pass that combines
//! a channel's chunks in order (batchnorm_split.wgsl).

use bytemuck::{Pod, Zeroable};

use super::{BatchNormParams, OP};
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, write_f32, Dispatch, Entry, Grid, Kernels, Needs, Shader, Source, Split,
    Variant,
};

/// A [`BatchNormParams`] with its chunking, the uniform of batchnorm_split.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BatchNormSplitParams {
    pub bn: BatchNormParams,
    /// Chunks per channel (at most 256) and values per chunk.
    pub groups: u32,
    pub chunk: u32,
    pub _pad: [u32; 2],
}

/// Chunks enough for about 512 workgroups in all, each at least 2048 values.
pub(super) const TARGET_WORKGROUPS: u64 = 512;
const MIN_CHUNK: u64 = 2048;

impl BatchNormSplitParams {
    pub fn new(bn: &BatchNormParams) -> Self {
        let (c, m) = (bn.c as u64, bn.m as u64);
        let wanted = TARGET_WORKGROUPS
            .div_ceil(c)
            .min(m.div_ceil(MIN_CHUNK))
            .clamp(1, 256);
        let chunk = m.div_ceil(wanted);
        BatchNormSplitParams {
            bn: *bn,
            groups: m.div_ceil(chunk) as u32,
            chunk: chunk as u32,
            _pad: [0; 2],
        }
    }

    /// Elements of the partial sums: two per chunk of every channel.
    pub fn partials_len(&self) -> u64 {
        2 * self.bn.c as u64 * self.groups as u64
    }

    fn workgroups(&self) -> Grid {
        Grid::Workgroups(self.bn.c as u64 * self.groups as u64)
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "batchnorm_split.wgsl",
    source: Source::File(include_str!("../../../shaders/batchnorm_split.wgsl")),
    entries: &[
        &STATS_PARTIAL,
        &STATS_COMBINE,
        &BACKWARD_PARTIAL,
        &BACKWARD_APPLY,
    ],
    variants: &[Variant {
        name: "split",
        about: "many workgroups per channel, chunks combined in order",
        needs: Needs::Nothing,
        splits: &[Split::Default],
    }],
    choice: "see the per-channel shader",
    dtypes: &[DType::F32, DType::F16],
};

pub static STATS_PARTIAL: Entry = Entry::new::<BatchNormSplitParams>(
    &SHADER,
    "batchnorm_stats_partial",
    &[read(1), write_f32(5)],
    256,
);
pub static STATS_COMBINE: Entry = Entry::new::<BatchNormSplitParams>(
    &SHADER,
    "batchnorm_stats_combine",
    &[
        read(1),
        read_f32(6),
        write_f32(7),
        write_f32(8),
        write_f32(9),
        write_f32(10),
    ],
    64,
);
pub static BACKWARD_PARTIAL: Entry = Entry::new::<BatchNormSplitParams>(
    &SHADER,
    "batchnorm_backward_partial",
    &[
        read(1),
        write_f32(5),
        read(11),
        read_f32(12),
        read_f32(13),
        read_f32(17),
    ],
    256,
);
pub static BACKWARD_APPLY: Entry = Entry::new::<BatchNormSplitParams>(
    &SHADER,
    "batchnorm_backward_apply",
    &[
        read(1),
        read_f32(6),
        read(11),
        read_f32(12),
        read_f32(13),
        write(14),
        read_f32(17),
        write_f32(18),
    ],
    256,
);

/// [x, mean, var, running_mean, running_var, partials]: the statistics of `p`'s channels
/// and the running update, in two passes.
pub(super) fn stats_update(
    k: &Kernels,
    v: &'static Variant,
    p: &BatchNormParams,
    [x, mean, var, rm, rv, partials]: [View<'_>; 6],
) -> Result<Vec<Dispatch>> {
    let sp = BatchNormSplitParams::new(p);
    crate::ops::check_len(OP, "partials", &partials, sp.partials_len(), p)?;
    let (dtype, e) = (x.dtype, x.dtype.size());
    let partial = k
        .dispatch(
            STATS_PARTIAL.variant(v, dtype),
            &sp,
            &[(1, x), (5, partials)],
            sp.workgroups(),
        )?
        .with_cost(3 * p.len(), e * p.len());
    let views = [
        (1, x),
        (6, partials),
        (7, mean),
        (8, var),
        (9, rm),
        (10, rv),
    ];
    let combine = k.dispatch(
        STATS_COMBINE.variant(v, dtype),
        &sp,
        &views,
        Grid::Threads(p.c as u64),
    )?;
    Ok(vec![partial, combine])
}

/// [x, dy, mean, var, gamma_beta, dx, dgamma_dbeta, partials] (gamma and beta, and their
/// gradients, one binding each, beta at `p.beta_at`): the sums per chunk, then dx (and
/// dgamma, dbeta) from the combined sums.
pub(super) fn backward(
    k: &Kernels,
    v: &'static Variant,
    p: &BatchNormParams,
    [x, dy, mean, var, gamma_beta, dx, dgamma_dbeta, partials]: [View<'_>; 8],
) -> Result<Vec<Dispatch>> {
    let sp = BatchNormSplitParams::new(p);
    crate::ops::check_len(OP, "partials", &partials, sp.partials_len(), p)?;
    let (dtype, e) = (x.dtype, x.dtype.size());
    let stats = [(11, dy), (12, mean), (13, var)];
    let views = [
        (1, x),
        (5, partials),
        stats[0],
        stats[1],
        stats[2],
        (17, gamma_beta),
    ];
    let partial = k
        .dispatch(
            BACKWARD_PARTIAL.variant(v, dtype),
            &sp,
            &views,
            sp.workgroups(),
        )?
        .with_cost(6 * p.len(), 2 * e * p.len());
    let views = [
        (1, x),
        (6, partials),
        stats[0],
        stats[1],
        stats[2],
        (14, dx),
        (17, gamma_beta),
        (18, dgamma_dbeta),
    ];
    let apply = k
        .dispatch(
            BACKWARD_APPLY.variant(v, dtype),
            &sp,
            &views,
            sp.workgroups(),
        )?
        .with_cost(10 * p.len(), 4 * e * p.len());
    Ok(vec![partial, apply])
}
