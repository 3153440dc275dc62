// conv2d_tiled.wgsl: 2-D convolution over channel-major (C, N, H, W) tensors as implicit
// GEMMs over workgroup-memory tiles: the GPU implementation (conv2d.wgsl holds the
// register-tile one that CPU drivers run best). The tensors are read where they lie: no
// packing pass.
//
//   forward          Y[K, NPQ]  = W[K, CRS] x Xcol[CRS, NPQ]         (+ bias)
//   backward data    dX[C, NHW] = Wt[C, KRS] x dYcol[KRS, NHW]       (= or += into dx)
//   backward weight  dW[K, CRS] = dY[K, NPQ] x Xcol[CRS, NPQ]^T      split-K partial sums
//
// Entry points (params at binding 0, a Conv2dParams uniform; binding numbers as conv2d.wgsl):
//   conv2d_forward          x(1) weight(2) bias(3) affine(14) -> y(4)     writes y, or with
//                                      splits > 1 partial[split, k, npq] (7) over CRS / splits
//   conv2d_forward_reduce   partial_in(8) bias(3)             -> y(4)     y = sum + bias
//   conv2d_backward_data    dy(5) weight(2)                   -> dx(6)    dx = or += W^T * dy, or
//                                      with splits > 1 partial[split, c, nhw] (7) over KRS / splits
//   conv2d_backward_data_reduce  partial_in(8)               -> dx(6)    dx = or += sum
//   conv2d_backward_weight  x(1) dy(5) affine(14)            -> partial(7)
//                                                  partial[split, k, crs] over the split's pixels
// (the weight gradient's split-K sum and the bias gradient are conv2d.wgsl's
// conv2d_backward_weight_reduce and conv2d_backward_bias.) The host splits the reduced
// dimension (splits, chunk: a multiple of BK) where the output alone would leave the device
// idle; the partial sums are then added in split order by the reduce kernels. x / dx
// start at x_offset, y / dy at y_offset; x is read_write only so that it may alias y (a
// dense layer reads its block's first channels and writes its new ones in place). With
// input_bn_relu, x is read as max(x * scale[c] + shift[c], 0) with (scale, shift) =
// affine[c], applied as the tile is staged; padding stays zero.
//
// Geometry: 128 invocations (8 x 16) per workgroup; a workgroup owns a BM x BN = 32 x 64 tile
// of the output. Per step of BK = 16 along the reduced dimension, the workgroup stages the A
// (BM x BK) and B (BK x BN) tiles in workgroup memory with coalesced loads (consecutive
// invocations read consecutive pixels or weights). The im2col index of each step's 16
// reduced rows (channel, tap, fused BN) is computed once per workgroup into a small table,
// so staging does no division. Workgroups cover the M tiles fastest, then the N tiles (then
// the splits), in a folded 1-D grid.
//
// This file is a template (tiled.rs fills the `@` markers) for two ways of multiplying the
// staged tiles:
//   wgtile   f32 tiles; every invocation keeps a 4 x 4 sub-tile in registers and does
//            4 x 4 x 16 multiply-adds per step.
//   coopN    f16 tiles (converted while staging, after BN -> ReLU); each subgroup multiplies
//            two N x N fragments with cooperative matrices (f16 x f16 -> f32), and at the end
//            stores them to a workgroup tile from which every invocation reads its 4 x 4
//            share. The epilogue (bias, splits, = or +=) is the same for both.

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
@group(0) @binding(1) var<storage, read_write> x: array<act>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<act>;
@group(0) @binding(5) var<storage, read> dy: array<act>;
@group(0) @binding(6) var<storage, read_write> dx: array<act>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read> partial_in: array<f32>;
@group(0) @binding(14) var<storage, read> affine: array<vec2<f32>>;

const BM: u32 = 32u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const TX: u32 = 16u; // invocations along N, 4 columns each
const THREADS: u32 = 128u;
// The variant's code (tiled.rs generates it): the staged tiles' element type `tile_t` and
// row strides AS, BS; tile_a (BK x AS, reduced index major) and tile_b (BK x BS); and the
// multiply-adds of one step into the accumulators (`@acc-init`, `@mac`, `@acc-finish`).
// @generated-tile-code
// Per reduced row (or, in the weight gradient, per output column): the element offset of its
// channel (or output channel), its tap (r, s), the fused BN (scale, shift), and whether it
// exists.
var<workgroup> lut_off: array<u32, 64>;
var<workgroup> lut_tap: array<vec2<i32>, 64>;
var<workgroup> lut_ab: array<vec2<f32>, 64>;
var<workgroup> lut_ok: array<u32, 64>;
// The data gradient's weight offset of each reduced row, k*C*R*S + r*S + s.
var<workgroup> lut_w: array<u32, 64>;

