// loss_scale.wgsl: dynamic loss scaling for f16 training, as torch.amp.GradScaler. The loss
// gradient is multiplied by `scale` (softmax_cross_entropy) so that small activation
// gradients survive f16; the optimizer divides the parameter gradients (f32) by it again.
//
// state (4 u32s): [scale (f32 bits), clean steps since the last change, skipped steps,
//                  overflow flag of this step]
//
// Entry points (params at binding 0, a LossScaleParams uniform):
//   loss_scale_check    grad(1) -> state(2)   overflow = 1 if any gradient is inf or NaN
//   loss_scale_update   state(2)              after the optimizer (which skipped the step on
//                                             overflow): on overflow halve the scale and count
//                                             a skipped step, else count a clean step and
//                                             double the scale after `interval` of them;
//                                             then clear the flag for the next step.
// Geometry: the check is one invocation per gradient, 256 per workgroup, folded 1-D grid;
// only an invocation that finds inf or NaN touches the flag. The update is one invocation.

struct LossScaleParams {
    count: u32,
    interval: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: LossScaleParams;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<atomic<u32>>;

const EXPONENT: u32 = 0x7f800000u;
// The scale stays within [2^-24, 2^24].
const SMALLEST: f32 = 5.9604645e-8;
const LARGEST: f32 = 16777216.0;

@compute @workgroup_size(256)
fn loss_scale_check(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_workgroup(wid, nwg) * 256u + lid;
    if i >= p.count {
        return;
    }
    // All exponent bits set: inf or NaN (a bit test, which no fast-math can fold away).
    if (bitcast<u32>(grad[i]) & EXPONENT) == EXPONENT {
        atomicOr(&state[3], 1u);
    }
}

@compute @workgroup_size(1)
fn loss_scale_update() {
    var scale = bitcast<f32>(atomicLoad(&state[0]));
    var clean = atomicLoad(&state[1]);
    if atomicLoad(&state[3]) != 0u {
        scale = max(scale * 0.5, SMALLEST);
        clean = 0u;
        atomicAdd(&state[2], 1u);
    } else {
        clean += 1u;
        if clean >= p.interval {
            scale = min(scale * 2.0, LARGEST);
            clean = 0u;
        }
    }
    atomicStore(&state[0], bitcast<u32>(scale));
    atomicStore(&state[1], clean);
    atomicStore(&state[3], 0u);
}
