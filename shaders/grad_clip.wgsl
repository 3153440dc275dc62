// grad_clip.wgsl: gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_:
// every parameter gradient is multiplied by min(1, max_norm / (norm + 1e-6)).
//
// Entry points (params at binding 0, a GradClipParams uniform):
//   grad_norm_partial  grad(1) -> partial(2)     workgroup w sums the squares of its chunk
//   grad_clip_factor   partial_in(3) scale_state(5) -> clip(4)
//                        clip = [norm, factor]; the partial sums added in order, the norm
//                        divided by the loss scale where the loss is scaled (f16 training)
// Geometry: 256 invocations per workgroup. The partial pass runs `groups` workgroups over
// chunks of `chunk` gradients (each invocation strides through its chunk, then a tree sum in
// workgroup memory); the factor pass is one workgroup. Sums are in a fixed order, so the
// factor does not depend on scheduling. sgd_update multiplies by clip[1].

struct GradClipParams {
    count: u32,
    chunk: u32,
    groups: u32,
    loss_scaled: u32,
    max_norm: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: GradClipParams;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<storage, read> partial_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> clip: array<f32>;
@group(0) @binding(5) var<storage, read> scale_state: array<u32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn tree_sum(lid: u32) -> f32 {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn grad_norm_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = flat_workgroup(wid, nwg);
    let begin = w * p.chunk;
    let end = min(begin + p.chunk, p.count);
    var s = 0.0;
    for (var i = begin + lid; i < end; i += WG) {
        let g = grad[i];
        s += g * g;
    }
    red[lid] = s;
    let total = tree_sum(lid);
    if lid == 0u {
        partial[w] = total;
    }
}

@compute @workgroup_size(256)
fn grad_clip_factor(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.groups; i += WG) {
        s += partial_in[i];
    }
    red[lid] = s;
    let total = tree_sum(lid);
    if lid == 0u {
        var norm = sqrt(total);
        if p.loss_scaled != 0u {
            norm /= bitcast<f32>(scale_state[0]);
        }
        clip[0] = norm;
        clip[1] = min(1.0, p.max_norm / (norm + 1e-6));
    }
}
