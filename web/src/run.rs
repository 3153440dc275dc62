//! A training run on the page: the native tool's epoch loop (the same recipe, shuffling,
//! learning-rate schedule and plan), cut into slices of a few steps so that the page draws
//! between them, with its evaluation, prediction and checkpoint.

use std::sync::Arc;

use anyhow::{bail, Result};
use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::data::augment::AugmentSpec;
use densenet_wgpu::data::loader::{Epoch, Order};
use densenet_wgpu::data::{resize, Dataset, DatasetKind};
use densenet_wgpu::evaluate::{evaluate_breakdown_async, probabilities};
use densenet_wgpu::gpu::{DType, InFlight};
use densenet_wgpu::model::{DenseNetConfig, Plan};
use densenet_wgpu::ops::cross_entropy::IGNORE;
use densenet_wgpu::recipe::{Preset, Recipe};
use densenet_wgpu::{wgpu, Kernels};

use crate::data::Data;

/// What the page chose for a fresh run.
#[derive(serde::Deserialize)]
pub struct Choice {
    pub preset: String,
    pub batch_size: Option<u32>,
    pub epochs: Option<u32>,
    pub lr: Option<f32>,
    #[serde(default)]
    pub seed: u64,
    /// "f32" or "f16" (only where the adapter has shader-f16).
    #[serde(default)]
    pub precision: Option<String>,
}

/// One run: its plan on the device and where it is in its epochs.
pub struct Run {
    pub name: String,
    pub plan: Plan,
    pub recipe: Recipe,
    pub kind: DatasetKind,
    pub class_names: Vec<String>,
    /// Epochs done, and optimizer steps taken.
    pub epoch: u32,
    pub step: u64,
    /// The current epoch's order and the next batch of it.
    order: Option<Epoch>,
    next_batch: usize,
    /// Loss sum and correct count of the current epoch read back before an evaluation
    /// (which clears the device's accumulators).
    carried: (f64, u64),
    inflight: InFlight,
}

/// Where a slice of training left the run.
#[derive(serde::Serialize)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub batch: usize,
    pub batches: usize,
    pub batch_size: u32,
    /// Steps this slice ran.
    pub steps: usize,
    /// The current epoch's mean loss and accuracy so far (at its end: the epoch's).
    pub loss: f64,
    pub accuracy: f64,
    pub lr: f32,
    /// This slice finished an epoch.
    pub epoch_done: bool,
    /// Every epoch of the recipe is done.
    pub finished: bool,
}

/// An evaluation of the test set, class by class.
#[derive(serde::Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub per_class: Vec<f64>,
    pub classes: Vec<String>,
    pub examples: usize,
    /// Every example's logits (`classes` per example), when asked for.
    pub logits: Option<Vec<f32>>,
}

/// A prediction: each class's probability, best first.
#[derive(serde::Serialize)]
pub struct Prediction {
    pub classes: Vec<(String, f32)>,
}

fn preset_named(name: &str) -> Result<Preset> {
    for p in [Preset::Tiny, Preset::Small, Preset::D2l] {
        if p.name() == name {
            return Ok(p);
        }
    }
    bail!("the page offers the presets tiny, small and d2l, not {name:?}")
}

fn precision(k: &Kernels, name: Option<&str>) -> Result<DType> {
    match name.unwrap_or("f32") {
        "f32" => Ok(DType::F32),
        "f16" if has_f16(k) => Ok(DType::F16),
        "f16" => bail!("this adapter has no shader-f16: train in f32"),
        other => bail!("precision {other:?}: choose f32 or f16"),
    }
}

/// Whether the adapter runs f16 arithmetic in shaders (SwiftShader does not).
pub fn has_f16(k: &Kernels) -> bool {
    k.gpu().features.contains(wgpu::Features::SHADER_F16)
}

/// The input size a preset's network takes for `kind` (a folder's images are resized to it).
pub fn input_size(preset: &str, kind: DatasetKind) -> Result<u32> {
    Ok(preset_named(preset)?.config(kind, 1).image_size)
}

