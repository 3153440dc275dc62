//! One module per op: its params struct (also its uniform), its launchers, its shader.

pub mod avgpool;
pub mod conv2d;
pub mod maxpool;

use crate::kernels::Shader;

/// Every WGSL file of the crate, for the pipeline cache and the naga tests.
pub static SHADERS: &[&Shader] = &[&conv2d::SHADER, &maxpool::SHADER, &avgpool::SHADER];
