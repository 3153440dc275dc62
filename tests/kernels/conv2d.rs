//! conv2d on the GPU against the CPU reference: every entry point of every variant the
//! adapter runs (register tiles of 16 or 8 channels, workgroup tiles, and cooperative
//! matrices where the adapter has them), uneven shapes (channel counts that fill no tile), channel
//! offsets on both sides, the fused input BN -> ReLU, NaN-poisoned outputs and accumulation
//! onto non-zero gradients.

use crate::support::harness::{case, per_config, Case, F16};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{DeviceClass, Needs, Variant};
use densenet_wgpu::ops::conv2d::{self, Conv2dParams};
use densenet_wgpu::reference as cpu;
use densenet_wgpu::{Kernels, Policy};

/// Every entry point in every configuration (variant x split setting) and element type: a
/// cooperative-matrix configuration is skipped with its reason where the adapter lacks it,
/// f16 where it lacks SHADER_F16.
pub fn cases() -> Vec<Case> {
    [
        per_config(
            "conv2d",
            "conv2d::conv2d_forward_matches_reference",
            conv2d_forward_matches_reference,
        ),
        per_config(
            "conv2d",
            "conv2d::conv2d_backward_data_matches_reference",
            conv2d_backward_data_matches_reference,
        ),
        per_config(
            "conv2d",
            "conv2d::conv2d_backward_weight_matches_reference",
            conv2d_backward_weight_matches_reference,
        ),
        per_config(
            "conv2d",
            "conv2d::conv2d_backward_bias_matches_reference",
            conv2d_backward_bias_matches_reference,
        ),
        vec![
            case(
                "conv2d::conv2d_policy_picks_the_implementation",
                conv2d_policy_picks_the_implementation,
            ),
            case(
                "conv2d::conv2d_policy_picks_the_f16_implementation",
                conv2d_policy_picks_the_f16_implementation,
            )
            .needs(F16),
            case(
                "conv2d::conv2d_rejects_mismatched_buffers",
                conv2d_rejects_mismatched_buffers,
            ),
            case(
                "conv2d::conv2d_coop_variants_run_where_expected",
                conv2d_coop_variants_run_where_expected,
            ),
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

struct Shape {
    input: [u32; 4],
    c_out: u32,
    kernel: (u32, u32),
    stride: (u32, u32),
    pad: (u32, u32),
    bias: bool,
    /// Channels before x in its buffer and before y in its buffer.
    x_chan: u32,
    y_chan: u32,
}

fn shapes() -> Vec<Shape> {
    let c = |input, c_out, kernel, stride, pad, bias, x_chan, y_chan| Shape {
        input,
        c_out,
        kernel,
        stride,
        pad,
        bias,
        x_chan,
        y_chan,
    };
    vec![
        c([3, 13, 7, 7], 5, (3, 3), (1, 1), (1, 1), true, 0, 0),
        c([1, 4, 9, 5], 7, (7, 7), (2, 2), (3, 3), false, 0, 0),
        c([3, 13, 7, 7], 6, (1, 1), (1, 1), (0, 0), true, 2, 3),
        c([2, 3, 8, 8], 9, (3, 3), (2, 2), (0, 0), true, 1, 0),
        c([3, 5, 9, 5], 4, (2, 3), (2, 1), (2, 1), true, 0, 2),
        c([1, 1, 12, 12], 8, (7, 7), (2, 2), (3, 3), false, 0, 0),
        c([3, 10, 7, 7], 13, (3, 3), (1, 1), (0, 0), true, 3, 5),
        // More than one 16-channel tile on each side.
        c([2, 20, 5, 5], 18, (3, 3), (1, 1), (1, 1), true, 1, 2),
        c([2, 35, 4, 6], 33, (3, 3), (2, 1), (1, 1), false, 0, 1),
        // Past one workgroup tile everywhere: 2 of 32 output channels, 768 pixels (several
        // split-K splits), 117 taps; and a stem-like 7x7/2 on one channel.
        c([3, 13, 16, 16], 40, (3, 3), (1, 1), (1, 1), true, 1, 0),
        c([2, 1, 20, 20], 12, (7, 7), (2, 2), (3, 3), true, 0, 0),
    ]
}

/// Buffers sized for the case's channel offsets, filled with random values outside the
/// tensor too, so reads past the tensor would show.
struct Setup {
    p: Conv2dParams,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    y_total: u64,
    /// The fused input BN -> ReLU's (scale, shift) per input channel, on odd cases.
    affine: Option<Vec<f32>>,
    /// The variant multiplies f16 operands: x, w and dy are drawn f16-exact, and the
    /// reference sees the fused BN -> ReLU's output rounded to f16 too.
    f16: bool,
    /// The activations' element type (x, y, dy, dx; drawn f16-exact for f16).
    dtype: DType,
}

fn setup(i: usize, c: &Shape, rng: &mut Rand, variant: &str, dtype: DType) -> Setup {
    let p = Conv2dParams::new(c.input, c.c_out, c.kernel, c.stride, c.pad, c.bias)
        .unwrap()
        .with_x_channel_offset(c.x_chan)
        .with_y_channel_offset(c.y_chan);
    let fused = i % 2 == 1;
    let x_total = p.x_offset as u64 + p.x_len() + 7;
    let y_total = p.y_offset as u64 + p.y_len() + 5;
    let affine = fused.then(|| {
        (0..p.c_in)
            .flat_map(|_| [rng.range(1, 0.5, 1.5)[0], rng.range(1, -0.5, 0.5)[0]])
            .collect()
    });
    let f16 = rounds_to_f16("conv2d", variant);
    let operand = |v: Vec<f32>| if f16 { f16_rounded(&v) } else { v };
    Setup {
        x: operand(as_act(dtype, rng.vec(x_total))),
        w: operand(rng.vec(p.weight_len())),
        b: rng.vec(p.c_out as u64),
        y_total,
        p,
        affine,
        f16,
        dtype,
    }
}

impl Setup {
    /// The conv's input as the reference sees it: x, or max(x * scale + shift, 0) per
    /// channel inside the tensor when the BN -> ReLU is fused.
    fn input(&self) -> Vec<f32> {
        let mut x = self.x.clone();
        if let Some(a) = &self.affine {
            let plane = (self.p.n * self.p.h * self.p.w) as usize;
            let start = self.p.x_offset as usize;
            for c in 0..self.p.c_in as usize {
                for v in &mut x[start + c * plane..][..plane] {
                    *v = (*v * a[2 * c] + a[2 * c + 1]).max(0.0);
                }
            }
        }
        self.operand(x)
    }

    /// A multiplied operand as the variant sees it: rounded to f16 for the f16 variants.
    fn operand(&self, v: Vec<f32>) -> Vec<f32> {
        match self.f16 {
            true => f16_rounded(&v),
            false => v,
        }
    }

    /// An activation (gradient) drawn for this setup: f16-exact where the kernel stores or
    /// multiplies f16.
    fn act(&self, v: Vec<f32>) -> Vec<f32> {
        self.operand(as_act(self.dtype, v))
    }

    /// The tolerance of a check that is `tol` for f32 variants and activations.
    fn tol(&self, tol: (f64, f64)) -> (f64, f64) {
        let tol = tol_for(self.dtype, tol);
        match self.f16 {
            true => (tol.0.max(F16_OPERANDS.0), tol.1.max(F16_OPERANDS.1)),
            false => tol,
        }
    }

    fn up_act(&self, v: &[f32]) -> densenet_wgpu::GpuBuffer {
        up_act(self.dtype, v)
    }

    fn affine_buffer(&self) -> Option<densenet_wgpu::GpuBuffer> {
        self.affine.as_ref().map(|a| up(a))
    }
}

fn conv2d_forward_matches_reference(variant: &'static str, k: &'static Kernels, dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(i, c, &mut rng, variant, dtype);
        let (x, w, b) = (s.up_act(&s.x), up(&s.w), up(&s.b));
        let y = poisoned_act(dtype, s.y_total);
        let bias = c.bias.then(|| b.view());
        let aff = s.affine_buffer();
        let ws = poisoned(s.p.workspace_len());
        let affine = aff.as_ref().map(|a| a.view());
        let launch = conv2d::conv2d_forward(
            k,
            &s.p,
            x.view(),
            affine,
            w.view(),
            bias,
            y.view(),
            Some(ws.view()),
        );
        run(launch.unwrap());
        let mut want = vec![f32::NAN; s.y_total as usize];
        let b = c.bias.then_some(&s.b[..]);
        cpu::conv2d_forward(&mut want, &s.input(), &s.w, b, &s.p);
        let got = read_act(&y);
        let lo = s.p.y_offset as usize;
        let hi = (s.p.y_offset as u64 + s.p.y_len()) as usize;
        let what = format!("conv2d_forward[{variant},{dtype}] case {i}");
        check(&what, rng.seed, &got[lo..hi], &want[lo..hi], s.tol(FWD));
        assert!(
            got[..lo].iter().chain(&got[hi..]).all(|v| v.is_nan()),
            "{what} wrote outside its channel range (seed {})",
            rng.seed
        );
    }
}

fn conv2d_backward_data_matches_reference(
    variant: &'static str,
    k: &'static Kernels,
    dtype: DType,
) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(i, c, &mut rng, variant, dtype);
        let dy = s.act(rng.vec(s.y_total));
        let dx0 = as_act(dtype, rng.vec(s.x.len() as u64));
        let (dyb, w, dx) = (s.up_act(&dy), up(&s.w), s.up_act(&dx0));
        let ws = poisoned(s.p.workspace_len());
        let ws = Some(ws.view());
        let launch = conv2d::conv2d_backward_data(k, &s.p, dyb.view(), w.view(), dx.view(), ws);
        run(launch.unwrap());
        let mut want = dx0.clone();
        cpu::conv2d_backward_data(&mut want, &dy, &s.w, &s.p);
        let what = format!("conv2d_backward_data[{variant},{dtype}] case {i}");
        check(&what, rng.seed, &read_act(&dx), &want, s.tol(GRAD));
        // Overwriting: dx = the gradient, whatever dx held (NaN here).
        let dx = poisoned_act(dtype, s.x.len() as u64);
        let p = s.p.overwriting();
        run(conv2d::conv2d_backward_data(k, &p, dyb.view(), w.view(), dx.view(), ws).unwrap());
        let mut want = vec![0.0; s.x.len()];
        cpu::conv2d_backward_data(&mut want, &dy, &s.w, &s.p);
        let got = read_act(&dx);
        let (lo, hi) = (
            s.p.x_offset as usize,
            (s.p.x_offset as u64 + s.p.x_len()) as usize,
        );
        let what = format!("overwriting conv2d_backward_data[{variant},{dtype}] case {i}");
        check(&what, rng.seed, &got[lo..hi], &want[lo..hi], s.tol(GRAD));
    }
}

