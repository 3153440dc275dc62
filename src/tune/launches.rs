//! The launches of a step that have more than one configuration: every convolution
//! direction and every batch-norm backward, each distinct (entry, element type, shape) once,
//! with its default and its candidates.

use anyhow::Result;

use super::TuneMode;
use crate::gpu::DType;
use crate::kernels::{Config, Kernels};
use crate::model::graph::nodes;
use crate::model::nodes::{Mode, PlanLimits, PlanTarget};
use crate::model::{DenseNetConfig, Layout};
use crate::ops::batchnorm::{self, tune as bn_tune, BatchNormParams};
use crate::ops::conv2d::{self, tune as conv_tune, Conv2dParams, Direction};

/// What a launch computes: a convolution's GEMM, or a batch norm's backward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Work {
    Conv(Conv2dParams, Direction),
    BnBackward(BatchNormParams),
}

impl Work {
    /// The launcher's name.
    pub fn entry(&self) -> &'static str {
        match self {
            Work::Conv(_, dir) => dir.entry(),
            Work::BnBackward(_) => "batchnorm_backward",
        }
    }

    /// The op, as `--kernels` names it (a forced op is not tuned).
    pub fn op(&self) -> &'static str {
        match self {
            Work::Conv(..) => conv2d::OP,
            Work::BnBackward(_) => batchnorm::OP,
        }
    }

    /// Multiply-adds or their equivalent: the order in which launches are tuned.
    pub fn cost(&self) -> u64 {
        match self {
            Work::Conv(p, _) => p.macs(),
            Work::BnBackward(p) => 7 * p.len(),
        }
    }

    /// A small launch of the same kind and how many times more work this one is: a
    /// candidate runs on it first, so that one whose real launch would overrun the budget
    /// (the workgroup tiles take seconds per launch on llvmpipe's OpenGL) is never started.
    /// `None` where this launch is already small.
    pub fn probe(&self) -> Option<(Work, f64)> {
        match *self {
            Work::Conv(p, dir) if p.n > 1 => {
                let small = Conv2dParams { n: 1, ..p };
                Some((Work::Conv(small, dir), p.n as f64))
            }
            Work::BnBackward(p) if p.m >= 4096 => {
                let small = BatchNormParams { m: p.m / 16, ..p };
                Some((Work::BnBackward(small), p.m as f64 / small.m as f64))
            }
            _ => None,
        }
    }

    /// Whether configurations `a` and `b` give this launch the same bits.
    pub fn same_bits(&self, a: Config, b: Config) -> bool {
        match self {
            Work::Conv(p, dir) => conv_tune::same_bits(a, b, *dir, p),
            Work::BnBackward(_) => bn_tune::same_bits(a, b),
        }
    }
}

/// One launch to decide: what it computes, its key, default and candidates.
pub(super) struct Todo {
    pub work: Work,
    pub dtype: DType,
    pub key: String,
    /// The op's rule's configuration (what runs untuned).
    pub default: Config,
    /// Every configuration the adapter runs it with, the default first, each distinct
    /// launch once.
    pub candidates: Vec<Config>,
}

impl Todo {
    /// The candidates `mode` tunes among, `baseline` (what the others are compared with)
    /// first: those that give its bits for `exact`, all of them otherwise.
    pub fn candidates_for(&self, mode: TuneMode, baseline: Config) -> Vec<Config> {
        let same = |c: &Config| mode != TuneMode::Exact || self.work.same_bits(*c, baseline);
        let rest = self.candidates.iter().filter(|&&c| c != baseline);
        std::iter::once(baseline)
            .chain(rest.copied().filter(same))
            .collect()
    }

    /// The configuration called `name` if the adapter runs this launch with it: what a
    /// cache or checkpoint entry may name.
    pub fn resolve(&self, k: &Kernels, name: &str) -> Option<Config> {
        match self.work {
            Work::Conv(..) => conv_tune::config_named(k, name, self.dtype),
            Work::BnBackward(_) => bn_tune::config_named(k, name, self.dtype),
        }
    }
}

/// Every distinct convolution and batch-norm backward launch of `cfg`'s step (`mode`, batch
/// `batch`, `dtype` activations) on `k`'s device, with its default and candidates.
pub(super) fn launches(
    k: &Kernels,
    cfg: &DenseNetConfig,
    batch: u32,
    mode: Mode,
    dtype: DType,
) -> Result<Vec<Todo>> {
    let limits = PlanLimits::of(k.gpu());
    let layout = Layout::new(cfg, limits.align());
    let target = PlanTarget {
        limits,
        dtype,
        policy: k.policy().clone(),
    };
    let plan_nodes = nodes(cfg, &layout, batch, mode, &target)?;
    let convs = plan_nodes.conv_launches().into_iter().map(|(p, dir)| Todo {
        work: Work::Conv(p, dir),
        key: p.launch_key(dir, dtype),
        default: conv_tune::default_config(k, dir, &p, dtype),
        candidates: conv_tune::candidates(k, dir, &p, dtype),
        dtype,
    });
    let bns = plan_nodes
        .bn_backward_launches()?
        .into_iter()
        .map(|p| Todo {
            work: Work::BnBackward(p),
            key: batchnorm::backward_key(&p, dtype),
            default: bn_tune::default_config(k),
            candidates: bn_tune::candidates(k, dtype),
            dtype,
        });
    Ok(convs.chain(bns).collect())
}
