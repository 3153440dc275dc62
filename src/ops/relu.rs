//! ReLU, elementwise: forward and backward (the mask taken from the output).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{read, write, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN};

/// `count` elements, x (and dx) from element `x_offset`, y (and dy) from `y_offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ReluParams {
    pub count: u32,
    pub x_offset: u32,
    pub y_offset: u32,
    pub _pad: u32,
}

const OP: &str = "relu";

impl ReluParams {
    pub fn new(count: u32) -> Self {
        ReluParams {
            count,
            x_offset: 0,
            y_offset: 0,
            _pad: 0,
        }
    }

    /// Element offsets of x/dx and y/dy in their buffers.
    pub fn with_offsets(mut self, x_offset: u32, y_offset: u32) -> Self {
        self.x_offset = x_offset;
        self.y_offset = y_offset;
        self
    }

    fn check(&self, what: &str, view: &View<'_>, offset: u32) -> Result<()> {
        super::check_len(OP, what, view, offset as u64 + self.count as u64, self)
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "relu.wgsl",
    source: Source::File(include_str!("../../shaders/relu.wgsl")),
    entries: &[&FORWARD, &BACKWARD],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static FORWARD: Entry =
    Entry::new::<ReluParams>(&SHADER, "relu_forward", &[read(1), write(2)], 256);
pub static BACKWARD: Entry =
    Entry::new::<ReluParams>(&SHADER, "relu_backward", &[read(3), read(4), write(5)], 256);

/// y = max(x, 0).
pub fn relu_forward(
    k: &Kernels,
    p: &ReluParams,
    x: View<'_>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("x", &x, p.x_offset)?;
    p.check("y", &y, p.y_offset)?;
    let dtype = super::float_dtype(OP, &[&x, &y])?;
    let grid = Grid::Threads(p.count as u64);
    Ok(vec![k.dispatch(
        FORWARD.kernel(dtype),
        p,
        &[(1, x), (2, y)],
        grid,
    )?])
}

/// dx += dy where the forward output y is positive.
pub fn relu_backward(
    k: &Kernels,
    p: &ReluParams,
    y: View<'_>,
    dy: View<'_>,
    dx: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("y", &y, p.y_offset)?;
    p.check("dy", &dy, p.y_offset)?;
    p.check("dx", &dx, p.x_offset)?;
    let dtype = super::float_dtype(OP, &[&y, &dy, &dx])?;
    let views = [(3, y), (4, dy), (5, dx)];
    let grid = Grid::Threads(p.count as u64);
    Ok(vec![k.dispatch(BACKWARD.kernel(dtype), p, &views, grid)?])
}
