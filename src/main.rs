//! The `densenet-wgpu` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use densenet_wgpu::gpu::info;
use densenet_wgpu::GpuOptions;

#[derive(Parser)]
#[command(
    name = "densenet-wgpu",
    version,
    about = "Train DenseNets on any GPU with WGSL kernels"
)]
struct Cli {
    /// Use the adapter whose name contains this text (see `info`).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Restrict to these backends: vulkan, metal, dx12, gl (comma separated).
    #[arg(long, global = true)]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List adapters, the chosen one, and its features and limits.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = GpuOptions {
        backends: cli.backend.as_deref().map(wgpu::Backends::from_comma_list),
        adapter: cli.adapter,
    };
    match cli.command {
        Command::Info => print!("{}", info::report(&opts)?),
    }
    Ok(())
}
