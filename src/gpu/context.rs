//! The GPU context: adapter choice and device creation with the adapter's own limits. It
//! knows nothing of kernels: pipelines are created and cached by the kernel registry.

use crate::error::{Error, Result};

/// How to choose the adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider; `None` means the `WGPU_BACKEND` environment variable, else all.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name (`--adapter`).
    pub adapter: Option<String>,
    /// Limits to request instead of the adapter's own (e.g. WebGPU's defaults, what a
    /// browser gives: `--limits webgpu`); every plan and kernel then keeps within them.
    pub limits: Option<wgpu::Limits>,
    /// Without `adapter`: take the n-th (modulo their count) of the adapters as good as the
    /// best, same type and API (a data-parallel rank takes its local rank's GPU).
    pub nth: Option<usize>,
}

/// Optional adapter features we request when present.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);

/// A cooperative-matrix shape the adapter runs with f16 operands and f32 accumulators (what
/// the convolutions' cooperative-matrix variants use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

impl std::fmt::Display for CoopShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.m, self.n, self.k)
    }
}

/// The f16 x f16 -> f32 shapes among an adapter's cooperative-matrix configurations.
pub fn coop_shapes(configs: &[wgpu::CooperativeMatrixProperties]) -> Vec<CoopShape> {
    use wgpu::CooperativeScalarType::{F16, F32};
    configs
        .iter()
        .filter(|c| c.ab_type == F16 && c.cr_type == F32)
        .map(|c| CoopShape {
            m: c.m_size,
            n: c.n_size,
            k: c.k_size,
        })
        .collect()
}

/// One device and its queue, with the facts about its adapter that the layers above use.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Cooperative-matrix shapes (f16 x f16 -> f32), where the device has them enabled.
    pub coop: Vec<CoopShape>,
    /// Why this adapter was chosen, for `info` and logs.
    pub reason: String,
    /// Keep WebGPU's rules beyond its limits (no written binding overlapping another of the
    /// same buffer in a dispatch): in a browser, and natively under `--limits webgpu`, so
    /// that what passes there runs in a browser.
    pub webgpu: bool,
}

/// Every adapter the selected backends offer, in preference order (best first).
#[cfg(not(target_arch = "wasm32"))]
pub fn ranked_adapters(backends: wgpu::Backends) -> (wgpu::Instance, Vec<wgpu::Adapter>) {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
    adapters.sort_by_key(|a| rank(&a.get_info()));
    (instance, adapters)
}

#[cfg(not(target_arch = "wasm32"))]
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // The GL backend is the last resort: fewer bindings, no f16 or subgroups, slow compiles.
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    };
    (device, backend)
}

/// The backends to try: the caller's choice, else `WGPU_BACKEND`, else all compiled in.
pub fn resolve_backends(requested: Option<wgpu::Backends>) -> wgpu::Backends {
    requested
        .or_else(wgpu::Backends::from_env)
        .unwrap_or(wgpu::Backends::all())
}

