use densenet_wgpu::ops::sgd::SgdParams;
use densenet_wgpu::reference as cpu;

/// Two steps worked by hand with torch.optim.SGD's update rule (dampening 0).
#[test]
fn sgd_update_follows_torch_semantics() {
    let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
    let p = SgdParams::new(1, 0.1, 0.9, 0.01, false).unwrap();
    let (mut param, mut v) = ([1.0f32], [0.0f32]);
    cpu::sgd_update(&mut param, &[0.5], &mut v, &p);
    assert!(
        close(param[0], 0.949) && close(v[0], 0.51),
        "{param:?} {v:?}"
    );
    cpu::sgd_update(&mut param, &[0.5], &mut v, &p);
    assert!(
        close(v[0], 0.96849) && close(param[0], 0.852151),
        "{param:?} {v:?}"
    );

    let nesterov = SgdParams::new(1, 0.1, 0.9, 0.01, true).unwrap();
    let (mut param, mut v) = ([1.0f32], [0.0f32]);
    cpu::sgd_update(&mut param, &[0.5], &mut v, &nesterov);
    assert!(close(param[0], 0.9031), "{param:?}");

    let plain = SgdParams::new(1, 0.1, 0.0, 0.0, false).unwrap();
    let (mut param, mut v) = ([1.0f32], [123.0f32]);
    cpu::sgd_update(&mut param, &[0.5], &mut v, &plain);
    assert!(
        close(param[0], 0.95) && v[0] == 123.0,
        "plain SGD leaves the velocity alone"
    );
}
