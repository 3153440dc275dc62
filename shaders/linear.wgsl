// linear.wgsl: fully connected layer y = x^T W^T + b, after global average pooling.
//
// x is feature-major (I, N) as global_avgpool_forward leaves it; weight (O, I) as in
// PyTorch; bias (O); y is (N, O), row-major logits for the loss.
//
// Entry points (params at binding 0, a LinearParams uniform):
//   linear_forward           x(1) weight(2) bias(3) -> y(4)        writes y
//   linear_backward_data     dy(5) weight(2)        -> dx(6)       dx += W^T dy
//   linear_backward_weight   x(1) dy(5)             -> dweight(7)  dweight += dy^T x
//   linear_backward_bias     dy(5)                  -> dbias(8)    dbias += sum over N
// Geometry: one invocation per output element, 64 per workgroup, folded 1-D grid. The
// layer is tiny next to the convolutions (248 x 10 in the d2l network), so no tiling.

struct LinearParams {
    n: u32,
    in_features: u32,
    out_features: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: LinearParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<act>;
@group(0) @binding(5) var<storage, read> dy: array<act>;
@group(0) @binding(6) var<storage, read_write> dx: array<act>;
@group(0) @binding(7) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(8) var<storage, read_write> dbias: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_workgroup(wid, nwg) * 64u + lid;
}

@compute @workgroup_size(64)
fn linear_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = index(wid, nwg, lid);
    if t >= p.n * p.out_features {
        return;
    }
    let n = t / p.out_features;
    let o = t % p.out_features;
    var acc = 0.0;
    if p.has_bias != 0u {
        acc = bias[o];
    }
    for (var i = 0u; i < p.in_features; i++) {
        acc += weight[o * p.in_features + i] * f32(x[i * p.n + n]);
    }
    y[t] = act(acc);
}

@compute @workgroup_size(64)
fn linear_backward_data(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = index(wid, nwg, lid);
    if t >= p.in_features * p.n {
        return;
    }
    let i = t / p.n;
    let n = t % p.n;
    var acc = 0.0;
    for (var o = 0u; o < p.out_features; o++) {
        acc += weight[o * p.in_features + i] * f32(dy[n * p.out_features + o]);
    }
    dx[t] = act(f32(dx[t]) + acc);
}

@compute @workgroup_size(64)
fn linear_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = index(wid, nwg, lid);
    if t >= p.out_features * p.in_features {
        return;
    }
    let o = t / p.in_features;
    let i = t % p.in_features;
    var acc = 0.0;
    for (var n = 0u; n < p.n; n++) {
        acc += f32(dy[n * p.out_features + o]) * f32(x[i * p.n + n]);
    }
    dweight[t] += acc;
}

@compute @workgroup_size(64)
fn linear_backward_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = index(wid, nwg, lid);
    if o >= p.out_features {
        return;
    }
    var acc = 0.0;
    for (var n = 0u; n < p.n; n++) {
        acc += f32(dy[n * p.out_features + o]);
    }
    dbias[o] += acc;
}
