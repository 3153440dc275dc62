//! Evaluating a plan on a dataset: every example once, in order, with the running
//! statistics; the loss and accuracy summed on the device and read once.

use std::sync::Arc;

use anyhow::Result;

use crate::data::augment::Augment;
use crate::data::loader::{Loader, Order};
use crate::data::Dataset;
use crate::gpu::{Gpu, InFlight};
use crate::model::Plan;

/// (mean loss, accuracy) of `plan` (training or evaluation) over `test`, its inputs
/// normalized as `aug` says (crop and flip are for training only).
pub fn evaluate(gpu: &Gpu, plan: &Plan, test: &Arc<Dataset>, aug: &Augment) -> Result<(f64, f64)> {
    let size = (plan.cfg.image_size, plan.cfg.image_size);
    let aug = Arc::new(aug.clone());
    let loader = Loader::with_augment(
        test.clone(),
        plan.batch as usize,
        Order::Sequential,
        size,
        aug,
    );
    plan.reset_metrics(gpu);
    let mut inflight = InFlight::new(2);
    for batch in loader {
        plan.upload(gpu, &batch.x, &batch.labels)?;
        inflight.push(gpu, plan.submit_eval(gpu))?;
    }
    let (loss, correct) = plan.read_metrics(gpu)?;
    let n = test.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}
