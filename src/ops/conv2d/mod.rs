//! 2-D convolution over channel-major (C, N, H, W) tensors: forward, backward-data,
//! backward-weight (split-K) and backward-bias, in two implementations behind one set of
//! launchers:
//!
//! - [`regtile`]: register tiles of 16 or 8 channels by 4 pixels per invocation, no
//!   workgroup memory and no barriers (what CPU drivers such as llvmpipe run best), operands
//!   packed channel-last by a pass before each GEMM;
//! - [`tiled`]: implicit GEMMs over workgroup-memory tiles (what GPUs run best), reading the
//!   tensors where they lie (no packing pass), the weight gradient walking pixels.
//!
//! Which one a launch uses is the kernel policy's choice (`--kernels` forces either).
//!
//! Shapes (channel-major): x (C_in, N, H, W), weight (C_out, C_in, KH, KW) as in PyTorch,
//! bias (C_out), y (C_out, N, P, Q) with P = (H + 2 PH - KH) / SH + 1, Q likewise.

mod coop;
pub mod regtile;
pub mod tiled;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;

use bytemuck::{Pod, Zeroable};

use super::fault;
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::gpu::{DType, View};
use crate::kernels::{Config, DeviceClass, Dispatch, Kernels, Policy, Shader, Split, Variant};

/// Shapes of one convolution, also its uniform (binding 0). Build with [`Conv2dParams::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Conv2dParams {
    pub n: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    /// First element of x (and dx): a channel offset times N*H*W.
    pub x_offset: u32,
    /// First element of y (and dy): a channel offset times N*P*Q.
    pub y_offset: u32,
    pub has_bias: u32,
    /// Split-K factor of the weight gradient; set by the launcher.
    pub splits: u32,
    /// Output pixels per split; set by the launcher.
    pub chunk: u32,
    /// Non-zero: the input is read as BN -> ReLU of x; set by the launchers when they are
    /// given the BN's (scale, shift) pairs (`affine`).
    pub input_bn_relu: u32,
    /// Non-zero: the data gradient writes dx (`=`) instead of adding into it (`+=`); see
    /// [`Conv2dParams::overwriting`].
    pub overwrite: u32,
}

/// The op's name, as `--kernels` and the tuner name it.
pub const OP: &str = "conv2d";

impl Conv2dParams {
    /// `input` is (N, C_in, H, W) in PyTorch order; kernel, stride and padding are (h, w).
    pub fn new(
        input: [u32; 4],
        c_out: u32,
        kernel: (u32, u32),
        stride: (u32, u32),
        pad: (u32, u32),
        bias: bool,
    ) -> Result<Self> {
        let [n, c_in, h, w] = input;
        ensure_shape!(
            n > 0 && c_in > 0 && h > 0 && w > 0 && c_out > 0,
            OP,
            "input {input:?} and output channels {c_out} must all be positive"
        );
        ensure_shape!(
            kernel.0 > 0 && kernel.1 > 0 && stride.0 > 0 && stride.1 > 0,
            OP,
            "kernel {kernel:?} and stride {stride:?} must be positive"
        );
        ensure_shape!(
            h + 2 * pad.0 >= kernel.0 && w + 2 * pad.1 >= kernel.1,
            OP,
            "kernel {kernel:?} is larger than the padded input {}x{}",
            h + 2 * pad.0,
            w + 2 * pad.1
        );
        Ok(Conv2dParams {
            n,
            c_in,
            h,
            w,
            c_out,
            out_h: (h + 2 * pad.0 - kernel.0) / stride.0 + 1,
            out_w: (w + 2 * pad.1 - kernel.1) / stride.1 + 1,
            kernel_h: kernel.0,
            kernel_w: kernel.1,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_h: pad.0,
            pad_w: pad.1,
            x_offset: 0,
            y_offset: 0,
            has_bias: bias as u32,
            splits: 1,
            chunk: 1,
            input_bn_relu: 0,
            overwrite: 0,
        })
    }

    /// Reads x at input channel `c` of a larger buffer (x's own channels start there).
    pub fn with_x_channel_offset(mut self, c: u32) -> Self {
        self.x_offset = super::channel_offset(c, self.x_len() / self.c_in as u64);
        self
    }

