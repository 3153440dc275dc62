//! Presets: a network and the recipe that trains it, adapted to the dataset's images.

use serde::{Deserialize, Serialize};

use crate::data::augment::{Augment, AugmentSpec};
use crate::data::DatasetKind;
use crate::model::{AdamConfig, DenseNetConfig, SgdConfig};

/// The learning-rate schedule over all steps of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from the base rate to zero at the last step.
    Cosine,
    /// The rate times 0.1 at each milestone (a fraction of the run), as the DenseNet paper's
    /// x0.1 at 50% and 75% of the epochs.
    Step,
    /// The rate times --plateau-factor whenever the test loss has not improved (by 1e-4,
    /// relatively) for --plateau-patience epochs: torch's ReduceLROnPlateau (mode min), as
    /// CheXNet's recipe.
    Plateau,
}

impl Schedule {
    /// The rate at `step` of `total` steps (`milestones`: fractions of the run, for Step).
    pub fn lr(self, base: f32, step: u64, total: u64, milestones: &[f32]) -> f32 {
        let t = step as f64 / total.max(1) as f64;
        match self {
            // Plateau: the epochs' losses decide (Recipe::plateau_scale); constant within.
            Schedule::Constant | Schedule::Plateau => base,
            Schedule::Cosine => {
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
            Schedule::Step => {
                let passed = milestones.iter().filter(|&&m| t >= m as f64).count();
                (base as f64 * 0.1f64.powi(passed as i32)) as f32
            }
        }
    }
}

fn default_milestones() -> Vec<f32> {
    vec![0.5, 0.75]
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
    /// DenseNet (L=40, k=12) with the paper's recipe (CIFAR: 5.24% error on C10+).
    Densenet40,
    /// DenseNet-BC (L=100, k=12) with the paper's recipe (CIFAR: 4.51% error on C10+).
    Bc100,
    /// torchvision's densenet121 (224x224; 7,978,856 parameters with 1000 classes) and
    /// its ImageNet recipe.
    Densenet121,
    /// torchvision's densenet169 (14,149,480 parameters).
    Densenet169,
    /// torchvision's densenet201 (20,013,928 parameters).
    Densenet201,
    /// torchvision's densenet161 (growth 48; 28,681,000 parameters).
    Densenet161,
    /// DenseNet-264 (blocks 6-12-64-48), the deepest of Huang et al.'s ImageNet networks.
    Densenet264,
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
    /// Fractions of the run where the step schedule multiplies the rate by 0.1.
    #[serde(default = "default_milestones")]
    pub milestones: Vec<f32>,
    /// Epochs over which the rate rises linearly from base / steps to base first.
    #[serde(default)]
    pub warmup_epochs: u32,
    /// Label smoothing e of the training loss: targets (1 - e) onehot + e / classes.
    #[serde(default)]
    pub label_smoothing: f32,
    /// Clip the gradients to this global L2 norm before each update (None: no clipping).
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
    /// Stop when the test accuracy has not improved for this many epochs (None: never).
    #[serde(default)]
    pub patience: Option<u32>,
    /// Training-time crop and flip, and the input normalization of every pass (set from the
    /// dataset when a run starts: [`crate::data::augment::AugmentSpec::default_for`]).
    #[serde(default)]
    pub augment: Augment,
    /// Fine-tuning: the rate of every parameter before the classifier is the base rate times
    /// this (the classifier keeps the base rate).
    #[serde(default = "one")]
    pub lr_features: f32,
    /// Fine-tuning: epochs at the start during which only the classifier learns (the
    /// features' rate is 0; their batch norms' running statistics still follow the data).
    #[serde(default)]
    pub freeze_features: u32,
    /// SGD (the presets'), Adam or AdamW.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Adam's (beta1, beta2) and eps.
    #[serde(default = "default_betas")]
    pub betas: (f32, f32),
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// The plateau schedule's factor and patience (epochs).
    #[serde(default = "default_plateau")]
    pub plateau: (f32, u32),
    /// Multi-label: how each label's positives are weighted in the loss.
    #[serde(default)]
    pub pos_weight: PosWeight,
}

/// Multi-label: the weight of each label's positives (`--pos-weight`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PosWeight {
    /// Negatives / positives of the label in the training set (CheXNet's weighting).
    #[default]
    Auto,
    /// 1 for every label.
    None,
}

