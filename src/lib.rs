//! densenet-wgpu: DenseNet training on any GPU with hand-written WGSL compute kernels.
//!
//! - [`gpu`]: adapter choice, device, buffers, readback.
//! - [`kernels`]: the registry of WGSL entry points and the [`kernels::Dispatch`] every
//!   launcher builds.
//! - [`ops`]: one module per op: its params struct and its launchers.
//! - [`reference`]: the same ops as plain Rust on the CPU, the truth the kernels are tested
//!   against.
//!
//! Activations are channel-major, (C, N, H, W), so a dense block's concatenation is a
//! contiguous channel range of one buffer (see DESIGN.md).

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod predict;
pub mod recipe;
pub mod reference;
pub mod report;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuBuffer, GpuOptions, View};

/// The README's Rust examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
