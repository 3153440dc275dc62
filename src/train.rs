//! The training loop: batches prepared on a worker thread, one submit per step with at most
//! two steps in flight, progress read back a few times per epoch without stalling the
//! GPU, then evaluation, metrics, the plot and a checkpoint after every epoch.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::Checkpoint;
use crate::data::loader::{Loader, Order};
use crate::data::{self, Dataset, DatasetKind};
use crate::gpu::Gpu;
use crate::model::{DenseNetConfig, Plan, SgdConfig};
use crate::recipe::{Preset, Recipe, Schedule};
use crate::report::{self, EpochMetrics};

/// Everything `densenet-wgpu train` takes; `None` means the preset's value.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub preset: Preset,
    pub epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub lr: Option<f32>,
    pub momentum: Option<f32>,
    pub weight_decay: Option<f32>,
    pub schedule: Option<Schedule>,
    pub seed: u64,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    /// Draw progress bars (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

/// Keeps at most `depth` submissions in flight, so the host never runs far ahead.
struct InFlight {
    queue: VecDeque<wgpu::SubmissionIndex>,
    depth: usize,
}

impl InFlight {
    fn push(&mut self, gpu: &Gpu, idx: wgpu::SubmissionIndex) -> Result<()> {
        self.queue.push_back(idx);
        while self.queue.len() > self.depth {
            let oldest = self.queue.pop_front().expect("non-empty");
            gpu.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest),
                    timeout: None,
                })
                .context("waiting for a training step")?;
        }
        Ok(())
    }
}

/// Evaluates the whole test set in evaluation mode: (mean loss, accuracy).
pub fn evaluate(gpu: &Gpu, plan: &Plan, test: &Arc<Dataset>) -> Result<(f64, f64)> {
    let size = (plan.cfg.image_size, plan.cfg.image_size);
    let loader = Loader::new(test.clone(), plan.batch as usize, Order::Sequential, size);
    plan.reset_metrics(gpu);
    let mut inflight = InFlight {
        queue: VecDeque::new(),
        depth: 2,
    };
    for batch in loader {
        plan.upload(gpu, &batch.x, &batch.labels)?;
        inflight.push(gpu, plan.submit_eval(gpu))?;
    }
    let (loss, correct) = plan.read_metrics(gpu)?;
    let n = test.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}

/// Reads the step metrics back every few steps through a staging buffer, without waiting.
struct Probe {
    staging: wgpu::Buffer,
    ready: Arc<std::sync::atomic::AtomicBool>,
    pending: bool,
}

impl Probe {
    fn new(gpu: &Gpu) -> Probe {
        Probe {
            staging: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("progress readback"),
                size: 8,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            ready: Arc::new(false.into()),
            pending: false,
        }
    }

    /// Queues a copy of the accumulated (loss, correct) unless one is still on its way.
    fn request(&mut self, gpu: &Gpu, plan: &Plan) {
        if self.pending {
            return;
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&plan.loss_sum.buffer, 0, &self.staging, 0, 4);
        enc.copy_buffer_to_buffer(&plan.correct.buffer, 0, &self.staging, 4, 4);
        gpu.queue.submit([enc.finish()]);
        let ready = self.ready.clone();
        self.staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                if r.is_ok() {
                    ready.store(true, std::sync::atomic::Ordering::Release);
                }
            });
        self.pending = true;
    }

    /// The latest (loss sum, correct) if a copy has landed.
    fn take(&mut self, gpu: &Gpu) -> Option<(f64, u64)> {
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        if !self.pending || !self.ready.swap(false, std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let v = {
            let data = self.staging.get_mapped_range(..).ok()?;
            let loss = f32::from_le_bytes(data[0..4].try_into().ok()?) as f64;
            let correct = u32::from_le_bytes(data[4..8].try_into().ok()?) as u64;
            (loss, correct)
        };
        self.staging.unmap();
        self.pending = false;
        Some(v)
    }
}

