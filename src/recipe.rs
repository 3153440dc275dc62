//! Presets: a network and the recipe that trains it, adapted to the dataset's images.

use serde::{Deserialize, Serialize};

use crate::data::augment::{Augment, AugmentSpec};
use crate::data::DatasetKind;
use crate::model::{DenseNetConfig, SgdConfig};

/// The learning-rate schedule over all steps of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from the base rate to zero at the last step.
    Cosine,
}

impl Schedule {
    /// The rate at `step` of `total` steps.
    pub fn lr(self, base: f32, step: u64, total: u64) -> f32 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The d2l lecture: 96x96 inputs, batch 256, plain SGD lr 0.1, 10 epochs, Xavier init.
    D2l,
    /// A DenseNet for 28x28 inputs on machines without a GPU.
    Small,
    /// The built-in demo's network.
    Tiny,
}

/// How to train: what the CLI's flags override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    pub schedule: Schedule,
    /// Seeds the synthetic data, the initial weights and the shuffling (`--seed`).
    #[serde(default)]
    pub seed: u64,
    /// Training-time crop and flip, and the input normalization of every pass (set from the
    /// dataset when a run starts: [`crate::data::augment::AugmentSpec::default_for`]).
    #[serde(default)]
    pub augment: Augment,
}

/// Recipe values given on the command line; `None` keeps the preset's (or the checkpoint's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub lr: Option<f32>,
    pub momentum: Option<f32>,
    pub weight_decay: Option<f32>,
    pub schedule: Option<Schedule>,
    /// `--augment`; applied by the run's setup, which has the training data.
    pub augment: Option<AugmentSpec>,
}

impl Recipe {
    /// The recipe with every value `o` gives replaced; Nesterov stays on only while there is
    /// momentum.
    pub fn with(mut self, o: &Overrides) -> Recipe {
        if let Some(v) = o.epochs {
            self.epochs = v;
        }
        if let Some(v) = o.batch_size {
            self.batch_size = v;
        }
        if let Some(v) = o.lr {
            self.lr = v;
        }
        if let Some(v) = o.momentum {
            self.momentum = v;
            self.nesterov &= v > 0.0;
        }
        if let Some(v) = o.weight_decay {
            self.weight_decay = v;
        }
        if let Some(v) = o.schedule {
            self.schedule = v;
        }
        self
    }

    /// The optimizer a training plan runs, at the recipe's base learning rate.
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        }
    }
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::D2l => "d2l",
            Preset::Small => "small",
            Preset::Tiny => "tiny",
        }
    }

    /// The network for `dataset`: the preset's architecture with the dataset's channels
    /// and classes, at the preset's input size (d2l: 96) or the dataset's own.
    pub fn config(self, dataset: DatasetKind, classes: u32) -> DenseNetConfig {
        let (channels, size, _) = dataset.image_shape();
        let mut cfg = match self {
            Preset::D2l => DenseNetConfig::d2l(),
            Preset::Small => DenseNetConfig::small(),
            Preset::Tiny => DenseNetConfig::tiny(),
        };
        cfg.in_channels = channels;
        cfg.classes = classes;
        if self != Preset::D2l {
            cfg.image_size = size;
        }
        cfg
    }

    pub fn recipe(self) -> Recipe {
        match self {
            Preset::D2l => Recipe {
                epochs: 10,
                batch_size: 256,
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
                schedule: Schedule::Constant,
                seed: 0,
                augment: Augment::default(),
            },
            Preset::Small => Recipe {
                epochs: 5,
                batch_size: 64,
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: true,
                schedule: Schedule::Cosine,
                seed: 0,
                augment: Augment::default(),
            },
            Preset::Tiny => Recipe {
                epochs: 3,
                batch_size: 64,
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 1e-4,
                nesterov: true,
                schedule: Schedule::Cosine,
                seed: 0,
                augment: Augment::default(),
            },
        }
    }
}
