//! One rank's training step. The plan's step is cut into submissions: at the end of each
//! gradient bucket its gradients are copied to a mapped buffer, and the host averages a
//! bucket over the ranks (ring all-reduce) while the GPU still runs the backward of the
//! layers before it, as PyTorch's DDP overlaps them; at a synchronized batch norm the
//! replicas agree on its statistics or sums before going on. The averaged gradients are
//! written back before the update, which is then the same on every rank.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

use super::Collective;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::plan::{encode, Cmd, GradMark, Plan, Sync};

/// Gradient elements (ranges [start, end), in the order they are reduced) that no command
/// after `end` writes before the update.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub end: usize,
    pub ranges: Vec<(u64, u64)>,
}

impl Bucket {
    /// Elements in the bucket.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket's elements of `all` (a whole gradient arena), concatenated.
    pub fn gather(&self, all: &[f32]) -> Vec<f32> {
        let ranges = self.ranges.iter();
        ranges
            .flat_map(|&(a, b)| all[a as usize..b as usize].iter().copied())
            .collect()
    }
}

/// The plan's gradient marks grouped into buckets of at least `min_elems` elements, in
/// backward order: each node's gradients go in the bucket open when its backward ends.
/// Nodes write disjoint ranges (each its own parameters); should two overlap, everything
/// goes in one bucket at the end.
pub fn buckets(marks: &[GradMark], min_elems: u64) -> Vec<Bucket> {
    let mut ranges: Vec<(u64, u64)> = marks.iter().filter_map(|m| m.range).collect();
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
        let last = marks.iter().rev().find(|m| m.range.is_some());
        let hull = (ranges[0].0, ranges.iter().map(|r| r.1).max().unwrap_or(0));
        return last
            .map(|m| Bucket {
                end: m.end,
                ranges: vec![hull],
            })
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    let mut open = Bucket {
        end: 0,
        ranges: Vec::new(),
    };
    let last = marks.iter().rposition(|m| m.range.is_some());
    for (i, m) in marks.iter().enumerate() {
        let Some((a, b)) = m.range.filter(|(a, b)| b > a) else {
            continue;
        };
        match open.ranges.last_mut() {
            // Backward order meets the parameters from the top: join where they touch.
            Some(r) if r.0 == b => r.0 = a,
            Some(r) if r.1 == a => r.1 = b,
            _ => open.ranges.push((a, b)),
        }
        if open.len() >= min_elems || Some(i) == last {
            open.end = m.end;
            out.push(std::mem::replace(
                &mut open,
                Bucket {
                    end: 0,
                    ranges: Vec::new(),
                },
            ));
        }
    }
    out
}

