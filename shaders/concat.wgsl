// concat.wgsl: channel concatenation as an explicit op, for the plain (unfused) path.
//
// In the channel-major (C, N, H, W) layout a tensor's channels [c0, c0 + C) inside a larger
// buffer are one contiguous run starting at element c0 * N * H * W, so concatenation is a
// copy into that run and its gradient is the run read back. (Dense blocks in the training
// graph write in place and never call this.)
//
// Entry points (params at binding 0, a ConcatParams uniform):
//   concat_forward    part(1)    -> whole(2)        whole[offset + i] = part[i]
//   concat_backward   dwhole(3)  -> dpart(4)        dpart[i] += dwhole[offset + i]
// Geometry: one invocation per element of the part, 256 per workgroup, folded 1-D grid.

struct ConcatParams {
    count: u32,
    offset: u32,
    total: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: ConcatParams;
@group(0) @binding(1) var<storage, read> part: array<act>;
@group(0) @binding(2) var<storage, read_write> whole: array<act>;
@group(0) @binding(3) var<storage, read> dwhole: array<act>;
@group(0) @binding(4) var<storage, read_write> dpart: array<act>;

@compute @workgroup_size(256)
fn concat_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * 256u + lid;
    if i >= p.count {
        return;
    }
    whole[p.offset + i] = part[i];
}

@compute @workgroup_size(256)
fn concat_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * 256u + lid;
    if i >= p.count {
        return;
    }
    dpart[i] = act(f32(dpart[i]) + f32(dwhole[p.offset + i]));
}
