// batchnorm_split.wgsl: batch-norm statistics and backward with many workgroups per channel
// (the GPU implementation; batchnorm.wgsl's one workgroup per channel is what CPU drivers
// run best). Each channel's M = N*H*W values are cut into `groups` chunks of `chunk` values;
// one workgroup reduces one chunk, a second pass combines a channel's chunks in order, so the
// result does not depend on scheduling.
//
//   statistics, shifted by K = x[c, 0] (any value of the channel keeps the sums small, so
//   E[x^2] - E[x]^2 cannot cancel the variance away):
//     partial[c, g] = (sum (x - K), sum (x - K)^2) over chunk g
//     mean = K + S1 / M     var = S2 / M - (S1 / M)^2     (biased; running_var gets it * M/(M-1))
//   backward, with xhat = (x - mean) * invstd and dy masked where the fused ReLU's output
//   was not positive:
//     partial[c, g] = (sum dy, sum dy * xhat) over chunk g
//     dx += gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
//     dgamma += sum(dy * xhat)      dbeta += sum(dy)
//
// Entry points (params at binding 0, a BatchNormSplitParams uniform):
//   batchnorm_stats_partial     x(1)                    -> partial(5)          per chunk
//   batchnorm_stats_combine     x(1) partial_in(6)      -> mean(7) variance(8) running_mean(9)
//                               running_var(10)            per channel, running update folded in
//   batchnorm_backward_partial  x(1) dy(11) mean_in(12) variance_in(13) gamma_beta(17)
//                                                       -> partial(5)          per chunk
//   batchnorm_backward_apply    x(1) dy(11) mean_in(12) variance_in(13) gamma_beta(17)
//                               partial_in(6)           -> dx(14) dgamma_dbeta(18)
//                                                          per chunk; chunk 0 adds dgamma, dbeta
// gamma and beta come through one binding, beta at beta_at, and so do dgamma and dbeta (as in
// batchnorm.wgsl): the apply pass then binds 8 storage buffers, WebGPU's default limit.
// Offsets as batchnorm.wgsl: x / dx at x_offset, dy at y_offset, statistics at stat_offset + c.
// Geometry: one workgroup of 256 per (channel, chunk), chunks fastest; the combine is one
// invocation per channel. Loads are coalesced: invocation t reads values t, t + 256, ...

struct BatchNormSplitParams {
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
    groups: u32,
    chunk: u32,
    _pad3: u32,
    _pad4: u32,
}

@group(0) @binding(0) var<uniform> p: BatchNormSplitParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(5) var<storage, read_write> partial: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> partial_in: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> variance: array<f32>;
@group(0) @binding(9) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(10) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(11) var<storage, read> dy: array<act>;
@group(0) @binding(12) var<storage, read> mean_in: array<f32>;
@group(0) @binding(13) var<storage, read> variance_in: array<f32>;
@group(0) @binding(14) var<storage, read_write> dx: array<act>;
@group(0) @binding(17) var<storage, read> gamma_beta: array<f32>;
@group(0) @binding(18) var<storage, read_write> dgamma_dbeta: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<vec2<f32>, WG>;

// Sums v over the workgroup (a tree in workgroup memory, always in the same order) and
// returns the total to every invocation. Uniform control flow only.
fn workgroup_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// (channel, chunk) of flat workgroup w, and the chunk's values [begin, end) in the channel.
fn chunk_of(w: u32) -> vec4<u32> {
    let c = w / p.groups;
    let g = w % p.groups;
    let begin = min(g * p.chunk, p.m);
    return vec4<u32>(c, g, begin, min(begin + p.chunk, p.m));
}

@compute @workgroup_size(256)
fn batchnorm_stats_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ch = chunk_of(flat_workgroup(wid, nwg));
    let live = ch.x < p.c;
    let base = p.x_offset + min(ch.x, p.c - 1u) * p.m;
    let shift = f32(x[base]);
    var s = vec2<f32>(0.0);
    if live {
        for (var i = ch.z + lid; i < ch.w; i += WG) {
            let d = f32(x[base + i]) - shift;
            s += vec2<f32>(d, d * d);
        }
    }
    let total = workgroup_sum(lid, s);
    if lid == 0u && live {
        partial[ch.x * p.groups + ch.y] = total;
    }
}

