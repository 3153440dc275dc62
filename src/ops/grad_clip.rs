//! Gradient clipping by the global L2 norm of all parameter gradients, as
//! `torch.nn.utils.clip_grad_norm_`: a partial-sum pass over chunks, then one workgroup that
//! adds the partials in order and writes [norm, factor] for `sgd_update` to apply. With a
//! scaled loss (f16 training) the norm is of the unscaled gradients.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_u32, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct GradClipParams {
    pub count: u32,
    /// Gradients per workgroup of the partial pass.
    pub chunk: u32,
    /// Workgroups of the partial pass (partial sums).
    pub groups: u32,
    /// Non-zero: divide the norm by the loss scale of a `loss_scale` state.
    pub loss_scaled: u32,
    pub max_norm: f32,
    pub _pad: [u32; 3],
}

const OP: &str = "grad_clip";
/// Workgroups of the partial pass at most: enough to fill a large GPU.
const GROUPS: u64 = 512;

impl GradClipParams {
    /// Clipping `count` gradients to a global norm of at most `max_norm` (> 0).
    pub fn new(count: u32, max_norm: f32) -> Result<Self> {
        ensure_shape!(
            max_norm.is_finite() && max_norm > 0.0,
            OP,
            "the gradient norm limit {max_norm} must be a positive number"
        );
        let per = (count as u64).div_ceil(GROUPS).max(256);
        let groups = (count as u64).div_ceil(per).max(1);
        Ok(GradClipParams {
            count,
            chunk: per as u32,
            groups: groups as u32,
            loss_scaled: 0,
            max_norm,
            _pad: [0; 3],
        })
    }

    /// The norm is of gradients of a scaled loss: divide it by the state's scale.
    pub fn with_loss_scale(mut self) -> Self {
        self.loss_scaled = 1;
        self
    }

    /// Elements of the partial sums buffer.
    pub fn partials_len(&self) -> u64 {
        self.groups as u64
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "grad_clip.wgsl",
    source: Source::File(include_str!("../../shaders/grad_clip.wgsl")),
    entries: &[&PARTIAL, &FACTOR],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32],
};

pub static PARTIAL: Entry =
    Entry::new::<GradClipParams>(&SHADER, "grad_norm_partial", &[read(1), write(2)], 256);
pub static FACTOR: Entry = Entry::new::<GradClipParams>(
    &SHADER,
    "grad_clip_factor",
    &[read(3), write(4), read_u32(5)],
    256,
);

/// `clip` = [norm, min(1, max_norm / (norm + 1e-6))] of `p.count` gradients, through
/// `partials` ([`GradClipParams::partials_len`]); `scale_state` exactly when the params say
/// the loss is scaled.
pub fn grad_clip(
    k: &Kernels,
    p: &GradClipParams,
    grad: View<'_>,
    partials: View<'_>,
    clip: View<'_>,
    scale_state: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    super::check_len(OP, "grad", &grad, p.count as u64, p)?;
    super::check_len(OP, "partials", &partials, p.partials_len(), p)?;
    super::check_len(OP, "clip", &clip, 2, p)?;
    ensure_shape!(
        scale_state.is_some() == (p.loss_scaled != 0),
        OP,
        "a loss-scale state given: {}, but the params say loss_scaled = {}",
        scale_state.is_some(),
        p.loss_scaled
    );
    let partial = k.dispatch(
        PARTIAL.kernel(DType::F32),
        p,
        &[(1, grad), (2, partials)],
        Grid::Workgroups(p.groups as u64),
    )?;
    let state = k.optional(scale_state, DType::U32);
    let views = [(3, partials), (4, clip), (5, state)];
    let factor = k.dispatch(FACTOR.kernel(DType::F32), p, &views, Grid::Workgroups(1))?;
    let n = p.count as u64;
    Ok(vec![partial.with_cost(2 * n, 4 * n), factor])
}
