//! The kernel registry and the one way every op is launched.
//!
//! Each op module declares its WGSL file as a [`Shader`] and each entry point as a static
//! [`Entry`] that points back at it: the storage bindings it uses (with their access and
//! element kind) and its workgroup size. Binding 0 is always the op's uniform params struct.
//! A shader may come in several [`Variant`]s (register-tile sizes, later workgroup-tiled or
//! cooperative-matrix versions) and element types; a [`Kernel`] is one entry of one variant
//! for one element type, and that triple is the key under which [`Kernels`] compiles and
//! caches its pipeline. Launchers hand over their own `&'static Entry`: nothing is looked up
//! by name, so no table of all shaders is needed at run time and this module imports no op.
//! (The op layer keeps that table, for `info`, `--kernels` and the tests.)
//!
//! Which variant a launch uses is the [`Policy`]'s choice: per adapter class by default,
//! forced with `--kernels`.
//!
//! Imports run one way: `ops` -> `kernels` -> `gpu`.

mod dispatch;
mod policy;
mod registry;

pub use dispatch::{fold_grid, submit, Cost, Dispatch, Grid};
pub use policy::{DeviceClass, Policy, Tuned};
pub use registry::{Kernels, Pipeline};

use crate::gpu::{CoopShape, DType, Gpu};

/// How an entry point uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// What a storage binding holds: values of the kernel's element type (activations and
/// their gradients: `act` in the WGSL), f32s whatever the kernel's type (parameters,
/// statistics, partial sums), or u32s (labels, indices, counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    Float,
    F32,
    U32,
}

/// One storage binding of an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub index: u32,
    pub access: Access,
    pub elem: Elem,
}

/// Read-only values of the kernel's element type at `index`.
pub const fn read(index: u32) -> Binding {
    Binding {
        index,
        access: Access::Read,
        elem: Elem::Float,
    }
}

/// Written values of the kernel's element type at `index`.
pub const fn write(index: u32) -> Binding {
    Binding {
        index,
        access: Access::ReadWrite,
        elem: Elem::Float,
    }
}

/// Read-only f32s at `index` (parameters, statistics), whatever the kernel's element type.
pub const fn read_f32(index: u32) -> Binding {
    Binding {
        index,
        access: Access::Read,
        elem: Elem::F32,
    }
}

/// Written f32s at `index` (parameter gradients, statistics, partial sums).
pub const fn write_f32(index: u32) -> Binding {
    Binding {
        index,
        access: Access::ReadWrite,
        elem: Elem::F32,
    }
}

/// Read-only u32s at `index`.
pub const fn read_u32(index: u32) -> Binding {
    Binding {
        index,
        access: Access::Read,
        elem: Elem::U32,
    }
}

/// Written u32s at `index`.
pub const fn write_u32(index: u32) -> Binding {
    Binding {
        index,
        access: Access::ReadWrite,
        elem: Elem::U32,
    }
}

/// One WGSL entry point: its name (shared with the reference and the launcher), its shader,
/// the storage bindings it touches (binding 0, the params uniform, is implied) and its
/// workgroup size.
#[derive(Debug)]
pub struct Entry {
    pub shader: &'static Shader,
    pub name: &'static str,
    pub bindings: &'static [Binding],
    pub workgroup_size: u32,
    /// `size_of` the Rust params struct bound at binding 0.
    pub params_size: usize,
}

impl Entry {
    /// An entry point of `shader` whose params uniform is a `P`.
    pub const fn new<P>(
        shader: &'static Shader,
        name: &'static str,
        bindings: &'static [Binding],
        workgroup_size: u32,
    ) -> Entry {
        Entry {
            shader,
            name,
            bindings,
            workgroup_size,
            params_size: std::mem::size_of::<P>(),
        }
    }

    /// This entry in the shader's first (default) variant, for elements of `dtype`.
    pub fn kernel(&'static self, dtype: DType) -> Kernel {
        Kernel {
            entry: self,
            variant: &self.shader.variants[0],
            dtype,
        }
    }

    /// This entry in `variant`, for elements of `dtype`.
    pub fn variant(&'static self, variant: &'static Variant, dtype: DType) -> Kernel {
        Kernel {
            entry: self,
            variant,
            dtype,
        }
    }
}

