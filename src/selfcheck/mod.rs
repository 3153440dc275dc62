//! The self-check: every kernel configuration this adapter may run, at small uneven shapes,
//! against the CPU reference ([`crate::reference`]), so a driver that miscompiles one is
//! caught before it silently spoils a run.
//!
//! An [`Item`] is one configuration of an op that has several (a convolution's variant and
//! split setting, a batch norm's implementation) in one element type, or the rest of the
//! network: every kernel with a single implementation (stem, pools, linear, loss, SGD, loss
//! scaling), checked through one training step and one evaluation of a small DenseNet-BC
//! with an ImageNet stem against the reference network. Each item gives [`Row`]s (kernel,
//! largest error, verdict) under the tolerances of the kernel tests (docs/DESIGN.md).
//!
//! `densenet-wgpu selftest` runs them all; `train`, `eval` and `bench` run those of the
//! configurations their plan launches before trusting them (see `tune`), remembering the
//! verdicts per device in [`cache`].

mod bn;
pub mod cache;
pub mod compare;
mod conv;
mod network;

use std::fmt::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use compare::{compare, Tol};

use crate::error::Result;
use crate::gpu::{DType, GpuBuffer};
use crate::kernels::{submit, Config, Dispatch, Kernels, Needs, Shader};
use crate::ops::{batchnorm, conv2d};

/// What an item checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// One configuration of the convolutions (forward, data and weight gradients).
    Conv(Config),
    /// One implementation of the batch norm's statistics and backward.
    BatchNorm(Config),
    /// Every kernel with one implementation, through a small network's step and evaluation
    /// (its convolutions and batch norms in configurations that passed their own check).
    Network(Net),
}

/// The shape of the network check: which of the kernels with one implementation it runs.
/// `selftest` runs all of them; a run checks those its own network launches, so the check
/// compiles nothing its plan does not (compiling is most of a first run's check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    /// The ImageNet stem (7x7/2 conv, max pool) rather than the CIFAR one (3x3 conv).
    pub imagenet_stem: bool,
    /// 1x1 bottlenecks before each 3x3 conv (DenseNet-BC).
    pub bottleneck: bool,
    /// Biases on the convolutions (their gradient kernel).
    pub conv_bias: bool,
}

impl Net {
    /// Every kernel: what `selftest` checks, and what any run's check is part of.
    pub const ALL: Net = Net {
        imagenet_stem: true,
        bottleneck: true,
        conv_bias: true,
    };

    /// The check that covers what `cfg`'s network launches.
    pub fn of(cfg: &crate::model::DenseNetConfig) -> Net {
        Net {
            imagenet_stem: matches!(cfg.stem, crate::model::Stem::ImageNet { .. }),
            bottleneck: cfg.bottleneck.is_some(),
            conv_bias: cfg.conv_bias,
        }
    }

    /// `imagenet,bottleneck,bias` (the stem, then what it has): how its label names it.
    fn describe(self) -> String {
        let mut parts = vec![match self.imagenet_stem {
            true => "imagenet",
            false => "cifar",
        }];
        if self.bottleneck {
            parts.push("bottleneck");
        }
        if self.conv_bias {
            parts.push("bias");
        }
        parts.join(",")
    }
}

/// One thing to check: a target in an element type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Item {
    pub target: Target,
    pub dtype: DType,
}

impl Item {
    /// The op, as `--kernels` names it (`network` for the rest).
    pub fn op(&self) -> &'static str {
        match self.target {
            Target::Conv(_) => conv2d::OP,
            Target::BatchNorm(_) => batchnorm::OP,
            Target::Network(_) => "network",
        }
    }

    /// The configuration's name (`tile8@fewer-splits`), or the network check's shape.
    pub fn config_name(&self) -> String {
        match self.target {
            Target::Conv(c) | Target::BatchNorm(c) => c.name(),
            Target::Network(net) => net.describe(),
        }
    }

    /// `conv2d tile8@fewer-splits f32`: how tables, warnings and the cache name it.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.op(), self.config_name(), self.dtype)
    }

    /// The configuration, for the ops that have several.
    pub fn config(&self) -> Option<Config> {
        match self.target {
            Target::Conv(c) | Target::BatchNorm(c) => Some(c),
            Target::Network(_) => None,
        }
    }
}

