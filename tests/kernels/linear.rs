//! linear on the GPU against the reference.

use crate::support::*;
use densenet_wgpu::ops::linear::{self, LinearParams};
use densenet_wgpu::reference as cpu;

const CASES: [(u32, u32, u32, bool); 4] = [
    (3, 13, 10, true),
    (1, 7, 3, false),
    (5, 248, 10, true),
    (70, 33, 17, true),
];

#[test]
fn linear_forward_matches_reference() {
    let mut rng = Rand::new();
    for (i, &(n, fi, fo, bias)) in CASES.iter().enumerate() {
        let p = LinearParams::new(n, fi, fo, bias).unwrap();
        let (x, w, b) = (
            rng.vec(p.x_len()),
            rng.vec(p.weight_len()),
            rng.vec(fo as u64),
        );
        let (xb, wb, bb, yb) = (up(&x), up(&w), up(&b), poisoned(p.y_len()));
        let bias_view = bias.then(|| bb.view());
        run(linear::linear_forward(k(), &p, xb.view(), wb.view(), bias_view, yb.view()).unwrap());
        let mut want = vec![0.0; p.y_len() as usize];
        cpu::linear_forward(&mut want, &x, &w, bias.then_some(&b[..]), &p);
        check(
            &format!("linear_forward case {i}"),
            rng.seed,
            &read(&yb),
            &want,
            FWD,
        );
    }
}

#[test]
fn linear_backward_matches_reference() {
    let mut rng = Rand::new();
    for (i, &(n, fi, fo, _)) in CASES.iter().enumerate() {
        let p = LinearParams::new(n, fi, fo, true).unwrap();
        let (x, w, dy) = (
            rng.vec(p.x_len()),
            rng.vec(p.weight_len()),
            rng.vec(p.y_len()),
        );
        let (dx0, dw0, db0) = (
            rng.vec(p.x_len()),
            rng.vec(p.weight_len()),
            rng.vec(fo as u64),
        );
        let (xb, wb, dyb) = (up(&x), up(&w), up(&dy));
        let (dxb, dwb, dbb) = (up(&dx0), up(&dw0), up(&db0));
        let mut launches =
            linear::linear_backward_data(k(), &p, dyb.view(), wb.view(), dxb.view()).unwrap();
        launches.extend(
            linear::linear_backward_weight(k(), &p, xb.view(), dyb.view(), dwb.view()).unwrap(),
        );
        launches.extend(linear::linear_backward_bias(k(), &p, dyb.view(), dbb.view()).unwrap());
        run(launches);
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        cpu::linear_backward_data(&mut dx, &dy, &w, &p);
        cpu::linear_backward_weight(&mut dw, &x, &dy, &p);
        cpu::linear_backward_bias(&mut db, &dy, &p);
        check(
            &format!("linear_backward_data case {i}"),
            rng.seed,
            &read(&dxb),
            &dx,
            GRAD,
        );
        check(
            &format!("linear_backward_weight case {i}"),
            rng.seed,
            &read(&dwb),
            &dw,
            GRAD,
        );
        check(
            &format!("linear_backward_bias case {i}"),
            rng.seed,
            &read(&dbb),
            &db,
            GRAD,
        );
    }
}
