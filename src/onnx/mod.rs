//! Exporting a trained network as ONNX: the evaluation graph (batch norms with their running
//! statistics), the input normalization the recipe trained with, and the weights as
//! initializers, so onnxruntime, TensorRT, OpenVINO or a browser runs the model without us.
//!
//! The graph is what PyTorch's DenseNet exports: a dense layer is BN -> ReLU -> [1x1 conv ->
//! BN -> ReLU ->] 3x3 conv and a Concat along channels; a transition is BN -> ReLU -> 1x1 conv
//! -> 2x2 average pool. Input `images`: float32 [batch, C, H, W], pixels in [0, 1] as our
//! loaders give them (resized to the network's input); output `logits`: float32
//! [batch, classes]. The batch is a named, dynamic dimension.

pub mod proto;

use anyhow::Result;

use crate::checkpoint::Checkpoint;
use crate::model::config::{DenseNetConfig, Stem};
use crate::model::layout::{BnSlots, ConvSlots, Layout, SlotId};
use crate::ops::batchnorm::EPS;
use proto::*;

/// The operator set the graph is written against (all its operators exist since opset 13).
pub const OPSET: i64 = 17;
/// The ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The graph's input and output names.
pub const INPUT: &str = "images";
pub const OUTPUT: &str = "logits";

/// A trained network's values, in the layout's arena order.
pub struct Weights<'a> {
    pub params: &'a [f32],
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
    /// Per-channel (mean, std) the inputs are normalized with, if the recipe does.
    pub normalize: Option<&'a [(f32, f32)]>,
}

/// The ONNX model of `cfg` with `weights`; `class_names` go into the metadata.
pub fn model(cfg: &DenseNetConfig, weights: &Weights<'_>, class_names: &[String]) -> ModelProto {
    let layout = Layout::new(cfg, 1);
    let mut g = Graph {
        layout: &layout,
        w: weights,
        nodes: Vec::new(),
        initializer: Vec::new(),
    };
    let logits = g.network(cfg);
    debug_assert_eq!(logits, OUTPUT);
    let (c, s) = (cfg.in_channels as i64, cfg.image_size as i64);
    let graph = GraphProto {
        node: g.nodes,
        name: "densenet".into(),
        initializer: g.initializer,
        doc_string: String::new(),
        input: vec![value_info(
            INPUT,
            &[None, Some(c), Some(s), Some(s)],
            "float32 images, batch x channels x height x width, pixels in [0, 1]",
        )],
        output: vec![value_info(
            OUTPUT,
            &[None, Some(cfg.classes as i64)],
            "float32 logits, batch x classes (softmax gives the probabilities)",
        )],
    };
    let names = serde_json::to_string(class_names).expect("strings serialize");
    let config = serde_json::to_string(cfg).expect("the config serializes");
    ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: "densenet-wgpu".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: Some(1),
        doc_string: "A DenseNet trained by densenet-wgpu. Input `images`: float32 \
                     [batch, C, H, W], pixels in [0, 1]; the normalization it trained with is \
                     part of the graph. Output `logits`: float32 [batch, classes]."
            .into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: Some(OPSET),
        }],
        metadata_props: vec![
            entry("class_names", names),
            entry("densenet_config", config),
        ],
    }
}

/// The ONNX model of a checkpoint (its running statistics, normalization and class names).
pub fn from_checkpoint(ck: &Checkpoint) -> Result<ModelProto> {
    ck.config.validate()?;
    let layout = Layout::new(&ck.config, 1);
    let params = ck.arena(&layout.params, "", "")?;
    let running_mean = ck.arena(&layout.stats, "", ".running_mean")?;
    let running_var = ck.arena(&layout.stats, "", ".running_var")?;
    let weights = Weights {
        params: &params,
        running_mean: &running_mean,
        running_var: &running_var,
        normalize: ck.recipe.augment.normalize.as_deref(),
    };
    Ok(model(&ck.config, &weights, &ck.class_names))
}

/// Writes `model` to `path` (through a temporary file, so a failed write leaves nothing).
#[cfg(not(target_arch = "wasm32"))]
pub fn save(model: &ModelProto, path: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    use prost::Message;
    crate::atomic_file::write_atomic(path, &model.encode_to_vec())
        .with_context(|| format!("writing the ONNX model {}", path.display()))
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value,
    }
}

/// A float tensor's description; `None` dimensions are the dynamic batch.
fn value_info(name: &str, dims: &[Option<i64>], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            dim_value: *d,
            dim_param: d.is_none().then(|| "batch".to_string()),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: doc.into(),
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: Some(ATTR_INTS),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: Some(value),
        r#type: Some(ATTR_INT),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: Some(value),
        r#type: Some(ATTR_FLOAT),
        ..Default::default()
    }
}

/// The graph under construction: nodes in execution order, and their initializers.
struct Graph<'a> {
    layout: &'a Layout,
    w: &'a Weights<'a>,
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
}

