//! Every kernel entry point on the GPU against the CPU reference (one test binary, one
//! device shared by all tests), every variant of ops that have several, and the registry:
//! every kernel of every op compiles. Each module lists its cases; a case that needs an
//! adapter feature the adapter lacks is reported as ignored with the reason
//! (tests/support/harness.rs).

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

fn main() -> std::process::ExitCode {
    support::harness::run(
        [
            batchnorm::cases(),
            conv2d::cases(),
            cross_entropy::cases(),
            elementwise::cases(),
            fused_pool::cases(),
            linear::cases(),
            loss_scale::cases(),
            pool::cases(),
            registry::cases(),
            shapes::cases(),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )
}
