//! The readable CPU truth: every op, forward and backward, as plain loops over slices with
//! f64 accumulation. Same names as the WGSL entry points and the launchers; same params
//! structs (offsets included); same layouts (channel-major C, N, H, W).
//!
//! Legend: N batch, C channels in, K channels out, H x W input, P x Q output,
//! R x S kernel. Outputs first, then inputs, then params. Backward functions ADD into their
//! gradient outputs, like the kernels.

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
// helpers

fn sum(v: &[f32]) -> f64 {
    v.iter().map(|&a| a as f64).sum()
}

fn add_into(out: &mut [f32], acc: &[f64]) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (*o as f64 + a) as f32;
    }
}
