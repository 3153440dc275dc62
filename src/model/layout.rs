//! Where every parameter and every batch-norm statistic of a DenseNet lives: named slots in
//! flat arenas, so one buffer holds all weights (one SGD dispatch, one gradient clear) and
//! checkpoints name each tensor.
//!
//! Batch-norm statistics are kept per dense block, not per layer: a block's channels never
//! change once written, so every layer (and the transition or head after the block) that
//! normalizes channel c uses the same batch mean and variance, computed once when c is
//! produced; running statistics are therefore equal across those layers too (docs/DESIGN.md).
//! A network imported from torchvision, whose layers' running statistics differ, has
//! `layer_stats`: each reader of a block then has a running-statistics slot of its own.

use super::config::{BlockShape, DenseNetConfig, Init, Stem};

/// A named tensor inside an arena.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    /// PyTorch order (e.g. conv weights (K, C, R, S)).
    pub shape: Vec<u32>,
    /// First element; a multiple of the arena's alignment.
    pub offset: u64,
    pub len: u64,
}

/// Named slots packed into one flat buffer, each starting on an aligned element.
#[derive(Clone, Debug, Default)]
pub struct Arena {
    pub slots: Vec<Slot>,
    pub len: u64,
    align: u64,
}

pub type SlotId = usize;

impl Arena {
    /// `align` in elements (the adapter's storage offset alignment / 4, at least 1).
    pub fn new(align: u64) -> Self {
        Arena {
            slots: Vec::new(),
            len: 0,
            align: align.max(1),
        }
    }

    pub fn add(&mut self, name: impl Into<String>, shape: &[u32]) -> SlotId {
        let len = shape.iter().map(|&d| d as u64).product();
        let offset = self.len.div_ceil(self.align) * self.align;
        self.slots.push(Slot {
            name: name.into(),
            shape: shape.to_vec(),
            offset,
            len,
        });
        self.len = offset + len;
        self.slots.len() - 1
    }

    pub fn find(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// Elements in slots (padding excluded).
    pub fn elements(&self) -> u64 {
        self.slots.iter().map(|s| s.len).sum()
    }
}

/// Gamma and beta of one batch norm.
#[derive(Clone, Copy, Debug)]
pub struct BnSlots {
    pub gamma: SlotId,
    pub beta: SlotId,
}

#[derive(Clone, Copy, Debug)]
pub struct ConvSlots {
    pub weight: SlotId,
    pub bias: Option<SlotId>,
}

#[derive(Clone, Debug)]
pub struct StemLayout {
    pub conv: ConvSlots,
    /// BN of the ImageNet stem (its own statistics slot); none for the CIFAR stem.
    pub bn: Option<(BnSlots, SlotId)>,
}

/// DenseNet-BC's 1x1 bottleneck in front of a layer's 3x3 conv.
#[derive(Clone, Copy, Debug)]
pub struct BottleneckLayout {
    pub width: u32,
    pub conv: ConvSlots,
    pub bn: BnSlots,
    /// Statistics of the bottleneck's output (its own, not the block's).
    pub stats: SlotId,
}

/// One conv block: BN -> ReLU -> [1x1 conv -> BN -> ReLU ->] 3x3 conv, reading the block's
/// channels [0, c_in) and writing [c_in, c_in + growth).
#[derive(Clone, Copy, Debug)]
pub struct LayerLayout {
    pub c_in: u32,
    pub bn: BnSlots,
    /// The BN's own running statistics (`layer_stats`), else the block's serve.
    pub running: Option<SlotId>,
    pub bottleneck: Option<BottleneckLayout>,
    pub conv: ConvSlots,
}

#[derive(Clone, Debug)]
pub struct BlockLayout {
    pub shape: BlockShape,
    /// Batch and running statistics of all the block's channels.
    pub stats: SlotId,
    pub layers: Vec<LayerLayout>,
}

/// BN -> ReLU -> 1x1 conv -> 2x2 average pool between two blocks.
#[derive(Clone, Copy, Debug)]
pub struct TransitionLayout {
    pub c_in: u32,
    pub c_out: u32,
    pub bn: BnSlots,
    /// The BN's own running statistics (`layer_stats`).
    pub running: Option<SlotId>,
    pub conv: ConvSlots,
}

/// BN -> ReLU -> global average pool -> linear.
#[derive(Clone, Copy, Debug)]
pub struct HeadLayout {
    pub channels: u32,
    pub bn: BnSlots,
    /// The BN's own running statistics (`layer_stats`).
    pub running: Option<SlotId>,
    pub weight: SlotId,
    pub bias: SlotId,
}

/// How to initialize a parameter slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamRole {
    Weight { fan_in: u32, fan_out: u32 },
    Bias { fan_in: u32 },
    Gamma,
    Beta,
}

