//! Adam and AdamW, as torch.optim.Adam and AdamW (amsgrad off): the optimizers of the
//! fine-tuning recipes (CheXNet: Adam at 1e-3).

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_u32, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN,
};
use crate::ops::sgd::SgdInputs;

/// The uniform of `adam_update` (see shaders/adam.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct AdamParams {
    pub count: u32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Non-zero: AdamW's decoupled weight decay; zero: Adam's L2 term in the gradient.
    pub decoupled: u32,
    pub loss_scaled: u32,
    pub clipped: u32,
    /// 1 - beta1^t and 1 - beta2^t of step t (1-based), set by [`AdamParams::at_step`].
    pub bias1: f32,
    pub bias2: f32,
    pub _pad: u32,
}

const OP: &str = "adam_update";

impl AdamParams {
    pub fn new(
        count: u32,
        lr: f32,
        (beta1, beta2): (f32, f32),
        eps: f32,
        weight_decay: f32,
        decoupled: bool,
    ) -> Result<Self> {
        ensure_shape!(
            lr.is_finite() && lr >= 0.0,
            OP,
            "learning rate {lr} must be a finite number >= 0"
        );
        ensure_shape!(
            (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2),
            OP,
            "betas ({beta1}, {beta2}) must be in [0, 1)"
        );
        ensure_shape!(eps.is_finite() && eps > 0.0, OP, "eps {eps} must be > 0");
        ensure_shape!(
            weight_decay.is_finite() && weight_decay >= 0.0,
            OP,
            "weight decay {weight_decay} must be a finite number >= 0"
        );
        Ok(AdamParams {
            count,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled: decoupled as u32,
            loss_scaled: 0,
            clipped: 0,
            bias1: 1.0 - beta1,
            bias2: 1.0 - beta2,
            _pad: 0,
        })
    }

    /// The bias corrections of update `t` (1-based: the first update is t = 1).
    pub fn at_step(mut self, t: u64) -> Self {
        let t = t.max(1) as i32;
        self.bias1 = (1.0 - (self.beta1 as f64).powi(t)) as f32;
        self.bias2 = (1.0 - (self.beta2 as f64).powi(t)) as f32;
        self
    }

    /// The gradients are of a scaled loss (see [`crate::ops::sgd::SgdParams::with_loss_scale`]).
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
    file: "adam.wgsl",
    source: Source::File(include_str!("../../shaders/adam.wgsl")),
    entries: &[&ADAM_UPDATE],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32],
};

pub static ADAM_UPDATE: Entry = Entry::new::<AdamParams>(
    &SHADER,
    "adam_update",
    &[write(1), read(2), write(3), write(4), read_u32(5), read(6)],
    256,
);

/// One Adam(W) update of `param` from `grad`, moving the moments `exp_avg` and
/// `exp_avg_sq`; `inputs` as for SGD (loss-scale state, clip factors).
pub fn adam_update(
    k: &Kernels,
    p: &AdamParams,
    param: View<'_>,
    grad: View<'_>,
    (exp_avg, exp_avg_sq): (View<'_>, View<'_>),
    inputs: SgdInputs<'_>,
) -> Result<Vec<Dispatch>> {
    let SgdInputs { scale_state, clip } = inputs;
    ensure_shape!(
        clip.is_some() == (p.clipped != 0) && scale_state.is_some() == (p.loss_scaled != 0),
        OP,
        "clip factors or loss-scale state given without the params saying so (or the reverse)"
    );
    let need = p.count as u64;
    ensure_shape!(
        [&param, &grad, &exp_avg, &exp_avg_sq]
            .iter()
            .all(|v| v.len >= need),
        OP,
        "param, grad and both moments need {need} elements"
    );
    let kernel = ADAM_UPDATE.kernel(DType::F32);
    // Parameters, both moments read and written, gradient read.
    let views = [
        (1, param),
        (2, grad),
        (3, exp_avg),
        (4, exp_avg_sq),
        (5, k.optional(scale_state, DType::U32)),
        (6, k.optional(clip, DType::F32)),
    ];
    let d = k.dispatch(kernel, p, &views, Grid::Threads(need))?;
    Ok(vec![d.with_cost(12 * need, 7 * 4 * need)])
}
