//! torchvision and timm DenseNets: their state dicts read (safetensors here; PyTorch `.pth`
//! files in [`pth`]), their architecture inferred from the tensor shapes, and their weights
//! put under our names as a checkpoint; and the reverse mapping for `export --torchvision`.
//!
//! Names: torchvision's `features.conv0`, `features.norm0`,
//! `features.denseblock{B}.denselayer{L}.{norm1,conv1,norm2,conv2}`,
//! `features.transition{T}.{norm,conv}`, `features.norm5`, `classifier` are our `stem.conv`,
//! `stem.bn`, `blocks.{B-1}.layers.{L-1}.{bn,conv1,bn2,conv}`, `transitions.{T-1}.{bn,conv}`,
//! `head.bn`, `head.linear`. The legacy names of torchvision's published `.pth` files
//! (`denselayer1.norm.1.weight`) are renamed as torchvision renames them on load. Each batch
//! norm keeps its own running statistics (`layer_stats`), so evaluation matches torchvision.

#[cfg(not(target_arch = "wasm32"))]
pub mod pth;

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

use crate::checkpoint::{Checkpoint, State};
use crate::data::augment::Augment;
use crate::data::DatasetKind;
use crate::model::{DenseNetConfig, Layout};
use crate::recipe::Preset;

/// Named float tensors: (shape, values), in PyTorch's order.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// ImageNet's per-channel (mean, std), which torchvision's and timm's weights expect.
pub const IMAGENET_NORMALIZE: [(f32, f32); 3] = [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)];

/// A state dict's tensors from safetensors bytes: float tensors converted to f32, integer
/// ones (`num_batches_tracked`) left out; names as torchvision's (legacy names renamed, a
/// `module.` prefix of DataParallel dropped).
pub fn read_safetensors(bytes: &[u8], source: &str) -> Result<Tensors> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{source}: not a safetensors file ({e})"))?;
    let mut out = Tensors::new();
    for (name, view) in st.tensors() {
        use safetensors::Dtype;
        let b = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => continue,
        };
        out.insert(canonical(&name), (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// torchvision's current name for a state-dict key: `module.` dropped, and the legacy
/// `denselayerN.norm.1.weight` / `conv.2.weight` forms renamed to `norm1` / `conv2` (as
/// torchvision's `_load_state_dict` does).
pub fn canonical(name: &str) -> String {
    let name = name.strip_prefix("module.").unwrap_or(name);
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let legacy = i + 1 < parts.len()
            && i > 0
            && parts[i - 1].starts_with("denselayer")
            && matches!(parts[i], "norm" | "relu" | "conv")
            && matches!(parts[i + 1], "1" | "2");
        if legacy {
            out.push(format!("{}{}", parts[i], parts[i + 1]));
            i += 2;
        } else {
            out.push(parts[i].to_string());
            i += 1;
        }
    }
    out.join(".")
}

/// torchvision's module for one of our modules (`blocks.0.layers.2.bn2` ->
/// `features.denseblock1.denselayer3.norm2`); None for our per-block statistics.
pub fn torchvision_module(ours: &str) -> Option<String> {
    let p: Vec<&str> = ours.split('.').collect();
    let idx = |s: &str| s.parse::<usize>().ok().map(|v| v + 1);
    Some(match p.as_slice() {
        ["stem", "conv"] => "features.conv0".into(),
        ["stem", "bn"] => "features.norm0".into(),
        ["blocks", b, "layers", l, m] => {
            let m = match *m {
                "bn" => "norm1",
                "conv1" => "conv1",
                "bn2" => "norm2",
                "conv" => "conv2",
                _ => return None,
            };
            format!("features.denseblock{}.denselayer{}.{m}", idx(b)?, idx(l)?)
        }
        ["transitions", t, m] => {
            let m = match *m {
                "bn" => "norm",
                "conv" => "conv",
                _ => return None,
            };
            format!("features.transition{}.{m}", idx(t)?)
        }
        ["head", "bn"] => "features.norm5".into(),
        ["head", "linear"] => "classifier".into(),
        _ => return None,
    })
}

/// torchvision's name of one of our parameter or statistics tensors
/// (`blocks.0.layers.2.conv.weight` -> `features.denseblock1.denselayer3.conv2.weight`).
pub fn torchvision_name(ours: &str) -> Option<String> {
    let (module, leaf) = ours.rsplit_once('.')?;
    Some(format!("{}.{leaf}", torchvision_module(module)?))
}

fn shape_of<'t>(sd: &'t Tensors, name: &str) -> Result<&'t [usize]> {
    sd.get(name)
        .map(|(s, _)| s.as_slice())
        .ok_or_else(|| anyhow!("it has no {name}, which every torchvision DenseNet has"))
}

