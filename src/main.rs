//! The `densenet-wgpu` command line: a thin layer over the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::data::{self, DatasetKind};
use densenet_wgpu::gpu::info;
use densenet_wgpu::model::{Plan, SgdConfig};
use densenet_wgpu::recipe::{Preset, Schedule};
use densenet_wgpu::train::{self, TrainArgs};
use densenet_wgpu::{Gpu, GpuOptions};

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
    /// Restrict to these backends: vulkan, metal, dx12, gl (comma separated); also read
    /// from WGPU_BACKEND.
    #[arg(long, global = true)]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DataArgs {
    /// Dataset: synthetic (built in, no files), fashion-mnist, mnist, cifar10.
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Folder with the dataset's files (the four IDX files, or the CIFAR-10 binary batches).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// List adapters, the chosen one, and its features and limits.
    Info,
    /// Train a DenseNet; writes metrics.jsonl, curves.png and checkpoint.safetensors to --out.
    Train {
        #[command(flatten)]
        data: DataArgs,
        /// Network and recipe: d2l (the lecture, 96x96), small (28x28 on a CPU), tiny (demo).
        #[arg(long, value_enum, default_value = "tiny")]
        preset: Preset,
        #[arg(long)]
        epochs: Option<u32>,
        #[arg(long)]
        batch_size: Option<u32>,
        #[arg(long)]
        lr: Option<f32>,
        #[arg(long)]
        momentum: Option<f32>,
        #[arg(long)]
        weight_decay: Option<f32>,
        /// Learning-rate schedule over the run.
        #[arg(long, value_enum)]
        schedule: Option<Schedule>,
        /// Seeds the synthetic data, the initial weights and the shuffling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Use only the first N training examples.
        #[arg(long, value_name = "N")]
        limit_train: Option<usize>,
        /// Use only the first N test examples.
        #[arg(long, value_name = "N")]
        limit_test: Option<usize>,
        /// Output folder [default: runs/PRESET-DATASET].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from a checkpoint (its network and recipe; --epochs is the new total).
        #[arg(long, value_name = "FILE")]
        resume: Option<PathBuf>,
    },
    /// Test loss and accuracy of a checkpoint.
    Eval {
        #[arg(long, value_name = "FILE")]
        checkpoint: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Use only the first N test examples.
        #[arg(long, value_name = "N")]
        limit_test: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Time training steps of a preset on random data; --profile adds per-kernel GPU times.
    Bench {
        #[arg(long, value_enum, default_value = "tiny")]
        preset: Preset,
        /// Whose image shape and classes to use (no files are read).
        #[arg(long, value_enum, default_value = "synthetic")]
        dataset: DatasetKind,
        #[arg(long)]
        batch_size: Option<u32>,
        /// Timed steps (after two warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: u32,
        /// Also time every kernel of one step with timestamp queries.
        #[arg(long)]
        profile: bool,
    },
    /// Classify PNG images with a checkpoint.
    Predict {
        #[arg(long, value_name = "FILE")]
        checkpoint: PathBuf,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
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

fn bench(
    opts: &GpuOptions,
    preset: Preset,
    dataset: DatasetKind,
    batch_size: Option<u32>,
    steps: u32,
    profile: bool,
) -> anyhow::Result<()> {
    let gpu = Gpu::new(opts)?;
    let cfg = preset.config(dataset, dataset.class_names().len() as u32);
    let recipe = preset.recipe();
    let batch = batch_size.unwrap_or(recipe.batch_size);
    let opt = SgdConfig {
        lr: recipe.lr,
        momentum: recipe.momentum,
        weight_decay: recipe.weight_decay,
        nesterov: recipe.nesterov,
    };
    let plan = Plan::new(&gpu, &cfg, batch, opt)?;
    plan.write_params(&gpu, &plan.layout.init_params(cfg.init, 0))?;
    let mut rng = fastrand::Rng::with_seed(0);
    let x: Vec<f32> = (0..plan.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(&gpu, &x, &labels)?;
    let secs = densenet_wgpu::bench::time_train_steps(&gpu, &plan, 2, steps)?;
    println!(
        "{} on {} ({:?}), batch {batch}: {:.2} ms per training step, {:.0} images/s; memory: {}",
        preset.name(),
        gpu.info.name,
        gpu.info.backend,
        secs * 1e3,
        batch as f64 / secs,
        plan.memory
    );
    if profile {
        let times = densenet_wgpu::bench::profile(&gpu, plan.train_commands())?;
        let total: f64 = times.iter().map(|t| t.seconds).sum();
        println!("{:<34} {:>6} {:>10} {:>6}", "kernel", "calls", "ms", "%");
        for t in &times {
            println!(
                "{:<34} {:>6} {:>10.3} {:>5.1}%",
                t.name,
                t.calls,
                t.seconds * 1e3,
                100.0 * t.seconds / total
            );
        }
        println!("{:<34} {:>6} {:>10.3}", "sum of kernels", "", total * 1e3);
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = GpuOptions {
        backends: cli.backend.as_deref().map(wgpu::Backends::from_comma_list),
        adapter: cli.adapter,
    };
    match cli.command {
        Command::Info => print!("{}", info::report(&opts)?),
        Command::Train {
            data,
            preset,
            epochs,
            batch_size,
            lr,
            momentum,
            weight_decay,
            schedule,
            seed,
            limit_train,
            limit_test,
            out,
            resume,
        } => {
            let dataset = data.dataset.unwrap_or(DatasetKind::Synthetic);
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!("runs/{}-{}", preset.name(), dataset.name()))
            });
            let args = TrainArgs {
                dataset,
                data_dir: data.data_dir,
                preset,
                epochs,
                batch_size,
                lr,
                momentum,
                weight_decay,
                schedule,
                seed,
                limit_train,
                limit_test,
                out: out.clone(),
                resume,
                progress: std::io::stderr().is_terminal(),
            };
            let gpu = Gpu::new(&opts)?;
            let history = train::train(&gpu, &args)?;
            if let Some(last) = history.last() {
                println!(
                    "done: test accuracy {:.2}% after {} epochs; outputs in {}",
                    100.0 * last.test_acc,
                    last.epoch,
                    out.display()
                );
            }
        }
        Command::Eval {
            checkpoint,
            data,
            limit_test,
            seed,
        } => {
            let ck = Checkpoint::load(&checkpoint)?;
            let dataset = data.dataset.unwrap_or(ck.dataset);
            let seed = seed.unwrap_or(ck.recipe.seed);
            let mut splits =
                data::load(dataset, data.data_dir.as_deref(), seed).with_context(|| {
                    format!("loading {} for {}", dataset.name(), checkpoint.display())
                })?;
            if let Some(n) = limit_test {
                splits.test.truncate(n);
            }
            let (c, _, _) = dataset.image_shape();
            if c != ck.config.in_channels || splits.test.classes() as u32 != ck.config.classes {
                bail!(
                    "{} has {} input channels and {} classes; {} has {c} and {}",
                    checkpoint.display(),
                    ck.config.in_channels,
                    ck.config.classes,
                    dataset.name(),
                    splits.test.classes()
                );
            }
            let gpu = Gpu::new(&opts)?;
            let opt = SgdConfig {
                lr: 0.0,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            };
            let plan = Plan::new(&gpu, &ck.config, ck.recipe.batch_size, opt)?;
            train::restore(&gpu, &plan, &ck)?;
            let (loss, acc) = train::evaluate(&gpu, &plan, &Arc::new(splits.test))?;
            println!(
                "{} on {} (epoch {}): test loss {loss:.4} acc {:.2}%",
                checkpoint.display(),
                dataset.name(),
                ck.epoch,
                100.0 * acc
            );
        }
        Command::Bench {
            preset,
            dataset,
            batch_size,
            steps,
            profile,
        } => bench(&opts, preset, dataset, batch_size, steps, profile)?,
        Command::Predict { checkpoint, images } => {
            let gpu = Gpu::new(&opts)?;
            for p in densenet_wgpu::predict::predict(&gpu, &checkpoint, &images)? {
                println!(
                    "{}: {} ({:.1}%)",
                    p.path.display(),
                    p.name,
                    100.0 * p.probability
                );
            }
        }
    }
    Ok(())
}
