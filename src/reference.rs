//! The readable CPU truth: every op, forward and backward, as plain loops over slices with
//! f64 accumulation. Same names as the WGSL entry points and the launchers; same params
//! structs (offsets included); same layouts (channel-major C, N, H, W).
//!
//! Legend: N batch, C channels in, K channels out, H x W input, P x Q output,
//! R x S kernel. Outputs first, then inputs, then params. Backward functions ADD into their
//! gradient outputs, like the kernels.

use crate::ops::adam::AdamParams;
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::concat::ConcatParams;
use crate::ops::conv2d::Conv2dParams;
use crate::ops::cross_entropy::CrossEntropyParams;
use crate::ops::global_avgpool::GlobalAvgPoolParams;
use crate::ops::linear::LinearParams;
use crate::ops::maxpool::Pool2dParams;
use crate::ops::relu::ReluParams;
use crate::ops::sgd::SgdParams;

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
// relu

/// y[y_offset + i] = max(x[x_offset + i], 0).
pub fn relu_forward(y: &mut [f32], x: &[f32], p: &ReluParams) {
    let (xo, yo, n) = (p.x_offset as usize, p.y_offset as usize, p.count as usize);
    for i in 0..n {
        y[yo + i] = x[xo + i].max(0.0);
    }
}

/// dx += dy where the forward output y is positive.
pub fn relu_backward(dx: &mut [f32], y: &[f32], dy: &[f32], p: &ReluParams) {
    let (xo, yo, n) = (p.x_offset as usize, p.y_offset as usize, p.count as usize);
    for i in 0..n {
        if y[yo + i] > 0.0 {
            dx[xo + i] += dy[yo + i];
        }
    }
}

// ---------------------------------------------------------------------------------------
// concat

/// Copies the part into its channel range of the whole.
pub fn concat_forward(whole: &mut [f32], part: &[f32], p: &ConcatParams) {
    let (o, n) = (p.offset as usize, p.count as usize);
    whole[o..o + n].copy_from_slice(&part[..n]);
}

/// dpart += the part's channel range of dwhole.
pub fn concat_backward(dpart: &mut [f32], dwhole: &[f32], p: &ConcatParams) {
    let (o, n) = (p.offset as usize, p.count as usize);
    for (d, g) in dpart[..n].iter_mut().zip(&dwhole[o..o + n]) {
        *d += g;
    }
}

// ---------------------------------------------------------------------------------------
// linear: x (I, N) feature-major, weight (O, I), bias (O), y (N, O)

pub fn linear_forward(
    y: &mut [f32],
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    p: &LinearParams,
) {
    let (n, i_f, o_f) = (
        p.n as usize,
        p.in_features as usize,
        p.out_features as usize,
    );
    for ni in 0..n {
        for o in 0..o_f {
            let mut acc = bias.map_or(0.0, |b| b[o] as f64);
            for i in 0..i_f {
                acc += weight[o * i_f + i] as f64 * x[i * n + ni] as f64;
            }
            y[ni * o_f + o] = acc as f32;
        }
    }
}

/// dx (I, N) += W^T dy.
pub fn linear_backward_data(dx: &mut [f32], dy: &[f32], weight: &[f32], p: &LinearParams) {
    let (n, i_f, o_f) = (
        p.n as usize,
        p.in_features as usize,
        p.out_features as usize,
    );
    for i in 0..i_f {
        for ni in 0..n {
            let acc: f64 = (0..o_f)
                .map(|o| weight[o * i_f + i] as f64 * dy[ni * o_f + o] as f64)
                .sum();
            dx[i * n + ni] = (dx[i * n + ni] as f64 + acc) as f32;
        }
    }
}

/// dweight (O, I) += dy^T x^T.
pub fn linear_backward_weight(dweight: &mut [f32], x: &[f32], dy: &[f32], p: &LinearParams) {
    let (n, i_f, o_f) = (
        p.n as usize,
        p.in_features as usize,
        p.out_features as usize,
    );
    for o in 0..o_f {
        for i in 0..i_f {
            let acc: f64 = (0..n)
                .map(|ni| dy[ni * o_f + o] as f64 * x[i * n + ni] as f64)
                .sum();
            dweight[o * i_f + i] = (dweight[o * i_f + i] as f64 + acc) as f32;
        }
    }
}

