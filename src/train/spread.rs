//! How a run is spread over replicas: one process, N replicas simulated in one
//! (`--simulate-ranks`), or N ranks (`mpirun`). The loop asks this module for its batches,
//! its step, its metric sums and its evaluation, and gets the same numbers from the
//! simulation and from the ranks.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::data::augment::Augment;
use crate::data::loader::{Batch, Loader, Order, Shard};
use crate::data::Dataset;
use crate::evaluate::{evaluate_shard, Breakdown, ShardEval};
use crate::gpu::{Gpu, GpuBuffer, InFlight};
use crate::model::Plan;
use crate::parallel::replica::Replica;
use crate::parallel::simulate::Simulated;
use crate::parallel::{Collective, Ranks, DEFAULT_BUCKET_MIB};

/// Where the replicas of a run are.
pub enum Spread {
    Solo,
    /// N replicas in this process, their gradients reduced in buckets as N ranks' would be.
    Simulated {
        replicas: usize,
        bucket_bytes: u64,
    },
    Ranks(Ranks),
}

/// The bucket size `--bucket-mib` gives (or the default), in bytes.
pub fn bucket_bytes(mib: Option<f64>) -> u64 {
    (mib.unwrap_or(DEFAULT_BUCKET_MIB) * 1024.0 * 1024.0) as u64
}

impl Spread {
    pub fn replicas(&self) -> usize {
        match self {
            Spread::Solo => 1,
            Spread::Simulated { replicas, .. } => *replicas,
            Spread::Ranks(r) => r.comm.size(),
        }
    }

    /// Rank 0 (or a single process) prints, and writes metrics, plots and checkpoints.
    pub fn is_root(&self) -> bool {
        match self {
            Spread::Ranks(r) => r.comm.rank() == 0,
            _ => true,
        }
    }

    /// Synchronized batch norm across the ranks, for the plan.
    pub fn sync_bn(&self) -> Option<u32> {
        match self {
            Spread::Ranks(r) if r.sync_bn => Some(r.comm.size() as u32),
            _ => None,
        }
    }

    /// What the banner says of the spread.
    pub fn describe(&self, batch: u32) -> String {
        match self {
            Spread::Solo => String::new(),
            Spread::Simulated { replicas, .. } => format!(
                "; {replicas} simulated ranks x batch {batch} = global batch {}",
                *replicas as u32 * batch
            ),
            Spread::Ranks(r) => format!(
                "; {} ranks x batch {batch} = global batch {}{}",
                r.comm.size(),
                r.comm.size() as u32 * batch,
                if r.sync_bn {
                    ", synchronized batch norm"
                } else {
                    ""
                }
            ),
        }
    }

    /// Rank 0's `bytes` on every rank (a single process keeps its own).
    pub fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<()> {
        if let Spread::Ranks(r) = self {
            r.comm.broadcast(bytes)?;
        }
        Ok(())
    }

    /// Rank 0's weights, optimizer state, running statistics and loss scale on every rank.
    pub fn broadcast_state(&self, gpu: &Gpu, plan: &Plan) -> Result<()> {
        let Spread::Ranks(r) = self else {
            return Ok(());
        };
        let b = &plan.buffers;
        let floats = [
            Some(&b.params),
            b.velocity.as_ref(),
            Some(&b.running_mean),
            Some(&b.running_var),
        ];
        for buf in floats.into_iter().flatten() {
            broadcast_floats(gpu, &r.comm, buf)?;
        }
        if let Some(s) = plan.read_loss_scale(gpu)? {
            let mut bytes = bytemuck::cast_slice(&s.to_words()).to_vec();
            r.comm.broadcast(&mut bytes)?;
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
            plan.write_loss_scale(
                gpu,
                crate::ops::loss_scale::LossScaleState::from_words(&words),
            )?;
        }
        Ok(())
    }