// The conv's input as staged: x, or BN -> ReLU of it.
fn transform(v: f32, ab: vec2<f32>) -> f32 {
    if p.input_bn_relu == 0u {
        return v;
    }
    return max(v * ab.x + ab.y, 0.0);
}

// The (scale, shift) of input channel c, or the identity.
fn affine_of(c: u32) -> vec2<f32> {
    if p.input_bn_relu == 0u {
        return vec2<f32>(1.0, 0.0);
    }
    return affine[min(c, p.c_in - 1u)];
}

// An invocation's 4 x 4 share of the output tile: rows ty*4.., columns tx*4...
struct Acc {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

fn acc_row(acc: Acc, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return acc.r0; }
        case 1u: { return acc.r1; }
        case 2u: { return acc.r2; }
        default: { return acc.r3; }
    }
}

// The tile of flat workgroup w: (M tile start, N tile start, split).
fn tile_of(w: u32, m: u32, n: u32) -> vec3<u32> {
    let m_tiles = (m + BM - 1u) / BM;
    let n_tiles = (n + BN - 1u) / BN;
    return vec3<u32>((w % m_tiles) * BM, ((w / m_tiles) % n_tiles) * BN, w / (m_tiles * n_tiles));
}

// Fills the table for the `count` input taps [t0, t0 + count) (t = c*R*S + r*S + s): the
// reduced rows of a forward step, or the output columns of a weight-gradient workgroup. Taps
// at or past `t_end` (the split's or the tensor's end) do not exist.
fn tap_lut(lid: u32, count: u32, t0: u32, t_end: u32) {
    if lid < count {
        let rs = p.kernel_h * p.kernel_w;
        let t = t0 + lid;
        let c = t / rs;
        let tap = t % rs;
        lut_off[lid] = p.x_offset + min(c, p.c_in - 1u) * p.n * p.h * p.w;
        lut_tap[lid] = vec2<i32>(i32(tap / p.kernel_w), i32(tap % p.kernel_w));
        lut_ab[lid] = affine_of(c);
        lut_ok[lid] = u32(t < t_end);
    }
}

@compute @workgroup_size(128)
fn conv2d_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    // @entry-builtins
) {
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;
    let crs = p.c_in * p.kernel_h * p.kernel_w;
    let tile = tile_of(flat_workgroup(wid, nwg), p.c_out, npq);
    let tx = lid % TX;
    let ty = lid / TX;
    // This invocation's pixel for staging B: column lid % BN, rows lid / BN + 2q.
    let nb = lid % BN;
    let j = tile.y + nb;
    let jc = min(j, npq - 1u);
    let img = jc / pq;
    let ih0 = i32(((jc % pq) / p.out_w) * p.stride_h) - i32(p.pad_h);
    let iw0 = i32((jc % p.out_w) * p.stride_w) - i32(p.pad_w);
    let plane = img * p.h * p.w;
    let t_begin = tile.z * p.chunk;
    let t_end = min(t_begin + p.chunk, crs);
    var acc = Acc();
    // @acc-init
    for (var t0 = t_begin; t0 < t_end; t0 += BK) {
        tap_lut(lid, BK, t0, t_end);
        for (var q = 0u; q < 4u; q++) {
            let e = lid + q * THREADS;
            let m = e / BK;
            let kk = e % BK;
            let k = tile.x + m;
            let t = t0 + kk;
            let ok = k < p.c_out && t < t_end;
            tile_a[kk * AS + m] = tile_t(select(0.0, weight[min(k * crs + t, p.c_out * crs - 1u)], ok));
        }
        workgroupBarrier();
        for (var q = 0u; q < 8u; q++) {
            let kk = lid / BN + 2u * q;
            let ih = ih0 + lut_tap[kk].x;
            let iw = iw0 + lut_tap[kk].y;
            let ok = j < npq && lut_ok[kk] != 0u && ih >= 0 && ih < i32(p.h) && iw >= 0
                && iw < i32(p.w);
            let i = select(0u, lut_off[kk] + plane + u32(ih) * p.w + u32(iw), ok);
            tile_b[kk * BS + nb] = tile_t(select(0.0, transform(f32(x[i]), lut_ab[kk]), ok));
        }
        workgroupBarrier();
        // @mac
        workgroupBarrier();
    }
    // @acc-finish
    for (var i = 0u; i < 4u; i++) {
        let k = tile.x + ty * 4u + i;
        if k >= p.c_out {
            break;
        }
        let v = acc_row(acc, i);
        for (var l = 0u; l < 4u; l++) {
            let jj = tile.y + tx * 4u + l;
            if jj >= npq {
                break;
            }
            if p.splits > 1u {
                partial[(tile.z * p.c_out + k) * npq + jj] = v[l];
            } else {
                y[p.y_offset + k * npq + jj] = act(v[l] + bias_of(k));
            }
        }
    }
}

