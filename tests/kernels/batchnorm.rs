//! batchnorm on the GPU against the CPU reference: every entry point and both forward
//! modes, uneven shapes, channel offsets on x and y, statistics at a channel offset of a
//! larger stats array (as inside a dense block), NaN-poisoned outputs, and accumulation onto
//! non-zero gradients. Inputs have a non-zero mean and a non-unit scale, like activations.

use crate::support::harness::{case, per_act, per_config, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::ops::batchnorm::{self, BatchNormParams};
use densenet_wgpu::reference as cpu;
use densenet_wgpu::{GpuBuffer, Kernels};

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "batchnorm::batchnorm_stats_matches_reference",
            batchnorm_stats_matches_reference,
        ),
        vec![
            case(
                "batchnorm::batchnorm_stats_survive_a_large_mean",
                batchnorm_stats_survive_a_large_mean,
            ),
            case(
                "batchnorm::batchnorm_update_running_matches_reference",
                batchnorm_update_running_matches_reference,
            ),
        ],
        per_act(
            "batchnorm::batchnorm_forward_matches_reference",
            batchnorm_forward_matches_reference,
        ),
        vec![
            case(
                "batchnorm::batchnorm_forward_train_matches_reference",
                batchnorm_forward_train_matches_reference,
            ),
            case(
                "batchnorm::batchnorm_forward_eval_matches_reference",
                batchnorm_forward_eval_matches_reference,
            ),
        ],
        per_config(
            "batchnorm",
            "batchnorm::batchnorm_backward_matches_reference",
            batchnorm_backward_matches_reference,
        ),
        per_config(
            "batchnorm",
            "batchnorm::batchnorm_stats_update_matches_reference",
            batchnorm_stats_update_matches_reference,
        ),
        vec![
            case(
                "batchnorm::batchnorm_rejects_mismatched_buffers",
                batchnorm_rejects_mismatched_buffers,
            ),
            case(
                "batchnorm::batchnorm_affine_matches_reference",
                batchnorm_affine_matches_reference,
            ),
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

struct Shape {
    input: [u32; 4],
    /// Channels before x in its buffer, before y in its buffer, and before this op's
    /// statistics in the stats arrays.
    x_chan: u32,
    y_chan: u32,
    stat_chan: u32,
    eps: f32,
    momentum: f32,
    /// The fused ReLU (BN -> ReLU as in every DenseNet layer).
    relu: bool,
}

fn shapes() -> Vec<Shape> {
    let c = |input, x_chan, y_chan, stat_chan, eps, momentum, relu| Shape {
        input,
        x_chan,
        y_chan,
        stat_chan,
        eps,
        momentum,
        relu,
    };
    vec![
        c([3, 13, 7, 7], 0, 0, 0, 1e-5, 0.1, false),
        c([1, 13, 9, 5], 2, 3, 5, 1e-5, 0.1, true),
        c([3, 5, 9, 5], 4, 0, 7, 1e-3, 0.3, false),
        // M = 494: more than one value per invocation of the 256-wide reductions.
        c([2, 3, 19, 13], 1, 2, 1, 1e-5, 0.1, true),
        c([1, 1, 7, 7], 0, 1, 12, 1e-2, 1.0, false),
        c([3, 13, 7, 7], 0, 0, 0, 1e-5, 0.1, true),
        // M = 8712: several chunks per channel in the split implementation.
        c([8, 5, 33, 33], 2, 1, 3, 1e-5, 0.1, true),
    ]
}

/// Buffers sized for the case's offsets, with random values past the tensor too, so that
/// reads out of range would show. x is in [2, 5): a non-zero mean and a non-unit scale.
struct Setup {
    p: BatchNormParams,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    y_total: u64,
    stat_total: u64,
}

fn setup(c: &Shape, rng: &mut Rand) -> Setup {
    setup_as(c, rng, DType::F32)
}

/// [`setup`] with x as a `dtype` buffer holds it (the reference sees the same values).
fn setup_as(c: &Shape, rng: &mut Rand, dtype: DType) -> Setup {
    let p = BatchNormParams::new(c.input)
        .unwrap()
        .with_x_channel_offset(c.x_chan)
        .with_y_channel_offset(c.y_chan)
        .with_stat_offset(c.stat_chan)
        .with_eps(c.eps)
        .with_momentum(c.momentum)
        .with_relu(c.relu);
    Setup {
        x: as_act(dtype, rng.range(p.x_len() + 7, 2.0, 5.0)),
        gamma: rng.range(p.c as u64, 0.5, 1.5),
        beta: rng.vec(p.c as u64),
        y_total: p.y_len() + 5,
        stat_total: p.stat_len() + 3,
        p,
    }
}

impl Setup {
    /// The reference's batch statistics of x (outside the op's channels: NaN).
    fn stats(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.stat_total as usize;
        let (mut mean, mut var) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        cpu::batchnorm_stats(&mut mean, &mut var, &self.x, &self.p);
        (mean, var)
    }

    /// Running statistics as after some training: mean near the data's, var positive.
    fn running(&self, rng: &mut Rand) -> (Vec<f32>, Vec<f32>) {
        (
            rng.range(self.stat_total, 2.0, 5.0),
            rng.range(self.stat_total, 0.2, 2.0),
        )
    }

    fn y_range(&self) -> (usize, usize) {
        (self.p.y_offset as usize, self.p.y_len() as usize)
    }

    fn stat_range(&self) -> (usize, usize) {
        (self.p.stat_offset as usize, self.p.stat_len() as usize)
    }
}

/// Compares `got[lo..hi]` with the reference and checks that nothing else was written.
fn check_range(
    what: &str,
    seed: u64,
    got: &[f32],
    want: &[f32],
    (lo, hi): (usize, usize),
    tol: (f64, f64),
) -> f64 {
    let worst = check(what, seed, &got[lo..hi], &want[lo..hi], tol);
    assert!(
        got[..lo].iter().chain(&got[hi..]).all(|v| v.is_nan()),
        "{what} wrote outside its range [{lo}, {hi}) (seed {seed})"
    );
    worst
}

fn batchnorm_stats_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup_as(c, &mut rng, dtype);
        let x = up_act(dtype, &s.x);
        let (mean, var) = (poisoned(s.stat_total), poisoned(s.stat_total));
        run(batchnorm::batchnorm_stats(k(), &s.p, x.view(), mean.view(), var.view()).unwrap());
        let (want_mean, want_var) = s.stats();
        let what = format!("batchnorm_stats[{dtype}] case {i}");
        let r = s.stat_range();
        check_range(
            &format!("{what} mean"),
            rng.seed,
            &read(&mean),
            &want_mean,
            r,
            FWD,
        );
        check_range(
            &format!("{what} var"),
            rng.seed,
            &read(&var),
            &want_var,
            r,
            FWD,
        );
    }
}

