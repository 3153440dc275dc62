use crate::fd::{self, check, dot, rand_vec};
use densenet_wgpu::ops::cross_entropy::{CrossEntropyParams, IGNORE};
use densenet_wgpu::ops::linear::LinearParams;
use densenet_wgpu::reference as cpu;

#[test]
fn linear_backward_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for (n, fi, fo) in [(3, 5, 4), (1, 7, 2)] {
        let p = LinearParams::new(n, fi, fo, true).unwrap();
        let x = rand_vec(&mut rng, p.x_len() as usize);
        let w = rand_vec(&mut rng, p.weight_len() as usize);
        let b = rand_vec(&mut rng, fo as usize);
        let g = rand_vec(&mut rng, p.y_len() as usize);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; p.y_len() as usize];
            cpu::linear_forward(&mut y, x, w, Some(b), &p);
            dot(&y, &g)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; b.len()]);
        cpu::linear_backward_data(&mut dx, &g, &w, &p);
        cpu::linear_backward_weight(&mut dw, &x, &g, &p);
        cpu::linear_backward_bias(&mut db, &g, &p);
        check("linear dx", seed, &x, &dx, |x| loss(x, &w, &b));
        check("linear dweight", seed, &w, &dw, |w| loss(&x, w, &b));
        check("linear dbias", seed, &b, &db, |b| loss(&x, &w, b));
    }
}

#[test]
fn softmax_cross_entropy_gradient_by_finite_differences() {
    let seed = fd::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    // Plain, and with label smoothing.
    for e in [0.0, 0.1] {
        let p = CrossEntropyParams::new(5, 4)
            .unwrap()
            .with_smoothing(e)
            .unwrap();
        let logits: Vec<f32> = rand_vec(&mut rng, 20).iter().map(|v| v * 3.0).collect();
        let labels = [2, 0, IGNORE, 3, 3];
        let mut dlogits = vec![0.0; 20];
        cpu::softmax_cross_entropy(&mut dlogits, &logits, &labels, &p);
        check(
            &format!("softmax_cross_entropy (smoothing {e}) dlogits"),
            seed,
            &logits,
            &dlogits,
            |l| {
                let mut scratch = vec![0.0; 20];
                // The loss is summed; the gradient is of the mean over the 4 real samples.
                cpu::softmax_cross_entropy(&mut scratch, l, &labels, &p).0 as f64 / 4.0
            },
        );
        // The padding sample's row gets no gradient at all.
        assert!(dlogits[8..12].iter().all(|&g| g == 0.0));
    }
}

#[test]
fn softmax_cross_entropy_known_values() {
    // Uniform logits: loss ln(classes); the first maximum is predicted.
    let p = CrossEntropyParams::new(2, 4).unwrap();
    let mut d = vec![0.0; 8];
    let (loss, correct) = cpu::softmax_cross_entropy(&mut d, &[1.0; 8], &[0, 1], &p);
    assert!(
        (loss - 2.0 * 4f32.ln()).abs() < 1e-6,
        "summed over both samples"
    );
    assert_eq!(correct, 1);
    assert!((d[0] - (0.25 - 1.0) / 2.0).abs() < 1e-7 && (d[1] - 0.25 / 2.0).abs() < 1e-7);
    // Smoothing 0.2 over 4 classes: targets 0.85 and 0.05; uniform logits lose ln 4 still.
    let p = p.with_smoothing(0.2).unwrap();
    let mut d = vec![0.0; 8];
    let (loss, _) = cpu::softmax_cross_entropy(&mut d, &[1.0; 8], &[0, 1], &p);
    assert!((loss - 2.0 * 4f32.ln()).abs() < 1e-6);
    assert!((d[0] - (0.25 - 0.85) / 2.0).abs() < 1e-7 && (d[1] - (0.25 - 0.05) / 2.0).abs() < 1e-7);
    assert!(CrossEntropyParams::new(2, 4)
        .unwrap()
        .with_smoothing(1.0)
        .is_err());
}