impl Gpu {
    /// Chooses an adapter (high performance first) and creates the device.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let backends = resolve_backends(opts.backends);
        // GL is only a fallback: probing it costs time and prints EGL noise, so try it only
        // when no native adapter (or none of the requested name) exists.
        let native = backends - wgpu::Backends::GL;
        let (_instance, mut adapters) = ranked_adapters(native);
        let wanted = |a: &wgpu::Adapter| match &opts.adapter {
            Some(w) => a.get_info().name.to_lowercase().contains(&w.to_lowercase()),
            None => true,
        };
        if !adapters.iter().any(wanted) && backends.contains(wgpu::Backends::GL) {
            adapters = ranked_adapters(backends).1;
        }
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "no GPU adapter found (backends tried: {backends:?}); install a Vulkan driver \
                 (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` gives a software one) \
                 or set WGPU_BACKEND=gl to use OpenGL"
            )));
        }
        let (adapter, reason) = match &opts.adapter {
            Some(want) => {
                let needle = want.to_lowercase();
                let found = adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle));
                match found {
                    Some(a) => (a, format!("its name matches --adapter {want:?}")),
                    None => {
                        let (_, all) = ranked_adapters(backends);
                        let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                        return Err(Error::NoAdapter(format!(
                            "no adapter name contains {want:?}; available: {}",
                            names.join(", ")
                        )));
                    }
                }
            }
            None if opts.nth.is_some() => {
                let best = adapters[0].get_info();
                let peers: Vec<wgpu::Adapter> = adapters
                    .into_iter()
                    .filter(|a| {
                        let i = a.get_info();
                        (i.device_type, i.backend) == (best.device_type, best.backend)
                    })
                    .collect();
                let n = opts.nth.unwrap_or(0) % peers.len();
                let why = format!(
                    "number {n} of {} {:?} adapter(s), by this rank's index on its machine",
                    peers.len(),
                    best.device_type
                );
                (peers.into_iter().nth(n).expect("n < len"), why)
            }
            None => {
                let count = adapters.len();
                let a = adapters.into_iter().next().expect("checked non-empty");
                let why = format!(
                    "best of {count} adapter(s): discrete > integrated > virtual > CPU, \
                     native API before GL"
                );
                (a, why)
            }
        };
        Self::from_adapter_with(adapter, reason, opts.limits.clone())
    }

    /// The browser's WebGPU adapter (high performance preferred) and a device with `limits`
    /// (the adapter's own when `None`) and our optional features.
    #[cfg(target_arch = "wasm32")]
    pub async fn browser(limits: Option<wgpu::Limits>) -> Result<Gpu> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::BROWSER_WEBGPU;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "this browser gives no WebGPU adapter ({e}): use one with WebGPU enabled \
                     (Chrome or Edge 113+, Safari 26, Firefox 141+)"
                ))
            })?;
        Self::from_adapter_async(adapter, "the browser's WebGPU adapter".into(), limits).await
    }

    /// Creates the device on a given adapter with its own limits and our optional features.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_adapter(adapter: wgpu::Adapter, reason: String) -> Result<Gpu> {
        Self::from_adapter_with(adapter, reason, None)
    }

    /// Creates the device on a given adapter with `limits` (the adapter's own when `None`)
    /// and our optional features; limits beyond the adapter's are a one-line error.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_adapter_with(
        adapter: wgpu::Adapter,
        reason: String,
        limits: Option<wgpu::Limits>,
    ) -> Result<Gpu> {
        pollster::block_on(Self::from_adapter_async(adapter, reason, limits))
    }

    /// [`Gpu::from_adapter_with`], asynchronously (as a browser needs it).
    pub async fn from_adapter_async(
        adapter: wgpu::Adapter,
        reason: String,
        limits: Option<wgpu::Limits>,
    ) -> Result<Gpu> {
        let info = adapter.get_info();
        let features = adapter.features() & OPTIONAL_FEATURES;
        let webgpu = info.backend == wgpu::Backend::BrowserWebGpu
            || limits.as_ref() == Some(&wgpu::Limits::default());
        let limits = match limits {
            None => adapter.limits(),
            Some(l) => {
                let mut beyond = Vec::new();
                l.check_limits_with_fail_fn(&adapter.limits(), false, |name, want, have| {
                    beyond.push(format!("{name} {want} (it has {have})"))
                });
                if !beyond.is_empty() {
                    return Err(Error::Device(format!(
                        "{} cannot give the limits asked for: {}",
                        info.name,
                        beyond.join(", ")
                    )));
                }
                l
            }
        };
        let coop_enabled = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let experimental = match coop_enabled {
            // SAFETY: the one experimental feature requested is cooperative matrices, used
            // only by the convolutions' coop variants; their WGSL is validated by naga (and
            // written to SPIR-V) in the tests, and each variant runs only on an adapter that
            // reports its shape and subgroup size (`Needs`).
            true => unsafe { wgpu::ExperimentalFeatures::enabled() },
            false => wgpu::ExperimentalFeatures::disabled(),
        };
        let coop = match coop_enabled {
            true => coop_shapes(&adapter.cooperative_matrix_properties()),
            false => Vec::new(),
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("densenet-wgpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = adapter
            .request_device(&desc)
            .await
            .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        Ok(Gpu {
            device,
            queue,
            info,
            features,
            limits,
            coop,
            reason,
            webgpu,
        })
    }

    /// Whether this adapter is a CPU implementation (llvmpipe, SwiftShader, WARP).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The storage offset alignment in elements of `dtype` (at least 1): views into a buffer
    /// must start on a multiple of it.
    pub fn align_elems(&self, dtype: crate::gpu::DType) -> u64 {
        (self.limits.min_storage_buffer_offset_alignment as u64 / dtype.size()).max(1)
    }

    /// Blocks until all submitted work has finished.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))
    }
}
