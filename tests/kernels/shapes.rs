//! The lecture's shape checks through the GPU kernels: a dense block of 2 conv blocks with
//! 10 channels each on a (4, 3, 8, 8) input gives (4, 23, 8, 8); a transition to 10 channels
//! then gives (4, 10, 4, 4). The block is built as the plan builds it (one buffer, layers
//! writing in place, statistics once per channel) and checked value by value against the
//! plain CPU way (explicit concatenation, statistics per layer).

use crate::support::harness::{case, Case};
use crate::support::*;
use densenet_wgpu::ops::avgpool;
use densenet_wgpu::ops::batchnorm::{self, BatchNormParams};
use densenet_wgpu::ops::concat::{self, ConcatParams};
use densenet_wgpu::ops::conv2d::{self, Conv2dParams};
use densenet_wgpu::ops::maxpool::Pool2dParams;
use densenet_wgpu::reference as cpu;

pub fn cases() -> Vec<Case> {
    vec![case(
        "shapes::dense_block_and_transition_shapes",
        dense_block_and_transition_shapes,
    )]
}

const N: u32 = 4;

/// CPU: BN (own batch statistics) -> ReLU -> conv, the d2l conv_block.
#[allow(clippy::too_many_arguments)]
fn cpu_conv_block(
    x: &[f32],
    c: u32,
    k: u32,
    r: u32,
    w: &[f32],
    b: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> Vec<f32> {
    let bn = BatchNormParams::new([N, c, 8, 8]).unwrap().with_relu(true);
    let (mut mean, mut var) = (vec![0.0; c as usize], vec![0.0; c as usize]);
    cpu::batchnorm_stats(&mut mean, &mut var, x, &bn);
    let mut h = vec![0.0; x.len()];
    cpu::batchnorm_forward(&mut h, x, &mean, &var, gamma, beta, &bn);
    let p = Conv2dParams::new([N, c, 8, 8], k, (r, r), (1, 1), (r / 2, r / 2), true).unwrap();
    let mut y = vec![0.0; p.y_len() as usize];
    cpu::conv2d_forward(&mut y, &h, w, Some(b), &p);
    y
}

fn dense_block_and_transition_shapes() {
    let mut rng = Rand::new();
    let plane = (N * 8 * 8) as u64;
    let x = rng.vec(3 * plane);
    let block = poisoned(23 * plane);
    let (mean, var) = (poisoned(23), poisoned(23));
    let t = poisoned(23 * plane);
    let ws = poisoned(1 << 16);
    let mut launches = concat::concat_forward(
        k(),
        &ConcatParams::new([N, 3, 8, 8], 23, 0).unwrap(),
        up(&x).view(),
        block.view(),
    )
    .unwrap();
    let stats = |c0: u32, c: u32| {
        BatchNormParams::new([N, c, 8, 8])
            .unwrap()
            .with_x_channel_offset(c0)
            .with_stat_offset(c0)
    };
    launches.extend(
        batchnorm::batchnorm_stats(k(), &stats(0, 3), block.view(), mean.view(), var.view())
            .unwrap(),
    );

    // Two conv blocks of growth 10, each reading the prefix and writing its channels in place.
    let mut cpu_block = x.clone();
    let mut keep = Vec::new();
    for (i, c) in [3u32, 13].into_iter().enumerate() {
        let (w, b) = (rng.vec(10 * c as u64 * 9), rng.vec(10));
        let (gamma, beta) = (rng.range(c as u64, 0.5, 1.5), rng.vec(c as u64));
        let bn = BatchNormParams::new([N, c, 8, 8]).unwrap().with_relu(true);
        let bufs = [up(&w), up(&b), up(&gamma), up(&beta)];
        launches.extend(
            batchnorm::batchnorm_forward(
                k(),
                &bn,
                block.view(),
                mean.view(),
                var.view(),
                bufs[2].view(),
                bufs[3].view(),
                t.view(),
            )
            .unwrap(),
        );
        let conv = Conv2dParams::new([N, c, 8, 8], 10, (3, 3), (1, 1), (1, 1), true)
            .unwrap()
            .with_y_channel_offset(c);
        launches.extend(
            conv2d::conv2d_forward(
                k(),
                &conv,
                t.view(),
                None,
                bufs[0].view(),
                Some(bufs[1].view()),
                block.view(),
                Some(ws.view()),
            )
            .unwrap(),
        );
        launches.extend(
            batchnorm::batchnorm_stats(k(), &stats(c, 10), block.view(), mean.view(), var.view())
                .unwrap(),
        );
        keep.push(bufs);
        let new = cpu_conv_block(&cpu_block, c, 10, 3, &w, &b, &gamma, &beta);
        cpu_block.extend(new);
        assert_eq!(
            conv.y_offset as u64 + conv.y_len(),
            (c as u64 + 10) * plane,
            "layer {i} ends at channel {}",
            c + 10
        );
    }
    // Transition to 10 channels: BN -> ReLU -> 1x1 conv -> 2x2 average pool.
    let (w, b) = (rng.vec(10 * 23), rng.vec(10));
    let (gamma, beta) = (rng.range(23, 0.5, 1.5), rng.vec(23));
    let bufs = [up(&w), up(&b), up(&gamma), up(&beta)];
    let bn = BatchNormParams::new([N, 23, 8, 8]).unwrap().with_relu(true);
    launches.extend(
        batchnorm::batchnorm_forward(
            k(),
            &bn,
            block.view(),
            mean.view(),
            var.view(),
            bufs[2].view(),
            bufs[3].view(),
            t.view(),
        )
        .unwrap(),
    );
    let conv = Conv2dParams::new([N, 23, 8, 8], 10, (1, 1), (1, 1), (0, 0), true).unwrap();
    let u = poisoned(conv.y_len());
    launches.extend(
        conv2d::conv2d_forward(
            k(),
            &conv,
            t.view(),
            None,
            bufs[0].view(),
            Some(bufs[1].view()),
            u.view(),
            Some(ws.view()),
        )
        .unwrap(),
    );
    let pool = Pool2dParams::new([N, 10, 8, 8], (2, 2), (2, 2), (0, 0)).unwrap();
    let out = poisoned(pool.y_len());
    launches.extend(avgpool::avgpool_forward(k(), &pool, u.view(), None, out.view()).unwrap());
    run(launches);

    // (4, 23, 8, 8) in PyTorch order is 23 channel planes of 4 x 8 x 8 here.
    assert_eq!(block.len, 23 * 4 * 8 * 8);
    check(
        "dense block output (4, 23, 8, 8)",
        rng.seed,
        &read(&block),
        &cpu_block,
        FWD,
    );
    assert_eq!((pool.n, pool.c, pool.out_h, pool.out_w), (4, 10, 4, 4));
    let want_u = cpu_conv_block(&cpu_block, 23, 10, 1, &w, &b, &gamma, &beta);
    let mut want = vec![0.0; pool.y_len() as usize];
    cpu::avgpool_forward(&mut want, &want_u, &pool);
    check(
        "transition output (4, 10, 4, 4)",
        rng.seed,
        &read(&out),
        &want,
        FWD,
    );
}