    /// Writes y at output channel `c` of a larger buffer (in-place concatenation).
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        self.y_offset = super::channel_offset(c, self.y_len() / self.c_out as u64);
        self
    }

    pub fn x_len(&self) -> u64 {
        self.c_in as u64 * self.n as u64 * self.h as u64 * self.w as u64
    }
    pub fn y_len(&self) -> u64 {
        self.c_out as u64 * self.n as u64 * self.out_h as u64 * self.out_w as u64
    }
    pub fn weight_len(&self) -> u64 {
        self.c_out as u64 * self.c_in as u64 * self.kernel_h as u64 * self.kernel_w as u64
    }
    /// Multiply-adds of the forward pass (each backward GEMM does as many).
    pub fn macs(&self) -> u64 {
        self.y_len() * self.c_in as u64 * self.kernel_h as u64 * self.kernel_w as u64
    }

    /// Output pixels N*P*Q.
    pub fn npq(&self) -> u64 {
        self.n as u64 * self.out_h as u64 * self.out_w as u64
    }

    /// Taps C_in*KH*KW, the weight gradient's columns.
    pub fn taps(&self) -> u64 {
        self.c_in as u64 * self.kernel_h as u64 * self.kernel_w as u64
    }

    /// The data gradient writes dx (`=`) instead of adding into it: for a dx that holds
    /// nothing yet, so it needs no clearing first.
    pub fn overwriting(mut self) -> Self {
        self.overwrite = 1;
        self
    }

    /// The split-K factor of the weight gradient for an implementation that covers one split
    /// with `workgroups` workgroups: enough to fill a large GPU (512 in all, scaled by `s`),
    /// at least 256 output pixels per split.
    pub(crate) fn with_splits_for(mut self, workgroups: u64, s: Split) -> Self {
        let npq = self.n * self.out_h * self.out_w;
        let splits = s
            .scale(512)
            .div_ceil(workgroups.max(1))
            .clamp(1, npq.div_ceil(256).max(1) as u64) as u32;
        self.chunk = npq.div_ceil(splits);
        self.splits = npq.div_ceil(self.chunk);
        self
    }

    /// Elements of every workspace any implementation of this convolution may use, in any
    /// configuration: an upper bound of [`workspace`] for every policy.
    pub fn workspace_len(&self) -> u64 {
        every_workspace(self)
            .flat_map(|w| [w.forward, w.data, w.packed_dy])
            .max()
            .unwrap_or(0)
    }

    /// Elements of the weight gradient's split-K partial sums, for every implementation and
    /// configuration.
    pub fn partials_len(&self) -> u64 {
        every_workspace(self).map(|w| w.partials).max().unwrap_or(0)
    }

    /// The tuning key of this convolution's launch `dir` with `dtype` activations: the
    /// entry, element type and shape. Offsets and the fused input BN are left out (they do
    /// not change the work), so the memory plan and the launcher agree on it.
    pub fn launch_key(&self, dir: Direction, dtype: DType) -> String {
        let p = self;
        format!(
            "{}[{dtype}] n{} c{} {}x{} k{} r{}x{} s{}x{} p{}x{}{}",
            dir.entry(),
            p.n,
            p.c_in,
            p.h,
            p.w,
            p.c_out,
            p.kernel_h,
            p.kernel_w,
            p.stride_h,
            p.stride_w,
            p.pad_h,
            p.pad_w,
            if p.has_bias != 0 { " bias" } else { "" }
        )
    }

    fn check(&self, what: &str, view: &View<'_>, need: u64) -> Result<()> {
        super::check_len(OP, what, view, need, self)
    }
}

/// The shaders of this op: the register-tile variants, then the workgroup-tiled one.
pub static SHADERS: [&Shader; 2] = [&regtile::SHADER, &tiled::SHADER];

/// The workspaces of both implementations in every split setting.
fn every_workspace(p: &Conv2dParams) -> impl Iterator<Item = Workspace> + '_ {
    Split::ALL
        .iter()
        .flat_map(move |&s| [regtile::workspace(p, s), tiled::workspace(p, s)])
}

/// One of a convolution's three GEMMs, each chosen (and tuned) on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Forward,
    Data,
    Weight,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::Forward, Direction::Data, Direction::Weight];

    /// The launcher's name, as the tuning keys and the reference name it.
    pub fn entry(self) -> &'static str {
        match self {
            Direction::Forward => "conv2d_forward",
            Direction::Data => "conv2d_backward_data",
            Direction::Weight => "conv2d_backward_weight",
        }
    }

    /// The channels the launch tiles: output channels, or input channels for the data
    /// gradient.
    fn channels(self, p: &Conv2dParams) -> u32 {
        match self {
            Direction::Data => p.c_in,
            _ => p.c_out,
        }
    }
}

