//! relu and concat on the GPU against the reference.

use crate::support::harness::{case, per_act, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::ops::concat::{self, ConcatParams};
use densenet_wgpu::ops::relu::{self, ReluParams};
use densenet_wgpu::reference as cpu;

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "elementwise::relu_forward_matches_reference",
            relu_forward_matches_reference,
        ),
        per_act(
            "elementwise::relu_backward_matches_reference",
            relu_backward_matches_reference,
        ),
        per_act(
            "elementwise::concat_forward_matches_reference",
            concat_forward_matches_reference,
        ),
        per_act(
            "elementwise::concat_backward_matches_reference",
            concat_backward_matches_reference,
        ),
        vec![
            case(
                "elementwise::concat_rejects_out_of_range_channels",
                concat_rejects_out_of_range_channels,
            ),
            case(
                "elementwise::relu_covers_a_folded_grid",
                relu_covers_a_folded_grid,
            ),
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// (count, x_offset, y_offset): odd sizes, offsets into larger buffers, more than one
/// workgroup, and one launch over 65,535 workgroups * 256 would need folding at scale.
const RELU_CASES: [(u32, u32, u32); 4] = [
    (1, 0, 0),
    (3 * 13 * 7 * 7, 13, 2),
    (1000, 5, 0),
    (70001, 0, 9),
];

fn relu_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, &(count, xo, yo)) in RELU_CASES.iter().enumerate() {
        let p = ReluParams::new(count).with_offsets(xo, yo);
        let x = as_act(dtype, rng.vec((xo + count + 3) as u64));
        let y_len = (yo + count + 4) as u64;
        let (xb, yb) = (up_act(dtype, &x), poisoned_act(dtype, y_len));
        run(relu::relu_forward(k(), &p, xb.view(), yb.view()).unwrap());
        let mut want = vec![f32::NAN; y_len as usize];
        cpu::relu_forward(&mut want, &x, &p);
        let got = read_act(&yb);
        let r = yo as usize..(yo + count) as usize;
        check(
            &format!("relu_forward[{dtype}] case {i}"),
            rng.seed,
            &got[r.clone()],
            &want[r.clone()],
            tol_for(dtype, FWD),
        );
        assert!(got[..r.start]
            .iter()
            .chain(&got[r.end..])
            .all(|v| v.is_nan()));
    }
}

fn relu_backward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, &(count, xo, yo)) in RELU_CASES.iter().enumerate() {
        let p = ReluParams::new(count).with_offsets(xo, yo);
        let y: Vec<f32> = as_act(dtype, rng.vec((yo + count) as u64))
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let dy = as_act(dtype, rng.vec((yo + count) as u64));
        let dx0 = as_act(dtype, rng.vec((xo + count + 2) as u64));
        let (yb, dyb, dxb) = (up_act(dtype, &y), up_act(dtype, &dy), up_act(dtype, &dx0));
        run(relu::relu_backward(k(), &p, yb.view(), dyb.view(), dxb.view()).unwrap());
        let mut want = dx0.clone();
        cpu::relu_backward(&mut want, &y, &dy, &p);
        check(
            &format!("relu_backward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&dxb),
            &want,
            tol_for(dtype, GRAD),
        );
    }
}

const CONCAT_CASES: [([u32; 4], u32, u32); 3] = [
    ([3, 10, 8, 8], 23, 13),
    ([1, 13, 7, 7], 13, 0),
    ([3, 2, 9, 5], 7, 4),
];

fn concat_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, &(part, total, c0)) in CONCAT_CASES.iter().enumerate() {
        let p = ConcatParams::new(part, total, c0).unwrap();
        let x = as_act(dtype, rng.vec(p.count as u64));
        let (xb, wb) = (up_act(dtype, &x), poisoned_act(dtype, p.total as u64));
        run(concat::concat_forward(k(), &p, xb.view(), wb.view()).unwrap());
        let mut want = vec![f32::NAN; p.total as usize];
        cpu::concat_forward(&mut want, &x, &p);
        let got = read_act(&wb);
        let r = p.offset as usize..(p.offset + p.count) as usize;
        check(
            &format!("concat_forward[{dtype}] case {i}"),
            rng.seed,
            &got[r.clone()],
            &want[r.clone()],
            tol_for(dtype, FWD),
        );
        assert!(got[..r.start]
            .iter()
            .chain(&got[r.end..])
            .all(|v| v.is_nan()));
    }
}

fn concat_backward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, &(part, total, c0)) in CONCAT_CASES.iter().enumerate() {
        let p = ConcatParams::new(part, total, c0).unwrap();
        let dwhole = as_act(dtype, rng.vec(p.total as u64));
        let dpart0 = as_act(dtype, rng.vec(p.count as u64));
        let (dwb, dpb) = (up_act(dtype, &dwhole), up_act(dtype, &dpart0));
        run(concat::concat_backward(k(), &p, dwb.view(), dpb.view()).unwrap());
        let mut want = dpart0.clone();
        cpu::concat_backward(&mut want, &dwhole, &p);
        check(
            &format!("concat_backward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&dpb),
            &want,
            tol_for(dtype, GRAD),
        );
    }
}

fn concat_rejects_out_of_range_channels() {
    assert!(ConcatParams::new([2, 5, 4, 4], 8, 4).is_err());
    let p = ReluParams::new(100).with_offsets(10, 0);
    let (x, y) = (poisoned(100), poisoned(100));
    let err = relu::relu_forward(k(), &p, x.view(), y.view())
        .err()
        .unwrap();
    assert!(err.to_string().contains("x has 100"), "{err}");
}

/// More than 65,535 workgroups: the grid is folded into 2-D and every invocation must
/// still find its element.
fn relu_covers_a_folded_grid() {
    let mut rng = Rand::new();
    let count = 65_535 * 256 + 1000;
    let p = ReluParams::new(count);
    let x = rng.vec(count as u64);
    let (xb, yb) = (up(&x), poisoned(count as u64));
    let launch = relu::relu_forward(k(), &p, xb.view(), yb.view()).unwrap();
    assert!(launch[0].workgroups[1] > 1, "{:?}", launch[0].workgroups);
    run(launch);
    let mut want = vec![0.0; count as usize];
    cpu::relu_forward(&mut want, &x, &p);
    check("relu_forward folded", rng.seed, &read(&yb), &want, FWD);
}
