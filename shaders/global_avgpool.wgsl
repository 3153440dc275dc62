// global_avgpool.wgsl: global average pooling, the network's head, over a channel-major
// (C, N, H, W) tensor; the output is (C, N), feature-major as the linear layer reads it.
//
//   y[c, n] = sum over h, w of in(x[c, n, h, w]) / (H*W)
//
// where in() is the identity, or with input_bn_relu set the head's BN -> ReLU, applied
// while loading: max(normalize(x, mean, invstd, gamma, beta), 0) with the statistics at
// stat_offset + c, so the normalized tensor is never stored.
//
// Entry points (params at binding 0, a GlobalAvgPoolParams uniform):
//   global_avgpool_forward   x(1) [mean(5) variance(6) gamma(7) beta(8)] -> y(2)
//                                             writes y (C, N)
//   global_avgpool_backward  dy(3) -> dx(4)   dx += dy[c, n] / (H*W)  (dx = with overwrite)
//
// x / dx start at element x_offset and y / dy at y_offset.
// Geometry: one invocation per output element (forward: it sums its H*W plane) or per input
// element (backward), 64 per workgroup, in a folded 1-D grid.

struct GlobalAvgPoolParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    x_offset: u32,
    y_offset: u32,
    input_bn_relu: u32,
    stat_offset: u32,
    eps: f32,
    overwrite: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> g: GlobalAvgPoolParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> y: array<act>;
@group(0) @binding(3) var<storage, read> dy: array<act>;
@group(0) @binding(4) var<storage, read_write> dx: array<act>;
@group(0) @binding(5) var<storage, read> mean: array<f32>;
@group(0) @binding(6) var<storage, read> variance: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read> beta: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn global_avgpool_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * WG + lid; // c * N + n
    if i >= g.c * g.n {
        return;
    }
    let hw = g.h * g.w;
    let base = g.x_offset + i * hw;
    var sum = 0.0;
    if g.input_bn_relu == 0u {
        for (var k = 0u; k < hw; k++) {
            sum += f32(x[base + k]);
        }
    } else {
        let c = i / g.n;
        let s = g.stat_offset + c;
        let mu = mean[s];
        let invstd = inverseSqrt(variance[s] + g.eps);
        let gc = gamma[c];
        let bc = beta[c];
        for (var k = 0u; k < hw; k++) {
            sum += max(normalize(f32(x[base + k]), mu, invstd, gc, bc), 0.0);
        }
    }
    y[g.y_offset + i] = act(sum / f32(hw));
}

// One invocation per (c, n) plane.
@compute @workgroup_size(64)
fn global_avgpool_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let plane = flat_workgroup(wid, nwg) * WG + lid;
    if plane >= g.c * g.n {
        return;
    }
    let hw = g.h * g.w;
    let v = f32(dy[g.y_offset + plane]) / f32(hw);
    let base = g.x_offset + plane * hw;
    for (var k = 0u; k < hw; k++) {
        if g.overwrite != 0u {
            dx[base + k] = act(v);
        } else {
            dx[base + k] = act(f32(dx[base + k]) + v);
        }
    }
}
