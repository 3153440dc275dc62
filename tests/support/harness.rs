//! The harness of the test binaries that touch the GPU (libtest-mimic, `harness = false`):
//! libtest's output and flags, plus what libtest cannot do.
//!
//! - A case that needs an adapter feature this adapter lacks (SHADER_F16, cooperative
//!   matrices, timestamp queries, subgroups) is reported as ignored, with the missing feature
//!   on its line (`test linear::linear_forward_matches_reference[f16] ... ignored (needs
//!   SHADER_F16, which llvmpipe ... (Gl) lacks)`), and counted as ignored in the summary:
//!   never as passed. `DENSENET_REQUIRE=f16,coop,...` turns those skips into failures, so CI
//!   notices a case skipped by accident wherever its adapter has the feature (`coop`: where
//!   no cooperative-matrix variant runs at all; a variant of a shape the adapter lacks is
//!   still skipped).
//! - On wgpu's GL backend the cases run one at a time: the GL context is one lock shared by
//!   every thread, which wgpu-hal gives up on after 6 s (a panic), and a buffer dropped
//!   while that panic unwinds panics again, which aborts the whole binary.
//! - What a case prints through [`note`] is kept and shown only when the case fails (libtest
//!   captures output; libtest-mimic cannot).

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{Config, Needs, Variant};
use densenet_wgpu::Kernels;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

use super::gpu;

/// What a case needs of the adapter beyond what every kernel needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// An adapter feature: its `DENSENET_REQUIRE` name, wgpu's name and the wgpu feature.
    Feature(&'static str, &'static str, wgpu::Features),
    /// A kernel variant's needs (the cooperative-matrix ones: `DENSENET_REQUIRE` name `coop`).
    Variant(&'static Variant),
    /// The large torchvision fixtures, outside the repository (`DENSENET_REQUIRE` name
    /// `fixtures`; see tests/fixtures/torchvision/README.md).
    Fixtures,
}

/// densenet121's torchvision fixtures.
pub const FIXTURES: Need = Need::Fixtures;

/// f16 storage and arithmetic in WGSL (`enable f16`).
pub const F16: Need = Need::Feature("f16", "SHADER_F16", wgpu::Features::SHADER_F16);
/// GPU timestamps around passes.
pub const TIMESTAMPS: Need = Need::Feature(
    "timestamps",
    "TIMESTAMP_QUERY",
    wgpu::Features::TIMESTAMP_QUERY,
);
/// Subgroup operations.
pub const SUBGROUPS: Need = Need::Feature("subgroups", "SUBGROUP", wgpu::Features::SUBGROUP);

/// The names `DENSENET_REQUIRE` may list.
const REQUIRABLE: [&str; 5] = ["f16", "coop", "timestamps", "subgroups", "fixtures"];

impl Need {
    /// Its `DENSENET_REQUIRE` name.
    fn name(&self) -> &'static str {
        match self {
            Need::Feature(name, ..) => name,
            Need::Variant(_) => "coop",
            Need::Fixtures => "fixtures",
        }
    }

    /// Whether `DENSENET_REQUIRE` naming it turns this unmet need into a failure. A feature:
    /// always. `coop` asks for cooperative matrices, not for every shape of them: no adapter
    /// has both variants' (lavapipe 26.1 has 8x8x8 only, NVIDIA 16x16x16), so a variant of
    /// a shape the adapter lacks is skipped with its reason as long as another
    /// cooperative-matrix variant runs here, and fails where none does.
    fn required_here(&self) -> bool {
        match self {
            Need::Feature(..) | Need::Fixtures => true,
            Need::Variant(_) => !densenet_wgpu::ops::SHADERS
                .iter()
                .flat_map(|s| s.variants.iter())
                .any(|v| v.needs != Needs::Nothing && v.needs.unmet(gpu()).is_none()),
        }
    }

    /// Why this adapter does not meet it, or `None` if it does.
    fn unmet(&self) -> Option<String> {
        let gpu = gpu();
        match self {
            Need::Feature(_, label, f) => (!gpu.features.contains(*f)).then(|| {
                let (name, backend) = (&gpu.info.name, gpu.info.backend);
                format!("needs {label}, which {name} ({backend:?}) lacks")
            }),
            Need::Variant(v) => v.needs.unmet(gpu).map(|why| format!("{} {why}", v.name)),
            Need::Fixtures => super::shared_fixtures().is_none().then(|| {
                "needs the densenet121 fixtures in $DENSENET_FIXTURES (see \
                 tests/fixtures/torchvision/README.md), absent here"
                    .to_string()
            }),
        }
    }
}