    /// The running statistics of rank 0 on every rank (an epoch's end: each rank's moved
    /// with its own shards, as PyTorch's DDP broadcasts rank 0's buffers).
    pub fn broadcast_running(&self, gpu: &Gpu, plan: &Plan) -> Result<()> {
        let Spread::Ranks(r) = self else {
            return Ok(());
        };
        for buf in [&plan.buffers.running_mean, &plan.buffers.running_var] {
            broadcast_floats(gpu, &r.comm, buf)?;
        }
        Ok(())
    }

    /// Fails unless every rank holds the same weights.
    pub fn check_weights(&self, gpu: &Gpu, plan: &Plan, epoch: u32) -> Result<()> {
        if let Spread::Ranks(r) = self {
            let params = gpu.read_all::<f32>(&plan.buffers.params)?;
            r.comm
                .check_same("weights", bytemuck::cast_slice(&params))
                .with_context(|| format!("after epoch {epoch}"))?;
        }
        Ok(())
    }

    /// Whether any replica was asked to stop (Ctrl-C on one rank stops all at one step).
    pub fn any(&self, yes: bool) -> Result<bool> {
        match self {
            Spread::Ranks(r) => Ok(r.comm.any(yes)?),
            _ => Ok(yes),
        }
    }

    /// Sums over the replicas, in rank order from zero, as the ranks' `sum_f64` adds
    /// (`local`: this process's replicas' values; a rank has one).
    fn sum(&self, local: &[Vec<f64>]) -> Result<Vec<f64>> {
        if let Spread::Ranks(r) = self {
            return Ok(r.comm.sum_f64(&local[0])?);
        }
        Ok(local.iter().fold(vec![0f64; local[0].len()], |mut acc, v| {
            acc.iter_mut().zip(v).for_each(|(a, x)| *a += x);
            acc
        }))
    }
}

/// Rank 0's values of an f32 buffer on every rank (only rank 0 reads it back).
fn broadcast_floats(gpu: &Gpu, comm: &Collective, buf: &GpuBuffer) -> Result<()> {
    let mut bytes = match comm.rank() {
        0 => bytemuck::cast_slice(&gpu.read_all::<f32>(buf)?).to_vec(),
        _ => Vec::new(),
    };
    comm.broadcast(&mut bytes)?;
    gpu.write::<f32>(buf, &bytemuck::pod_collect_to_vec(&bytes))?;
    Ok(())
}

/// An epoch's training batches and steps, per spread.
pub enum Stepper {
    Solo(InFlight),
    Simulated(Simulated),
    Ranks(Replica),
}

impl Stepper {
    pub fn new(gpu: &Gpu, plan: &Plan, spread: &Spread) -> Result<Stepper> {
        Ok(match spread {
            Spread::Solo => Stepper::Solo(InFlight::new(2)),
            Spread::Simulated {
                replicas,
                bucket_bytes,
            } => Stepper::Simulated(Simulated::new(gpu, plan, *replicas, *bucket_bytes)?),
            Spread::Ranks(r) => Stepper::Ranks(Replica::new(gpu, plan, r.bucket_bytes)?),
        })
    }

    /// One loader per replica this process runs, each over its shard of the epoch.
    pub fn loaders(
        &self,
        spread: &Spread,
        (ds, batch, order): (&Arc<Dataset>, usize, Order),
        size: (u32, u32),
        aug: &Arc<Augment>,
    ) -> Vec<Loader> {
        let count = spread.replicas();
        let shards: Vec<Shard> = match spread {
            Spread::Solo => vec![Shard::WHOLE],
            Spread::Simulated { .. } => (0..count).map(|index| Shard { index, count }).collect(),
            Spread::Ranks(r) => vec![Shard {
                index: r.comm.rank(),
                count,
            }],
        };
        shards
            .into_iter()
            .map(|s| Loader::sharded(ds.clone(), batch, order, size, aug.clone(), s))
            .collect()
    }

