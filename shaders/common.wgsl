// common.wgsl: helpers shared by every kernel; prepended to each op's file when it is compiled.
//
// Large launches fold their 1-D grid of workgroups into 2-D (x up to the adapter's
// per-dimension limit), so every kernel recovers its flat workgroup index the same way.

fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