/// Data whose mean is large next to its spread: E[x^2] - E[x]^2 in f32 loses the variance
/// there (cancellation), the two-pass form does not.
fn batchnorm_stats_survive_a_large_mean() {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let mut s = setup(c, &mut rng);
        s.x = rng.range(s.x.len() as u64, 20.0, 21.0);
        let (x, mean, var) = (up(&s.x), poisoned(s.stat_total), poisoned(s.stat_total));
        run(batchnorm::batchnorm_stats(k(), &s.p, x.view(), mean.view(), var.view()).unwrap());
        let (want_mean, want_var) = s.stats();
        let what = format!("batchnorm_stats large mean case {i}");
        let r = s.stat_range();
        check_range(
            &format!("{what} mean"),
            rng.seed,
            &read(&mean),
            &want_mean,
            r,
            FWD,
        );
        check_range(
            &format!("{what} var"),
            rng.seed,
            &read(&var),
            &want_var,
            r,
            FWD,
        );
    }
}

fn batchnorm_update_running_matches_reference() {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(c, &mut rng);
        let (mean, var) = s.stats();
        let (rm0, rv0) = s.running(&mut rng);
        let (mb, vb, rm, rv) = (up(&mean), up(&var), up(&rm0), up(&rv0));
        let launch = batchnorm::batchnorm_update_running(
            k(),
            &s.p,
            mb.view(),
            vb.view(),
            rm.view(),
            rv.view(),
        );
        run(launch.unwrap());
        let (mut want_rm, mut want_rv) = (rm0.clone(), rv0.clone());
        cpu::batchnorm_update_running(&mut want_rm, &mut want_rv, &mean, &var, &s.p);
        // Whole arrays: the entries of other channels must keep their values.
        let what = format!("batchnorm_update_running case {i}");
        check(
            &format!("{what} running_mean"),
            rng.seed,
            &read(&rm),
            &want_rm,
            FWD,
        );
        check(
            &format!("{what} running_var"),
            rng.seed,
            &read(&rv),
            &want_rv,
            FWD,
        );
    }
}