/// Elements of the workspaces a convolution's launchers use, for one implementation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workspace {
    /// Of the forward: packed weights (register tiles) or split partial sums (workgroup
    /// tiles on small layers).
    pub forward: u64,
    /// Of the data gradient: likewise.
    pub data: u64,
    /// Packed output gradient of the weight gradient.
    pub packed_dy: u64,
    /// Split-K partial sums of the weight gradient.
    pub partials: u64,
}

/// The variant a launch tiling `channels` channels uses: the forced one, else the op's rule
/// (GPUs: the workgroup tiles; CPU drivers: 8-channel register tiles where the channels fit
/// in 8, 16-channel ones elsewhere).
fn choose(policy: &Policy, channels: u32) -> &'static Variant {
    let auto = match (policy.class, channels <= 8) {
        (DeviceClass::Gpu, _) => "wgtile",
        (DeviceClass::Cpu, true) => "tile8",
        (DeviceClass::Cpu, false) => "tile16",
    };
    policy.choose(&SHADERS, auto)
}

/// The variant of a launch on `k`'s device with `dtype` activations: as [`choose`], but a GPU
/// training in f16 multiplies on cooperative matrices where it has a shape of theirs (the
/// operands are f16 already, so nothing is lost); they share the workgroup tiles' split and
/// workspaces, so the plan is the same.
fn choose_for(k: &Kernels, channels: u32, dtype: DType) -> &'static Variant {
    let policy = k.policy();
    let gpu_f16 = policy.class == DeviceClass::Gpu && dtype == DType::F16;
    if policy.forced(OP).is_none() && gpu_f16 {
        let runs = |v: &&'static Variant| v.needs.unmet(k.gpu()).is_none();
        if let Some(v) = tiled::coop_variants().find(runs) {
            return v;
        }
    }
    choose(policy, channels)
}

/// The configuration the op's rule gives a wide layer (more than 8 tiled channels) on `k`'s
/// device in `dtype`: what most launches run untuned.
pub fn rule_config(k: &Kernels, dtype: DType) -> Config {
    Config::of(choose_for(k, 64, dtype))
}

fn is_tiled(v: &'static Variant) -> bool {
    tiled::SHADER.variants.iter().any(|t| std::ptr::eq(t, v))
}

/// The configuration of launch `dir` of `p` as the memory plan sees it: forced or tuned,
/// else the op's rule (a cooperative-matrix variant the launcher may take instead splits
/// and uses workspaces as the workgroup tiles do).
fn planned_config(policy: &Policy, dir: Direction, p: &Conv2dParams, dtype: DType) -> Config {
    policy
        .config_for(OP, &p.launch_key(dir, dtype))
        .unwrap_or_else(|| Config::of(choose(policy, dir.channels(p))))
}

/// The configuration launch `dir` of `p` runs with on `k`'s device: forced or tuned, else
/// the op's rule for the adapter ([`choose_for`]).
pub fn config_for(k: &Kernels, dir: Direction, p: &Conv2dParams, dtype: DType) -> Config {
    k.policy()
        .config_for(OP, &p.launch_key(dir, dtype))
        .unwrap_or_else(|| Config::of(choose_for(k, dir.channels(p), dtype)))
}

/// The workspaces of `config`'s implementation for `p`.
fn workspace_of(config: Config, p: &Conv2dParams) -> Workspace {
    match is_tiled(config.variant) {
        true => tiled::workspace(p, config.split),
        false => regtile::workspace(p, config.split),
    }
}

/// The workspaces `p`'s launches need under `policy` with `dtype` activations: the forward,
/// the data gradient and the weight gradient each by the configuration it gets.
pub fn workspace(policy: &Policy, p: &Conv2dParams, dtype: DType) -> Workspace {
    let of = |dir| workspace_of(planned_config(policy, dir, p, dtype), p);
    let (f, d, w) = (
        of(Direction::Forward),
        of(Direction::Data),
        of(Direction::Weight),
    );
    Workspace {
        forward: f.forward,
        data: d.data,
        packed_dy: w.packed_dy,
        partials: w.partials,
    }
}

