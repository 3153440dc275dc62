use crate::fd::{self, check, dot, rand_vec};
use densenet_wgpu::ops::batchnorm::BatchNormParams;
use densenet_wgpu::reference as cpu;

/// The training-mode loss: the statistics are recomputed from the (perturbed) x, so the
/// finite differences see the gradient through the mean and the variance too.
fn loss(x: &[f32], gamma: &[f32], beta: &[f32], g: &[f32], p: &BatchNormParams) -> f64 {
    let stats = p.stat_len() as usize;
    let (mut mean, mut var) = (vec![0.0; stats], vec![0.0; stats]);
    cpu::batchnorm_stats(&mut mean, &mut var, x, p);
    let mut y = vec![0.0; g.len()];
    cpu::batchnorm_forward(&mut y, x, &mean, &var, gamma, beta, p);
    dot(&y, g)
}

/// With the fused ReLU, finite differences are wrong where a pre-activation sits within a
/// perturbation of 0: moves each channel's beta into the middle of the widest gap between
/// its pre-activations, so every one of them stays clear of the kink.
fn keep_off_the_kink(
    beta: &mut [f32],
    x: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    p: &BatchNormParams,
) {
    let m = p.m as usize;
    for c in 0..p.c as usize {
        let s = p.stat_offset as usize + c;
        let invstd = 1.0 / (var[s] + p.eps).sqrt();
        let mut z: Vec<f32> = x[p.x_offset as usize + c * m..][..m]
            .iter()
            .map(|&v| (v - mean[s]) * invstd * gamma[c])
            .collect();
        z.sort_by(f32::total_cmp);
        let (lo, hi) = z
            .windows(2)
            .map(|w| (w[0], w[1]))
            .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
            .unwrap_or((z[0] - 1.0, z[0]));
        beta[c] = -(lo + hi) / 2.0;
    }
}

#[test]
fn batchnorm_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    // (input, x channel offset, y channel offset, stat offset): the last case puts x, y and
    // the statistics inside larger buffers, so the gradient outside the op's channels must
    // come out zero as well.
    // The last two fuse the ReLU.
    let shapes = [
        ([2, 3, 3, 3], 0, 0, 0, false),
        ([1, 2, 5, 3], 0, 0, 0, false),
        ([3, 2, 2, 2], 1, 2, 3, false),
        ([2, 3, 3, 3], 0, 0, 0, true),
        ([3, 2, 2, 2], 1, 2, 3, true),
    ];
    for (i, (input, x_chan, y_chan, stat, relu)) in shapes.into_iter().enumerate() {
        let p = BatchNormParams::new(input)
            .unwrap()
            .with_x_channel_offset(x_chan)
            .with_y_channel_offset(y_chan)
            .with_stat_offset(stat)
            .with_relu(relu);
        let m = p.m as usize;
        // A non-zero mean and a non-unit scale, like real activations: x in [2, 5).
        let x: Vec<f32> = rand_vec(&mut rng, p.x_len() as usize + m)
            .iter()
            .map(|v| 3.5 + 1.5 * v)
            .collect();
        let gamma: Vec<f32> = rand_vec(&mut rng, p.c as usize)
            .iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect();
        let mut beta = rand_vec(&mut rng, p.c as usize);
        let stats = p.stat_len() as usize;
        let (mut mean, mut var) = (vec![0.0; stats], vec![0.0; stats]);
        cpu::batchnorm_stats(&mut mean, &mut var, &x, &p);
        if relu {
            keep_off_the_kink(&mut beta, &x, &mean, &var, &gamma, &p);
        }
        // Zero outside the op's channels of y: the loss only sees what the op writes.
        let mut g = vec![0.0; p.y_len() as usize + m];
        g[p.y_offset as usize..][..p.len() as usize]
            .copy_from_slice(&rand_vec(&mut rng, p.len() as usize));

        let mut dx = vec![0.0; x.len()];
        let mut dgamma = vec![0.0; gamma.len()];
        let mut dbeta = vec![0.0; beta.len()];
        cpu::batchnorm_backward(
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            &g,
            &x,
            &mean,
            &var,
            &gamma,
            &beta,
            &p,
        );
        check(&format!("batchnorm dx {i}"), seed, &x, &dx, |x| {
            loss(x, &gamma, &beta, &g, &p)
        });
        check(
            &format!("batchnorm dgamma {i}"),
            seed,
            &gamma,
            &dgamma,
            |gm| loss(&x, gm, &beta, &g, &p),
        );
        check(&format!("batchnorm dbeta {i}"), seed, &beta, &dbeta, |b| {
            loss(&x, &gamma, b, &g, &p)
        });
    }
}

/// The statistics and the running update are not gradients, so they are checked against
/// numbers worked out by hand (PyTorch gives the same for BatchNorm2d(2) in training mode
/// on this input with fresh running statistics 0 and 1).
#[test]
fn batchnorm_stats_and_running_update_by_hand() {
    // N=2, C=2, H=1, W=2, channel-major: channel 0 is [1, 2, 3, 4], channel 1 [0, 0, 2, 6];
    // stored at channel 1 of a 3-channel buffer and at stat channel 2 of 4.
    let p = BatchNormParams::new([2, 2, 1, 2])
        .unwrap()
        .with_x_channel_offset(1)
        .with_stat_offset(2);
    let x = [9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 2.0, 6.0];
    let (mut mean, mut var) = (vec![f32::NAN; 4], vec![f32::NAN; 4]);
    cpu::batchnorm_stats(&mut mean, &mut var, &x, &p);
    assert!(mean[..2].iter().chain(&var[..2]).all(|v| v.is_nan()));
    assert_eq!(&mean[2..], &[2.5, 2.0]);
    assert_eq!(&var[2..], &[1.25, 6.0]);
    let (mut rm, mut rv) = (vec![7.0, 7.0, 0.0, 0.0], vec![7.0, 7.0, 1.0, 1.0]);
    cpu::batchnorm_update_running(&mut rm, &mut rv, &mean, &var, &p);
    // unbiased variances: 1.25 * 4/3 = 5/3 and 6 * 4/3 = 8
    let want_rv = [0.9 + 0.1 * 5.0 / 3.0, 0.9 + 0.1 * 8.0];
    assert_eq!(&rm, &[7.0, 7.0, 0.25, 0.2]);
    assert_eq!(&rv[..2], &[7.0, 7.0]);
    for (got, want) in rv[2..].iter().zip(want_rv) {
        assert!(
            (*got as f64 - want).abs() < 1e-6,
            "running_var {got} vs {want}"
        );
    }
}
