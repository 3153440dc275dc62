//! The reference pooling backward functions against finite differences of their forwards.

use crate::fd::{self, check, dot, rand_vec};
use densenet_wgpu::ops::global_avgpool::GlobalAvgPoolParams;
use densenet_wgpu::ops::maxpool::Pool2dParams;
use densenet_wgpu::reference as cpu;

/// (input (N, C, H, W), kernel, stride, padding).
type Shape = ([u32; 4], (u32, u32), (u32, u32), (u32, u32));

/// Overlapping padded windows, the transition with a dropped last row, a rectangular kernel
/// with gaps between windows.
const SHAPES: [Shape; 4] = [
    ([2, 3, 7, 7], (3, 3), (2, 2), (1, 1)),
    ([1, 2, 5, 4], (2, 2), (2, 2), (0, 0)),
    ([2, 2, 7, 5], (3, 2), (1, 2), (1, 0)),
    ([1, 3, 8, 7], (2, 3), (3, 1), (1, 1)),
];

const SPACING: f32 = 0.05;
const _: () = assert!(SPACING > 4.0 * fd::EPS);

/// Distinct values spaced SPACING apart (well above 2 * fd::EPS), shuffled: no perturbation
/// of one element by +-EPS can change any window's maximum, so the max is differentiable
/// at x and central differences are exact up to rounding.
fn distinct(rng: &mut fastrand::Rng, len: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..len)
        .map(|i| (i as f32 - len as f32 / 2.0) * SPACING)
        .collect();
    rng.shuffle(&mut x);
    x
}

#[test]
fn maxpool_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for (i, (input, kernel, stride, pad)) in SHAPES.into_iter().enumerate() {
        let p = Pool2dParams::new(input, kernel, stride, pad).unwrap();
        let x = distinct(&mut rng, p.x_len() as usize);
        let g = rand_vec(&mut rng, p.y_len() as usize);
        let forward = |x: &[f32], argmax: &mut [u32]| {
            let mut y = vec![0.0; p.y_len() as usize];
            cpu::maxpool_forward(&mut y, argmax, x, &p);
            y
        };
        let mut argmax = vec![0; p.y_len() as usize];
        forward(&x, &mut argmax);
        let mut dx = vec![0.0; x.len()];
        cpu::maxpool_backward(&mut dx, &g, &argmax, &p);
        check(&format!("maxpool dx {i}"), seed, &x, &dx, |x| {
            let mut scratch = vec![0; p.y_len() as usize];
            dot(&forward(x, &mut scratch), &g)
        });
    }
}

/// The upstream gradient times the divisor, so the averaged gradient is O(1) and a wrong
/// divisor shows above fd::ATOL.
fn scaled(g: Vec<f32>, divisor: u32) -> Vec<f32> {
    g.into_iter().map(|v| v * divisor as f32).collect()
}

#[test]
fn avgpool_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for (i, (input, kernel, stride, pad)) in SHAPES.into_iter().enumerate() {
        let p = Pool2dParams::new(input, kernel, stride, pad).unwrap();
        let x = rand_vec(&mut rng, p.x_len() as usize);
        let g = scaled(rand_vec(&mut rng, p.y_len() as usize), kernel.0 * kernel.1);
        let mut dx = vec![0.0; x.len()];
        cpu::avgpool_backward(&mut dx, &g, &p);
        check(&format!("avgpool dx {i}"), seed, &x, &dx, |x| {
            let mut y = vec![0.0; p.y_len() as usize];
            cpu::avgpool_forward(&mut y, x, &p);
            dot(&y, &g)
        });
    }
}

#[test]
fn global_avgpool_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for (i, input) in [[2, 3, 5, 4], [3, 2, 1, 1], [1, 4, 3, 3]]
        .into_iter()
        .enumerate()
    {
        let p = GlobalAvgPoolParams::new(input).unwrap();
        let x = rand_vec(&mut rng, p.x_len() as usize);
        let g = scaled(rand_vec(&mut rng, p.y_len() as usize), p.h * p.w);
        let mut dx = vec![0.0; x.len()];
        cpu::global_avgpool_backward(&mut dx, &g, &p);
        check(&format!("global_avgpool dx {i}"), seed, &x, &dx, |x| {
            let mut y = vec![0.0; p.y_len() as usize];
            cpu::global_avgpool_forward(&mut y, x, &p);
            dot(&y, &g)
        });
    }
}
