// avgpool.wgsl: average pooling over channel-major (C, N, H, W) tensors.
//
// General pool, as PyTorch's avg_pool2d with ceil_mode=False and count_include_pad=True
// (padding counts as zeros, so the divisor is always KH*KW):
//   y[c, n, p, q] = sum over r < KH, s < KW of in(x[c, n, p*sh - ph + r, q*sw - pw + s]) / (KH*KW)
// where in() is the identity, or with input_bn_relu set the BN -> ReLU before the pool (a
// DenseNet transition's), applied while loading: max(normalize(x, mean, invstd, gamma,
// beta), 0) with the statistics at stat_offset + c, so the normalized tensor is never stored.
//
// Entry points (params at binding 0, a Pool2dParams uniform):
//   avgpool_forward   x(1) [mean(5) variance(6) gamma(7) beta(8)] -> y(2)   writes y
//   avgpool_backward  dy(3) -> dx(4)   dx += sum over windows containing it of dy / (KH*KW)
//                                     (dx = with overwrite)
//
// x / dx start at element x_offset and y / dy at y_offset (channel ranges of larger buffers).
//
// Geometry: one invocation per output row (forward) or per input row (backward), 64 per
// workgroup, in a folded 1-D grid. The backward is a gather over the output windows that
// contain the element, so overlapping windows need no atomics.

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
    input_bn_relu: u32,
    stat_offset: u32,
    eps: f32,
    save_argmax: u32,
    overwrite: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Pool2dParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> y: array<act>;
@group(0) @binding(3) var<storage, read> dy: array<act>;
@group(0) @binding(4) var<storage, read_write> dx: array<act>;
@group(0) @binding(5) var<storage, read> mean: array<f32>;
@group(0) @binding(6) var<storage, read> variance: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read> beta: array<f32>;

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
    var bn = vec4<f32>(0.0, 1.0, 1.0, 0.0);
    if p.input_bn_relu != 0u {
        let c = plane / p.n;
        let s = p.stat_offset + c;
        bn = vec4<f32>(mean[s], inverseSqrt(variance[s] + p.eps), gamma[c], beta[c]);
    }
    // The window rows clipped to the input; the clipped-off padding adds zeros.
    let rows = pool_window(oh, p.stride_h, p.pad_h, p.kernel_h, p.h);
    let base = p.x_offset + plane * p.h * p.w;
    let scale = 1.0 / f32(p.kernel_h * p.kernel_w);
    for (var ow = 0u; ow < p.out_w; ow++) {
        let cols = pool_window(ow, p.stride_w, p.pad_w, p.kernel_w, p.w);
        var sum = 0.0;
        for (var ih = rows.x; ih < rows.y; ih++) {
            for (var iw = cols.x; iw < cols.y; iw++) {
                sum += load(base + ih * p.w + iw, bn);
            }
        }
        y[p.y_offset + row * p.out_w + ow] = act(sum * scale);
    }
}

// x[i], or BN -> ReLU of it with bn = (mean, invstd, gamma, beta).
fn load(i: u32, bn: vec4<f32>) -> f32 {
    if p.input_bn_relu == 0u {
        return f32(x[i]);
    }
    return max(normalize(f32(x[i]), bn.x, bn.y, bn.z, bn.w), 0.0);
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
    let out_rows = windows_containing(h, p.stride_h, p.pad_h, p.kernel_h, p.out_h);
    let out_plane = p.y_offset + plane * p.out_h * p.out_w;
    let scale = 1.0 / f32(p.kernel_h * p.kernel_w);
    var range = vec2<u32>(0u);
    for (var w = 0u; w < p.w; w++) {
        range = advance_windows(w, range, p.out_w, p.stride_w, p.kernel_w, p.pad_w);
        var sum = 0.0;
        for (var oh = out_rows.x; oh < out_rows.y; oh++) {
            for (var ow = range.x; ow < range.y; ow++) {
                sum += f32(dy[out_plane + oh * p.out_w + ow]);
            }
        }
        let i = p.x_offset + row * p.w + w;
        if p.overwrite != 0u {
            dx[i] = act(sum * scale);
        } else {
            dx[i] = act(f32(dx[i]) + sum * scale);
        }
    }
}