fn bias_of(k: u32) -> f32 {
    if p.has_bias == 0u {
        return 0.0;
    }
    return bias[k];
}

// Element i of the splits' partial sums (each `len` long), added in split order.
fn sum_splits(i: u32, len: u32) -> f32 {
    var s = 0.0;
    for (var sp = 0u; sp < p.splits; sp++) {
        s += partial_in[sp * len + i];
    }
    return s;
}

// y = the splits' partial sums (in split order) + bias: one invocation per output element.
@compute @workgroup_size(128)
fn conv2d_forward_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let npq = p.n * p.out_h * p.out_w;
    let len = p.c_out * npq;
    let i = flat_workgroup(wid, nwg) * THREADS + lid;
    if i >= len {
        return;
    }
    y[p.y_offset + i] = act(sum_splits(i, len) + bias_of(i / npq));
}

// Fills the table for reduced rows [t0, t0 + BK) of the data gradient (t = k*R*S + r*S + s):
// the output-gradient channel's offset, the tap, and the weight offset; rows at or past
// `t_end` do not exist.
fn data_lut(lid: u32, t0: u32, t_end: u32) {
    if lid < BK {
        let rs = p.kernel_h * p.kernel_w;
        let t = t0 + lid;
        let k = min(t / rs, p.c_out - 1u);
        let tap = t % rs;
        lut_off[lid] = p.y_offset + k * p.n * p.out_h * p.out_w;
        lut_tap[lid] = vec2<i32>(i32(tap / p.kernel_w), i32(tap % p.kernel_w));
        lut_w[lid] = k * p.c_in * rs + tap;
        lut_ok[lid] = u32(t < t_end);
    }
}

@compute @workgroup_size(128)
fn conv2d_backward_data(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    // @entry-builtins
) {
    let hw = p.h * p.w;
    let nhw = p.n * hw;
    let pq = p.out_h * p.out_w;
    let rs = p.kernel_h * p.kernel_w;
    let krs = p.c_out * rs;
    let tile = tile_of(flat_workgroup(wid, nwg), p.c_in, nhw);
    let tx = lid % TX;
    let ty = lid / TX;
    // This invocation's input pixel for staging B.
    let nb = lid % BN;
    let i = tile.y + nb;
    let ic = min(i, nhw - 1u);
    let img_base = (ic / hw) * pq;
    let h = i32((ic % hw) / p.w);
    let w = i32(ic % p.w);
    let sh = i32(p.stride_h);
    let sw = i32(p.stride_w);
    let t_begin = tile.z * p.chunk;
    let t_end = min(t_begin + p.chunk, krs);
    var acc = Acc();
    // @acc-init
    for (var t0 = t_begin; t0 < t_end; t0 += BK) {
        data_lut(lid, t0, t_end);
        workgroupBarrier();
        for (var q = 0u; q < 4u; q++) {
            let e = lid + q * THREADS;
            let m = e / BK;
            let kk = e % BK;
            let c = tile.x + m;
            let ok = c < p.c_in && lut_ok[kk] != 0u;
            let wi = select(0u, lut_w[kk] + c * rs, ok);
            tile_a[kk * AS + m] = tile_t(select(0.0, weight[wi], ok));
        }
        for (var q = 0u; q < 8u; q++) {
            let kk = lid / BN + 2u * q;
            // Output row oh reads input row h through tap r when oh * sh - ph + r == h.
            let oh_s = h + i32(p.pad_h) - lut_tap[kk].x;
            let ow_s = w + i32(p.pad_w) - lut_tap[kk].y;
            let oh = oh_s / sh;
            let ow = ow_s / sw;
            let ok = i < nhw && lut_ok[kk] != 0u && oh_s >= 0 && ow_s >= 0 && oh * sh == oh_s
                && ow * sw == ow_s && oh < i32(p.out_h) && ow < i32(p.out_w);
            let di = select(0u, lut_off[kk] + img_base + u32(oh) * p.out_w + u32(ow), ok);
            tile_b[kk * BS + nb] = tile_t(select(0.0, f32(dy[di]), ok));
        }
        workgroupBarrier();
        // @mac
        workgroupBarrier();
    }
    // @acc-finish
    for (var r = 0u; r < 4u; r++) {
        let c = tile.x + ty * 4u + r;
        if c >= p.c_in {
            break;
        }
        let v = acc_row(acc, r);
        for (var l = 0u; l < 4u; l++) {
            let ii = tile.y + tx * 4u + l;
            if ii >= nhw {
                break;
            }
            if p.splits > 1u {
                partial[(tile.z * p.c_in + c) * nhw + ii] = v[l];
            } else {
                store_dx(p.x_offset + c * nhw + ii, v[l]);
            }
        }
    }
}

