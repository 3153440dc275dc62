//! Checkpoints as safetensors: every parameter under its readable name (`stem.conv.weight`,
//! `blocks.0.layers.1.bn.bias`, ...), the batch-norm running statistics
//! (`<slot>.running_mean`, `<slot>.running_var`), the SGD momentum buffers
//! (`optimizer.velocity.<param>`), and in the metadata the network config, the recipe,
//! the dataset and the epochs done. Written to a temporary file, then renamed.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::data::DatasetKind;
use crate::model::layout::Arena;
use crate::model::{DenseNetConfig, Layout};
use crate::recipe::Recipe;

pub const FORMAT: &str = "densenet-wgpu/1";

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
    /// Gathers arena-laid-out values into named tensors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: DenseNetConfig,
        recipe: Recipe,
        dataset: DatasetKind,
        epoch: u32,
        step: u64,
        layout: &Layout,
        params: &[f32],
        running: (&[f32], &[f32]),
        velocity: Option<&[f32]>,
    ) -> Checkpoint {
        let mut tensors = HashMap::new();
        put(&mut tensors, &layout.params, params, "", "");
        put(&mut tensors, &layout.stats, running.0, "", ".running_mean");
        put(&mut tensors, &layout.stats, running.1, "", ".running_var");
        if let Some(v) = velocity {
            put(&mut tensors, &layout.params, v, "optimizer.velocity.", "");
        }
        Checkpoint {
            config,
            recipe,
            dataset,
            epoch,
            step,
            tensors,
        }
    }

    /// Scatters named tensors into `arena`'s layout (`prefix`/`suffix` around slot names).
    /// Missing tensors are an error unless `optional`, then None.
    pub fn arena(
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

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = names
            .iter()
            .map(|n| {
                let (shape, v) = &self.tensors[*n];
                (
                    (*n).clone(),
                    bytemuck::cast_slice(v).to_vec(),
                    shape.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, shape)| {
                Ok((
                    n.as_str(),
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)?,
                ))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.config)?);
        meta.insert("recipe".to_string(), serde_json::to_string(&self.recipe)?);
        meta.insert("dataset".to_string(), self.dataset.name().to_string());
        meta.insert("epoch".to_string(), self.epoch.to_string());
        meta.insert("step".to_string(), self.step.to_string());
        let data = safetensors::serialize(views, Some(meta))?;
        write_atomic(path, &data)
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let raw = std::fs::read(path)
            .with_context(|| format!("reading checkpoint {}", path.display()))?;
        let st = SafeTensors::deserialize(&raw)
            .map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&raw)?;
        let meta = header.metadata().clone().ok_or_else(|| {
            anyhow!(
                "{}: no metadata; not a densenet-wgpu checkpoint",
                path.display()
            )
        })?;
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                anyhow!(
                    "{}: metadata lacks {k:?}; not a densenet-wgpu checkpoint",
                    path.display()
                )
            })
        };
        if get("format")? != FORMAT {
            bail!(
                "{}: format {:?}, this build reads {FORMAT:?}",
                path.display(),
                get("format")?
            );
        }
        let dataset = match get("dataset")?.as_str() {
            "synthetic" => DatasetKind::Synthetic,
            "fashion-mnist" => DatasetKind::FashionMnist,
            "mnist" => DatasetKind::Mnist,
            "cifar10" => DatasetKind::Cifar10,
            other => bail!("{}: unknown dataset {other:?}", path.display()),
        };
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!(
                    "{}: tensor {name} is {:?}, expected F32",
                    path.display(),
                    view.dtype()
                );
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Checkpoint {
            config: serde_json::from_str(get("config")?).context("checkpoint config")?,
            recipe: serde_json::from_str(get("recipe")?).context("checkpoint recipe")?,
            dataset,
            epoch: get("epoch")?.parse().context("checkpoint epoch")?,
            step: get("step")?.parse().context("checkpoint step")?,
            tensors,
        })
    }
}

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
