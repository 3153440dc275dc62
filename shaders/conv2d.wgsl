// conv2d.wgsl: 2-D convolution as an implicit GEMM over channel-major (C, N, H, W) tensors.
//
//   y[k, n, p, q] = bias[k] + sum_{c,r,s} weight[k, c, r, s] * x[c, n, p*sh - ph + r, q*sw - pw + s]
//
// Entry points (params at binding 0, a Conv2dParams uniform):
//   conv2d_forward                 x(1) weight(2) bias(3) -> y(4)          writes y
//   conv2d_backward_data           dy(5) weight(2)        -> dx(6)         dx += W^T * dy
//   conv2d_backward_weight         x(1) dy(5)             -> partial(7)    split-K partial sums
//   conv2d_backward_weight_reduce  partial_in(8)          -> dweight(9)    dweight += sum of splits
//   conv2d_backward_bias           dy(5)                  -> dbias(10)     dbias += sum over N, P, Q
//
// x / dx start at element x_offset and y / dy at y_offset, so the input may be a channel
// prefix of a dense block's buffer and the output a channel range of one.
//
// Geometry: the GEMM kernels give each invocation a 4x4 register tile (4 channels by 4
// pixels, or 4 output channels by 4 (c, r, s) taps) with no workgroup memory and no
// barriers, which suits both GPUs and CPU implementations where barriers are costly.
// One invocation per tile, 64 per workgroup, tiles in a folded 1-D grid; the bias kernel
// uses one workgroup per output channel and a tree reduction.

struct Conv2dParams {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
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
    has_bias: u32,
    splits: u32,
    chunk: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Conv2dParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read> partial_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbias: array<f32>;

const TILE: u32 = 4u;
const WG: u32 = 64u;
const LANES = vec4<u32>(0u, 1u, 2u, 3u);

fn gather_x(i: vec4<u32>, ok: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(x[i.x], x[i.y], x[i.z], x[i.w]), ok);
}

fn gather_dy(i: vec4<u32>, ok: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(dy[i.x], dy[i.y], dy[i.z], dy[i.w]), ok);
}

fn gather_weight(i: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(weight[i.x], weight[i.y], weight[i.z], weight[i.w]);
}

@compute @workgroup_size(64)
fn conv2d_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;
    let j_tiles = (npq + TILE - 1u) / TILE;
    let k_tiles = (p.c_out + TILE - 1u) / TILE;
    let t = flat_workgroup(wid, nwg) * WG + lid;
    if t >= j_tiles * k_tiles {
        return;
    }
    let j0 = (t % j_tiles) * TILE;
    let k0 = (t / j_tiles) * TILE;
    let hw = p.h * p.w;
    let nhw = p.n * hw;
    let rs = p.kernel_h * p.kernel_w;
    let crs = p.c_in * rs;

    // The tile's 4 output pixels (clamped in range; the store skips the extra ones).
    let j = min(vec4<u32>(j0) + LANES, vec4<u32>(npq - 1u));
    let img = p.x_offset + (j / pq) * hw;
    let ih0 = vec4<i32>(((j % pq) / p.out_w) * p.stride_h) - i32(p.pad_h);
    let iw0 = vec4<i32>((j % p.out_w) * p.stride_w) - i32(p.pad_w);
    let wrow = min(vec4<u32>(k0) + LANES, vec4<u32>(p.c_out - 1u)) * crs;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var r = 0u; r < p.kernel_h; r++) {
        let ih = ih0 + i32(r);
        let ok_h = (ih >= vec4<i32>(0)) & (ih < vec4<i32>(i32(p.h)));
        for (var s = 0u; s < p.kernel_w; s++) {
            let iw = iw0 + i32(s);
            let ok = ok_h & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(p.w)));
            var xi = img + vec4<u32>(ih) * p.w + vec4<u32>(iw);
            var wi = wrow + r * p.kernel_w + s;
            for (var c = 0u; c < p.c_in; c++) {
                let xv = gather_x(xi, ok);
                let wv = gather_weight(wi);
                acc0 += wv.x * xv;
                acc1 += wv.y * xv;
                acc2 += wv.z * xv;
                acc3 += wv.w * xv;
                xi += nhw;
                wi += rs;
            }
        }
    }
    store_y(k0, j0, npq, acc0);
    store_y(k0 + 1u, j0, npq, acc1);
    store_y(k0 + 2u, j0, npq, acc2);
    store_y(k0 + 3u, j0, npq, acc3);
}

