//! N replicas' training step in one process (`--simulate-ranks N`): each shard's forward
//! and backward on the one plan in turn, from the same weights, with its own loss and
//! accuracy sums; the gradients averaged bucket by bucket exactly as the ranks' ring
//! all-reduce averages them ([`ring_mean`]); the running statistics rank 0's, as a
//! data-parallel run keeps them. So an MPI run of N ranks equals it bit for bit: the oracle
//! of the tests, and a way to try a global batch larger than one GPU holds.

use super::replica::{buckets, Bucket};
use super::ring_mean;
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer};
use crate::model::plan::{encode, Cmd, Plan};

/// The replicas' state that one plan cannot hold: each one's metric sums, and rank 0's
/// running statistics while the others' batches pass.
pub struct Simulated {
    pub replicas: usize,
    pub buckets: Vec<Bucket>,
    update_start: usize,
    /// (loss sum, correct) of each replica.
    sums: Vec<(GpuBuffer, GpuBuffer)>,
    running: (GpuBuffer, GpuBuffer),
}

fn copy(enc: &mut wgpu::CommandEncoder, from: &GpuBuffer, to: &GpuBuffer) {
    enc.copy_buffer_to_buffer(&from.buffer, 0, &to.buffer, 0, from.bytes());
}

impl Simulated {
    /// `replicas` of `plan` (a training plan with per-replica batch norm), their gradients
    /// reduced in buckets of at least `bucket_bytes` as the ranks' would be.
    pub fn new(gpu: &Gpu, plan: &Plan, replicas: usize, bucket_bytes: u64) -> Result<Simulated> {
        let (marks, update_start) = plan.grad_marks();
        if marks.is_empty() {
            return Err(Error::Usage("simulated ranks need a training plan".into()));
        }
        if plan
            .train_commands()
            .iter()
            .any(|c| matches!(c, Cmd::Sync(_)))
        {
            return Err(Error::Usage(
                "--simulate-ranks runs per-replica batch norm; --sync-bn's oracle is one \
                 process at the global batch size"
                    .into(),
            ));
        }
        let b = &plan.buffers;
        let like = |buf: &GpuBuffer, label: &str| gpu.zeros_of(label, buf.dtype, buf.len);
        let sums = (0..replicas)
            .map(|_| Ok((like(&b.loss_sum, "loss sum")?, like(&b.correct, "correct")?)))
            .collect::<Result<Vec<_>>>()?;
        let running = (
            like(&b.running_mean, "rank 0 running mean")?,
            like(&b.running_var, "rank 0 running var")?,
        );
        Ok(Simulated {
            replicas,
            buckets: buckets(marks, (bucket_bytes / 4).max(1)),
            update_start,
            sums,
            running,
        })
    }

    /// Zeroes every replica's metric sums (an epoch's start).
    pub fn reset_metrics(&self, gpu: &Gpu) {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for (loss, correct) in &self.sums {
            enc.clear_buffer(&loss.buffer, 0, None);
            enc.clear_buffer(&correct.buffer, 0, None);
        }
        gpu.queue.submit([enc.finish()]);
    }

    /// One step: `batches[r]` is replica r's shard.
    pub fn step(&self, gpu: &Gpu, plan: &Plan, batches: &[Batch]) -> Result<()> {
        if batches.len() != self.replicas {
            return Err(Error::Usage(format!(
                "{} shards for {} simulated ranks",
                batches.len(),
                self.replicas
            )));
        }
        let (b, cmds) = (&plan.buffers, plan.train_commands());
        let grads = b.grads.as_ref().expect("a training plan");
        let mut parts = Vec::with_capacity(self.replicas);
        for (r, batch) in batches.iter().enumerate() {
            plan.upload(gpu, &batch.x, &batch.labels)?;
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            let (loss, correct) = &self.sums[r];
            copy(&mut enc, loss, &b.loss_sum);
            copy(&mut enc, correct, &b.correct);
            encode(&cmds[..self.update_start], &mut enc);
            copy(&mut enc, &b.loss_sum, loss);
            copy(&mut enc, &b.correct, correct);
            if r == 0 {
                copy(&mut enc, &b.running_mean, &self.running.0);
                copy(&mut enc, &b.running_var, &self.running.1);
            }
            gpu.queue.submit([enc.finish()]);
            parts.push(gpu.read_all::<f32>(grads)?);
        }
        for bucket in &self.buckets {
            let gathered: Vec<Vec<f32>> = parts.iter().map(|p| bucket.gather(p)).collect();
            let slices: Vec<&[f32]> = gathered.iter().map(|v| v.as_slice()).collect();
            let mut mean = ring_mean(&slices).into_iter();
            for &(lo, hi) in &bucket.ranges {
                let part: Vec<f32> = mean.by_ref().take((hi - lo) as usize).collect();
                gpu.queue
                    .write_buffer(&grads.buffer, 4 * lo, bytemuck::cast_slice(&part));
            }
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        copy(&mut enc, &self.running.0, &b.running_mean);
        copy(&mut enc, &self.running.1, &b.running_var);
        encode(&cmds[self.update_start..], &mut enc);
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Each replica's (summed loss, correct) since the last reset, in rank order.
    pub fn read_metrics(&self, gpu: &Gpu) -> Result<Vec<(f64, u64)>> {
        self.sums
            .iter()
            .map(|(loss, correct)| {
                let l: Vec<f32> = gpu.read_all(loss)?;
                let c: Vec<u32> = gpu.read_all(correct)?;
                Ok((l[0] as f64, c[0] as u64))
            })
            .collect()
    }
}
