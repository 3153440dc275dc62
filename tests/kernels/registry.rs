//! The registry on the device: every kernel of every op (each entry in each variant and
//! element type) compiles; lookups that cannot succeed fail with one clear line.

use crate::support::harness::{case, note, per_act, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{DeviceClass, Kernel};
use densenet_wgpu::ops::{relu, sgd, SHADERS};
use densenet_wgpu::Policy;

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "registry::every_kernel_of_every_op_compiles",
            every_kernel_of_every_op_compiles,
        ),
        vec![
            case(
                "registry::a_missing_element_type_or_variant_is_a_clear_error",
                a_missing_element_type_or_variant_is_a_clear_error,
            ),
            case(
                "registry::a_view_of_the_wrong_element_type_is_refused",
                a_view_of_the_wrong_element_type_is_refused,
            ),
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every kernel of element type `dtype` whose variant this adapter can run compiles and is
/// cached; the others (the cooperative-matrix ones on an adapter without) are refused with
/// the reason. One case per element type, so that the f16 kernels are skipped, with the
/// reason, on an adapter without SHADER_F16.
fn every_kernel_of_every_op_compiles(dtype: DType) {
    // The f32 case takes every kernel that is not f16: a kernel of another element type is
    // never left out.
    let in_case = |k: &Kernel| (k.dtype == DType::F16) == (dtype == DType::F16);
    let mut count = 0;
    for shader in SHADERS {
        for kernel in shader.kernels().filter(in_case) {
            if let Some(why) = kernel.variant.needs.unmet(gpu()) {
                let err = k().pipeline(kernel).err().expect("refused").to_string();
                assert!(err.contains(&why), "{}: {err}", kernel.label());
                continue;
            }
            let p = k().pipeline(kernel);
            let p = p.unwrap_or_else(|e| panic!("{}: {e}", kernel.label()));
            let again = k().pipeline(kernel).unwrap();
            assert!(
                std::sync::Arc::ptr_eq(&p, &again),
                "{} is cached",
                kernel.label()
            );
            count += 1;
        }
    }
    note(format!("{count} {dtype} kernels compiled"));
}

fn a_missing_element_type_or_variant_is_a_clear_error() {
    // The optimizer works on f32 master weights only.
    let err = k()
        .pipeline(sgd::SGD_UPDATE.kernel(DType::F16))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sgd_update") && err.contains("f16"), "{err}");
    let err = Policy::parse("conv2d=tile99", DeviceClass::Cpu, SHADERS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tile99") && err.contains("tile8"), "{err}");
    let err = Policy::parse("nosuchop=tile8", DeviceClass::Cpu, SHADERS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nosuchop"), "{err}");
}

fn a_view_of_the_wrong_element_type_is_refused() {
    let p = relu::ReluParams::new(4);
    let x = up_u32(&[1, 2, 3, 4]);
    let y = poisoned(4);
    let err = relu::relu_forward(k(), &p, x.view(), y.view())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("mixed element types"), "{err}");
}
