//! 2-D convolution over channel-major (C, N, H, W) tensors: forward, backward-data,
//! backward-weight (split-K) and backward-bias.
//!
//! Shapes (channel-major): x (C_in, N, H, W), weight (C_out, C_in, KH, KW) as in PyTorch,
//! bias (C_out), y (C_out, N, P, Q) with P = (H + 2 PH - KH) / SH + 1, Q likewise.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{read, write, Dispatch, Entry, Grid, Kernels, Shader, Source, Variant};

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
    pub _pad: u32,
}

const OP: &str = "conv2d";

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
            _pad: 0,
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

    /// The split-K factor of the weight gradient: enough workgroups to fill a large GPU
    /// (512), at least 256 output pixels per split. Counted for the 16-channel tile whatever
    /// the variant, so that every variant sums in the same order and gives the same bits.
    pub fn with_weight_splits(mut self) -> Self {
        let npq = self.n * self.out_h * self.out_w;
        let taps = self.c_in * self.kernel_h * self.kernel_w;
        let workgroups = groups(MAX_TILE, self.c_out, taps) as u32;
        let splits = 512u32
            .div_ceil(workgroups)
            .clamp(1, npq.div_ceil(256).max(1));
        self.chunk = npq.div_ceil(splits);
        self.splits = npq.div_ceil(self.chunk);
        self
    }

    /// Elements of the packed weights [`conv2d_forward`] keeps in its workspace.
    pub fn forward_workspace_len(&self) -> u64 {
        padded(self.c_out) * self.taps()
    }

    /// Elements of the packed weights [`conv2d_backward_data`] keeps in its workspace.
    pub fn data_workspace_len(&self) -> u64 {
        padded(self.c_in) * self.c_out as u64 * self.kernel_h as u64 * self.kernel_w as u64
    }

    /// Elements of the packed output gradient [`conv2d_backward_weight`] keeps in its
    /// workspace.
    pub fn weight_workspace_len(&self) -> u64 {
        let npq = self.n as u64 * self.out_h as u64 * self.out_w as u64;
        npq * padded(self.c_out)
    }

    /// Elements of the split-K partial sums of [`conv2d_backward_weight`] (a buffer of
    /// their own: a dispatch may not read and write one buffer).
    pub fn partials_len(&self) -> u64 {
        self.with_weight_splits().splits as u64 * self.weight_len()
    }

    /// A workspace large enough for every launcher of this convolution.
    pub fn workspace_len(&self) -> u64 {
        self.forward_workspace_len()
            .max(self.data_workspace_len())
            .max(self.weight_workspace_len())
    }

    fn taps(&self) -> u64 {
        self.c_in as u64 * self.kernel_h as u64 * self.kernel_w as u64
    }

    fn check(&self, what: &str, view: &View<'_>, need: u64) -> Result<()> {
        super::check_len(OP, what, view, need, self)
    }
}

/// The register-tile variants (conv2d.wgsl is a template; see `generate`).
pub static SHADER: Shader = Shader {
    op: OP,
    file: "conv2d.wgsl",
    source: Source::Generated(generate),
    entries: &[
        &PACK_WEIGHT_FORWARD,
        &FORWARD,
        &PACK_WEIGHT_DATA,
        &BACKWARD_DATA,
        &PACK_DY,
        &BACKWARD_WEIGHT,
        &BACKWARD_WEIGHT_REDUCE,
        &BACKWARD_BIAS,
    ],
    variants: &[
        Variant {
            name: "tile16",
            about: "16 channels x 4 pixels per invocation, no workgroup memory",
        },
        Variant {
            name: "tile8",
            about: "8 channels x 4 pixels per invocation, no workgroup memory",
        },
    ],
    choice: "tile8 where the tiled channels (output channels forward and for the weight \
             gradient, input channels for the data gradient) number at most 8, else tile16",
    dtypes: &[DType::F32],
};

pub static PACK_WEIGHT_FORWARD: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_pack_weight_forward",
    &[read(2), write(12)],
    64,
);
pub static FORWARD: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_forward",
    &[write(1), read(3), write(4), read(11), read(14)],
    64,
);
pub static PACK_WEIGHT_DATA: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_pack_weight_data",
    &[read(2), write(12)],
    64,
);
pub static BACKWARD_DATA: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_data",
    &[read(5), write(6), read(11)],
    64,
);
pub static PACK_DY: Entry =
    Entry::new::<Conv2dParams>(&SHADER, "conv2d_pack_dy", &[read(5), write(12)], 64);