/// dbias (O) += dy summed over the batch.
pub fn linear_backward_bias(dbias: &mut [f32], dy: &[f32], p: &LinearParams) {
    let (n, o_f) = (p.n as usize, p.out_features as usize);
    for o in 0..o_f {
        let acc: f64 = (0..n).map(|ni| dy[ni * o_f + o] as f64).sum();
        dbias[o] = (dbias[o] as f64 + acc) as f32;
    }
}

// ---------------------------------------------------------------------------------------
// softmax cross-entropy

/// Returns (summed loss over valid samples, correct predictions) and adds the gradient of
/// the MEAN loss to dlogits. Labels >= classes are padding and count for nothing. With label
/// smoothing e the target is (1 - e) onehot + e / classes, as PyTorch's `label_smoothing`.
pub fn softmax_cross_entropy(
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    p: &CrossEntropyParams,
) -> (f32, u32) {
    let (n, c) = (p.n as usize, p.classes as usize);
    let valid = labels[..n].iter().filter(|&&l| l < p.classes).count();
    let scale = 1.0 / valid.max(1) as f64;
    let (mut loss, mut correct) = (0f64, 0u32);
    for ni in 0..n {
        let label = labels[ni] as usize;
        if label >= c {
            continue;
        }
        let row = &logits[ni * c..][..c];
        // First maximum wins, as argmax in PyTorch.
        let (arg, best) = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |(a, b), (o, &v)| if v > b { (o, v) } else { (a, b) },
            );
        let lse = best as f64
            + row
                .iter()
                .map(|&v| (v as f64 - best as f64).exp())
                .sum::<f64>()
                .ln();
        let e = p.smoothing as f64;
        let target = |o: usize| (1.0 - e) * (o == label) as u8 as f64 + e / c as f64;
        loss += row
            .iter()
            .enumerate()
            .map(|(o, &v)| target(o) * (lse - v as f64))
            .sum::<f64>();
        correct += (arg == label) as u32;
        for (o, &v) in row.iter().enumerate() {
            let prob = (v as f64 - lse).exp();
            let g = (prob - target(o)) * scale;
            dlogits[ni * c + o] = (dlogits[ni * c + o] as f64 + g) as f32;
        }
    }
    (loss as f32, correct)
}

/// Multi-label sigmoid cross-entropy (torch's BCEWithLogitsLoss with `pos_weight`, mean over
/// samples and labels) of `logits` (n, k) against `targets` (n x k, 0 or 1; a row starting
/// with IGNORE is padding): (summed per-sample mean loss, gradient of the mean, samples with
/// every label right), in f64.
pub fn sigmoid_cross_entropy(
    logits: &[f32],
    targets: &[u32],
    pos_weight: &[f32],
    (n, k): (usize, usize),
) -> (f64, Vec<f32>, u32) {
    let softplus = |z: f64| z.max(0.0) + (-z.abs()).exp().ln_1p();
    let valid = (0..n).filter(|&i| targets[i * k] != u32::MAX).count();
    let scale = 1.0 / (valid.max(1) * k) as f64;
    let (mut loss, mut grad, mut right) = (0f64, vec![0f32; n * k], 0u32);
    for i in (0..n).filter(|&i| targets[i * k] != u32::MAX) {
        let mut row = 0f64;
        let mut all = true;
        for o in 0..k {
            let (z, y, w) = (
                logits[i * k + o] as f64,
                (targets[i * k + o] != 0) as u8 as f64,
                pos_weight[o] as f64,
            );
            row += w * y * softplus(-z) + (1.0 - y) * softplus(z);
            let s = 1.0 / (1.0 + (-z).exp());
            grad[i * k + o] = ((s * (w * y + 1.0 - y) - w * y) * scale) as f32;
            all &= (z > 0.0) == (y > 0.5);
        }
        loss += row / k as f64;
        right += all as u32;
    }
    (loss, grad, right)
}

// ---------------------------------------------------------------------------------------
// SGD

/// One torch.optim.SGD step (dampening 0) on `param`, updating `velocity` when momentum > 0.
pub fn sgd_update(param: &mut [f32], grad: &[f32], velocity: &mut [f32], p: &SgdParams) {
    for i in 0..p.count as usize {
        let mut g = grad[i] as f64 + p.weight_decay as f64 * param[i] as f64;
        if p.momentum != 0.0 {
            let v = p.momentum as f64 * velocity[i] as f64 + g;
            velocity[i] = v as f32;
            g = if p.nesterov != 0 {
                g + p.momentum as f64 * v
            } else {
                v
            };
        }
        param[i] = (param[i] as f64 - p.lr as f64 * g) as f32;
    }
}