fn conv2d_backward_weight_matches_reference(
    variant: &'static str,
    k: &'static Kernels,
    dtype: DType,
) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(i, c, &mut rng, variant, dtype);
        let dy = s.act(rng.vec(s.y_total));
        let dw0 = rng.vec(s.p.weight_len());
        let (x, dyb, dw) = (s.up_act(&s.x), s.up_act(&dy), up(&dw0));
        // The weight gradient's workspace holds a packed copy of dy (register tiles).
        let ws = poisoned_act(dtype, s.p.workspace_len());
        let partials = poisoned(s.p.partials_len());
        let aff = s.affine_buffer();
        let launch = conv2d::conv2d_backward_weight(
            k,
            &s.p,
            x.view(),
            aff.as_ref().map(|a| a.view()),
            dyb.view(),
            Some(ws.view()),
            partials.view(),
            dw.view(),
        );
        run(launch.unwrap());
        let mut want = dw0.clone();
        cpu::conv2d_backward_weight(&mut want, &s.input(), &dy, &s.p);
        let what = format!("conv2d_backward_weight[{variant},{dtype}] case {i}");
        check(&what, rng.seed, &read(&dw), &want, s.tol(GRAD));
    }
}

fn conv2d_backward_bias_matches_reference(
    variant: &'static str,
    k: &'static Kernels,
    dtype: DType,
) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(i, c, &mut rng, variant, dtype);
        let dy = s.act(rng.vec(s.y_total));
        let db0 = rng.vec(s.p.c_out as u64);
        let (dyb, db) = (s.up_act(&dy), up(&db0));
        run(conv2d::conv2d_backward_bias(k, &s.p, dyb.view(), db.view()).unwrap());
        let mut want = db0.clone();
        cpu::conv2d_backward_bias(&mut want, &dy, &s.p);
        let what = format!("conv2d_backward_bias[{variant},{dtype}] case {i}");
        check(&what, rng.seed, &read(&db), &want, GRAD);
    }
}

