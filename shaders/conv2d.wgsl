// conv2d.wgsl: 2-D convolution as an implicit GEMM over channel-major (C, N, H, W) tensors.
//
//   y[k, n, p, q] = bias[k] + sum_{c,r,s} weight[k, c, r, s] * x[c, n, p*sh - ph + r, q*sw - pw + s]
//
// Entry points (params at binding 0, a Conv2dParams uniform):
//   conv2d_pack_weight_forward     weight(2)                -> packed_out(12)  W as [c,r,s][k]
//   conv2d_forward                 x(1) packed(11) bias(3) affine(14) -> y(4)  writes y
//   conv2d_pack_weight_data        weight(2)                -> packed_out(12)  W as [r,s][k][c]
//   conv2d_backward_data           dy(5) packed(11)         -> dx(6)           dx += W^T * dy
//                                                                            (dx = with overwrite)
//   conv2d_pack_dy                 dy(5)                    -> packed_dy_out(15) dy as [n,p,q][k]
//   conv2d_backward_weight         x(1) packed_dy(13) affine(14) -> partial(7) split-K sums
//   conv2d_backward_weight_reduce  partial_in(8)            -> dweight(9)      dweight += sums
//   conv2d_backward_bias           dy(5)                    -> dbias(10)       dbias += sum N,P,Q
// Each GEMM kernel reads its channel-indexed operand from a packed copy made by the pack
// kernel before it (channels padded to the tile TM with zeros), so TM channels load as
// TM / 4 vec4.
//
// x / dx start at element x_offset and y / dy at y_offset, so the input may be a channel
// prefix of a dense block's buffer and the output a channel range of one (even of the same
// buffer). With input_bn_relu set, conv2d_forward and conv2d_backward_weight read their input
// as max(x * scale[c] + shift[c], 0) with (scale, shift) = affine[c] (binding 14, from
// batchnorm_affine): the BN -> ReLU before every DenseNet conv is applied while loading, and
// its output is never stored. Padding stays zero.
//
// Geometry: the GEMM kernels give each invocation a register tile of TM channels (the
// variant's: 16 or 8; shared by the workgroup) by 4 pixels or taps (its own), with no
// workgroup memory and no barriers,
// which suits GPUs and CPU implementations (where barriers are costly) alike; 64
// invocations per workgroup, workgroups in a folded 1-D grid. Pack kernels are one
// invocation per packed element; the bias kernel is one workgroup per output channel with a
// tree reduction.

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
    input_bn_relu: u32,
    overwrite: u32,
}

@group(0) @binding(0) var<uniform> p: Conv2dParams;
// read_write only so that it may alias y: a dense layer reads its block's first channels
// and writes its new ones into the same buffer, in one dispatch.
@group(0) @binding(1) var<storage, read_write> x: array<act>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<act>;
@group(0) @binding(5) var<storage, read> dy: array<act>;
@group(0) @binding(6) var<storage, read_write> dx: array<act>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read> partial_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(11) var<storage, read> packed: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> packed_out: array<f32>;
@group(0) @binding(13) var<storage, read> packed_dy: array<vec4<act>>;
@group(0) @binding(14) var<storage, read> affine: array<vec2<f32>>;
@group(0) @binding(15) var<storage, read_write> packed_dy_out: array<act>;

// Register tiles: each invocation owns TM channels (the same for the whole workgroup) by
// TN = 4 pixels or taps (its own). Per step of the reduction it does 4 gathered loads of its
// pixels and TM / 4 vec4 loads of TM channels' values from a packed copy in which those TM
// are contiguous, for 4 * TM multiply-adds. (On CPU implementations such as llvmpipe every
// storage load is a loop over the SIMD lanes whatever its width, so vec4 loads count most.)
// TM is the variant's: this file is a template, and the Rust side generates, for each tile
// size, the TM constant, the accumulators (one vec4 per channel: a0, a1, ...), fma_w and
// fma_dy (acc.m += w[m] * v for the TM channels read at index i of packed or packed_dy) and
// acc_get (channel m's vec4), at the marker below. The accumulation order over the reduction
// does not depend on TM, so every variant gives the same bits.
const TN: u32 = 4u;
const WG: u32 = 64u;
const LANES = vec4<u32>(0u, 1u, 2u, 3u);

// @generated-tile-code

fn gather_x(i: vec4<u32>, ok: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(f32(x[i.x]), f32(x[i.y]), f32(x[i.z]), f32(x[i.w])), ok);
}

fn gather_dy(i: vec4<u32>, ok: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(f32(dy[i.x]), f32(dy[i.y]), f32(dy[i.z]), f32(dy[i.w])), ok);
}

