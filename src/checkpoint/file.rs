//! Reading and writing checkpoint files. Tensors are written as F32; F32, F16 and BF16
//! tensors are read (converted with `half`). Files are written to a temporary name, then
//! renamed.

use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use super::Checkpoint;
#[cfg(not(target_arch = "wasm32"))]
use crate::atomic_file::write_atomic;
use crate::data::DatasetKind;

pub const FORMAT: &str = "densenet-wgpu/1";

/// Little-endian tensor bytes as f32 values, for the float types a checkpoint may hold.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Whether `bytes` are a safetensors file of ours (its metadata names our format).
pub fn is_ours(bytes: &[u8]) -> bool {
    SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, h)| h.metadata().clone())
        .is_some_and(|m| m.get("format").is_some_and(|f| f == FORMAT))
}

impl Checkpoint {
    /// Writes the checkpoint to `path` (a temporary file, then renamed).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads the checkpoint at `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let raw = std::fs::read(path)
            .with_context(|| format!("reading checkpoint {}", path.display()))?;
        Self::from_bytes(&raw, &path.display().to_string())
    }

    /// The checkpoint as a safetensors file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let bytes: Vec<(&str, Vec<u8>, Vec<usize>)> = names
            .iter()
            .map(|n| {
                let (shape, v) = &self.tensors[*n];
                let le: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (n.as_str(), le, shape.clone())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, shape)| {
                let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)?;
                Ok((*n, view))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.config)?);
        meta.insert("recipe".to_string(), serde_json::to_string(&self.recipe)?);
        meta.insert("dataset".to_string(), self.dataset.name().to_string());
        meta.insert("epoch".to_string(), self.epoch.to_string());
        if let Some(s) = &self.loss_scale {
            meta.insert("loss_scale".to_string(), serde_json::to_string(s)?);
        }
        meta.insert(
            "class_names".to_string(),
            serde_json::to_string(&self.class_names)?,
        );
        meta.insert("step".to_string(), self.step.to_string());
        if !self.kernel_choices.is_empty() {
            let choices = serde_json::to_string(&self.kernel_choices)?;
            meta.insert("kernel_choices".to_string(), choices);
        }
        if self.replicas > 1 {
            meta.insert("replicas".to_string(), self.replicas.to_string());
            meta.insert("sync_bn".to_string(), self.sync_bn.to_string());
        }
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    /// Reads a checkpoint from a safetensors file's bytes; `source` names the file in errors.
    pub fn from_bytes(raw: &[u8], source: &str) -> Result<Checkpoint> {
        let st = SafeTensors::deserialize(raw)
            .map_err(|e| anyhow!("{source}: not a safetensors file ({e})"))?;
        let (_, header) = SafeTensors::read_metadata(raw)?;
        let not_ours = |what: &str| anyhow!("{source}: {what}; not a densenet-wgpu checkpoint");
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| not_ours("no metadata"))?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| not_ours(&format!("metadata lacks {k:?}")))
        };
        if get("format")? != FORMAT {
            bail!(
                "{}: format {:?}, this build reads {FORMAT:?}",
                source,
                get("format")?
            );
        }
        let dataset = DatasetKind::from_name(get("dataset")?)
            .ok_or_else(|| anyhow!("{source}: unknown dataset {:?}", get("dataset")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let values = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {name} is {:?}; checkpoints hold F32, F16 or BF16 tensors",
                    source,
                    view.dtype()
                )
            })?;
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Checkpoint {
            config: serde_json::from_str(get("config")?).context("checkpoint config")?,
            recipe: serde_json::from_str(get("recipe")?).context("checkpoint recipe")?,
            dataset,
            epoch: get("epoch")?.parse().context("checkpoint epoch")?,
            step: get("step")?.parse().context("checkpoint step")?,
            tensors,
            loss_scale: meta
                .get("loss_scale")
                .map(|s| serde_json::from_str(s))
                .transpose()
                .context("checkpoint loss_scale")?,
            class_names: match meta.get("class_names") {
                Some(s) => serde_json::from_str(s).context("checkpoint class_names")?,
                None => dataset.class_names(),
            },
            kernel_choices: match meta.get("kernel_choices") {
                Some(s) => serde_json::from_str(s).context("checkpoint kernel_choices")?,
                None => Default::default(),
            },
            replicas: match meta.get("replicas") {
                Some(s) => s.parse().context("checkpoint replicas")?,
                None => 1,
            },
            sync_bn: meta.get("sync_bn").is_some_and(|s| s == "true"),
        })
    }
}
