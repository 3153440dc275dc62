//! What the tuner needs of a batch norm's backward: its candidates (one workgroup per
//! channel, or many) and their dispatches on scratch tensors of the launch's shape.

use super::{backward_in, choose, partials_bound, BatchNormParams, SHADERS};
use crate::error::Result;
use crate::gpu::{DType, GpuBuffer};
use crate::kernels::{Config, Dispatch, Kernels};
use crate::ops::scratch::Draws;

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

/// Whether two configurations of a backward give the same bits: only if they are the same
/// (one workgroup per channel and split chunks sum in different orders).
pub fn same_bits(a: Config, b: Config) -> bool {
    a == b
}

/// Tensors of one backward launch (at offset 0): seeded non-zero x, dy and per-channel
/// values, and the outputs dx, dgamma and dbeta (added into, so cleared before a comparison).
pub struct Scratch {
    p: BatchNormParams,
    /// x, dy, dx.
    acts: [GpuBuffer; 3],
    /// mean, var, then gamma and beta in one buffer, then dgamma and dbeta in one buffer
    /// (as the backward binds them).
    channel: [GpuBuffer; 4],
    partials: GpuBuffer,
}

impl Scratch {
    pub fn new(k: &Kernels, p: &BatchNormParams, dtype: DType, seed: u64) -> Result<Scratch> {
        let gpu = k.gpu();
        let p = BatchNormParams {
            x_offset: 0,
            y_offset: 0,
            stat_offset: 0,
            ..*p
        };
        let mut draw = Draws::new(gpu, dtype, seed);
        let c = p.c as u64;
        let gamma_beta = [draw.uniform(c, 0.5, 1.5), draw.uniform(c, -0.5, 0.5)].concat();
        Ok(Scratch {
            acts: [
                draw.act("tune x", p.x_len(), -1.0, 1.0)?,
                draw.act("tune dy", p.x_len(), -1.0, 1.0)?,
                gpu.zeros_of("tune dx", dtype, p.x_len())?,
            ],
            channel: [
                draw.f32s("tune mean", c, -0.2, 0.2)?,
                draw.f32s("tune var", c, 0.5, 1.5)?,
                gpu.upload("tune gamma beta", &gamma_beta)?,
                gpu.zeros("tune dgamma dbeta", 2 * c)?,
            ],
            partials: gpu.zeros("tune partials", partials_bound(p.c))?,
            p,
        })
    }

    /// The backward's dispatches in `config`.
    pub fn dispatches(&self, k: &Kernels, config: Config) -> Result<Vec<Dispatch>> {
        let [x, dy, dx] = &self.acts;
        let [mean, var, gb, dgb] = &self.channel;
        let c = self.p.c as u64;
        let views = [
            x.view(),
            dy.view(),
            mean.view(),
            var.view(),
            gb.slice(0, c),
            gb.slice(c, c),
            dx.view(),
            dgb.slice(0, c),
            dgb.slice(c, c),
        ];
        backward_in(Some(config), k, &self.p, views, Some(self.partials.view()))
    }

    /// dx, then dgamma and dbeta.
    pub fn output(&self, k: &Kernels) -> Result<Vec<f32>> {
        let mut out = k.gpu().read_floats(&self.acts[2])?;
        out.extend(k.gpu().read_floats(&self.channel[3])?);
        Ok(out)
    }

    /// Zeroes dx, dgamma and dbeta.
    pub fn clear_output(&self, k: &Kernels) -> Result<()> {
        for buf in [&self.acts[2], &self.channel[3]] {
            k.gpu().write_floats(buf, &vec![0.0; buf.len as usize])?;
        }
        Ok(())
    }
}