fn store_y(k: u32, j0: u32, npq: u32, acc: vec4<f32>) {
    if k >= p.c_out {
        return;
    }
    var b = 0.0;
    if p.has_bias != 0u {
        b = bias[k];
    }
    let base = p.y_offset + k * npq + j0;
    for (var l = 0u; l < TILE; l++) {
        if j0 + l < npq {
            y[base + l] = acc[l] + b;
        }
    }
}

@compute @workgroup_size(64)
fn conv2d_backward_data(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hw = p.h * p.w;
    let nhw = p.n * hw;
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;
    let i_tiles = (nhw + TILE - 1u) / TILE;
    let c_tiles = (p.c_in + TILE - 1u) / TILE;
    let t = flat_workgroup(wid, nwg) * WG + lid;
    if t >= i_tiles * c_tiles {
        return;
    }
    let i0 = (t % i_tiles) * TILE;
    let c0 = (t / i_tiles) * TILE;
    let rs = p.kernel_h * p.kernel_w;
    let crs = p.c_in * rs;

    // The tile's 4 input pixels.
    let i = min(vec4<u32>(i0) + LANES, vec4<u32>(nhw - 1u));
    let img = p.y_offset + (i / hw) * pq;
    let h = vec4<i32>((i % hw) / p.w);
    let w = vec4<i32>(i % p.w);
    let sh = i32(p.stride_h);
    let sw = i32(p.stride_w);
    let wcol = min(vec4<u32>(c0) + LANES, vec4<u32>(p.c_in - 1u)) * rs;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var r = 0u; r < p.kernel_h; r++) {
        // Output row oh reads input row h when oh * sh - ph + r == h.
        let oh_s = h + i32(p.pad_h) - i32(r);
        let oh = oh_s / sh;
        let ok_h = (oh_s >= vec4<i32>(0)) & (oh * sh == oh_s) & (oh < vec4<i32>(i32(p.out_h)));
        for (var s = 0u; s < p.kernel_w; s++) {
            let ow_s = w + i32(p.pad_w) - i32(s);
            let ow = ow_s / sw;
            let ok = ok_h & (ow_s >= vec4<i32>(0)) & (ow * sw == ow_s)
                & (ow < vec4<i32>(i32(p.out_w)));
            var di = img + vec4<u32>(oh) * p.out_w + vec4<u32>(ow);
            var wi = wcol + r * p.kernel_w + s;
            for (var k = 0u; k < p.c_out; k++) {
                let dv = gather_dy(di, ok);
                let wv = gather_weight(wi);
                acc0 += wv.x * dv;
                acc1 += wv.y * dv;
                acc2 += wv.z * dv;
                acc3 += wv.w * dv;
                di += npq;
                wi += crs;
            }
        }
    }
    add_dx(c0, i0, nhw, acc0);
    add_dx(c0 + 1u, i0, nhw, acc1);
    add_dx(c0 + 2u, i0, nhw, acc2);
    add_dx(c0 + 3u, i0, nhw, acc3);
}

fn add_dx(c: u32, i0: u32, nhw: u32, acc: vec4<f32>) {
    if c >= p.c_in {
        return;
    }
    let base = p.x_offset + c * nhw + i0;
    for (var l = 0u; l < TILE; l++) {
        if i0 + l < nhw {
            dx[base + l] += acc[l];
        }
    }
}

