// avgpool.wgsl: average pooling over channel-major (C, N, H, W) tensors.
//
// General pool, as PyTorch's avg_pool2d with ceil_mode=False and count_include_pad=True
// (padding counts as zeros, so the divisor is always KH*KW):
//   y[c, n, p, q] = sum over r < KH, s < KW of x[c, n, p*sh - ph + r, q*sw - pw + s] / (KH*KW)
//
// Entry points (params at binding 0, a Pool2dParams uniform):
//   avgpool_forward          x(1)  -> y(2)    writes y
//   avgpool_backward         dy(3) -> dx(4)   dx += sum over windows containing it of dy / (KH*KW)
//
// x / dx start at element x_offset and y / dy at y_offset (channel ranges of larger buffers).
//
// Geometry: one invocation per output element (forward) or per input element (backward),
// 64 per workgroup, in a folded 1-D grid. The general backward is a gather over the output
// windows that contain the element, so overlapping windows need no atomics.

struct Pool2dParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    x_offset: u32,
    y_offset: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Pool2dParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

const WG: u32 = 64u;

// One invocation per output row: the divisions happen once per row, not per element.
@compute @workgroup_size(64)
fn avgpool_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_workgroup(wid, nwg) * WG + lid;
    if row >= p.c * p.n * p.out_h {
        return;
    }
    let plane = row / p.out_h; // c * N + n, the same in x and y
    let oh = row % p.out_h;
    // The window rows clipped to the input; the clipped-off padding adds zeros.
    let h0 = i32(oh * p.stride_h) - i32(p.pad_h);
    let hs = u32(max(h0, 0));
    let he = u32(min(h0 + i32(p.kernel_h), i32(p.h)));
    let base = p.x_offset + plane * p.h * p.w;
    let scale = 1.0 / f32(p.kernel_h * p.kernel_w);
    var w0 = -i32(p.pad_w);
    for (var ow = 0u; ow < p.out_w; ow++) {
        let ws = u32(max(w0, 0));
        let we = u32(min(w0 + i32(p.kernel_w), i32(p.w)));
        var sum = 0.0;
        for (var ih = hs; ih < he; ih++) {
            for (var iw = ws; iw < we; iw++) {
                sum += x[base + ih * p.w + iw];
            }
        }
        y[p.y_offset + row * p.out_w + ow] = sum * scale;
        w0 += i32(p.stride_w);
    }
}

// One invocation per input row, gathering from the windows that contain each element.
@compute @workgroup_size(64)
fn avgpool_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_workgroup(wid, nwg) * WG + lid;
    if row >= p.c * p.n * p.h {
        return;
    }
    let plane = row / p.h;
    let h = row % p.h;
    // Windows oh with oh*sh - ph <= h <= oh*sh - ph + KH - 1, clipped to the output.
    var oh_lo = 0u;
    if h + p.pad_h >= p.kernel_h {
        oh_lo = (h + p.pad_h - p.kernel_h) / p.stride_h + 1u;
    }
    let oh_hi = min((h + p.pad_h) / p.stride_h + 1u, p.out_h);
    let out_plane = p.y_offset + plane * p.out_h * p.out_w;
    let scale = 1.0 / f32(p.kernel_h * p.kernel_w);
    var range = vec2<u32>(0u);
    for (var w = 0u; w < p.w; w++) {
        range = advance_windows(w, range, p.out_w, p.stride_w, p.kernel_w, p.pad_w);
        var sum = 0.0;
        for (var oh = oh_lo; oh < oh_hi; oh++) {
            for (var ow = range.x; ow < range.y; ow++) {
                sum += dy[out_plane + oh * p.out_w + ow];
            }
        }
        dx[p.x_offset + row * p.w + w] += sum * scale;
    }
}
