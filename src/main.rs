//! The `densenet-wgpu` command line: a thin layer over the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use densenet_wgpu::bench::{bench, BenchArgs};
use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::data::augment::AugmentSpec;
use densenet_wgpu::data::{self, DatasetKind};
use densenet_wgpu::evaluate::evaluate_breakdown;
use densenet_wgpu::gpu::info;
use densenet_wgpu::kernels::DeviceClass;
use densenet_wgpu::model::{Mode, Plan, PlanLimits};
use densenet_wgpu::plan_report::{plan_report, PlanArgs};
use densenet_wgpu::recipe::{Overrides, Preset, Schedule};
use densenet_wgpu::selfcheck;
use densenet_wgpu::train::{self, Interrupted, Spread, TrainArgs};
use densenet_wgpu::tune::{self, TuneMode, TuneOptions};
use densenet_wgpu::{DType, Gpu, GpuOptions, Kernels, Policy};

#[derive(Parser)]
#[command(
    name = "densenet-wgpu",
    version,
    about = "Train DenseNets on any GPU with WGSL kernels"
)]
struct Cli {
    /// Use the adapter whose name contains this text (see `info`) [default: the best one]
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Restrict to these backends: vulkan, metal, dx12, gl (comma separated) [default: the
    /// WGPU_BACKEND environment variable, else all]
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Kernel variants: auto (each op's rule for the adapter), or a comma-separated list of
    /// VARIANT or OP=VARIANT (e.g. tile8, conv2d=tile16); `info` lists them
    #[arg(long, global = true, value_name = "SPEC", default_value = "auto")]
    kernels: String,
    /// Element type of activations and their gradients: f32, or f16 (half their memory;
    /// arithmetic in f32, parameters, momentum and statistics kept in f32, the loss scaled
    /// dynamically in training; needs SHADER_F16). Checkpoints are f32 either way
    #[arg(long, global = true, value_enum, default_value = "f32")]
    precision: Precision,
    /// Device limits: adapter (its own), or webgpu (WebGPU's defaults, what a browser gives:
    /// 256 invocations per workgroup, 16 KiB of workgroup memory, 8 storage buffers per
    /// stage, 128 MiB per binding), to check that a run fits there
    #[arg(long, global = true, value_enum, default_value = "adapter")]
    limits: Limits,
    /// Say more: each op's tuned configurations and the self-check's failures [default: off]
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DataArgs {
    /// Dataset: synthetic (built in, no files), fashion-mnist, mnist, cifar10, cifar100
    /// (fine labels), folder (DIR/train/CLASS/*.png and DIR/test/CLASS/..., or one tree
    /// DIR/CLASS/...) [default: synthetic; eval: the checkpoint's]
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Folder with the dataset's files (the four IDX files, the CIFAR binary batches, or
    /// class folders of images)
    /// [default: none; required by file datasets]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// With --dataset csv: the CSV naming each image of --data-dir and its labels (ChestX-ray14's
    /// Data_Entry_2017.csv layout unless the columns are named) [default: none]
    #[arg(long, value_name = "FILE.csv")]
    labels: Option<PathBuf>,
    /// With --dataset csv: the column of image names [default: "Image Index"]
    #[arg(long, default_value = "Image Index")]
    image_column: String,
    /// With --dataset csv: the column of labels [default: "Finding Labels"]
    #[arg(long, default_value = "Finding Labels")]
    label_column: String,
    /// With --dataset csv: what separates an image's labels [default: "|"]
    #[arg(long, default_value = "|")]
    label_separator: String,
    /// With --dataset csv: the value meaning no label [default: "No Finding"]
    #[arg(long, default_value = "No Finding")]
    no_label: String,
    /// With --dataset csv: files of the training and the test images' names, one per line (the
    /// set's own split: ChestX-ray14's train_val_list.txt and test_list.txt) [default: 20%
    /// of the images, drawn by --seed, to test]
    #[arg(long, value_name = "FILE", requires = "test_list")]
    train_list: Option<PathBuf>,
    /// With --dataset csv: the test images' names, one per line (with --train-list)
    /// [default: none]
    #[arg(long, value_name = "FILE", requires = "train_list")]
    test_list: Option<PathBuf>,
}

impl DataArgs {
    /// The CSV set's description, when --labels names one.
    fn csv(&self) -> Option<densenet_wgpu::data::multilabel::CsvSpec> {
        self.labels
            .as_ref()
            .map(|labels| densenet_wgpu::data::multilabel::CsvSpec {
                labels: labels.clone(),
                image_column: self.image_column.clone(),
                label_column: self.label_column.clone(),
                separator: self.label_separator.clone(),
                none: self.no_label.clone(),
                train_list: self.train_list.clone(),
                test_list: self.test_list.clone(),
            })
    }
}

/// Recipe values; each replaces the preset's (or, resuming, the checkpoint's).
#[derive(Args)]
struct RecipeArgs {
    /// Epochs to train in all, at least 1 [default: the preset's: d2l 10, small 5, tiny 3,
    /// densenet40 and bc100 300]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
    /// Examples per step, at least 1 [default: the preset's: d2l 256, the others 64]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    /// Base learning rate [default: the preset's: 0.1]
    #[arg(long)]
    lr: Option<f32>,
    /// SGD momentum (Nesterov in all presets but d2l) [default: the preset's: d2l 0, the
    /// others 0.9]
    #[arg(long)]
    momentum: Option<f32>,
    /// L2 weight decay [default: the preset's: d2l 0, small 5e-4, tiny, densenet40 and bc100
    /// 1e-4]
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Learning-rate schedule over the run [default: the preset's: d2l constant, small and
    /// tiny cosine, densenet40 and bc100 step]
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Fractions of the run where the step schedule multiplies the rate by 0.1, comma
    /// separated [default: 0.5,0.75]
    #[arg(long, value_delimiter = ',', value_name = "FRACTIONS")]
    milestones: Option<Vec<f32>>,
    /// Label smoothing of the training loss, in [0, 1): targets (1 - e) onehot + e / classes
    /// [default: 0]
    #[arg(long, value_name = "E")]
    label_smoothing: Option<f32>,
    /// Clip the gradients to this global L2 norm before each update, as
    /// torch.nn.utils.clip_grad_norm_ [default: no clipping]
    #[arg(long, value_name = "MAX")]
    clip_grad_norm: Option<f32>,
    /// Stop when the test accuracy has not improved for N epochs (the best epoch's checkpoint
    /// is kept as best.safetensors either way) [default: never]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    patience: Option<u32>,
    /// Epochs of linear learning-rate warm-up at the start [default: 0]
    #[arg(long, value_name = "N")]
    warmup_epochs: Option<u32>,
    /// Input augmentation: none, or a list of crop (zero-pad 4, random crop), crop=PIXELS,
    /// flip (random left-right mirror), normalize (per-channel mean and std of the training
    /// set, also at evaluation) [default: the dataset's: cifar10 and cifar100
    /// crop,flip,normalize; fashion-mnist and mnist crop=2; synthetic none; resuming: the
    /// checkpoint's]
    #[arg(long, value_parser = AugmentSpec::parse, value_name = "LIST")]
    augment: Option<AugmentSpec>,
    /// Fine-tuning: the rate of every parameter before the classifier times FACTOR (the
    /// classifier keeps the base rate) [default: 1]
    #[arg(long, value_name = "FACTOR")]
    lr_features: Option<f32>,
    /// Fine-tuning: train only the classifier for the first EPOCHS epochs [default: 0]
    #[arg(long, value_name = "EPOCHS")]
    freeze_features: Option<u32>,
    /// The optimizer: sgd (with --momentum, Nesterov, --weight-decay), adam (weight decay
    /// as L2 in the gradients), adamw (decoupled weight decay) [default: the preset's: sgd]
    #[arg(long, value_enum)]
    optimizer: Option<densenet_wgpu::recipe::Optimizer>,
    /// Adam's beta1,beta2 [default: 0.9,0.999]
    #[arg(long, value_delimiter = ',', num_args = 2, value_name = "B1,B2")]
    betas: Option<Vec<f32>>,
    /// Adam's eps [default: 1e-8]
    #[arg(long)]
    eps: Option<f32>,
    /// With --schedule plateau: the factor on the rate at a plateau [default: 0.1]
    #[arg(long, value_name = "FACTOR")]
    plateau_factor: Option<f32>,
    /// With --schedule plateau: epochs without a better test loss before the rate drops
    /// [default: 10]
    #[arg(long, value_name = "EPOCHS")]
    plateau_patience: Option<u32>,
    /// Multi-label (with --dataset csv): weight each label's positives by its negatives /
    /// positives in the training set (auto, CheXNet's), or not (none) [default: auto]
    #[arg(long, value_enum)]
    pos_weight: Option<densenet_wgpu::recipe::PosWeight>,
}

/// How the kernels of the convolutions and batch norms are chosen and checked.
#[derive(Args)]
struct TuneArgs {
    /// Kernel tuning: exact (times only configurations that give the policy's bits: the same
    /// command gives the same result whatever the cache holds), fast (times every
    /// configuration, fastest kept: results may differ in rounding between runs as the cache
    /// fills; alias cached), full (as fast, timing every launch again), off (the adapter's
    /// policy). Choices are cached per device
    #[arg(long, value_enum, env = "DENSENET_TUNE", default_value = "exact")]
    tune: TuneMode,
    /// Seconds tuning and the self-check may spend, compilation included; what is left runs
    /// the policy's choice and later runs go on [default: 1 for exact and fast, unlimited
    /// for full]
    #[arg(long, value_name = "SECONDS")]
    tune_budget: Option<f64>,
    /// The tuning cache file; the self-check's verdicts go beside it (selfcheck.json)
    /// [default: densenet-wgpu/tuning.json in the platform's cache folder, e.g. ~/.cache]
    #[arg(long, value_name = "FILE", env = "DENSENET_TUNE_CACHE")]
    tune_cache: Option<PathBuf>,
    /// Check every kernel configuration the run launches against the CPU reference before
    /// trusting it (once per device, driver and release; cached): on, or off
    #[arg(long, value_enum, env = "DENSENET_SELF_CHECK", default_value = "on")]
    self_check: Switch,
}

/// Which device limits to request.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Limits {
    Adapter,
    Webgpu,
}

/// A setting that is on or off.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

impl TuneArgs {
    fn options(&self) -> TuneOptions {
        TuneOptions {
            mode: self.tune,
            budget: self.tune_budget,
            cache: self.tune_cache.clone(),
            progress: std::io::stderr().is_terminal(),
            check: self.self_check == Switch::On,
        }
    }
}

/// The element type of activations and their gradients.
#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// List adapters, the chosen one, its features and limits, and the kernel policy
    Info,
    /// Train a DenseNet; writes metrics.jsonl, curves.png and checkpoint.safetensors to --out
    Train(Box<TrainCmd>),
    /// Test loss and accuracy of a checkpoint (on an evaluation-only plan)
    Eval(Box<EvalCmd>),
    /// Time training steps of a preset on random data; --profile adds per-kernel GPU times
    Bench(BenchCmd),
    /// Print the memory of a preset's training and evaluation plans without running a step,
    /// and each tunable launch's kernel configuration (from the tuning cache: plan times
    /// nothing unless given --tune full or a --tune-budget)
    Plan(PlanCmd),
    /// Classify PNG images with a checkpoint (on an evaluation-only plan)
    Predict(PredictCmd),
    /// Check every kernel configuration this adapter may run (each variant, split setting
    /// and element type) against the CPU reference at small shapes; print one table; exit 1
    /// naming what failed and the --kernels setting that avoids it
    Selftest(SelftestCmd),
    /// Write a checkpoint's evaluation graph as ONNX (float32; batch size dynamic; input
    /// `images` [batch, C, H, W] with pixels in [0, 1], output `logits`), or its tensors under
    /// torchvision's names
    Export(ExportCmd),
    /// Turn a torchvision or timm DenseNet file (safetensors, or a PyTorch .pth/.pt, legacy
    /// names included) into a checkpoint: the architecture read from the tensor shapes, each
    /// batch norm's running statistics kept, ImageNet normalization
    Import(ImportCmd),
}

#[derive(Args)]
struct ImportCmd {
    /// The state dict to read: torchvision's densenet*.pth, timm's model.safetensors, ...
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Where to write the checkpoint [required]
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The input size the network is used at (it is convolutional up to its global pool)
    #[arg(long, default_value_t = 224)]
    image_size: u32,
}

#[derive(Args)]
struct TrainCmd {
    #[command(flatten)]
    data: DataArgs,
    /// Network and recipe: d2l (the lecture, 96x96), small (28x28 on a CPU), tiny (demo),
    /// densenet40 and bc100 (the DenseNet paper's CIFAR networks and recipe)
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Seeds the synthetic data, the initial weights and the shuffling
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training examples [default: all]
    #[arg(long, value_name = "N")]
    limit_train: Option<usize>,
    /// Use only the first N test examples [default: all]
    #[arg(long, value_name = "N")]
    limit_test: Option<usize>,
    /// Output folder [default: runs/PRESET-DATASET]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a checkpoint (its network and recipe; --epochs is the new total)
    /// [default: start afresh]
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
    /// Start from these weights (fine-tuning): a checkpoint of ours, or a torchvision/timm
    /// DenseNet file (safetensors or .pth), whose network, running statistics and input
    /// normalization the run takes [default: the preset's initialization]
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// With --init: a new classifier for N classes (as torchvision initializes nn.Linear)
    /// where the file's has another count [default: the file's classifier]
    #[arg(long, value_name = "N", requires = "init")]
    num_classes: Option<u32>,
    #[command(flatten)]
    tune: TuneArgs,
    #[command(flatten)]
    spread: SpreadArgs,
}

/// Data parallelism: `mpirun -np N densenet-wgpu train ...` (a build with `--features mpi`)
/// runs one rank per GPU, each on its shard of a global batch of N x --batch-size.
#[derive(Args)]
struct SpreadArgs {
    /// Train N replicas in this one process, each on its shard of a global batch of N x
    /// --batch-size, averaging their gradients exactly as N MPI ranks do (their oracle) [default:
    /// one]
    #[arg(long, value_name = "N", conflicts_with = "sync_bn")]
    simulate_ranks: Option<usize>,
    /// Under mpirun: normalize with the global batch's statistics (SyncBatchNorm) [default:
    /// each rank's own batch, as PyTorch's DDP]
    #[arg(long)]
    sync_bn: bool,
    /// Reduce the gradients in buckets of at least this many MiB, each while the backward
    /// still runs
    #[arg(long, value_name = "MIB", default_value_t = densenet_wgpu::parallel::DEFAULT_BUCKET_MIB)]
    bucket_mib: f64,
    /// Under mpirun: a rank whose peers are silent this long (one died) stops the job
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    rank_timeout: f64,
}

#[derive(Args)]
struct EvalCmd {
    /// The checkpoint to evaluate [required]
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Use only the first N test examples [default: all]
    #[arg(long, value_name = "N")]
    limit_test: Option<usize>,
    /// Seed of the synthetic data [default: the checkpoint's]
    #[arg(long)]
    seed: Option<u64>,
    /// Where to draw the confusion matrix (PNG; rows true classes, columns predictions)
    /// [default: confusion.png beside the checkpoint]
    #[arg(long, value_name = "FILE")]
    confusion: Option<PathBuf>,
    /// Also write each test example's label and logits as CSV (header label,logit_0,...;
    /// one row per example in dataset order) [default: none]
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
    #[command(flatten)]
    tune: TuneArgs,
}

#[derive(Args)]
struct BenchCmd {
    /// Network and recipe to time
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Whose image shape and classes to use (no files are read)
    #[arg(long, value_enum, default_value = "synthetic")]
    dataset: DatasetKind,
    /// Examples per step [default: the preset's]
    #[arg(long)]
    batch_size: Option<u32>,
    /// Timed steps (after two warm-up steps)
    #[arg(long, default_value_t = 10)]
    steps: u32,
    /// Also measure the adapter's ceilings and time every kernel of one step with timestamp
    /// queries, each rated against the roofline [default: off]
    #[arg(long)]
    profile: bool,
    /// Also write the report as JSON to FILE [default: none]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    tune: TuneArgs,
}

#[derive(Args)]
struct PlanCmd {
    /// Network to plan
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Whose image shape and classes to use (no files are read)
    #[arg(long, value_enum, default_value = "synthetic")]
    dataset: DatasetKind,
    /// Examples per step [default: the preset's]
    #[arg(long)]
    batch_size: Option<u32>,
    /// Print one JSON object instead of the tables [default: off]
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tune: TuneArgs,
}

#[derive(Args)]
struct PredictCmd {
    /// The checkpoint to classify with [required]
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// PNG files
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Also write each image's class activation map of its predicted class, overlaid as a
    /// heat map, to DIR/<name>.cam.png [default: none]
    #[arg(long, value_name = "DIR")]
    cam: Option<PathBuf>,
}

#[derive(Args)]
struct SelftestCmd {
    /// The tuning cache; the verdicts go beside it (selfcheck.json), where train, eval and
    /// bench find them [default: densenet-wgpu/tuning.json in the platform's cache folder]
    #[arg(long, value_name = "FILE", env = "DENSENET_TUNE_CACHE")]
    tune_cache: Option<PathBuf>,
}

#[derive(Args)]
struct ExportCmd {
    /// The checkpoint to export [required]
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Where to write the ONNX model (opset 17) [default: none; this or --torchvision]
    #[arg(long, value_name = "FILE")]
    onnx: Option<PathBuf>,
    /// Where to write the tensors under torchvision's names, as safetensors (what
    /// `load_state_dict` takes; densenet121-style networks only) [default: none]
    #[arg(long, value_name = "FILE")]
    torchvision: Option<PathBuf>,
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    match run(cli, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(i) => {
                eprintln!("{}", interrupted_line(i));
                ExitCode::from(130)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// What Ctrl-C leaves: one line naming the checkpoint that holds the run and how to go on.
fn interrupted_line(i: &Interrupted) -> String {
    match &i.checkpoint {
        Some(ck) => format!(
            "{i}; the run is in {} (its last finished epoch): continue with \
             `densenet-wgpu train --resume {}` and the same --out",
            ck.display(),
            ck.display()
        ),
        None => format!("{i}; no epoch had finished, so nothing was saved"),
    }
}

/// The run's spread: ranks when mpirun started it (and this process's index on its
/// machine), simulated ranks, or one process.
fn spread(a: &SpreadArgs) -> anyhow::Result<(Spread, Option<usize>)> {
    if a.bucket_mib.is_nan() || a.bucket_mib <= 0.0 {
        bail!("--bucket-mib {} must be positive", a.bucket_mib);
    }
    let bucket_bytes = train::bucket_bytes(Some(a.bucket_mib));
    if densenet_wgpu::parallel::launched_by_mpi() {
        if a.simulate_ranks.is_some() {
            bail!("--simulate-ranks is for one process; under mpirun the ranks are real");
        }
        return mpi_ranks(a, bucket_bytes);
    }
    if a.sync_bn {
        bail!(
            "--sync-bn synchronizes the ranks of an MPI job: run under `mpirun -np N` (one \
             process has nothing to synchronize)"
        );
    }
    Ok(match a.simulate_ranks {
        None | Some(1) => (Spread::Solo, None),
        Some(0) => bail!("--simulate-ranks 0: give at least one rank"),
        Some(replicas) => (
            Spread::Simulated {
                replicas,
                bucket_bytes,
            },
            None,
        ),
    })
}

#[cfg(feature = "mpi")]
fn mpi_ranks(a: &SpreadArgs, bucket_bytes: u64) -> anyhow::Result<(Spread, Option<usize>)> {
    use densenet_wgpu::parallel::{mpi::MpiTransport, Collective, Ranks};
    if a.rank_timeout.is_nan() || a.rank_timeout <= 0.0 {
        bail!("--rank-timeout {} must be positive", a.rank_timeout);
    }
    let t = MpiTransport::init(std::time::Duration::from_secs_f64(a.rank_timeout))?;
    let local = t.local_rank();
    let ranks = Ranks {
        comm: Collective::new(Box::new(t)),
        sync_bn: a.sync_bn,
        bucket_bytes,
    };
    Ok((Spread::Ranks(ranks), Some(local)))
}

#[cfg(not(feature = "mpi"))]
fn mpi_ranks(_: &SpreadArgs, _: u64) -> anyhow::Result<(Spread, Option<usize>)> {
    bail!(
        "started by mpirun, but this binary was built without MPI, so every process would \
         train alone: build it with `cargo build --release --features mpi`"
    )
}

/// A flag that Ctrl-C sets: training stops after its current step.
fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    ctrlc::set_handler(move || set.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(flag)
}

/// The device and the kernels `--kernels` asks for.
fn kernels(opts: &GpuOptions, spec: &str) -> anyhow::Result<Kernels> {
    let gpu = Arc::new(Gpu::new(opts)?);
    let policy = Policy::parse(spec, DeviceClass::of(&gpu), densenet_wgpu::ops::SHADERS)?;
    Ok(Kernels::new(gpu, policy))
}

fn run(cli: Cli, started: std::time::Instant) -> anyhow::Result<()> {
    let opts = GpuOptions {
        backends: cli.backend.as_deref().map(wgpu::Backends::from_comma_list),
        adapter: cli.adapter,
        nth: None,
        limits: match cli.limits {
            Limits::Adapter => None,
            Limits::Webgpu => Some(wgpu::Limits::default()),
        },
    };
    let spec = cli.kernels.as_str();
    let precision = cli.precision.dtype();
    match cli.command {
        Command::Info => {
            print!("{}", info::report(&opts)?);
            let k = kernels(&opts, spec)?;
            print!("{}", k.policy().describe(densenet_wgpu::ops::SHADERS));
            Ok(())
        }
        Command::Train(c) => train((&opts, spec, precision, cli.verbose), *c),
        Command::Eval(c) => eval((&opts, spec, precision, cli.verbose), *c),
        Command::Bench(c) => {
            let args = BenchArgs {
                preset: c.preset,
                dataset: c.dataset,
                batch_size: c.batch_size,
                steps: c.steps,
                profile: c.profile,
                precision,
                tune: c.tune.options(),
                started,
                verbose: cli.verbose,
            };
            let report = bench(&kernels(&opts, spec)?, &args)?;
            print!("{}", report.text());
            if let Some(path) = c.json {
                let text = serde_json::to_string_pretty(&report)?;
                densenet_wgpu::atomic_file::write_atomic(&path, text.as_bytes())?;
            }
            Ok(())
        }
        Command::Plan(c) => plan(&opts, spec, precision, c),
        Command::Export(c) => export(c),
        Command::Import(c) => import(c),
        Command::Selftest(c) => selftest(&kernels(&opts, spec)?, c),
        Command::Predict(c) => {
            let k = kernels(&opts, spec)?;
            let cam = c.cam.as_deref();
            if let Some(dir) = cam {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating --cam {}", dir.display()))?;
            }
            let found =
                densenet_wgpu::predict::predict(&k, &c.checkpoint, &c.images, precision, cam)?;
            for p in found {
                let drawn = p
                    .cam
                    .map_or(String::new(), |c| format!("; map {}", c.display()));
                match &p.labels {
                    Some(labels) => {
                        let each: Vec<String> = labels
                            .iter()
                            .map(|(n, q)| format!("{n} {:.1}%", 100.0 * q))
                            .collect();
                        println!("{}: {}{drawn}", p.path.display(), each.join(", "));
                    }
                    None => println!(
                        "{}: {} ({:.1}%){drawn}",
                        p.path.display(),
                        p.name,
                        100.0 * p.probability
                    ),
                }
            }
            Ok(())
        }
    }
}

fn selftest(k: &Kernels, c: SelftestCmd) -> anyhow::Result<()> {
    let bar = match std::io::stderr().is_terminal() {
        true => indicatif::ProgressBar::new(selfcheck::items(k).len() as u64),
        false => indicatif::ProgressBar::hidden(),
    };
    let suite = selfcheck::suite(k, |c| {
        bar.set_message(c.item.label());
        bar.inc(1);
    });
    bar.finish_and_clear();
    print!("{}", suite.text());
    let cache = c.tune_cache.or_else(tune::cache::default_path);
    if let Some(path) = cache.map(|p| selfcheck::cache::path_beside(&p)) {
        let device = densenet_wgpu::device_cache::device_key(k.gpu());
        let verdicts = suite
            .results
            .iter()
            .map(|r| (r.item.label(), selfcheck::cache::Verdict::from(r)))
            .collect();
        if let Err(e) = selfcheck::cache::CheckCache::store(&path, &device, &verdicts) {
            eprintln!("warning: {e:#}; the verdicts are not kept");
        }
    }
    let failed = suite.results.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        bail!(
            "selftest: {failed} checks failed on {} (listed above)",
            suite.adapter
        );
    }
    Ok(())
}

fn train(
    (opts, spec, precision, verbose): (&GpuOptions, &str, DType, bool),
    c: TrainCmd,
) -> anyhow::Result<()> {
    let dataset = c.data.dataset.unwrap_or(DatasetKind::Synthetic);
    let out = c
        .out
        .unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", c.preset.name(), dataset.name())));
    let r = c.recipe;
    let args = TrainArgs {
        dataset,
        csv: c.data.csv(),
        data_dir: c.data.data_dir,
        preset: c.preset,
        overrides: Overrides {
            epochs: r.epochs,
            batch_size: r.batch_size,
            lr: r.lr,
            momentum: r.momentum,
            weight_decay: r.weight_decay,
            schedule: r.schedule,
            milestones: r.milestones,
            warmup_epochs: r.warmup_epochs,
            label_smoothing: r.label_smoothing,
            clip_grad_norm: r.clip_grad_norm,
            patience: r.patience,
            augment: r.augment,
            lr_features: r.lr_features,
            freeze_features: r.freeze_features,
            optimizer: r.optimizer,
            betas: r.betas.map(|b| (b[0], b[1])),
            eps: r.eps,
            plateau_factor: r.plateau_factor,
            plateau_patience: r.plateau_patience,
            pos_weight: r.pos_weight,
        },
        seed: c.seed,
        limit_train: c.limit_train,
        limit_test: c.limit_test,
        out: out.clone(),
        resume: c.resume,
        init: c.init,
        num_classes: c.num_classes,
        progress: std::io::stderr().is_terminal(),
        precision,
        interrupt: Some(interrupt_flag()?),
        tune: c.tune.options(),
        verbose,
    };
    let (spread, local_rank) = spread(&c.spread)?;
    let mut opts = opts.clone();
    if opts.adapter.is_none() {
        opts.nth = local_rank;
    }
    let history = match train::train_spread(&kernels(&opts, spec)?, &args, &spread) {
        Ok(h) => h,
        // The other ranks may wait for this one: end the job now (an exit without MPI's
        // finalize makes mpirun stop them) rather than at their timeout.
        Err(e)
            if matches!(spread, Spread::Ranks(_)) && e.downcast_ref::<Interrupted>().is_none() =>
        {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        Err(e) => return Err(e),
    };
    if !spread.is_root() {
        return Ok(());
    }
    if let Some(last) = history.last() {
        println!(
            "done: test accuracy {:.2}% after {} epochs; outputs in {}",
            100.0 * last.test_acc,
            last.epoch,
            out.display()
        );
    }
    Ok(())
}

fn plan(opts: &GpuOptions, spec: &str, precision: DType, c: PlanCmd) -> anyhow::Result<()> {
    let k = kernels(opts, spec)?;
    let gpu = k.gpu();
    let args = PlanArgs {
        preset: c.preset,
        dataset: c.dataset,
        batch_size: c.batch_size,
        precision,
    };
    let cfg = c
        .preset
        .config(c.dataset, c.dataset.class_names().len() as u32);
    let batch = c.batch_size.unwrap_or(c.preset.recipe().batch_size);
    // A plan runs nothing: it shows what the cache holds unless asked to time, and checks
    // nothing.
    let mut options = c.tune.options();
    if matches!(options.mode, TuneMode::Exact | TuneMode::Fast) && options.budget.is_none() {
        options.budget = Some(0.0);
    }
    options.check = false;
    let step = (&cfg, batch, Mode::Train, precision);
    let (k, tuning) = tune::tuned_kernels(&k, step, &options, None)?;
    let report = plan_report(&args, PlanLimits::of(gpu), k.policy())?;
    match c.json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print!(
            "{}\n(on {}, {:?})\nkernels of the convolutions:\n{}",
            report.text(),
            gpu.info.name,
            gpu.info.backend,
            tuning.table()
        ),
    }
    Ok(())
}

fn eval(
    (opts, spec, precision, verbose): (&GpuOptions, &str, DType, bool),
    c: EvalCmd,
) -> anyhow::Result<()> {
    let (checkpoint, data) = (c.checkpoint, c.data);
    let ck = Checkpoint::load(&checkpoint)?;
    let dataset = data.dataset.unwrap_or(ck.dataset);
    let seed = c.seed.unwrap_or(ck.recipe.seed);
    let dir = data.data_dir.as_deref();
    let csv = data.csv();
    let size = ck.recipe.augment.load_size(ck.config.image_size);
    let mut splits = data::load_sized(dataset, dir, seed, size, csv.as_ref())
        .with_context(|| format!("loading {} for {}", dataset.name(), checkpoint.display()))?;
    if let Some(n) = c.limit_test {
        splits.test.truncate(n);
    }
    if ck.config.in_channels == 3 && splits.test.channels == 1 {
        splits.test.gray_to_rgb();
    }
    let channels = splits.test.channels;
    if channels != ck.config.in_channels || splits.test.classes() as u32 != ck.config.classes {
        bail!(
            "{} has {} input channels and {} classes; {} has {channels} and {}",
            checkpoint.display(),
            ck.config.in_channels,
            ck.config.classes,
            dataset.name(),
            splits.test.classes()
        );
    }
    let k = kernels(opts, spec)?;
    let step = (&ck.config, ck.recipe.batch_size, Mode::Eval, precision);
    let (k, tuning) = tune::tuned_kernels(&k, step, &c.tune.options(), Some(&ck.kernel_choices))?;
    let timed = tuning
        .launches
        .iter()
        .any(|l| l.source == tune::Source::Timed);
    if timed || tuning.check.checked > 0 || !tuning.warnings.is_empty() || verbose {
        print!("{}", tuning.text());
    }
    if verbose {
        print!("{}", tuning.detail());
    }
    let plan = Plan::eval_in(&k, &ck.config, ck.recipe.batch_size, precision)?;
    ck.restore(k.gpu(), &plan)?;
    let names = splits.test.class_names.clone();
    let b = evaluate_breakdown(k.gpu(), &plan, &Arc::new(splits.test), &ck.recipe.augment)?;
    println!(
        "{} on {} (epoch {}, {precision}): test loss {:.4} acc {:.2}%",
        checkpoint.display(),
        dataset.name(),
        ck.epoch,
        b.loss,
        100.0 * b.accuracy
    );
    print!("{}", b.text(&names));
    let png = c.confusion.unwrap_or_else(|| {
        let dir = checkpoint.parent().unwrap_or(std::path::Path::new("."));
        dir.join("confusion.png")
    });
    b.confusion_png(&png)
        .with_context(|| format!("writing {}", png.display()))?;
    println!("confusion matrix: {}", png.display());
    if let Some(path) = c.logits {
        densenet_wgpu::atomic_file::write_atomic(&path, b.logits_csv().as_bytes())
            .with_context(|| format!("writing the logits {}", path.display()))?;
        println!("logits: {}", path.display());
    }
    Ok(())
}

/// Needs no device: the graph comes from the checkpoint alone.
fn import(c: ImportCmd) -> anyhow::Result<()> {
    let sd = densenet_wgpu::import::read_file(&c.file)?;
    let mut ck = densenet_wgpu::import::to_checkpoint(&sd, &c.file.display().to_string())?;
    ck.config.image_size = c.image_size;
    ck.config.validate()?;
    ck.save(&c.out)?;
    let cfg = &ck.config;
    println!(
        "{}: DenseNet(growth_rate={}, block_config={:?}, num_init_features={}, bn_size={}, \
         num_classes={}), {} parameters, {}x{} RGB with ImageNet normalization",
        c.out.display(),
        cfg.growth_rate,
        cfg.blocks,
        cfg.stem.channels(),
        cfg.bottleneck.unwrap_or(0),
        cfg.classes,
        densenet_wgpu::model::Layout::new(cfg, 1).parameter_count(),
        cfg.image_size,
        cfg.image_size
    );
    Ok(())
}

fn export(c: ExportCmd) -> anyhow::Result<()> {
    let ck = Checkpoint::load(&c.checkpoint)?;
    if c.onnx.is_none() && c.torchvision.is_none() {
        anyhow::bail!("export needs --onnx FILE or --torchvision FILE (or both)");
    }
    if let Some(path) = &c.torchvision {
        densenet_wgpu::import::save_torchvision(&ck, path)
            .with_context(|| format!("exporting {}", c.checkpoint.display()))?;
        println!("{}: the tensors under torchvision's names", path.display());
    }
    let Some(onnx) = &c.onnx else {
        return Ok(());
    };
    let model = densenet_wgpu::onnx::from_checkpoint(&ck)
        .with_context(|| format!("exporting {}", c.checkpoint.display()))?;
    densenet_wgpu::onnx::save(&model, onnx)?;
    let cfg = &ck.config;
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    println!(
        "{}: {nodes} ONNX nodes (opset {}); input images [batch, {}, {}, {}] in [0, 1], output logits [batch, {}]",
        onnx.display(),
        densenet_wgpu::onnx::OPSET,
        cfg.in_channels,
        cfg.image_size,
        cfg.image_size,
        cfg.classes
    );
    Ok(())
}