/// One comparison of an item: a kernel's output at one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub kernel: String,
    /// The largest relative error (see [`compare::Agreement`]); infinite for a NaN.
    pub max_rel_err: f64,
    pub pass: bool,
}

impl Row {
    fn compare(kernel: String, got: &[f32], want: &[f32], tol: Tol) -> Row {
        let a = compare(got, want, tol);
        Row {
            kernel,
            max_rel_err: a.max_rel_err,
            pass: a.within,
        }
    }
}

/// What checking an item found.
#[derive(Clone, Debug)]
pub struct Checked {
    pub item: Item,
    pub rows: Vec<Row>,
    /// Why it could not run (a kernel that does not compile, a device error): a failure.
    pub error: Option<String>,
    pub seconds: f64,
}

impl Checked {
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }

    /// The largest error of its rows.
    pub fn max_rel_err(&self) -> f64 {
        self.rows.iter().map(|r| r.max_rel_err).fold(0.0, f64::max)
    }

    /// The kernels that failed, or the error.
    pub fn failures(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.pass)
            .map(|r| format!("{} (error {})", r.kernel, fmt_err(r.max_rel_err)))
            .collect();
        failed.join(", ")
    }
}

/// A relative error for tables: `3.1e-7`, `inf` for a NaN.
pub fn fmt_err(e: f64) -> String {
    match e.is_finite() {
        true => format!("{e:.1e}"),
        false => "inf".to_string(),
    }
}

/// The element types `k`'s adapter runs activations in.
pub fn dtypes(k: &Kernels) -> Vec<DType> {
    match k.gpu().features.contains(wgpu::Features::SHADER_F16) {
        true => vec![DType::F32, DType::F16],
        false => vec![DType::F32],
    }
}