/// The variant of every launch of a forward and a data gradient of `p` through `k`.
fn variants(k: &Kernels, p: &Conv2dParams) -> Vec<String> {
    let (x, w, y) = (
        poisoned(p.x_len()),
        poisoned(p.weight_len()),
        poisoned(p.y_len()),
    );
    let ws = poisoned(p.workspace_len());
    let ws = Some(ws.view());
    let fwd = conv2d::conv2d_forward(k, p, x.view(), None, w.view(), None, y.view(), ws);
    let data = conv2d::conv2d_backward_data(k, p, y.view(), w.view(), x.view(), ws);
    let mut all = fwd.unwrap();
    all.extend(data.unwrap());
    all.iter()
        .map(|d| d.kernel().variant.name.to_string())
        .collect()
}

/// The kernels of the policy for device class `c`, whatever the adapter.
fn class(c: DeviceClass) -> Kernels {
    Kernels::new(gpu_arc().clone(), Policy::auto(c))
}

/// 20 input and 8 output channels: the forward's tiled channels (output) fit in 8, the data
/// gradient's (input) do not.
fn narrow() -> Conv2dParams {
    Conv2dParams::new([2, 20, 5, 5], 8, (3, 3), (1, 1), (1, 1), false).unwrap()
}

/// 6 input and 12 output channels: the other way round.
fn wide() -> Conv2dParams {
    Conv2dParams::new([2, 6, 5, 5], 12, (3, 3), (1, 1), (1, 1), false).unwrap()
}

