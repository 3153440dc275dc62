//! The pools that apply their input's BN -> ReLU while loading it (the ImageNet stem's max
//! pool, the transitions' average pool, the head's global pool): against the reference
//! (batch norm, ReLU, then the pool), and bit for bit against the unfused GPU path
//! (batchnorm_forward with ReLU into a tensor, then the plain pool), at channel and
//! statistics offsets.

use crate::pool::{global_cases, global_params, params, shapes, totals};
use crate::support::harness::{case, per_act, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::ops::batchnorm::{self, BatchNormParams, BnRelu};
use densenet_wgpu::ops::maxpool::Pool2dParams;
use densenet_wgpu::ops::{avgpool, global_avgpool, maxpool};
use densenet_wgpu::reference as cpu;
use densenet_wgpu::GpuBuffer;

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "fused_pool::maxpool_with_bn_relu_matches_reference_and_the_unfused_path",
            maxpool_with_bn_relu_matches_reference_and_the_unfused_path,
        ),
        per_act(
            "fused_pool::avgpool_with_bn_relu_matches_reference_and_the_unfused_path",
            avgpool_with_bn_relu_matches_reference_and_the_unfused_path,
        ),
        per_act(
            "fused_pool::global_avgpool_with_bn_relu_matches_reference_and_the_unfused_path",
            global_avgpool_with_bn_relu_matches_reference_and_the_unfused_path,
        ),
        vec![case(
            "fused_pool::fused_pools_refuse_short_statistics",
            fused_pools_refuse_short_statistics,
        )],
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A batch norm over `c` channels of x (at `x_chan`), its statistics at `stat` of larger
/// arrays: the params, and (mean, var, gamma, beta) on the GPU and the host.
struct Bn {
    p: BatchNormParams,
    host: [Vec<f32>; 4],
    gpu: [GpuBuffer; 4],
}

fn bn(rng: &mut Rand, input: [u32; 4], x_chan: u32, stat: u32) -> Bn {
    let p = BatchNormParams::new(input)
        .unwrap()
        .with_x_channel_offset(x_chan)
        .with_stat_offset(stat)
        .with_relu(true);
    let c = p.c as u64;
    let stats = p.stat_len() + 2;
    let host = [
        rng.vec(stats),
        rng.range(stats, 0.2, 2.0),
        rng.range(c, 0.5, 1.5),
        rng.vec(c),
    ];
    let gpu = [up(&host[0]), up(&host[1]), up(&host[2]), up(&host[3])];
    Bn { p, host, gpu }
}

impl Bn {
    fn fused(&self) -> BnRelu<'_> {
        let [m, v, g, b] = &self.gpu;
        BnRelu::of(&self.p, m.view(), v.view(), g.view(), b.view())
    }

    /// BN -> ReLU of x's channels on the host: (C, N, H, W) from element 0.
    fn host_out(&self, x: &[f32]) -> Vec<f32> {
        let mut t = vec![0.0; self.p.len() as usize];
        let [m, v, g, b] = &self.host;
        let p = BatchNormParams {
            y_offset: 0,
            ..self.p
        };
        cpu::batchnorm_forward(&mut t, x, m, v, g, b, &p);
        t
    }

    /// The same on the GPU, into a new tensor of x's element type.
    fn gpu_out(&self, x: &GpuBuffer) -> GpuBuffer {
        let t = poisoned_act(x.dtype, self.p.len());
        let [m, v, g, b] = &self.gpu;
        let p = BatchNormParams {
            y_offset: 0,
            ..self.p
        };
        let views = (m.view(), v.view(), g.view(), b.view());
        run(batchnorm::batchnorm_forward(
            k(),
            &p,
            x.view(),
            views.0,
            views.1,
            views.2,
            views.3,
            t.view(),
        )
        .unwrap());
        t
    }
}

/// The pool params reading the BN output tensor (from element 0) instead of x.
fn on_output(p: &Pool2dParams) -> Pool2dParams {
    Pool2dParams { x_offset: 0, ..*p }
}

/// The fused and the unfused path agree bit for bit in f32, and for a max pool in f16 too
/// (rounding to f16 keeps the order); an average of f16-rounded BN outputs (unfused) and
/// the f16 rounding of an average (fused) may differ by the rounding.
fn assert_same_as_unfused(what: &str, seed: u64, got: &[f32], want: &[f32], exact: bool) {
    if !exact {
        // Spare elements stay NaN in both; compare the rest.
        let (g, w): (Vec<f32>, Vec<f32>) = got
            .iter()
            .zip(want)
            .filter(|(g, w)| !(g.is_nan() && w.is_nan()))
            .unzip();
        check(what, seed, &g, &w, tol_for(DType::F16, FWD));
        return;
    }
    assert_same_bits(what, seed, got, want);
}

fn assert_same_bits(what: &str, seed: u64, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i} is {g}, unfused {w}; replay with DENSENET_SEED={seed}"
        );
    }
}

