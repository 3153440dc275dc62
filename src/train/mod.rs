//! The training loop: batches prepared on a worker thread, one submit per step with at most
//! two steps in flight, progress read back a few times per epoch without stalling the
//! GPU, then evaluation, metrics, the plot and a checkpoint after every epoch.
//!
//! [`setup`] decides what is trained (preset, command line, or the checkpoint resumed);
//! the state moves between checkpoint and device through [`Checkpoint`].

mod progress;
mod setup;
mod spread;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

pub use setup::{setup, Setup, TrainArgs};
pub use spread::{bucket_bytes, Spread};

use crate::checkpoint::Checkpoint;
use crate::data::loader::Order;
use crate::evaluate::evaluate;
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
    train_spread(k, args, &Spread::Solo)
}

/// The kernels of the run: rank 0 tunes (or takes a resumed run's), the other ranks launch
/// what it chose, so that every replica computes the same bits.
fn run_kernels(
    k: &Kernels,
    args: &TrainArgs,
    setup: &Setup,
    spread: &Spread,
) -> Result<(Kernels, tune::TuneReport)> {
    let step = (
        &setup.config,
        setup.recipe.batch_size,
        Mode::Train,
        args.precision,
    );
    if !spread.is_root() {
        let mut bytes = Vec::new();
        spread.broadcast(&mut bytes)?;
        let choices = serde_json::from_slice(&bytes).context("rank 0's kernel choices")?;
        return tune::tuned_kernels(k, step, &args.tune, Some(&choices));
    }
    // Tuned once, before the plan: the run keeps these kernels to the end, and so does its
    // resumption (they go into every checkpoint).
    let recorded = setup.resume.as_ref().map(|ck| &ck.kernel_choices);
    let (tuned, tuning) = tune::tuned_kernels(k, step, &args.tune, recorded)?;
    let mut bytes = serde_json::to_vec(&tuning.choices())?;
    spread.broadcast(&mut bytes)?;
    print!("{}", tuning.text());
    if args.verbose {
        print!("{}", tuning.detail());
    }
    Ok((tuned, tuning))
}

