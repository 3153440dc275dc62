//! Checkpoints as safetensors: every parameter under its readable name (`stem.conv.weight`,
//! `blocks.0.layers.1.bn.bias`, ...), the batch-norm running statistics
//! (`<slot>.running_mean`, `<slot>.running_var`), the SGD momentum buffers
//! (`optimizer.velocity.<param>`), and in the metadata the network config, the recipe,
//! the dataset and the epochs done ([`file`]: reading and writing).
//!
//! The transfer between a checkpoint and a plan's buffers lives here too:
//! [`Checkpoint::capture`] reads a plan's state back, [`Checkpoint::restore`] writes it.

mod file;

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::data::DatasetKind;
use crate::gpu::Gpu;
use crate::model::layout::Arena;
use crate::model::{DenseNetConfig, Layout, Plan};
use crate::ops::loss_scale::LossScaleState;
use crate::recipe::Recipe;

pub use file::{is_ours, FORMAT};

/// Everything a run needs to continue or to evaluate, in device-independent form.
pub struct Checkpoint {
    pub config: DenseNetConfig,
    pub recipe: Recipe,
    pub dataset: DatasetKind,
    /// Epochs completed.
    pub epoch: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Named tensors: (shape, values).
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// The dynamic loss scale of an f16 run (metadata `loss_scale`), so that resuming in f16
    /// goes on with it; None from f32 runs.
    pub loss_scale: Option<LossScaleState>,
    /// The classes' names in label order (metadata `class_names`; an image folder's are its
    /// folders).
    pub class_names: Vec<String>,
    /// The kernel configuration of every tunable launch the run used, by launch key
    /// (metadata `kernel_choices`): a resumed run launches the same kernels, so it stays
    /// bit-exact whatever tuning would pick today. Empty in older checkpoints.
    pub kernel_choices: std::collections::BTreeMap<String, String>,
    /// The replicas of a data-parallel run (metadata `replicas`; 1 for one process): a
    /// resumed run needs the same count to take the same steps.
    pub replicas: u32,
    /// Whether its batch norms were synchronized across them (metadata `sync_bn`).
    pub sync_bn: bool,
}

/// The running statistics and momentum of a plan, in arena layout, as [`Checkpoint::new`]
/// takes them.
pub struct State<'a> {
    pub params: &'a [f32],
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
    pub velocity: Option<&'a [f32]>,
    /// Adam's second moment (then `velocity` is its first).
    pub exp_avg_sq: Option<&'a [f32]>,
}

fn put(
    out: &mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    arena: &Arena,
    values: &[f32],
    prefix: &str,
    suffix: &str,
) {
    for s in &arena.slots {
        let v = values[s.offset as usize..][..s.len as usize].to_vec();
        let shape = s.shape.iter().map(|&d| d as usize).collect();
        out.insert(format!("{prefix}{}{suffix}", s.name), (shape, v));
    }
}

impl Checkpoint {
    /// Gathers arena-laid-out state into named tensors.
    pub fn new(
        config: DenseNetConfig,
        recipe: Recipe,
        dataset: DatasetKind,
        (epoch, step): (u32, u64),
        layout: &Layout,
        state: State<'_>,
    ) -> Checkpoint {
        let mut tensors = HashMap::new();
        put(&mut tensors, &layout.params, state.params, "", "");
        put(
            &mut tensors,
            &layout.stats,
            state.running_mean,
            "",
            ".running_mean",
        );
        put(
            &mut tensors,
            &layout.stats,
            state.running_var,
            "",
            ".running_var",
        );
        match (state.velocity, state.exp_avg_sq) {
            (Some(m), Some(v)) => {
                put(&mut tensors, &layout.params, m, "optimizer.exp_avg.", "");
                put(&mut tensors, &layout.params, v, "optimizer.exp_avg_sq.", "");
            }
            (Some(v), None) => put(&mut tensors, &layout.params, v, "optimizer.velocity.", ""),
            _ => {}
        }
        Checkpoint {
            config,
            recipe,
            dataset,
            epoch,
            step,
            tensors,
            loss_scale: None,
            class_names: dataset.class_names(),
            kernel_choices: Default::default(),
            replicas: 1,
            sync_bn: false,
        }
    }