/// Every slot of a network, with the structure that refers to them.
#[derive(Clone, Debug)]
pub struct Layout {
    pub params: Arena,
    pub roles: Vec<ParamRole>,
    /// Per-channel statistics (the same slots index the batch mean, batch variance,
    /// running mean and running variance buffers).
    pub stats: Arena,
    pub stem: StemLayout,
    pub blocks: Vec<BlockLayout>,
    pub transitions: Vec<TransitionLayout>,
    pub head: HeadLayout,
}

struct Builder {
    params: Arena,
    roles: Vec<ParamRole>,
    stats: Arena,
    bias: bool,
    layer_stats: bool,
}

impl Builder {
    fn conv(&mut self, name: &str, k: u32, c: u32, r: u32) -> ConvSlots {
        let (fan_in, fan_out) = (c * r * r, k * r * r);
        let weight = self.params.add(format!("{name}.weight"), &[k, c, r, r]);
        self.roles.push(ParamRole::Weight { fan_in, fan_out });
        let bias = self.bias.then(|| {
            self.roles.push(ParamRole::Bias { fan_in });
            self.params.add(format!("{name}.bias"), &[k])
        });
        ConvSlots { weight, bias }
    }

    /// Layer `li` of block `bi`, reading `c_in` channels.
    fn layer(&mut self, cfg: &DenseNetConfig, bi: usize, li: u32, c_in: u32) -> LayerLayout {
        let k = cfg.growth_rate;
        let name = format!("blocks.{bi}.layers.{li}");
        let bn = self.bn(&format!("{name}.bn"), c_in);
        let running = self.running(&format!("{name}.bn"), c_in);
        let bottleneck = cfg.bottleneck.map(|w| {
            let width = w * k;
            BottleneckLayout {
                width,
                conv: self.conv(&format!("{name}.conv1"), width, c_in, 1),
                bn: self.bn(&format!("{name}.bn2"), width),
                stats: self.stats.add(format!("{name}.bn2"), &[width]),
            }
        });
        let conv_in = bottleneck.map_or(c_in, |bt| bt.width);
        let conv = self.conv(&format!("{name}.conv"), k, conv_in, 3);
        LayerLayout {
            c_in,
            bn,
            running,
            bottleneck,
            conv,
        }
    }

    /// A reader's own running statistics, where the network keeps them per reader.
    fn running(&mut self, name: &str, c: u32) -> Option<SlotId> {
        self.layer_stats.then(|| self.stats.add(name, &[c]))
    }

    fn bn(&mut self, name: &str, c: u32) -> BnSlots {
        let gamma = self.params.add(format!("{name}.weight"), &[c]);
        self.roles.push(ParamRole::Gamma);
        let beta = self.params.add(format!("{name}.bias"), &[c]);
        self.roles.push(ParamRole::Beta);
        BnSlots { gamma, beta }
    }
}

