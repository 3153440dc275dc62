// common.wgsl: helpers shared by every kernel; prepended to each op's file when it is compiled.
//
// Large launches fold their 1-D grid of workgroups into 2-D (x up to the adapter's
// per-dimension limit), so every kernel recovers its flat workgroup index the same way.

fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Pooling gathers: the windows o (starting at o * stride - pad, `kernel` long, o < out) that
// contain input column w are [range.x, range.y). Both ends only grow with w, so a walk along
// a row updates them in O(1) instead of dividing per element.
fn advance_windows(w: u32, range: vec2<u32>, out: u32, stride: u32, kernel: u32, pad: u32) -> vec2<u32> {
    var lo = range.x;
    var hi = range.y;
    while lo < out && lo * stride + kernel <= w + pad {
        lo++;
    }
    while hi < out && hi * stride <= w + pad {
        hi++;
    }
    return vec2<u32>(lo, hi);
}
