//! Every kernel on the shapes of the d2l network (those of ../shared/anchors/RESULTS.md,
//! where cuDNN's times are listed), timed with the device synchronised inside the timed
//! region. Throughput is in FLOPs (multiply-add = 2) for the GEMM kernels and in elements
//! for the others.
//!
//! The batch is 256 on a real GPU; on a CPU adapter (llvmpipe) it is 16 unless
//! DENSENET_BENCH_BATCH says otherwise, so that a run ends in minutes.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use densenet_wgpu::kernels::{submit, Dispatch};
use densenet_wgpu::ops::{
    avgpool, batchnorm, concat, conv2d, cross_entropy, global_avgpool, linear, maxpool, relu, sgd,
};
use densenet_wgpu::{Gpu, GpuBuffer, GpuOptions};

fn gpu() -> &'static Gpu {
    static GPU: std::sync::OnceLock<Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions::default()).expect("a GPU adapter"))
}

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

fn convs(c: &mut Criterion) {
    let n = batch();
    // (label, C_in, H=W, C_out, kernel, stride, pad, fused input BN -> ReLU)
    let shapes = [
        ("conv3x3 64x24 -> 32", 64, 24, 32, 3, 1, 1, true),
        ("conv3x3 160x24 -> 32", 160, 24, 32, 3, 1, 1, true),
        ("conv3x3 224x12 -> 32", 224, 12, 32, 3, 1, 1, true),
        ("conv1x1 224x24 -> 112", 224, 24, 112, 1, 1, 0, false),
        ("conv7x7/2 1x96 -> 64", 1, 96, 64, 7, 2, 3, false),
    ];
    for (label, ci, hw, co, k, s, p, fused) in shapes {
        let mut params =
            conv2d::Conv2dParams::new([n, ci, hw, hw], co, (k, k), (s, s), (p, p), true)
                .expect("shape");
        if fused {
            params = params.with_input_bn_relu();
        }
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
        let affine = buf(2 * ci as u64);
        let aff = fused.then(|| affine.view());
        let fwd = conv2d::conv2d_forward(
            gpu(),
            &params,
            x.view(),
            w.view(),
            Some(b.view()),
            y.view(),
            ws.view(),
            aff,
        )
        .expect("launch");
        time(c, &format!("{label} forward (N={n})"), flops.clone(), fwd);
        let data =
            conv2d::conv2d_backward_data(gpu(), &params, y.view(), w.view(), dx.view(), ws.view())
                .expect("launch");
        time(
            c,
            &format!("{label} backward_data (N={n})"),
            flops.clone(),
            data,
        );
        let weight = conv2d::conv2d_backward_weight(
            gpu(),
            &params,
            x.view(),
            y.view(),
            ws.view(),
            partials.view(),
            dw.view(),
            aff,
        )
        .expect("launch");
        time(
            c,
            &format!("{label} backward_weight (N={n})"),
            flops,
            weight,
        );
        let bias =
            conv2d::conv2d_backward_bias(gpu(), &params, y.view(), db.view()).expect("launch");
        time(
            c,
            &format!("{label} backward_bias (N={n})"),
            Throughput::Elements(params.y_len()),
            bias,
        );
    }
}