    /// Reads a plan's state back: parameters, running statistics, and the SGD momentum when
    /// the plan keeps one. `epoch` epochs and `step` steps are done. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn capture(
        gpu: &Gpu,
        plan: &Plan,
        recipe: &Recipe,
        dataset: DatasetKind,
        done: (u32, u64),
    ) -> Result<Checkpoint> {
        pollster::block_on(Self::capture_async(gpu, plan, recipe, dataset, done))
    }

    /// [`Checkpoint::capture`], asynchronously (as a browser needs it).
    pub async fn capture_async(
        gpu: &Gpu,
        plan: &Plan,
        recipe: &Recipe,
        dataset: DatasetKind,
        (epoch, step): (u32, u64),
    ) -> Result<Checkpoint> {
        let b = &plan.buffers;
        let params: Vec<f32> = gpu.read_all_async(&b.params).await?;
        let running_mean: Vec<f32> = gpu.read_all_async(&b.running_mean).await?;
        let running_var: Vec<f32> = gpu.read_all_async(&b.running_var).await?;
        let velocity: Option<Vec<f32>> = match &b.velocity {
            Some(v) => Some(gpu.read_all_async(v).await?),
            None => None,
        };
        // Adam's buffer holds both moments, the second from its aligned start after P.
        let n = params.len();
        let (first, second) = match &velocity {
            Some(v) if v.len() > n => (Some(&v[..n]), Some(&v[v.len() - n..])),
            Some(v) => (Some(&v[..]), None),
            None => (None, None),
        };
        let state = State {
            params: &params,
            running_mean: &running_mean,
            running_var: &running_var,
            velocity: first,
            exp_avg_sq: second,
        };
        let (cfg, layout) = (plan.cfg.clone(), &plan.layout);
        let pos_weight = match &b.pos_weight {
            Some(w) => Some(gpu.read_all_async::<f32>(w).await?),
            None => None,
        };
        let mut ck = Checkpoint::new(cfg, recipe.clone(), dataset, (epoch, step), layout, state);
        // Multi-label: the loss's per-label weights (from the training set), so that an
        // evaluation without it reports the same loss.
        if let Some(w) = pos_weight {
            ck.tensors
                .insert("loss.pos_weight".into(), (vec![w.len()], w));
        }
        Ok(ck)
    }

    /// Writes this checkpoint's parameters, running statistics and (when both sides have
    /// one) momentum into a plan of the same network.
    pub fn restore(&self, gpu: &Gpu, plan: &Plan) -> Result<()> {
        if self.config != plan.cfg {
            bail!("the checkpoint's network differs from the plan's");
        }
        let (layout, b) = (&plan.layout, &plan.buffers);
        plan.write_params(gpu, &self.arena(&layout.params, "", "")?)?;
        gpu.write(
            &b.running_mean,
            &self.arena(&layout.stats, "", ".running_mean")?,
        )?;
        gpu.write(
            &b.running_var,
            &self.arena(&layout.stats, "", ".running_var")?,
        )?;
        if let (Some(w), Some((_, values))) = (&b.pos_weight, self.tensors.get("loss.pos_weight")) {
            gpu.write(w, values)?;
        }
        if let Some(v) = &b.velocity {
            let n = layout.params.len as usize;
            match v.len as usize > n {
                // Adam: both moments where the checkpoint has them (an SGD run's, or an
                // imported one, starts them at zero).
                true => {
                    let first = self.optional_arena(&layout.params, "optimizer.exp_avg.", "")?;
                    let second =
                        self.optional_arena(&layout.params, "optimizer.exp_avg_sq.", "")?;
                    if let (Some(m), Some(s)) = (first, second) {
                        let mut both = vec![0f32; v.len as usize];
                        both[..n].copy_from_slice(&m);
                        let at = both.len() - n;
                        both[at..].copy_from_slice(&s);
                        gpu.write(v, &both)?;
                    }
                }
                false => {
                    let prefix = "optimizer.velocity.";
                    if let Some(values) = self.optional_arena(&layout.params, prefix, "")? {
                        gpu.write(v, &values)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Scatters named tensors into `arena`'s layout (`prefix`/`suffix` around slot names);
    /// a missing tensor is an error.
    pub fn arena(&self, arena: &Arena, prefix: &str, suffix: &str) -> Result<Vec<f32>> {
        match self.scatter(arena, prefix, suffix, false)? {
            Some(v) => Ok(v),
            None => bail!("checkpoint lacks tensors {prefix}*{suffix}"),
        }
    }

    /// As [`Checkpoint::arena`], but None when the tensors are missing (e.g. no momentum).
    pub fn optional_arena(
        &self,
        arena: &Arena,
        prefix: &str,
        suffix: &str,
    ) -> Result<Option<Vec<f32>>> {
        self.scatter(arena, prefix, suffix, true)
    }

    fn scatter(
        &self,
        arena: &Arena,
        prefix: &str,
        suffix: &str,
        optional: bool,
    ) -> Result<Option<Vec<f32>>> {
        let mut out = vec![0f32; arena.len as usize];
        for s in &arena.slots {
            let name = format!("{prefix}{}{suffix}", s.name);
            let Some((shape, v)) = self.tensors.get(&name) else {
                if optional {
                    return Ok(None);
                }
                bail!("checkpoint has no tensor {name}");
            };
            let want: Vec<usize> = s.shape.iter().map(|&d| d as usize).collect();
            if *shape != want {
                bail!("checkpoint tensor {name} has shape {shape:?}, the network needs {want:?}");
            }
            out[s.offset as usize..][..s.len as usize].copy_from_slice(v);
        }
        Ok(Some(out))
    }
}