fn batchnorm_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup_as(c, &mut rng, dtype);
        let (mean, var) = s.stats();
        let (x, mb, vb) = (up_act(dtype, &s.x), up(&mean), up(&var));
        let (g, b, y) = (up(&s.gamma), up(&s.beta), poisoned_act(dtype, s.y_total));
        let launch = batchnorm::batchnorm_forward(
            k(),
            &s.p,
            x.view(),
            mb.view(),
            vb.view(),
            g.view(),
            b.view(),
            y.view(),
        );
        run(launch.unwrap());
        let mut want = vec![f32::NAN; s.y_total as usize];
        cpu::batchnorm_forward(&mut want, &s.x, &mean, &var, &s.gamma, &s.beta, &s.p);
        check_range(
            &format!("batchnorm_forward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&y),
            &want,
            s.y_range(),
            tol_for(dtype, FWD),
        );
    }
}

/// stats + update_running + forward in one submission, against the reference doing the same.
fn batchnorm_forward_train_matches_reference() {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(c, &mut rng);
        let (rm0, rv0) = s.running(&mut rng);
        let (x, g, b) = (up(&s.x), up(&s.gamma), up(&s.beta));
        let (mean, var) = (poisoned(s.stat_total), poisoned(s.stat_total));
        let (rm, rv, y) = (up(&rm0), up(&rv0), poisoned(s.y_total));
        let launch = batchnorm::batchnorm_forward_train(
            k(),
            &s.p,
            x.view(),
            mean.view(),
            var.view(),
            rm.view(),
            rv.view(),
            g.view(),
            b.view(),
            y.view(),
        );
        let launch = launch.unwrap();
        assert_eq!(
            launch.iter().map(|d| d.name()).collect::<Vec<_>>(),
            [
                "batchnorm_stats",
                "batchnorm_update_running",
                "batchnorm_forward"
            ]
        );
        run(launch);
        let (want_mean, want_var) = s.stats();
        let (mut want_rm, mut want_rv) = (rm0.clone(), rv0.clone());
        cpu::batchnorm_update_running(&mut want_rm, &mut want_rv, &want_mean, &want_var, &s.p);
        let mut want_y = vec![f32::NAN; s.y_total as usize];
        cpu::batchnorm_forward(
            &mut want_y,
            &s.x,
            &want_mean,
            &want_var,
            &s.gamma,
            &s.beta,
            &s.p,
        );
        let what = format!("batchnorm_forward_train case {i}");
        let (seed, r) = (rng.seed, s.stat_range());
        check_range(
            &format!("{what} mean"),
            seed,
            &read(&mean),
            &want_mean,
            r,
            FWD,
        );
        check_range(&format!("{what} var"), seed, &read(&var), &want_var, r, FWD);
        check(
            &format!("{what} running_mean"),
            seed,
            &read(&rm),
            &want_rm,
            FWD,
        );
        check(
            &format!("{what} running_var"),
            seed,
            &read(&rv),
            &want_rv,
            FWD,
        );
        check_range(
            &format!("{what} y"),
            seed,
            &read(&y),
            &want_y,
            s.y_range(),
            FWD,
        );
    }
}

/// Evaluation: normalized with the running statistics, which are left as they were.
fn batchnorm_forward_eval_matches_reference() {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(c, &mut rng);
        let (rm0, rv0) = s.running(&mut rng);
        let (x, g, b) = (up(&s.x), up(&s.gamma), up(&s.beta));
        let (rm, rv, y) = (up(&rm0), up(&rv0), poisoned(s.y_total));
        let launch = batchnorm::batchnorm_forward_eval(
            k(),
            &s.p,
            x.view(),
            rm.view(),
            rv.view(),
            g.view(),
            b.view(),
            y.view(),
        );
        run(launch.unwrap());
        let mut want = vec![f32::NAN; s.y_total as usize];
        cpu::batchnorm_forward(&mut want, &s.x, &rm0, &rv0, &s.gamma, &s.beta, &s.p);
        check_range(
            &format!("batchnorm_forward_eval case {i}"),
            rng.seed,
            &read(&y),
            &want,
            s.y_range(),
            FWD,
        );
        assert_eq!(read(&rm), rm0, "eval changed running_mean");
        assert_eq!(read(&rv), rv0, "eval changed running_var");
    }
}

/// A poisoned buffer of the partial sums either implementation may need for `p`.
fn partials(p: &BatchNormParams) -> Option<GpuBuffer> {
    let len = batchnorm::partials_bound(p.c);
    (len > 0).then(|| poisoned(len))
}

