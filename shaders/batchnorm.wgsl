// batchnorm.wgsl: batch normalization (PyTorch BatchNorm2d, training and evaluation) over
// channel-major (C, N, H, W) tensors, where each channel's M = N*H*W values are one run.
//
//   mean[c] = sum_i x[c, i] / M                 var[c] = sum_i (x[c, i] - mean[c])^2 / M
//   y[c, i] = (x[c, i] - mean[c]) * inverseSqrt(var[c] + eps) * gamma[c] + beta[c]
//   running_mean = (1 - momentum) running_mean + momentum mean
//   running_var  = (1 - momentum) running_var  + momentum var * M / (M - 1)
//   backward, with xhat = (x - mean) * invstd:
//   dx += gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
//   dgamma += sum(dy * xhat)        dbeta += sum(dy)
//   With relu set, y = max(y, 0) and backward first zeroes dy where y <= 0 (recomputed from
//   x, mean, var, gamma and beta: the activation is never stored).
//
// Entry points (params at binding 0, a BatchNormParams uniform):
//   batchnorm_stats           x(1)                         -> mean_out(5) variance_out(6)
//                                                             writes the channel's stats
//   batchnorm_update_running  mean(7) variance(8)          -> running_mean(9) running_var(10)
//                                                             blends the batch stats in
//   batchnorm_forward         x(1) mean(7) variance(8) gamma(2) beta(3) -> y(4)   writes y
//   batchnorm_affine          mean(7) variance(8) gamma(2) beta(3) -> affine_out(15)
//                                                             per channel (scale, shift) with
//                                                             y = x * scale + shift, for a
//                                                             conv that applies BN -> ReLU
//                                                             to its input as it loads it
//   batchnorm_backward        x(1) dy(11) mean(7) variance(8) gamma_beta(16)
//                                                          -> dx(12) dgamma_dbeta(17)
//                                                             adds into dx, dgamma, dbeta
//   batchnorm_backward_sums   the same bindings; adds the sums into dgamma, dbeta only
//   batchnorm_backward_dx     the same bindings; adds into dx from the sums dgamma and
//                             dbeta hold (synchronized batch norm: the replicas' mean)
//
// The backward reads gamma and beta through one binding, gamma at 0 and beta at beta_at,
// and adds into dgamma and dbeta likewise (a layout's parameters and their gradients lie so):
// it then needs 7 storage buffers, within WebGPU's default of 8 per stage.
//
// Offsets: x / dx start at element x_offset and y / dy at y_offset (a channel offset times
// M), so x may be a channel range of a dense block's buffer. The per-channel statistics
// (mean, variance, running_mean, running_var) are indexed at stat_offset + c, so one stats
// array can cover a whole block; gamma, beta, dgamma and dbeta belong to this op alone and
// are indexed at c. Evaluation binds the running statistics as mean / variance.
//
// Geometry: batchnorm_stats and batchnorm_backward use one workgroup of 256 per channel
// (strided sums over the channel's run, then a tree reduction in workgroup memory). The
// statistics take two passes, the mean and then the mean squared deviation from it, so a
// large mean cannot cancel the variance away as E[x^2] - E[x]^2 would in f32.
// batchnorm_forward is one invocation per element and batchnorm_update_running one per
// channel, 64 per workgroup, in a folded 1-D grid.

struct BatchNormParams {
    c: u32,
    m: u32,
    x_offset: u32,
    y_offset: u32,
    stat_offset: u32,
    eps: f32,
    momentum: f32,
    relu: u32,
    beta_at: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: BatchNormParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<act>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> variance_out: array<f32>;
@group(0) @binding(7) var<storage, read> mean: array<f32>;
@group(0) @binding(8) var<storage, read> variance: array<f32>;
@group(0) @binding(9) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(10) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(11) var<storage, read> dy: array<act>;
@group(0) @binding(12) var<storage, read_write> dx: array<act>;
@group(0) @binding(15) var<storage, read_write> affine_out: array<f32>;
@group(0) @binding(16) var<storage, read> gamma_beta: array<f32>;
@group(0) @binding(17) var<storage, read_write> dgamma_dbeta: array<f32>;

const WG: u32 = 64u;
const RED: u32 = 256u;
var<workgroup> red: array<vec2<f32>, RED>;

// Sums `v` over the workgroup (a tree in workgroup memory) and returns the total to every
// invocation. Must be called from uniform control flow; `red` is free again on return.
fn workgroup_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var stride = RED / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// One workgroup per channel: the mean, then the mean squared deviation from it.
@compute @workgroup_size(256)
fn batchnorm_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg);
    let live = c < p.c;
    let base = p.x_offset + c * p.m;
    var sum = 0.0;
    if live {
        for (var i = lid; i < p.m; i += RED) {
            sum += f32(x[base + i]);
        }
    }
    let mu = workgroup_sum(lid, vec2<f32>(sum, 0.0)).x / f32(p.m);
    var sq = 0.0;
    if live {
        for (var i = lid; i < p.m; i += RED) {
            let d = f32(x[base + i]) - mu;
            sq += d * d;
        }
    }
    let sigma2 = workgroup_sum(lid, vec2<f32>(sq, 0.0)).x / f32(p.m);
    if lid == 0u && live {
        mean_out[p.stat_offset + c] = mu;
        variance_out[p.stat_offset + c] = sigma2;
    }
}

