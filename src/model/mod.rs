//! The network: its description ([`config`]), where its parameters live ([`layout`]), its
//! memory planned without a device ([`nodes`], [`memory`], [`buffers`]), and the static
//! plan that runs it on one ([`plan`], built by `build`).

pub mod buffers;
mod build;
pub mod config;
mod dispatches;
mod layers;
pub mod layout;
pub mod memory;
pub mod naive;
pub mod nodes;
pub mod plan;
pub mod reference_net;
mod stem;
mod steps;

pub use buffers::MemoryPlan;
pub use config::{DenseNetConfig, Init, Stem};
pub use layout::Layout;
pub use nodes::{Mode, PlanLimits, PlanTarget};
pub use plan::{Plan, SgdConfig};