fn bar(progress: bool, len: u64, prefix: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(prefix);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// What a run trains: network, recipe and data, from the preset or the checkpoint.
pub struct Setup {
    pub config: DenseNetConfig,
    pub recipe: Recipe,
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
    pub resume: Option<Checkpoint>,
}

pub fn setup(args: &TrainArgs) -> Result<Setup> {
    let resume = match &args.resume {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    // A resumed run keeps its seed: the same synthetic data, the same shuffling sequence.
    let seed = resume.as_ref().map_or(args.seed, |ck| ck.recipe.seed);
    let mut splits = data::load(args.dataset, args.data_dir.as_deref(), seed)?;
    if let Some(n) = args.limit_train {
        splits.train.truncate(n);
    }
    if let Some(n) = args.limit_test {
        splits.test.truncate(n);
    }
    let classes = splits.train.classes() as u32;
    let (config, mut recipe) = match &resume {
        Some(ck) => {
            if ck.dataset != args.dataset {
                bail!(
                    "--resume {}: trained on {}, but --dataset is {}",
                    args.resume
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                    ck.dataset.name(),
                    args.dataset.name()
                );
            }
            (ck.config.clone(), ck.recipe.clone())
        }
        None => {
            let mut recipe = args.preset.recipe();
            recipe.seed = args.seed;
            (args.preset.config(args.dataset, classes), recipe)
        }
    };
    if let Some(v) = args.epochs {
        recipe.epochs = v;
    }
    if let Some(v) = args.batch_size {
        recipe.batch_size = v;
    }
    if let Some(v) = args.lr {
        recipe.lr = v;
    }
    if let Some(v) = args.momentum {
        recipe.momentum = v;
        recipe.nesterov &= v > 0.0;
    }
    if let Some(v) = args.weight_decay {
        recipe.weight_decay = v;
    }
    if let Some(v) = args.schedule {
        recipe.schedule = v;
    }
    let batch = recipe.batch_size as usize;
    if splits.train.len() < batch {
        bail!(
            "the training set has {} examples, fewer than one batch of {batch}; lower --batch-size",
            splits.train.len()
        );
    }
    if splits.test.is_empty() {
        bail!("the test set is empty (--limit-test 0?)");
    }
    Ok(Setup {
        config,
        recipe,
        train: Arc::new(splits.train),
        test: Arc::new(splits.test),
        resume,
    })
}

fn sgd(recipe: &Recipe) -> SgdConfig {
    SgdConfig {
        lr: recipe.lr,
        momentum: recipe.momentum,
        weight_decay: recipe.weight_decay,
        nesterov: recipe.nesterov,
    }
}

/// Loads a checkpoint's parameters, running statistics and (if any) momentum into a plan.
pub fn restore(gpu: &Gpu, plan: &Plan, ck: &Checkpoint) -> Result<()> {
    let layout = &plan.layout;
    let params = ck.arena(&layout.params, "", "", false)?.expect("required");
    plan.write_params(gpu, &params)?;
    let rm = ck
        .arena(&layout.stats, "", ".running_mean", false)?
        .expect("required");
    let rv = ck
        .arena(&layout.stats, "", ".running_var", false)?
        .expect("required");
    gpu.write(&plan.running_mean, &rm);
    gpu.write(&plan.running_var, &rv);
    if plan.velocity.len == layout.params.len {
        if let Some(v) = ck.arena(&layout.params, "optimizer.velocity.", "", true)? {
            gpu.write(&plan.velocity, &v);
        }
    }
    Ok(())
}

/// Reads the plan's state back into a checkpoint.
pub fn snapshot(
    gpu: &Gpu,
    plan: &Plan,
    setup: &Setup,
    dataset: DatasetKind,
    epoch: u32,
    step: u64,
) -> Result<Checkpoint> {
    let params: Vec<f32> = gpu.read_all(&plan.params)?;
    let rm: Vec<f32> = gpu.read_all(&plan.running_mean)?;
    let rv: Vec<f32> = gpu.read_all(&plan.running_var)?;
    let velocity: Option<Vec<f32>> = match plan.velocity.len == plan.layout.params.len {
        true => Some(gpu.read_all(&plan.velocity)?),
        false => None,
    };
    Ok(Checkpoint::new(
        setup.config.clone(),
        setup.recipe.clone(),
        dataset,
        epoch,
        step,
        &plan.layout,
        &params,
        (&rm, &rv),
        velocity.as_deref(),
    ))
}

/// Paths of a run's outputs.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

/// Trains as `args` says; returns every epoch's metrics (earlier ones too when resuming).
pub fn train(gpu: &Gpu, args: &TrainArgs) -> Result<Vec<EpochMetrics>> {
    let setup = setup(args)?;
    let (cfg, recipe) = (&setup.config, &setup.recipe);
    let mut plan = Plan::new(gpu, cfg, recipe.batch_size, sgd(recipe))?;
    let (first_epoch, mut step) = match &setup.resume {
        Some(ck) => {
            restore(gpu, &plan, ck)?;
            (ck.epoch, ck.step)
        }
        None => {
            plan.write_params(gpu, &plan.layout.init_params(cfg.init, recipe.seed))?;
            (0, 0)
        }
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut history = match &setup.resume {
        Some(_) => report::read_metrics(&metrics_path)?
            .into_iter()
            .filter(|m| m.epoch <= first_epoch)
            .collect(),
        None => Vec::new(),
    };
    let steps_per_epoch = (setup.train.len() / recipe.batch_size as usize) as u64;
    let total_steps = steps_per_epoch * recipe.epochs as u64;
    eprintln!(
        "densenet-wgpu: {} on {} ({} train / {} test), {} parameters, batch {}, {} epochs; \
         device {} ({:?}); planned memory: {}",
        args.preset.name(),
        args.dataset.name(),
        setup.train.len(),
        setup.test.len(),
        plan.layout.parameter_count(),
        recipe.batch_size,
        recipe.epochs,
        gpu.info.name,
        gpu.info.backend,
        plan.memory
    );
    let size = (cfg.image_size, cfg.image_size);
    for epoch in first_epoch + 1..=recipe.epochs {
        let start = Instant::now();
        let order =
            Order::Shuffled(recipe.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let loader = Loader::new(setup.train.clone(), recipe.batch_size as usize, order, size);
        let batches = loader.batches as u64;
        let pb = bar(
            args.progress,
            batches,
            format!("epoch {epoch}/{}", recipe.epochs),
        );
        plan.reset_metrics(gpu);
        let mut inflight = InFlight {
            queue: VecDeque::new(),
            depth: 2,
        };
        let mut probe = Probe::new(gpu);
        let mut lr = recipe.lr;
        for (i, batch) in loader.enumerate() {
            lr = recipe.schedule.lr(recipe.lr, step, total_steps);
            plan.set_lr(gpu, lr);
            plan.upload(gpu, &batch.x, &batch.labels)?;
            inflight.push(gpu, plan.submit_train(gpu))?;
            step += 1;
            if i % 8 == 7 {
                probe.request(gpu, &plan);
            }
            if let Some((loss, correct)) = probe.take(gpu) {
                // The copy was queued after step `seen`; close enough for a progress bar.
                let seen = ((i as u64 + 1) / 8 * 8).max(1) as f64 * recipe.batch_size as f64;
                let secs = start.elapsed().as_secs_f64();
                pb.set_message(format!(
                    "loss {:.4} acc {:.1}% {:.0} img/s",
                    loss / seen,
                    100.0 * correct as f64 / seen,
                    (i + 1) as f64 * recipe.batch_size as f64 / secs
                ));
            }
            pb.inc(1);
        }
        let (loss_sum, correct) = plan.read_metrics(gpu)?;
        let train_secs = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let seen = (batches * recipe.batch_size as u64).max(1) as f64;
        let (test_loss, test_acc) = evaluate(gpu, &plan, &setup.test)?;
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen,
            train_acc: correct as f64 / seen,
            test_loss,
            test_acc,
            seconds: start.elapsed().as_secs_f64(),
            images_per_sec: seen / train_secs,
            lr: lr as f64,
        };
        println!(
            "epoch {epoch:>3}/{}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s, {:.1} s",
            recipe.epochs,
            m.train_loss,
            100.0 * m.train_acc,
            m.test_loss,
            100.0 * m.test_acc,
            m.images_per_sec,
            m.seconds
        );
        history.push(m);
        report::write_metrics(&metrics_path, &history)?;
        let title = format!("{} on {}", args.preset.name(), args.dataset.name());
        report::plot(&args.out.join("curves.png"), &history, &title)?;
        snapshot(gpu, &plan, &setup, args.dataset, epoch, step)?
            .save(&checkpoint_path(&args.out))?;
    }
    Ok(history)
}
