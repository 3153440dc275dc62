//! The network: its description ([`config`]), where its parameters live ([`layout`]), its
//! memory planned without a device ([`nodes`], [`graph`], [`memory`], [`buffers`]), and the
//! static plan that runs it on one ([`plan`], built by `build`).
//!
//! The files read bottom-up (a test keeps it so): `config`, `layout`, `memory`; `nodes` (the
//! node types and the build context); `stem` and `layers` (each node declared); `graph` (the
//! nodes in order); `buffers` (tensors packed into slots); `cmd` (what a pass records);
//! `dispatches` and `steps` (each node's commands); `plan`; `build`.

pub mod buffers;
mod build;
mod cmd;
pub mod config;
mod dispatches;
pub mod graph;
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
pub use plan::{AdamConfig, GradMark, Plan, SgdConfig};
