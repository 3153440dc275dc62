//! Where a plan's memory goes, computed without a device.
//!
//! A plan has two kinds of buffers. State that outlives a step (parameters, their
//! gradients and momentum, statistics, the batch, metrics) gets a buffer each. Everything a
//! step creates and consumes (activations, their gradients, workspaces) is a [`TensorSpec`]
//! that says in which stages of the step it is live; [`place`] then puts tensors whose
//! lifetimes do not overlap into the same buffer (a "slot"), so that memory follows the
//! largest set of tensors alive at once rather than the sum of all of them.
//!
//! Stages: each node of the network (stem, dense layer, transition, head) has one forward
//! stage and, in a training plan, one or more backward stages; the step runs the forward
//! stages in order, then the backward stages of the nodes in reverse order.

use std::fmt;

use serde::Serialize;

use crate::gpu::DType;

/// A position in a step's order of stages.
pub type Stage = u32;

/// What a buffer holds, for the memory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Weights, their gradients, momentum.
    Parameters,
    /// Batch and running statistics, fused BN coefficients.
    Statistics,
    /// The batch and its labels.
    Input,
    /// Forward outputs kept for later stages.
    Activations,
    /// Gradients of activations.
    Gradients,
    /// Workspaces and partial sums.
    Scratch,
    /// Logits, loss and accuracy accumulators.
    Outputs,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Parameters => "parameters",
            Category::Statistics => "statistics",
            Category::Input => "input",
            Category::Activations => "activations",
            Category::Gradients => "gradients",
            Category::Scratch => "scratch",
            Category::Outputs => "outputs",
        }
    }
}

/// One buffer or tensor of a plan: its name, shape (outermost first; activations are
/// channel-major, (C, N, H, W)), element type and category.
#[derive(Clone, Debug, Serialize)]
pub struct BufferSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub category: Category,
}

impl BufferSpec {
    pub fn elems(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes as allocated (at least one 4-byte word).
    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.elems().max(1))
    }

    /// The shape as `(a, b, c)`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(u64::to_string).collect();
        format!("({})", dims.join(", "))
    }
}

/// A per-step tensor: live from the start of stage `first` to the end of stage `last`.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSpec {
    #[serde(flatten)]
    pub spec: BufferSpec,
    pub first: Stage,
    pub last: Stage,
}

impl TensorSpec {
    fn overlaps(&self, other: &TensorSpec) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Index of a tensor in its [`TensorTable`].
pub type TensorId = usize;

/// The per-step tensors of a plan, as the nodes declare them.
#[derive(Clone, Debug, Default)]
pub struct TensorTable {
    pub specs: Vec<TensorSpec>,
}

impl TensorTable {
    /// Declares a tensor of `shape` live over stages [first, last].
    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        dtype: DType,
        category: Category,
        live: (Stage, Stage),
    ) -> TensorId {
        debug_assert!(live.0 <= live.1);
        self.specs.push(TensorSpec {
            spec: BufferSpec {
                name: name.into(),
                shape: shape.to_vec(),
                dtype,
                category,
            },
            first: live.0,
            last: live.1,
        });
        self.specs.len() - 1
    }
}

/// Which slot holds each tensor, and each slot's size in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    pub slot_of: Vec<usize>,
    pub slot_bytes: Vec<u64>,
}

impl Placement {
    pub fn total(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// Puts tensors into slots so that no two tensors of a slot are live in the same stage:
/// largest first, each into the smallest slot free over its lifetime, else a new slot.
/// Since tensors come largest first, a slot's size is that of its first tensor and never
/// grows.
pub fn place(specs: &[TensorSpec]) -> Placement {
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(specs[i].spec.bytes()), specs[i].first, i));
    let mut slot_of = vec![usize::MAX; specs.len()];
    let mut slots: Vec<(u64, Vec<usize>)> = Vec::new();
    for i in order {
        let free = slots
            .iter()
            .enumerate()
            .filter(|(_, (_, held))| held.iter().all(|&j| !specs[j].overlaps(&specs[i])))
            .min_by_key(|(s, (bytes, _))| (*bytes, *s))
            .map(|(s, _)| s);
        let s = free.unwrap_or_else(|| {
            slots.push((specs[i].spec.bytes(), Vec::new()));
            slots.len() - 1
        });
        slots[s].1.push(i);
        slot_of[i] = s;
    }
    Placement {
        slot_of,
        slot_bytes: slots.into_iter().map(|(b, _)| b).collect(),
    }
}

/// Planned device memory by category.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryReport {
    pub rows: Vec<(Category, u64)>,
}

impl MemoryReport {
    pub fn add(&mut self, category: Category, bytes: u64) {
        match self.rows.iter_mut().find(|(c, _)| *c == category) {
            Some(row) => row.1 += bytes,
            None => {
                self.rows.push((category, bytes));
                self.rows.sort();
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.rows.iter().map(|r| r.1).sum()
    }

    pub fn get(&self, category: Category) -> u64 {
        self.rows
            .iter()
            .find(|(c, _)| *c == category)
            .map_or(0, |r| r.1)
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, b) in &self.rows {
            write!(f, "{} {:.1} MiB, ", c.name(), mib(*b))?;
        }
        write!(f, "total {:.1} MiB", mib(self.total()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(table: &mut TensorTable, elems: u64, live: (Stage, Stage)) -> TensorId {
        table.add("t", &[elems], DType::F32, Category::Scratch, live)
    }

    #[test]
    fn disjoint_lifetimes_share_a_slot() {
        let mut table = TensorTable::default();
        let a = t(&mut table, 100, (0, 1));
        let b = t(&mut table, 50, (2, 3));
        let c = t(&mut table, 70, (1, 2));
        let p = place(&table.specs);
        assert_eq!(p.slot_of[a], p.slot_of[b]);
        assert_ne!(p.slot_of[a], p.slot_of[c]);
        assert_eq!(p.total(), 400 + 280);
    }

    #[test]
    fn overlapping_lifetimes_never_share() {
        let mut table = TensorTable::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let first = rng.u32(0..40);
            t(
                &mut table,
                rng.u64(1..1000),
                (first, first + rng.u32(0..10)),
            );
        }
        let p = place(&table.specs);
        for (i, a) in table.specs.iter().enumerate() {
            assert!(a.spec.bytes() <= p.slot_bytes[p.slot_of[i]]);
            for (j, b) in table.specs.iter().enumerate().skip(i + 1) {
                if p.slot_of[i] == p.slot_of[j] {
                    assert!(
                        !a.overlaps(b),
                        "tensors {i} and {j} share a slot while both live"
                    );
                }
            }
        }
    }
}