/// One torch.optim.Adam / AdamW step (amsgrad off) on `param`, moving the moments `m` and
/// `v`, with the bias corrections in `p` (its step), in f64.
pub fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], p: &AdamParams) {
    let (b1, b2) = (p.beta1 as f64, p.beta2 as f64);
    let (lr, wd) = (p.lr as f64, p.weight_decay as f64);
    for i in 0..p.count as usize {
        let mut x = param[i] as f64;
        let mut g = grad[i] as f64;
        match p.decoupled != 0 {
            true => x *= 1.0 - lr * wd,
            false => g += wd * x,
        }
        let mi = b1 * m[i] as f64 + (1.0 - b1) * g;
        let vi = b2 * v[i] as f64 + (1.0 - b2) * g * g;
        m[i] = mi as f32;
        v[i] = vi as f32;
        let denom = vi.sqrt() / (p.bias2 as f64).sqrt() + p.eps as f64;
        param[i] = (x - lr / p.bias1 as f64 * mi / denom) as f32;
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

/// `affine[2c] = gamma[c] / sqrt(var + eps)`, `affine[2c + 1] = beta[c] - mean * affine[2c]`.
pub fn batchnorm_affine(
    affine: &mut [f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    beta: &[f32],
    p: &BatchNormParams,
) {
    for c in 0..p.c as usize {
        let s = p.stat_offset as usize + c;
        let scale = gamma[c] as f64 / (var[s] as f64 + p.eps as f64).sqrt();
        affine[2 * c] = scale as f32;
        affine[2 * c + 1] = (beta[c] as f64 - mean[s] as f64 * scale) as f32;
    }
}

/// y at y_offset = (x - mean) / sqrt(var + eps) * gamma + beta (then max(., 0) when relu is
/// set), with mean and var at stat_offset (batch statistics in training, running ones in
/// evaluation).
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
            let z = (v as f64 - mu) * invstd * g + b;
            *out = if p.relu != 0 { z.max(0.0) } else { z } as f32;
        }
    }
}

/// With xhat = (x - mean) / sqrt(var + eps) and mean, var the batch statistics of x:
/// dx at x_offset += gamma / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)),
/// dgamma += sum(dy * xhat), dbeta += sum(dy). With relu set, dy is first zeroed where the
/// forward output xhat * gamma + beta was not positive.
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
    beta: &[f32],
    p: &BatchNormParams,
) {
    let m = p.m as usize;
    for (c, (xi, yi, s)) in batchnorm_planes(p).enumerate() {
        let invstd = 1.0 / (var[s] as f64 + p.eps as f64).sqrt();
        let mu = mean[s] as f64;
        let (xs, dys) = (&x[xi..][..m], &dy[yi..][..m]);
        let xhat = |v: f32| (v as f64 - mu) * invstd;
        let (g_c, b_c) = (gamma[c] as f64, beta[c] as f64);
        let masked: Vec<f64> = xs
            .iter()
            .zip(dys)
            .map(|(&v, &g)| match p.relu != 0 && xhat(v) * g_c + b_c <= 0.0 {
                true => 0.0,
                false => g as f64,
            })
            .collect();
        let sum_dy: f64 = masked.iter().sum();
        let sum_dy_xhat: f64 = xs.iter().zip(&masked).map(|(&v, &g)| g * xhat(v)).sum();
        let scale = g_c * invstd;
        for ((d, &v), &g) in dx[xi..][..m].iter_mut().zip(xs).zip(&masked) {
            let grad = scale * (g - sum_dy / m as f64 - xhat(v) * sum_dy_xhat / m as f64);
            *d = (*d as f64 + grad) as f32;
        }
        dgamma[c] = (dgamma[c] as f64 + sum_dy_xhat) as f32;
        dbeta[c] = (dbeta[c] as f64 + sum_dy) as f32;
    }
}

// ---------------------------------------------------------------------------------------
// pooling

/// Calls `f(plane, y_index, hs..he, ws..we)` for every output element of a 2-D pool: the
/// (c, n) plane index, y's index (without offset) and the window clipped to the input.
fn pool2d_windows(
    p: &Pool2dParams,
    mut f: impl FnMut(usize, usize, std::ops::Range<usize>, std::ops::Range<usize>),
) {
    let (h, w) = (p.h as i64, p.w as i64);
    let (oh, ow) = (p.out_h as usize, p.out_w as usize);
    for plane in 0..(p.c * p.n) as usize {
        for pi in 0..oh {
            let h0 = (pi * p.stride_h as usize) as i64 - p.pad_h as i64;
            let rows = h0.max(0) as usize..(h0 + p.kernel_h as i64).min(h) as usize;
            for qi in 0..ow {
                let w0 = (qi * p.stride_w as usize) as i64 - p.pad_w as i64;
                let cols = w0.max(0) as usize..(w0 + p.kernel_w as i64).min(w) as usize;
                f(plane, (plane * oh + pi) * ow + qi, rows.clone(), cols);
            }
        }
    }
}

