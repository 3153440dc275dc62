//! The GPU side of the host: context, typed buffers and views, and the adapter report
//! behind `info`. This is the bottom layer: it imports nothing else of the crate.

mod buffer;
mod context;
mod inflight;
#[cfg(not(target_arch = "wasm32"))]
pub mod info;
#[cfg(not(target_arch = "wasm32"))]
mod timestamps;

pub use buffer::{DType, Element, GpuBuffer, View};
#[cfg(not(target_arch = "wasm32"))]
pub use context::ranked_adapters;
pub use context::{coop_shapes, resolve_backends, CoopShape, Gpu, GpuOptions, OPTIONAL_FEATURES};
pub use inflight::InFlight;
#[cfg(not(target_arch = "wasm32"))]
pub use timestamps::Timestamps;
