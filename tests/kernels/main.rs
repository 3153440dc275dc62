//! Every kernel entry point on the GPU against the CPU reference (one test binary, one
//! device shared by all tests), every variant of ops that have several, and the registry:
//! every kernel of every op compiles.

#[path = "../support/mod.rs"]
mod support;

mod batchnorm;
mod conv2d;
mod cross_entropy;
mod elementwise;
mod fused_pool;
mod linear;
mod loss_scale;
mod pool;
mod registry;
mod shapes;
