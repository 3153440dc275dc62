//! Shared by every test binary and the benches: one device per binary, kernels per forced
//! variant, seeded inputs whose seed is printed on failure, NaN-poisoned outputs, the
//! design's tolerance check, and temporary folders.
#![allow(dead_code)]

pub mod harness;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{submit, Config, DeviceClass, Dispatch, Needs, Variant};
use densenet_wgpu::{Gpu, GpuBuffer, GpuOptions, Kernels, Policy};

/// Forward outputs: atol 1e-5 + rtol 1e-4 (docs/DESIGN.md).
pub const FWD: (f64, f64) = (1e-5, 1e-4);
/// Gradients: atol 1e-4 + rtol 1e-3 (docs/DESIGN.md).
pub const GRAD: (f64, f64) = (1e-4, 1e-3);
/// Kernels with f16 operands and f32 accumulation against the reference on the same
/// f16-rounded operands: atol 1e-3 + rtol 1e-3 (docs/DESIGN.md). What is left is the order
/// of the f32 sums, and an operand computed on the GPU (BN -> ReLU) that rounds to the
/// neighbouring f16.
pub const F16_OPERANDS: (f64, f64) = (1e-3, 1e-3);

/// The device shared by every test of this binary. No adapter is a failure, never a skip.
pub fn gpu_arc() -> &'static Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&GpuOptions::default()) {
        Ok(g) => Arc::new(g),
        Err(e) => panic!("GPU tests need an adapter: {e}"),
    })
}

pub fn gpu() -> &'static Gpu {
    gpu_arc()
}

/// The kernels with the adapter's default policy.
pub fn k() -> &'static Kernels {
    kernels_for("auto")
}

/// The kernels with `--kernels spec` (e.g. `conv2d=tile8`), one registry per spec.
pub fn kernels_for(spec: &str) -> &'static Kernels {
    static ALL: OnceLock<Mutex<HashMap<String, &'static Kernels>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().unwrap();
    all.entry(spec.to_string()).or_insert_with(|| {
        let gpu = gpu_arc().clone();
        let class = DeviceClass::of(&gpu);
        let policy = Policy::parse(spec, class, densenet_wgpu::ops::SHADERS)
            .unwrap_or_else(|e| panic!("--kernels {spec}: {e}"));
        Box::leak(Box::new(Kernels::new(gpu, policy)))
    })
}

/// One registry per configuration of every variant of `op` (across its shaders) that this
/// adapter can run, each forcing it: run a launch through each to time every candidate the
/// tuner may pick (each variant in each of its split settings). A variant with unmet needs,
/// e.g. cooperative matrices on an adapter without them, is left out. (The tests register
/// one case per configuration with [`harness::per_config`] instead, which reports such a
/// variant as skipped with its reason.)
pub fn each_variant(op: &str) -> Vec<(&'static str, &'static Kernels)> {
    variants_of(op)
        .filter(|v| v.needs.unmet(gpu()).is_none())
        .flat_map(|v| {
            v.splits
                .iter()
                .map(move |&split| Config { variant: v, split })
        })
        .map(|c| {
            let name: &'static str = Box::leak(c.name().into_boxed_str());
            (name, kernels_for(&format!("{op}={name}")))
        })
        .collect()
}

/// Every variant of `op`, across its shaders.
pub fn variants_of(op: &str) -> impl Iterator<Item = &'static Variant> + use<'_> {
    densenet_wgpu::ops::SHADERS
        .iter()
        .filter(move |s| s.op == op)
        .flat_map(|s| s.variants.iter())
}

/// Whether `op`'s `variant` multiplies f16 operands (the cooperative-matrix ones): its tests
/// compare with the reference on operands rounded to f16 first.
pub fn rounds_to_f16(op: &str, variant: &str) -> bool {
    let variant = variant.split('@').next().unwrap_or(variant);
    variants_of(op).any(|v| v.name == variant && matches!(v.needs, Needs::CoopMatrix { .. }))
}