/// The params with the fused input BN -> ReLU on when `affine` (2 * C_in values) is given.
fn with_affine(p: &Conv2dParams, affine: &Option<View<'_>>) -> Result<Conv2dParams> {
    let mut p = *p;
    if let Some(a) = affine {
        p.check("affine", a, 2 * p.c_in as u64)?;
        p.input_bn_relu = 1;
    }
    Ok(p)
}

/// `len` elements of `workspace`, which an implementation that packs operands needs.
fn region<'a>(p: &Conv2dParams, ws: Option<View<'a>>, len: u64) -> Result<View<'a>> {
    let ws = ws.ok_or_else(|| {
        Error::shape(
            OP,
            format!("this implementation needs a workspace of {len} elements"),
        )
    })?;
    p.check("workspace", &ws, len)?;
    ws.sub(0, len)
}

/// y = conv(x, weight) + bias, written at `p.y_offset` (x and y may be one buffer). With
/// `affine`, the input is read as `max(x * scale[c] + shift[c], 0)`, the (scale, shift)
/// pairs from [`crate::ops::batchnorm::batchnorm_affine`]: the layer's BN -> ReLU, applied
/// while loading, so its output is never stored. `workspace` holds what the chosen
/// implementation packs ([`workspace`]; `None` where it packs nothing).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    k: &Kernels,
    p: &Conv2dParams,
    x: View<'_>,
    affine: Option<View<'_>>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    y: View<'_>,
    workspace: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    forward_in(None, k, p, x, affine, weight, bias, y, workspace)
}

/// A dense layer's conv reads a block's first channels and writes the next ones of the same
/// buffer: there x and y are narrowed to the ranges read and written (each view starting at
/// the alignment at or below its data, the params' offsets counted from there), so that the
/// two bindings do not overlap where the channel boundary is aligned, as WebGPU requires.
/// The same elements are read and written, so results are unchanged.
fn apart<'a>(
    k: &Kernels,
    mut p: Conv2dParams,
    x: View<'a>,
    y: View<'a>,
) -> (Conv2dParams, View<'a>, View<'a>) {
    if x.buffer != y.buffer {
        return (p, x, y);
    }
    let align = k.gpu().align_elems(x.dtype);
    let narrow = |v: View<'a>, at: u32, len: u64| -> (View<'a>, u32) {
        let start = (v.offset + at as u64) / align * align;
        let skip = v.offset + at as u64 - start;
        let whole = View {
            offset: start,
            len: skip + len,
            ..v
        };
        (whole, skip as u32)
    };
    let (x, x_offset) = narrow(x, p.x_offset, p.x_len());
    let (y, y_offset) = narrow(y, p.y_offset, p.y_len());
    p.x_offset = x_offset;
    p.y_offset = y_offset;
    (p, x, y)
}

/// [`conv2d_forward`] in `config`, or the one the policy gives (`None`).
#[allow(clippy::too_many_arguments)]
pub fn forward_in(
    config: Option<Config>,
    k: &Kernels,
    p: &Conv2dParams,
    x: View<'_>,
    affine: Option<View<'_>>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    y: View<'_>,
    workspace: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let p = with_affine(p, &affine)?;
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("y", &y, p.y_offset as u64 + p.y_len())?;
    let (p, x, y) = apart(k, p, x, y);
    ensure_shape!(
        bias.is_some() == (p.has_bias != 0),
        OP,
        "bias given: {}, but params say has_bias = {}",
        bias.is_some(),
        p.has_bias
    );
    if let Some(b) = &bias {
        p.check("bias", b, p.c_out as u64)?;
    }
    let dtype = super::float_dtype(OP, &[&x, &y])?;
    let (bias, affine) = (k.optional(bias, dtype), k.optional(affine, dtype));
    let c = config.unwrap_or_else(|| config_for(k, Direction::Forward, &p, dtype));
    let v = c.variant;
    let mut d = match is_tiled(v) {
        true => {
            let p = tiled::forward_params(&p, c.split);
            let partials = (p.splits > 1)
                .then(|| region(&p, workspace, tiled::workspace(&p, c.split).forward))
                .transpose()?;
            tiled::forward(k, v, &p, [x, affine, weight, bias, y], partials)?
        }
        false => {
            let packed = region(&p, workspace, regtile::workspace(&p, c.split).forward)?;
            regtile::forward(k, v, &p, [x, affine, weight, bias, y, packed])?
        }
    };
    d.extend(fault::after(k, OP, c, y, p.y_offset as u64)?);
    Ok(d)
}