/// The global batch's statistics from each replica's (`parts[r]`: its `len` means, then its
/// `len` biased variances, over equal counts): the mean of the means, and the mean of
/// var_r + (mean_r - mean)^2 (Chan's parallel variance), in f64 and in rank order.
pub fn combine_stats(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
    let n = parts.len() as f64;
    let mut out = vec![0f32; 2 * len];
    for c in 0..len {
        let mean = parts.iter().map(|p| p[c] as f64).sum::<f64>() / n;
        let var = parts
            .iter()
            .map(|p| p[len + c] as f64 + (p[c] as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        out[c] = mean as f32;
        out[len + c] = var as f32;
    }
    out
}

/// Where the time of the steps went (host side).
#[derive(Clone, Copy, Debug, Default)]
pub struct CommTime {
    pub steps: u64,
    /// In the ranks' collectives (all-reduces and batch-norm agreements).
    pub reduce_secs: f64,
    /// Waiting for the GPU to finish a bucket's backward.
    pub wait_secs: f64,
    /// Gradient bytes each rank contributed.
    pub bytes: u64,
}

/// One rank's step runner: its buckets and the mapped buffers they are read through.
pub struct Replica {
    pub buckets: Vec<Bucket>,
    update_start: usize,
    staging: Vec<wgpu::Buffer>,
    sync_staging: Option<wgpu::Buffer>,
    pub time: CommTime,
}

/// A copy submitted and its map requested: ready once the receiver answers.
struct Mapped {
    done: Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    index: wgpu::SubmissionIndex,
}

impl Mapped {
    /// Submits `enc` and asks for the first `bytes` of `staging` to be mapped after it.
    fn submit(gpu: &Gpu, enc: wgpu::CommandEncoder, staging: &wgpu::Buffer, bytes: u64) -> Self {
        let index = gpu.queue.submit([enc.finish()]);
        let (tx, done) = channel();
        staging
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        Mapped { done, index }
    }
}

fn mapped_buffer(gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// The largest agreement of a step, in bytes.
fn largest_sync(cmds: &[Cmd]) -> u64 {
    cmds.iter()
        .map(|c| match c {
            Cmd::Sync(Sync::BnStats { len, .. } | Sync::BnSums { len, .. }) => 8 * len,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

impl Replica {
    /// The runner of `plan`'s step with buckets of at least `bucket_bytes`.
    pub fn new(gpu: &Gpu, plan: &Plan, bucket_bytes: u64) -> Result<Replica> {
        let (marks, update_start) = plan.grad_marks();
        if marks.is_empty() {
            return Err(Error::Usage(
                "a data-parallel step needs a training plan".into(),
            ));
        }
        let buckets = buckets(marks, (bucket_bytes / 4).max(1));
        let staging = buckets
            .iter()
            .map(|b| mapped_buffer(gpu, "gradient bucket", 4 * b.len()))
            .collect();
        let sync = largest_sync(plan.train_commands());
        Ok(Replica {
            buckets,
            update_start,
            staging,
            sync_staging: (sync > 0).then(|| mapped_buffer(gpu, "batch-norm agreement", sync)),
            time: CommTime::default(),
        })
    }

    /// Gradient bytes a step reduces.
    pub fn bytes_per_step(&self) -> u64 {
        self.buckets.iter().map(|b| 4 * b.len()).sum()
    }

    /// One training step on the uploaded batch, its gradients averaged over `comm`'s ranks.
    pub fn step(&mut self, gpu: &Gpu, plan: &Plan, comm: &Collective) -> Result<()> {
        let cmds = plan.train_commands();
        let mut events: Vec<(usize, Option<usize>)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (b.end, Some(i)))
            .collect();
        let syncs = cmds.iter().enumerate();
        events.extend(
            syncs
                .filter(|(_, c)| matches!(c, Cmd::Sync(_)))
                .map(|(i, _)| (i, None)),
        );
        events.sort_by_key(|e| (e.0, e.1.is_none()));
        let mut pending = VecDeque::new();
        let mut pos = 0;
        for (at, bucket) in events {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            encode(&cmds[pos..at], &mut enc);
            pos = at;
            match bucket {
                Some(b) => pending.push_back((b, self.copy_bucket(gpu, plan, enc, b)?)),
                None => {
                    let Cmd::Sync(sync) = &cmds[at] else {
                        unreachable!("events hold the indices of syncs");
                    };
                    let mapped = self.copy_sync(gpu, plan, enc, sync)?;
                    self.reduce(gpu, plan, comm, &mut pending)?;
                    self.agree(gpu, plan, comm, sync, mapped)?;
                    pos = at + 1;
                }
            }
        }
        if pos < self.update_start {
            return Err(Error::Device(format!(
                "plan error: the last gradient bucket ends at command {pos}, before the \
                 update at {}",
                self.update_start
            )));
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        encode(&cmds[pos..self.update_start], &mut enc);
        gpu.queue.submit([enc.finish()]);
        self.reduce(gpu, plan, comm, &mut pending)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        encode(&cmds[self.update_start..], &mut enc);
        gpu.queue.submit([enc.finish()]);
        self.time.steps += 1;
        Ok(())
    }

    /// Submits `enc` with bucket `b`'s gradients copied out after it, and asks for the map.
    fn copy_bucket(
        &self,
        gpu: &Gpu,
        plan: &Plan,
        mut enc: wgpu::CommandEncoder,
        b: usize,
    ) -> Result<Mapped> {
        let grads = plan.buffers.grads.as_ref().expect("a training plan");
        let mut at = 0;
        for &(lo, hi) in &self.buckets[b].ranges {
            enc.copy_buffer_to_buffer(
                &grads.buffer,
                4 * lo,
                &self.staging[b],
                4 * at,
                4 * (hi - lo),
            );
            at += hi - lo;
        }
        let bytes = 4 * self.buckets[b].len();
        Ok(Mapped::submit(gpu, enc, &self.staging[b], bytes))
    }

    /// Averages every pending bucket over the ranks, in order, and writes it back.
    fn reduce(
        &mut self,
        gpu: &Gpu,
        plan: &Plan,
        comm: &Collective,
        pending: &mut VecDeque<(usize, Mapped)>,
    ) -> Result<()> {
        let grads = plan.buffers.grads.as_ref().expect("a training plan");
        while let Some((b, m)) = pending.pop_front() {
            let bucket = &self.buckets[b];
            let waited = Instant::now();
            let mut values = read_mapped(gpu, &self.staging[b], m, bucket.len())?;
            self.time.wait_secs += waited.elapsed().as_secs_f64();
            let reducing = Instant::now();
            comm.all_reduce_mean(&mut values)?;
            self.time.reduce_secs += reducing.elapsed().as_secs_f64();
            self.time.bytes += 4 * bucket.len();
            let mut rest = values.as_slice();
            for &(lo, hi) in &bucket.ranges {
                let (part, tail) = rest.split_at((hi - lo) as usize);
                gpu.queue
                    .write_buffer(&grads.buffer, 4 * lo, bytemuck::cast_slice(part));
                rest = tail;
            }
        }
        Ok(())
    }

    /// The two ranges an agreement covers: (buffer, first element) each, `len` long.
    fn sync_ranges<'p>(plan: &'p Plan, sync: &Sync) -> Result<[(&'p wgpu::Buffer, u64); 2]> {
        let missing = || Error::Device("plan error: a sync in an evaluation plan".into());
        let b = &plan.buffers;
        Ok(match *sync {
            Sync::BnStats { offset, .. } => [
                (&b.batch_mean.as_ref().ok_or_else(missing)?.buffer, offset),
                (&b.batch_var.as_ref().ok_or_else(missing)?.buffer, offset),
            ],
            Sync::BnSums { dgamma, dbeta, .. } => {
                let g = &b.grads.as_ref().ok_or_else(missing)?.buffer;
                [(g, dgamma), (g, dbeta)]
            }
        })
    }

    /// Submits `enc` with the agreement's two ranges copied out after it, and asks for the
    /// map.
    fn copy_sync(
        &self,
        gpu: &Gpu,
        plan: &Plan,
        mut enc: wgpu::CommandEncoder,
        sync: &Sync,
    ) -> Result<Mapped> {
        let (Sync::BnStats { len, .. } | Sync::BnSums { len, .. }) = *sync;
        let staging = self.sync_staging.as_ref().expect("sized for every sync");
        for (i, (buffer, from)) in Self::sync_ranges(plan, sync)?.into_iter().enumerate() {
            enc.copy_buffer_to_buffer(buffer, 4 * from, staging, 4 * len * i as u64, 4 * len);
        }
        Ok(Mapped::submit(gpu, enc, staging, 8 * len))
    }

    /// Reads an agreement's ranges, replaces them by the ranks' common values and writes
    /// them back.
    fn agree(
        &mut self,
        gpu: &Gpu,
        plan: &Plan,
        comm: &Collective,
        sync: &Sync,
        mapped: Mapped,
    ) -> Result<()> {
        let (Sync::BnStats { len, .. } | Sync::BnSums { len, .. }) = *sync;
        let staging = self.sync_staging.as_ref().expect("sized for every sync");
        let mut values = read_mapped(gpu, staging, mapped, 2 * len)?;
        let reducing = Instant::now();
        match sync {
            Sync::BnStats { .. } => {
                let all = comm.all_gather(bytemuck::cast_slice(&values))?;
                let parts: Vec<Vec<f32>> = all
                    .iter()
                    .map(|b| bytemuck::pod_collect_to_vec(b))
                    .collect();
                values = combine_stats(&parts, len as usize);
            }
            Sync::BnSums { .. } => comm.all_reduce_mean(&mut values)?,
        }
        self.time.reduce_secs += reducing.elapsed().as_secs_f64();
        let halves = values.chunks(len as usize);
        for ((buffer, from), v) in Self::sync_ranges(plan, sync)?.into_iter().zip(halves) {
            gpu.queue
                .write_buffer(buffer, 4 * from, bytemuck::cast_slice(v));
        }
        Ok(())
    }
}

/// Waits for a requested map, copies `len` f32s out and unmaps.
fn read_mapped(gpu: &Gpu, staging: &wgpu::Buffer, m: Mapped, len: u64) -> Result<Vec<f32>> {
    gpu.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(m.index),
            timeout: None,
        })
        .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
    m.done
        .recv()
        .map_err(|_| Error::Device("mapping a gradient bucket: the callback never ran".into()))?
        .map_err(|e| Error::Device(format!("mapping a gradient bucket: {e}")))?;
    let range = staging
        .get_mapped_range(..4 * len)
        .map_err(|e| Error::Device(format!("reading a gradient bucket: {e}")))?;
    let values = bytemuck::pod_collect_to_vec(&range[..]);
    drop(range);
    staging.unmap();
    Ok(values)
}