pub static BACKWARD_WEIGHT: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_weight",
    &[write(1), write(7), read(13), read(14)],
    64,
);
pub static BACKWARD_WEIGHT_REDUCE: Entry = Entry::new::<Conv2dParams>(
    &SHADER,
    "conv2d_backward_weight_reduce",
    &[read(8), write(9)],
    64,
);
pub static BACKWARD_BIAS: Entry =
    Entry::new::<Conv2dParams>(&SHADER, "conv2d_backward_bias", &[read(5), write(10)], 256);

/// The channels of the largest register tile: packed operands are padded to it, whatever the
/// variant, so one workspace size serves all.
const MAX_TILE: u32 = 16;
/// Pixels or taps per invocation, and invocations per workgroup (conv2d.wgsl's TN and WG).
const TN: u32 = 4;
const WG: u32 = 64;

/// The register tile (channels) of a variant.
fn tile(v: &Variant) -> u32 {
    match v.name {
        "tile8" => 8,
        _ => 16,
    }
}

/// The op's own rule: the variant for a launch that tiles `channels` channels. An 8-channel
/// tile wastes no lanes where 16 would leave half or more of them padding.
fn auto_variant(channels: u32) -> &'static str {
    match channels <= 8 {
        true => "tile8",
        false => "tile16",
    }
}

/// conv2d.wgsl with the tile code of `variant` at its marker: the TM constant, the TM
/// accumulators, the multiply-adds from the packed operands, and the accessor.
fn generate(variant: &Variant, _dtype: DType) -> String {
    let tm = tile(variant) as usize;
    let lane = |m: usize| ["x", "y", "z", "w"][m % 4];
    let mut code =
        format!("const TM: u32 = {tm}u;\n\n// TM accumulators of TN values.\nstruct Acc {{\n");
    for m in 0..tm {
        code += &format!("    a{m}: vec4<f32>,\n");
    }
    code += "}\n";
    for (name, array) in [("fma_w", "packed"), ("fma_dy", "packed_dy")] {
        code += &format!(
            "\n// acc.m += {array}[i .. i + TM / 4][m] * v for the TM channels.\n\
             fn {name}(acc: ptr<function, Acc>, i: u32, v: vec4<f32>) {{\n"
        );
        for q in 0..tm / 4 {
            code += &format!("    let w{q} = {array}[i + {q}u];\n");
        }
        for m in 0..tm {
            code += &format!("    (*acc).a{m} += w{}.{} * v;\n", m / 4, lane(m));
        }
        code += "}\n";
    }
    code += "\nfn acc_get(acc: Acc, m: u32) -> vec4<f32> {\n    switch m {\n";
    for m in 0..tm - 1 {
        code += &format!("        case {m}u: {{ return acc.a{m}; }}\n");
    }
    code += &format!(
        "        default: {{ return acc.a{}; }}\n    }}\n}}\n",
        tm - 1
    );
    let template = include_str!("../../shaders/conv2d.wgsl");
    template.replace("// @generated-tile-code\n", &code)
}

/// A channel count padded to the largest tile, as the packed operands are sized.
fn padded(c: u32) -> u64 {
    c.next_multiple_of(MAX_TILE) as u64
}

/// Workgroups covering `channels` in tiles of `tm` and `other` in groups of WG * TN.
fn groups(tm: u32, channels: u32, other: u32) -> u64 {
    channels.div_ceil(tm) as u64 * other.div_ceil(WG * TN) as u64
}

/// Elements [start, start + len) of a workspace view, checked.
fn region<'a>(p: &Conv2dParams, ws: View<'a>, start: u64, len: u64) -> Result<View<'a>> {
    p.check("workspace", &ws, start + len)?;
    ws.sub(start, len)
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

/// y = conv(x, weight) + bias, written at `p.y_offset` (x and y may be one buffer).
/// `workspace` holds the packed weights ([`Conv2dParams::forward_workspace_len`]
/// elements). With `affine`, the input is read as `max(x * scale[c] + shift[c], 0)`, the
/// (scale, shift) pairs from [`crate::ops::batchnorm::batchnorm_affine`]: the layer's
/// BN -> ReLU, applied while loading, so its output is never stored.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    k: &Kernels,
    p: &Conv2dParams,
    x: View<'_>,
    affine: Option<View<'_>>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    y: View<'_>,
    workspace: View<'_>,
) -> Result<Vec<Dispatch>> {
    let p = with_affine(p, &affine)?;
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("y", &y, p.y_offset as u64 + p.y_len())?;
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
    let dtype = super::float_dtype(OP, &[&x, &weight, &y, &workspace])?;
    let variant = k.choose(&SHADER, auto_variant(p.c_out));
    let packed = region(&p, workspace, 0, p.forward_workspace_len())?;
    let e = dtype.size();
    let npq = p.n * p.out_h * p.out_w;
    let views = [
        (1, x),
        (3, k.optional(bias, dtype)),
        (4, y),
        (11, packed),
        (14, k.optional(affine, dtype)),
    ];
    Ok(vec![
        k.dispatch(
            PACK_WEIGHT_FORWARD.variant(variant, dtype),
            &p,
            &[(2, weight), (12, packed)],
            Grid::Threads(packed.len),
        )?,
        k.dispatch(
            FORWARD.variant(variant, dtype),
            &p,
            &views,
            Grid::Workgroups(groups(tile(variant), p.c_out, npq)),
        )?
        .with_cost(2 * p.macs(), e * (p.x_len() + p.y_len() + packed.len)),
    ])
}

