//! Max, average and global average pooling on the GPU against the CPU reference: every
//! entry point, uneven shapes (overlapping windows, padding, rectangular kernels, dropped
//! last rows and columns), channel offsets on both sides, NaN-poisoned outputs, exact
//! argmax, ties and NaN inputs, and accumulation onto non-zero gradients.

use crate::support::harness::{case, per_act, Case};
use crate::support::*;
use densenet_wgpu::gpu::DType;
use densenet_wgpu::ops::avgpool;
use densenet_wgpu::ops::global_avgpool::{self, GlobalAvgPoolParams};
use densenet_wgpu::ops::maxpool::{self, Pool2dParams};
use densenet_wgpu::reference as cpu;

pub fn cases() -> Vec<Case> {
    [
        per_act(
            "pool::maxpool_forward_matches_reference",
            maxpool_forward_matches_reference,
        ),
        per_act(
            "pool::maxpool_forward_ties_pick_the_first_maximum",
            maxpool_forward_ties_pick_the_first_maximum,
        ),
        vec![case(
            "pool::maxpool_forward_propagates_nan_like_pytorch",
            maxpool_forward_propagates_nan_like_pytorch,
        )],
        per_act(
            "pool::maxpool_backward_matches_reference",
            maxpool_backward_matches_reference,
        ),
        per_act(
            "pool::avgpool_forward_matches_reference",
            avgpool_forward_matches_reference,
        ),
        per_act(
            "pool::avgpool_backward_matches_reference",
            avgpool_backward_matches_reference,
        ),
        vec![case(
            "pool::pool_backward_covers_a_large_input",
            pool_backward_covers_a_large_input,
        )],
        per_act(
            "pool::global_avgpool_forward_matches_reference",
            global_avgpool_forward_matches_reference,
        ),
        per_act(
            "pool::global_avgpool_backward_matches_reference",
            global_avgpool_backward_matches_reference,
        ),
        vec![
            case(
                "pool::pool_rejects_mismatched_buffers_and_impossible_shapes",
                pool_rejects_mismatched_buffers_and_impossible_shapes,
            ),
            case(
                "pool::pool_backwards_overwrite_every_element",
                pool_backwards_overwrite_every_element,
            ),
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub(crate) struct Shape {
    pub(crate) input: [u32; 4],
    kernel: (u32, u32),
    stride: (u32, u32),
    pad: (u32, u32),
    /// Channels before x in its buffer and before y in its buffer.
    pub(crate) x_chan: u32,
    y_chan: u32,
}

pub(crate) fn shapes() -> Vec<Shape> {
    let c = |input, kernel, stride, pad, x_chan, y_chan| Shape {
        input,
        kernel,
        stride,
        pad,
        x_chan,
        y_chan,
    };
    vec![
        // The DenseNet stem: overlapping windows, padding on every side.
        c([3, 13, 7, 7], (3, 3), (2, 2), (1, 1), 0, 0),
        c([1, 13, 9, 5], (3, 3), (2, 2), (1, 1), 2, 3),
        // The transition; 9x5 drops the last row and column.
        c([3, 13, 7, 7], (2, 2), (2, 2), (0, 0), 1, 2),
        c([1, 13, 9, 5], (2, 2), (2, 2), (0, 0), 0, 1),
        // Rectangular kernel, stride and padding; the last column is dropped.
        c([3, 13, 7, 7], (3, 2), (1, 2), (1, 0), 3, 0),
        c([1, 4, 9, 5], (3, 2), (1, 2), (1, 0), 0, 0),
        // Stride above the kernel: rows no window touches get no gradient.
        c([3, 5, 8, 7], (2, 3), (3, 1), (1, 1), 2, 2),
        // A window as large as the padded input, and a 1x1 input.
        c([2, 3, 5, 4], (5, 4), (1, 1), (0, 0), 1, 0),
        c([3, 2, 1, 1], (1, 1), (1, 1), (0, 0), 0, 1),
    ]
}

pub(crate) fn params(c: &Shape) -> Pool2dParams {
    Pool2dParams::new(c.input, c.kernel, c.stride, c.pad)
        .unwrap()
        .with_x_channel_offset(c.x_chan)
        .with_y_channel_offset(c.y_chan)
}

/// Buffer lengths for x and y: the case's channel offsets in front, a few spare elements
/// behind, so reads or writes outside the tensor would show.
pub(crate) fn totals(p: &Pool2dParams) -> (u64, u64) {
    (
        p.x_offset as u64 + p.x_len() + 7,
        p.y_offset as u64 + p.y_len() + 5,
    )
}

/// Checks the written range of a forward output and that nothing else changed (NaN).
fn check_written(
    what: &str,
    seed: u64,
    got: &[f32],
    want: &[f32],
    range: (usize, u64),
    dtype: DType,
) {
    let (lo, hi) = (range.0, range.0 + range.1 as usize);
    check(what, seed, &got[lo..hi], &want[lo..hi], tol_for(dtype, FWD));
    assert!(
        got[..lo].iter().chain(&got[hi..]).all(|v| v.is_nan()),
        "{what} wrote outside its channel range; replay with DENSENET_SEED={seed}"
    );
}

const UNWRITTEN: u32 = u32::MAX;

/// The argmax must equal the reference's exactly, spare elements (UNWRITTEN) included.
fn check_argmax(what: &str, seed: u64, got: &[u32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: argmax length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: argmax element {i} of {} is {}, reference {}; replay with DENSENET_SEED={seed}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Runs maxpool_forward on the GPU and the reference on `x`; compares y and argmax.
fn maxpool_forward_case(what: &str, seed: u64, p: &Pool2dParams, x: &[f32], dtype: DType) {
    let (_, y_total) = totals(p);
    let arg_total = p.y_len() + 3;
    let (xb, y) = (up_act(dtype, x), poisoned_act(dtype, y_total));
    let arg = up_u32(&vec![UNWRITTEN; arg_total as usize]);
    run(maxpool::maxpool_forward(k(), p, xb.view(), None, y.view(), Some(arg.view())).unwrap());
    let mut want = vec![f32::NAN; y_total as usize];
    let mut want_arg = vec![UNWRITTEN; arg_total as usize];
    cpu::maxpool_forward(&mut want, &mut want_arg, x, p);
    check_argmax(what, seed, &read_u32(&arg), &want_arg);
    let range = (p.y_offset as usize, p.y_len());
    check_written(what, seed, &read_act(&y), &want, range, dtype);
}

fn maxpool_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let x = as_act(dtype, rng.vec(totals(&p).0));
        let what = format!("maxpool_forward[{dtype}] case {i}");
        maxpool_forward_case(&what, rng.seed, &p, &x, dtype);
    }
}

/// Inputs drawn from three values: every window has ties, which go to the first maximum
/// in row-major order; all-equal windows pick their first in-bounds element.
fn maxpool_forward_ties_pick_the_first_maximum(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let x: Vec<f32> = (0..totals(&p).0)
            .map(|_| rng.below(3) as f32 - 1.0)
            .collect();
        let what = format!("maxpool_forward ties[{dtype}] case {i}");
        maxpool_forward_case(&what, rng.seed, &p, &x, dtype);
    }
}

/// A NaN in a window wins (the last NaN's index is kept), as in PyTorch: a NaN is never
/// hidden by the pool. Also -inf everywhere picks the first in-bounds element.
fn maxpool_forward_propagates_nan_like_pytorch() {
    let mut rng = Rand::new();
    let p = Pool2dParams::new([3, 5, 7, 7], (3, 3), (2, 2), (1, 1)).unwrap();
    let mut x = rng.vec(p.x_len());
    for _ in 0..20 {
        x[rng.below(p.x_len() as u32) as usize] = f32::NAN;
    }
    let plane = (p.h * p.w) as usize;
    x[..plane].fill(f32::NEG_INFINITY);
    let (xb, y) = (up(&x), poisoned(p.y_len()));
    let arg = up_u32(&vec![UNWRITTEN; p.y_len() as usize]);
    run(maxpool::maxpool_forward(k(), &p, xb.view(), None, y.view(), Some(arg.view())).unwrap());
    let mut want = vec![0.0; p.y_len() as usize];
    let mut want_arg = vec![UNWRITTEN; p.y_len() as usize];
    cpu::maxpool_forward(&mut want, &mut want_arg, &x, &p);
    assert!(
        want.iter().any(|v| v.is_nan()),
        "the test needs NaN windows"
    );
    check_argmax("maxpool_forward NaN", rng.seed, &read_u32(&arg), &want_arg);
    for (i, (g, w)) in read(&y).iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "y element {i} is {g}, reference {w}; replay with DENSENET_SEED={}",
            rng.seed
        );
    }
}

