//! Evaluating a plan on a dataset: every example once, in order, with the running
//! statistics; the loss and accuracy summed on the device and read once.

use std::sync::Arc;

use anyhow::Result;

use crate::data::augment::Augment;
use crate::data::loader::{Loader, Order, Shard};
use crate::data::Dataset;
use crate::gpu::{Gpu, InFlight};
use crate::model::Plan;

/// `test` in order, in batches of the plan's size, normalized as `aug` says (crop and flip
/// are for training only).
fn test_batches(plan: &Plan, test: &Arc<Dataset>, aug: &Augment) -> Loader {
    shard_batches(plan, test, aug, Shard::WHOLE)
}

fn shard_batches(plan: &Plan, test: &Arc<Dataset>, aug: &Augment, shard: Shard) -> Loader {
    let size = (plan.cfg.image_size, plan.cfg.image_size);
    let aug = Arc::new(aug.clone());
    let batch = plan.batch as usize;
    Loader::sharded(test.clone(), batch, Order::Sequential, size, aug, shard)
}

/// One shard's part of an evaluation (data-parallel runs): its summed loss and correct
/// count, and (multi-label) its examples' logits and targets; the ranks' parts add up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardEval {
    pub loss_sum: f64,
    pub correct: u64,
    pub logits: Vec<f32>,
    pub targets: Vec<u32>,
}

impl ShardEval {
    /// As bytes, to pass between ranks.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.loss_sum.to_le_bytes());
        out.extend(self.correct.to_le_bytes());
        out.extend((self.logits.len() as u64).to_le_bytes());
        out.extend(bytemuck::cast_slice(&self.logits));
        out.extend(bytemuck::cast_slice(&self.targets));
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<ShardEval> {
        let word = |i: usize| -> Result<[u8; 8]> {
            b.get(8 * i..8 * i + 8)
                .and_then(|w| w.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("a rank's evaluation was cut short"))
        };
        let n = u64::from_le_bytes(word(2)?) as usize;
        let rest = &b[24..];
        if rest.len() < 4 * n || (rest.len() - 4 * n) % 4 != 0 {
            anyhow::bail!("a rank's evaluation was cut short");
        }
        Ok(ShardEval {
            loss_sum: f64::from_le_bytes(word(0)?),
            correct: u64::from_le_bytes(word(1)?),
            logits: bytemuck::pod_collect_to_vec(&rest[..4 * n]),
            targets: bytemuck::pod_collect_to_vec(&rest[4 * n..]),
        })
    }
}

/// Evaluates `shard` of `test` (its loss and correct sums; multi-label: its logits and
/// targets too). Waits for the GPU.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_shard(
    gpu: &Gpu,
    plan: &Plan,
    test: &Arc<Dataset>,
    aug: &Augment,
    shard: Shard,
) -> Result<ShardEval> {
    let k = plan.cfg.classes as usize;
    plan.reset_metrics(gpu);
    let mut out = ShardEval::default();
    let mut inflight = InFlight::new(2);
    for batch in shard_batches(plan, test, aug, shard) {
        plan.upload(gpu, &batch.x, &batch.labels)?;
        let index = plan.submit_eval(gpu);
        if !plan.cfg.multi_label {
            inflight.push(gpu, index)?;
            continue;
        }
        out.logits
            .extend_from_slice(&plan.read_logits(gpu)?[..batch.count * k]);
        out.targets
            .extend_from_slice(&batch.labels[..batch.count * k]);
    }
    (out.loss_sum, out.correct) = plan.read_metrics(gpu)?;
    Ok(out)
}

/// (mean loss, accuracy) of `plan` (training or evaluation) over `test`, its inputs
/// normalized as `aug` says (crop and flip are for training only). Waits for the GPU.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate(gpu: &Gpu, plan: &Plan, test: &Arc<Dataset>, aug: &Augment) -> Result<(f64, f64)> {
    pollster::block_on(evaluate_async(gpu, plan, test, aug))
}