/// The element type's need: f16 needs SHADER_F16, f32 nothing.
pub fn need_of(dtype: DType) -> Option<Need> {
    (dtype == DType::F16).then_some(F16)
}

/// One test case: a name, what it needs, and its body (which fails by panicking).
pub struct Case {
    name: String,
    needs: Vec<Need>,
    run: Box<dyn FnOnce() + Send + 'static>,
}

impl Case {
    pub fn new(name: impl Into<String>, run: impl FnOnce() + Send + 'static) -> Case {
        Case {
            name: name.into(),
            needs: Vec::new(),
            run: Box::new(run),
        }
    }

    /// This case, skipped where the adapter does not meet `need`.
    pub fn needs(mut self, need: Need) -> Case {
        self.needs.push(need);
        self
    }

    /// This case with `need` if there is one.
    pub fn needs_maybe(self, need: Option<Need>) -> Case {
        match need {
            Some(n) => self.needs(n),
            None => self,
        }
    }
}

/// `name` as one case.
pub fn case(name: &str, run: fn()) -> Case {
    Case::new(name, run)
}

/// `name[f32]` and `name[f16]`: `run` in each activation element type (f16 needs SHADER_F16).
pub fn per_act(name: &str, run: fn(DType)) -> Vec<Case> {
    super::ACTS
        .into_iter()
        .map(|d| Case::new(format!("{name}[{d}]"), move || run(d)).needs_maybe(need_of(d)))
        .collect()
}

/// `name[CONFIG,DTYPE]` for every configuration (variant x split setting) of every variant of
/// `op` and each activation element type: what the tuner may pick. A variant the adapter
/// cannot run (cooperative matrices) is skipped with its reason, f16 without SHADER_F16.
pub fn per_config(
    op: &str,
    name: &str,
    run: fn(&'static str, &'static Kernels, DType),
) -> Vec<Case> {
    let mut out = Vec::new();
    for v in super::variants_of(op) {
        for &split in v.splits {
            let config: &'static str =
                Box::leak(Config { variant: v, split }.name().into_boxed_str());
            let spec = format!("{op}={config}");
            for d in super::ACTS {
                let spec = spec.clone();
                let body = move || run(config, super::kernels_for(&spec), d);
                let mut case =
                    Case::new(format!("{name}[{config},{d}]"), body).needs_maybe(need_of(d));
                if v.needs != Needs::Nothing {
                    case = case.needs(Need::Variant(v));
                }
                out.push(case);
            }
        }
    }
    out
}

thread_local! {
    static NOTES: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Keeps a line of what a case measured; shown only if the case fails.
pub fn note(line: impl AsRef<str>) {
    NOTES.with(|n| {
        let mut n = n.borrow_mut();
        n.push_str(line.as_ref());
        n.push('\n');
    });
}

/// The names `DENSENET_REQUIRE` lists (comma-separated); an unknown name stops the binary.
fn required() -> Vec<String> {
    let list = std::env::var("DENSENET_REQUIRE").unwrap_or_default();
    let names: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in &names {
        assert!(
            REQUIRABLE.contains(&n.as_str()),
            "DENSENET_REQUIRE={list}: unknown feature {n:?}; choose from {}",
            REQUIRABLE.join(", ")
        );
    }
    names
}

/// Runs `case`: ignored with the reason where a need is unmet (a failure where
/// `DENSENET_REQUIRE` names it), else its body, whose panic is a failure that carries the
/// case's notes.
fn run_case(case: Case, required: &[String]) -> Result<Completion, Failed> {
    for need in &case.needs {
        let Some(why) = need.unmet() else { continue };
        if required.iter().any(|r| r == need.name()) && need.required_here() {
            return Err(
                format!("DENSENET_REQUIRE lists {}, but the case {why}", need.name()).into(),
            );
        }
        return Ok(Completion::ignored_with(why));
    }
    NOTES.with(|n| n.borrow_mut().clear());
    let outcome = catch_unwind(AssertUnwindSafe(case.run));
    let notes = NOTES.with(|n| std::mem::take(&mut *n.borrow_mut()));
    match outcome {
        Ok(()) => Ok(Completion::Completed),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            Err(format!("{msg}\n{notes}").into())
        }
    }
}

/// The test binary's `main`: runs `cases` with libtest's command line.
pub fn run(cases: Vec<Case>) -> ExitCode {
    let mut args = Arguments::from_args();
    if !args.list && args.test_threads.is_none() && gpu().info.backend == wgpu::Backend::Gl {
        args.test_threads = Some(1);
    }
    let required = required();
    let trials = cases
        .into_iter()
        .map(|c| {
            let required = required.clone();
            Trial::ignorable_test(c.name.clone(), move || run_case(c, &required))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
