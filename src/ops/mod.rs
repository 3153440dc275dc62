//! One module per op: its params struct (also its uniform), its launchers, its shader and
//! the static [`Entry`](crate::kernels::Entry) of each of its kernels.

pub mod adam;
pub mod avgpool;
pub mod batchnorm;
pub mod concat;
pub mod conv2d;
pub mod cross_entropy;
pub mod fault;
pub mod global_avgpool;
pub mod grad_clip;
pub mod linear;
pub mod loss_scale;
pub mod maxpool;
pub mod relu;
pub mod roofline;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod scratch;
pub mod sgd;

use crate::error::{Error, Result};
use crate::gpu::{DType, View};
use crate::kernels::Shader;

/// Every WGSL file of the crate: what `info` describes, what `--kernels` may name, what the
/// tests compile and validate. (Launching never looks here: each launcher holds its entry.)
pub static SHADERS: &[&Shader] = &[
    &conv2d::regtile::SHADER,
    &conv2d::tiled::SHADER,
    &batchnorm::SHADER,
    &batchnorm::split::SHADER,
    &relu::SHADER,
    &concat::SHADER,
    &maxpool::SHADER,
    &avgpool::SHADER,
    &global_avgpool::SHADER,
    &linear::SHADER,
    &cross_entropy::SHADER,
    &sgd::SHADER,
    &adam::SHADER,
    &loss_scale::SHADER,
    &grad_clip::SHADER,
    &roofline::SHADER,
    &fault::SHADER,
];

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

/// The first element of channel `channel` in a channel-major tensor of `plane` elements per
/// channel, as the kernels' u32 offsets hold it. An offset past u32 saturates to u32::MAX,
/// which every launcher's length check then refuses (no view holds 2^32 elements): it can
/// never wrap into a wrong but valid offset.
pub(crate) fn channel_offset(channel: u32, plane: u64) -> u32 {
    (channel as u64 * plane).try_into().unwrap_or(u32::MAX)
}

/// The element type of a launch: that of its tensors, which must agree.
pub(crate) fn float_dtype(op: &'static str, views: &[&View<'_>]) -> Result<DType> {
    let dtype = views.first().map_or(DType::F32, |v| v.dtype);
    match views.iter().find(|v| v.dtype != dtype) {
        Some(v) => Err(Error::shape(
            op,
            format!("tensors of mixed element types: {dtype} and {}", v.dtype),
        )),
        None => Ok(dtype),
    }
}
