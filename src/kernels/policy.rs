//! [`Policy`]: which variant of each op a launch uses. By default each op's own rule decides
//! (given the adapter class and the launch's shape); `--kernels` forces variants.

use std::fmt::Write;

use super::{Shader, Variant};
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

/// The variant choice of every launch.
#[derive(Clone, Debug)]
pub struct Policy {
    pub class: DeviceClass,
    /// Ops whose variant is forced, and the variant.
    forced: Vec<(&'static str, &'static Variant)>,
    /// Where the policy came from, for `info` and logs.
    pub origin: String,
}

impl Policy {
    /// Every op decides by its own rule for a device of `class`.
    pub fn auto(class: DeviceClass) -> Policy {
        Policy {
            class,
            forced: Vec::new(),
            origin: format!("auto for a {class:?} adapter"),
        }
    }

    pub fn for_adapter(gpu: &Gpu) -> Policy {
        Policy::auto(DeviceClass::of(gpu))
    }

    /// Parses `--kernels`: `auto`, or a comma-separated list of `VARIANT` (forced for every
    /// op that has it) and `OP=VARIANT` items. `shaders` are the ones that may be named.
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
                if let Some(v) = s.find_variant(name) {
                    policy.forced.retain(|(o, _)| *o != s.op);
                    policy.forced.push((s.op, v));
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

    /// The variant of `shader` for one launch: the forced one, else `auto` (the op's own
    /// rule's pick, a variant name of the shader).
    pub fn choose(&self, shader: &'static Shader, auto: &str) -> &'static Variant {
        if let Some((_, v)) = self.forced.iter().find(|(op, _)| *op == shader.op) {
            return v;
        }
        let found = shader.find_variant(auto);
        debug_assert!(found.is_some(), "{} has no variant {auto}", shader.file);
        found.unwrap_or(&shader.variants[0])
    }

    /// The forced variant of `op`, if any.
    pub fn forced(&self, op: &str) -> Option<&'static Variant> {
        self.forced.iter().find(|(o, _)| *o == op).map(|(_, v)| *v)
    }

    /// One line per op with more than one variant: the variants and how one is chosen.
    pub fn describe(&self, shaders: &[&'static Shader]) -> String {
        let mut out = format!("kernel policy: {}\n", self.origin);
        for s in shaders.iter().filter(|s| s.variants.len() > 1) {
            let names: Vec<&str> = s.variants.iter().map(|v| v.name).collect();
            let how = match self.forced(s.op) {
                Some(v) => format!("forced {}", v.name),
                None => s.choice.to_string(),
            };
            let _ = writeln!(out, "  {}: {} ({how})", s.op, names.join(" | "));
            for v in s.variants {
                let _ = writeln!(out, "    {}: {}", v.name, v.about);
            }
        }
        out
    }
}

fn known_variants(shaders: &[&'static Shader]) -> String {
    let parts: Vec<String> = shaders
        .iter()
        .filter(|s| s.variants.len() > 1)
        .map(|s| {
            let names: Vec<&str> = s.variants.iter().map(|v| v.name).collect();
            format!("{}={}", s.op, names.join("|"))
        })
        .collect();
    format!("auto, {}", parts.join(", "))
}
