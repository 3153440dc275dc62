//! The CPU reference's backward functions against central finite differences of its own
//! forward functions (no GPU). Each check draws a random upstream gradient g and compares
//! the analytic gradient with d/dx sum(forward(x) * g).

#[path = "../support/mod.rs"]
mod support;

mod fd;

mod batchnorm;
mod conv2d;
mod elementwise;
mod linear;
mod optim;
mod pool;
