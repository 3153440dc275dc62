//! Dynamic loss scaling for f16 training, as `torch.amp.GradScaler`: the loss gradient is
//! scaled up so that small activation gradients survive f16, the optimizer scales the f32
//! parameter gradients back down, and a step whose gradients hold inf or NaN is skipped and
//! halves the scale; after `interval` clean steps the scale doubles. The whole loop runs on
//! the GPU (a 4-word state buffer, [`LossScaleState`]): no step waits for the host.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{read, write_u32, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN};

/// The first scale (PyTorch's default).
pub const INITIAL_SCALE: f32 = 65536.0;
/// Clean steps before the scale doubles (PyTorch's default).
pub const GROWTH_INTERVAL: u32 = 2000;
/// u32 words of the state buffer.
pub const STATE_LEN: u64 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LossScaleParams {
    /// Gradients to check.
    pub count: u32,
    /// Clean steps before the scale doubles.
    pub interval: u32,
    pub _pad: [u32; 2],
}

const OP: &str = "loss_scale";

impl LossScaleParams {
    pub fn new(count: u32, interval: u32) -> Result<Self> {
        ensure_shape!(
            interval > 0,
            OP,
            "growth interval {interval} must be positive"
        );
        Ok(LossScaleParams {
            count,
            interval,
            _pad: [0; 2],
        })
    }
}

/// The state buffer's contents (also kept in a checkpoint, so a resumed f16 run goes on with
/// the scale it had).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaleState {
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub clean: u32,
    /// Steps skipped for inf or NaN gradients, in all.
    pub skipped: u32,
    /// Set by the check, cleared by the update.
    pub overflow: bool,
}

impl LossScaleState {
    pub fn initial() -> Self {
        LossScaleState {
            scale: INITIAL_SCALE,
            clean: 0,
            skipped: 0,
            overflow: false,
        }
    }

    pub fn to_words(self) -> [u32; 4] {
        [
            self.scale.to_bits(),
            self.clean,
            self.skipped,
            self.overflow as u32,
        ]
    }

    pub fn from_words(w: &[u32]) -> Self {
        LossScaleState {
            scale: f32::from_bits(w[0]),
            clean: w[1],
            skipped: w[2],
            overflow: w[3] != 0,
        }
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "loss_scale.wgsl",
    source: Source::File(include_str!("../../shaders/loss_scale.wgsl")),
    entries: &[&CHECK, &UPDATE],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32],
};

pub static CHECK: Entry =
    Entry::new::<LossScaleParams>(&SHADER, "loss_scale_check", &[read(1), write_u32(2)], 256);
pub static UPDATE: Entry =
    Entry::new::<LossScaleParams>(&SHADER, "loss_scale_update", &[write_u32(2)], 1);

fn check_state(state: &View<'_>) -> Result<()> {
    ensure_shape!(
        state.len >= STATE_LEN && state.dtype == DType::U32,
        OP,
        "the state needs {STATE_LEN} u32s, got {} {}",
        state.len,
        state.dtype
    );
    Ok(())
}

/// Sets the state's overflow flag if any of `p.count` gradients is inf or NaN.
pub fn loss_scale_check(
    k: &Kernels,
    p: &LossScaleParams,
    grad: View<'_>,
    state: View<'_>,
) -> Result<Dispatch> {
    check_state(&state)?;
    super::check_len(OP, "grad", &grad, p.count as u64, p)?;
    let views = [(1, grad), (2, state)];
    let d = k.dispatch(
        CHECK.kernel(DType::F32),
        p,
        &views,
        Grid::Threads(p.count as u64),
    )?;
    Ok(d.with_cost(p.count as u64, 4 * p.count as u64))
}

/// After the optimizer: the new scale from this step's flag, which it clears.
pub fn loss_scale_update(k: &Kernels, p: &LossScaleParams, state: View<'_>) -> Result<Dispatch> {
    check_state(&state)?;
    k.dispatch(
        UPDATE.kernel(DType::F32),
        p,
        &[(2, state)],
        Grid::Workgroups(1),
    )
}
