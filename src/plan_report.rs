//! `densenet-wgpu plan`: the memory of a preset's training and evaluation plans, without
//! running a step. Every buffer with its shape, size and lifetime, the slots the per-step
//! tensors share, the totals by category, and what a naive DenseNet would hold.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Result;
use serde::Serialize;

use crate::data::DatasetKind;
use crate::gpu::DType;
use crate::kernels::Policy;
use crate::model::memory::{mib, BufferSpec};
use crate::model::naive::naive_training_bytes;
use crate::model::{Layout, MemoryPlan, Mode, PlanLimits, PlanTarget};
use crate::recipe::Preset;

/// What `densenet-wgpu plan` plans.
#[derive(Clone, Debug)]
pub struct PlanArgs {
    pub preset: Preset,
    pub dataset: DatasetKind,
    pub batch_size: Option<u32>,
    /// Element type of activations, their gradients and workspaces.
    pub precision: DType,
}

/// One buffer or per-step tensor of a plan.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub category: &'static str,
    pub bytes: u64,
    /// "always" for buffers that outlive a step, else the first and last stage.
    pub live: String,
    /// The shared slot of a per-step tensor.
    pub slot: Option<usize>,
}

/// The memory of one plan.
#[derive(Debug, Serialize)]
pub struct Side {
    pub total_bytes: u64,
    pub categories: BTreeMap<&'static str, u64>,
    /// Bytes the per-step tensors would take without sharing.
    pub unshared_tensor_bytes: u64,
    pub slot_bytes: Vec<u64>,
    pub buffers: Vec<Row>,
}

/// Both plans of a network, and the naive figure.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub preset: &'static str,
    pub dataset: &'static str,
    pub batch: u32,
    pub precision: DType,
    pub parameters: u64,
    pub training: Side,
    pub evaluation: Side,
    /// A naive DenseNet's training step: every concatenation, BN, ReLU, conv and pool output
    /// kept for the backward, plus the parameter state.
    pub naive_training_bytes: u64,
    /// The training plan's total in each precision (f32 and f16), for comparison.
    pub training_bytes_by_precision: BTreeMap<DType, u64>,
}

fn row(b: &BufferSpec, live: String, slot: Option<usize>) -> Row {
    Row {
        name: b.name.clone(),
        shape: b.shape.clone(),
        dtype: b.dtype,
        category: b.category.name(),
        bytes: b.bytes(),
        live,
        slot,
    }
}

fn side(m: &MemoryPlan) -> Side {
    let mut buffers: Vec<Row> = m
        .buffers
        .iter()
        .map(|b| row(b, "always".into(), None))
        .collect();
    let names = &m.nodes.timeline.names;
    for (i, t) in m.tensors().iter().enumerate() {
        let live = match t.first == t.last {
            true => names[t.first as usize].clone(),
            false => format!("{} .. {}", names[t.first as usize], names[t.last as usize]),
        };
        buffers.push(row(&t.spec, live, Some(m.placement.slot_of[i])));
    }
    Side {
        total_bytes: m.report.total(),
        categories: m.report.rows.iter().map(|(c, b)| (c.name(), *b)).collect(),
        unshared_tensor_bytes: m.unshared_bytes(),
        slot_bytes: m.placement.slot_bytes.clone(),
        buffers,
    }
}

/// Plans `args`' network for training and evaluation on an adapter with `limits`, with the
/// workspaces `policy`'s kernels need.
pub fn plan_report(args: &PlanArgs, limits: PlanLimits, policy: &Policy) -> Result<PlanReport> {
    if args.dataset == DatasetKind::Folder {
        anyhow::bail!("--dataset folder has no fixed shape to plan; give the shapes of another dataset (e.g. cifar10)");
    }
    let cfg = args
        .preset
        .config(args.dataset, args.dataset.class_names().len() as u32);
    let recipe = args.preset.recipe();
    let batch = args.batch_size.unwrap_or(recipe.batch_size);
    let layout = Layout::new(&cfg, limits.align());
    let momentum = recipe.sgd().state();
    let target = PlanTarget {
        limits,
        dtype: args.precision,
        policy: policy.clone(),
    };
    let plan = |mode| MemoryPlan::new(&cfg, &layout, batch, mode, momentum, &target);
    let (train, eval) = (plan(Mode::Train)?, plan(Mode::Eval)?);
    let mut by_precision = BTreeMap::new();
    for dtype in [DType::F32, DType::F16] {
        let t = PlanTarget {
            dtype,
            ..target.clone()
        };
        let m = MemoryPlan::new(&cfg, &layout, batch, Mode::Train, momentum, &t)?;
        by_precision.insert(dtype, m.report.total());
    }
    Ok(PlanReport {
        preset: args.preset.name(),
        dataset: args.dataset.name(),
        batch,
        precision: args.precision,
        parameters: layout.parameter_count(),
        training: side(&train),
        evaluation: side(&eval),
        naive_training_bytes: naive_training_bytes(
            &cfg,
            &layout,
            batch,
            recipe.momentum > 0.0,
            args.precision,
        )
        .total(),
        training_bytes_by_precision: by_precision,
    })
}

impl PlanReport {
    /// The report as a table per plan and a summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} ({} parameters) on {} shapes, batch {}, activations in {}\n",
            self.preset, self.parameters, self.dataset, self.batch, self.precision
        );
        for (name, s) in [
            ("training", &self.training),
            ("evaluation", &self.evaluation),
        ] {
            let _ = writeln!(out, "\n{name} plan: {:.1} MiB", mib(s.total_bytes));
            let _ = writeln!(
                out,
                "  {:<44} {:<22} {:>9} {:>5}  live",
                "buffer", "shape", "MiB", "slot"
            );
            for r in &s.buffers {
                let dims: Vec<String> = r.shape.iter().map(u64::to_string).collect();
                let slot = r.slot.map_or(String::new(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "  {:<44} {:<22} {:>9.3} {:>5}  {}",
                    r.name,
                    format!("({})", dims.join(", ")),
                    mib(r.bytes),
                    slot,
                    r.live
                );
            }
            let cats: Vec<String> = s
                .categories
                .iter()
                .map(|(c, b)| format!("{c} {:.1}", mib(*b)))
                .collect();
            let _ = writeln!(out, "  by category (MiB): {}", cats.join(", "));
            let _ = writeln!(
                out,
                "  per-step tensors: {:.1} MiB in {} shared slots, each counted under its largest \
                 tensor's category ({:.1} MiB without sharing)",
                mib(s.slot_bytes.iter().sum()),
                s.slot_bytes.len(),
                mib(s.unshared_tensor_bytes)
            );
        }
        let _ = writeln!(
            out,
            "\ntotal: training {:.1} MiB, evaluation {:.1} MiB; a naive DenseNet's training step \
             (every concatenation, BN, ReLU, conv and pool output kept) holds {:.1} MiB",
            mib(self.training.total_bytes),
            mib(self.evaluation.total_bytes),
            mib(self.naive_training_bytes)
        );
        let by = &self.training_bytes_by_precision;
        if let (Some(&f32_bytes), Some(&f16_bytes)) = (by.get(&DType::F32), by.get(&DType::F16)) {
            let _ = writeln!(
                out,
                "training plan by precision (--precision): f32 {:.1} MiB, f16 {:.1} MiB ({:.1}%)",
                mib(f32_bytes),
                mib(f16_bytes),
                100.0 * f16_bytes as f64 / f32_bytes as f64
            );
        }
        out
    }
}
