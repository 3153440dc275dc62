//! What a run trains: the network, recipe and data, from the preset and the command line,
//! or from the checkpoint it resumes.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::checkpoint::Checkpoint;
use crate::data::augment::{stored_size, Augment, AugmentSpec};
use crate::data::{self, Dataset, DatasetKind};
use crate::gpu::DType;
use crate::model::DenseNetConfig;
use crate::recipe::{Overrides, Preset, Recipe};

/// Everything `densenet-wgpu train` takes.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    /// `--dataset csv`: where its labels are and how the CSV says them.
    pub csv: Option<crate::data::multilabel::CsvSpec>,
    pub preset: Preset,
    /// Recipe values that replace the preset's (or, resuming, the checkpoint's).
    pub overrides: Overrides,
    pub seed: u64,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    /// Weights to start from (`--init`): ours, or a torchvision/timm file.
    pub init: Option<PathBuf>,
    /// With `init`: replace its classifier by one for this many classes.
    pub num_classes: Option<u32>,
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
    /// The weights a fine-tuning run starts from, shaped as `config` (its classifier
    /// replaced where `--num-classes` asks).
    pub init: Option<Checkpoint>,
}

pub fn setup(args: &TrainArgs) -> Result<Setup> {
    let resume = match &args.resume {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    // A resumed run keeps its seed: the same synthetic data, the same shuffling sequence.
    let seed = resume.as_ref().map_or(args.seed, |ck| ck.recipe.seed);
    let init = match &args.init {
        Some(p) => Some(load_init(p)?),
        None => None,
    };
    let net = resume.as_ref().or(init.as_ref()).map_or_else(
        || args.preset.config(args.dataset, 1),
        |ck| ck.config.clone(),
    );
    let crops = match (&resume, args.overrides.augment) {
        (Some(ck), None) => ck.recipe.augment.resized_crop,
        (_, Some(spec)) => spec.resized_crop,
        (None, None) => imagenet_crops(&net, args.dataset),
    };
    let mut splits = load_data(args, seed, stored_size(net.image_size, crops))?;
    if let Some(ck) = &init {
        // An ImageNet network reads RGB: gray images are replicated, as PIL's convert("RGB").
        if ck.config.in_channels == 3 && splits.train.channels == 1 {
            splits.train.gray_to_rgb();
            splits.test.gray_to_rgb();
        }
    }
    let classes = splits.train.classes() as u32;
    let init = match init {
        Some(ck) => Some(fit_classes(ck, args, classes, &splits.train)?),
        None => None,
    };
    let (config, mut recipe) = network_and_recipe(args, (&resume, &init), &splits.train)?;
    if let Some(augment) = augmentation(args, (&resume, &init), crops, &splits.train) {
        recipe.augment = augment;
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
    Ok(Setup {
        network: network_name(args, (&resume, &init)),
        config,
        recipe,
        train: Arc::new(splits.train),
        test: Arc::new(splits.test),
        resume,
        init,
    })
}

/// The run's data, its images stored at `size`, cut to --limit-train and --limit-test.
fn load_data(args: &TrainArgs, seed: u64, size: u32) -> Result<data::Splits> {
    let csv = args.csv.as_ref();
    let mut splits = data::load_sized(args.dataset, args.data_dir.as_deref(), seed, size, csv)?;
    if let Some(n) = args.limit_train {
        splits.train.truncate(n);
    }
    if let Some(n) = args.limit_test {
        splits.test.truncate(n);
    }
    Ok(splits)
}

type Starts<'a> = (&'a Option<Checkpoint>, &'a Option<Checkpoint>);

/// The network and recipe: the checkpoint's when resuming, the --init file's when
/// fine-tuning, else the preset's for the data; then the command line's overrides. A set
/// with targets makes the network multi-label.
fn network_and_recipe(
    args: &TrainArgs,
    (resume, init): Starts<'_>,
    train: &Dataset,
) -> Result<(DenseNetConfig, Recipe)> {
    let (mut config, recipe) = match (resume, init) {
        (Some(ck), _) => {
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
        (None, Some(ck)) => {
            let recipe = Recipe {
                seed: args.seed,
                ..ck.recipe.clone()
            };
            (ck.config.clone(), recipe)
        }
        (None, None) => {
            let recipe = Recipe {
                seed: args.seed,
                ..args.preset.recipe()
            };
            let mut config = args.preset.config(args.dataset, train.classes() as u32);
            config.in_channels = train.channels;
            (config, recipe)
        }
    };
    config.multi_label |= train.targets.is_some();
    if config.multi_label && train.targets.is_none() {
        bail!("this network is multi-label; train it on a multi-label set (--dataset csv)");
    }
    Ok((config, recipe.with(&args.overrides)))
}

/// The augmentation a run takes, where it changes: a fresh run takes the dataset's (with
/// ImageNet's crops under `crops`) unless --augment says otherwise; a resumed one keeps its
/// own (normalization statistics included) unless --augment is given (None). Fine-tuning
/// keeps the normalization the weights were trained with.
fn augmentation(
    args: &TrainArgs,
    (resume, init): Starts<'_>,
    crops: bool,
    train: &Dataset,
) -> Option<Augment> {
    let spec = match (resume, args.overrides.augment) {
        (_, Some(spec)) => spec,
        (None, None) => AugmentSpec {
            flip: crops || AugmentSpec::default_for(args.dataset).flip,
            resized_crop: crops,
            ..AugmentSpec::default_for(args.dataset)
        },
        (Some(_), None) => return None,
    };
    let built = spec.build(train);
    Some(match init {
        Some(ck) => Augment {
            normalize: ck.recipe.augment.normalize.clone(),
            ..built
        },
        None => built,
    })
}

/// What the run trains, for its banner and plots.
fn network_name(args: &TrainArgs, (resume, init): Starts<'_>) -> String {
    match (resume, init) {
        (Some(ck), _) => Preset::of_config(&ck.config).map_or_else(
            || "the checkpoint's network".to_string(),
            |p| p.name().to_string(),
        ),
        (None, Some(ck)) => {
            let from = args
                .init
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string());
            let name = Preset::of_config(&ck.config).map_or("a DenseNet", |p| p.name());
            format!("{name} from {from}")
        }
        (None, None) => args.preset.name().to_string(),
    }
}

/// Whether a fresh run on `dataset` takes torchvision's ImageNet transforms by default:
/// torchvision-shaped networks (the densenet121-style presets, imported ones) on image files.
fn imagenet_crops(net: &DenseNetConfig, dataset: DatasetKind) -> bool {
    net.layer_stats && matches!(dataset, DatasetKind::Folder | DatasetKind::Csv)
}

/// `--init FILE`: a checkpoint of ours, or a torchvision/timm file imported.
fn load_init(path: &std::path::Path) -> Result<Checkpoint> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading --init {}", path.display()))?;
    let shown = path.display().to_string();
    if crate::checkpoint::is_ours(&bytes) {
        return Checkpoint::from_bytes(&bytes, &shown);
    }
    let sd = crate::import::read_file(path)?;
    crate::import::to_checkpoint(&sd, &shown)
}

/// The `--init` checkpoint for data of `classes` classes: its classifier kept when the
/// counts agree, replaced (`--num-classes`) by one initialized as torchvision's nn.Linear
/// (weights and bias uniform in +-1/sqrt(fan_in)), else a one-line error. Optimizer state
/// and epochs start afresh; class names come from the data.
fn fit_classes(
    mut ck: Checkpoint,
    args: &TrainArgs,
    classes: u32,
    train: &Dataset,
) -> Result<Checkpoint> {
    let file = args
        .init
        .as_ref()
        .map_or(String::new(), |p| p.display().to_string());
    let have = ck.config.classes;
    match args.num_classes {
        Some(n) if n != classes => {
            bail!("--num-classes {n}, but the data has {classes} classes")
        }
        Some(n) if n != have => {
            ck.config.classes = n;
            let layout = crate::model::Layout::new(&ck.config, 1);
            let fan_in = layout.head.channels;
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut rng = fastrand::Rng::with_seed(args.seed ^ 0xC1A5_51F1);
            for slot in [layout.head.weight, layout.head.bias] {
                let s = &layout.params.slots[slot];
                let v = (0..s.len)
                    .map(|_| (rng.f32() * 2.0 - 1.0) * bound)
                    .collect();
                let shape = s.shape.iter().map(|&d| d as usize).collect();
                ck.tensors.insert(s.name.clone(), (shape, v));
            }
        }
        _ if have != classes => bail!(
            "--init {file} classifies {have} classes, the data has {classes}: add \
             --num-classes {classes} to replace its classifier"
        ),
        _ => {}
    }
    if train.channels != ck.config.in_channels {
        bail!(
            "--init {file} reads {} channel(s), the data has {}",
            ck.config.in_channels,
            train.channels
        );
    }
    ck.config.multi_label = train.targets.is_some();
    ck.tensors.retain(|name, _| !name.starts_with("optimizer."));
    ck.class_names = train.class_names.clone();
    ck.epoch = 0;
    ck.step = 0;
    ck.loss_scale = None;
    ck.kernel_choices = Default::default();
    Ok(ck)
}
