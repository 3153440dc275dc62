//! Timing a plan (`densenet-wgpu bench`): whole training steps by wall clock and, with the
//! profile, every kernel of a step by GPU timestamps, rated against the adapter's own
//! measured ceilings (the roofline).

mod profile;
pub mod roofline;

use std::fmt::Write;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

pub use profile::{profile, KernelTime};
pub use roofline::Ceilings;

use crate::data::DatasetKind;
use crate::gpu::{DType, Gpu};
use crate::kernels::Kernels;
use crate::model::memory::MemoryReport;
use crate::model::plan::{Cmd, Plan};
use crate::model::Mode;
use crate::recipe::Preset;
use crate::tune::{self, TuneOptions, TuneReport};

/// What `densenet-wgpu bench` times.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub preset: Preset,
    /// Whose image shape and classes to use (no files are read).
    pub dataset: DatasetKind,
    pub batch_size: Option<u32>,
    /// Timed steps, after two warm-up steps.
    pub steps: u32,
    /// Also measure the ceilings and time every kernel of one step.
    pub profile: bool,
    /// Element type of activations and their gradients.
    pub precision: DType,
    /// How the kernels are chosen.
    pub tune: TuneOptions,
    /// Print each op's tuned configurations too.
    pub verbose: bool,
    /// When the process started: the report gives the time from it to the first step.
    pub started: Instant,
}

/// A bench run: the step, and with the profile the ceilings and every kernel.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub preset: &'static str,
    pub adapter: String,
    pub backend: String,
    pub batch: u32,
    pub step_ms: f64,
    pub images_per_sec: f64,
    pub dispatches: usize,
    pub kernel_policy: String,
    /// Element type of activations and their gradients.
    pub precision: DType,
    pub memory: MemoryReport,
    pub ceilings: Option<Ceilings>,
    /// Slowest first.
    pub kernels: Vec<KernelTime>,
    /// What tuning chose, and its time.
    pub tuning: TuneReport,
    /// Seconds from the process's start to the end of the first (warm-up) step.
    pub first_step_s: f64,
    /// The text gives each op's tuned configurations too.
    #[serde(skip)]
    pub verbose: bool,
}

/// Times training steps of a preset's network on random data.
pub fn bench(k: &Kernels, a: &BenchArgs) -> Result<BenchReport> {
    if a.dataset == DatasetKind::Folder {
        anyhow::bail!("--dataset folder has no fixed shape to time; give the shapes of another dataset (e.g. cifar10)");
    }
    let gpu = k.gpu();
    let cfg = a
        .preset
        .config(a.dataset, a.dataset.class_names().len() as u32);
    let recipe = a.preset.recipe();
    let batch = a.batch_size.unwrap_or(recipe.batch_size);
    let step = (&cfg, batch, Mode::Train, a.precision);
    let (tuned, tuning) = tune::tuned_kernels(k, step, &a.tune, None)?;
    let k = &tuned;
    let plan = Plan::train_in(k, &cfg, batch, recipe.sgd(), a.precision)?;
    plan.write_params(gpu, &plan.layout.init_params(cfg.init, 0))?;
    let mut rng = fastrand::Rng::with_seed(0);
    let x: Vec<f32> = (0..plan.buffers.input.len).map(|_| rng.f32()).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.u32(..cfg.classes)).collect();
    plan.upload(gpu, &x, &labels)?;
    plan.submit_train(gpu)?;
    gpu.wait()?;
    let first_step_s = a.started.elapsed().as_secs_f64();
    let secs = time_train_steps(gpu, &plan, 1, a.steps)?;
    let cmds = plan.train_commands();
    let (ceilings, kernels) = match a.profile {
        true => (Some(roofline::measure(k)?), profile(gpu, cmds)?),
        false => (None, Vec::new()),
    };
    Ok(BenchReport {
        preset: a.preset.name(),
        adapter: gpu.info.name.clone(),
        backend: format!("{:?}", gpu.info.backend),
        batch,
        step_ms: secs * 1e3,
        images_per_sec: batch as f64 / secs,
        dispatches: cmds.iter().filter(|c| matches!(c, Cmd::Run(_))).count(),
        kernel_policy: k.policy().origin.clone(),
        precision: a.precision,
        memory: plan.memory.report.clone(),
        ceilings,
        kernels,
        tuning,
        first_step_s,
        verbose: a.verbose,
    })
}

/// Seconds per training step: `warmup` steps, then the mean over `steps`, waiting for the
/// GPU at the end (the data stays as uploaded: this times the device, not the loader).
pub fn time_train_steps(gpu: &Gpu, plan: &Plan, warmup: u32, steps: u32) -> Result<f64> {
    for _ in 0..warmup {
        plan.submit_train(gpu)?;
    }
    gpu.wait()?;
    let start = Instant::now();
    for _ in 0..steps {
        plan.submit_train(gpu)?;
    }
    gpu.wait()?;
    Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
}

impl BenchReport {
    /// The step, then with the profile the ceilings and one row per kernel: time, share of
    /// the step, achieved GFLOP/s and GB/s, and the share of the roofline's floor.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} on {} ({}), batch {}: {:.2} ms per training step, {:.0} images/s, {} dispatches \
             per step; kernels {}; activations {}; memory: {}\n",
            self.preset,
            self.adapter,
            self.backend,
            self.batch,
            self.step_ms,
            self.images_per_sec,
            self.dispatches,
            self.kernel_policy,
            self.precision,
            self.memory
        );
        let _ = writeln!(
            out,
            "first step done {:.2} s after launch",
            self.first_step_s
        );
        out.push_str(&self.tuning.text());
        if self.verbose {
            out.push_str(&self.tuning.detail());
        }
        let Some(c) = self.ceilings else {
            return out;
        };
        out.push_str(&self.tuning.table());
        let _ = writeln!(
            out,
            "ceilings measured here: {:.1} GFLOP/s (f32 multiply-add), {:.1} GB/s (streaming)",
            c.flops_per_s * 1e-9,
            c.bytes_per_s * 1e-9
        );
        let total: f64 = self.kernels.iter().map(|t| t.seconds).sum();
        let _ = writeln!(
            out,
            "{:<44} {:>5} {:>10} {:>6} {:>9} {:>8} {:>7}",
            "kernel", "calls", "ms", "step", "GFLOP/s", "GB/s", "roof"
        );
        for t in &self.kernels {
            let _ = writeln!(
                out,
                "{:<44} {:>5} {:>10.3} {:>5.1}% {:>9.2} {:>8.2} {:>6.1}%",
                t.name,
                t.calls,
                t.seconds * 1e3,
                100.0 * t.seconds / total,
                t.flops as f64 / t.seconds * 1e-9,
                t.bytes as f64 / t.seconds * 1e-9,
                100.0 * c.floor(t.flops, t.bytes) / t.seconds
            );
        }
        let floor: f64 = self.kernels.iter().map(|t| c.floor(t.flops, t.bytes)).sum();
        let _ = writeln!(
            out,
            "{:<44} {:>5} {:>10.3}  (roofline floor {:.3} ms: {:.1}% of the ceiling)",
            "sum of kernels",
            "",
            total * 1e3,
            floor * 1e3,
            100.0 * floor / total
        );
        out
    }
}