fn store_dx(i: u32, v: f32) {
    if p.overwrite != 0u {
        dx[i] = act(v);
    } else {
        dx[i] = act(f32(dx[i]) + v);
    }
}

// dx = or += the splits' partial sums (in split order): one invocation per input element.
@compute @workgroup_size(128)
fn conv2d_backward_data_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let len = p.c_in * p.n * p.h * p.w;
    let i = flat_workgroup(wid, nwg) * THREADS + lid;
    if i >= len {
        return;
    }
    store_dx(p.x_offset + i, sum_splits(i, len));
}

// Split-K over output pixels: workgroup (k tile, crs tile, split) sums the pixels
// [split * chunk, +chunk) in steps of BK, staging dy (BM x BK, along pixels) and the
// transformed input (BK x BN, along pixels) each step, into partial[split, k, crs].
@compute @workgroup_size(128)
fn conv2d_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    // @entry-builtins
) {
    let pq = p.out_h * p.out_w;
    let npq = p.n * pq;
    let crs = p.c_in * p.kernel_h * p.kernel_w;
    let tile = tile_of(flat_workgroup(wid, nwg), p.c_out, crs);
    if tile.z >= p.splits {
        return; // uniform: the whole workgroup leaves
    }
    let tx = lid % TX;
    let ty = lid / TX;
    tap_lut(lid, BN, tile.y, crs);
    workgroupBarrier();
    let j_begin = tile.z * p.chunk;
    let j_end = min(j_begin + p.chunk, npq);
    // Staging B: this invocation's pixel row lid % BK, columns lid / BK + 8q.
    let jb = lid % BK;
    var acc = Acc();
    // @acc-init
    for (var j0 = j_begin; j0 < j_end; j0 += BK) {
        for (var q = 0u; q < 4u; q++) {
            let e = lid + q * THREADS;
            let m = e / BK;
            let jj = e % BK;
            let k = tile.x + m;
            let j = j0 + jj;
            let ok = k < p.c_out && j < j_end;
            let di = select(0u, p.y_offset + k * npq + j, ok);
            tile_a[jj * AS + m] = tile_t(select(0.0, f32(dy[di]), ok));
        }
        let j = j0 + jb;
        let jc = min(j, npq - 1u);
        let plane = (jc / pq) * p.h * p.w;
        let ih0 = i32(((jc % pq) / p.out_w) * p.stride_h) - i32(p.pad_h);
        let iw0 = i32((jc % p.out_w) * p.stride_w) - i32(p.pad_w);
        for (var q = 0u; q < 8u; q++) {
            let n = lid / BK + 8u * q;
            let ih = ih0 + lut_tap[n].x;
            let iw = iw0 + lut_tap[n].y;
            let ok = j < j_end && lut_ok[n] != 0u && ih >= 0 && ih < i32(p.h) && iw >= 0
                && iw < i32(p.w);
            let xi = select(0u, lut_off[n] + plane + u32(ih) * p.w + u32(iw), ok);
            tile_b[jb * BS + n] = tile_t(select(0.0, transform(f32(x[xi]), lut_ab[n]), ok));
        }
        workgroupBarrier();
        // @mac
        workgroupBarrier();
    }
    // @acc-finish
    let base = tile.z * p.c_out * crs;
    for (var r = 0u; r < 4u; r++) {
        let k = tile.x + ty * 4u + r;
        if k >= p.c_out {
            break;
        }
        let v = acc_row(acc, r);
        for (var l = 0u; l < 4u; l++) {
            let t = tile.y + tx * 4u + l;
            if t < crs {
                partial[base + k * crs + t] = v[l];
            }
        }
    }
}
