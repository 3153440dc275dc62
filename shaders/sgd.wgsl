// sgd.wgsl: stochastic gradient descent with momentum and weight decay, as torch.optim.SGD
// (dampening 0): g = grad + weight_decay * param; v = momentum * v + g;
// param -= lr * (nesterov ? g + momentum * v : v). With momentum 0, v is not touched and
// param -= lr * g (plain SGD when weight_decay is 0 too). With loss_scaled, the gradients
// are of a scaled loss (f16 training): the step is skipped when loss_scale_check flagged
// inf or NaN in them, and grad is divided by the scale otherwise (loss_scale.wgsl's state).
//
// Entry point (params at binding 0, an SgdParams uniform):
//   sgd_update   grad(2) scale_state(4) clip(5) -> param(1) velocity(3)
// With clipped, the gradients are first multiplied by clip[1] (grad_clip.wgsl's factor).
// Geometry: one invocation per parameter, 256 per workgroup, folded 1-D grid. All of a
// model's parameters live in one buffer, so one dispatch updates them all.

struct SgdParams {
    count: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: u32,
    loss_scaled: u32,
    clipped: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: SgdParams;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;
@group(0) @binding(4) var<storage, read> scale_state: array<u32>;
@group(0) @binding(5) var<storage, read> clip: array<f32>;

@compute @workgroup_size(256)
fn sgd_update(
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
    var g = grad[i] * unscale + p.weight_decay * param[i];
    if p.momentum != 0.0 {
        let v = p.momentum * velocity[i] + g;
        velocity[i] = v;
        g = select(v, g + p.momentum * v, p.nesterov != 0u);
    }
    param[i] -= p.lr * g;
}