/// The policy's own rule: on CPU drivers, 8-channel tiles where the tiled channels fit in 8,
/// else 16; on GPUs, the workgroup tiles (no packing pass); a forced variant wins everywhere.
fn conv2d_policy_picks_the_implementation() {
    let (narrow, wide) = (narrow(), wide());
    let (cpu, gpu) = (class(DeviceClass::Cpu), class(DeviceClass::Gpu));
    // Forward tiles output channels, the data gradient input channels.
    assert_eq!(
        variants(&cpu, &narrow),
        ["tile8", "tile8", "tile16", "tile16"]
    );
    assert_eq!(
        variants(&cpu, &wide),
        ["tile16", "tile16", "tile8", "tile8"]
    );
    // A small output: the reduced dimension is split, then summed by a second pass.
    assert_eq!(variants(&gpu, &narrow), ["wgtile"; 4]);
    assert!(conv2d::workspace(gpu.policy(), &narrow, DType::F32).forward > 0);
    let forced = kernels_for("conv2d=tile16");
    assert!(variants(forced, &narrow).iter().all(|v| v == "tile16"));
    assert!(kernels_for("tile8").policy().forced("conv2d").is_some());
    // The workgroup tiles pack nothing: without a split, no workspace, and none needed.
    let (x, w, y) = (
        poisoned(wide.x_len()),
        poisoned(wide.weight_len()),
        poisoned(wide.y_len()),
    );
    let fwd = conv2d::conv2d_forward(&gpu, &wide, x.view(), None, w.view(), None, y.view(), None);
    assert!(fwd.is_ok());
    let err = conv2d::conv2d_forward(&cpu, &wide, x.view(), None, w.view(), None, y.view(), None);
    assert!(err.err().unwrap().to_string().contains("workspace"));
    assert_eq!(
        conv2d::workspace(gpu.policy(), &wide, DType::F32).packed_dy,
        0
    );
}