    pub fn reset_metrics(&self, gpu: &Gpu, plan: &Plan) {
        plan.reset_metrics(gpu);
        if let Stepper::Simulated(s) = self {
            s.reset_metrics(gpu);
        }
    }

    /// One step on `batches` (one per replica of this process).
    pub fn step(
        &mut self,
        gpu: &Gpu,
        plan: &Plan,
        spread: &Spread,
        batches: &[Batch],
    ) -> Result<()> {
        match (self, spread) {
            (Stepper::Solo(inflight), _) => {
                plan.upload(gpu, &batches[0].x, &batches[0].labels)?;
                inflight.push(gpu, plan.submit_train(gpu)?)?;
            }
            (Stepper::Simulated(s), _) => s.step(gpu, plan, batches)?,
            (Stepper::Ranks(replica), Spread::Ranks(r)) => {
                plan.upload(gpu, &batches[0].x, &batches[0].labels)?;
                replica.step(gpu, plan, &r.comm)?;
            }
            (Stepper::Ranks(_), _) => unreachable!("a replica runs only under ranks"),
        }
        Ok(())
    }

    /// The summed training loss and correct count of every replica since the reset.
    pub fn metrics(&self, gpu: &Gpu, plan: &Plan, spread: &Spread) -> Result<(f64, u64)> {
        let local: Vec<Vec<f64>> = match self {
            Stepper::Simulated(s) => s
                .read_metrics(gpu)?
                .into_iter()
                .map(|(l, c)| vec![l, c as f64])
                .collect(),
            _ => {
                let (l, c) = plan.read_metrics(gpu)?;
                vec![vec![l, c as f64]]
            }
        };
        let total = spread.sum(&local)?;
        Ok((total[0], total[1] as u64))
    }

    /// Milliseconds per step in the ranks' collectives and gradient bytes per step
    /// (ranks only).
    pub fn comm_per_step(&self) -> Option<(f64, u64)> {
        match self {
            Stepper::Ranks(r) if r.time.steps > 0 => Some((
                1e3 * r.time.reduce_secs / r.time.steps as f64,
                r.bytes_per_step(),
            )),
            _ => None,
        }
    }
}

/// The test set's (mean loss, accuracy, multi-label AUROCs) over the replicas' shards.
pub fn sharded_test_metrics(
    gpu: &Gpu,
    plan: &Plan,
    spread: &Spread,
    (test, aug): (&Arc<Dataset>, &Augment),
) -> Result<(f64, f64, Option<super::Aurocs>)> {
    let count = spread.replicas();
    let parts: Vec<ShardEval> = match spread {
        Spread::Ranks(r) => {
            let shard = Shard {
                index: r.comm.rank(),
                count,
            };
            let mine = evaluate_shard(gpu, plan, test, aug, shard)?;
            let all = r.comm.all_gather(&mine.to_bytes())?;
            all.iter()
                .map(|b| ShardEval::from_bytes(b))
                .collect::<Result<_>>()?
        }
        _ => (0..count)
            .map(|index| evaluate_shard(gpu, plan, test, aug, Shard { index, count }))
            .collect::<Result<_>>()?,
    };
    let n = test.len().max(1) as f64;
    let loss = parts.iter().fold(0f64, |a, p| a + p.loss_sum);
    let correct = parts.iter().map(|p| p.correct).sum::<u64>();
    let aurocs = plan.cfg.multi_label.then(|| {
        let classes = plan.cfg.classes as usize;
        let b = Breakdown {
            loss: loss / n,
            accuracy: correct as f64 / n,
            confusion: vec![vec![0; classes]; classes],
            top5: None,
            logits: parts
                .iter()
                .flat_map(|p| p.logits.iter().copied())
                .collect(),
            labels: Vec::new(),
            targets: parts
                .iter()
                .flat_map(|p| p.targets.iter().copied())
                .collect(),
        };
        (b.auroc_per_class(), b.mean_auroc())
    });
    Ok((loss / n, correct as f64 / n, aurocs))
}