/// One implementation of every entry point of a shader, e.g. a register-tile size.
#[derive(Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    /// One line for `info` and `--kernels` errors.
    pub about: &'static str,
    /// What the adapter must have to run it.
    pub needs: Needs,
    /// Its candidate configurations for tuning: the split settings it can run with (the
    /// first is its default). Only launches that split a reduction differ between them.
    pub splits: &'static [Split],
}

/// The only variant of a shader that has one.
pub const PLAIN: Variant = Variant {
    name: "plain",
    about: "the one implementation",
    needs: Needs::Nothing,
    splits: &[Split::Default],
};

/// How far a launch that splits a reduction into partial sums (split-K) splits it: each
/// op's rule aims its splits at a number of workgroups; `Fewer` aims at a quarter of that,
/// `More` at four times. A configuration axis of the tuner: fewer splits add less traffic,
/// more fill a larger device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Default,
    Fewer,
    More,
}

impl Split {
    pub const ALL: &'static [Split] = &[Split::Default, Split::Fewer, Split::More];

    /// `target` workgroups scaled by this setting.
    pub fn scale(self, target: u64) -> u64 {
        match self {
            Split::Default => target,
            Split::Fewer => (target / 4).max(1),
            Split::More => target * 4,
        }
    }

    /// The suffix of a configuration's name: `""`, `@fewer-splits`, `@more-splits`.
    pub fn suffix(self) -> &'static str {
        match self {
            Split::Default => "",
            Split::Fewer => "@fewer-splits",
            Split::More => "@more-splits",
        }
    }
}

/// One candidate configuration of a launch: a variant and its split setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub variant: &'static Variant,
    pub split: Split,
}

impl Config {
    /// A variant in its default configuration.
    pub fn of(variant: &'static Variant) -> Config {
        Config {
            variant,
            split: Split::Default,
        }
    }

    /// `VARIANT` or `VARIANT@fewer-splits` / `VARIANT@more-splits`, as `--kernels`, the
    /// tuning cache and the checkpoint name it.
    pub fn name(&self) -> String {
        format!("{}{}", self.variant.name, self.split.suffix())
    }

    /// The configuration called `name` among `shaders` if `gpu` runs it with `dtype`
    /// elements: what a tuning cache or checkpoint entry may name.
    pub fn runnable(
        shaders: &[&'static Shader],
        name: &str,
        dtype: DType,
        gpu: &Gpu,
    ) -> Option<Config> {
        shaders
            .iter()
            .filter(|s| s.dtypes.contains(&dtype))
            .find_map(|s| Config::find(s, name))
            .filter(|c| c.variant.needs.unmet(gpu).is_none())
    }

    /// The configuration of `shader` called `name` (see [`Config::name`]), if it has one.
    pub fn find(shader: &'static Shader, name: &str) -> Option<Config> {
        let (variant, split) = match name.split_once('@') {
            Some((v, s)) => (
                v,
                Split::ALL.iter().find(|x| x.suffix() == format!("@{s}"))?,
            ),
            None => (name, &Split::Default),
        };
        let variant = shader.find_variant(variant)?;
        variant.splits.contains(split).then_some(Config {
            variant,
            split: *split,
        })
    }
}

/// What an adapter must have to run a variant, beyond what every kernel needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// Cooperative matrices of `size` x `size` x `size` with f16 operands and f32
    /// accumulators, and subgroups of exactly `subgroup` invocations: the kernel lays its
    /// fragments out for the number of subgroups a workgroup then has.
    CoopMatrix {
        size: u32,
        subgroup: u32,
    },
}

