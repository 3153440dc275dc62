//! Fully connected layer on feature-major inputs.
//!
//! Shapes: x (I, N) feature-major (what global average pooling produces), weight (O, I) as in
//! PyTorch, bias (O), y (N, O) row-major logits.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, Access::*, Dispatch, Entry, Shader};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LinearParams {
    pub n: u32,
    pub in_features: u32,
    pub out_features: u32,
    pub has_bias: u32,
}

const OP: &str = "linear";

impl LinearParams {
    pub fn new(n: u32, in_features: u32, out_features: u32, bias: bool) -> Result<Self> {
        ensure_shape!(
            n > 0 && in_features > 0 && out_features > 0,
            OP,
            "batch {n}, in_features {in_features} and out_features {out_features} must be positive"
        );
        Ok(LinearParams {
            n,
            in_features,
            out_features,
            has_bias: bias as u32,
        })
    }

    pub fn x_len(&self) -> u64 {
        self.in_features as u64 * self.n as u64
    }
    pub fn y_len(&self) -> u64 {
        self.out_features as u64 * self.n as u64
    }
    pub fn weight_len(&self) -> u64 {
        self.out_features as u64 * self.in_features as u64
    }

    fn check(&self, what: &str, view: &View<'_>, need: u64) -> Result<()> {
        super::check_len(OP, what, view, need, self)
    }
}

pub static SHADER: Shader = Shader {
    file: "linear.wgsl",
    source: include_str!("../../shaders/linear.wgsl"),
    entries: &[
        Entry::new::<LinearParams>(
            "linear_forward",
            &[(1, Read), (2, Read), (3, Read), (4, ReadWrite)],
            64,
        ),
        Entry::new::<LinearParams>(
            "linear_backward_data",
            &[(2, Read), (5, Read), (6, ReadWrite)],
            64,
        ),
        Entry::new::<LinearParams>(
            "linear_backward_weight",
            &[(1, Read), (5, Read), (7, ReadWrite)],
            64,
        ),
        Entry::new::<LinearParams>("linear_backward_bias", &[(5, Read), (8, ReadWrite)], 64),
    ],
};

/// y (N, O) = x^T W^T + b.
pub fn linear_forward(
    gpu: &Gpu,
    p: &LinearParams,
    x: View<'_>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("x", &x, p.x_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("y", &y, p.y_len())?;
    ensure_shape!(
        bias.is_some() == (p.has_bias != 0),
        OP,
        "bias given: {}, but params say has_bias = {}",
        bias.is_some(),
        p.has_bias
    );
    if let Some(b) = &bias {
        p.check("bias", b, p.out_features as u64)?;
    }
    let bias = bias.unwrap_or(View {
        buffer: &gpu.dummy,
        offset: 0,
        len: 1,
    });
    let d = dispatch(
        gpu,
        "linear_forward",
        p,
        &[(1, x), (2, weight), (3, bias), (4, y)],
        p.y_len(),
    )?;
    Ok(vec![d])
}

/// dx (I, N) += W^T dy.
pub fn linear_backward_data(
    gpu: &Gpu,
    p: &LinearParams,
    dy: View<'_>,
    weight: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("dx", &dx, p.x_len())?;
    let d = dispatch(
        gpu,
        "linear_backward_data",
        p,
        &[(2, weight), (5, dy), (6, dx)],
        p.x_len(),
    )?;
    Ok(vec![d])
}

/// dweight (O, I) += dy^T x^T.
pub fn linear_backward_weight(
    gpu: &Gpu,
    p: &LinearParams,
    x: View<'_>,
    dy: View<'_>,
    dweight: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("x", &x, p.x_len())?;
    p.check("dy", &dy, p.y_len())?;
    p.check("dweight", &dweight, p.weight_len())?;
    let d = dispatch(
        gpu,
        "linear_backward_weight",
        p,
        &[(1, x), (5, dy), (7, dweight)],
        p.weight_len(),
    )?;
    Ok(vec![d])
}

/// dbias (O) += dy summed over the batch.
pub fn linear_backward_bias(
    gpu: &Gpu,
    p: &LinearParams,
    dy: View<'_>,
    dbias: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_len())?;
    p.check("dbias", &dbias, p.out_features as u64)?;
    let d = dispatch(
        gpu,
        "linear_backward_bias",
        p,
        &[(5, dy), (8, dbias)],
        p.out_features as u64,
    )?;
    Ok(vec![d])
}
