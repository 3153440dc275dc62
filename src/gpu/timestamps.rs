//! Timestamp queries: a query set with its resolve and readback buffers, for timing compute
//! passes on the GPU (the profile's per-dispatch times, the tuner's per-launch ones).

use super::Gpu;
use crate::error::{Error, Result};

/// `count` timestamps and the buffers that bring them back.
pub struct Timestamps {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    count: u32,
}

impl Timestamps {
    /// Room for `count` timestamps (at most one query set's worth).
    pub fn new(gpu: &Gpu, label: &str, count: u32) -> Result<Timestamps> {
        if count > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(Error::Device(format!(
                "{count} timestamps are more than one query set holds"
            )));
        }
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        use wgpu::BufferUsages as U;
        let buffer = |usage| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: count as u64 * 8,
                usage,
                mapped_at_creation: false,
            })
        };
        Ok(Timestamps {
            queries,
            resolve: buffer(U::QUERY_RESOLVE | U::COPY_SRC),
            staging: buffer(U::MAP_READ | U::COPY_DST),
            count,
        })
    }

    /// A compute pass's writes: timestamp `first` at its start, `first + 1` at its end.
    pub fn around_pass(&self, first: u32) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(first),
            end_of_pass_write_index: Some(first + 1),
        }
    }

    /// Submits `enc` (whose passes wrote the timestamps) with the resolve and copy appended,
    /// waits, and returns the ticks.
    pub fn submit_and_read(&self, gpu: &Gpu, mut enc: wgpu::CommandEncoder) -> Result<Vec<u64>> {
        enc.resolve_query_set(&self.queries, 0..self.count, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, self.count as u64 * 8);
        gpu.queue.submit([enc.finish()]);
        let bytes = pollster::block_on(gpu.map_read(&self.staging, "the timestamps"))?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(ticks)
    }

    /// Seconds per tick.
    pub fn period(gpu: &Gpu) -> f64 {
        gpu.queue.get_timestamp_period() as f64 * 1e-9
    }
}