impl Run {
    /// A fresh run of `choice` on `data`, set up as the CLI's `train` sets one up.
    pub fn start(k: &Kernels, data: &Data, choice: &Choice) -> Result<Run> {
        let preset = preset_named(&choice.preset)?;
        let mut recipe = Recipe {
            seed: choice.seed,
            ..preset.recipe()
        };
        recipe.batch_size = choice.batch_size.unwrap_or(recipe.batch_size);
        recipe.epochs = choice.epochs.unwrap_or(recipe.epochs);
        recipe.lr = choice.lr.unwrap_or(recipe.lr);
        recipe.augment = AugmentSpec::default_for(data.kind).build(&data.train);
        if data.train.len() < recipe.batch_size as usize {
            bail!(
                "the training set has {} examples, fewer than one batch of {}; lower the batch size",
                data.train.len(),
                recipe.batch_size
            );
        }
        let mut cfg = preset.config(data.kind, data.train.classes() as u32);
        cfg.in_channels = data.train.channels;
        let dtype = precision(k, choice.precision.as_deref())?;
        let mut plan = Plan::train_in(k, &cfg, recipe.batch_size, recipe.sgd(), dtype)?;
        plan.set_label_smoothing(k.gpu(), recipe.label_smoothing)?;
        plan.write_params(k.gpu(), &plan.layout.init_params(cfg.init, recipe.seed))?;
        Ok(Run::new(preset.name().into(), plan, recipe, data, (0, 0)))
    }

    /// A run continued from a checkpoint (the CLI's or the page's): its network, recipe,
    /// weights, epochs and steps; `data` must be what it was trained on.
    pub fn resume(k: &Kernels, ck: &Checkpoint, data: &Data) -> Result<Run> {
        let cfg: &DenseNetConfig = &ck.config;
        if data.train.channels != cfg.in_channels || data.train.classes() as u32 != cfg.classes {
            bail!(
                "the checkpoint's network takes {} channel(s) and {} classes, the data has {} and {}: load the data it was trained on",
                cfg.in_channels,
                cfg.classes,
                data.train.channels,
                data.train.classes()
            );
        }
        let dtype = match ck.loss_scale {
            Some(_) if has_f16(k) => DType::F16,
            _ => DType::F32,
        };
        let mut plan = Plan::train_in(k, cfg, ck.recipe.batch_size, ck.recipe.sgd(), dtype)?;
        plan.set_label_smoothing(k.gpu(), ck.recipe.label_smoothing)?;
        ck.restore(k.gpu(), &plan)?;
        if let Some(s) = ck.loss_scale {
            plan.write_loss_scale(k.gpu(), s)?;
        }
        let name = Preset::of_config(cfg).map_or("the checkpoint's network", |p| p.name());
        let mut run = Run::new(
            name.into(),
            plan,
            ck.recipe.clone(),
            data,
            (ck.epoch, ck.step),
        );
        run.class_names = ck.class_names.clone();
        Ok(run)
    }

    fn new(name: String, plan: Plan, recipe: Recipe, data: &Data, done: (u32, u64)) -> Run {
        Run {
            name,
            plan,
            recipe,
            kind: data.kind,
            class_names: data.train.class_names.clone(),
            epoch: done.0,
            step: done.1,
            order: None,
            next_batch: 0,
            carried: (0.0, 0),
            inflight: InFlight::new(2),
        }
    }

    fn batches(&self, train: &Dataset) -> usize {
        train.len() / self.recipe.batch_size as usize
    }

    /// Runs up to `steps` training steps of the current epoch (starting the next one when
    /// none is open); the epoch's loss and accuracy so far are read back at the end.
    pub async fn train(
        &mut self,
        k: &Kernels,
        train: &Arc<Dataset>,
        steps: usize,
    ) -> Result<Progress> {
        let gpu = k.gpu();
        let recipe = &self.recipe;
        let batches = self.batches(train);
        if self.epoch >= recipe.epochs {
            bail!("all {} epochs are done: start a new run", recipe.epochs);
        }
        if self.order.is_none() {
            // The native loop's order: the same seed for the same epoch.
            let epoch = (self.epoch + 1) as u64;
            let seed = recipe.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.order = Some(Epoch::new(
                train.len(),
                recipe.batch_size as usize,
                Order::Shuffled(seed),
            ));
            self.next_batch = 0;
            self.carried = (0.0, 0);
            self.plan.reset_metrics(gpu);
            self.plan
                .set_features_lr_factor(gpu, recipe.features_factor(self.epoch + 1));
        }
        let order = self.order.as_ref().expect("opened above");
        let size = (self.plan.cfg.image_size, self.plan.cfg.image_size);
        let total = batches as u64 * recipe.epochs as u64;
        let mut lr = recipe.lr;
        let mut ran = 0;
        for _ in 0..steps {
            if self.next_batch >= batches {
                break;
            }
            lr = recipe.lr_at(self.step, total, batches as u64);
            self.plan.set_step(self.step + 1);
            self.plan.set_lr(gpu, lr);
            let batch = order.batch(train, self.next_batch, size, &recipe.augment);
            self.plan.upload(gpu, &batch.x, &batch.labels)?;
            let index = self.plan.submit_train(gpu)?;
            self.inflight.push_async(gpu, index).await?;
            self.next_batch += 1;
            self.step += 1;
            ran += 1;
        }
        let (loss, correct) = self.metrics(k).await?;
        let seen = (self.next_batch * recipe.batch_size as usize).max(1) as f64;
        let epoch_done = self.next_batch >= batches;
        if epoch_done {
            self.epoch += 1;
            self.order = None;
        }
        if !loss.is_finite() {
            bail!(
                "the training loss became {loss} in epoch {}: the run diverged; start again with a lower learning rate",
                self.epoch
            );
        }
        Ok(Progress {
            epoch: self.epoch + !epoch_done as u32,
            epochs: recipe.epochs,
            step: self.step,
            batch: if epoch_done { batches } else { self.next_batch },
            batches,
            batch_size: recipe.batch_size,
            steps: ran,
            loss: loss / seen,
            accuracy: correct as f64 / seen,
            lr,
            epoch_done,
            finished: self.epoch >= recipe.epochs,
        })
    }

