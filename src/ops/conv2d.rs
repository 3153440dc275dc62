//! 2-D convolution over channel-major (C, N, H, W) tensors: forward, backward-data,
//! backward-weight (split-K) and backward-bias.
//!
//! Shapes (channel-major): x (C_in, N, H, W), weight (C_out, C_in, KH, KW) as in PyTorch,
//! bias (C_out), y (C_out, N, P, Q) with P = (H + 2 PH - KH) / SH + 1, Q likewise.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{Gpu, View};
use crate::kernels::{dispatch, dispatch_workgroups, Access::*, Dispatch, Entry, Shader};

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
    /// Non-zero: the input is read as BN -> ReLU of x (see [`Conv2dParams::with_input_bn_relu`]).
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
        self.x_offset = c * self.n * self.h * self.w;
        self
    }

    /// Reads the input as max(x * scale[c] + shift[c], 0), with per-channel (scale, shift)
    /// from [`crate::ops::batchnorm::batchnorm_affine`]: the layer's BN -> ReLU, applied while
    /// loading (forward and weight gradient), so its output is never stored.
    pub fn with_input_bn_relu(mut self) -> Self {
        self.input_bn_relu = 1;
        self
    }

    /// Writes y at output channel `c` of a larger buffer (in-place concatenation).
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        self.y_offset = c * self.n * self.out_h * self.out_w;
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
    /// (512), at least 256 output pixels per split.
    pub fn with_weight_splits(mut self) -> Self {
        let npq = self.n * self.out_h * self.out_w;
        let taps = self.c_in * self.kernel_h * self.kernel_w;
        let workgroups = groups(self.c_out, taps) as u32;
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

pub static SHADER: Shader = Shader {
    file: "conv2d.wgsl",
    source: include_str!("../../shaders/conv2d.wgsl"),
    entries: &[
        Entry::new::<Conv2dParams>(
            "conv2d_pack_weight_forward",
            &[(2, Read), (12, ReadWrite)],
            64,
        ),
        Entry::new::<Conv2dParams>(
            "conv2d_forward",
            &[
                (1, ReadWrite),
                (3, Read),
                (4, ReadWrite),
                (11, Read),
                (14, Read),
            ],
            64,
        ),
        Entry::new::<Conv2dParams>("conv2d_pack_weight_data", &[(2, Read), (12, ReadWrite)], 64),
        Entry::new::<Conv2dParams>(
            "conv2d_backward_data",
            &[(5, Read), (6, ReadWrite), (11, Read)],
            64,
        ),
        Entry::new::<Conv2dParams>("conv2d_pack_dy", &[(5, Read), (12, ReadWrite)], 64),
        Entry::new::<Conv2dParams>(
            "conv2d_backward_weight",
            &[(1, ReadWrite), (7, ReadWrite), (13, Read), (14, Read)],
            64,
        ),
        Entry::new::<Conv2dParams>(
            "conv2d_backward_weight_reduce",
            &[(8, Read), (9, ReadWrite)],
            64,
        ),
        Entry::new::<Conv2dParams>("conv2d_backward_bias", &[(5, Read), (10, ReadWrite)], 256),
    ],
};

/// The kernels' register tile (conv2d.wgsl): TM channels (shared by a workgroup) by TN
/// pixels or taps per invocation, WG invocations per workgroup.
const TM: u32 = 16;
const TN: u32 = 4;
const WG: u32 = 64;

/// A channel count padded to the tile, as the packed operands store it.
fn padded(c: u32) -> u64 {
    c.next_multiple_of(TM) as u64
}

/// Workgroups covering `channels` in tiles of TM and `other` in groups of WG * TN.
fn groups(channels: u32, other: u32) -> u64 {
    channels.div_ceil(TM) as u64 * other.div_ceil(WG * TN) as u64
}

/// Elements [start, start + len) of a workspace view, checked.
fn region<'a>(p: &Conv2dParams, ws: View<'a>, start: u64, len: u64) -> Result<View<'a>> {
    p.check("workspace", &ws, start + len)?;
    Ok(View {
        buffer: ws.buffer,
        offset: ws.offset + start,
        len,
    })
}

/// The (scale, shift) pairs of a fused input BN -> ReLU: required exactly when the params
/// ask for it, 2 * C_in values.
fn affine_view<'a>(gpu: &'a Gpu, p: &Conv2dParams, affine: Option<View<'a>>) -> Result<View<'a>> {
    ensure_shape!(
        affine.is_some() == (p.input_bn_relu != 0),
        OP,
        "affine given: {}, but params say input_bn_relu = {}",
        affine.is_some(),
        p.input_bn_relu
    );
    match affine {
        Some(a) => {
            p.check("affine", &a, 2 * p.c_in as u64)?;
            Ok(a)
        }
        None => Ok(View {
            buffer: &gpu.dummy,
            offset: 0,
            len: 4,
        }),
    }
}

