//! Every kernel on the shapes of the d2l network (those of docs/BENCHMARKS.md, where
//! cuDNN's times are listed), and every variant of ops that have several, side by side;
//! timed with the device synchronised inside the timed region. Throughput is in FLOPs
//! (multiply-add = 2) for the GEMM kernels and in elements for the others.
//!
//! The batch is 256 on a real GPU; on a CPU adapter (llvmpipe) it is 16 unless
//! DENSENET_BENCH_BATCH says otherwise, so that a run ends in minutes.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use densenet_wgpu::kernels::{submit, Dispatch, Kernels};
use densenet_wgpu::ops::batchnorm::BnRelu;
use densenet_wgpu::ops::{
    avgpool, batchnorm, concat, conv2d, cross_entropy, global_avgpool, linear, maxpool, relu, sgd,
};
use densenet_wgpu::GpuBuffer;
use support::{each_variant, gpu, k};

fn batch() -> u32 {
    match std::env::var("DENSENET_BENCH_BATCH") {
        Ok(v) => v.parse().expect("DENSENET_BENCH_BATCH must be a number"),
        Err(_) if gpu().is_software() => 16,
        Err(_) => 256,
    }
}

fn buf(len: u64) -> GpuBuffer {
    let mut rng = fastrand::Rng::with_seed(len);
    let data: Vec<f32> = (0..len.max(1)).map(|_| rng.f32() - 0.5).collect();
    gpu().upload("bench", &data).expect("buffer")
}

/// Times `dispatches` as one submission, waiting for the device each iteration.
fn time(c: &mut Criterion, name: &str, throughput: Throughput, dispatches: Vec<Dispatch>) {
    let mut group = c.benchmark_group("kernels");
    group.throughput(throughput);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            submit(gpu(), &dispatches);
            gpu().wait().expect("device");
            let start = Instant::now();
            for _ in 0..iters {
                submit(gpu(), &dispatches);
            }
            gpu().wait().expect("device");
            start.elapsed()
        })
    });
    group.finish();
}