/// [`evaluate`], asynchronously (as a browser needs it).
pub async fn evaluate_async(
    gpu: &Gpu,
    plan: &Plan,
    test: &Arc<Dataset>,
    aug: &Augment,
) -> Result<(f64, f64)> {
    let loader = test_batches(plan, test, aug);
    plan.reset_metrics(gpu);
    let mut inflight = InFlight::new(2);
    for batch in loader {
        plan.upload(gpu, &batch.x, &batch.labels)?;
        inflight.push_async(gpu, plan.submit_eval(gpu)).await?;
    }
    let (loss, correct) = plan.read_metrics_async(gpu).await?;
    let n = test.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}

/// An evaluation pass class by class: what `eval` prints and draws.
pub struct Breakdown {
    /// Mean loss and accuracy, as [`evaluate`] gives them.
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[label][predicted]`: examples of each class and what they were taken for.
    pub confusion: Vec<Vec<u64>>,
    /// Share of examples whose label is among the five largest logits (where there are more
    /// than 10 classes).
    pub top5: Option<f64>,
    /// Every example's logits in dataset order, `classes` per example.
    pub logits: Vec<f32>,
    /// Every example's label, in the same order.
    pub labels: Vec<u32>,
    /// Multi-label: every example's targets (examples x classes, 0 or 1); empty otherwise.
    pub targets: Vec<u32>,
}

/// The area under the ROC curve of `scores` for the labels `positive`, as scikit-learn's
/// `roc_auc_score`: the share of (positive, negative) pairs the scores order correctly, a
/// tie counting one half (Mann-Whitney's U over average ranks, which equals the trapezoids
/// under sklearn's curve). None when every label is of one class: the area is undefined
/// there (sklearn raises), not 0.5.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n = scores.len().min(positive.len());
    let pos = positive[..n].iter().filter(|&&p| p).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Ranks 1..=n, ties sharing their average rank; sum them over the positives.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average = (i + j + 2) as f64 / 2.0;
        rank_sum += average * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let (p, q) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * q))
}

/// The softmax of a row of logits (computed from its maximum, so it cannot overflow).
pub fn probabilities(row: &[f32]) -> Vec<f32> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// The predicted class of a row of logits (the first maximum, as argmax) and whether
/// `label` is among its five largest (ties broken by order).
fn rank(row: &[f32], label: usize) -> (usize, bool) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    (order[0], order.iter().take(5).any(|&o| o == label))
}

/// [`evaluate`], reading each batch's logits back (so it waits for every batch) to count
/// the confusion matrix and the top-5 accuracy.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_breakdown(
    gpu: &Gpu,
    plan: &Plan,
    test: &Arc<Dataset>,
    aug: &Augment,
) -> Result<Breakdown> {
    pollster::block_on(evaluate_breakdown_async(gpu, plan, test, aug))
}

/// [`evaluate_breakdown`], asynchronously (as a browser needs it).
pub async fn evaluate_breakdown_async(
    gpu: &Gpu,
    plan: &Plan,
    test: &Arc<Dataset>,
    aug: &Augment,
) -> Result<Breakdown> {
    let classes = plan.cfg.classes as usize;
    let loader = test_batches(plan, test, aug);
    plan.reset_metrics(gpu);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut in_top5 = 0u64;
    let (mut all_logits, mut all_labels, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    let multi = plan.cfg.multi_label;
    for batch in loader {
        plan.upload(gpu, &batch.x, &batch.labels)?;
        plan.submit_eval(gpu);
        let logits = plan.read_logits_async(gpu).await?;
        if multi {
            all_logits.extend_from_slice(&logits[..batch.count * classes]);
            targets.extend_from_slice(&batch.labels[..batch.count * classes]);
            continue;
        }
        for (row, &label) in logits.chunks(classes).zip(&batch.labels).take(batch.count) {
            let (predicted, top5) = rank(row, label as usize);
            confusion[label as usize][predicted] += 1;
            in_top5 += top5 as u64;
        }
        all_logits.extend_from_slice(&logits[..batch.count * classes]);
        all_labels.extend_from_slice(&batch.labels[..batch.count]);
    }
    let (loss, correct) = plan.read_metrics_async(gpu).await?;
    let n = test.len().max(1) as f64;
    Ok(Breakdown {
        loss: loss / n,
        accuracy: correct as f64 / n,
        confusion,
        top5: (classes > 10 && !multi).then_some(in_top5 as f64 / n),
        logits: all_logits,
        labels: all_labels,
        targets,
    })
}

impl Breakdown {
    /// Each class's accuracy (NaN for a class without examples).
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| row[c] as f64 / row.iter().sum::<u64>() as f64)
            .collect()
    }

    /// Each class's one-vs-rest AUROC from the predicted probabilities (scikit-learn's
    /// `roc_auc_score(multi_class="ovr")` per class); None for a class the test set holds
    /// no example of, or nothing else.
    pub fn auroc_per_class(&self) -> Vec<Option<f64>> {
        let classes = self.confusion.len().max(1);
        if !self.targets.is_empty() {
            // Multi-label: each label's logit ranks its examples (the sigmoid keeps order).
            return (0..classes)
                .map(|c| {
                    let scores: Vec<f32> = self
                        .logits
                        .iter()
                        .skip(c)
                        .step_by(classes)
                        .copied()
                        .collect();
                    let positive: Vec<bool> = self
                        .targets
                        .iter()
                        .skip(c)
                        .step_by(classes)
                        .map(|&t| t != 0)
                        .collect();
                    auroc(&scores, &positive)
                })
                .collect();
        }
        let probs: Vec<Vec<f32>> = self.logits.chunks(classes).map(probabilities).collect();
        (0..classes)
            .map(|c| {
                let scores: Vec<f32> = probs.iter().map(|p| p[c]).collect();
                let positive: Vec<bool> = self.labels.iter().map(|&l| l as usize == c).collect();
                auroc(&scores, &positive)
            })
            .collect()
    }

    /// The mean of the defined per-class AUROCs (None if none is).
    pub fn mean_auroc(&self) -> Option<f64> {
        let defined: Vec<f64> = self.auroc_per_class().into_iter().flatten().collect();
        (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
    }

    /// One line per class: name, accuracy, examples, one-vs-rest AUROC (multi-label: each
    /// label's AUROC and positives).
    pub fn text(&self, names: &[String]) -> String {
        let mut out = String::new();
        if !self.targets.is_empty() {
            let k = names.len().max(1);
            for (c, (name, auc)) in names.iter().zip(self.auroc_per_class()).enumerate() {
                let pos = self
                    .targets
                    .iter()
                    .skip(c)
                    .step_by(k)
                    .filter(|&&t| t != 0)
                    .count();
                let auc = auc.map_or("undefined (one class)".to_string(), |a| format!("{a:.4}"));
                out.push_str(&format!("  {name:<20} AUROC {auc}, {pos} positive\n"));
            }
            if let Some(m) = self.mean_auroc() {
                out.push_str(&format!("  mean AUROC {m:.4}\n"));
            }
            return out;
        }
        let aurocs = self.auroc_per_class();
        for (((name, acc), row), auc) in names
            .iter()
            .zip(self.per_class())
            .zip(&self.confusion)
            .zip(&aurocs)
        {
            let n: u64 = row.iter().sum();
            let auc = auc.map_or("undefined".to_string(), |a| format!("{a:.4}"));
            out.push_str(&format!(
                "  {name:<16} {:>6.2}% of {n}, AUROC {auc}\n",
                100.0 * acc
            ));
        }
        if let Some(m) = self.mean_auroc() {
            out.push_str(&format!("  mean one-vs-rest AUROC {m:.4}\n"));
        }
        if let Some(t) = self.top5 {
            out.push_str(&format!("  top-5 accuracy {:.2}%\n", 100.0 * t));
        }
        out
    }

    /// The logits as CSV: a header `label,logit_0,...`, then one row per example in dataset
    /// order, each value written so that it parses back to the same f32.
    pub fn logits_csv(&self) -> String {
        let classes = self.confusion.len().max(1);
        let mut out = String::from("label");
        for c in 0..classes {
            out.push_str(&format!(",logit_{c}"));
        }
        out.push('\n');
        for (row, label) in self.logits.chunks(classes).zip(&self.labels) {
            out.push_str(&label.to_string());
            for v in row {
                out.push_str(&format!(",{v}"));
            }
            out.push('\n');
        }
        out
    }

    /// The confusion matrix as a PNG: row = true class, column = predicted class, each row
    /// shaded by its share (white 0 to dark blue 1), cells of at least 4 pixels.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn confusion_png(&self, path: &std::path::Path) -> Result<()> {
        let k = self.confusion.len().max(1);
        let cell = (640 / k).max(4) as u32;
        let side = cell * k as u32;
        let mut img = image::RgbImage::from_pixel(side, side, image::Rgb([255, 255, 255]));
        for (r, row) in self.confusion.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (c, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let shade = |full: f64| (255.0 - share * (255.0 - full)) as u8;
                let color = image::Rgb([shade(20.0), shade(50.0), shade(140.0)]);
                for y in 0..cell {
                    for x in 0..cell {
                        img.put_pixel(c as u32 * cell + x, r as u32 * cell + y, color);
                    }
                }
            }
        }
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        crate::atomic_file::write_atomic(path, &png)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values scikit-learn's roc_auc_score gives (worked by hand here): ordered pairs count
    /// 1, tied ones 1/2; one class only is undefined.
    #[test]
    fn auroc_counts_pairs_and_halves_ties() {
        let t = |v: &[u8]| v.iter().map(|&b| b == 1).collect::<Vec<bool>>();
        // 3 of 4 pairs ordered: 0.35 < 0.4 is the one wrong.
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &t(&[0, 0, 1, 1])), Some(0.75));
        // (0.5, 0.5) tie: 3.5 of 4.
        assert_eq!(auroc(&[0.2, 0.5, 0.5, 0.9], &t(&[0, 0, 1, 1])), Some(0.875));
        assert_eq!(auroc(&[0.5; 4], &t(&[0, 1, 0, 1])), Some(0.5));
        assert_eq!(auroc(&[0.9, 0.1], &t(&[0, 1])), Some(0.0));
        // 3 positives, 2 negatives; pairs ordered: 0.7>0.3, 0.7>0.6, 0.6>0.3, 0.6=0.6 (1/2),
        // 0.2<0.3, 0.2<0.6: 3.5 of 6.
        let s = auroc(&[0.7, 0.6, 0.2, 0.3, 0.6], &t(&[1, 1, 1, 0, 0])).unwrap();
        assert!((s - 3.5 / 6.0).abs() < 1e-12, "{s}");
        assert_eq!(auroc(&[0.1, 0.2], &t(&[1, 1])), None);
        assert_eq!(auroc(&[], &[]), None);
    }

    #[test]
    fn rank_takes_the_first_maximum_and_the_top_five() {
        let row = [0.5, 2.0, 2.0, -1.0, 0.0, 1.0, 0.1];
        assert_eq!(rank(&row, 1), (1, true));
        assert_eq!(rank(&row, 2).0, 1, "ties go to the first");
        assert!(rank(&row, 6).1, "0.1 is fifth");
        assert!(!rank(&row, 3).1 && !rank(&row, 4).1);
        let b = Breakdown {
            loss: 0.0,
            accuracy: 0.5,
            confusion: vec![vec![3, 1], vec![2, 2]],
            top5: None,
            logits: vec![1.5, -0.1, 0.3, 1e-7],
            labels: vec![0, 1],
            targets: Vec::new(),
        };
        assert_eq!(
            b.logits_csv(),
            "label,logit_0,logit_1\n0,1.5,-0.1\n1,0.3,0.0000001\n"
        );
        assert_eq!(b.per_class(), [0.75, 0.5]);
        let text = b.text(&["cat".into(), "dog".into()]);
        assert!(
            text.contains("cat") && text.contains("75.00% of 4"),
            "{text}"
        );
    }
}