/// The torchvision `DenseNet(growth_rate, block_config, num_init_features, bn_size,
/// num_classes)` whose state dict `sd` is, from its tensor shapes.
pub fn infer(sd: &Tensors) -> Result<DenseNetConfig> {
    let conv0 = shape_of(sd, "features.conv0.weight")?;
    if conv0.len() != 4 || conv0[2..] != [7, 7] {
        bail!(
            "features.conv0.weight has shape {conv0:?}; a torchvision DenseNet's is [C, 3, 7, 7]"
        );
    }
    let mut blocks = Vec::new();
    while sd.contains_key(&format!(
        "features.denseblock{}.denselayer1.conv1.weight",
        blocks.len() + 1
    )) {
        let b = blocks.len() + 1;
        let mut layers = 0;
        while sd.contains_key(&format!(
            "features.denseblock{b}.denselayer{}.conv1.weight",
            layers + 1
        )) {
            layers += 1;
        }
        blocks.push(layers);
    }
    if blocks.is_empty() {
        bail!(
            "it has no features.denseblock1.denselayer1.conv1.weight: not a torchvision DenseNet"
        );
    }
    let conv1 = shape_of(sd, "features.denseblock1.denselayer1.conv1.weight")?;
    let conv2 = shape_of(sd, "features.denseblock1.denselayer1.conv2.weight")?;
    let classifier = shape_of(sd, "classifier.weight")?;
    if conv1.len() != 4 || conv2.len() != 4 || classifier.len() != 2 {
        bail!(
            "conv1 {conv1:?}, conv2 {conv2:?} and classifier {classifier:?}: convolutions are \
             [out, in, h, w] and the classifier [classes, features] in a torchvision DenseNet"
        );
    }
    let growth = conv2[0] as u32;
    if growth == 0 || conv1[0] as u32 % growth != 0 {
        bail!("the first layer's conv1 ({conv1:?}) and conv2 ({conv2:?}) do not make a DenseNet-BC layer");
    }
    let mut cfg = DenseNetConfig::torchvision(
        growth,
        &blocks,
        conv0[0] as u32,
        conv1[0] as u32 / growth,
        classifier[0] as u32,
    );
    cfg.in_channels = conv0[1] as u32;
    cfg.validate()?;
    Ok(cfg)
}

/// The checkpoint of state dict `sd` (see the module's documentation): every parameter and
/// running statistic under our names, each shape checked, the recipe of the presets, the
/// input normalization the weights expect. `source` names the file in errors.
pub fn to_checkpoint(sd: &Tensors, source: &str) -> Result<Checkpoint> {
    let cfg = infer(sd).with_context(|| format!("{source}: not a torchvision DenseNet"))?;
    let layout = Layout::new(&cfg, 1);
    let mut used = std::collections::BTreeSet::new();
    let mut take = |name: &str, want: &[u32]| -> Result<Vec<f32>> {
        let (shape, values) = sd.get(name).ok_or_else(|| {
            anyhow!("{source}: {name} is missing for the network its shapes describe")
        })?;
        let want: Vec<usize> = want.iter().map(|&d| d as usize).collect();
        if *shape != want {
            bail!("{source}: {name} has shape {shape:?}, the network needs {want:?}");
        }
        used.insert(name.to_string());
        Ok(values.clone())
    };
    let mut params = vec![0f32; layout.params.len as usize];
    for s in &layout.params.slots {
        let tv = torchvision_name(&s.name).expect("every parameter has a torchvision name");
        params[s.offset as usize..][..s.len as usize].copy_from_slice(&take(&tv, &s.shape)?);
    }
    let mut mean = vec![0f32; layout.stats.len as usize];
    let mut var = vec![1f32; layout.stats.len as usize];
    for s in &layout.stats.slots {
        // A block's own slot serves its statistics in training only (each reader has its
        // own running statistics): it starts from its last reader's (a transition or the
        // head), which reads all its channels.
        let module = match torchvision_module(&s.name) {
            Some(m) => m,
            None => {
                let b: usize = s.name.trim_start_matches("blocks.").parse()?;
                let last = match b + 1 < cfg.blocks.len() {
                    true => format!("features.transition{}.norm", b + 1),
                    false => "features.norm5".to_string(),
                };
                // Checked like every other tensor (its own slot takes it again below).
                let m = take(&format!("{last}.running_mean"), &s.shape)?;
                let v = take(&format!("{last}.running_var"), &s.shape)?;
                mean[s.offset as usize..][..s.len as usize].copy_from_slice(&m);
                var[s.offset as usize..][..s.len as usize].copy_from_slice(&v);
                continue;
            }
        };
        let m = take(&format!("{module}.running_mean"), &s.shape)?;
        let v = take(&format!("{module}.running_var"), &s.shape)?;
        mean[s.offset as usize..][..s.len as usize].copy_from_slice(&m);
        var[s.offset as usize..][..s.len as usize].copy_from_slice(&v);
    }
    if let Some(extra) = sd.keys().find(|k| !used.contains(*k)) {
        bail!("{source}: {extra} has no place in the DenseNet its other tensors describe");
    }
    let mut recipe = Preset::Densenet121.recipe();
    recipe.augment = Augment {
        normalize: Some(IMAGENET_NORMALIZE[..cfg.in_channels.min(3) as usize].to_vec()),
        ..Augment::default()
    };
    let state = State {
        params: &params,
        running_mean: &mean,
        running_var: &var,
        velocity: None,
        exp_avg_sq: None,
    };
    let mut ck = Checkpoint::new(
        cfg.clone(),
        recipe,
        DatasetKind::Folder,
        (0, 0),
        &layout,
        state,
    );
    ck.class_names = (0..cfg.classes).map(|c| c.to_string()).collect();
    Ok(ck)
}