/// (label, C_in, H=W, C_out, kernel, stride, pad, fused input BN -> ReLU)
type ConvShape = (&'static str, u32, u32, u32, u32, u32, u32, bool);

/// The d2l network's convolutions, and the growth-8 and growth-12 layers of the tiny and
/// small presets (where the 8-channel tile differs from the 16-channel one).
const CONV_SHAPES: [ConvShape; 7] = [
    ("conv3x3 64x24 -> 32", 64, 24, 32, 3, 1, 1, true),
    ("conv3x3 160x24 -> 32", 160, 24, 32, 3, 1, 1, true),
    ("conv3x3 224x12 -> 32", 224, 12, 32, 3, 1, 1, true),
    ("conv1x1 224x24 -> 112", 224, 24, 112, 1, 1, 0, false),
    ("conv7x7/2 1x96 -> 64", 1, 96, 64, 7, 2, 3, false),
    ("conv3x3 16x24 -> 8", 16, 24, 8, 3, 1, 1, true),
    ("conv3x3 40x28 -> 12", 40, 28, 12, 3, 1, 1, true),
];

fn convs(c: &mut Criterion) {
    let n = batch();
    for (label, ci, hw, co, r, s, p, fused) in CONV_SHAPES {
        for (variant, k) in each_variant("conv2d") {
            let name = format!("{label} [{variant}] (N={n})");
            conv_variant(c, k, &name, [n, ci, hw, hw], co, (r, s, p), fused);
        }
    }
}

fn conv_variant(
    c: &mut Criterion,
    k: &Kernels,
    name: &str,
    input: [u32; 4],
    co: u32,
    (r, s, p): (u32, u32, u32),
    fused: bool,
) {
    let params = conv2d::Conv2dParams::new(input, co, (r, r), (s, s), (p, p), true).expect("shape");
    let flops = Throughput::Elements(2 * params.macs());
    let (x, w, b, y) = (
        buf(params.x_len()),
        buf(params.weight_len()),
        buf(co as u64),
        buf(params.y_len()),
    );
    let (ws, partials, dx, dw, db) = (
        buf(params.workspace_len()),
        buf(params.partials_len()),
        buf(params.x_len()),
        buf(params.weight_len()),
        buf(co as u64),
    );
    let affine = buf(2 * input[1] as u64);
    let aff = fused.then(|| affine.view());
    let (bias, yv, wv) = (Some(b.view()), y.view(), w.view());
    let fwd = conv2d::conv2d_forward(k, &params, x.view(), aff, wv, bias, yv, Some(ws.view()));
    time(
        c,
        &format!("{name} forward"),
        flops.clone(),
        fwd.expect("launch"),
    );
    let data = conv2d::conv2d_backward_data(k, &params, yv, wv, dx.view(), Some(ws.view()));
    time(
        c,
        &format!("{name} backward_data"),
        flops.clone(),
        data.expect("launch"),
    );
    let weight = conv2d::conv2d_backward_weight(
        k,
        &params,
        x.view(),
        aff,
        yv,
        Some(ws.view()),
        partials.view(),
        dw.view(),
    );
    time(
        c,
        &format!("{name} backward_weight"),
        flops,
        weight.expect("launch"),
    );
    let bias = conv2d::conv2d_backward_bias(k, &params, yv, db.view()).expect("launch");
    time(
        c,
        &format!("{name} backward_bias"),
        Throughput::Elements(params.y_len()),
        bias,
    );
}

fn norms_and_pools(c: &mut Criterion) {
    let n = batch();
    let bn = batchnorm::BatchNormParams::new([n, 192, 24, 24])
        .expect("shape")
        .with_relu(true);
    let elems = Throughput::Elements(bn.len());
    let (x, y, dy, dx) = (buf(bn.len()), buf(bn.len()), buf(bn.len()), buf(bn.len()));
    // gamma then beta in one buffer, as a layout holds them; likewise their gradients.
    let (mean, gb, dgb, rm, rv, aff) = (buf(192), buf(384), buf(384), buf(192), buf(192), buf(384));
    let (g, b) = (gb.slice(0, 192), gb.slice(192, 192));
    // Variances must be positive.
    let var_pos = gpu().upload("var", &vec![1.0f32; 192]).expect("buffer");
    let stats = batchnorm::batchnorm_stats(k(), &bn, x.view(), mean.view(), var_pos.view())
        .expect("launch");
    time(
        c,
        &format!("batchnorm_stats 192x24 (N={n})"),
        elems.clone(),
        stats,
    );
    let run = batchnorm::batchnorm_update_running(
        k(),
        &bn,
        mean.view(),
        var_pos.view(),
        rm.view(),
        rv.view(),
    )
    .expect("launch");
    time(
        c,
        "batchnorm_update_running 192",
        Throughput::Elements(192),
        run,
    );
    let fwd = batchnorm::batchnorm_forward(
        k(),
        &bn,
        x.view(),
        mean.view(),
        var_pos.view(),
        g,
        b,
        y.view(),
    )
    .expect("launch");
    time(
        c,
        &format!("batchnorm_forward 192x24 (N={n})"),
        elems.clone(),
        fwd,
    );
    let affine =
        batchnorm::batchnorm_affine(k(), &bn, mean.view(), var_pos.view(), g, b, aff.view())
            .expect("launch");
    time(c, "batchnorm_affine 192", Throughput::Elements(192), affine);
    // The training statistics (with the running update) and the backward, each variant.
    for (variant, k) in each_variant("batchnorm") {
        let len = batchnorm::partials_bound(192);
        let partials = (len > 0).then(|| buf(len));
        let part = partials.as_ref().map(|p| p.view());
        let (xv, mv, vv) = (x.view(), mean.view(), var_pos.view());
        let stats =
            batchnorm::batchnorm_stats_update(k, &bn, xv, mv, vv, rm.view(), rv.view(), part);
        let name = format!("batchnorm_stats_update [{variant}] 192x24 (N={n})");
        time(c, &name, elems.clone(), stats.expect("launch"));
        // The backward binds gamma and beta (and their gradients) as one buffer each.
        let (gv, bv) = (gb.slice(0, 192), gb.slice(192, 192));
        let bwd = batchnorm::batchnorm_backward(
            k,
            &bn,
            xv,
            dy.view(),
            mv,
            vv,
            gv,
            bv,
            dx.view(),
            dgb.slice(0, 192),
            dgb.slice(192, 192),
            part,
        );
        let name = format!("batchnorm_backward [{variant}] 192x24 (N={n})");
        time(c, &name, elems.clone(), bwd.expect("launch"));
    }

    let rp = relu::ReluParams::new(bn.len() as u32);
    time(
        c,
        &format!("relu_forward 192x24 (N={n})"),
        elems.clone(),
        relu::relu_forward(k(), &rp, x.view(), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("relu_backward 192x24 (N={n})"),
        elems.clone(),
        relu::relu_backward(k(), &rp, x.view(), dy.view(), dx.view()).expect("launch"),
    );
    let cp = concat::ConcatParams::new([n, 32, 24, 24], 192, 160).expect("shape");
    time(
        c,
        &format!("concat_forward 32 of 192x24 (N={n})"),
        Throughput::Elements(cp.count as u64),
        concat::concat_forward(k(), &cp, x.view(), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("concat_backward 32 of 192x24 (N={n})"),
        Throughput::Elements(cp.count as u64),
        concat::concat_backward(k(), &cp, dy.view(), dx.view()).expect("launch"),
    );

    let mp = maxpool::Pool2dParams::new([n, 64, 48, 48], (3, 3), (2, 2), (1, 1)).expect("shape");
    let (mx, my) = (buf(mp.x_len()), buf(mp.y_len()));
    let am = gpu()
        .upload("argmax", &vec![0u32; mp.y_len() as usize])
        .expect("buffer");
    let (mean64, g64, b64) = (buf(64), buf(64), buf(64));
    let var64 = gpu().upload("var", &vec![1.0f32; 64]).expect("buffer");
    let mdx = buf(mp.x_len());
    time(
        c,
        &format!("maxpool_forward 64x48 3x3/2 (N={n})"),
        Throughput::Elements(mp.x_len()),
        maxpool::maxpool_forward(k(), &mp, mx.view(), None, my.view(), Some(am.view()))
            .expect("launch"),
    );
    // The stem's: BN -> ReLU applied while loading.
    let fused = BnRelu::of(&bn, mean64.view(), var64.view(), g64.view(), b64.view());
    time(
        c,
        &format!("maxpool_forward with BN -> ReLU 64x48 3x3/2 (N={n})"),
        Throughput::Elements(mp.x_len()),
        maxpool::maxpool_forward(k(), &mp, mx.view(), Some(fused), my.view(), Some(am.view()))
            .expect("launch"),
    );
    time(
        c,
        &format!("maxpool_backward 64x48 3x3/2 (N={n})"),
        Throughput::Elements(mp.x_len()),
        maxpool::maxpool_backward(k(), &mp, my.view(), am.view(), mdx.view()).expect("launch"),
    );
    let ap = maxpool::Pool2dParams::new([n, 192, 24, 24], (2, 2), (2, 2), (0, 0)).expect("shape");
    time(
        c,
        &format!("avgpool_forward 192x24 2x2 (N={n})"),
        Throughput::Elements(ap.x_len()),
        avgpool::avgpool_forward(k(), &ap, x.view(), None, y.view()).expect("launch"),
    );
    // The transition's: BN -> ReLU applied while loading.
    let fused = BnRelu::of(&bn, mean.view(), var_pos.view(), g, b);
    time(
        c,
        &format!("avgpool_forward with BN -> ReLU 192x24 2x2 (N={n})"),
        Throughput::Elements(ap.x_len()),
        avgpool::avgpool_forward(k(), &ap, x.view(), Some(fused), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("avgpool_backward 192x24 2x2 (N={n})"),
        Throughput::Elements(ap.x_len()),
        avgpool::avgpool_backward(k(), &ap, dy.view(), dx.view()).expect("launch"),
    );
    let gp = global_avgpool::GlobalAvgPoolParams::new([n, 248, 3, 3]).expect("shape");
    time(
        c,
        &format!("global_avgpool_forward 248x3 (N={n})"),
        Throughput::Elements(gp.x_len()),
        global_avgpool::global_avgpool_forward(k(), &gp, x.view(), None, y.view()).expect("launch"),
    );
    time(
        c,
        &format!("global_avgpool_backward 248x3 (N={n})"),
        Throughput::Elements(gp.x_len()),
        global_avgpool::global_avgpool_backward(k(), &gp, dy.view(), dx.view()).expect("launch"),
    );
}

fn head_and_optimizer(c: &mut Criterion) {
    let n = batch();
    let lp = linear::LinearParams::new(n, 248, 10, true).expect("shape");
    let flops = Throughput::Elements(2 * lp.weight_len() * n as u64);
    let (x, w, b, y, dy) = (
        buf(lp.x_len()),
        buf(lp.weight_len()),
        buf(10),
        buf(lp.y_len()),
        buf(lp.y_len()),
    );
    let (dx, dw, db) = (buf(lp.x_len()), buf(lp.weight_len()), buf(10));
    time(
        c,
        &format!("linear_forward 248 -> 10 (N={n})"),
        flops.clone(),
        linear::linear_forward(k(), &lp, x.view(), w.view(), Some(b.view()), y.view())
            .expect("launch"),
    );
    time(
        c,
        &format!("linear_backward_data 248 -> 10 (N={n})"),
        flops.clone(),
        linear::linear_backward_data(k(), &lp, dy.view(), w.view(), dx.view()).expect("launch"),
    );
    time(
        c,
        &format!("linear_backward_weight 248 -> 10 (N={n})"),
        flops,
        linear::linear_backward_weight(k(), &lp, x.view(), dy.view(), dw.view()).expect("launch"),
    );
    time(
        c,
        &format!("linear_backward_bias 10 (N={n})"),
        Throughput::Elements(lp.y_len()),
        linear::linear_backward_bias(k(), &lp, dy.view(), db.view()).expect("launch"),
    );
    let ce = cross_entropy::CrossEntropyParams::new(n, 10).expect("shape");
    let labels: Vec<u32> = (0..n).map(|i| i % 10).collect();
    let labels = gpu().upload("labels", &labels).expect("buffer");
    let (loss, correct) = (buf(1), gpu().upload("correct", &[0u32]).expect("buffer"));
    time(
        c,
        &format!("softmax_cross_entropy 10 classes (N={n})"),
        Throughput::Elements(lp.y_len()),
        cross_entropy::softmax_cross_entropy(
            k(),
            &ce,
            y.view(),
            labels.view(),
            dy.view(),
            loss.view(),
            correct.view(),
            None,
        )
        .expect("launch"),
    );
    let count = 758_226;
    let sp = sgd::SgdParams::new(count, 0.1, 0.9, 5e-4, false).expect("params");
    let (p, g, v) = (buf(count as u64), buf(count as u64), buf(count as u64));
    time(
        c,
        "sgd_update 758,226 parameters",
        Throughput::Elements(count as u64),
        sgd::sgd_update(
            k(),
            &sp,
            p.view(),
            g.view(),
            Some(v.view()),
            Default::default(),
        )
        .expect("launch"),
    );
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = kernels;
    config = config();
    targets = convs, norms_and_pools, head_and_optimizer
}
criterion_main!(kernels);
