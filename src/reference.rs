//! The readable CPU truth: every op, forward and backward, as plain loops over slices with
//! f64 accumulation. Same names as the WGSL entry points and the launchers; same params
//! structs (offsets included); same layouts (channel-major C, N, H, W).
//!
//! Legend: N batch, C channels in, K channels out, H x W input, P x Q output,
//! R x S kernel. Outputs first, then inputs, then params. Backward functions ADD into their
//! gradient outputs, like the kernels.

use crate::ops::avgpool::GlobalAvgPoolParams;
use crate::ops::conv2d::Conv2dParams;
use crate::ops::maxpool::Pool2dParams;

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