/// dx += W^T * dy (the gradient of the input), accumulated at `p.x_offset`. `workspace`
/// holds the packed weights ([`Conv2dParams::data_workspace_len`] elements).
pub fn conv2d_backward_data(
    k: &Kernels,
    p: &Conv2dParams,
    dy: View<'_>,
    weight: View<'_>,
    dx: View<'_>,
    workspace: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("dx", &dx, p.x_offset as u64 + p.x_len())?;
    let dtype = super::float_dtype(OP, &[&dy, &weight, &dx, &workspace])?;
    let variant = k.choose(&SHADER, auto_variant(p.c_in));
    let packed = region(p, workspace, 0, p.data_workspace_len())?;
    let nhw = p.n * p.h * p.w;
    let e = dtype.size();
    Ok(vec![
        k.dispatch(
            PACK_WEIGHT_DATA.variant(variant, dtype),
            p,
            &[(2, weight), (12, packed)],
            Grid::Threads(packed.len),
        )?,
        k.dispatch(
            BACKWARD_DATA.variant(variant, dtype),
            p,
            &[(5, dy), (6, dx), (11, packed)],
            Grid::Workgroups(groups(tile(variant), p.c_in, nhw)),
        )?
        .with_cost(2 * p.macs(), e * (p.y_len() + 2 * p.x_len() + packed.len)),
    ])
}

/// dweight += dy * im2col(x)^T, in three passes: dy packed channel-last into `workspace`
/// ([`Conv2dParams::weight_workspace_len`] elements), split-K partial sums into `partials`
/// ([`Conv2dParams::partials_len`]), then their sum. `affine` as for [`conv2d_forward`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight(
    k: &Kernels,
    p: &Conv2dParams,
    x: View<'_>,
    affine: Option<View<'_>>,
    dy: View<'_>,
    workspace: View<'_>,
    partials: View<'_>,
    dweight: View<'_>,
) -> Result<Vec<Dispatch>> {
    let p = with_affine(p, &affine)?.with_weight_splits();
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dweight", &dweight, p.weight_len())?;
    p.check("partials", &partials, p.partials_len())?;
    let dtype = super::float_dtype(OP, &[&x, &dy, &workspace, &partials, &dweight])?;
    let variant = k.choose(&SHADER, auto_variant(p.c_out));
    let packed = region(&p, workspace, 0, p.weight_workspace_len())?;
    let taps = p.c_in * p.kernel_h * p.kernel_w;
    let e = dtype.size();
    let views = [
        (1, x),
        (7, partials),
        (13, packed),
        (14, k.optional(affine, dtype)),
    ];
    Ok(vec![
        k.dispatch(
            PACK_DY.variant(variant, dtype),
            &p,
            &[(5, dy), (12, packed)],
            Grid::Threads(packed.len),
        )?
        .with_cost(0, e * (p.y_len() + packed.len)),
        k.dispatch(
            BACKWARD_WEIGHT.variant(variant, dtype),
            &p,
            &views,
            Grid::Workgroups(groups(tile(variant), p.c_out, taps) * p.splits as u64),
        )?
        .with_cost(
            2 * p.macs(),
            e * (p.x_len() + packed.len + p.partials_len()),
        ),
        k.dispatch(
            BACKWARD_WEIGHT_REDUCE.variant(variant, dtype),
            &p,
            &[(8, partials), (9, dweight)],
            Grid::Threads(p.weight_len()),
        )?,
    ])
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
    let dtype = super::float_dtype(OP, &[&dy, &dbias])?;
    let variant = k.choose(&SHADER, auto_variant(p.c_out));
    let views = [(5, dy), (10, dbias)];
    let grid = Grid::Workgroups(p.c_out as u64);
    let d = k.dispatch(BACKWARD_BIAS.variant(variant, dtype), p, &views, grid)?;
    Ok(vec![d.with_cost(
        p.y_len(),
        dtype.size() * (p.y_len() + p.c_out as u64),
    )])
}
