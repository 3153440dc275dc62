//! densenet-wgpu: DenseNet training on any GPU with hand-written WGSL compute kernels.
//!
//! Layers, each importing only those below it:
//! - [`gpu`]: adapter choice, device, typed buffers and views, readback.
//! - [`kernels`]: the registry of WGSL kernels (entry x variant x element type), the policy
//!   that picks variants, and the [`kernels::Dispatch`] every launcher builds.
//! - [`ops`]: one module per op: its params struct, its shader and its launchers.
//! - [`model`]: the network, its memory plan and the static [`model::Plan`] that runs it.
//! - the tool: [`data`], [`recipe`], [`checkpoint`], [`device_cache`], [`train`], [`evaluate`], [`predict`], [`onnx`], [`selfcheck`], [`tune`],
//!   [`mod@bench`], [`mod@report`], [`plan_report`], [`atomic_file`].
//!
//! [`mod@reference`] holds the same ops as plain Rust on the CPU, the truth the kernels are
//! tested against. Activations are channel-major, (C, N, H, W), so a dense block's
//! concatenation is a contiguous channel range of one tensor (see docs/DESIGN.md).

#[cfg(not(target_arch = "wasm32"))]
pub mod atomic_file;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod cam;
pub mod checkpoint;
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod device_cache;
pub mod error;
pub mod evaluate;
pub mod gpu;
pub mod import;
pub mod kernels;
pub mod model;
pub mod onnx;
pub mod ops;
#[cfg(not(target_arch = "wasm32"))]
pub mod parallel;
#[cfg(not(target_arch = "wasm32"))]
pub mod plan_report;
#[cfg(not(target_arch = "wasm32"))]
pub mod predict;
pub mod recipe;
pub mod reference;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
pub mod selfcheck;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;

pub use error::{Error, Result};
pub use gpu::{DType, Gpu, GpuBuffer, GpuOptions, View};
pub use kernels::{Kernels, Policy};
/// The wgpu this crate drives, for front-ends that need its types (features, limits).
pub use wgpu;

/// The README's Rust examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