impl Layout {
    /// The slots of `cfg`, aligned to `align` elements.
    pub fn new(cfg: &DenseNetConfig, align: u64) -> Layout {
        let mut b = Builder {
            params: Arena::new(align),
            roles: Vec::new(),
            // Aligned where readers keep copies: their updates bind slots as views.
            stats: Arena::new(if cfg.layer_stats { align } else { 1 }),
            bias: cfg.conv_bias,
            layer_stats: cfg.layer_stats,
        };
        let c0 = cfg.stem.channels();
        let stem = match cfg.stem {
            Stem::ImageNet { .. } => StemLayout {
                conv: b.conv("stem.conv", c0, cfg.in_channels, 7),
                bn: Some((b.bn("stem.bn", c0), b.stats.add("stem.bn", &[c0]))),
            },
            Stem::Cifar { .. } => StemLayout {
                conv: b.conv("stem.conv", c0, cfg.in_channels, 3),
                bn: None,
            },
        };
        let k = cfg.growth_rate;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (bi, shape) in cfg.block_shapes().into_iter().enumerate() {
            if bi > 0 {
                let c_in = blocks.last().map_or(0, |p: &BlockLayout| p.shape.c_out);
                let name = format!("transitions.{}", bi - 1);
                transitions.push(TransitionLayout {
                    c_in,
                    c_out: shape.c_in,
                    bn: b.bn(&format!("{name}.bn"), c_in),
                    running: b.running(&format!("{name}.bn"), c_in),
                    conv: b.conv(&format!("{name}.conv"), shape.c_in, c_in, 1),
                });
            }
            let stats = b.stats.add(format!("blocks.{bi}"), &[shape.c_out]);
            let layers = (0..shape.layers)
                .map(|li| b.layer(cfg, bi, li, shape.c_in + li * k))
                .collect();
            blocks.push(BlockLayout {
                shape,
                stats,
                layers,
            });
        }
        let channels = cfg.head_channels();
        let bn = b.bn("head.bn", channels);
        let running = b.running("head.bn", channels);
        let weight = b.params.add("head.linear.weight", &[cfg.classes, channels]);
        b.roles.push(ParamRole::Weight {
            fan_in: channels,
            fan_out: cfg.classes,
        });
        let bias = b.params.add("head.linear.bias", &[cfg.classes]);
        b.roles.push(ParamRole::Bias { fan_in: channels });
        Layout {
            params: b.params,
            roles: b.roles,
            stats: b.stats,
            stem,
            blocks,
            transitions,
            head: HeadLayout {
                channels,
                bn,
                running,
                weight,
                bias,
            },
        }
    }

    /// Trainable parameters (what PyTorch's `sum(p.numel())` counts).
    pub fn parameter_count(&self) -> u64 {
        self.params.elements()
    }

    /// Initial parameters (arena layout, padding zero), deterministic by seed.
    pub fn init_params(&self, init: Init, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = vec![0f32; self.params.len as usize];
        for (slot, role) in self.params.slots.iter().zip(&self.roles) {
            let dst = &mut out[slot.offset as usize..][..slot.len as usize];
            let uniform = |rng: &mut fastrand::Rng, a: f32| (rng.f32() * 2.0 - 1.0) * a;
            match *role {
                ParamRole::Gamma => dst.fill(1.0),
                ParamRole::Beta => dst.fill(0.0),
                ParamRole::Bias { fan_in } => {
                    let a = 1.0 / (fan_in as f32).sqrt();
                    dst.iter_mut().for_each(|v| *v = uniform(&mut rng, a));
                }
                ParamRole::Weight { fan_in, fan_out } => match init {
                    Init::XavierUniform => {
                        let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
                        dst.iter_mut().for_each(|v| *v = uniform(&mut rng, a));
                    }
                    Init::KaimingNormal => {
                        let std = (2.0 / fan_in as f32).sqrt();
                        dst.iter_mut().for_each(|v| *v = normal(&mut rng) * std);
                    }
                },
            }
        }
        out
    }
}

impl Layout {
    /// [`Layout::init_params`] with every batch norm's scales and shifts drawn around 1 and 0
    /// (uniform in +-0.5, from `seed ^ 1`): what checks against the reference start from, since
    /// with zero shifts some gradients are exactly zero (BN -> ReLU -> max pool -> BN does not
    /// depend on the first scale) and would check nothing.
    pub fn init_params_varied(&self, init: Init, seed: u64) -> Vec<f32> {
        let mut params = self.init_params(init, seed);
        let mut rng = fastrand::Rng::with_seed(seed ^ 1);
        for (slot, role) in self.params.slots.iter().zip(&self.roles) {
            let base = match role {
                ParamRole::Gamma => 1.0,
                ParamRole::Beta => 0.0,
                _ => continue,
            };
            for v in &mut params[slot.offset as usize..][..slot.len as usize] {
                *v = base + rng.f32() - 0.5;
            }
        }
        params
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f32 {
    let u1 = rng.f32().max(f32::MIN_POSITIVE);
    let u2 = rng.f32();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
