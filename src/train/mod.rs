//! The training loop: batches prepared on a worker thread, one submit per step with at most
//! two steps in flight, progress read back a few times per epoch without stalling the
//! GPU, then evaluation, metrics, the plot and a checkpoint after every epoch.
//!
//! [`setup`] decides what is trained (preset, command line, or the checkpoint resumed);
//! the state moves between checkpoint and device through [`Checkpoint`].

mod progress;
mod setup;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

pub use setup::{setup, Setup, TrainArgs};

use crate::checkpoint::Checkpoint;
use crate::data::loader::{Loader, Order};
use crate::evaluate::evaluate;
use crate::gpu::InFlight;
use crate::kernels::Kernels;
use crate::model::memory::mib;
use crate::model::{MemoryPlan, Mode, Plan, PlanLimits, PlanTarget};
use crate::report::{self, EpochMetrics};
use crate::tune;

/// Where a run's checkpoint goes in its output folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

/// A run stopped on request (Ctrl-C) after a step: where its last checkpoint is, if any.
#[derive(Debug)]
pub struct Interrupted {
    pub epoch: u32,
    pub step: u64,
    /// The last checkpoint written (or resumed from), which holds the run.
    pub checkpoint: Option<PathBuf>,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted in epoch {} after step {}",
            self.epoch, self.step
        )
    }
}

impl std::error::Error for Interrupted {}

/// The checkpoint that holds a run now: the output folder's, else the one it resumed from.
fn last_checkpoint(args: &TrainArgs) -> Option<PathBuf> {
    let own = checkpoint_path(&args.out);
    match own.exists() {
        true => Some(own),
        false => args.resume.clone(),
    }
}

/// A loss that is no longer a number stops the run: the last checkpoint stays as it was.
fn check_finite(args: &TrainArgs, loss: f64, epoch: u32, step: u64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    let kept = match last_checkpoint(args) {
        Some(p) => format!("{} is untouched; resume from it", p.display()),
        None => "no checkpoint was written; start again".to_string(),
    };
    anyhow::bail!(
        "the training loss became {loss} in epoch {epoch} by step {step}: the run diverged; \
         {kept} with a lower --lr"
    )
}

