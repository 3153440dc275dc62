// adam.wgsl: Adam and AdamW, as torch.optim.Adam / AdamW (amsgrad off):
//   g = grad (+ weight_decay * param for Adam; AdamW decays the parameter instead:
//   param *= 1 - lr * weight_decay)
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   param -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps)
// with bias1 = 1 - beta1^t and bias2 = 1 - beta2^t for the step t, which the host writes
// into the params each step (PyTorch's order of operations, so the rounding follows it).
// With loss_scaled, a step whose gradients overflowed is skipped and the others are
// unscaled (loss_scale.wgsl's state); with clipped, the gradients are multiplied by clip[1]
// (grad_clip.wgsl's factor), as in sgd.wgsl.
//
// Entry point (params at binding 0, an AdamParams uniform):
//   adam_update   grad(2) scale_state(5) clip(6) -> param(1) exp_avg(3) exp_avg_sq(4)
// Geometry: one invocation per parameter, 256 per workgroup, folded 1-D grid.

struct AdamParams {
    count: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: u32,
    loss_scaled: u32,
    clipped: u32,
    bias1: f32,
    bias2: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: AdamParams;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> scale_state: array<u32>;
@group(0) @binding(6) var<storage, read> clip: array<f32>;

@compute @workgroup_size(256)
fn adam_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * 256u + lid;
    if i >= p.count {
        return;
    }
    var unscale = 1.0;
    if p.loss_scaled != 0u {
        if scale_state[3] != 0u {
            return; // inf or NaN somewhere in this step's gradients: skip it
        }
        unscale = 1.0 / bitcast<f32>(scale_state[0]);
    }
    if p.clipped != 0u {
        unscale *= clip[1];
    }
    var x = param[i];
    var g = grad[i] * unscale;
    if p.decoupled != 0u {
        x *= 1.0 - p.lr * p.weight_decay;
    } else {
        g += p.weight_decay * x;
    }
    let m = p.beta1 * exp_avg[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * exp_avg_sq[i] + (1.0 - p.beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / sqrt(p.bias2) + p.eps;
    param[i] = x - (p.lr / p.bias1) * (m / denom);
}