fn norms_and_pools(c: &mut Criterion) {
    let n = batch();
    let bn = batchnorm::BatchNormParams::new([n, 192, 24, 24])
        .expect("shape")
        .with_relu(true);
    let elems = Throughput::Elements(bn.len());
    let (x, y, dy, dx) = (buf(bn.len()), buf(bn.len()), buf(bn.len()), buf(bn.len()));
    let (mean, g, b, dg, db, rm, rv, aff) = (
        buf(192),
        buf(192),
        buf(192),
        buf(192),
        buf(192),
        buf(192),
        buf(192),
        buf(384),
    );
    // Variances must be positive.
    let var_pos = gpu().upload("var", &vec![1.0f32; 192]).expect("buffer");
    let stats = batchnorm::batchnorm_stats(gpu(), &bn, x.view(), mean.view(), var_pos.view())
        .expect("launch");
    time(
        c,
        &format!("batchnorm_stats 192x24 (N={n})"),
        elems.clone(),
        stats,
    );
    let run = batchnorm::batchnorm_update_running(
        gpu(),
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
        gpu(),
        &bn,
        x.view(),
        mean.view(),
        var_pos.view(),
        g.view(),
        b.view(),
        y.view(),
    )
    .expect("launch");
    time(
        c,
        &format!("batchnorm_forward 192x24 (N={n})"),
        elems.clone(),
        fwd,
    );
    let affine = batchnorm::batchnorm_affine(
        gpu(),
        &bn,
        mean.view(),
        var_pos.view(),
        g.view(),
        b.view(),
        aff.view(),
    )
    .expect("launch");
    time(c, "batchnorm_affine 192", Throughput::Elements(192), affine);
    let bwd = batchnorm::batchnorm_backward(
        gpu(),
        &bn,
        x.view(),
        dy.view(),
        mean.view(),
        var_pos.view(),
        g.view(),
        b.view(),
        dx.view(),
        dg.view(),
        db.view(),
    )
    .expect("launch");
    time(
        c,
        &format!("batchnorm_backward 192x24 (N={n})"),
        elems.clone(),
        bwd,
    );

    let rp = relu::ReluParams::new(bn.len() as u32);
    time(
        c,
        &format!("relu_forward 192x24 (N={n})"),
        elems.clone(),
        relu::relu_forward(gpu(), &rp, x.view(), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("relu_backward 192x24 (N={n})"),
        elems.clone(),
        relu::relu_backward(gpu(), &rp, x.view(), dy.view(), dx.view()).expect("launch"),
    );
    let cp = concat::ConcatParams::new([n, 32, 24, 24], 192, 160).expect("shape");
    time(
        c,
        &format!("concat_forward 32 of 192x24 (N={n})"),
        Throughput::Elements(cp.count as u64),
        concat::concat_forward(gpu(), &cp, x.view(), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("concat_backward 32 of 192x24 (N={n})"),
        Throughput::Elements(cp.count as u64),
        concat::concat_backward(gpu(), &cp, dy.view(), dx.view()).expect("launch"),
    );

    let mp = maxpool::Pool2dParams::new([n, 64, 48, 48], (3, 3), (2, 2), (1, 1)).expect("shape");
    let (mx, my, am) = (buf(mp.x_len()), buf(mp.y_len()), buf(mp.y_len()));
    let mdx = buf(mp.x_len());
    time(
        c,
        &format!("maxpool_forward 64x48 3x3/2 (N={n})"),
        Throughput::Elements(mp.x_len()),
        maxpool::maxpool_forward(gpu(), &mp, mx.view(), my.view(), am.view()).expect("launch"),
    );
    time(
        c,
        &format!("maxpool_backward 64x48 3x3/2 (N={n})"),
        Throughput::Elements(mp.x_len()),
        maxpool::maxpool_backward(gpu(), &mp, my.view(), am.view(), mdx.view()).expect("launch"),
    );
    let ap = maxpool::Pool2dParams::new([n, 192, 24, 24], (2, 2), (2, 2), (0, 0)).expect("shape");
    time(
        c,
        &format!("avgpool_forward 192x24 2x2 (N={n})"),
        Throughput::Elements(ap.x_len()),
        avgpool::avgpool_forward(gpu(), &ap, x.view(), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("avgpool_backward 192x24 2x2 (N={n})"),
        Throughput::Elements(ap.x_len()),
        avgpool::avgpool_backward(gpu(), &ap, dy.view(), dx.view()).expect("launch"),
    );
    let gp = global_avgpool::GlobalAvgPoolParams::new([n, 248, 3, 3]).expect("shape");
    time(
        c,
        &format!("global_avgpool_forward 248x3 (N={n})"),
        Throughput::Elements(gp.x_len()),
        global_avgpool::global_avgpool_forward(gpu(), &gp, x.view(), y.view()).expect("launch"),
    );
    time(
        c,
        &format!("global_avgpool_backward 248x3 (N={n})"),
        Throughput::Elements(gp.x_len()),
        global_avgpool::global_avgpool_backward(gpu(), &gp, dy.view(), dx.view()).expect("launch"),
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
        linear::linear_forward(gpu(), &lp, x.view(), w.view(), Some(b.view()), y.view())
            .expect("launch"),
    );
    time(
        c,
        &format!("linear_backward_data 248 -> 10 (N={n})"),
        flops.clone(),
        linear::linear_backward_data(gpu(), &lp, dy.view(), w.view(), dx.view()).expect("launch"),
    );
    time(
        c,
        &format!("linear_backward_weight 248 -> 10 (N={n})"),
        flops,
        linear::linear_backward_weight(gpu(), &lp, x.view(), dy.view(), dw.view()).expect("launch"),
    );
    time(
        c,
        &format!("linear_backward_bias 10 (N={n})"),
        Throughput::Elements(lp.y_len()),
        linear::linear_backward_bias(gpu(), &lp, dy.view(), db.view()).expect("launch"),
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
            gpu(),
            &ce,
            y.view(),
            labels.view(),
            dy.view(),
            loss.view(),
            correct.view(),
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
        sgd::sgd_update(gpu(), &sp, p.view(), g.view(), Some(v.view())).expect("launch"),
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
