//! Comparing a kernel's output with the truth: the design's tolerances, and the largest
//! error as a multiple of what they allow.

use crate::gpu::DType;

/// |got - want| <= atol + rtol |want| for every element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    /// Forward outputs in f32: sums in another order.
    pub const FWD: Tol = Tol::new(1e-5, 1e-4);
    /// Gradients in f32: longer sums.
    pub const GRAD: Tol = Tol::new(1e-4, 1e-3);
    /// Anything stored as f16 (inputs drawn f16-exact): the output's rounding, 2^-11.
    pub const F16_STORAGE: Tol = Tol::new(1e-4, 1.5e-3);
    /// Products of f16 operands (cooperative matrices) against the same rounded operands.
    pub const F16_OPERANDS: Tol = Tol::new(1e-3, 1e-3);

    pub const fn new(atol: f64, rtol: f64) -> Tol {
        Tol { atol, rtol }
    }

    /// The wider of two tolerances, term by term.
    pub fn max(self, other: Tol) -> Tol {
        Tol::new(self.atol.max(other.atol), self.rtol.max(other.rtol))
    }

    /// `self` for an output stored in `dtype` (f16 adds the rounding of the output).
    pub fn stored_as(self, dtype: DType) -> Tol {
        match dtype {
            DType::F16 => self.max(Tol::F16_STORAGE),
            _ => self,
        }
    }
}

/// How `got` compares with `want`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// The largest |got - want| / max(|want|, atol / rtol): a relative error that does not
    /// blow up near zero.
    pub max_rel_err: f64,
    /// Every element within the tolerance (a NaN where a number was wanted fails; a NaN
    /// where one was wanted, an element the kernel must not touch, must stay NaN).
    pub within: bool,
}

/// Compares `got` with `want` under `tol`.
pub fn compare(got: &[f32], want: &[f32], tol: Tol) -> Agreement {
    if got.len() != want.len() {
        return Agreement {
            max_rel_err: f64::INFINITY,
            within: false,
        };
    }
    let floor = tol.atol / tol.rtol;
    let mut worst = 0f64;
    let mut within = true;
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g as f64, w as f64);
        if w.is_nan() {
            if !g.is_nan() {
                within = false;
                worst = f64::INFINITY;
            }
            continue;
        }
        let err = (g - w).abs();
        if err.is_nan() || err > tol.atol + tol.rtol * w.abs() {
            within = false;
        }
        let rel = match err.is_nan() {
            true => f64::INFINITY,
            false => err / w.abs().max(floor),
        };
        worst = worst.max(rel);
    }
    Agreement {
        max_rel_err: worst,
        within,
    }
}

/// Whether two outputs hold the same bits (NaNs included).
pub fn identical(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_errors_and_untouched_elements() {
        let tol = Tol::FWD;
        let ok = compare(&[1.0, 2.00001, f32::NAN], &[1.0, 2.0, f32::NAN], tol);
        assert!(ok.within && ok.max_rel_err < 1e-4, "{ok:?}");
        let off = compare(&[1.0, 2.1], &[1.0, 2.0], tol);
        assert!(
            !off.within && (off.max_rel_err - 0.05).abs() < 1e-6,
            "{off:?}"
        );
        assert!(!compare(&[f32::NAN], &[1.0], tol).within);
        assert!(
            !compare(&[0.0], &[f32::NAN], tol).within,
            "a stray write fails"
        );
        assert!(!compare(&[1.0], &[1.0, 2.0], tol).within);
        assert!(identical(&[1.0, f32::NAN], &[1.0, f32::NAN]));
        assert!(!identical(&[0.0], &[-0.0]));
    }
}