fn maxpool_backward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let (x_total, y_total) = totals(&p);
        // A valid argmax from the reference forward.
        let x = as_act(dtype, rng.vec(x_total));
        let mut y = vec![0.0; y_total as usize];
        let mut argmax = vec![0; p.y_len() as usize];
        cpu::maxpool_forward(&mut y, &mut argmax, &x, &p);
        let dy = as_act(dtype, rng.vec(y_total));
        let dx0 = as_act(dtype, rng.vec(x_total));
        let (dyb, arg, dx) = (up_act(dtype, &dy), up_u32(&argmax), up_act(dtype, &dx0));
        run(maxpool::maxpool_backward(k(), &p, dyb.view(), arg.view(), dx.view()).unwrap());
        let mut want = dx0.clone();
        cpu::maxpool_backward(&mut want, &dy, &argmax, &p);
        check(
            &format!("maxpool_backward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&dx),
            &want,
            tol_for(dtype, GRAD),
        );
    }
}

fn avgpool_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let (x_total, y_total) = totals(&p);
        let x = as_act(dtype, rng.vec(x_total));
        let (xb, y) = (up_act(dtype, &x), poisoned_act(dtype, y_total));
        run(avgpool::avgpool_forward(k(), &p, xb.view(), None, y.view()).unwrap());
        let mut want = vec![f32::NAN; y_total as usize];
        cpu::avgpool_forward(&mut want, &x, &p);
        check_written(
            &format!("avgpool_forward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&y),
            &want,
            (p.y_offset as usize, p.y_len()),
            dtype,
        );
    }
}

