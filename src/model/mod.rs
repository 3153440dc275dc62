//! The network: its description ([`config`]), where its tensors live ([`layout`]), and the
//! static plan that runs it on a device ([`plan`], built by [`build`]).

mod build;
pub mod config;
mod dispatches;
pub mod layout;
mod nodes;
pub mod plan;
pub mod reference_net;

pub use config::{DenseNetConfig, Init, Stem};
pub use layout::Layout;
pub use plan::{Plan, SgdConfig};