// One invocation per channel.
@compute @workgroup_size(64)
fn batchnorm_update_running(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg) * WG + lid;
    if c >= p.c {
        return;
    }
    let s = p.stat_offset + c;
    let m = f32(p.m);
    let keep = 1.0 - p.momentum;
    running_mean[s] = keep * running_mean[s] + p.momentum * mean[s];
    running_var[s] = keep * running_var[s] + p.momentum * (variance[s] * m / (m - 1.0));
}

// One invocation per channel: scale = gamma * invstd, shift = beta - mean * scale.
@compute @workgroup_size(64)
fn batchnorm_affine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg) * WG + lid;
    if c >= p.c {
        return;
    }
    let s = p.stat_offset + c;
    let scale = gamma[c] * inverseSqrt(variance[s] + p.eps);
    affine_out[2u * c] = scale;
    affine_out[2u * c + 1u] = beta[c] - mean[s] * scale;
}

// One invocation per element of the c * m outputs.
@compute @workgroup_size(64)
fn batchnorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if i >= p.c * p.m {
        return;
    }
    let c = i / p.m;
    let s = p.stat_offset + c;
    let invstd = inverseSqrt(variance[s] + p.eps);
    let v = normalize(f32(x[p.x_offset + i]), mean[s], invstd, gamma[c], beta[c]);
    y[p.y_offset + i] = act(select(v, max(v, 0.0), p.relu != 0u));
}

// dy, or with the fused ReLU, dy where the forward's output xhat * gamma + beta was positive.
fn masked_dy(i: u32, xhat: f32, g: f32, b: f32) -> f32 {
    return select(f32(dy[i]), 0.0, p.relu != 0u && xhat * g + b <= 0.0);
}

// Channel c's mean, invstd, gamma and beta (c clamped: idle workgroups read channel 0..c-1).
struct Channel {
    mu: f32,
    invstd: f32,
    g: f32,
    b: f32,
    xbase: u32,
    ybase: u32,
}

fn channel(c: u32) -> Channel {
    let cc = min(c, p.c - 1u);
    return Channel(
        mean[p.stat_offset + cc],
        inverseSqrt(variance[p.stat_offset + cc] + p.eps),
        gamma_beta[cc],
        gamma_beta[p.beta_at + cc],
        p.x_offset + c * p.m,
        p.y_offset + c * p.m,
    );
}

// (sum(dy), sum(dy * xhat)) of channel c over the workgroup, returned to every invocation.
// Must be called from uniform control flow.
fn backward_sums(c: u32, lid: u32) -> vec2<f32> {
    let ch = channel(c);
    var sums = vec2<f32>(0.0);
    if c < p.c {
        for (var i = lid; i < p.m; i += RED) {
            let xhat = (f32(x[ch.xbase + i]) - ch.mu) * ch.invstd;
            let g = masked_dy(ch.ybase + i, xhat, ch.g, ch.b);
            sums += vec2<f32>(g, g * xhat);
        }
    }
    return workgroup_sum(lid, sums);
}

// dx of channel c's run given its sums (sum(dy), sum(dy * xhat)).
fn backward_dx(c: u32, lid: u32, total: vec2<f32>) {
    let ch = channel(c);
    let mean_dy = total.x / f32(p.m);
    let mean_dy_xhat = total.y / f32(p.m);
    let scale = ch.g * ch.invstd;
    for (var i = lid; i < p.m; i += RED) {
        let xhat = (f32(x[ch.xbase + i]) - ch.mu) * ch.invstd;
        let g = masked_dy(ch.ybase + i, xhat, ch.g, ch.b);
        dx[ch.xbase + i] = act(f32(dx[ch.xbase + i]) + scale * (g - mean_dy - xhat * mean_dy_xhat));
    }
}

// One workgroup per channel: both sums in one tree, then dx for the channel's run.
@compute @workgroup_size(256)
fn batchnorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg);
    let total = backward_sums(c, lid);
    if c >= p.c {
        return;
    }
    backward_dx(c, lid, total);
    if lid == 0u {
        dgamma_dbeta[c] += total.y;
        dgamma_dbeta[p.beta_at + c] += total.x;
    }
}

// Synchronized batch norm, first half: the sums alone, added into dgamma and dbeta.
@compute @workgroup_size(256)
fn batchnorm_backward_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg);
    let total = backward_sums(c, lid);
    if c < p.c && lid == 0u {
        dgamma_dbeta[c] += total.y;
        dgamma_dbeta[p.beta_at + c] += total.x;
    }
}

// Second half: dx from the sums dgamma and dbeta hold now (the replicas' mean by then).
@compute @workgroup_size(256)
fn batchnorm_backward_dx(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg);
    if c >= p.c {
        return;
    }
    backward_dx(c, lid, vec2<f32>(dgamma_dbeta[p.beta_at + c], dgamma_dbeta[c]));
}
