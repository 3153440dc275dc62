// relu.wgsl: y = max(x, 0) and its gradient, elementwise.
//
// Entry points (params at binding 0, a ReluParams uniform):
//   relu_forward    x(1)            -> y(2)    writes y
//   relu_backward   y_in(3) dy(4)   -> dx(5)   dx += dy where y > 0
//
// x and dx start at x_offset, y, y_in and dy at y_offset (channel ranges of larger buffers).
// The mask comes from the output, so the forward may run in place (x and y the same range).
// Geometry: one invocation per element, 256 per workgroup, folded 1-D grid.

struct ReluParams {
    count: u32,
    x_offset: u32,
    y_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: ReluParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> y: array<act>;
@group(0) @binding(3) var<storage, read> y_in: array<act>;
@group(0) @binding(4) var<storage, read> dy: array<act>;
@group(0) @binding(5) var<storage, read_write> dx: array<act>;

@compute @workgroup_size(256)
fn relu_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * 256u + lid;
    if i >= p.count {
        return;
    }
    y[p.y_offset + i] = act(max(f32(x[p.x_offset + i]), 0.0));
}

@compute @workgroup_size(256)
fn relu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * 256u + lid;
    if i >= p.count {
        return;
    }
    let j = p.y_offset + i;
    dx[p.x_offset + i] = act(f32(dx[p.x_offset + i]) + select(0.0, f32(dy[j]), f32(y_in[j]) > 0.0));
}