fn batchnorm_backward_matches_reference(variant: &'static str, k: &'static Kernels, dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup_as(c, &mut rng, dtype);
        let (mean, var) = s.stats();
        let dy = as_act(dtype, rng.vec(s.y_total));
        // Random starting gradients over the whole buffers: the kernel must add, and only
        // inside the op's channels.
        let dx0 = as_act(dtype, rng.vec(s.x.len() as u64));
        let dg0 = rng.vec(s.p.c as u64);
        let db0 = rng.vec(s.p.c as u64);
        let (x, dyb) = (up_act(dtype, &s.x), up_act(dtype, &dy));
        // gamma and beta lie in one buffer, as a layout's parameters do (the backward binds
        // them as one), beta a few elements after gamma's end; so do their gradients.
        let c = s.p.c as u64;
        let gap = vec![f32::NAN; 3];
        let (mb, vb) = (up(&mean), up(&var));
        let gb = up(&[&s.gamma[..], &gap, &s.beta].concat());
        let (dx, dgb) = (up_act(dtype, &dx0), up(&[&dg0[..], &gap, &db0].concat()));
        let part = partials(&s.p);
        let launch = batchnorm::batchnorm_backward(
            k,
            &s.p,
            x.view(),
            dyb.view(),
            mb.view(),
            vb.view(),
            gb.slice(0, c),
            gb.slice(c + 3, c),
            dx.view(),
            dgb.slice(0, c),
            dgb.slice(c + 3, c),
            part.as_ref().map(|p| p.view()),
        );
        run(launch.unwrap());
        let (mut want_dx, mut want_dg, mut want_db) = (dx0.clone(), dg0.clone(), db0.clone());
        cpu::batchnorm_backward(
            &mut want_dx,
            &mut want_dg,
            &mut want_db,
            &dy,
            &s.x,
            &mean,
            &var,
            &s.gamma,
            &s.beta,
            &s.p,
        );
        let what = format!("batchnorm_backward[{variant},{dtype}] case {i}");
        let tol = tol_for(dtype, GRAD);
        check(
            &format!("{what} dx"),
            rng.seed,
            &read_act(&dx),
            &want_dx,
            tol,
        );
        let got = read(&dgb);
        let c = c as usize;
        check(
            &format!("{what} dgamma"),
            rng.seed,
            &got[..c],
            &want_dg,
            GRAD,
        );
        assert!(
            got[c..c + 3].iter().all(|v| v.is_nan()),
            "the gap is untouched"
        );
        check(
            &format!("{what} dbeta"),
            rng.seed,
            &got[c + 3..],
            &want_db,
            GRAD,
        );
    }
}

/// The training statistics and the running update through the policy's implementation, on
/// ordinary data and on data whose mean is large next to its spread.
fn batchnorm_stats_update_matches_reference(
    variant: &'static str,
    k: &'static Kernels,
    dtype: DType,
) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        for large_mean in [false, true] {
            let mut s = setup_as(c, &mut rng, dtype);
            if large_mean {
                s.x = as_act(dtype, rng.range(s.x.len() as u64, 20.0, 21.0));
            }
            let x = up_act(dtype, &s.x);
            let (mean, var) = (poisoned(s.stat_total), poisoned(s.stat_total));
            let (rm0, rv0) = s.running(&mut rng);
            let (rm, rv) = (up(&rm0), up(&rv0));
            let part = partials(&s.p);
            let part = part.as_ref().map(|p| p.view());
            let (xv, mv, vv) = (x.view(), mean.view(), var.view());
            let launch =
                batchnorm::batchnorm_stats_update(k, &s.p, xv, mv, vv, rm.view(), rv.view(), part);
            run(launch.unwrap());
            let (want_mean, want_var) = s.stats();
            let (mut want_rm, mut want_rv) = (rm0.clone(), rv0.clone());
            cpu::batchnorm_update_running(&mut want_rm, &mut want_rv, &want_mean, &want_var, &s.p);
            let what = format!(
                "batchnorm_stats_update[{variant},{dtype}] case {i} (large mean {large_mean})"
            );
            let r = s.stat_range();
            check_range(
                &format!("{what} mean"),
                rng.seed,
                &read(&mean),
                &want_mean,
                r,
                FWD,
            );
            check_range(
                &format!("{what} var"),
                rng.seed,
                &read(&var),
                &want_var,
                r,
                FWD,
            );
            check(
                &format!("{what} running_mean"),
                rng.seed,
                &read(&rm),
                &want_rm,
                FWD,
            );
            check(
                &format!("{what} running_var"),
                rng.seed,
                &read(&rv),
                &want_rv,
                FWD,
            );
        }
    }
}