fn default_plateau() -> (f32, u32) {
    (0.1, 10)
}

/// The optimizer of a run (`--optimizer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// torch.optim.SGD: momentum, Nesterov and weight decay from the recipe.
    #[default]
    Sgd,
    /// torch.optim.Adam: weight decay added to the gradients (L2).
    Adam,
    /// torch.optim.AdamW: weight decay applied to the parameters (decoupled).
    Adamw,
}

fn default_betas() -> (f32, f32) {
    (0.9, 0.999)
}

fn default_eps() -> f32 {
    1e-8
}

fn one() -> f32 {
    1.0
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
    pub milestones: Option<Vec<f32>>,
    pub warmup_epochs: Option<u32>,
    pub label_smoothing: Option<f32>,
    pub clip_grad_norm: Option<f32>,
    pub patience: Option<u32>,
    /// `--augment`; applied by the run's setup, which has the training data.
    pub augment: Option<AugmentSpec>,
    pub lr_features: Option<f32>,
    pub freeze_features: Option<u32>,
    pub optimizer: Option<Optimizer>,
    pub betas: Option<(f32, f32)>,
    pub eps: Option<f32>,
    pub plateau_factor: Option<f32>,
    pub plateau_patience: Option<u32>,
    pub pos_weight: Option<PosWeight>,
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
        if let Some(v) = &o.milestones {
            self.milestones = v.clone();
        }
        if let Some(v) = o.warmup_epochs {
            self.warmup_epochs = v;
        }
        if let Some(v) = o.label_smoothing {
            self.label_smoothing = v;
        }
        if let Some(v) = o.clip_grad_norm {
            self.clip_grad_norm = Some(v);
        }
        if let Some(v) = o.patience {
            self.patience = Some(v);
        }
        if let Some(v) = o.lr_features {
            self.lr_features = v;
        }
        if let Some(v) = o.freeze_features {
            self.freeze_features = v;
        }
        if let Some(v) = o.optimizer {
            self.optimizer = v;
        }
        if let Some(v) = o.betas {
            self.betas = v;
        }
        if let Some(v) = o.eps {
            self.eps = v;
        }
        if let Some(v) = o.plateau_factor {
            self.plateau.0 = v;
        }
        if let Some(v) = o.plateau_patience {
            self.plateau.1 = v;
        }
        if let Some(v) = o.pos_weight {
            self.pos_weight = v;
        }
        self
    }

    /// The factor on the rate after the epochs whose test losses are `losses` (in order): 1
    /// but for the plateau schedule, which replays torch's ReduceLROnPlateau (mode min,
    /// threshold 1e-4 relative, no cooldown) over them, so a resumed run continues with it.
    pub fn plateau_scale(&self, losses: &[f64]) -> f32 {
        if self.schedule != Schedule::Plateau {
            return 1.0;
        }
        let (factor, patience) = self.plateau;
        let (mut best, mut bad, mut scale) = (f64::INFINITY, 0u32, 1.0f64);
        for &loss in losses {
            if loss < best * (1.0 - 1e-4) {
                best = loss;
                bad = 0;
            } else {
                bad += 1;
            }
            if bad > patience {
                scale *= factor as f64;
                bad = 0;
            }
        }
        scale as f32
    }

    /// The factor on the features' rate in `epoch` (1-based): 0 while they are frozen.
    pub fn features_factor(&self, epoch: u32) -> f32 {
        match epoch <= self.freeze_features {
            true => 0.0,
            false => self.lr_features,
        }
    }

    /// The learning rate at optimizer step `step` of `total` (`per_epoch` steps an epoch):
    /// the linear warm-up, then the schedule.
    pub fn lr_at(&self, step: u64, total: u64, per_epoch: u64) -> f32 {
        let scheduled = self.schedule.lr(self.lr, step, total, &self.milestones);
        let warmup = self.warmup_epochs as u64 * per_epoch;
        match step < warmup {
            true => scheduled * (step + 1) as f32 / warmup as f32,
            false => scheduled,
        }
    }

    /// The optimizer a training plan runs, at the recipe's base learning rate.
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
            clip_norm: self.clip_grad_norm,
            adam: match self.optimizer {
                Optimizer::Sgd => None,
                o => Some(AdamConfig {
                    betas: self.betas,
                    eps: self.eps,
                    decoupled: o == Optimizer::Adamw,
                }),
            },
        }
    }
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::D2l => "d2l",
            Preset::Small => "small",
            Preset::Tiny => "tiny",
            Preset::Densenet40 => "densenet40",
            Preset::Bc100 => "bc100",
            Preset::Densenet121 => "densenet121",
            Preset::Densenet169 => "densenet169",
            Preset::Densenet201 => "densenet201",
            Preset::Densenet161 => "densenet161",
            Preset::Densenet264 => "densenet264",
        }
    }

    /// Whether the network keeps its own input size whatever the dataset's (d2l's 96, the
    /// ImageNet networks' 224): their images are resized to it.
    pub fn fixed_size(self) -> bool {
        !matches!(
            self,
            Preset::Small | Preset::Tiny | Preset::Densenet40 | Preset::Bc100
        )
    }

    /// The preset whose architecture `cfg` is (whatever its input channels, classes and input
    /// size), if any: what a resumed run trains, named from its checkpoint.
    pub fn of_config(cfg: &DenseNetConfig) -> Option<Preset> {
        <Preset as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .find(|p| {
                let mut c = p.config(DatasetKind::Synthetic, cfg.classes);
                c.in_channels = cfg.in_channels;
                c.image_size = cfg.image_size;
                c == *cfg
            })
    }

    /// The network for `dataset`: the preset's architecture with the dataset's channels
    /// and classes, at the preset's input size (d2l: 96) or the dataset's own.
    pub fn config(self, dataset: DatasetKind, classes: u32) -> DenseNetConfig {
        let (channels, size, _) = dataset.image_shape();
        let mut cfg = match self {
            Preset::D2l => DenseNetConfig::d2l(),
            Preset::Small => DenseNetConfig::small(),
            Preset::Tiny => DenseNetConfig::tiny(),
            Preset::Densenet40 => DenseNetConfig::densenet40(),
            Preset::Bc100 => DenseNetConfig::bc100(),
            Preset::Densenet121 => DenseNetConfig::densenet121(),
            Preset::Densenet169 => DenseNetConfig::densenet169(),
            Preset::Densenet201 => DenseNetConfig::densenet201(),
            Preset::Densenet161 => DenseNetConfig::densenet161(),
            Preset::Densenet264 => DenseNetConfig::densenet264(),
        };
        cfg.in_channels = channels;
        cfg.classes = classes;
        // d2l resizes to its own 96 and the ImageNet networks to 224; a folder's images are
        // resized to the preset's size.
        if !self.fixed_size() && !matches!(dataset, DatasetKind::Folder | DatasetKind::Csv) {
            cfg.image_size = size;
        }
        cfg
    }

    pub fn recipe(self) -> Recipe {
        // What every preset shares: SGD with momentum 0.9 and rate 0.1, nothing else on.
        let base = Recipe {
            epochs: 1,
            batch_size: 64,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: true,
            schedule: Schedule::Constant,
            seed: 0,
            milestones: default_milestones(),
            warmup_epochs: 0,
            label_smoothing: 0.0,
            clip_grad_norm: None,
            patience: None,
            augment: Augment::default(),
            lr_features: 1.0,
            freeze_features: 0,
            optimizer: Optimizer::Sgd,
            betas: default_betas(),
            eps: default_eps(),
            plateau: default_plateau(),
            pos_weight: PosWeight::Auto,
        };
        match self {
            // The lecture's plain SGD.
            Preset::D2l => Recipe {
                epochs: 10,
                batch_size: 256,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
                ..base
            },
            Preset::Small => Recipe {
                epochs: 5,
                weight_decay: 5e-4,
                schedule: Schedule::Cosine,
                ..base
            },
            // Huang et al.: SGD with Nesterov momentum 0.9, weight decay 1e-4, rate 0.1,
            // batch 64, 300 epochs, x0.1 at 50% and 75%.
            Preset::Densenet40 | Preset::Bc100 => Recipe {
                epochs: 300,
                schedule: Schedule::Step,
                ..base
            },
            // torchvision's ImageNet reference: SGD momentum 0.9, weight decay 1e-4, rate 0.1
            // at batch 256 (scale it with the batch: 0.1 x batch / 256), x0.1 every 30 of 90
            // epochs.
            Preset::Densenet121
            | Preset::Densenet169
            | Preset::Densenet201
            | Preset::Densenet161
            | Preset::Densenet264 => Recipe {
                epochs: 90,
                batch_size: 256,
                nesterov: false,
                schedule: Schedule::Step,
                milestones: vec![1.0 / 3.0, 2.0 / 3.0],
                ..base
            },
            Preset::Tiny => Recipe {
                epochs: 3,
                schedule: Schedule::Cosine,
                ..base
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset is found from its network on any dataset; another network is none.
    #[test]
    fn presets_are_found_from_their_networks() {
        for &p in <Preset as clap::ValueEnum>::value_variants() {
            for d in [
                DatasetKind::Cifar10,
                DatasetKind::FashionMnist,
                DatasetKind::Folder,
            ] {
                assert_eq!(
                    Preset::of_config(&p.config(d, 7)),
                    Some(p),
                    "{p:?} on {d:?}"
                );
            }
        }
        let mut other = Preset::Tiny.config(DatasetKind::Synthetic, 10);
        other.growth_rate += 1;
        assert_eq!(Preset::of_config(&other), None);
    }

    /// The paper's schedule: 0.1 until half the run, 0.01 until three quarters, then 0.001;
    /// a linear warm-up over the first epochs before it; overrides replace the milestones.
    #[test]
    fn step_schedule_and_warmup() {
        let r = Preset::Bc100.recipe();
        assert_eq!(
            (r.schedule, r.epochs, r.batch_size),
            (Schedule::Step, 300, 64)
        );
        let (total, per_epoch) = (3000, 10);
        let at = |r: &Recipe, step| r.lr_at(step, total, per_epoch);
        assert_eq!(at(&r, 0), 0.1);
        assert_eq!(at(&r, 1499), 0.1);
        assert!((at(&r, 1500) - 0.01).abs() < 1e-9);
        assert!((at(&r, 2250) - 0.001).abs() < 1e-9);
        let o = Overrides {
            warmup_epochs: Some(2),
            milestones: Some(vec![0.9]),
            ..Overrides::default()
        };
        let w = r.clone().with(&o);
        assert_eq!(at(&w, 0), 0.1 / 20.0);
        assert_eq!(at(&w, 9), 0.1 * 10.0 / 20.0);
        assert_eq!(at(&w, 19), 0.1);
        assert_eq!(at(&w, 2250), 0.1, "one milestone, at 90%");
        assert!((at(&w, 2700) - 0.01).abs() < 1e-9);
    }

    /// ReduceLROnPlateau's rule: the rate drops after `patience` epochs in a row without a
    /// loss better by 1e-4 relatively, then the count starts again.
    #[test]
    fn plateau_replays_reduce_lr_on_plateau() {
        let mut r = Preset::Tiny.recipe();
        assert_eq!(
            r.plateau_scale(&[1.0, 2.0, 3.0]),
            1.0,
            "not the plateau schedule"
        );
        r.schedule = Schedule::Plateau;
        r.plateau = (0.1, 2);
        assert_eq!(r.plateau_scale(&[]), 1.0);
        assert_eq!(r.plateau_scale(&[1.0, 0.9, 0.95, 0.96]), 1.0);
        assert!((r.plateau_scale(&[1.0, 0.9, 0.95, 0.96, 0.97]) - 0.1).abs() < 1e-9);
        // 0.89995 is not better than 0.9 by 1e-4 relatively: it counts as bad.
        let s = r.plateau_scale(&[1.0, 0.9, 0.89995, 0.9, 0.9, 0.9, 0.9, 0.9]);
        assert!((s - 0.01).abs() < 1e-9, "{s}");
    }
}