fn avgpool_backward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c);
        let (x_total, y_total) = totals(&p);
        let dy = as_act(dtype, rng.vec(y_total));
        let dx0 = as_act(dtype, rng.vec(x_total));
        let (dyb, dx) = (up_act(dtype, &dy), up_act(dtype, &dx0));
        run(avgpool::avgpool_backward(k(), &p, dyb.view(), dx.view()).unwrap());
        let mut want = dx0.clone();
        cpu::avgpool_backward(&mut want, &dy, &p);
        check(
            &format!("avgpool_backward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&dx),
            &want,
            tol_for(dtype, GRAD),
        );
    }
}

/// A large input (4.3M elements, 520 workgroups of rows): every row of every plane must be
/// found by its invocation.
fn pool_backward_covers_a_large_input() {
    let mut rng = Rand::new();
    let p = Pool2dParams::new([4, 64, 130, 130], (3, 3), (2, 2), (1, 1)).unwrap();
    assert!(p.x_len() > 65_535 * 64);
    let x = rng.vec(p.x_len());
    let dy = rng.vec(p.y_len());
    let dx0 = rng.vec(p.x_len());
    let mut y = vec![0.0; p.y_len() as usize];
    let mut argmax = vec![0; p.y_len() as usize];
    cpu::maxpool_forward(&mut y, &mut argmax, &x, &p);
    let (dyb, arg, dx_max, dx_avg) = (up(&dy), up_u32(&argmax), up(&dx0), up(&dx0));
    let mut launches =
        maxpool::maxpool_backward(k(), &p, dyb.view(), arg.view(), dx_max.view()).unwrap();
    launches.extend(avgpool::avgpool_backward(k(), &p, dyb.view(), dx_avg.view()).unwrap());
    run(launches);
    let mut want = dx0.clone();
    cpu::maxpool_backward(&mut want, &dy, &argmax, &p);
    check(
        "maxpool_backward large",
        rng.seed,
        &read(&dx_max),
        &want,
        GRAD,
    );
    let mut want = dx0;
    cpu::avgpool_backward(&mut want, &dy, &p);
    check(
        "avgpool_backward large",
        rng.seed,
        &read(&dx_avg),
        &want,
        GRAD,
    );
}

/// (input (N, C, H, W), x channel offset, y channel offset)
pub(crate) fn global_cases() -> Vec<([u32; 4], u32, u32)> {
    vec![
        ([3, 13, 7, 7], 0, 0),
        ([1, 13, 9, 5], 2, 3),
        ([3, 13, 1, 1], 1, 0),
        // The d2l DenseNet head at a small batch.
        ([5, 248, 3, 3], 0, 2),
    ]
}

pub(crate) fn global_params(
    input: [u32; 4],
    x_chan: u32,
    y_chan: u32,
) -> (GlobalAvgPoolParams, u64, u64) {
    let p = GlobalAvgPoolParams::new(input)
        .unwrap()
        .with_x_channel_offset(x_chan)
        .with_y_channel_offset(y_chan);
    let x_total = p.x_offset as u64 + p.x_len() + 7;
    let y_total = p.y_offset as u64 + p.y_len() + 5;
    (p, x_total, y_total)
}