/// y (C, N, P, Q) at y_offset = the max of each window of x (C, N, H, W) at x_offset,
/// padding excluded; argmax (C, N, P, Q, from element 0) = the in-plane index h * W + w of
/// the first maximum in row-major window order, or of the last NaN if any (as PyTorch).
pub fn maxpool_forward(y: &mut [f32], argmax: &mut [u32], x: &[f32], p: &Pool2dParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let (hw, w) = ((p.h * p.w) as usize, p.w as usize);
    pool2d_windows(p, |plane, yi, rows, cols| {
        let xp = &x[xo + plane * hw..][..hw];
        let mut best_i = rows.start * w + cols.start;
        let mut best = xp[best_i];
        for r in rows {
            for s in cols.clone() {
                let v = xp[r * w + s];
                if v > best || v.is_nan() {
                    best = v;
                    best_i = r * w + s;
                }
            }
        }
        y[yo + yi] = best;
        argmax[yi] = best_i as u32;
    });
}

/// dx (C, N, H, W) at x_offset += dy routed to each window's saved argmax.
pub fn maxpool_backward(dx: &mut [f32], dy: &[f32], argmax: &[u32], p: &Pool2dParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let (hw, pq) = ((p.h * p.w) as usize, (p.out_h * p.out_w) as usize);
    let mut acc = vec![0f64; p.x_len() as usize];
    for (yi, &a) in argmax[..p.y_len() as usize].iter().enumerate() {
        acc[yi / pq * hw + a as usize] += dy[yo + yi] as f64;
    }
    add_into(&mut dx[xo..], &acc);
}

/// y (C, N, P, Q) at y_offset = the sum of each window of x at x_offset / (KH*KW)
/// (count_include_pad: padding counts as zeros).
pub fn avgpool_forward(y: &mut [f32], x: &[f32], p: &Pool2dParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let (hw, w) = ((p.h * p.w) as usize, p.w as usize);
    let area = (p.kernel_h * p.kernel_w) as f64;
    pool2d_windows(p, |plane, yi, rows, cols| {
        let xp = &x[xo + plane * hw..][..hw];
        let s: f64 = rows.map(|r| sum(&xp[r * w..][cols.clone()])).sum();
        y[yo + yi] = (s / area) as f32;
    });
}

/// dx (C, N, H, W) at x_offset += dy / (KH*KW) spread over each window.
pub fn avgpool_backward(dx: &mut [f32], dy: &[f32], p: &Pool2dParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let (hw, w) = ((p.h * p.w) as usize, p.w as usize);
    let area = (p.kernel_h * p.kernel_w) as f64;
    let mut acc = vec![0f64; p.x_len() as usize];
    pool2d_windows(p, |plane, yi, rows, cols| {
        let g = dy[yo + yi] as f64 / area;
        for r in rows {
            for s in cols.clone() {
                acc[plane * hw + r * w + s] += g;
            }
        }
    });
    add_into(&mut dx[xo..], &acc);
}

/// y (C, N) at y_offset = the mean of each (c, n) plane of x (C, N, H, W) at x_offset.
pub fn global_avgpool_forward(y: &mut [f32], x: &[f32], p: &GlobalAvgPoolParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let hw = (p.h * p.w) as usize;
    let x = &x[xo..][..p.x_len() as usize];
    for (i, plane) in x.chunks(hw).enumerate() {
        y[yo + i] = (sum(plane) / hw as f64) as f32;
    }
}

/// dx (C, N, H, W) at x_offset += dy (C, N) at y_offset / (H*W), broadcast over each plane.
pub fn global_avgpool_backward(dx: &mut [f32], dy: &[f32], p: &GlobalAvgPoolParams) {
    let (xo, yo) = (p.x_offset as usize, p.y_offset as usize);
    let hw = (p.h * p.w) as usize;
    let dx = &mut dx[xo..][..p.x_len() as usize];
    for (i, plane) in dx.chunks_mut(hw).enumerate() {
        let g = dy[yo + i] as f64 / hw as f64;
        for v in plane {
            *v = (*v as f64 + g) as f32;
        }
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