/// The gradient of the input, at `p.x_offset`: dx += W^T * dy, or dx = W^T * dy for params
/// made [`Conv2dParams::overwriting`]. `workspace` as for [`conv2d_forward`].
pub fn conv2d_backward_data(
    k: &Kernels,
    p: &Conv2dParams,
    dy: View<'_>,
    weight: View<'_>,
    dx: View<'_>,
    workspace: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    data_in(None, k, p, dy, weight, dx, workspace)
}

/// [`conv2d_backward_data`] in `config`, or the one the policy gives (`None`).
pub fn data_in(
    config: Option<Config>,
    k: &Kernels,
    p: &Conv2dParams,
    dy: View<'_>,
    weight: View<'_>,
    dx: View<'_>,
    workspace: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("dx", &dx, p.x_offset as u64 + p.x_len())?;
    let dtype = super::float_dtype(OP, &[&dy, &dx])?;
    let c = config.unwrap_or_else(|| config_for(k, Direction::Data, p, dtype));
    let v = c.variant;
    let mut d = match is_tiled(v) {
        true => {
            let p = tiled::data_params(p, c.split);
            let partials = (p.splits > 1)
                .then(|| region(&p, workspace, tiled::workspace(&p, c.split).data))
                .transpose()?;
            tiled::backward_data(k, v, &p, [dy, weight, dx], partials)?
        }
        false => {
            let packed = region(p, workspace, regtile::workspace(p, c.split).data)?;
            regtile::backward_data(k, v, p, [dy, weight, dx, packed])?
        }
    };
    d.extend(fault::after(k, OP, c, dx, p.x_offset as u64)?);
    Ok(d)
}

/// dweight += dy * im2col(x)^T: split-K partial sums into `partials`
/// ([`Conv2dParams::partials_len`] is enough for any implementation), then their sum.
/// `affine` as for [`conv2d_forward`]; `workspace` holds what the implementation packs.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight(
    k: &Kernels,
    p: &Conv2dParams,
    x: View<'_>,
    affine: Option<View<'_>>,
    dy: View<'_>,
    workspace: Option<View<'_>>,
    partials: View<'_>,
    dweight: View<'_>,
) -> Result<Vec<Dispatch>> {
    weight_in(None, k, p, x, affine, dy, workspace, partials, dweight)
}

/// [`conv2d_backward_weight`] in `config`, or the one the policy gives (`None`).
#[allow(clippy::too_many_arguments)]
pub fn weight_in(
    config: Option<Config>,
    k: &Kernels,
    p: &Conv2dParams,
    x: View<'_>,
    affine: Option<View<'_>>,
    dy: View<'_>,
    workspace: Option<View<'_>>,
    partials: View<'_>,
    dweight: View<'_>,
) -> Result<Vec<Dispatch>> {
    let p = with_affine(p, &affine)?;
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dweight", &dweight, p.weight_len())?;
    let dtype = super::float_dtype(OP, &[&x, &dy])?;
    let affine = k.optional(affine, dtype);
    let c = config.unwrap_or_else(|| config_for(k, Direction::Weight, &p, dtype));
    let v = c.variant;
    let mut d = match is_tiled(v) {
        true => {
            let p = p.with_splits_for(tiled::weight_workgroups(&p), c.split);
            let need = tiled::workspace(&p, c.split).partials;
            p.check("partials", &partials, need)?;
            tiled::backward_weight(k, v, &p, [x, affine, dy, partials, dweight])?
        }
        false => {
            let p = p.with_splits_for(regtile::weight_workgroups(&p), c.split);
            let ws = regtile::workspace(&p, c.split);
            p.check("partials", &partials, ws.partials)?;
            let packed = region(&p, workspace, ws.packed_dy)?;
            regtile::backward_weight(k, v, &p, [x, affine, dy, packed, partials, dweight])?
        }
    };
    d.extend(fault::after(k, OP, c, dweight, 0)?);
    Ok(d)
}

/// dbias += dy summed over N, P, Q.
pub fn conv2d_backward_bias(
    k: &Kernels,
    p: &Conv2dParams,
    dy: View<'_>,
    dbias: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dbias", &dbias, p.c_out as u64)?;
    let dtype = super::float_dtype(OP, &[&dy])?;
    regtile::backward_bias(k, dtype, p, dy, dbias)
}
