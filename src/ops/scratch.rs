//! Seeded inputs on the device for the tuner's scratch launches: the same values in every
//! run, so candidate configurations can be compared on them.

use crate::error::Result;
use crate::gpu::{DType, Gpu, GpuBuffer};

/// Draws uniform values from one seed and uploads them.
pub(crate) struct Draws<'g> {
    gpu: &'g Gpu,
    dtype: DType,
    rng: fastrand::Rng,
}

impl<'g> Draws<'g> {
    /// Draws from `seed`; activations are stored as `dtype`.
    pub fn new(gpu: &'g Gpu, dtype: DType, seed: u64) -> Draws<'g> {
        Draws {
            gpu,
            dtype,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// `len` values uniform in [lo, hi).
    pub fn uniform(&mut self, len: u64, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| lo + self.rng.f32() * (hi - lo)).collect()
    }

    /// An activation buffer (the kernels' element type) of `len` values in [lo, hi).
    pub fn act(&mut self, label: &str, len: u64, lo: f32, hi: f32) -> Result<GpuBuffer> {
        let values = self.uniform(len, lo, hi);
        let buf = self.gpu.zeros_of(label, self.dtype, len)?;
        self.gpu.write_floats(&buf, &values)?;
        Ok(buf)
    }

    /// An f32 buffer (parameters, statistics) of `len` values in [lo, hi).
    pub fn f32s(&mut self, label: &str, len: u64, lo: f32, hi: f32) -> Result<GpuBuffer> {
        let values = self.uniform(len, lo, hi);
        self.gpu.upload(label, &values)
    }
}
