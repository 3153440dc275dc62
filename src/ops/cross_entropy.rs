//! Softmax cross-entropy (mean over the batch) fused with its gradient and a count of
//! correct predictions. The loss is accumulated as a SUM over samples, so batches with
//! different numbers of real samples add up right; divide by the samples counted. Logits
//! (N, classes) row-major, labels (N) u32; a label >= classes
//! (use [`IGNORE`]) marks a padding sample that counts for nothing.

use bytemuck::{Pod, Zeroable};

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, read_u32, write, write_f32, write_u32, Dispatch, Entry, Grid, Kernels, Shader,
    Source, PLAIN,
};

/// The label of a padding sample (as PyTorch's ignore_index).
pub const IGNORE: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct CrossEntropyParams {
    pub n: u32,
    pub classes: u32,
    /// Non-zero: dlogits is of the loss times a loss scale ([`CrossEntropyParams::with_loss_scale`]).
    pub loss_scaled: u32,
    /// Label smoothing e: the target is (1 - e) onehot + e / classes.
    pub smoothing: f32,
}

const OP: &str = "softmax_cross_entropy";

impl CrossEntropyParams {
    pub fn new(n: u32, classes: u32) -> Result<Self> {
        ensure_shape!(
            n > 0 && classes > 0,
            OP,
            "batch {n} and classes {classes} must be positive"
        );
        Ok(CrossEntropyParams {
            n,
            classes,
            loss_scaled: 0,
            smoothing: 0.0,
        })
    }

    /// Label smoothing `e` in [0, 1), as PyTorch's `CrossEntropyLoss(label_smoothing=e)`.
    pub fn with_smoothing(mut self, e: f32) -> Result<Self> {
        ensure_shape!(
            (0.0..1.0).contains(&e),
            OP,
            "label smoothing {e} must be in [0, 1)"
        );
        self.smoothing = e;
        Ok(self)
    }

    /// dlogits is the gradient of the loss times the scale of a [`crate::ops::loss_scale`]
    /// state (f16 training); the summed loss is not scaled.
    pub fn with_loss_scale(mut self) -> Self {
        self.loss_scaled = 1;
        self
    }

    pub fn logits_len(&self) -> u64 {
        self.n as u64 * self.classes as u64
    }
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "cross_entropy.wgsl",
    source: Source::File(include_str!("../../shaders/cross_entropy.wgsl")),
    entries: &[&SOFTMAX_CROSS_ENTROPY, &SIGMOID_CROSS_ENTROPY],
    variants: &[PLAIN],
    choice: "one variant",
    dtypes: &[DType::F32, DType::F16],
};

pub static SOFTMAX_CROSS_ENTROPY: Entry = Entry::new::<CrossEntropyParams>(
    &SHADER,
    "softmax_cross_entropy",
    &[
        read(1),
        read_u32(2),
        write(3),
        write_f32(4),
        write_u32(5),
        read_u32(6),
    ],
    256,
);

/// `loss_sum[0] +=` the batch's summed loss, `dlogits +=` the gradient of its MEAN loss
/// (times the scale in `scale_state`, given exactly when the params say the loss is scaled),
/// `correct[0] +=` (u32) correct predictions.
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy(
    k: &Kernels,
    p: &CrossEntropyParams,
    logits: View<'_>,
    labels: View<'_>,
    dlogits: View<'_>,
    loss_sum: View<'_>,
    correct: View<'_>,
    scale_state: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    ensure_shape!(
        scale_state.is_some() == (p.loss_scaled != 0),
        OP,
        "a loss-scale state given: {}, but the params say loss_scaled = {}",
        scale_state.is_some(),
        p.loss_scaled
    );
    let lens = [
        ("logits", logits.len, p.logits_len()),
        ("labels", labels.len, p.n as u64),
        ("dlogits", dlogits.len, p.logits_len()),
        ("loss_sum", loss_sum.len, 1),
        ("correct", correct.len, 1),
    ];
    check_lens(OP, p, &lens)?;
    let dtype = super::float_dtype(OP, &[&logits, &dlogits])?;
    let views = [
        (1, logits),
        (2, labels),
        (3, dlogits),
        (4, loss_sum),
        (5, correct),
        (6, k.optional(scale_state, DType::U32)),
    ];
    let kernel = SOFTMAX_CROSS_ENTROPY.kernel(dtype);
    Ok(vec![k.dispatch(kernel, p, &views, Grid::Workgroups(1))?])
}

/// Each (argument, elements it has, elements `p` needs): a one-line error naming the first
/// that is short.
fn check_lens(op: &'static str, p: &CrossEntropyParams, lens: &[(&str, u64, u64)]) -> Result<()> {
    for &(what, have, need) in lens {
        ensure_shape!(
            have >= need,
            op,
            "{what} has {have} elements but {p:?} needs {need}"
        );
    }
    Ok(())
}

pub static SIGMOID_CROSS_ENTROPY: Entry = Entry::new::<CrossEntropyParams>(
    &SHADER,
    "sigmoid_cross_entropy",
    &[
        read(1),
        read_u32(2),
        write(3),
        write_f32(4),
        write_u32(5),
        read_u32(6),
        read_f32(7),
    ],
    256,
);

/// Multi-label: sigmoid binary cross-entropy of `logits` (N, K) against `labels` (N x K
/// targets, 0 or 1; a row starting with [`IGNORE`] is padding), each label's positives
/// weighted by `pos_weight` (K), as torch's BCEWithLogitsLoss(pos_weight) with the mean
/// over samples and labels; the gradient added into `dlogits`, the summed per-sample mean
/// loss into `loss_sum`, the samples with every label right into `correct`.
#[allow(clippy::too_many_arguments)]
pub fn sigmoid_cross_entropy(
    k: &Kernels,
    p: &CrossEntropyParams,
    logits: View<'_>,
    labels: View<'_>,
    pos_weight: View<'_>,
    dlogits: View<'_>,
    (loss_sum, correct): (View<'_>, View<'_>),
    scale_state: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "sigmoid_cross_entropy";
    ensure_shape!(
        scale_state.is_some() == (p.loss_scaled != 0) && p.smoothing == 0.0,
        OP,
        "a loss-scale state exactly when the params say so, and no label smoothing: {p:?}"
    );
    let lens = [
        ("logits", logits.len, p.logits_len()),
        ("labels", labels.len, p.logits_len()),
        ("pos_weight", pos_weight.len, p.classes as u64),
        ("dlogits", dlogits.len, p.logits_len()),
        ("loss_sum", loss_sum.len, 1),
        ("correct", correct.len, 1),
    ];
    check_lens(OP, p, &lens)?;
    let dtype = super::float_dtype(OP, &[&logits, &dlogits])?;
    let views = [
        (1, logits),
        (2, labels),
        (3, dlogits),
        (4, loss_sum),
        (5, correct),
        (6, k.optional(scale_state, DType::U32)),
        (7, pos_weight),
    ];
    let kernel = SIGMOID_CROSS_ENTROPY.kernel(dtype);
    Ok(vec![k.dispatch(kernel, p, &views, Grid::Workgroups(1))?])
}
