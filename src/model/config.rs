//! What a DenseNet is: its stem, blocks, growth rate, bottleneck and compression, and the
//! presets the CLI offers.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The layers before the first dense block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Stem {
    /// Conv 7x7 stride 2 pad 3 -> BN -> ReLU -> max-pool 3x3 stride 2 pad 1 (d2l, ImageNet):
    /// a quarter of the input resolution.
    ImageNet { channels: u32 },
    /// Conv 3x3 stride 1 pad 1 (CIFAR-style DenseNets): full resolution; the first dense
    /// layer's BN -> ReLU follows it.
    Cifar { channels: u32 },
}

impl Stem {
    pub fn channels(&self) -> u32 {
        match *self {
            Stem::ImageNet { channels } | Stem::Cifar { channels } => channels,
        }
    }
}

/// How conv and linear weights start (biases as PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)));
/// batch-norm scales start at 1 and shifts at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Xavier (Glorot) uniform, as the d2l recipe.
    XavierUniform,
    /// Kaiming (He) normal with fan_in, as torchvision's DenseNet.
    KaimingNormal,
}

/// A DenseNet, in the terms of Huang et al. and of the d2l lecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// Channels of the input images (1 for Fashion-MNIST, 3 for CIFAR-10).
    pub in_channels: u32,
    /// The (square) size images are resized to before the network.
    pub image_size: u32,
    pub classes: u32,
    pub stem: Stem,
    /// Conv blocks per dense block, e.g. [4, 4, 4, 4].
    pub blocks: Vec<u32>,
    /// Channels each conv block adds (k).
    pub growth_rate: u32,
    /// DenseNet-BC: a 1x1 conv to `bottleneck * growth_rate` channels before each 3x3.
    pub bottleneck: Option<u32>,
    /// Transition output channels = floor(channels * compression) (d2l: 0.5).
    pub compression: f32,
    /// Biases on the convolutions (PyTorch's nn.Conv2d default, so d2l has them).
    pub conv_bias: bool,
    pub init: Init,
    /// Every batch norm that reads a block (its layers', the transition's, the head's) keeps
    /// running statistics of its own, as torchvision's modules do, instead of sharing the
    /// block's; batch statistics stay shared (they are equal). Networks imported from
    /// torchvision have it: there the copies differ. Our own presets do not need it.
    #[serde(default)]
    pub layer_stats: bool,
    /// Multi-label: `classes` independent labels, each a sigmoid trained with binary
    /// cross-entropy (CheXNet's 14 findings), instead of one softmax over classes.
    #[serde(default)]
    pub multi_label: bool,
}

/// The channel bookkeeping of one dense block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    /// Channels entering the block.
    pub c_in: u32,
    /// Channels after its last layer: c_in + layers * growth.
    pub c_out: u32,
    pub layers: u32,
    /// Spatial size inside the block.
    pub size: u32,
}

impl DenseNetConfig {
    /// The d2l lecture's network: 1x96x96 inputs, stem 64, blocks [4, 4, 4, 4], growth 32,
    /// halving transitions, 10 classes (758,226 parameters).
    pub fn d2l() -> Self {
        DenseNetConfig {
            in_channels: 1,
            image_size: 96,
            classes: 10,
            stem: Stem::ImageNet { channels: 64 },
            blocks: vec![4, 4, 4, 4],
            growth_rate: 32,
            bottleneck: None,
            compression: 0.5,
            conv_bias: true,
            init: Init::XavierUniform,
            layer_stats: false,
            multi_label: false,
        }
    }

    /// A DenseNet-BC for 28x28 inputs, sized for machines without a GPU.
    pub fn small() -> Self {
        DenseNetConfig {
            in_channels: 1,
            image_size: 28,
            classes: 10,
            stem: Stem::Cifar { channels: 16 },
            blocks: vec![2, 3, 3],
            growth_rate: 12,
            bottleneck: None,
            compression: 0.5,
            conv_bias: false,
            init: Init::KaimingNormal,
            layer_stats: false,
            multi_label: false,
        }
    }

    /// DenseNet (L=40, k=12) of Huang et al. for 32x32 CIFAR images: a 16-channel stem, three
    /// blocks of 12 layers, no bottleneck or compression (about 1.0M parameters).
    pub fn densenet40() -> Self {
        DenseNetConfig {
            in_channels: 3,
            image_size: 32,
            classes: 10,
            stem: Stem::Cifar { channels: 16 },
            blocks: vec![12, 12, 12],
            growth_rate: 12,
            bottleneck: None,
            compression: 1.0,
            conv_bias: false,
            init: Init::KaimingNormal,
            layer_stats: false,
            multi_label: false,
        }
    }

    /// DenseNet-BC (L=100, k=12) of Huang et al.: a 2k-channel stem, three blocks of 16
    /// bottleneck layers (1x1 to 4k channels, then 3x3), transitions halving the channels
    /// (about 0.8M parameters).
    pub fn bc100() -> Self {
        DenseNetConfig {
            stem: Stem::Cifar { channels: 24 },
            blocks: vec![16, 16, 16],
            bottleneck: Some(4),
            compression: 0.5,
            ..Self::densenet40()
        }
    }

