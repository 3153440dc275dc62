// global_avgpool.wgsl: global average pooling, the network's head, over a channel-major
// (C, N, H, W) tensor; the output is (C, N), feature-major as the linear layer reads it.
//
//   y[c, n] = sum over h, w of x[c, n, h, w] / (H*W)
//
// Entry points (params at binding 0, a GlobalAvgPoolParams uniform):
//   global_avgpool_forward   x(1)  -> y(2)    writes y (C, N)
//   global_avgpool_backward  dy(3) -> dx(4)   dx += dy[c, n] / (H*W)
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
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> g: GlobalAvgPoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

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
    for (var k = 0u; k < hw; k++) {
        sum += x[base + k];
    }
    y[g.y_offset + i] = sum / f32(hw);
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
    let v = dy[g.y_offset + plane] / f32(hw);
    let base = g.x_offset + plane * hw;
    for (var k = 0u; k < hw; k++) {
        dx[base + k] += v;
    }
}
