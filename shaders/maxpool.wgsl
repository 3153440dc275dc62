// maxpool.wgsl: 2-D max pooling over channel-major (C, N, H, W) tensors, as PyTorch's
// max_pool2d with ceil_mode=False.
//
//   y[c, n, p, q] = max over r < KH, s < KW of in(x[c, n, p*sh - ph + r, q*sw - pw + s])
//
// taken over the window's positions inside the input only (padding never wins), where in()
// is the identity, or with input_bn_relu set the BN -> ReLU before the pool (the stem's),
// applied while loading: max(normalize(x, mean, invstd, gamma, beta), 0) with the batch or
// running statistics at stat_offset + c, so the normalized tensor is never stored. argmax
// saves the winner's index h*W + w within its (c, n) plane (unless save_argmax is 0, as in
// evaluation): ties go to the first maximum in row-major window order (strict >), a NaN
// always wins (so the last NaN's index is kept), exactly as PyTorch.
//
// Entry points (params at binding 0, a Pool2dParams uniform):
//   maxpool_forward   x(1) [mean(7) variance(8) gamma(9) beta(10)] -> y(2) [argmax(3)]
//                                                     writes y and argmax
//   maxpool_backward  dy(4) argmax_in(5)  -> dx(6)    dx += dy at each window's argmax
//                                                     (dx = with overwrite)
//
// x / dx start at element x_offset and y / dy at y_offset (channel ranges of larger
// buffers); argmax is its own (C, N, P, Q) tensor starting at element 0.
//
// Geometry: one invocation per output row (forward) or per input row (backward), 64 per
// workgroup, in a folded 1-D grid. The backward is a gather: each input element visits the
// output windows that contain it and sums dy where the saved argmax is itself, so
// overlapping windows (3x3 stride 2) need no atomics and every dx element is written by
// exactly one invocation.

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
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(4) var<storage, read> dy: array<act>;
@group(0) @binding(5) var<storage, read> argmax_in: array<u32>;
@group(0) @binding(6) var<storage, read_write> dx: array<act>;
@group(0) @binding(7) var<storage, read> mean: array<f32>;
@group(0) @binding(8) var<storage, read> variance: array<f32>;
@group(0) @binding(9) var<storage, read> gamma: array<f32>;
@group(0) @binding(10) var<storage, read> beta: array<f32>;

const WG: u32 = 64u;

// By the bits: WGSL lets a compiler assume floats are never NaN, so `v != v` may fold away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// One invocation per output row: the divisions happen once per row, not per element.
@compute @workgroup_size(64)
fn maxpool_forward(
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
    // The fused BN -> ReLU of this row's channel (identity when input_bn_relu is 0).
    var bn = vec4<f32>(0.0, 1.0, 1.0, 0.0);
    if p.input_bn_relu != 0u {
        let c = plane / p.n;
        let s = p.stat_offset + c;
        bn = vec4<f32>(mean[s], inverseSqrt(variance[s] + p.eps), gamma[c], beta[c]);
    }
    // The window clipped to the input; never empty since pad <= kernel / 2.
    let rows = pool_window(oh, p.stride_h, p.pad_h, p.kernel_h, p.h);
    let base = p.x_offset + plane * p.h * p.w;
    for (var ow = 0u; ow < p.out_w; ow++) {
        let cols = pool_window(ow, p.stride_w, p.pad_w, p.kernel_w, p.w);
        var best_i = rows.x * p.w + cols.x;
        var best = load(base + best_i, bn);
        for (var ih = rows.x; ih < rows.y; ih++) {
            for (var iw = cols.x; iw < cols.y; iw++) {
                let k = ih * p.w + iw;
                let v = load(base + k, bn);
                if v > best || is_nan(v) {
                    best = v;
                    best_i = k;
                }
            }
        }
        let o = row * p.out_w + ow;
        y[p.y_offset + o] = act(best);
        if p.save_argmax != 0u {
            argmax[o] = best_i;
        }
    }
}

// x[i], or BN -> ReLU of it with bn = (mean, invstd, gamma, beta).
fn load(i: u32, bn: vec4<f32>) -> f32 {
    if p.input_bn_relu == 0u {
        return f32(x[i]);
    }
    return max(normalize(f32(x[i]), bn.x, bn.y, bn.z, bn.w), 0.0);
}

// One invocation per input row, gathering dy from the windows whose maximum it was.
@compute @workgroup_size(64)
fn maxpool_backward(
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
    let out_plane = plane * p.out_h * p.out_w;
    var range = vec2<u32>(0u);
    for (var w = 0u; w < p.w; w++) {
        range = advance_windows(w, range, p.out_w, p.stride_w, p.kernel_w, p.pad_w);
        let k = h * p.w + w; // this element's in-plane index, as argmax stores it
        var sum = 0.0;
        for (var oh = out_rows.x; oh < out_rows.y; oh++) {
            for (var ow = range.x; ow < range.y; ow++) {
                let j = out_plane + oh * p.out_w + ow;
                if argmax_in[j] == k {
                    sum += f32(dy[p.y_offset + j]);
                }
            }
        }
        let i = p.x_offset + row * p.w + w;
        if p.overwrite != 0u {
            dx[i] = act(sum);
        } else {
            dx[i] = act(f32(dx[i]) + sum);
        }
    }
}
