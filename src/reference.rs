//! The readable CPU truth: every op, forward and backward, as plain loops over slices with
//! f64 accumulation. Same names as the WGSL entry points and the launchers; same params
//! structs (offsets included); same layouts (channel-major C, N, H, W).
//!
//! Legend: N batch, C channels in, K channels out, H x W input, P x Q output,
//! R x S kernel. Outputs first, then inputs, then params. Backward functions ADD into their
//! gradient outputs, like the kernels.

use crate::ops::batchnorm::BatchNormParams;
use crate::ops::conv2d::Conv2dParams;

// ---------------------------------------------------------------------------------------
// conv2d

/// Calls `f(x_index, y_index, weight_index)` for every multiply-add of the convolution.
/// x_index and y_index exclude the offsets.
fn conv2d_taps(p: &Conv2dParams, mut f: impl FnMut(usize, usize, usize)) {
    let (n, c, h, w) = (p.n as i64, p.c_in as i64, p.h as i64, p.w as i64);
    let (k, oh, ow) = (p.c_out as i64, p.out_h as i64, p.out_w as i64);
    let (r, s) = (p.kernel_h as i64, p.kernel_w as i64);
    for ki in 0..k {
        for ni in 0..n {
            for pi in 0..oh {
                for qi in 0..ow {
                    let yi = ((ki * n + ni) * oh + pi) * ow + qi;
                    for ci in 0..c {
                        for ri in 0..r {
                            let hi = pi * p.stride_h as i64 - p.pad_h as i64 + ri;
                            if hi < 0 || hi >= h {
                                continue;
                            }
                            for si in 0..s {
                                let wi = qi * p.stride_w as i64 - p.pad_w as i64 + si;
                                if wi < 0 || wi >= w {
                                    continue;
                                }
                                let xi = ((ci * n + ni) * h + hi) * w + wi;
                                let wti = ((ki * c + ci) * r + ri) * s + si;
                                f(xi as usize, yi as usize, wti as usize);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// y (K, N, P, Q) at y_offset = conv(x (C, N, H, W) at x_offset, weight (K, C, R, S)) + bias (K).
pub fn conv2d_forward(
    y: &mut [f32],
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    p: &Conv2dParams,
) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let mut acc = vec![0f64; p.y_len() as usize];
    conv2d_taps(p, |xi, yi, wi| {
        acc[yi] += weight[wi] as f64 * x[xo + xi] as f64;
    });
    let plane = acc.len() / p.c_out as usize;
    for (i, a) in acc.iter().enumerate() {
        let b = bias.map_or(0.0, |b| b[i / plane] as f64);
        y[yo + i] = (a + b) as f32;
    }
}

/// dx (C, N, H, W) at x_offset += W^T dy.
pub fn conv2d_backward_data(dx: &mut [f32], dy: &[f32], weight: &[f32], p: &Conv2dParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let mut acc = vec![0f64; p.x_len() as usize];
    conv2d_taps(p, |xi, yi, wi| {
        acc[xi] += weight[wi] as f64 * dy[yo + yi] as f64;
    });
    for (i, a) in acc.iter().enumerate() {
        dx[xo + i] = (dx[xo + i] as f64 + a) as f32;
    }
}

/// dweight (K, C, R, S) += dy x^T.
pub fn conv2d_backward_weight(dweight: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let mut acc = vec![0f64; p.weight_len() as usize];
    conv2d_taps(p, |xi, yi, wi| {
        acc[wi] += x[xo + xi] as f64 * dy[yo + yi] as f64;
    });
    add_into(dweight, &acc);
}

/// dbias (K) += dy summed over N, P, Q.
pub fn conv2d_backward_bias(dbias: &mut [f32], dy: &[f32], p: &Conv2dParams) {
    let plane = (p.n * p.out_h * p.out_w) as usize;
    let dy = &dy[p.y_offset as usize..][..plane * p.c_out as usize];
    for (k, row) in dy.chunks(plane).enumerate() {
        dbias[k] = (dbias[k] as f64 + sum(row)) as f32;
    }
}

// ---------------------------------------------------------------------------------------
// batchnorm

/// Per channel: where its run of M starts in x and in y (offsets included), and its index
/// in the statistics arrays.
fn batchnorm_planes(p: &BatchNormParams) -> impl Iterator<Item = (usize, usize, usize)> {
    let m = p.m as usize;
    let (xo, yo, so) = (
        p.x_offset as usize,
        p.y_offset as usize,
        p.stat_offset as usize,
    );
    (0..p.c as usize).map(move |c| (xo + c * m, yo + c * m, so + c))
}

/// mean and var (biased) at stat_offset of each channel of x (C, N, H, W) at x_offset; the
/// variance in a second pass over the deviations from the mean.
pub fn batchnorm_stats(mean: &mut [f32], var: &mut [f32], x: &[f32], p: &BatchNormParams) {
    let m = p.m as usize;
    for (xi, _, s) in batchnorm_planes(p) {
        let run = &x[xi..][..m];
        let mu = sum(run) / m as f64;
        let sq: f64 = run.iter().map(|&v| (v as f64 - mu).powi(2)).sum();
        mean[s] = mu as f32;
        var[s] = (sq / m as f64) as f32;
    }
}

/// running_mean and running_var at stat_offset move momentum of the way to mean and to the
/// unbiased variance var * M / (M - 1).
pub fn batchnorm_update_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mean: &[f32],
    var: &[f32],
    p: &BatchNormParams,
) {
    assert!(
        p.m > 1,
        "batchnorm training needs more than 1 value per channel"
    );
    let (mom, m) = (p.momentum as f64, p.m as f64);
    for (_, _, s) in batchnorm_planes(p) {
        let unbiased = var[s] as f64 * m / (m - 1.0);
        running_mean[s] = ((1.0 - mom) * running_mean[s] as f64 + mom * mean[s] as f64) as f32;
        running_var[s] = ((1.0 - mom) * running_var[s] as f64 + mom * unbiased) as f32;
    }
}

/// y at y_offset = (x - mean) / sqrt(var + eps) * gamma + beta, with mean and var at
/// stat_offset (batch statistics in training, running ones in evaluation).
pub fn batchnorm_forward(
    y: &mut [f32],
    x: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    beta: &[f32],
    p: &BatchNormParams,
) {
    let m = p.m as usize;
    for (c, (xi, yi, s)) in batchnorm_planes(p).enumerate() {
        let invstd = 1.0 / (var[s] as f64 + p.eps as f64).sqrt();
        let (g, b, mu) = (gamma[c] as f64, beta[c] as f64, mean[s] as f64);
        for (out, &v) in y[yi..][..m].iter_mut().zip(&x[xi..][..m]) {
            *out = ((v as f64 - mu) * invstd * g + b) as f32;
        }
    }
}

/// With xhat = (x - mean) / sqrt(var + eps) and mean, var the batch statistics of x:
/// dx at x_offset += gamma / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)),
/// dgamma += sum(dy * xhat), dbeta += sum(dy).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    p: &BatchNormParams,
) {
    let m = p.m as usize;
    for (c, (xi, yi, s)) in batchnorm_planes(p).enumerate() {
        let invstd = 1.0 / (var[s] as f64 + p.eps as f64).sqrt();
        let mu = mean[s] as f64;
        let (xs, dys) = (&x[xi..][..m], &dy[yi..][..m]);
        let xhat = |v: f32| (v as f64 - mu) * invstd;
        let sum_dy = sum(dys);
        let sum_dy_xhat: f64 = xs.iter().zip(dys).map(|(&v, &g)| g as f64 * xhat(v)).sum();
        let scale = gamma[c] as f64 * invstd;
        for ((d, &v), &g) in dx[xi..][..m].iter_mut().zip(xs).zip(dys) {
            let grad = scale * (g as f64 - sum_dy / m as f64 - xhat(v) * sum_dy_xhat / m as f64);
            *d = (*d as f64 + grad) as f32;
        }
        dgamma[c] = (dgamma[c] as f64 + sum_dy_xhat) as f32;
        dbeta[c] = (dbeta[c] as f64 + sum_dy) as f32;
    }
}

// ---------------------------------------------------------------------------------------
// helpers

fn sum(v: &[f32]) -> f64 {
    v.iter().map(|&a| a as f64).sum()
}

fn add_into(out: &mut [f32], acc: &[f64]) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (*o as f64 + a) as f32;
    }
}
