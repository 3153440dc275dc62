//! What the tuner needs of a convolution launch: its candidate configurations on a device
//! and, for each, its dispatches on scratch buffers of the launch's shape.

use super::{
    choose_for, data_in, forward_in, is_tiled, regtile, tiled, weight_in, Conv2dParams, Direction,
    SHADERS,
};
use crate::error::Result;
use crate::gpu::{DType, GpuBuffer};
use crate::kernels::{Config, Dispatch, Kernels, Needs};
use crate::ops::scratch::Draws;

/// The configuration the op's rule gives launch `dir` of `p` on `k`'s device (what runs
/// untuned): the baseline every candidate is compared with.
pub fn default_config(k: &Kernels, dir: Direction, p: &Conv2dParams, dtype: DType) -> Config {
    Config::of(choose_for(k, dir.channels(p), dtype))
}

/// How many partial sums `config` splits launch `dir` of `p` into: two configurations with
/// the same variant and count run the same dispatches.
fn splits_of(config: Config, dir: Direction, p: &Conv2dParams) -> u32 {
    let s = config.split;
    match (dir, is_tiled(config.variant)) {
        (Direction::Forward, true) => tiled::forward_params(p, s).splits,
        (Direction::Data, true) => tiled::data_params(p, s).splits,
        (Direction::Weight, true) => p.with_splits_for(tiled::weight_workgroups(p), s).splits,
        (Direction::Weight, false) => p.with_splits_for(regtile::weight_workgroups(p), s).splits,
        (_, false) => 1,
    }
}

/// Every configuration launch `dir` of `p` may run with on `k`'s device in `dtype`, the
/// default first, each distinct launch once. Variants the adapter cannot run are left out,
/// and so are the cooperative-matrix ones in f32 (they round the operands to f16, which an
/// f32 run did not ask for; `--kernels` still forces them).
pub fn candidates(k: &Kernels, dir: Direction, p: &Conv2dParams, dtype: DType) -> Vec<Config> {
    let mut out = vec![default_config(k, dir, p, dtype)];
    let mut seen = vec![(out[0].variant.name, splits_of(out[0], dir, p))];
    for shader in SHADERS.iter().filter(|s| s.dtypes.contains(&dtype)) {
        for v in shader.variants {
            let coop = matches!(v.needs, Needs::CoopMatrix { .. });
            if v.needs.unmet(k.gpu()).is_some() || (coop && dtype == DType::F32) {
                continue;
            }
            for &split in v.splits {
                let c = Config { variant: v, split };
                let id = (v.name, splits_of(c, dir, p));
                if !seen.contains(&id) {
                    seen.push(id);
                    out.push(c);
                }
            }
        }
    }
    out
}

/// The configuration called `name` (see [`Config::name`]) if `k`'s device runs it in
/// `dtype`: what a cache or checkpoint entry may name (a candidate, or one the candidates
/// left out as the same launch as another).
pub fn config_named(k: &Kernels, name: &str, dtype: DType) -> Option<Config> {
    Config::runnable(&SHADERS, name, dtype, k.gpu())
}

/// Whether two configurations of launch `dir` of `p` give the same bits: the register tiles
/// (16 or 8 channels) sum in the same order whatever the tile, so they agree where they split
/// the reduction alike; every other pair sums in another order. (The tuner still compares
/// their outputs bit for bit before it trusts this.)
pub fn same_bits(a: Config, b: Config, dir: Direction, p: &Conv2dParams) -> bool {
    let family = |c: Config| match is_tiled(c.variant) {
        true => c.variant.name,
        false => "register tiles",
    };
    family(a) == family(b) && splits_of(a, dir, p) == splits_of(b, dir, p)
}

/// Tensors of one launch shape, large enough for every configuration: seeded non-zero inputs
/// (so configurations can be compared) and one output per direction.
pub struct Scratch {
    p: Conv2dParams,
    x: GpuBuffer,
    affine: GpuBuffer,
    weight: GpuBuffer,
    bias: Option<GpuBuffer>,
    dy: GpuBuffer,
    y: GpuBuffer,
    dx: GpuBuffer,
    dweight: GpuBuffer,
    workspace: GpuBuffer,
    packed_dy: GpuBuffer,
    partials: GpuBuffer,
}

