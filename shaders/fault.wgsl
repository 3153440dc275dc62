// fault.wgsl: a deliberately wrong result, for testing that wrong kernels are caught. Never
// part of a normal run: the launchers add it after a kernel configuration only when the
// DENSENET_FAULT environment variable names that configuration (see src/ops/fault.rs), so
// the configuration's output looks exactly like that of a miscompiled kernel.
//
// Entry points (params at binding 0, a FaultParams uniform):
//   fault_perturb   -> y(1)   y[offset] += 1
// Geometry: one invocation.

struct FaultParams {
    offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: FaultParams;
@group(0) @binding(1) var<storage, read_write> y: array<act>;

@compute @workgroup_size(1)
fn fault_perturb() {
    y[p.offset] = act(f32(y[p.offset]) + 1.0);
}
