//! What a naive DenseNet holds for one training step, for comparison with a plan: an
//! autograd framework where every op makes a new tensor and keeps it for the backward (every
//! concatenation copy, every BN output, every ReLU output, every conv and pool output, as
//! the d2l PyTorch code runs without memory-efficient layers), plus the same parameter state
//! as the plan. Gradients of activations are not counted, so this is a lower bound. Each
//! layer stores its whole input again, so the figure grows quadratically with depth.

use crate::gpu::DType;
use crate::model::config::{DenseNetConfig, Stem};
use crate::model::layout::Layout;

/// The naive step's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Naive {
    /// Every forward output kept for the backward, and the input.
    pub feature_maps: u64,
    /// Parameters, their gradients, and the momentum.
    pub parameter_state: u64,
}

impl Naive {
    pub fn total(&self) -> u64 {
        self.feature_maps + self.parameter_state
    }
}

/// The naive step of `cfg` at `batch` (with a momentum buffer when `momentum`), activations
/// of `dtype`.
pub fn naive_training_bytes(
    cfg: &DenseNetConfig,
    layout: &Layout,
    batch: u32,
    momentum: bool,
    dtype: DType,
) -> Naive {
    let n = batch as u64;
    let plane = |s: u32| n * s as u64 * s as u64;
    let mut elems = cfg.in_channels as u64 * plane(cfg.image_size);
    let c0 = cfg.stem.channels() as u64;
    let shapes = cfg.block_shapes();
    elems += match cfg.stem {
        // conv, BN, ReLU at half size; max-pool output and its indices.
        Stem::ImageNet { .. } => {
            let half = cfg.image_size.div_ceil(2);
            3 * c0 * plane(half) + 2 * c0 * plane(shapes[0].size)
        }
        Stem::Cifar { .. } => c0 * plane(shapes[0].size),
    };
    let k = cfg.growth_rate as u64;
    for (b, shape) in shapes.iter().enumerate() {
        let px = plane(shape.size);
        for l in 0..shape.layers as u64 {
            let c_in = shape.c_in as u64 + l * k;
            // BN and ReLU outputs of the input, the conv output, the concatenation.
            elems += (2 * c_in + k + c_in + k) * px;
            if let Some(w) = cfg.bottleneck {
                // The 1x1 conv output, its BN and ReLU outputs.
                elems += 3 * (w as u64 * k) * px;
            }
        }
        if let Some(next) = shapes.get(b + 1) {
            // BN, ReLU, and the 1x1 conv at full size, then the pooled output.
            let c_out = next.c_in as u64;
            elems += (2 * shape.c_out as u64 + c_out) * px + c_out * plane(next.size);
        }
    }
    let last = shapes.last().map_or(0, |s| s.c_out as u64 * plane(s.size));
    elems += 2 * last + cfg.head_channels() as u64 * n + n * cfg.classes as u64;
    let states = 2 + momentum as u64;
    Naive {
        feature_maps: dtype.bytes(elems),
        parameter_state: states * DType::F32.bytes(layout.params.len),
    }
}
