//! Central finite differences and the comparison used by every reference check.

/// Finite differences in f32 are coarse: the forward's outputs are rounded to f32, so
/// L = sum(out * g) carries an absolute error near 1e-7 * sum|out * g|, divided by 2 eps.
/// With eps = 1e-2 on inputs of order 1 that is a few 1e-4; the truncation error of smooth
/// ops is eps^2-small. Any real formula error (a missing term, a wrong index) is O(1).
pub const EPS: f32 = 1e-2;
pub const ATOL: f64 = 2e-3;
pub const RTOL: f64 = 1e-2;

pub use crate::support::seed;

pub fn rand_vec(rng: &mut fastrand::Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

/// sum(out * g) in f64.
pub fn dot(out: &[f32], g: &[f32]) -> f64 {
    out.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Compares `analytic` (the gradient of `loss` at `x`) with central differences, on every
/// element of x (the shapes are small). `loss` evaluates the forward at a perturbed x.
pub fn check(what: &str, seed: u64, x: &[f32], analytic: &[f32], loss: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut xp = x.to_vec();
    let mut worst = 0f64;
    for i in 0..x.len() {
        xp[i] = x[i] + EPS;
        let up = loss(&xp);
        xp[i] = x[i] - EPS;
        let down = loss(&xp);
        xp[i] = x[i];
        let numeric = (up - down) / (2.0 * EPS as f64);
        let a = analytic[i] as f64;
        let err = (numeric - a).abs();
        assert!(
            err <= ATOL + RTOL * a.abs(),
            "{what}: element {i}: analytic {a}, finite difference {numeric} (|diff| {err:.2e}); \
             replay with DENSENET_SEED={seed}"
        );
        worst = worst.max(err / a.abs().max(ATOL / RTOL));
    }
    println!(
        "fd {what}: max rel err {worst:.2e} over {} elements",
        x.len()
    );
}
