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

// A pooling window along one axis: the input positions [x, y) of output position o, whose
// window starts at o * stride - pad and spans `kernel`, clipped to the input's `size`.
fn pool_window(o: u32, stride: u32, pad: u32, kernel: u32, size: u32) -> vec2<u32> {
    let start = i32(o * stride) - i32(pad);
    return vec2<u32>(u32(max(start, 0)), u32(max(min(start + i32(kernel), i32(size)), 0)));
}

// The output positions [x, y) whose windows contain input position h along one axis
// (o * stride - pad <= h <= o * stride - pad + kernel - 1), clipped to the output's `out`.
fn windows_containing(h: u32, stride: u32, pad: u32, kernel: u32, out: u32) -> vec2<u32> {
    var lo = 0u;
    if h + pad >= kernel {
        lo = (h + pad - kernel) / stride + 1u;
    }
    return vec2<u32>(lo, min((h + pad) / stride + 1u, out));
}

// Batch norm of one value. Every kernel that normalizes (batchnorm_forward, the pools that
// apply BN -> ReLU to their input while loading it) uses this one expression, so they agree
// bit for bit.
fn normalize(x: f32, mean: f32, invstd: f32, gamma: f32, beta: f32) -> f32 {
    return (x - mean) * invstd * gamma + beta;
}
