//! Checked before trusted: every configuration a run may launch passes the self-check
//! ([`crate::selfcheck`]) on this device first. Verdicts are kept per device in the
//! self-check cache beside the tuning cache, so a device, driver and release is checked
//! once and later runs pay nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::device_cache::device_key;
use crate::gpu::DType;
use crate::kernels::{Config, Kernels};
use crate::selfcheck::cache::{path_beside, CheckCache, Verdict};
use crate::selfcheck::{self, Item, Net, Target};

/// What the self-check did in a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Whether it ran at all (`--self-check off` turns it off).
    pub enabled: bool,
    /// Items checked in this run, and items whose verdict came from the cache file.
    pub checked: usize,
    pub cached: usize,
    /// Items that failed: label and what failed.
    pub failed: Vec<(String, String)>,
    /// Seconds spent checking (kernels compiled and run).
    pub seconds: f64,
    pub cache: Option<PathBuf>,
}

/// The verdicts of one run: the cache's, and those found now.
pub(super) struct Checker<'k> {
    k: &'k Kernels,
    device: String,
    known: BTreeMap<String, Verdict>,
    fresh: BTreeMap<String, Verdict>,
    /// Items whose cached verdict this run used.
    consulted: BTreeSet<String>,
    pub report: CheckReport,
}

/// The kind of item a configuration belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Conv,
    BatchNorm,
}

impl<'k> Checker<'k> {
    /// The checker of `k`'s device, with the verdicts cached beside `tune_cache`; `enabled`
    /// false: everything passes unchecked. A cache that cannot be read is a warning.
    pub fn new(
        k: &'k Kernels,
        enabled: bool,
        tune_cache: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Checker<'k> {
        let device = device_key(k.gpu());
        let path = tune_cache.map(path_beside);
        let known = match (&path, enabled) {
            (Some(p), true) => {
                let (cache, warning) = CheckCache::load(p);
                warnings.extend(warning.map(|w| format!("{w}; checking again")));
                cache.device(&device).cloned().unwrap_or_default()
            }
            _ => BTreeMap::new(),
        };
        Checker {
            k,
            device,
            known,
            fresh: BTreeMap::new(),
            consulted: BTreeSet::new(),
            report: CheckReport {
                enabled,
                cache: path,
                ..CheckReport::default()
            },
        }
    }

    /// Whether `item` passes: from the cache, or checked now. The network item runs with
    /// `network`'s convolution and batch-norm configurations.
    pub fn passes(&mut self, item: Item, network: (Config, Config)) -> bool {
        if !self.report.enabled {
            return true;
        }
        let label = item.label();
        // A passing check of every kernel covers a check of some of them.
        let all = Item {
            target: Target::Network(Net::ALL),
            ..item
        };
        let covered = match item.target {
            Target::Network(_) => self.known.get(&all.label()).filter(|v| v.passed),
            _ => None,
        };
        let verdict = match self.known.get(&label).or(covered) {
            Some(v) => {
                // Counted once per item, and not for one checked in this run.
                if !self.fresh.contains_key(&label) && self.consulted.insert(label.clone()) {
                    self.report.cached += 1;
                }
                v.clone()
            }
            None => {
                let start = Instant::now();
                let checked = selfcheck::run(self.k, item, network);
                self.report.seconds += start.elapsed().as_secs_f64();
                self.report.checked += 1;
                let v = Verdict::from(&checked);
                self.known.insert(label.clone(), v.clone());
                self.fresh.insert(label.clone(), v.clone());
                v
            }
        };
        if !verdict.passed && !self.report.failed.iter().any(|(l, _)| *l == label) {
            self.report.failed.push((label, verdict.failures.clone()));
        }
        verdict.passed
    }

    /// Whether configuration `c` of `kind` passes in `dtype`.
    pub fn config_passes(&mut self, kind: Kind, c: Config, dtype: DType) -> bool {
        let target = match kind {
            Kind::Conv => Target::Conv(c),
            Kind::BatchNorm => Target::BatchNorm(c),
        };
        let unused = (c, c);
        self.passes(Item { target, dtype }, unused)
    }

    /// The first of `configs` that passes.
    pub fn first_passing(
        &mut self,
        kind: Kind,
        dtype: DType,
        configs: impl IntoIterator<Item = Config>,
    ) -> Option<Config> {
        configs
            .into_iter()
            .find(|&c| self.config_passes(kind, c, dtype))
    }

    /// Why `label` failed, as the checker found it.
    pub fn failures(&self, label: &str) -> String {
        self.known
            .get(label)
            .map_or_else(String::new, |v| v.failures.clone())
    }

    /// Keeps the verdicts found in this run in the cache; a warning if that fails.
    pub fn store(&self) -> Option<String> {
        let path = self.report.cache.as_ref()?;
        if self.fresh.is_empty() {
            return None;
        }
        CheckCache::store(path, &self.device, &self.fresh)
            .err()
            .map(|e| format!("{e:#}; the verdicts are used but not kept"))
    }
}
