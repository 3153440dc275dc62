//! The GPU side of the host: context, buffers, and the adapter report behind `info`.

mod buffer;
mod context;
pub mod info;

pub use buffer::{GpuBuffer, View, ELEM};
pub use context::{ranked_adapters, resolve_backends, Gpu, GpuOptions, OPTIONAL_FEATURES};