    /// torchvision's `DenseNet(growth_rate, block_config, num_init_features, bn_size,
    /// num_classes)`: the ImageNet stem without conv bias, BC layers (a 1x1 conv to
    /// bn_size x growth channels), halving transitions, 224x224 RGB input, Kaiming init, and
    /// running statistics per batch norm as its modules keep them.
    pub fn torchvision(
        growth_rate: u32,
        blocks: &[u32],
        init_features: u32,
        bn_size: u32,
        classes: u32,
    ) -> Self {
        DenseNetConfig {
            in_channels: 3,
            image_size: 224,
            classes,
            stem: Stem::ImageNet {
                channels: init_features,
            },
            blocks: blocks.to_vec(),
            growth_rate,
            bottleneck: Some(bn_size),
            compression: 0.5,
            conv_bias: false,
            init: Init::KaimingNormal,
            layer_stats: true,
            multi_label: false,
        }
    }

    /// torchvision's densenet121 (7,978,856 parameters with 1000 classes).
    pub fn densenet121() -> Self {
        Self::torchvision(32, &[6, 12, 24, 16], 64, 4, 1000)
    }

    /// torchvision's densenet169 (14,149,480 parameters).
    pub fn densenet169() -> Self {
        Self::torchvision(32, &[6, 12, 32, 32], 64, 4, 1000)
    }

    /// torchvision's densenet201 (20,013,928 parameters).
    pub fn densenet201() -> Self {
        Self::torchvision(32, &[6, 12, 48, 32], 64, 4, 1000)
    }

    /// torchvision's densenet161 (28,681,000 parameters).
    pub fn densenet161() -> Self {
        Self::torchvision(48, &[6, 12, 36, 24], 96, 4, 1000)
    }

    /// DenseNet-264 of Huang et al. (growth 32, blocks 6-12-64-48), for memory tables.
    pub fn densenet264() -> Self {
        Self::torchvision(32, &[6, 12, 64, 48], 64, 4, 1000)
    }

    /// The built-in demo's network: two short blocks on the synthetic images.
    pub fn tiny() -> Self {
        DenseNetConfig {
            in_channels: 1,
            image_size: crate::data::synthetic::SIZE,
            classes: 10,
            stem: Stem::Cifar { channels: 8 },
            blocks: vec![3, 3],
            growth_rate: 8,
            bottleneck: None,
            compression: 0.5,
            conv_bias: false,
            init: Init::KaimingNormal,
            layer_stats: false,
            multi_label: false,
        }
    }

    /// Checks that the network fits together; one-line errors naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::shape("DenseNetConfig", msg));
        if self.in_channels == 0 || self.classes == 0 || self.growth_rate == 0 {
            return bad("in_channels, classes and growth_rate must be positive".into());
        }
        if self.stem.channels() == 0 {
            return bad("the stem needs at least one channel".into());
        }
        if self.blocks.is_empty() || self.blocks.contains(&0) {
            return bad(format!(
                "blocks {:?}: need at least one block, each with layers",
                self.blocks
            ));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return bad(format!(
                "compression {} must be in (0, 1]",
                self.compression
            ));
        }
        if self.bottleneck == Some(0) {
            return bad("bottleneck width must be positive".into());
        }
        let mut size = self.stem_output_size();
        if size == 0 {
            return bad(format!(
                "image size {} is too small for the stem",
                self.image_size
            ));
        }
        for (i, block) in self.block_shapes().iter().enumerate() {
            if block.size == 0 {
                return bad(format!(
                    "image size {} halves to nothing before block {i}; use fewer blocks or larger images",
                    self.image_size
                ));
            }
            size = block.size;
        }
        let _ = size;
        Ok(())
    }

    /// Spatial size after the stem.
    pub fn stem_output_size(&self) -> u32 {
        match self.stem {
            // conv 7x7/2 pad 3, then max-pool 3x3/2 pad 1: each (s + 2 - 3) / 2 + 1.
            Stem::ImageNet { .. } => {
                let conv = (self.image_size + 6).saturating_sub(7) / 2 + 1;
                (conv + 2).saturating_sub(3) / 2 + 1
            }
            Stem::Cifar { .. } => self.image_size,
        }
    }

    /// Channels and sizes of every block; a transition (2x2 average pool) sits between two.
    pub fn block_shapes(&self) -> Vec<BlockShape> {
        let mut c = self.stem.channels();
        let mut size = self.stem_output_size();
        let mut out = Vec::new();
        for (i, &layers) in self.blocks.iter().enumerate() {
            if i > 0 {
                c = self.transition_channels(c);
                size /= 2;
            }
            let shape = BlockShape {
                c_in: c,
                c_out: c + layers * self.growth_rate,
                layers,
                size,
            };
            c = shape.c_out;
            out.push(shape);
        }
        out
    }

    pub fn transition_channels(&self, c: u32) -> u32 {
        ((c as f32 * self.compression).floor() as u32).max(1)
    }

    /// Channels into the classifier head.
    pub fn head_channels(&self) -> u32 {
        self.block_shapes().last().map_or(0, |b| b.c_out)
    }
}
