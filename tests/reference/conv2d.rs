use crate::fd::{self, check, dot, rand_vec};
use densenet_wgpu::ops::conv2d::Conv2dParams;
use densenet_wgpu::reference as cpu;

#[test]
fn conv2d_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let shapes = [
        ([2, 3, 5, 5], 4, (3, 3), (1, 1), (1, 1)),
        ([1, 2, 7, 5], 3, (3, 2), (2, 1), (2, 0)),
        ([3, 2, 4, 4], 2, (1, 1), (1, 1), (0, 0)),
    ];
    for (i, (input, k, kernel, stride, pad)) in shapes.into_iter().enumerate() {
        let p = Conv2dParams::new(input, k, kernel, stride, pad, true).unwrap();
        let x = rand_vec(&mut rng, p.x_len() as usize);
        let w = rand_vec(&mut rng, p.weight_len() as usize);
        let b = rand_vec(&mut rng, k as usize);
        let g = rand_vec(&mut rng, p.y_len() as usize);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; p.y_len() as usize];
            cpu::conv2d_forward(&mut y, x, w, Some(b), &p);
            dot(&y, &g)
        };
        let mut dx = vec![0.0; x.len()];
        cpu::conv2d_backward_data(&mut dx, &g, &w, &p);
        check(&format!("conv2d dx {i}"), seed, &x, &dx, |x| {
            loss(x, &w, &b)
        });
        let mut dw = vec![0.0; w.len()];
        cpu::conv2d_backward_weight(&mut dw, &x, &g, &p);
        check(&format!("conv2d dweight {i}"), seed, &w, &dw, |w| {
            loss(&x, w, &b)
        });
        let mut db = vec![0.0; b.len()];
        cpu::conv2d_backward_bias(&mut db, &g, &p);
        check(&format!("conv2d dbias {i}"), seed, &b, &db, |b| {
            loss(&x, &w, b)
        });
    }
}
