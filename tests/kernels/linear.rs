//! linear on the GPU against the reference.

use crate::support::harness::{per_act, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::ops::linear::{self, LinearParams};
use densenet_wgpu::reference as cpu;

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "linear::linear_forward_matches_reference",
            linear_forward_matches_reference,
        ),
        per_act(
            "linear::linear_backward_matches_reference",
            linear_backward_matches_reference,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

const CASES: [(u32, u32, u32, bool); 4] = [
    (3, 13, 10, true),
    (1, 7, 3, false),
    (5, 248, 10, true),
    (70, 33, 17, true),
];

fn linear_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, &(n, fi, fo, bias)) in CASES.iter().enumerate() {
        let p = LinearParams::new(n, fi, fo, bias).unwrap();
        let (x, w, b) = (
            as_act(dtype, rng.vec(p.x_len())),
            rng.vec(p.weight_len()),
            rng.vec(fo as u64),
        );
        let (xb, wb, bb) = (up_act(dtype, &x), up(&w), up(&b));
        let yb = poisoned_act(dtype, p.y_len());
        let bias_view = bias.then(|| bb.view());
        run(linear::linear_forward(k(), &p, xb.view(), wb.view(), bias_view, yb.view()).unwrap());
        let mut want = vec![0.0; p.y_len() as usize];
        cpu::linear_forward(&mut want, &x, &w, bias.then_some(&b[..]), &p);
        check(
            &format!("linear_forward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&yb),
            &want,
            tol_for(dtype, FWD),
        );
    }
}

fn linear_backward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, &(n, fi, fo, _)) in CASES.iter().enumerate() {
        let p = LinearParams::new(n, fi, fo, true).unwrap();
        let (x, w, dy) = (
            as_act(dtype, rng.vec(p.x_len())),
            rng.vec(p.weight_len()),
            as_act(dtype, rng.vec(p.y_len())),
        );
        let (dx0, dw0, db0) = (
            as_act(dtype, rng.vec(p.x_len())),
            rng.vec(p.weight_len()),
            rng.vec(fo as u64),
        );
        let (xb, wb, dyb) = (up_act(dtype, &x), up(&w), up_act(dtype, &dy));
        let (dxb, dwb, dbb) = (up_act(dtype, &dx0), up(&dw0), up(&db0));
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
            &format!("linear_backward_data[{dtype}] case {i}"),
            rng.seed,
            &read_act(&dxb),
            &dx,
            tol_for(dtype, GRAD),
        );
        check(
            &format!("linear_backward_weight[{dtype}] case {i}"),
            rng.seed,
            &read(&dwb),
            &dw,
            GRAD,
        );
        check(
            &format!("linear_backward_bias[{dtype}] case {i}"),
            rng.seed,
            &read(&dbb),
            &db,
            GRAD,
        );
    }
}