    /// The current epoch's loss sum and correct count, evaluations in between included.
    async fn metrics(&self, k: &Kernels) -> Result<(f64, u64)> {
        let (loss, correct) = self.plan.read_metrics_async(k.gpu()).await?;
        Ok((loss + self.carried.0, correct + self.carried.1))
    }

    /// Evaluates the test set with the running statistics (as the CLI's `eval`), keeping
    /// the open epoch's training metrics.
    pub async fn evaluate(
        &mut self,
        k: &Kernels,
        test: &Arc<Dataset>,
        logits: bool,
    ) -> Result<Evaluation> {
        if self.order.is_some() {
            self.carried = self.metrics(k).await?;
        }
        let b = evaluate_breakdown_async(k.gpu(), &self.plan, test, &self.recipe.augment).await?;
        // The accumulators now hold the evaluation's sums: clear them for the epoch.
        self.plan.reset_metrics(k.gpu());
        Ok(Evaluation {
            loss: b.loss,
            accuracy: b.accuracy,
            per_class: b.per_class(),
            classes: self.class_names.clone(),
            examples: test.len(),
            logits: logits.then_some(b.logits),
        })
    }

    /// Classifies one image (any size, color or gray), prepared as the CLI's `predict`
    /// prepares a file.
    pub async fn predict(&mut self, k: &Kernels, img: &image::DynamicImage) -> Result<Prediction> {
        if self.order.is_some() {
            self.carried = self.metrics(k).await?;
        }
        let cfg = &self.plan.cfg;
        let (c, size, n) = (cfg.in_channels, cfg.image_size, self.plan.batch as usize);
        let plane = (size * size) as usize;
        // As the CLI's predict: ImageNet's center crop where the run trained with its crops.
        let stored = self.recipe.augment.load_size(size);
        let mut one = resize::center_crop(&resize::planes(img, c, stored), stored, size);
        self.recipe.augment.normalize_planes(&mut one, plane);
        // The image in slot 0 of every channel; the rest of the batch is zeros, ignored.
        let mut x = vec![0f32; c as usize * n * plane];
        for ch in 0..c as usize {
            x[ch * n * plane..][..plane].copy_from_slice(&one[ch * plane..][..plane]);
        }
        let gpu = k.gpu();
        let per = if cfg.multi_label {
            cfg.classes as usize
        } else {
            1
        };
        self.plan.upload(gpu, &x, &vec![IGNORE; n * per])?;
        self.plan.submit_eval(gpu);
        let logits = self.plan.read_logits_async(gpu).await?;
        self.plan.reset_metrics(gpu);
        let row = &logits[..cfg.classes as usize];
        let mut classes: Vec<(String, f32)> = probabilities(row)
            .into_iter()
            .enumerate()
            .map(|(i, p)| (self.class_names.get(i).cloned().unwrap_or(i.to_string()), p))
            .collect();
        classes.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Prediction { classes })
    }

    /// The run as the CLI's checkpoint file (safetensors): `densenet-wgpu eval` reads it.
    pub async fn checkpoint(&self, k: &Kernels) -> Result<Vec<u8>> {
        if self.order.is_some() {
            bail!("an epoch is half done: save after it ends (or pause at an epoch's end)");
        }
        let gpu = k.gpu();
        let done = (self.epoch, self.step);
        let mut ck =
            Checkpoint::capture_async(gpu, &self.plan, &self.recipe, self.kind, done).await?;
        ck.loss_scale = self.plan.read_loss_scale_async(gpu).await?;
        ck.class_names = self.class_names.clone();
        ck.to_bytes()
    }
}