// Split-K weight gradient: invocation (tile, split) sums pixels [split * chunk, +chunk) for a
// 4x4 tile of (output channel k, tap c*R*S + r*S + s) into partial[split, k, tap].
@compute @workgroup_size(64)
fn conv2d_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let rs = p.kernel_h * p.kernel_w;
    let crs = p.c_in * rs;
    let a_tiles = (crs + TILE - 1u) / TILE;
    let k_tiles = (p.c_out + TILE - 1u) / TILE;
    let tiles = a_tiles * k_tiles;
    let t = flat_workgroup(wid, nwg) * WG + lid;
    if t >= tiles * p.splits {
        return;
    }
    let split = t / tiles;
    let a0 = (t % tiles % a_tiles) * TILE;
    let k0 = (t % tiles / a_tiles) * TILE;
    let hw = p.h * p.w;
    let nhw = p.n * hw;
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;

    // The tile's 4 taps: input channel, and the offset of the tap from the window origin.
    let a = min(vec4<u32>(a0) + LANES, vec4<u32>(crs - 1u));
    let chan = p.x_offset + (a / rs) * nhw;
    let r_off = vec4<i32>((a % rs) / p.kernel_w) - i32(p.pad_h);
    let s_off = vec4<i32>(a % p.kernel_w) - i32(p.pad_w);
    let drow = p.y_offset + min(vec4<u32>(k0) + LANES, vec4<u32>(p.c_out - 1u)) * npq;

    let j_begin = split * p.chunk;
    let j_end = min(j_begin + p.chunk, npq);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // Walk output pixels (n, oh, ow) incrementally: no division inside the loop.
    var n = j_begin / pq;
    var oh = (j_begin % pq) / p.out_w;
    var ow = j_begin % p.out_w;
    for (var j = j_begin; j < j_end; j++) {
        let ih = r_off + i32(oh * p.stride_h);
        let iw = s_off + i32(ow * p.stride_w);
        let ok = (ih >= vec4<i32>(0)) & (ih < vec4<i32>(i32(p.h)))
            & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(p.w)));
        let xv = gather_x(chan + n * hw + vec4<u32>(ih) * p.w + vec4<u32>(iw), ok);
        let dv = vec4<f32>(dy[drow.x + j], dy[drow.y + j], dy[drow.z + j], dy[drow.w + j]);
        acc0 += dv.x * xv;
        acc1 += dv.y * xv;
        acc2 += dv.z * xv;
        acc3 += dv.w * xv;
        ow += 1u;
        if ow == p.out_w {
            ow = 0u;
            oh += 1u;
            if oh == p.out_h {
                oh = 0u;
                n += 1u;
            }
        }
    }
    let base = split * p.c_out * crs;
    store_partial(base, k0, a0, crs, acc0);
    store_partial(base, k0 + 1u, a0, crs, acc1);
    store_partial(base, k0 + 2u, a0, crs, acc2);
    store_partial(base, k0 + 3u, a0, crs, acc3);
}

fn store_partial(base: u32, k: u32, a0: u32, crs: u32, acc: vec4<f32>) {
    if k >= p.c_out {
        return;
    }
    for (var l = 0u; l < TILE; l++) {
        if a0 + l < crs {
            partial[base + k * crs + a0 + l] = acc[l];
        }
    }
}

@compute @workgroup_size(64)
fn conv2d_backward_weight_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let len = p.c_out * p.c_in * p.kernel_h * p.kernel_w;
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if i >= len {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sum += partial_in[s * len + i];
    }
    dweight[i] += sum;
}

const RED: u32 = 256u;
var<workgroup> red: array<f32, RED>;

// One workgroup per output channel: a strided sum, then a tree reduction.
@compute @workgroup_size(256)
fn conv2d_backward_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let k = flat_workgroup(wid, nwg);
    let npq = p.n * p.out_h * p.out_w;
    let base = p.y_offset + k * npq;
    var sum = 0.0;
    if k < p.c_out {
        for (var j = lid; j < npq; j += RED) {
            sum += dy[base + j];
        }
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var stride = RED / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u && k < p.c_out {
        dbias[k] += red[0];
    }
}
