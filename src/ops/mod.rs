//! One module per op: its params struct (also its uniform), its launchers, its shader.

pub mod avgpool;
pub mod batchnorm;
pub mod concat;
pub mod conv2d;
pub mod cross_entropy;
pub mod global_avgpool;
pub mod linear;
pub mod maxpool;
pub mod relu;
pub mod sgd;

use crate::error::{Error, Result};
use crate::gpu::View;
use crate::kernels::Shader;

/// Ok when `view` holds at least `need` elements; otherwise a one-line error naming the op,
/// the argument, and the params it was launched with.
pub(crate) fn check_len(
    op: &'static str,
    what: &str,
    view: &View<'_>,
    need: u64,
    params: &impl std::fmt::Debug,
) -> Result<()> {
    if view.len >= need {
        return Ok(());
    }
    Err(Error::shape(
        op,
        format!(
            "{what} has {} elements but {params:?} needs {need}",
            view.len
        ),
    ))
}

/// Every WGSL file of the crate, for the pipeline cache and the naga tests.
pub static SHADERS: &[&Shader] = &[
    &conv2d::SHADER,
    &batchnorm::SHADER,
    &relu::SHADER,
    &concat::SHADER,
    &maxpool::SHADER,
    &avgpool::SHADER,
    &global_avgpool::SHADER,
    &linear::SHADER,
    &cross_entropy::SHADER,
    &sgd::SHADER,
];
