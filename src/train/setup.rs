//! What a run trains: the network, recipe and data, from the preset and the command line,
//! or from the checkpoint it resumes.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::checkpoint::Checkpoint;
use crate::data::augment::AugmentSpec;
use crate::data::{self, Dataset, DatasetKind};
use crate::gpu::DType;
use crate::model::DenseNetConfig;
use crate::recipe::{Overrides, Preset, Recipe};

/// Everything `densenet-wgpu train` takes.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub preset: Preset,
    /// Recipe values that replace the preset's (or, resuming, the checkpoint's).
    pub overrides: Overrides,
    pub seed: u64,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    /// Draw progress bars (off in tests and when stderr is not a terminal).
    pub progress: bool,
    /// Element type of activations and their gradients (f32 or f16).
    pub precision: DType,
    /// Set (by a Ctrl-C handler) to stop after the current step.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// How the kernels are chosen (a resumed run keeps its checkpoint's).
    pub tune: crate::tune::TuneOptions,
    /// Print each op's tuned configurations too.
    pub verbose: bool,
}

/// The network, recipe and data of a run.
pub struct Setup {
    /// What the run trains, for its banner and plots: the preset's name (a resumed run's is
    /// the checkpoint's network's).
    pub network: String,
    pub config: DenseNetConfig,
    pub recipe: Recipe,
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
    pub resume: Option<Checkpoint>,
}

pub fn setup(args: &TrainArgs) -> Result<Setup> {
    let resume = match &args.resume {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    // A resumed run keeps its seed: the same synthetic data, the same shuffling sequence.
    let seed = resume.as_ref().map_or(args.seed, |ck| ck.recipe.seed);
    // Image folders are resized to the network's input size as they load.
    let size = resume.as_ref().map_or_else(
        || args.preset.config(args.dataset, 1).image_size,
        |ck| ck.config.image_size,
    );
    let mut splits = data::load_sized(args.dataset, args.data_dir.as_deref(), seed, size)?;
    if let Some(n) = args.limit_train {
        splits.train.truncate(n);
    }
    if let Some(n) = args.limit_test {
        splits.test.truncate(n);
    }
    let classes = splits.train.classes() as u32;
    let (config, recipe) = match &resume {
        Some(ck) => {
            if ck.dataset != args.dataset {
                bail!(
                    "--resume {}: trained on {}, but --dataset is {}",
                    args.resume
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                    ck.dataset.name(),
                    args.dataset.name()
                );
            }
            (ck.config.clone(), ck.recipe.clone())
        }
        None => {
            let recipe = Recipe {
                seed: args.seed,
                ..args.preset.recipe()
            };
            let mut config = args.preset.config(args.dataset, classes);
            config.in_channels = splits.train.channels;
            (config, recipe)
        }
    };
    let mut recipe = recipe.with(&args.overrides);
    // A fresh run takes the dataset's augmentation unless --augment says otherwise; a resumed
    // one keeps its own (normalization statistics included) unless --augment is given.
    let spec = match (&resume, args.overrides.augment) {
        (_, Some(spec)) => Some(spec),
        (None, None) => Some(AugmentSpec::default_for(args.dataset)),
        (Some(_), None) => None,
    };
    if let Some(spec) = spec {
        recipe.augment = spec.build(&splits.train);
    }
    let batch = recipe.batch_size as usize;
    if splits.train.len() < batch {
        bail!(
            "the training set has {} examples, fewer than one batch of {batch}; lower --batch-size",
            splits.train.len()
        );
    }
    if splits.test.is_empty() {
        bail!("the test set is empty (--limit-test 0?)");
    }
    let network = match &resume {
        None => args.preset.name().to_string(),
        Some(ck) => Preset::of_config(&ck.config).map_or_else(
            || "the checkpoint's network".to_string(),
            |p| p.name().to_string(),
        ),
    };
    Ok(Setup {
        network,
        config,
        recipe,
        train: Arc::new(splits.train),
        test: Arc::new(splits.test),
        resume,
    })
}