fn global_avgpool_forward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, (input, x_chan, y_chan)) in global_cases().into_iter().enumerate() {
        let (p, x_total, y_total) = global_params(input, x_chan, y_chan);
        let x = as_act(dtype, rng.vec(x_total));
        let (xb, y) = (up_act(dtype, &x), poisoned_act(dtype, y_total));
        run(global_avgpool::global_avgpool_forward(k(), &p, xb.view(), None, y.view()).unwrap());
        let mut want = vec![f32::NAN; y_total as usize];
        cpu::global_avgpool_forward(&mut want, &x, &p);
        check_written(
            &format!("global_avgpool_forward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&y),
            &want,
            (p.y_offset as usize, p.y_len()),
            dtype,
        );
    }
}

fn global_avgpool_backward_matches_reference(dtype: DType) {
    let mut rng = Rand::new();
    for (i, (input, x_chan, y_chan)) in global_cases().into_iter().enumerate() {
        let (p, x_total, y_total) = global_params(input, x_chan, y_chan);
        let dy = as_act(dtype, rng.vec(y_total));
        let dx0 = as_act(dtype, rng.vec(x_total));
        let (dyb, dx) = (up_act(dtype, &dy), up_act(dtype, &dx0));
        run(global_avgpool::global_avgpool_backward(k(), &p, dyb.view(), dx.view()).unwrap());
        let mut want = dx0.clone();
        cpu::global_avgpool_backward(&mut want, &dy, &p);
        check(
            &format!("global_avgpool_backward[{dtype}] case {i}"),
            rng.seed,
            &read_act(&dx),
            &want,
            tol_for(dtype, GRAD),
        );
    }
}

fn refused(what: &str, arg: &str, r: densenet_wgpu::Result<Vec<densenet_wgpu::kernels::Dispatch>>) {
    let err = r
        .err()
        .unwrap_or_else(|| panic!("{what}: a short {arg} must be refused"));
    let msg = err.to_string();
    assert!(msg.contains(&format!(": {arg} has ")), "{what}: {msg}");
    assert!(!msg.contains('\n'), "{what}: one line: {msg}");
}

fn pool_rejects_mismatched_buffers_and_impossible_shapes() {
    let g = k();
    let p = Pool2dParams::new([2, 3, 5, 5], (3, 3), (2, 2), (1, 1))
        .unwrap()
        .with_y_channel_offset(1);
    let (xl, yl) = (p.x_len(), p.y_offset as u64 + p.y_len());
    let argmax = |len: u64| up_u32(&vec![0; len as usize]);
    let (x, y, arg) = (poisoned(xl), poisoned(yl), argmax(p.y_len()));
    let (x_short, y_short, arg_short) = (poisoned(xl - 1), poisoned(yl - 1), argmax(p.y_len() - 1));
    refused(
        "maxpool_forward",
        "x",
        maxpool::maxpool_forward(g, &p, x_short.view(), None, y.view(), Some(arg.view())),
    );
    refused(
        "maxpool_forward",
        "y",
        maxpool::maxpool_forward(g, &p, x.view(), None, y_short.view(), Some(arg.view())),
    );
    refused(
        "maxpool_forward",
        "argmax",
        maxpool::maxpool_forward(g, &p, x.view(), None, y.view(), Some(arg_short.view())),
    );
    refused(
        "maxpool_backward",
        "dy",
        maxpool::maxpool_backward(g, &p, y_short.view(), arg.view(), x.view()),
    );
    refused(
        "maxpool_backward",
        "argmax",
        maxpool::maxpool_backward(g, &p, y.view(), arg_short.view(), x.view()),
    );
    refused(
        "maxpool_backward",
        "dx",
        maxpool::maxpool_backward(g, &p, y.view(), arg.view(), x_short.view()),
    );
    refused(
        "avgpool_forward",
        "x",
        avgpool::avgpool_forward(g, &p, x_short.view(), None, y.view()),
    );
    refused(
        "avgpool_forward",
        "y",
        avgpool::avgpool_forward(g, &p, x.view(), None, y_short.view()),
    );
    refused(
        "avgpool_backward",
        "dy",
        avgpool::avgpool_backward(g, &p, y_short.view(), x.view()),
    );
    refused(
        "avgpool_backward",
        "dx",
        avgpool::avgpool_backward(g, &p, y.view(), x_short.view()),
    );
    assert!(maxpool::maxpool_forward(g, &p, x.view(), None, y.view(), Some(arg.view())).is_ok());

    let gp = GlobalAvgPoolParams::new([2, 3, 5, 5])
        .unwrap()
        .with_x_channel_offset(1);
    let (gx, gy) = (
        poisoned(gp.x_offset as u64 + gp.x_len()),
        poisoned(gp.y_len()),
    );
    let (gx_short, gy_short) = (
        poisoned(gp.x_offset as u64 + gp.x_len() - 1),
        poisoned(gp.y_len() - 1),
    );
    refused(
        "global_avgpool_forward",
        "x",
        global_avgpool::global_avgpool_forward(g, &gp, gx_short.view(), None, gy.view()),
    );
    refused(
        "global_avgpool_forward",
        "y",
        global_avgpool::global_avgpool_forward(g, &gp, gx.view(), None, gy_short.view()),
    );
    refused(
        "global_avgpool_backward",
        "dy",
        global_avgpool::global_avgpool_backward(g, &gp, gy_short.view(), gx.view()),
    );
    refused(
        "global_avgpool_backward",
        "dx",
        global_avgpool::global_avgpool_backward(g, &gp, gy.view(), gx_short.view()),
    );

    // Shapes PyTorch refuses.
    let bad = [
        ([2, 3, 5, 5], (3, 3), (2, 2), (2, 1)), // padding above half the kernel
        ([2, 3, 5, 5], (2, 2), (2, 2), (0, 2)),
        ([1, 1, 2, 2], (5, 5), (1, 1), (1, 1)), // empty output
        ([1, 1, 4, 4], (2, 2), (0, 1), (0, 0)), // zero stride
        ([1, 1, 4, 4], (0, 2), (1, 1), (0, 0)), // zero kernel
        ([0, 1, 4, 4], (2, 2), (2, 2), (0, 0)), // empty input
        ([65536, 65536, 2, 2], (2, 2), (2, 2), (0, 0)), // beyond u32 indices
    ];
    for (input, kernel, stride, pad) in bad {
        let r = Pool2dParams::new(input, kernel, stride, pad);
        assert!(
            r.is_err(),
            "{input:?} {kernel:?} {stride:?} {pad:?} must be refused"
        );
        assert!(!r.unwrap_err().to_string().contains('\n'));
    }
    assert!(Pool2dParams::new([1, 1, 3, 3], (3, 3), (1, 1), (1, 1)).is_ok());
    assert!(GlobalAvgPoolParams::new([2, 0, 3, 3]).is_err());
}