// One invocation per channel: the chunks' sums in order, then the statistics and the running
// update (momentum of the way to the batch mean and the unbiased batch variance).
@compute @workgroup_size(64)
fn batchnorm_stats_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_workgroup(wid, nwg) * 64u + lid;
    if c >= p.c {
        return;
    }
    var s = vec2<f32>(0.0);
    for (var g = 0u; g < p.groups; g++) {
        s += partial_in[c * p.groups + g];
    }
    let m = f32(p.m);
    let shifted = s.x / m;
    let mu = f32(x[p.x_offset + c * p.m]) + shifted;
    let sigma2 = max(s.y / m - shifted * shifted, 0.0);
    let at = p.stat_offset + c;
    mean[at] = mu;
    variance[at] = sigma2;
    let keep = 1.0 - p.momentum;
    running_mean[at] = keep * running_mean[at] + p.momentum * mu;
    running_var[at] = keep * running_var[at] + p.momentum * (sigma2 * m / (m - 1.0));
}

// What the backward needs of channel c: its statistics, where its x and dy start, its BN
// scale and shift.
struct Channel {
    mu: f32,
    invstd: f32,
    xb: u32,
    yb: u32,
    gamma: f32,
    beta: f32,
}

fn channel(c: u32) -> Channel {
    let s = p.stat_offset + c;
    return Channel(
        mean_in[s],
        inverseSqrt(variance_in[s] + p.eps),
        p.x_offset + c * p.m,
        p.y_offset + c * p.m,
        gamma_beta[c],
        gamma_beta[p.beta_at + c],
    );
}

// (xhat, dy) at value i of channel ch, dy masked where the fused ReLU's output was not
// positive.
fn xhat_dy(ch: Channel, i: u32) -> vec2<f32> {
    let xhat = (f32(x[ch.xb + i]) - ch.mu) * ch.invstd;
    let g = select(f32(dy[ch.yb + i]), 0.0, p.relu != 0u && xhat * ch.gamma + ch.beta <= 0.0);
    return vec2<f32>(xhat, g);
}

@compute @workgroup_size(256)
fn batchnorm_backward_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ch = chunk_of(flat_workgroup(wid, nwg));
    let live = ch.x < p.c;
    let c = min(ch.x, p.c - 1u);
    let cb = channel(c);
    var s = vec2<f32>(0.0);
    if live {
        for (var i = ch.z + lid; i < ch.w; i += WG) {
            let v = xhat_dy(cb, i);
            s += vec2<f32>(v.y, v.y * v.x);
        }
    }
    let total = workgroup_sum(lid, s);
    if lid == 0u && live {
        partial[ch.x * p.groups + ch.y] = total;
    }
}

@compute @workgroup_size(256)
fn batchnorm_backward_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ch = chunk_of(flat_workgroup(wid, nwg));
    let live = ch.x < p.c;
    let c = min(ch.x, p.c - 1u);
    // The channel's totals: its chunks (at most 256) summed in order by a tree.
    var part = vec2<f32>(0.0);
    if lid < p.groups {
        part = partial_in[c * p.groups + lid];
    }
    let total = workgroup_sum(lid, part);
    if !live {
        return;
    }
    let cb = channel(c);
    let mean_dy = total.x / f32(p.m);
    let mean_dy_xhat = total.y / f32(p.m);
    let scale = cb.gamma * cb.invstd;
    for (var i = ch.z + lid; i < ch.w; i += WG) {
        let v = xhat_dy(cb, i);
        dx[cb.xb + i] = act(f32(dx[cb.xb + i]) + scale * (v.y - mean_dy - v.x * mean_dy_xhat));
    }
    if lid == 0u && ch.y == 0u {
        dgamma_dbeta[c] += total.y;
        dgamma_dbeta[p.beta_at + c] += total.x;
    }
}