// The conv's input as loaded: x itself, or BN -> ReLU of it (ab = (scale, shift) per lane);
// positions outside the image (ok false) stay zero either way.
fn transform(v: vec4<f32>, ok: vec4<bool>, scale: vec4<f32>, shift: vec4<f32>) -> vec4<f32> {
    if p.input_bn_relu == 0u {
        return v;
    }
    return select(vec4<f32>(0.0), max(v * scale + shift, vec4<f32>(0.0)), ok);
}

// Channel counts padded to the tile.
fn padded(c: u32) -> u32 {
    return (c + TM - 1u) / TM * TM;
}

// The channel tile of flat workgroup `w` (uniform), and the workgroup's index along the
// other dimension.
fn channel_tile(w: u32, channels: u32) -> vec2<u32> {
    let tiles = (channels + TM - 1u) / TM;
    return vec2<u32>((w % tiles) * TM, w / tiles);
}

// Packs the weights for the forward: packed_out[(c*R*S + r*S + s) * Kp + k] = W[k, c, r, s],
// zero for k >= K (Kp = K padded to TM).
@compute @workgroup_size(64)
fn conv2d_pack_weight_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kp = padded(p.c_out);
    let taps = p.c_in * p.kernel_h * p.kernel_w;
    let o = flat_workgroup(wid, nwg) * WG + lid;
    if o >= taps * kp {
        return;
    }
    let k = o % kp;
    let tap = o / kp;
    packed_out[o] = select(0.0, weight[min(k, p.c_out - 1u) * taps + tap], k < p.c_out);
}

// Packs the weights for the data gradient:
// packed_out[((r*S + s) * K + k) * Cp + c] = W[k, c, r, s], zero for c >= C.
@compute @workgroup_size(64)
fn conv2d_pack_weight_data(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let cp = padded(p.c_in);
    let rs = p.kernel_h * p.kernel_w;
    let o = flat_workgroup(wid, nwg) * WG + lid;
    if o >= rs * p.c_out * cp {
        return;
    }
    let c = o % cp;
    let k = (o / cp) % p.c_out;
    let tap = o / cp / p.c_out;
    packed_out[o] = select(0.0, weight[(k * p.c_in + min(c, p.c_in - 1u)) * rs + tap], c < p.c_in);
}

// Transposes the output gradient for the weight gradient:
// packed_dy_out[j * Kp + k] = dy[y_offset + k * N*P*Q + j], zero for k >= K (a copy of dy,
// so of its element type).
@compute @workgroup_size(64)
fn conv2d_pack_dy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kp = padded(p.c_out);
    let npq = p.n * p.out_h * p.out_w;
    let o = flat_workgroup(wid, nwg) * WG + lid;
    if o >= npq * kp {
        return;
    }
    let k = o % kp;
    let j = o / kp;
    packed_dy_out[o] = act(select(0.0, f32(dy[p.y_offset + min(k, p.c_out - 1u) * npq + j]), k < p.c_out));
}

@compute @workgroup_size(64)
fn conv2d_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;
    let tile = channel_tile(flat_workgroup(wid, nwg), p.c_out);
    let k0 = tile.x;
    let j0 = (tile.y * WG + lid) * TN;
    if j0 >= npq {
        return;
    }
    let hw = p.h * p.w;
    let nhw = p.n * hw;
    let rs = p.kernel_h * p.kernel_w;
    let kq = padded(p.c_out) / 4u;

    // This invocation's output pixels (clamped in range; the store skips the extra ones).
    let j = min(vec4<u32>(j0) + LANES, vec4<u32>(npq - 1u));
    let img = p.x_offset + (j / pq) * hw;
    let ih0 = vec4<i32>(((j % pq) / p.out_w) * p.stride_h) - i32(p.pad_h);
    let iw0 = vec4<i32>((j % p.out_w) * p.stride_w) - i32(p.pad_w);

    // Input channel outermost, so its BN -> ReLU coefficients load once for all taps.
    var acc = Acc();
    var xc = img;
    var wc = k0 / 4u;
    for (var c = 0u; c < p.c_in; c++) {
        var ab = vec2<f32>(1.0, 0.0);
        if p.input_bn_relu != 0u {
            ab = affine[c];
        }
        let scale = vec4<f32>(ab.x);
        let shift = vec4<f32>(ab.y);
        var wi = wc;
        for (var r = 0u; r < p.kernel_h; r++) {
            let ih = ih0 + i32(r);
            let ok_h = (ih >= vec4<i32>(0)) & (ih < vec4<i32>(i32(p.h)));
            for (var s = 0u; s < p.kernel_w; s++) {
                let iw = iw0 + i32(s);
                let ok = ok_h & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(p.w)));
                let xi = xc + vec4<u32>(ih) * p.w + vec4<u32>(iw);
                fma_w(&acc, wi, transform(gather_x(xi, ok), ok, scale, shift));
                wi += kq;
            }
        }
        xc += nhw;
        wc += rs * kq;
    }
    for (var m = 0u; m < TM; m++) {
        let k = k0 + m;
        if k >= p.c_out {
            break;
        }
        var b = 0.0;
        if p.has_bias != 0u {
            b = bias[k];
        }
        let v = acc_get(acc, m);
        let base = p.y_offset + k * npq + j0;
        for (var l = 0u; l < TN; l++) {
            if j0 + l < npq {
                y[base + l] = act(v[l] + b);
            }
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
    let tile = channel_tile(flat_workgroup(wid, nwg), p.c_in);
    let c0 = tile.x;
    let i0 = (tile.y * WG + lid) * TN;
    if i0 >= nhw {
        return;
    }
    let cq = padded(p.c_in) / 4u;

    // This invocation's input pixels.
    let i = min(vec4<u32>(i0) + LANES, vec4<u32>(nhw - 1u));
    let img = p.y_offset + (i / hw) * pq;
    let h = vec4<i32>((i % hw) / p.w);
    let w = vec4<i32>(i % p.w);
    let sh = i32(p.stride_h);
    let sw = i32(p.stride_w);

    var acc = Acc();
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
            var wi = (r * p.kernel_w + s) * p.c_out * cq + c0 / 4u;
            for (var k = 0u; k < p.c_out; k++) {
                fma_w(&acc, wi, gather_dy(di, ok));
                di += npq;
                wi += cq;
            }
        }
    }
    for (var m = 0u; m < TM; m++) {
        let c = c0 + m;
        if c >= p.c_in {
            break;
        }
        let v = acc_get(acc, m);
        let base = p.x_offset + c * nhw + i0;
        for (var l = 0u; l < TN; l++) {
            if i0 + l < nhw {
                if p.overwrite != 0u {
                    dx[base + l] = act(v[l]);
                } else {
                    dx[base + l] = act(f32(dx[base + l]) + v[l]);
                }
            }
        }
    }
}