/// The plan's starting state: resumed, fine-tuned from a file, or initialized; then rank
/// 0's on every rank. Returns the epochs and steps done.
fn start_state(
    gpu: &crate::gpu::Gpu,
    plan: &Plan,
    setup: &Setup,
    spread: &Spread,
) -> Result<(u32, u64)> {
    let (cfg, recipe) = (&setup.config, &setup.recipe);
    let done = match &setup.resume {
        Some(ck) => {
            ck.restore(gpu, plan)?;
            if let Some(s) = ck.loss_scale {
                plan.write_loss_scale(gpu, s)?;
            }
            (ck.epoch, ck.step)
        }
        None => match &setup.init {
            // Fine-tuning: the file's weights and running statistics, a fresh optimizer.
            Some(ck) => {
                ck.restore(gpu, plan)?;
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
    spread.broadcast_state(gpu, plan)?;
    Ok(done)
}

/// A resumed run must be spread as it was: the same replicas take the same steps.
fn check_resumed_spread(setup: &Setup, spread: &Spread) -> Result<()> {
    let Some(ck) = &setup.resume else {
        return Ok(());
    };
    let (n, sync) = (spread.replicas() as u32, spread.sync_bn().is_some());
    if ck.replicas != n || ck.sync_bn != sync {
        let says = |n: u32, s: bool| match (n, s) {
            (1, _) => "one process".to_string(),
            (n, true) => format!("{n} ranks with --sync-bn"),
            (n, false) => format!("{n} ranks"),
        };
        anyhow::bail!(
            "the checkpoint was trained on {} and this run is {}: resume it as it was \
             trained (same rank count and --sync-bn), or start a new run with --init",
            says(ck.replicas, ck.sync_bn),
            says(n, sync)
        );
    }
    Ok(())
}

/// The epochs already in the output folder's `metrics.jsonl` (a resumed run), as rank 0
/// reads them.
fn earlier_history(args: &TrainArgs, setup: &Setup, spread: &Spread) -> Result<Vec<EpochMetrics>> {
    let Some(ck) = &setup.resume else {
        return Ok(Vec::new());
    };
    let mut bytes = match spread.is_root() {
        true => {
            let all = report::read_metrics(&args.out.join("metrics.jsonl"))?;
            let kept: Vec<_> = all.into_iter().filter(|m| m.epoch <= ck.epoch).collect();
            serde_json::to_vec(&kept)?
        }
        false => Vec::new(),
    };
    spread.broadcast(&mut bytes)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// [`train`] spread over replicas: simulated in this process, or ranks of an MPI job (rank
/// 0 alone prints and writes).
pub fn train_spread(k: &Kernels, args: &TrainArgs, spread: &Spread) -> Result<Vec<EpochMetrics>> {
    let gpu = k.gpu();
    let setup = setup(args)?;
    check_resumed_spread(&setup, spread)?;
    let global = setup.recipe.batch_size as usize * spread.replicas();
    if setup.train.len() < global {
        anyhow::bail!(
            "the training set has {} examples, fewer than one global batch of {} ranks x \
             --batch-size {}; lower --batch-size or use fewer ranks",
            setup.train.len(),
            spread.replicas(),
            setup.recipe.batch_size
        );
    }
    let root = spread.is_root();
    let (cfg, recipe) = (&setup.config, &setup.recipe);
    let (tuned, tuning) = run_kernels(k, args, &setup, spread)?;
    let k = &tuned;
    let (batch, sgd) = (recipe.batch_size, recipe.sgd());
    let mut plan = Plan::train_replica(k, cfg, batch, sgd, args.precision, spread.sync_bn())?;
    plan.set_label_smoothing(gpu, recipe.label_smoothing)?;
    let (first_epoch, mut step) = start_state(gpu, &plan, &setup, spread)?;
    if root {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
    }
    let metrics_path = args.out.join("metrics.jsonl");
    let mut history = earlier_history(args, &setup, spread)?;
    if root {
        announce(k, &plan, &setup, args, spread)?;
    }
    let mut stepper = spread::Stepper::new(gpu, &plan, spread)?;
    for epoch in first_epoch + 1..=recipe.epochs {
        let losses: Vec<f64> = history.iter().map(|m| m.test_loss).collect();
        let scale = setup.recipe.plateau_scale(&losses);
        let run = Run {
            setup: &setup,
            args,
            spread,
        };
        let m = run_epoch(k, &mut plan, &run, &mut stepper, (epoch, scale), &mut step)?;
        spread.check_weights(gpu, &plan, epoch)?;
        history.push(m);
        let best = best_epoch(&history);
        if root {
            print_epoch(
                history.last().expect("just pushed"),
                recipe.epochs,
                &stepper,
            );
            report::write_metrics(&metrics_path, &history)?;
            let title = format!("{} on {}", setup.network, args.dataset.name());
            report::plot(&args.out.join("curves.png"), &history, &title)?;
            let mut ck = Checkpoint::capture(gpu, &plan, recipe, args.dataset, (epoch, step))?;
            ck.loss_scale = plan.read_loss_scale(gpu)?;
            ck.class_names = setup.train.class_names.clone();
            ck.kernel_choices = tuning.choices();
            ck.replicas = spread.replicas() as u32;
            ck.sync_bn = spread.sync_bn().is_some();
            ck.save(&checkpoint_path(&args.out))?;
            if best == epoch {
                ck.save(&best_checkpoint_path(&args.out))?;
            }
        }
        if let Some(p) = recipe.patience.filter(|&p| epoch - best >= p) {
            if root {
                let acc = history
                    .iter()
                    .find(|m| m.epoch == best)
                    .map_or(0.0, |m| m.test_acc);
                println!(
                    "stopping early: no better test accuracy for {p} epochs (best {:.2}% at \
                     epoch {best}, in {})",
                    100.0 * acc,
                    best_checkpoint_path(&args.out).display()
                );
            }
            break;
        }
    }
    Ok(history)
}

/// The epoch's line.
fn print_epoch(m: &EpochMetrics, epochs: u32, stepper: &spread::Stepper) {
    let auroc = m
        .mean_auroc
        .map_or(String::new(), |a| format!(" mean AUROC {a:.4}"));
    let comm = stepper
        .comm_per_step()
        .map_or(String::new(), |(ms, bytes)| {
            format!(
                " | all-reduce {ms:.1} ms/step ({:.2} MB)",
                bytes as f64 / 1e6
            )
        });
    println!(
        "epoch {:>3}/{epochs}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}%{auroc} | {:.0} img/s, {:.1} s{comm}",
        m.epoch,
        m.train_loss,
        100.0 * m.train_acc,
        m.test_loss,
        100.0 * m.test_acc,
        m.images_per_sec,
        m.seconds
    );
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
fn announce(
    k: &Kernels,
    plan: &Plan,
    setup: &Setup,
    args: &TrainArgs,
    spread: &Spread,
) -> Result<()> {
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
         {:.1} MiB ({}), evaluation plan {:.1} MiB{}",
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
        spread.describe(recipe.batch_size),
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
/// read the logits back for each label's AUROC. Spread runs evaluate a shard per replica.
fn test_metrics(
    gpu: &crate::gpu::Gpu,
    plan: &Plan,
    setup: &Setup,
    spread: &Spread,
) -> Result<(f64, f64, Option<Aurocs>)> {
    let aug = &setup.recipe.augment;
    if !matches!(spread, Spread::Solo) {
        return spread::sharded_test_metrics(gpu, plan, spread, (&setup.test, aug));
    }
    if plan.cfg.multi_label {
        let b = crate::evaluate::evaluate_breakdown(gpu, plan, &setup.test, aug)?;
        let aurocs = (b.auroc_per_class(), b.mean_auroc());
        return Ok((b.loss, b.accuracy, Some(aurocs)));
    }
    let (loss, acc) = evaluate(gpu, plan, &setup.test, aug)?;
    Ok((loss, acc, None))
}

/// What an epoch runs on.
struct Run<'a> {
    setup: &'a Setup,
    args: &'a TrainArgs,
    spread: &'a Spread,
}

/// One epoch: the training steps, then the evaluation; `step` counts optimizer steps.
fn run_epoch(
    k: &Kernels,
    plan: &mut Plan,
    run: &Run<'_>,
    stepper: &mut spread::Stepper,
    (epoch, scale): (u32, f32),
    step: &mut u64,
) -> Result<EpochMetrics> {
    let (gpu, recipe, args, spread) = (k.gpu(), &run.setup.recipe, run.args, run.spread);
    let start = Instant::now();
    let size = (plan.cfg.image_size, plan.cfg.image_size);
    let order = Order::Shuffled(recipe.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let aug = Arc::new(recipe.augment.clone());
    let batch = recipe.batch_size as usize;
    let mut loaders = stepper.loaders(spread, (&run.setup.train, batch, order), size, &aug);
    let batches = loaders[0].batches as u64;
    let global = (batch * spread.replicas()) as u64;
    let total_steps = run.setup.train.len() as u64 / global * recipe.epochs as u64;
    let shown = args.progress && spread.is_root();
    let pb = progress::bar(shown, batches, format!("epoch {epoch}/{}", recipe.epochs));
    stepper.reset_metrics(gpu, plan);
    plan.set_features_lr_factor(gpu, recipe.features_factor(epoch));
    let skipped_before = plan.read_loss_scale(gpu)?.map(|s| s.skipped);
    let mut probe = progress::Probe::new(gpu);
    let mut lr = recipe.lr;
    for i in 0..batches as usize {
        let Some(shards) = loaders
            .iter_mut()
            .map(|l| l.next())
            .collect::<Option<Vec<_>>>()
        else {
            break;
        };
        lr = recipe.lr_at(*step, total_steps, batches) * scale;
        plan.set_step(*step + 1);
        plan.set_lr(gpu, lr);
        stepper.step(gpu, plan, spread, &shards)?;
        *step += 1;
        if i % 8 == 7 {
            probe.request(gpu, plan);
        }
        if spread.any(interrupted(args))? {
            gpu.wait()?;
            return Err(Interrupted {
                epoch,
                step: *step,
                checkpoint: last_checkpoint(args),
            }
            .into());
        }
        if let Some((loss, correct)) = probe.take(gpu) {
            // Ranks check the loss they agree on at the epoch's end, all at once.
            if !matches!(spread, Spread::Ranks(_)) {
                check_finite(args, loss, epoch, *step)?;
            }
            // The copy was queued after step `seen` (of one replica's batches); close
            // enough for a progress bar.
            let seen = ((i as u64 + 1) / 8 * 8).max(1) as f64 * batch as f64;
            let secs = start.elapsed().as_secs_f64();
            pb.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} img/s",
                loss / seen,
                100.0 * correct as f64 / seen,
                (i + 1) as f64 * global as f64 / secs
            ));
        }
        pb.inc(1);
    }
    let (loss_sum, correct) = stepper.metrics(gpu, plan, spread)?;
    check_finite(args, loss_sum, epoch, *step)?;
    let scale = plan.read_loss_scale(gpu)?;
    let train_secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let seen = (batches * global).max(1) as f64;
    spread.broadcast_running(gpu, plan)?;
    let (test_loss, test_acc, auroc) = test_metrics(gpu, plan, run.setup, spread)?;
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