/// y = conv(x, weight) + bias, written at `p.y_offset` (x and y may be one buffer).
/// `workspace` holds the packed weights ([`Conv2dParams::forward_workspace_len`]
/// elements); `affine` is the fused input BN -> ReLU, if the params ask for one.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    gpu: &Gpu,
    p: &Conv2dParams,
    x: View<'_>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    y: View<'_>,
    workspace: View<'_>,
    affine: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let affine = affine_view(gpu, p, affine)?;
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
    let bias = bias.unwrap_or(View {
        buffer: &gpu.dummy,
        offset: 0,
        len: 1,
    });
    let packed = region(p, workspace, 0, p.forward_workspace_len())?;
    let npq = p.n * p.out_h * p.out_w;
    Ok(vec![
        dispatch(
            gpu,
            "conv2d_pack_weight_forward",
            p,
            &[(2, weight), (12, packed)],
            packed.len,
        )?,
        dispatch_workgroups(
            gpu,
            "conv2d_forward",
            p,
            &[(1, x), (3, bias), (4, y), (11, packed), (14, affine)],
            groups(p.c_out, npq),
        )?,
    ])
}

/// dx += W^T * dy (the gradient of the input), accumulated at `p.x_offset`. `workspace`
/// holds the packed weights ([`Conv2dParams::data_workspace_len`] elements).
pub fn conv2d_backward_data(
    gpu: &Gpu,
    p: &Conv2dParams,
    dy: View<'_>,
    weight: View<'_>,
    dx: View<'_>,
    workspace: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("weight", &weight, p.weight_len())?;
    p.check("dx", &dx, p.x_offset as u64 + p.x_len())?;
    let packed = region(p, workspace, 0, p.data_workspace_len())?;
    let nhw = p.n * p.h * p.w;
    Ok(vec![
        dispatch(
            gpu,
            "conv2d_pack_weight_data",
            p,
            &[(2, weight), (12, packed)],
            packed.len,
        )?,
        dispatch_workgroups(
            gpu,
            "conv2d_backward_data",
            p,
            &[(5, dy), (6, dx), (11, packed)],
            groups(p.c_in, nhw),
        )?,
    ])
}

/// dweight += dy * im2col(x)^T, in three passes: dy packed channel-last into `workspace`
/// ([`Conv2dParams::weight_workspace_len`] elements), split-K partial sums into `partials`
/// ([`Conv2dParams::partials_len`]), then their sum. `affine` as for [`conv2d_forward`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    p: &Conv2dParams,
    x: View<'_>,
    dy: View<'_>,
    workspace: View<'_>,
    partials: View<'_>,
    dweight: View<'_>,
    affine: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let affine = affine_view(gpu, p, affine)?;
    let p = p.with_weight_splits();
    p.check("x", &x, p.x_offset as u64 + p.x_len())?;
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dweight", &dweight, p.weight_len())?;
    p.check("partials", &partials, p.partials_len())?;
    let packed_len = p.weight_workspace_len();
    let packed = region(&p, workspace, 0, packed_len)?;
    let taps = p.c_in * p.kernel_h * p.kernel_w;
    Ok(vec![
        dispatch(
            gpu,
            "conv2d_pack_dy",
            &p,
            &[(5, dy), (12, packed)],
            packed_len,
        )?,
        dispatch_workgroups(
            gpu,
            "conv2d_backward_weight",
            &p,
            &[(1, x), (7, partials), (13, packed), (14, affine)],
            groups(p.c_out, taps) * p.splits as u64,
        )?,
        dispatch(
            gpu,
            "conv2d_backward_weight_reduce",
            &p,
            &[(8, partials), (9, dweight)],
            p.weight_len(),
        )?,
    ])
}

/// dbias += dy summed over N, P, Q.
pub fn conv2d_backward_bias(
    gpu: &Gpu,
    p: &Conv2dParams,
    dy: View<'_>,
    dbias: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.check("dy", &dy, p.y_offset as u64 + p.y_len())?;
    p.check("dbias", &dbias, p.c_out as u64)?;
    let d = dispatch_workgroups(
        gpu,
        "conv2d_backward_bias",
        p,
        &[(5, dy), (10, dbias)],
        p.c_out as u64,
    )?;
    Ok(vec![d])
}