fn batchnorm_rejects_mismatched_buffers() {
    // Statistics at channel 2 of the stats arrays: they must hold 2 + 3 entries.
    let p = BatchNormParams::new([2, 3, 4, 4])
        .unwrap()
        .with_stat_offset(2);
    let n = p.len();
    let (x, y, dx) = (poisoned(n), poisoned(n), poisoned(n));
    let (gamma, beta, short_gamma) = (poisoned(3), poisoned(3), poisoned(2));
    let (stats, short_stats) = (poisoned(5), poisoned(3));
    let refused = |r: densenet_wgpu::Result<Vec<_>>, name: &str| {
        let err = r.err().expect("a short buffer must be refused").to_string();
        assert!(
            err.starts_with(&format!("batchnorm: {name} has ")),
            "error should name {name}: {err}"
        );
    };
    refused(
        batchnorm::batchnorm_forward(
            k(),
            &p,
            x.view(),
            stats.view(),
            stats.view(),
            short_gamma.view(),
            beta.view(),
            y.view(),
        ),
        "gamma",
    );
    refused(
        batchnorm::batchnorm_stats(k(), &p, x.view(), stats.view(), short_stats.view()),
        "var",
    );
    refused(
        batchnorm::batchnorm_update_running(
            k(),
            &p,
            stats.view(),
            stats.view(),
            stats.view(),
            short_stats.view(),
        ),
        "running_var",
    );
    refused(
        batchnorm::batchnorm_backward(
            k(),
            &p,
            x.view(),
            y.view(),
            stats.view(),
            stats.view(),
            gamma.view(),
            gamma.view(),
            dx.view(),
            gamma.view(),
            short_gamma.view(),
            None,
        ),
        "dbeta",
    );
    // The backward binds gamma and beta as one buffer: two buffers are refused, by name.
    let (dgamma, dbeta) = (poisoned(3), poisoned(3));
    let err = batchnorm::batchnorm_backward(
        k(),
        &p,
        x.view(),
        y.view(),
        stats.view(),
        stats.view(),
        gamma.view(),
        beta.view(),
        dx.view(),
        dgamma.view(),
        dbeta.view(),
        None,
    )
    .err()
    .expect("gamma and beta in two buffers must be refused")
    .to_string();
    assert!(
        err.contains("gamma and beta must be ranges of one buffer") && !err.contains('\n'),
        "{err}"
    );
    // x placed at channel 1 of its buffer no longer fits in a buffer of C*M.
    refused(
        batchnorm::batchnorm_forward_eval(
            k(),
            &p.with_x_channel_offset(1),
            x.view(),
            stats.view(),
            stats.view(),
            gamma.view(),
            beta.view(),
            y.view(),
        ),
        "x",
    );

    assert!(BatchNormParams::new([0, 3, 4, 4]).is_err());
    // One value per channel: no batch statistics (PyTorch refuses too), evaluation is fine.
    let one = BatchNormParams::new([1, 3, 1, 1]).unwrap();
    let (x1, s1) = (poisoned(3), poisoned(3));
    let err = batchnorm::batchnorm_stats(k(), &one, x1.view(), s1.view(), s1.view())
        .err()
        .expect("batch statistics of one value must be refused");
    assert!(err.to_string().contains("more than 1 value"), "{err}");
    assert!(batchnorm::batchnorm_forward_eval(
        k(),
        &one,
        x1.view(),
        s1.view(),
        s1.view(),
        gamma.view(),
        beta.view(),
        y.view()
    )
    .is_ok());
    let bad_eps = p.with_eps(0.0);
    let err = batchnorm::batchnorm_forward_eval(
        k(),
        &bad_eps,
        x.view(),
        stats.view(),
        stats.view(),
        gamma.view(),
        beta.view(),
        y.view(),
    )
    .err()
    .expect("eps 0 must be refused");
    assert!(err.to_string().contains("eps"), "{err}");
}

fn batchnorm_affine_matches_reference() {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let s = setup(c, &mut rng);
        let (mean, var) = s.stats();
        let (mb, vb, g, b) = (up(&mean), up(&var), up(&s.gamma), up(&s.beta));
        let out = poisoned(2 * s.p.c as u64 + 3);
        let launch = batchnorm::batchnorm_affine(
            k(),
            &s.p,
            mb.view(),
            vb.view(),
            g.view(),
            b.view(),
            out.view(),
        );
        run(launch.unwrap());
        let mut want = vec![f32::NAN; out.len as usize];
        cpu::batchnorm_affine(&mut want, &mean, &var, &s.gamma, &s.beta, &s.p);
        let n = 2 * s.p.c as usize;
        let got = read(&out);
        check(
            &format!("batchnorm_affine case {i}"),
            rng.seed,
            &got[..n],
            &want[..n],
            FWD,
        );
        assert!(
            got[n..].iter().all(|v| v.is_nan()),
            "wrote past its channels"
        );
    }
}