/// Every configuration of `shaders` the adapter runs in `dtype`, each variant in each of
/// its split settings. Cooperative-matrix variants only in f16: in f32 they would round the
/// operands, which neither the policy nor the tuner does.
pub fn configs(k: &Kernels, shaders: &[&'static Shader], dtype: DType) -> Vec<Config> {
    let mut out = Vec::new();
    for s in shaders.iter().filter(|s| s.dtypes.contains(&dtype)) {
        for v in s.variants.iter() {
            let coop = matches!(v.needs, Needs::CoopMatrix { .. });
            if v.needs.unmet(k.gpu()).is_some() || (coop && dtype == DType::F32) {
                continue;
            }
            out.extend(v.splits.iter().map(|&split| Config { variant: v, split }));
        }
    }
    out
}

/// Every item of `k`'s adapter: each configuration the policy or the tuner may pick there,
/// in each element type it runs, then the network in each.
pub fn items(k: &Kernels) -> Vec<Item> {
    let mut out = Vec::new();
    for dtype in dtypes(k) {
        let conv = configs(k, &conv2d::SHADERS, dtype)
            .into_iter()
            .map(Target::Conv);
        let bn = configs(k, &batchnorm::SHADERS, dtype)
            .into_iter()
            .map(Target::BatchNorm);
        let all = conv.chain(bn).chain([Target::Network(Net::ALL)]);
        out.extend(all.map(|target| Item { target, dtype }));
    }
    out
}

/// Checks `item` on `k`'s device. `network` gives the convolution and batch-norm
/// configurations the network item runs with (ones that passed). Never panics: a kernel that
/// cannot be built, or a panic inside the check, is a failed item.
pub fn run(k: &Kernels, item: Item, network: (Config, Config)) -> Checked {
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| match item.target {
        Target::Conv(c) => conv::check(k, c, item.dtype),
        Target::BatchNorm(c) => bn::check(k, c, item.dtype),
        Target::Network(net) => network::check(k, item.dtype, net, network),
    }));
    let (rows, error) = match outcome {
        Ok(Ok(rows)) => (rows, None),
        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            (Vec::new(), Some(format!("the check panicked: {msg}")))
        }
    };
    Checked {
        item,
        rows,
        error,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// One table of every row: kernel, configuration, element type, largest error, verdict.
pub fn table(results: &[Checked]) -> String {
    let mut out = format!(
        "{:<40} {:<24} {:<5} {:>9}  verdict\n",
        "kernel", "configuration", "type", "max error"
    );
    for c in results {
        let (config, dtype) = (c.item.config_name(), c.item.dtype.to_string());
        if let Some(e) = &c.error {
            let _ = writeln!(
                out,
                "{:<40} {config:<24} {dtype:<5} {:>9}  FAIL: {e}",
                c.item.op(),
                "-"
            );
        }
        for r in &c.rows {
            let verdict = if r.pass { "ok" } else { "FAIL" };
            let err = fmt_err(r.max_rel_err);
            let _ = writeln!(
                out,
                "{:<40} {config:<24} {dtype:<5} {err:>9}  {verdict}",
                r.kernel
            );
        }
    }
    out
}

/// Seeded inputs: activations drawn exact in the element type (f16 values for f16, so the
/// reference reads what the kernel reads), parameters in f32.
pub(crate) struct Inputs {
    rng: fastrand::Rng,
    dtype: DType,
}

impl Inputs {
    fn new(seed: u64, dtype: DType) -> Inputs {
        Inputs {
            rng: fastrand::Rng::with_seed(seed),
            dtype,
        }
    }

    /// `len` f32 values uniform in [lo, hi).
    fn floats(&mut self, len: u64, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| lo + self.rng.f32() * (hi - lo)).collect()
    }

    /// `len` activations uniform in [-1, 1), as the element type holds them.
    fn act(&mut self, len: u64) -> Vec<f32> {
        self.act_around(len, 0.0)
    }

    /// `len` activations uniform in [center - 1, center + 1), as the element type holds them.
    fn act_around(&mut self, len: u64, center: f32) -> Vec<f32> {
        let v = self.floats(len, center - 1.0, center + 1.0);
        match self.dtype {
            DType::F16 => f16_rounded(v),
            _ => v,
        }
    }
}

/// `values` rounded to the nearest f16.
fn f16_rounded(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Buffers and runs on one device, activations in one element type.
pub(crate) struct Probe<'k> {
    k: &'k Kernels,
    dtype: DType,
}

impl<'k> Probe<'k> {
    fn new(k: &'k Kernels, dtype: DType) -> Probe<'k> {
        Probe { k, dtype }
    }

    /// An activation buffer holding `data`.
    fn act(&self, label: &str, data: &[f32]) -> Result<GpuBuffer> {
        let gpu = self.k.gpu();
        let buf = gpu.zeros_of(label, self.dtype, data.len() as u64)?;
        gpu.write_floats(&buf, data)?;
        Ok(buf)
    }

    /// An f32 buffer holding `data`.
    fn f32s(&self, label: &str, data: &[f32]) -> Result<GpuBuffer> {
        self.k.gpu().upload(label, data)
    }

    /// An f32 buffer of `len` zeros.
    fn zeros(&self, label: &str, len: u64) -> Result<GpuBuffer> {
        self.k.gpu().zeros(label, len)
    }

    fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        submit(self.k.gpu(), dispatches);
        self.k.gpu().wait()
    }

    fn read(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        self.k.gpu().read_floats(buf)
    }

    fn run_and_read(&self, dispatches: &[Dispatch], buf: &GpuBuffer) -> Result<Vec<f32>> {
        self.run(dispatches)?;
        self.read(buf)
    }
}

