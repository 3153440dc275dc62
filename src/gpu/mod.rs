//! The GPU side of the host: context, typed buffers and views, and the adapter report
//! behind `info`. This is the bottom layer: it imports nothing else of the crate.

mod buffer;
mod context;
mod inflight;
pub mod info;
mod timestamps;

pub use buffer::{DType, Element, GpuBuffer, View};
pub use context::{
    coop_shapes, ranked_adapters, resolve_backends, CoopShape, Gpu, GpuOptions, OPTIONAL_FEATURES,
};
pub use inflight::InFlight;
pub use timestamps::Timestamps;
