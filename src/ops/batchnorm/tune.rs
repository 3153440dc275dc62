//! What the tuner needs of a batch norm's backward: its candidates (one workgroup per
//! channel, or many) and their dispatches on scratch tensors of the launch's shape.

use super::{backward_in, choose, partials_bound, BatchNormParams, SHADERS};
use crate::error::Result;
use crate::gpu::{DType, GpuBuffer};
use crate::kernels::{Config, Dispatch, Kernels};

/// The configuration the policy's rule gives (the baseline).
pub fn default_config(k: &Kernels) -> Config {
    Config::of(choose(k.policy()))
}

/// Both implementations, the default first.
pub fn candidates(k: &Kernels, dtype: DType) -> Vec<Config> {
    let mut out = vec![default_config(k)];
    for s in SHADERS.iter().filter(|s| s.dtypes.contains(&dtype)) {
        for v in s
            .variants
            .iter()
            .filter(|v| v.needs.unmet(k.gpu()).is_none())
        {
            if !out.iter().any(|c| std::ptr::eq(c.variant, v)) {
                out.push(Config::of(v));
            }
        }
    }
    out
}

/// The configuration called `name` if `k`'s device runs it in `dtype`.
pub fn config_named(k: &Kernels, name: &str, dtype: DType) -> Option<Config> {
    Config::runnable(&SHADERS, name, dtype, k.gpu())
}

/// Zero-filled tensors of one backward launch (at offset 0): x, dy and dx in the
/// activations' type, the per-channel values and the partial sums in f32.
pub struct Scratch {
    p: BatchNormParams,
    acts: [GpuBuffer; 3],
    channel: [GpuBuffer; 6],
    partials: GpuBuffer,
}

impl Scratch {
    pub fn new(k: &Kernels, p: &BatchNormParams, dtype: DType) -> Result<Scratch> {
        let gpu = k.gpu();
        let p = BatchNormParams {
            x_offset: 0,
            y_offset: 0,
            stat_offset: 0,
            ..*p
        };
        let act = |label| gpu.zeros_of(label, dtype, p.x_len());
        let per_channel = |label| gpu.zeros(label, p.c as u64);
        Ok(Scratch {
            acts: [act("tune x")?, act("tune dy")?, act("tune dx")?],
            channel: [
                per_channel("tune mean")?,
                per_channel("tune var")?,
                per_channel("tune gamma")?,
                per_channel("tune beta")?,
                per_channel("tune dgamma")?,
                per_channel("tune dbeta")?,
            ],
            partials: gpu.zeros("tune partials", partials_bound(p.c))?,
            p,
        })
    }

    /// The backward's dispatches in `config`.
    pub fn dispatches(&self, k: &Kernels, config: Config) -> Result<Vec<Dispatch>> {
        let [x, dy, dx] = &self.acts;
        let [mean, var, gamma, beta, dgamma, dbeta] = &self.channel;
        let views = [x, dy, mean, var, gamma, beta, dx, dgamma, dbeta].map(|b| b.view());
        backward_in(Some(config), k, &self.p, views, Some(self.partials.view()))
    }
}
