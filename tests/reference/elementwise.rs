use crate::fd::{self, check, dot, rand_vec};
use densenet_wgpu::ops::concat::ConcatParams;
use densenet_wgpu::ops::relu::ReluParams;
use densenet_wgpu::reference as cpu;

#[test]
fn relu_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = ReluParams::new(40).with_offsets(3, 5);
    // Keep inputs away from the kink at 0, where the derivative is undefined.
    let x: Vec<f32> = rand_vec(&mut rng, 43)
        .into_iter()
        .map(|v| {
            if v.abs() < 0.1 {
                v + 0.2f32.copysign(v)
            } else {
                v
            }
        })
        .collect();
    let g = rand_vec(&mut rng, 45);
    let forward = |x: &[f32]| {
        let mut y = vec![0.0; 45];
        cpu::relu_forward(&mut y, x, &p);
        y
    };
    let y = forward(&x);
    let mut dx = vec![0.0; 43];
    cpu::relu_backward(&mut dx, &y, &g, &p);
    // The loss only sees y[5..45], i.e. x[3..43]; x[..3] has gradient 0 on both sides.
    check("relu dx", seed, &x, &dx, |x| dot(&forward(x)[5..], &g[5..]));
}

#[test]
fn concat_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = ConcatParams::new([2, 3, 3, 2], 7, 2).unwrap();
    let part = rand_vec(&mut rng, p.count as usize);
    let g = rand_vec(&mut rng, p.total as usize);
    let mut dpart = vec![0.0; part.len()];
    cpu::concat_backward(&mut dpart, &g, &p);
    check("concat dpart", seed, &part, &dpart, |x| {
        let mut whole = vec![0.0; p.total as usize];
        cpu::concat_forward(&mut whole, x, &p);
        dot(&whole, &g)
    });
}