/// Trains as `args` says; returns every epoch's metrics (earlier ones too when resuming).
pub fn train(k: &Kernels, args: &TrainArgs) -> Result<Vec<EpochMetrics>> {
    let gpu = k.gpu();
    let setup = setup(args)?;
    let (cfg, recipe) = (&setup.config, &setup.recipe);
    // Tuned once, before the plan: the run keeps these kernels to the end, and so does its
    // resumption (they go into every checkpoint).
    let recorded = setup.resume.as_ref().map(|ck| &ck.kernel_choices);
    let step = (cfg, recipe.batch_size, Mode::Train, args.precision);
    let (tuned, tuning) = tune::tuned_kernels(k, step, &args.tune, recorded)?;
    print!("{}", tuning.text());
    if args.verbose {
        print!("{}", tuning.detail());
    }
    let k = &tuned;
    let mut plan = Plan::train_in(k, cfg, recipe.batch_size, recipe.sgd(), args.precision)?;
    plan.set_label_smoothing(gpu, recipe.label_smoothing)?;
    let (first_epoch, mut step) = match &setup.resume {
        Some(ck) => {
            ck.restore(gpu, &plan)?;
            if let Some(s) = ck.loss_scale {
                plan.write_loss_scale(gpu, s)?;
            }
            (ck.epoch, ck.step)
        }
        None => match &setup.init {
            // Fine-tuning: the file's weights and running statistics, a fresh optimizer.
            Some(ck) => {
                ck.restore(gpu, &plan)?;
                (0, 0)
            }
            None => {
                plan.write_params(gpu, &plan.layout.init_params(cfg.init, recipe.seed))?;
                (0, 0)
            }
        },
    };
    // After any restore: the weights come from this run's training set.
    if cfg.multi_label {
        let weights = match recipe.pos_weight {
            crate::recipe::PosWeight::Auto => setup.train.pos_weights(),
            crate::recipe::PosWeight::None => vec![1.0; cfg.classes as usize],
        };
        plan.set_pos_weight(gpu, &weights)?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut history: Vec<EpochMetrics> = match &setup.resume {
        Some(_) => report::read_metrics(&metrics_path)?
            .into_iter()
            .filter(|m| m.epoch <= first_epoch)
            .collect(),
        None => Vec::new(),
    };
    announce(k, &plan, &setup, args)?;
    for epoch in first_epoch + 1..=recipe.epochs {
        let losses: Vec<f64> = history.iter().map(|m| m.test_loss).collect();
        let scale = setup.recipe.plateau_scale(&losses);
        let m = run_epoch(k, &mut plan, &setup, args, (epoch, scale), &mut step)?;
        let auroc = m
            .mean_auroc
            .map_or(String::new(), |a| format!(" mean AUROC {a:.4}"));
        println!(
            "epoch {epoch:>3}/{}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}%{auroc} | {:.0} img/s, {:.1} s",
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
        let title = format!("{} on {}", setup.network, args.dataset.name());
        report::plot(&args.out.join("curves.png"), &history, &title)?;
        let mut ck = Checkpoint::capture(gpu, &plan, recipe, args.dataset, (epoch, step))?;
        ck.loss_scale = plan.read_loss_scale(gpu)?;
        ck.class_names = setup.train.class_names.clone();
        ck.kernel_choices = tuning.choices();
        ck.save(&checkpoint_path(&args.out))?;
        let best = best_epoch(&history);
        if best == epoch {
            ck.save(&best_checkpoint_path(&args.out))?;
        }
        if let Some(p) = recipe.patience.filter(|&p| epoch - best >= p) {
            let acc = history
                .iter()
                .find(|m| m.epoch == best)
                .map_or(0.0, |m| m.test_acc);
            println!(
                "stopping early: no better test accuracy for {p} epochs (best {:.2}% at epoch \
                 {best}, in {})",
                100.0 * acc,
                best_checkpoint_path(&args.out).display()
            );
            break;
        }
    }
    Ok(history)
}

/// Where a run keeps the checkpoint of its best test accuracy so far.
pub fn best_checkpoint_path(out: &Path) -> PathBuf {
    out.join("best.safetensors")
}

/// The epoch of the highest test accuracy (the first of equals).
fn best_epoch(history: &[EpochMetrics]) -> u32 {
    history
        .iter()
        .fold(None::<&EpochMetrics>, |b, m| match b {
            Some(b) if b.test_acc >= m.test_acc => Some(b),
            _ => Some(m),
        })
        .map_or(0, |m| m.epoch)
}

/// The run's one-line summary: data, network, device, kernels, and the memory of the
/// training plan and of an evaluation-only plan of the same network.
fn announce(k: &Kernels, plan: &Plan, setup: &Setup, args: &TrainArgs) -> Result<()> {
    let gpu = k.gpu();
    let recipe = &setup.recipe;
    let target = PlanTarget {
        limits: PlanLimits::of(gpu),
        dtype: plan.precision(),
        policy: k.policy().clone(),
    };
    let (cfg, layout) = (&plan.cfg, &plan.layout);
    let eval = MemoryPlan::new(cfg, layout, plan.batch, Mode::Eval, false, &target)?;
    eprintln!(
        "densenet-wgpu: {} on {} ({} train / {} test), {} parameters, batch {}, {} epochs; \
         augment {}; device {} ({:?}); kernels {}; activations {}; memory: training plan \
         {:.1} MiB ({}), evaluation plan {:.1} MiB",
        setup.network,
        args.dataset.name(),
        setup.train.len(),
        setup.test.len(),
        plan.layout.parameter_count(),
        recipe.batch_size,
        recipe.epochs,
        recipe.augment.describe(),
        gpu.info.name,
        gpu.info.backend,
        k.policy().origin,
        plan.precision(),
        mib(plan.memory.report.total()),
        plan.memory.report,
        mib(eval.report.total()),
    );
    Ok(())
}

/// Whether Ctrl-C asked the run to stop.
fn interrupted(args: &TrainArgs) -> bool {
    args.interrupt
        .as_ref()
        .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
}

/// Per-label AUROCs and their mean (multi-label runs).
type Aurocs = (Vec<Option<f64>>, Option<f64>);

/// The test set's mean loss and accuracy with the running statistics; multi-label runs
/// read the logits back for each label's AUROC.
fn test_metrics(
    gpu: &crate::gpu::Gpu,
    plan: &Plan,
    setup: &Setup,
) -> Result<(f64, f64, Option<Aurocs>)> {
    let aug = &setup.recipe.augment;
    if plan.cfg.multi_label {
        let b = crate::evaluate::evaluate_breakdown(gpu, plan, &setup.test, aug)?;
        let aurocs = (b.auroc_per_class(), b.mean_auroc());
        return Ok((b.loss, b.accuracy, Some(aurocs)));
    }
    let (loss, acc) = evaluate(gpu, plan, &setup.test, aug)?;
    Ok((loss, acc, None))
}

/// One epoch: the training steps, then the evaluation; `step` counts optimizer steps.
fn run_epoch(
    k: &Kernels,
    plan: &mut Plan,
    setup: &Setup,
    args: &TrainArgs,
    (epoch, scale): (u32, f32),
    step: &mut u64,
) -> Result<EpochMetrics> {
    let (gpu, recipe) = (k.gpu(), &setup.recipe);
    let start = Instant::now();
    let size = (plan.cfg.image_size, plan.cfg.image_size);
    let order = Order::Shuffled(recipe.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let aug = Arc::new(recipe.augment.clone());
    let loader = Loader::with_augment(
        setup.train.clone(),
        recipe.batch_size as usize,
        order,
        size,
        aug,
    );
    let batches = loader.batches as u64;
    let total_steps =
        (setup.train.len() / recipe.batch_size as usize) as u64 * recipe.epochs as u64;
    let pb = progress::bar(
        args.progress,
        batches,
        format!("epoch {epoch}/{}", recipe.epochs),
    );
    plan.reset_metrics(gpu);
    plan.set_features_lr_factor(gpu, recipe.features_factor(epoch));
    let skipped_before = plan.read_loss_scale(gpu)?.map(|s| s.skipped);
    let mut inflight = InFlight::new(2);
    let mut probe = progress::Probe::new(gpu);
    let mut lr = recipe.lr;
    for (i, batch) in loader.enumerate() {
        lr = recipe.lr_at(*step, total_steps, batches) * scale;
        plan.set_step(*step + 1);
        plan.set_lr(gpu, lr);
        plan.upload(gpu, &batch.x, &batch.labels)?;
        inflight.push(gpu, plan.submit_train(gpu)?)?;
        *step += 1;
        if i % 8 == 7 {
            probe.request(gpu, plan);
        }
        if interrupted(args) {
            gpu.wait()?;
            return Err(Interrupted {
                epoch,
                step: *step,
                checkpoint: last_checkpoint(args),
            }
            .into());
        }
        if let Some((loss, correct)) = probe.take(gpu) {
            check_finite(args, loss, epoch, *step)?;
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
    check_finite(args, loss_sum, epoch, *step)?;
    let scale = plan.read_loss_scale(gpu)?;
    let train_secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let seen = (batches * recipe.batch_size as u64).max(1) as f64;
    let (test_loss, test_acc, auroc) = test_metrics(gpu, plan, setup)?;
    Ok(EpochMetrics {
        epoch,
        train_loss: loss_sum / seen,
        train_acc: correct as f64 / seen,
        test_loss,
        test_acc,
        seconds: start.elapsed().as_secs_f64(),
        images_per_sec: seen / train_secs,
        lr: lr as f64,
        skipped_steps: scale.map(|s| (s.skipped - skipped_before.unwrap_or(0)) as u64),
        loss_scale: scale.map(|s| s.scale as f64),
        mean_auroc: auroc.as_ref().and_then(|a| a.1),
        auroc: auroc.map(|a| a.0),
    })
}