/// `values` rounded to the nearest f16, as a kernel with f16 operands sees them.
pub fn f16_rounded(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// A fresh seed per test run, or DENSENET_SEED to replay one.
pub fn seed() -> u64 {
    if let Ok(s) = std::env::var("DENSENET_SEED") {
        return s.parse().expect("DENSENET_SEED must be an integer");
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
}

pub struct Rand {
    pub seed: u64,
    rng: fastrand::Rng,
}

impl Rand {
    pub fn new() -> Self {
        let seed = seed();
        Rand {
            seed,
            rng: fastrand::Rng::with_seed(seed),
        }
    }
    /// Uniform in [-1, 1).
    pub fn vec(&mut self, len: u64) -> Vec<f32> {
        (0..len).map(|_| self.rng.f32() * 2.0 - 1.0).collect()
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, len: u64, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| lo + self.rng.f32() * (hi - lo)).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        self.rng.u32(..n)
    }
}

pub fn up(data: &[f32]) -> GpuBuffer {
    gpu().upload("test input", data).unwrap()
}

pub fn up_u32(data: &[u32]) -> GpuBuffer {
    gpu().upload("test input", data).unwrap()
}

/// An output buffer of `len` elements filled with NaN, so an unwritten element fails.
pub fn poisoned(len: u64) -> GpuBuffer {
    up(&vec![f32::NAN; len as usize])
}

pub fn read(buf: &GpuBuffer) -> Vec<f32> {
    gpu().read_all(buf).unwrap()
}

pub fn read_u32(buf: &GpuBuffer) -> Vec<u32> {
    gpu().read_all(buf).unwrap()
}

/// Submits the launches and waits for them.
pub fn run(dispatches: Vec<Dispatch>) {
    submit(gpu(), &dispatches);
    gpu().wait().unwrap();
}

/// Compares element-wise with |got - want| <= atol + rtol |want| (NaN in either fails).
/// Prints and returns the largest relative error |got - want| / max(|want|, atol / rtol).
pub fn check(what: &str, seed: u64, got: &[f32], want: &[f32], tol: (f64, f64)) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length (seed {seed})");
    let (atol, rtol) = tol;
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}: element {i} is {g}, reference {w} (|diff| {err:.3e} > {atol:e} + {rtol:e}*|ref|); \
             replay with DENSENET_SEED={seed}"
        );
        worst = worst.max(err / w.abs().max(atol / rtol));
    }
    harness::note(format!("max-rel-err {what}: {worst:.3e}"));
    worst
}

/// The element types of activations (and their gradients) every kernel is tested in.
pub const ACTS: [DType; 2] = [DType::F32, DType::F16];

/// Kernels storing f16 activations (arithmetic in f32) against the reference on the same
/// f16-rounded inputs: what is left is the output's rounding, 2^-11 of it (docs/DESIGN.md).
pub const F16_STORAGE: (f64, f64) = (1e-4, 1.5e-3);

/// `tol` for an f32 kernel, widened for f16 activations.
pub fn tol_for(dtype: DType, tol: (f64, f64)) -> (f64, f64) {
    match dtype {
        DType::F16 => (tol.0.max(F16_STORAGE.0), tol.1.max(F16_STORAGE.1)),
        _ => tol,
    }
}

/// Activation values as a `dtype` buffer holds them (rounded to f16 for f16).
pub fn as_act(dtype: DType, values: Vec<f32>) -> Vec<f32> {
    match dtype {
        DType::F16 => f16_rounded(&values),
        _ => values,
    }
}

/// An activation buffer of `dtype` holding `data`.
pub fn up_act(dtype: DType, data: &[f32]) -> GpuBuffer {
    let buf = gpu()
        .zeros_of("test input", dtype, data.len() as u64)
        .unwrap();
    gpu().write_floats(&buf, data).unwrap();
    buf
}

/// An activation buffer of `dtype` and `len` elements filled with NaN.
pub fn poisoned_act(dtype: DType, len: u64) -> GpuBuffer {
    up_act(dtype, &vec![f32::NAN; len as usize])
}

/// A float buffer's values as f32, whatever its element type.
pub fn read_act(buf: &GpuBuffer) -> Vec<f32> {
    gpu().read_floats(buf).unwrap()
}

/// A small torchvision fixture kept in the repository (tests/fixtures/torchvision).
#[allow(dead_code)]
pub fn small_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision")
        .join(name)
}

/// Where the large torchvision fixtures are (densenet121's weights and batch; see
/// tests/fixtures/torchvision/README.md): the folder `$DENSENET_FIXTURES`, when it holds them.
#[allow(dead_code)]
pub fn shared_fixtures() -> Option<PathBuf> {
    std::env::var_os("DENSENET_FIXTURES")
        .map(PathBuf::from)
        .filter(|d| d.join("densenet121.safetensors").is_file())
}

/// A new empty folder under the system's temporary folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "densenet-test-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The binary, with a tuning cache of this test process (so the self-check's verdicts go
/// beside it, not into the user's cache, and later runs of the process reuse them); a
/// caller's `DENSENET_TUNE_CACHE` or `--tune-cache` replaces it.
pub fn binary() -> std::process::Command {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    let cache = CACHE.get_or_init(|| temp_dir("cache").join("tuning.json"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_densenet-wgpu"));
    cmd.env("DENSENET_TUNE_CACHE", cache);
    cmd
}

/// Runs the binary with `args` and the environment variables `env`; its standard output.
/// A non-zero exit fails the test with both outputs.
pub fn cli_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = binary()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "densenet-wgpu {args:?} failed:\n{text}\n{err}"
    );
    text
}