impl Needs {
    /// Why `gpu` cannot run a variant with these needs, or `None` if it can.
    pub fn unmet(self, gpu: &Gpu) -> Option<String> {
        let Needs::CoopMatrix { size, subgroup } = self else {
            return None;
        };
        let shape = CoopShape {
            m: size,
            n: size,
            k: size,
        };
        let (lo, hi) = (gpu.info.subgroup_min_size, gpu.info.subgroup_max_size);
        let f16_subgroups = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        if !gpu.features.contains(f16_subgroups) {
            let missing: Vec<&str> = [
                (wgpu::Features::SHADER_F16, "SHADER_F16"),
                (wgpu::Features::SUBGROUP, "SUBGROUP"),
            ]
            .into_iter()
            .filter(|(f, _)| !gpu.features.contains(*f))
            .map(|(_, name)| name)
            .collect();
            return Some(format!(
                "needs SHADER_F16 and SUBGROUP; {} ({:?}) lacks {}",
                gpu.info.name,
                gpu.info.backend,
                missing.join(" and ")
            ));
        }
        if !gpu.coop.contains(&shape) {
            let have: Vec<String> = gpu.coop.iter().map(|s| s.to_string()).collect();
            let have = match have.is_empty() {
                true => "none".to_string(),
                false => have.join(", "),
            };
            return Some(format!(
                "needs {shape} f16 x f16 -> f32 cooperative matrices; {} has {have}",
                gpu.info.name
            ));
        }
        if (lo, hi) != (subgroup, subgroup) {
            return Some(format!(
                "needs subgroups of exactly {subgroup} invocations; {} has {lo}..{hi}",
                gpu.info.name
            ));
        }
        None
    }
}

/// Where a shader's WGSL comes from.
#[derive(Debug)]
pub enum Source {
    /// One file for every variant and element type.
    File(&'static str),
    /// Generated from Rust for each (variant, element type), e.g. a register tile of the
    /// variant's size.
    Generated(fn(&Variant, DType) -> String),
}

/// One WGSL file: its entry points, variants and element types.
#[derive(Debug)]
pub struct Shader {
    /// The op it implements, as `--kernels` names it.
    pub op: &'static str,
    pub file: &'static str,
    pub source: Source,
    pub entries: &'static [&'static Entry],
    /// The first is the default; the policy may choose another.
    pub variants: &'static [Variant],
    /// How the policy chooses among the variants when it is not forced (for `info`).
    pub choice: &'static str,
    /// The element types its kernels exist for.
    pub dtypes: &'static [DType],
}

/// Helpers every kernel may use; prepended to each op's source.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

impl Shader {
    /// The source as compiled for `variant` and `dtype`: the op's `enable` directives (which
    /// WGSL wants before any declaration), `alias act` (the activations' element type:
    /// `dtype`), the common helpers, then the op's own code.
    pub fn full_source(&self, variant: &Variant, dtype: DType) -> String {
        let own = match self.source {
            Source::File(text) => text.to_string(),
            Source::Generated(generate) => generate(variant, dtype),
        };
        let is_enable = |l: &&str| l.trim_start().starts_with("enable ");
        let mut enables: Vec<&str> = own.lines().filter(is_enable).map(str::trim).collect();
        // `act`: the element type of the activations and their gradients.
        let act = match dtype {
            DType::F16 => {
                enables.insert(0, "enable f16;");
                "alias act = f16;"
            }
            DType::F32 | DType::U32 => "alias act = f32;",
        };
        enables.sort_unstable();
        enables.dedup();
        let rest: Vec<&str> = own.lines().filter(|l| !is_enable(l)).collect();
        format!(
            "{}\n{act}\n{COMMON_WGSL}\n{}\n",
            enables.join("\n"),
            rest.join("\n")
        )
    }

    /// The variant called `name`, if the shader has it.
    pub fn find_variant(&'static self, name: &str) -> Option<&'static Variant> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// Every kernel this shader provides: each entry in each variant and element type.
    pub fn kernels(&'static self) -> impl Iterator<Item = Kernel> {
        self.entries.iter().flat_map(move |e| {
            self.variants.iter().flat_map(move |v| {
                self.dtypes.iter().map(move |&d| Kernel {
                    entry: e,
                    variant: v,
                    dtype: d,
                })
            })
        })
    }
}

/// One compiled unit: an entry point in one variant for one element type.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub entry: &'static Entry,
    pub variant: &'static Variant,
    pub dtype: DType,
}

impl Kernel {
    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// `entry[variant,dtype]`, or `entry[dtype]` for an op with one plain implementation.
    pub fn label(&self) -> String {
        match self.variant.name == PLAIN.name {
            true => format!("{}[{}]", self.entry.name, self.dtype),
            false => format!("{}[{},{}]", self.entry.name, self.variant.name, self.dtype),
        }
    }

    /// The cache key: shader file, entry, variant, element type.
    pub(crate) fn key(&self) -> (&'static str, &'static str, &'static str, DType) {
        (
            self.entry.shader.file,
            self.entry.name,
            self.variant.name,
            self.dtype,
        )
    }
}
