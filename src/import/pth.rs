//! PyTorch `.pth` / `.pt` files (`torch.save`'s zip archive and its older layouts): the
//! pickle is read by the `pytorch-reader` crate (no Python, no code executed), the float
//! tensors converted to f32, names made torchvision's current ones.

use std::path::Path;

use anyhow::{anyhow, Result};
use pytorch_reader::{DType, PytorchReader};

use super::{canonical, Tensors};

/// The float tensors of a `torch.save`d state dict (a `state_dict` or `model` entry of a
/// training checkpoint's dictionary is looked into when the top level holds none).
pub fn read(path: &Path) -> Result<Tensors> {
    let shown = path.display();
    let mut reader = PytorchReader::new(path)
        .map_err(|e| anyhow!("{shown}: not a readable PyTorch file ({e})"))?;
    for key in ["state_dict", "model"] {
        if reader.is_empty() {
            if let Ok(r) = PytorchReader::with_top_level_key(path, key) {
                reader = r;
            }
        }
    }
    let mut out = Tensors::new();
    for (name, t) in reader.tensors() {
        let b = t
            .read()
            .map_err(|e| anyhow!("{shown}: reading tensor {name}: {e}"))?;
        let values: Vec<f32> = match t.dtype() {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // Integer tensors of a state dict are counters (num_batches_tracked).
            _ => continue,
        };
        let want: usize = t.shape().iter().product();
        if values.len() != want {
            return Err(anyhow!(
                "{shown}: tensor {name} holds {} values for shape {:?}",
                values.len(),
                t.shape()
            ));
        }
        out.insert(canonical(name), (t.shape().to_vec(), values));
    }
    if out.is_empty() {
        return Err(anyhow!("{shown}: holds no float tensors; not a state dict"));
    }
    Ok(out)
}
