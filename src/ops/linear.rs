//! Fully connected layer on feature-major inputs.
//!
//! Shapes: x (I, N) feature-major (what global average pooling produces), weight (O, I) as in
//! PyTorch, bias (O), y (N, O) row-major logits.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, write_f32, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN,
};

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
    op: OP,
    file: "linear.wgsl",
    source: Source::File(include_str!("../../shaders/linear.wgsl")),
    entries: &[&FORWARD, &BACKWARD_DATA, &BACKWARD_WEIGHT, &BACKWARD_BIAS],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static FORWARD: Entry = Entry::new::<LinearParams>(
    &SHADER,
    "linear_forward",
    &[read(1), read_f32(2), read_f32(3), write(4)],
    64,
);
pub static BACKWARD_DATA: Entry = Entry::new::<LinearParams>(
    &SHADER,
    "linear_backward_data",
    &[read_f32(2), read(5), write(6)],
    64,
);
pub static BACKWARD_WEIGHT: Entry = Entry::new::<LinearParams>(
    &SHADER,
    "linear_backward_weight",
    &[read(1), read(5), write_f32(7)],
    64,
);
pub static BACKWARD_BIAS: Entry = Entry::new::<LinearParams>(
    &SHADER,
    "linear_backward_bias",
    &[read(5), write_f32(8)],
    64,
);

/// y (N, O) = x^T W^T + b.
pub fn linear_forward(
    k: &Kernels,
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
    let dtype = super::float_dtype(OP, &[&x, &y])?;
    let views = [(1, x), (2, weight), (3, k.optional(bias, dtype)), (4, y)];
    let grid = Grid::Threads(p.y_len());
    let d = k.dispatch(FORWARD.kernel(dtype), p, &views, grid)?;
    Ok(vec![d.with_flops(2 * p.weight_len() * p.n as u64)])
}

/// dx (I, N) += W^T dy.
pub fn linear_backward_data(
    k: &Kernels,
    p: &LinearParams,
    dy: View<'_>,
    weight: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("dx", &dx, p.x_len())?;
    let dtype = super::float_dtype(OP, &[&dy, &dx])?;
    let views = [(2, weight), (5, dy), (6, dx)];
    let grid = Grid::Threads(p.x_len());
    let d = k.dispatch(BACKWARD_DATA.kernel(dtype), p, &views, grid)?;
    Ok(vec![d.with_flops(2 * p.weight_len() * p.n as u64)])
}

/// dweight (O, I) += dy^T x^T.
pub fn linear_backward_weight(
    k: &Kernels,
    p: &LinearParams,
    x: View<'_>,
    dy: View<'_>,
    dweight: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("x", &x, p.x_len())?;
    p.check("dy", &dy, p.y_len())?;
    p.check("dweight", &dweight, p.weight_len())?;
    let dtype = super::float_dtype(OP, &[&x, &dy])?;
    let views = [(1, x), (5, dy), (7, dweight)];
    let grid = Grid::Threads(p.weight_len());
    let d = k.dispatch(BACKWARD_WEIGHT.kernel(dtype), p, &views, grid)?;
    Ok(vec![d.with_flops(2 * p.weight_len() * p.n as u64)])
}

/// dbias (O) += dy summed over the batch.
pub fn linear_backward_bias(
    k: &Kernels,
    p: &LinearParams,
    dy: View<'_>,
    dbias: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_len())?;
    p.check("dbias", &dbias, p.out_features as u64)?;
    let dtype = super::float_dtype(OP, &[&dy])?;
    let grid = Grid::Threads(p.out_features as u64);
    Ok(vec![k.dispatch(
        BACKWARD_BIAS.kernel(dtype),
        p,
        &[(5, dy), (8, dbias)],
        grid,
    )?])
}
