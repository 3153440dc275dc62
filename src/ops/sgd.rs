//! SGD with momentum, weight decay and optional Nesterov, as torch.optim.SGD (dampening 0).

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, Access::*, Dispatch, Entry, Shader};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct SgdParams {
    pub count: u32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: u32,
    pub _pad: [u32; 3],
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
            _pad: [0; 3],
        })
    }
}

pub static SHADER: Shader = Shader {
    file: "sgd.wgsl",
    source: include_str!("../../shaders/sgd.wgsl"),
    entries: &[Entry::new::<SgdParams>(
        "sgd_update",
        &[(1, ReadWrite), (2, Read), (3, ReadWrite)],
        256,
    )],
};

/// param -= lr * step; `velocity` is needed (and updated) only when momentum > 0.
pub fn sgd_update(
    gpu: &Gpu,
    p: &SgdParams,
    param: View<'_>,
    grad: View<'_>,
    velocity: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let need = p.count as u64;
    ensure_shape!(
        param.len >= need && grad.len >= need,
        OP,
        "param ({}) and grad ({}) need {need} elements",
        param.len,
        grad.len
    );
    let velocity = match velocity {
        Some(v) => {
            ensure_shape!(
                v.len >= need,
                OP,
                "velocity has {} elements, needs {need}",
                v.len
            );
            v
        }
        None => {
            ensure_shape!(
                p.momentum == 0.0,
                OP,
                "momentum {} needs a velocity buffer",
                p.momentum
            );
            View {
                buffer: &gpu.dummy,
                offset: 0,
                len: 1,
            }
        }
    };
    let d = dispatch(
        gpu,
        "sgd_update",
        p,
        &[(1, param), (2, grad), (3, velocity)],
        need,
    )?;
    Ok(vec![d])
}
