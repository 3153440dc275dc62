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

use crate::kernels::Shader;

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
