//! [`Policy`]: which variant of each op a launch uses. By default each op's own rule decides
//! (given the adapter class and the launch's shape); `--kernels` forces variants.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use super::{Config, Shader, Variant};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// What kind of device runs the kernels: CPU drivers (llvmpipe, SwiftShader, WARP) favour
/// barrier-free register tiles, GPUs favour workgroup-memory tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceClass {
    Cpu,
    Gpu,
}

impl DeviceClass {
    pub fn of(gpu: &Gpu) -> DeviceClass {
        match gpu.is_software() {
            true => DeviceClass::Cpu,
            false => DeviceClass::Gpu,
        }
    }
}

/// Tuned configurations by launch key (an op's entry, element type and shape, as the op
/// writes it): what the tuner measured fastest on this device, or what a checkpoint
/// recorded.
pub type Tuned = BTreeMap<String, Config>;

/// The variant choice of every launch.
#[derive(Clone, Debug)]
pub struct Policy {
    pub class: DeviceClass,
    /// Ops whose configuration is forced, and the configuration.
    forced: Vec<(&'static str, Config)>,
    /// Per-launch configurations from tuning; a forced op ignores them.
    tuned: Arc<Tuned>,
    /// Where the policy came from, for `info` and logs.
    pub origin: String,
}

impl Policy {
    /// Every op decides by its own rule for a device of `class`.
    pub fn auto(class: DeviceClass) -> Policy {
        Policy {
            class,
            forced: Vec::new(),
            tuned: Arc::default(),
            origin: format!("auto for a {class:?} adapter"),
        }
    }

    /// This policy with per-launch configurations `tuned` (replacing any before).
    pub fn with_tuned(mut self, tuned: Tuned) -> Policy {
        self.tuned = Arc::new(tuned);
        self
    }

    /// This policy with `op` forced to `config` (e.g. where the self-check found the rule's
    /// choice wrong on this device).
    pub fn with_forced(mut self, op: &'static str, config: Config) -> Policy {
        self.forced.retain(|(o, _)| *o != op);
        self.forced.push((op, config));
        self
    }

    /// The tuned configurations.
    pub fn tuned(&self) -> &Tuned {
        &self.tuned
    }

    /// The configuration of the launch `key` of `op`: the forced one, else the tuned one.
    /// `None`: the op's own rule decides.
    pub fn config_for(&self, op: &str, key: &str) -> Option<Config> {
        match self.forced.iter().find(|(o, _)| *o == op) {
            Some((_, c)) => Some(*c),
            None => self.tuned.get(key).copied(),
        }
    }

    pub fn for_adapter(gpu: &Gpu) -> Policy {
        Policy::auto(DeviceClass::of(gpu))
    }

    /// Parses `--kernels`: `auto`, or a comma-separated list of `VARIANT` (forced for every
    /// op that has it) and `OP=VARIANT` items; a variant may name a split setting
    /// (`wgtile@more-splits`, see [`Config::name`]). `shaders` are the ones that may be named.
    pub fn parse(spec: &str, class: DeviceClass, shaders: &[&'static Shader]) -> Result<Policy> {
        let mut policy = Policy::auto(class);
        if spec.trim() == "auto" {
            return Ok(policy);
        }
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (op, name) = match item.split_once('=') {
                Some((op, name)) => (Some(op.trim()), name.trim()),
                None => (None, item),
            };
            let mut matched = false;
            for &s in shaders.iter().filter(|s| op.is_none_or(|op| op == s.op)) {
                if let Some(c) = Config::find(s, name) {
                    policy.forced.retain(|(o, _)| *o != s.op);
                    policy.forced.push((s.op, c));
                    matched = true;
                }
            }
            if !matched {
                return Err(Error::Usage(format!(
                    "--kernels {spec}: no op has a variant {item:?}; choose from {}",
                    known_variants(shaders)
                )));
            }
        }
        policy.origin = format!("--kernels {spec}");
        Ok(policy)
    }

    /// The variant of an op for one launch, among the variants of its `shaders`: the forced
    /// one, else `auto` (the op's own rule's pick, a variant name of one of them).
    pub fn choose(&self, shaders: &[&'static Shader], auto: &str) -> &'static Variant {
        let op = shaders[0].op;
        if let Some((_, c)) = self.forced.iter().find(|(o, _)| *o == op) {
            return c.variant;
        }
        let found = shaders.iter().find_map(|s| s.find_variant(auto));
        debug_assert!(found.is_some(), "{op} has no variant {auto}");
        found.unwrap_or(&shaders[0].variants[0])
    }

    /// The forced variant of `op`, if any.
    pub fn forced(&self, op: &str) -> Option<&'static Variant> {
        self.forced
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, c)| c.variant)
    }

    /// One line per op with more than one variant: the variants and how one is chosen.
    pub fn describe(&self, shaders: &[&'static Shader]) -> String {
        let mut out = format!("kernel policy: {}\n", self.origin);
        for (op, group) in by_op(shaders)
            .into_iter()
            .filter(|(_, g)| variants(g).len() > 1)
        {
            let names: Vec<&str> = variants(&group).iter().map(|v| v.name).collect();
            let forced = self.forced.iter().find(|(o, _)| *o == op);
            let how = match forced {
                Some((_, c)) => format!("forced {}", c.name()),
                None => group[0].choice.to_string(),
            };
            let _ = writeln!(out, "  {op}: {} ({how})", names.join(" | "));
            for v in variants(&group) {
                let _ = writeln!(out, "    {}: {}", v.name, v.about);
            }
        }
        out
    }
}

/// Shaders grouped by op, in first-seen order.
fn by_op(shaders: &[&'static Shader]) -> Vec<(&'static str, Vec<&'static Shader>)> {
    let mut out: Vec<(&'static str, Vec<&'static Shader>)> = Vec::new();
    for &s in shaders {
        match out.iter_mut().find(|(op, _)| *op == s.op) {
            Some((_, g)) => g.push(s),
            None => out.push((s.op, vec![s])),
        }
    }
    out
}

/// Every variant of a group of shaders.
fn variants(group: &[&'static Shader]) -> Vec<&'static Variant> {
    group.iter().flat_map(|s| s.variants.iter()).collect()
}

fn known_variants(shaders: &[&'static Shader]) -> String {
    let parts: Vec<String> = by_op(shaders)
        .into_iter()
        .filter(|(_, g)| variants(g).len() > 1)
        .map(|(op, g)| {
            let names: Vec<&str> = variants(&g).iter().map(|v| v.name).collect();
            format!("{op}={}", names.join("|"))
        })
        .collect();
    format!("auto, {}", parts.join(", "))
}