impl Graph<'_> {
    /// Adds an initializer; returns its name.
    fn constant(&mut self, name: String, dims: &[i64], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, values.len());
        self.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(FLOAT),
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// The parameter in `slot`, under its checkpoint name.
    fn param(&mut self, slot: SlotId) -> String {
        let s = &self.layout.params.slots[slot];
        let values = &self.w.params[s.offset as usize..][..s.len as usize];
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        self.constant(s.name.clone(), &dims, values)
    }

    /// Adds the node `name` running `op` on `inputs`; returns its output's name.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let output = format!("{name}.out");
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute: attrs,
        });
        output
    }

    fn conv(&mut self, x: String, slots: ConvSlots, (r, stride, pad): (i64, i64, i64)) -> String {
        let weight = self.param(slots.weight);
        let name = weight.trim_end_matches(".weight").to_string();
        let mut inputs = vec![x, weight];
        if let Some(b) = slots.bias {
            inputs.push(self.param(b));
        }
        let attrs = vec![
            ints("kernel_shape", &[r, r]),
            ints("strides", &[stride, stride]),
            ints("pads", &[pad, pad, pad, pad]),
        ];
        self.node("Conv", &name, inputs, attrs)
    }

    /// BN over the first `c` channels of statistics slot `stat` (a dense block's layers share
    /// their block's running statistics, each reading the channels it sees), then ReLU.
    fn bn_relu(&mut self, x: String, slots: BnSlots, stat: SlotId, c: u32) -> String {
        let gamma = self.param(slots.gamma);
        let beta = self.param(slots.beta);
        let name = gamma.trim_end_matches(".weight").to_string();
        let at = self.layout.stats.slots[stat].offset as usize;
        let range = at..at + c as usize;
        let (rm, rv) = (self.w.running_mean, self.w.running_var);
        let mean = self.constant(
            format!("{name}.running_mean"),
            &[c as i64],
            &rm[range.clone()],
        );
        let var = self.constant(format!("{name}.running_var"), &[c as i64], &rv[range]);
        let inputs = vec![x, gamma, beta, mean, var];
        let y = self.node(
            "BatchNormalization",
            &name,
            inputs,
            vec![float("epsilon", EPS)],
        );
        self.node("Relu", &format!("{name}.relu"), vec![y], vec![])
    }

    /// Subtracts the per-channel mean and divides by the std, as the loader does.
    fn normalize(&mut self, x: String, stats: &[(f32, f32)]) -> String {
        let c = stats.len() as i64;
        let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
        let std: Vec<f32> = stats.iter().map(|s| s.1).collect();
        let mean = self.constant("normalize.mean".into(), &[1, c, 1, 1], &mean);
        let std = self.constant("normalize.std".into(), &[1, c, 1, 1], &std);
        let centered = self.node("Sub", "normalize.sub", vec![x, mean], vec![]);
        self.node("Div", "normalize.div", vec![centered, std], vec![])
    }

    /// The whole evaluation forward, from [`INPUT`] to [`OUTPUT`].
    fn network(&mut self, cfg: &DenseNetConfig) -> String {
        let layout = self.layout;
        let mut x = INPUT.to_string();
        if let Some(stats) = self.w.normalize {
            x = self.normalize(x, stats);
        }
        let mut cur = match (cfg.stem, layout.stem.bn) {
            (Stem::ImageNet { channels }, Some((bn, stat))) => {
                let s = self.conv(x, layout.stem.conv, (7, 2, 3));
                let s = self.bn_relu(s, bn, stat, channels);
                let attrs = vec![
                    ints("kernel_shape", &[3, 3]),
                    ints("strides", &[2, 2]),
                    ints("pads", &[1, 1, 1, 1]),
                ];
                self.node("MaxPool", "stem.pool", vec![s], attrs)
            }
            _ => self.conv(x, layout.stem.conv, (3, 1, 1)),
        };
        for (bi, block) in layout.blocks.iter().enumerate() {
            if bi > 0 {
                let tr = layout.transitions[bi - 1];
                let stats = tr.running.unwrap_or(layout.blocks[bi - 1].stats);
                let t = self.bn_relu(cur, tr.bn, stats, tr.c_in);
                let t = self.conv(t, tr.conv, (1, 1, 0));
                let attrs = vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])];
                cur = self.node(
                    "AveragePool",
                    &format!("transitions.{}.pool", bi - 1),
                    vec![t],
                    attrs,
                );
            }
            for (li, l) in block.layers.iter().enumerate() {
                // A reader's own running statistics where it keeps them (`layer_stats`).
                let stats = l.running.unwrap_or(block.stats);
                let mut h = self.bn_relu(cur.clone(), l.bn, stats, l.c_in);
                if let Some(bt) = l.bottleneck {
                    h = self.conv(h, bt.conv, (1, 1, 0));
                    h = self.bn_relu(h, bt.bn, bt.stats, bt.width);
                }
                let new = self.conv(h, l.conv, (3, 1, 1));
                let name = format!("blocks.{bi}.layers.{li}.concat");
                cur = self.node("Concat", &name, vec![cur, new], vec![int("axis", 1)]);
            }
        }
        let last = layout
            .blocks
            .last()
            .expect("a validated network has a block")
            .stats;
        let stats = layout.head.running.unwrap_or(last);
        let h = self.bn_relu(cur, layout.head.bn, stats, layout.head.channels);
        let pooled = self.node("GlobalAveragePool", "head.pool", vec![h], vec![]);
        let flat = self.node(
            "Flatten",
            "head.flatten",
            vec![pooled],
            vec![int("axis", 1)],
        );
        let (w, b) = (self.param(layout.head.weight), self.param(layout.head.bias));
        self.nodes.push(NodeProto {
            input: vec![flat, w, b],
            output: vec![OUTPUT.into()],
            name: "head.linear".into(),
            op_type: "Gemm".into(),
            attribute: vec![int("transB", 1)],
        });
        OUTPUT.into()
    }
}