/// Overwriting backwards write every element of dx (NaN before), whatever it held.
fn pool_backwards_overwrite_every_element() {
    let mut rng = Rand::new();
    for (i, c) in shapes().iter().enumerate() {
        let p = params(c).overwriting();
        let (x_total, y_total) = totals(&p);
        let x = rng.vec(x_total);
        let mut y = vec![0.0; y_total as usize];
        let mut argmax = vec![0; p.y_len() as usize];
        cpu::maxpool_forward(&mut y, &mut argmax, &x, &p);
        let dy = rng.vec(y_total);
        let (dyb, arg) = (up(&dy), up_u32(&argmax));
        let (dx_max, dx_avg) = (poisoned(x_total), poisoned(x_total));
        let mut launches =
            maxpool::maxpool_backward(k(), &p, dyb.view(), arg.view(), dx_max.view()).unwrap();
        launches.extend(avgpool::avgpool_backward(k(), &p, dyb.view(), dx_avg.view()).unwrap());
        run(launches);
        let r = p.x_offset as usize..(p.x_offset as u64 + p.x_len()) as usize;
        let mut want = vec![0.0; x_total as usize];
        cpu::maxpool_backward(&mut want, &dy, &argmax, &p);
        let what = format!("overwriting maxpool_backward case {i}");
        check(
            &what,
            rng.seed,
            &read(&dx_max)[r.clone()],
            &want[r.clone()],
            GRAD,
        );
        let mut want = vec![0.0; x_total as usize];
        cpu::avgpool_backward(&mut want, &dy, &p);
        let what = format!("overwriting avgpool_backward case {i}");
        check(&what, rng.seed, &read(&dx_avg)[r.clone()], &want[r], GRAD);
    }
    for (i, (input, x_chan, y_chan)) in global_cases().into_iter().enumerate() {
        let (p, x_total, y_total) = global_params(input, x_chan, y_chan);
        let p = p.overwriting();
        let dy = rng.vec(y_total);
        let (dyb, dx) = (up(&dy), poisoned(x_total));
        run(global_avgpool::global_avgpool_backward(k(), &p, dyb.view(), dx.view()).unwrap());
        let mut want = vec![0.0; x_total as usize];
        cpu::global_avgpool_backward(&mut want, &dy, &p);
        let r = p.x_offset as usize..(p.x_offset as u64 + p.x_len()) as usize;
        let what = format!("overwriting global_avgpool_backward case {i}");
        check(&what, rng.seed, &read(&dx)[r.clone()], &want[r], GRAD);
    }
}
