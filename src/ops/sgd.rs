//! SGD with momentum, weight decay and optional Nesterov, as torch.optim.SGD (dampening 0).

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_u32, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct SgdParams {
    pub count: u32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: u32,
    /// Non-zero: the gradients are of a scaled loss; see [`SgdParams::with_loss_scale`].
    pub loss_scaled: u32,
    /// Non-zero: the gradients are clipped by a [`crate::ops::grad_clip`] factor.
    pub clipped: u32,
    pub _pad: u32,
}

const OP: &str = "sgd_update";

impl SgdParams {
    pub fn new(
        count: u32,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        nesterov: bool,
    ) -> Result<Self> {
        ensure_shape!(
            lr.is_finite() && lr >= 0.0,
            OP,
            "learning rate {lr} must be a finite number >= 0"
        );
        ensure_shape!(
            (0.0..1.0).contains(&momentum),
            OP,
            "momentum {momentum} must be in [0, 1)"
        );
        ensure_shape!(
            weight_decay.is_finite() && weight_decay >= 0.0,
            OP,
            "weight decay {weight_decay} must be a finite number >= 0"
        );
        ensure_shape!(
            !nesterov || momentum > 0.0,
            OP,
            "Nesterov momentum needs a momentum > 0"
        );
        Ok(SgdParams {
            count,
            lr,
            momentum,
            weight_decay,
            nesterov: nesterov as u32,
            loss_scaled: 0,
            clipped: 0,
            _pad: 0,
        })
    }

    /// The gradients are of a loss scaled by a [`crate::ops::loss_scale`] state: the update
    /// divides them by its scale, and is skipped on a step whose gradients overflowed.
    pub fn with_loss_scale(mut self) -> Self {
        self.loss_scaled = 1;
        self
    }

    /// The gradients are multiplied by a [`crate::ops::grad_clip`] factor first.
    pub fn with_clip(mut self) -> Self {
        self.clipped = 1;
        self
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "sgd.wgsl",
    source: Source::File(include_str!("../../shaders/sgd.wgsl")),
    entries: &[&SGD_UPDATE],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32],
};

pub static SGD_UPDATE: Entry = Entry::new::<SgdParams>(
    &SHADER,
    "sgd_update",
    &[write(1), read(2), write(3), read_u32(4), read(5)],
    256,
);

/// The optional inputs of an update: the loss-scale state (exactly when the params say the
/// loss is scaled) and the clip factors (exactly when they say the gradients are clipped).
#[derive(Clone, Copy, Default)]
pub struct SgdInputs<'a> {
    pub scale_state: Option<View<'a>>,
    pub clip: Option<View<'a>>,
}

/// param -= lr * step; `velocity` is needed (and updated) only when momentum > 0.
pub fn sgd_update(
    k: &Kernels,
    p: &SgdParams,
    param: View<'_>,
    grad: View<'_>,
    velocity: Option<View<'_>>,
    inputs: SgdInputs<'_>,
) -> Result<Vec<Dispatch>> {
    let SgdInputs { scale_state, clip } = inputs;
    ensure_shape!(
        clip.is_some() == (p.clipped != 0),
        OP,
        "clip factors given: {}, but the params say clipped = {}",
        clip.is_some(),
        p.clipped
    );
    ensure_shape!(
        scale_state.is_some() == (p.loss_scaled != 0),
        OP,
        "a loss-scale state given: {}, but the params say loss_scaled = {}",
        scale_state.is_some(),
        p.loss_scaled
    );
    let need = p.count as u64;
    ensure_shape!(
        param.len >= need && grad.len >= need,
        OP,
        "param ({}) and grad ({}) need {need} elements",
        param.len,
        grad.len
    );
    match &velocity {
        Some(v) => ensure_shape!(
            v.len >= need,
            OP,
            "velocity has {} elements, needs {need}",
            v.len
        ),
        None => ensure_shape!(
            p.momentum == 0.0,
            OP,
            "momentum {} needs a velocity buffer",
            p.momentum
        ),
    }
    let dtype = super::float_dtype(OP, &[&param, &grad])?;
    let p_velocity = velocity.is_some() as u64;
    let views = [
        (1, param),
        (2, grad),
        (3, k.optional(velocity, dtype)),
        (4, k.optional(scale_state, DType::U32)),
        (5, k.optional(clip, dtype)),
    ];
    let grid = Grid::Threads(need);
    // Parameters read and written, gradient read, velocity read and written.
    let d = k.dispatch(SGD_UPDATE.kernel(dtype), p, &views, grid)?;
    Ok(vec![d.with_cost(
        6 * need,
        (3 + 2 * p_velocity) * dtype.size() * need,
    )])
}