impl Scratch {
    /// Tensors for `p` (at offset 0) with `dtype` activations, inputs drawn from `seed`. The
    /// input is read through a fused BN -> ReLU, as every conv but the first one's is.
    pub fn new(k: &Kernels, p: &Conv2dParams, dtype: DType, seed: u64) -> Result<Scratch> {
        let gpu = k.gpu();
        let p = Conv2dParams {
            x_offset: 0,
            y_offset: 0,
            ..*p
        };
        let mut draw = Draws::new(gpu, dtype, seed);
        let c = p.c_in as u64;
        let affine: Vec<f32> = draw
            .uniform(c, 0.5, 1.5)
            .into_iter()
            .zip(draw.uniform(c, -0.5, 0.5))
            .flat_map(|(scale, shift)| [scale, shift])
            .collect();
        let (ws, partials) = (p.workspace_len().max(1), p.partials_len().max(1));
        Ok(Scratch {
            x: draw.act("tune x", p.x_len(), -1.0, 1.0)?,
            affine: gpu.upload("tune affine", &affine)?,
            weight: draw.f32s("tune weight", p.weight_len(), -0.5, 0.5)?,
            bias: (p.has_bias != 0)
                .then(|| draw.f32s("tune bias", p.c_out as u64, -0.5, 0.5))
                .transpose()?,
            dy: draw.act("tune dy", p.y_len(), -1.0, 1.0)?,
            y: gpu.zeros_of("tune y", dtype, p.y_len())?,
            dx: gpu.zeros_of("tune dx", dtype, p.x_len())?,
            dweight: gpu.zeros("tune dweight", p.weight_len())?,
            workspace: gpu.zeros("tune workspace", ws)?,
            packed_dy: gpu.zeros_of("tune packed dy", dtype, ws)?,
            partials: gpu.zeros("tune partials", partials)?,
            p,
        })
    }

    /// The dispatches of launch `dir` in `config`: the forward writes y, the data gradient
    /// writes dx, the weight gradient adds into dweight.
    pub fn dispatches(&self, k: &Kernels, dir: Direction, config: Config) -> Result<Vec<Dispatch>> {
        let (p, c) = (&self.p, Some(config));
        let affine = Some(self.affine.view());
        let ws = Some(self.workspace.view());
        match dir {
            Direction::Forward => {
                let bias = self.bias.as_ref().map(|b| b.view());
                let (x, w, y) = (self.x.view(), self.weight.view(), self.y.view());
                forward_in(c, k, p, x, affine, w, bias, y, ws)
            }
            Direction::Data => {
                let p = p.overwriting();
                let (dy, w, dx) = (self.dy.view(), self.weight.view(), self.dx.view());
                data_in(c, k, &p, dy, w, dx, ws)
            }
            Direction::Weight => {
                let packed = Some(self.packed_dy.view());
                let (x, dy, partials) = (self.x.view(), self.dy.view(), self.partials.view());
                weight_in(
                    c,
                    k,
                    p,
                    x,
                    affine,
                    dy,
                    packed,
                    partials,
                    self.dweight.view(),
                )
            }
        }
    }

    /// The output of launch `dir` as it stands.
    pub fn output(&self, k: &Kernels, dir: Direction) -> Result<Vec<f32>> {
        k.gpu().read_floats(self.output_buffer(dir))
    }

    /// Zeroes the output of launch `dir` (the weight gradient adds into it).
    pub fn clear_output(&self, k: &Kernels, dir: Direction) -> Result<()> {
        let buf = self.output_buffer(dir);
        k.gpu().write_floats(buf, &vec![0.0; buf.len as usize])
    }

    fn output_buffer(&self, dir: Direction) -> &GpuBuffer {
        match dir {
            Direction::Forward => &self.y,
            Direction::Data => &self.dx,
            Direction::Weight => &self.dweight,
        }
    }
}