/// In f16, a GPU multiplies on cooperative matrices where the adapter has a shape of theirs
/// (the largest), else on the workgroup tiles; CPU drivers keep register tiles.
fn conv2d_policy_picks_the_f16_implementation() {
    let wide = wide();
    let (cpu, gpu) = (class(DeviceClass::Cpu), class(DeviceClass::Gpu));
    let runs = |name: &str| {
        variants_of("conv2d")
            .find(|v| v.name == name)
            .is_some_and(|v| v.needs.unmet(gpu_arc()).is_none())
    };
    let f16_gpu = match (runs("coop16"), runs("coop8")) {
        (true, _) => "coop16",
        (false, true) => "coop8",
        _ => "wgtile",
    };
    let (x, w, y) = (
        poisoned_act(DType::F16, wide.x_len()),
        poisoned(wide.weight_len()),
        poisoned_act(DType::F16, wide.y_len()),
    );
    for (k, want) in [(&gpu, f16_gpu), (&cpu, "tile16")] {
        let ws = poisoned(wide.workspace_len());
        let d = conv2d::conv2d_forward(
            k,
            &wide,
            x.view(),
            None,
            w.view(),
            None,
            y.view(),
            Some(ws.view()),
        );
        let labels: Vec<String> = d.unwrap().iter().map(|d| d.kernel().label()).collect();
        let want = format!("conv2d_forward[{want},f16]");
        assert!(labels.contains(&want), "{labels:?}: {want}");
    }
}

fn conv2d_rejects_mismatched_buffers() {
    let p = Conv2dParams::new([2, 3, 5, 5], 4, (3, 3), (1, 1), (1, 1), false).unwrap();
    let (x, w, y) = (
        poisoned(p.x_len()),
        poisoned(p.weight_len() - 1),
        poisoned(p.y_len()),
    );
    let ws = poisoned(p.workspace_len());
    let err = conv2d::conv2d_forward(
        k(),
        &p,
        x.view(),
        None,
        w.view(),
        None,
        y.view(),
        Some(ws.view()),
    )
    .err()
    .expect("a short weight buffer must be refused");
    assert!(err.to_string().contains("weight"), "{err}");
    assert!(Conv2dParams::new([1, 1, 2, 2], 1, (5, 5), (1, 1), (0, 0), false).is_err());
}

/// The cooperative-matrix variants run where the adapter has their fragment shape and
/// subgroup size: the per-configuration cases above cover them there, and are skipped with
/// the reason elsewhere (failures under DENSENET_REQUIRE=coop: scripts/lavapipe-coop, the
/// GPU report). Forcing one the adapter cannot run is a one-line error that says what is
/// missing.
fn conv2d_coop_variants_run_where_expected() {
    let coop: Vec<&Variant> = variants_of("conv2d")
        .filter(|v| matches!(v.needs, Needs::CoopMatrix { .. }))
        .collect();
    assert_eq!(coop.len(), 2, "coop8 and coop16");
    let p = Conv2dParams::new([1, 3, 4, 4], 2, (3, 3), (1, 1), (1, 1), false).unwrap();
    let (x, w, y) = (
        poisoned(p.x_len()),
        poisoned(p.weight_len()),
        poisoned(p.y_len()),
    );
    for v in coop.iter().filter(|v| v.needs.unmet(gpu()).is_some()) {
        let k = kernels_for(&format!("conv2d={}", v.name));
        let err = conv2d::conv2d_forward(k, &p, x.view(), None, w.view(), None, y.view(), None)
            .err()
            .unwrap_or_else(|| panic!("{} ran on an adapter that lacks it", v.name));
        let msg = err.to_string();
        assert!(
            msg.contains(v.name) && msg.contains("needs") && !msg.contains('\n'),
            "{msg}"
        );
    }
}
