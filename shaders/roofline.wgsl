// roofline.wgsl: two micro-kernels that measure an adapter's own ceilings, for the roofline
// of `bench --profile`.
//
// Entry points (params at binding 0, a RooflineParams uniform):
//   roofline_fma      -> out(2)     each invocation runs `iters` steps of 8 independent vec4
//                                   multiply-adds (64 flops a step) and writes their sum
//   roofline_stream   src(1) -> out(2)   out[i] = src[i] * 2 + 1 for `count` vec4s: 32 bytes
//                                   moved per element
//
// Geometry: one invocation per output vec4, 256 per workgroup, folded 1-D grid. The eight
// accumulators are independent so the chain's latency hides behind the other seven, and the
// result is stored so that no compiler drops the arithmetic.

struct RooflineParams {
    count: u32,
    iters: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: RooflineParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn roofline_fma(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if i >= p.count {
        return;
    }
    let seed = vec4<f32>(f32(i & 1023u)) * 1e-3;
    var a0 = seed;
    var a1 = seed + 0.1;
    var a2 = seed + 0.2;
    var a3 = seed + 0.3;
    var a4 = seed + 0.4;
    var a5 = seed + 0.5;
    var a6 = seed + 0.6;
    var a7 = seed + 0.7;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(1e-4);
    for (var k = 0u; k < p.iters; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    out[i] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

@compute @workgroup_size(256)
fn roofline_stream(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if i >= p.count {
        return;
    }
    out[i] = src[i] * 2.0 + 1.0;
}
