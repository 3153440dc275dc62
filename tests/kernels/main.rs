//! Every kernel entry point on the GPU against the CPU reference (one test binary, one
//! device shared by all tests).

mod common;

mod batchnorm;
mod conv2d;
mod cross_entropy;
mod elementwise;
mod linear;
mod pool;
mod shapes;