fn maxpool_with_bn_relu_matches_reference_and_the_unfused_path(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let (x_total, y_total) = totals(&p);
        let x = as_act(dtype, rng.range(x_total, -1.0, 3.0));
        let b = bn(&mut rng, c.input, c.x_chan, 3 + i as u32);
        let (xb, y, y_plain) = (
            up_act(dtype, &x),
            poisoned_act(dtype, y_total),
            poisoned_act(dtype, y_total),
        );
        let arg = up_u32(&vec![0; p.y_len() as usize]);
        let arg_plain = up_u32(&vec![0; p.y_len() as usize]);
        run(maxpool::maxpool_forward(
            k(),
            &p,
            xb.view(),
            Some(b.fused()),
            y.view(),
            Some(arg.view()),
        )
        .unwrap());
        let t = b.gpu_out(&xb);
        let plain = on_output(&p);
        run(maxpool::maxpool_forward(
            k(),
            &plain,
            t.view(),
            None,
            y_plain.view(),
            Some(arg_plain.view()),
        )
        .unwrap());
        let what = format!("fused maxpool_forward[{dtype}] case {i}");
        let got = read_act(&y);
        assert_same_bits(&what, rng.seed, &got, &read_act(&y_plain));
        // Stored in f16, distinct BN outputs can round to a tie, which the unfused pool
        // gives to the first; the fused one compares the f32 values.
        if dtype == DType::F32 {
            assert_eq!(read_u32(&arg), read_u32(&arg_plain), "{what}: argmax");
        }
        let mut want = vec![f32::NAN; y_total as usize];
        let mut want_arg = vec![0; p.y_len() as usize];
        cpu::maxpool_forward(&mut want, &mut want_arg, &b.host_out(&x), &plain);
        let r = p.y_offset as usize..(p.y_offset as u64 + p.y_len()) as usize;
        check(
            &what,
            rng.seed,
            &got[r.clone()],
            &want[r],
            tol_for(dtype, FWD),
        );
    }
}

fn avgpool_with_bn_relu_matches_reference_and_the_unfused_path(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let (x_total, y_total) = totals(&p);
        let x = as_act(dtype, rng.range(x_total, -1.0, 3.0));
        let b = bn(&mut rng, c.input, c.x_chan, i as u32);
        let (xb, y, y_plain) = (
            up_act(dtype, &x),
            poisoned_act(dtype, y_total),
            poisoned_act(dtype, y_total),
        );
        run(avgpool::avgpool_forward(k(), &p, xb.view(), Some(b.fused()), y.view()).unwrap());
        let t = b.gpu_out(&xb);
        let plain = on_output(&p);
        run(avgpool::avgpool_forward(k(), &plain, t.view(), None, y_plain.view()).unwrap());
        let what = format!("fused avgpool_forward[{dtype}] case {i}");
        let got = read_act(&y);
        let exact = dtype == DType::F32;
        assert_same_as_unfused(&what, rng.seed, &got, &read_act(&y_plain), exact);
        let mut want = vec![f32::NAN; y_total as usize];
        cpu::avgpool_forward(&mut want, &b.host_out(&x), &plain);
        let r = p.y_offset as usize..(p.y_offset as u64 + p.y_len()) as usize;
        check(
            &what,
            rng.seed,
            &got[r.clone()],
            &want[r],
            tol_for(dtype, FWD),
        );
    }
}

fn global_avgpool_with_bn_relu_matches_reference_and_the_unfused_path(dtype: DType) {
    let mut rng = Rand::new();
    for (i, (input, x_chan, y_chan)) in global_cases().into_iter().enumerate() {
        let (p, x_total, y_total) = global_params(input, x_chan, y_chan);
        let x = as_act(dtype, rng.range(x_total, -1.0, 3.0));
        let b = bn(&mut rng, input, x_chan, 2 * i as u32);
        let (xb, y, y_plain) = (
            up_act(dtype, &x),
            poisoned_act(dtype, y_total),
            poisoned_act(dtype, y_total),
        );
        let k = k();
        run(
            global_avgpool::global_avgpool_forward(k, &p, xb.view(), Some(b.fused()), y.view())
                .unwrap(),
        );
        let t = b.gpu_out(&xb);
        let plain = global_avgpool::GlobalAvgPoolParams { x_offset: 0, ..p };
        run(
            global_avgpool::global_avgpool_forward(k, &plain, t.view(), None, y_plain.view())
                .unwrap(),
        );
        let what = format!("fused global_avgpool_forward[{dtype}] case {i}");
        let got = read_act(&y);
        let exact = dtype == DType::F32;
        assert_same_as_unfused(&what, rng.seed, &got, &read_act(&y_plain), exact);
        let mut want = vec![f32::NAN; y_total as usize];
        cpu::global_avgpool_forward(&mut want, &b.host_out(&x), &plain);
        let r = p.y_offset as usize..(p.y_offset as u64 + p.y_len()) as usize;
        check(
            &what,
            rng.seed,
            &got[r.clone()],
            &want[r],
            tol_for(dtype, FWD),
        );
    }
}

/// A fused BN whose statistics or scales do not cover the pool's channels is refused.
fn fused_pools_refuse_short_statistics() {
    let p = Pool2dParams::new([2, 6, 4, 4], (2, 2), (2, 2), (0, 0)).unwrap();
    let (x, y) = (poisoned(p.x_len()), poisoned(p.y_len()));
    let mut rng = Rand::new();
    let b = bn(&mut rng, [2, 6, 4, 4], 0, 0);
    let short = poisoned(5);
    let [m, _, g, be] = &b.gpu;
    let fused = BnRelu::of(&b.p, m.view(), short.view(), g.view(), be.view());
    let err = avgpool::avgpool_forward(k(), &p, x.view(), Some(fused), y.view())
        .err()
        .unwrap();
    assert!(err.to_string().contains("var"), "{err}");
}
