//! The registry on the device: every kernel of every op (each entry in each variant and
//! element type) compiles; lookups that cannot succeed fail with one clear line.

use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::DeviceClass;
use densenet_wgpu::ops::{relu, sgd, SHADERS};
use densenet_wgpu::Policy;

/// Every kernel whose variant this adapter can run compiles and is cached; the others (the
/// cooperative-matrix ones on an adapter without) are refused with the reason.
#[test]
fn every_kernel_of_every_op_compiles() {
    let mut count = 0;
    for shader in SHADERS {
        for kernel in shader.kernels() {
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
    println!("{count} kernels compiled");
}

#[test]
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

#[test]
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