/// What `densenet-wgpu selftest` found: every item of the adapter.
pub struct Suite {
    /// The adapter, as `info` names it.
    pub adapter: String,
    pub results: Vec<Checked>,
    pub seconds: f64,
}

/// Runs every item of `k`'s adapter ([`items`]): the configurations first, then in each
/// element type the network with the configurations the adapter's rules prefer among those
/// that passed. `progress` hears each item as it ends.
pub fn suite(k: &Kernels, mut progress: impl FnMut(&Checked)) -> Suite {
    let start = Instant::now();
    let mut results: Vec<Checked> = Vec::new();
    for item in items(k) {
        let checked = match item.target {
            Target::Network(_) => {
                let passed = |c: &Config| {
                    results.iter().any(|r| {
                        r.item.dtype == item.dtype && r.item.config() == Some(*c) && r.passed()
                    })
                };
                let conv = preferred(
                    conv2d::rule_config(k, item.dtype),
                    configs(k, &conv2d::SHADERS, item.dtype),
                    passed,
                );
                let bn = preferred(
                    batchnorm::stats_config(k.policy()),
                    configs(k, &batchnorm::SHADERS, item.dtype),
                    passed,
                );
                match (conv, bn) {
                    (Some(conv), Some(bn)) => run(k, item, (conv, bn)),
                    _ => Checked {
                        item,
                        rows: Vec::new(),
                        error: Some("no convolution or batch-norm configuration passed".into()),
                        seconds: 0.0,
                    },
                }
            }
            _ => run(
                k,
                item,
                (
                    Config::of(&crate::kernels::PLAIN),
                    Config::of(&crate::kernels::PLAIN),
                ),
            ),
        };
        progress(&checked);
        results.push(checked);
    }
    let info = &k.gpu().info;
    Suite {
        adapter: format!("{} ({:?})", info.name, info.backend),
        results,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// `first` if it passes, else the first of `all` that passes.
fn preferred(first: Config, all: Vec<Config>, passes: impl Fn(&Config) -> bool) -> Option<Config> {
    std::iter::once(first).chain(all).find(|c| passes(c))
}

impl Suite {
    pub fn passed(&self) -> bool {
        self.results.iter().all(Checked::passed)
    }

    /// The table, a summary line and, for each failure, what failed and the `--kernels`
    /// setting that avoids it.
    pub fn text(&self) -> String {
        let mut out = table(&self.results);
        let failed: Vec<&Checked> = self.results.iter().filter(|c| !c.passed()).collect();
        let configs = self
            .results
            .iter()
            .filter(|c| c.item.config().is_some())
            .count();
        let _ = writeln!(
            out,
            "selftest on {}: {} of {configs} kernel configurations and {} network checks pass ({:.1} s)",
            self.adapter,
            self.results.iter().filter(|c| c.item.config().is_some() && c.passed()).count(),
            self.results.iter().filter(|c| c.item.config().is_none()).count(),
            self.seconds
        );
        for c in failed {
            let _ = writeln!(
                out,
                "FAILED {}: {}; {}",
                c.item.label(),
                c.failures(),
                self.avoid(c)
            );
        }
        out
    }

    /// How to avoid a failed item: `--kernels OP=CONFIG` naming one that passed.
    fn avoid(&self, failed: &Checked) -> String {
        let item = failed.item;
        if item.config().is_none() {
            return "these kernels have one implementation, so no --kernels setting avoids them"
                .to_string();
        }
        let good = self.results.iter().find(|r| {
            r.passed()
                && r.item.dtype == item.dtype
                && r.item.op() == item.op()
                && r.item.config().is_some()
        });
        match good {
            Some(g) => format!(
                "avoid it with --kernels {}={}",
                item.op(),
                g.item.config_name()
            ),
            None => format!(
                "no {} configuration passes in {} on this adapter",
                item.op(),
                item.dtype
            ),
        }
    }
}