// Split-K weight gradient: workgroup (k tile, tap group, split) sums the output pixels
// [split * chunk, +chunk) for TM output channels (uniform, read as TM / 4 vec4 from the
// packed dy) by 4 taps c*R*S + r*S + s per invocation into partial[split, k, tap].
@compute @workgroup_size(64)
fn conv2d_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let rs = p.kernel_h * p.kernel_w;
    let crs = p.c_in * rs;
    let tap_groups = (crs + WG * TN - 1u) / (WG * TN);
    let tile = channel_tile(flat_workgroup(wid, nwg), p.c_out);
    let k0 = tile.x;
    let split = tile.y / tap_groups;
    let a0 = ((tile.y % tap_groups) * WG + lid) * TN;
    if split >= p.splits || a0 >= crs {
        return;
    }
    let hw = p.h * p.w;
    let nhw = p.n * hw;
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;
    let kq = padded(p.c_out) / 4u;

    // This invocation's taps: input channel, and the offset from the window origin.
    let a = min(vec4<u32>(a0) + LANES, vec4<u32>(crs - 1u));
    let chan = p.x_offset + (a / rs) * nhw;
    let r_off = vec4<i32>((a % rs) / p.kernel_w) - i32(p.pad_h);
    let s_off = vec4<i32>(a % p.kernel_w) - i32(p.pad_w);
    var scale = vec4<f32>(1.0);
    var shift = vec4<f32>(0.0);
    if p.input_bn_relu != 0u {
        let c = a / rs;
        let a0c = affine[c.x];
        let a1c = affine[c.y];
        let a2c = affine[c.z];
        let a3c = affine[c.w];
        scale = vec4<f32>(a0c.x, a1c.x, a2c.x, a3c.x);
        shift = vec4<f32>(a0c.y, a1c.y, a2c.y, a3c.y);
    }

    let j_begin = split * p.chunk;
    let j_end = min(j_begin + p.chunk, npq);
    var acc = Acc();
    // Walk output pixels (n, oh, ow) incrementally: no division inside the loop.
    var n = j_begin / pq;
    var oh = (j_begin % pq) / p.out_w;
    var ow = j_begin % p.out_w;
    var di = j_begin * kq + k0 / 4u;
    for (var j = j_begin; j < j_end; j++) {
        let ih = r_off + i32(oh * p.stride_h);
        let iw = s_off + i32(ow * p.stride_w);
        let ok = (ih >= vec4<i32>(0)) & (ih < vec4<i32>(i32(p.h)))
            & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(p.w)));
        let xv = gather_x(chan + n * hw + vec4<u32>(ih) * p.w + vec4<u32>(iw), ok);
        fma_dy(&acc, di, transform(xv, ok, scale, shift));
        di += kq;
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
    for (var m = 0u; m < TM; m++) {
        let k = k0 + m;
        if k >= p.c_out {
            break;
        }
        let v = acc_get(acc, m);
        for (var l = 0u; l < TN; l++) {
            if a0 + l < crs {
                partial[base + k * crs + a0 + l] = v[l];
            }
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
            sum += f32(dy[base + j]);
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