/// Our checkpoint's tensors under torchvision's names (what `load_state_dict(strict=True)`
/// takes, `num_batches_tracked` aside): parameters, and each batch norm's own running
/// statistics (a network without them gives each reader its block's).
pub fn to_torchvision(ck: &Checkpoint) -> Result<Tensors> {
    let c = &ck.config;
    let shaped = matches!(c.stem, crate::model::Stem::ImageNet { .. })
        && !c.conv_bias
        && c.bottleneck.is_some()
        && c.compression == 0.5
        && c.layer_stats;
    if !shaped {
        bail!(
            "only torchvision's DenseNet shape (ImageNet stem without conv bias, bottleneck \
             layers, halving transitions, per-layer running statistics: the densenet121-style \
             presets and imported networks) has torchvision names; this network differs"
        );
    }
    let layout = Layout::new(&ck.config, 1);
    let mut out = Tensors::new();
    for s in &layout.params.slots {
        let tv = torchvision_name(&s.name)
            .ok_or_else(|| anyhow!("{} has no torchvision name", s.name))?;
        let (shape, v) = ck
            .tensors
            .get(&s.name)
            .ok_or_else(|| anyhow!("the checkpoint lacks {}", s.name))?;
        out.insert(tv, (shape.clone(), v.clone()));
    }
    for s in &layout.stats.slots {
        let Some(module) = torchvision_module(&s.name) else {
            continue;
        };
        for stat in ["running_mean", "running_var"] {
            let (shape, v) = ck
                .tensors
                .get(&format!("{}.{stat}", s.name))
                .ok_or_else(|| anyhow!("the checkpoint lacks {}.{stat}", s.name))?;
            out.insert(format!("{module}.{stat}"), (shape.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// Reads a torchvision or timm DenseNet file: safetensors (by its content), else a PyTorch
/// `.pth`/`.pt` archive.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_file(path: &std::path::Path) -> Result<Tensors> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let shown = path.display().to_string();
    // A safetensors file starts with its header's length, then `{`.
    if bytes.len() > 8 && bytes[8] == b'{' {
        return read_safetensors(&bytes, &shown);
    }
    pth::read(path)
}

/// Writes `ck` under torchvision's names as safetensors (F32), for
/// `model.load_state_dict(safetensors.torch.load_file(path), strict=False)`: torchvision's
/// `num_batches_tracked` counters are not written.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_torchvision(ck: &Checkpoint, path: &std::path::Path) -> Result<()> {
    let tensors = to_torchvision(ck)?;
    let bytes: Vec<(&String, Vec<u8>, &Vec<usize>)> = tensors
        .iter()
        .map(|(n, (shape, v))| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, shape)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)?;
            Ok((n.as_str(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let data = safetensors::serialize(views, None)?;
    crate::atomic_file::write_atomic(path, &data)
}
