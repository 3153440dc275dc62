//! [`Kernels`]: the compiled pipelines of one device, keyed by (entry, variant, element
//! type), each created from its declaration (never inferred) on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Access, Kernel, Policy, Shader, Variant};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, View};

/// A compiled kernel with its explicit bind-group layout.
pub struct Pipeline {
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

const DUMMY_BYTES: u64 = 16;

type PipelineKey = (&'static str, &'static str, &'static str, DType);
type ModuleKey = (&'static str, &'static str, DType);

/// The kernels of one device: the policy that picks variants, and the pipelines and shader
/// modules created so far (shared by every [`Kernels::with_policy`] of it: a pipeline does
/// not depend on the policy, and compiling is what costs).
pub struct Kernels {
    gpu: Arc<Gpu>,
    policy: Policy,
    pipelines: Arc<Mutex<HashMap<PipelineKey, Arc<Pipeline>>>>,
    modules: Arc<Mutex<HashMap<ModuleKey, Arc<wgpu::ShaderModule>>>>,
    /// Bound where an optional binding (a missing bias, momentum without velocity) is
    /// unused: one for read-only bindings and one for written ones, since one dispatch may
    /// not bind a buffer both ways.
    dummy: wgpu::Buffer,
    dummy_out: wgpu::Buffer,
}

impl Kernels {
    pub fn new(gpu: Arc<Gpu>, policy: Policy) -> Kernels {
        let dummy = |label| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: DUMMY_BYTES,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (dummy, dummy_out) = (
            dummy("unused optional input"),
            dummy("unused optional output"),
        );
        Kernels {
            gpu,
            policy,
            pipelines: Arc::default(),
            modules: Arc::default(),
            dummy,
            dummy_out,
        }
    }

    /// The same device and compiled pipelines under another policy (e.g. with tuned
    /// configurations); what either compiles from now on, both have.
    pub fn with_policy(&self, policy: Policy) -> Kernels {
        Kernels {
            gpu: self.gpu.clone(),
            policy,
            pipelines: self.pipelines.clone(),
            modules: self.modules.clone(),
            dummy: self.dummy.clone(),
            dummy_out: self.dummy_out.clone(),
        }
    }

    /// The adapter's default policy.
    pub fn with_default_policy(gpu: Arc<Gpu>) -> Kernels {
        let policy = Policy::for_adapter(&gpu);
        Kernels::new(gpu, policy)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// `view`, or a small unused buffer (16 bytes: room for any vector element) where the
    /// kernel does not read the optional input.
    pub fn optional<'a>(&'a self, view: Option<View<'a>>, dtype: DType) -> View<'a> {
        view.unwrap_or(View {
            buffer: &self.dummy,
            offset: 0,
            len: DUMMY_BYTES / dtype.size(),
            dtype,
        })
    }

    pub(super) fn is_dummy(&self, view: &View<'_>) -> bool {
        view.buffer == &self.dummy || view.buffer == &self.dummy_out
    }

    /// The unused-binding buffer for a binding of `access`.
    pub(super) fn dummy_for(&self, access: super::Access) -> &wgpu::Buffer {
        match access {
            super::Access::Read => &self.dummy,
            super::Access::ReadWrite => &self.dummy_out,
        }
    }

    /// The pipeline of `kernel`, compiled on first use and cached.
    pub fn pipeline(&self, kernel: Kernel) -> Result<Arc<Pipeline>> {
        let key = kernel.key();
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(&key) {
            return Ok(p.clone());
        }
        let shader = kernel.entry.shader;
        if !shader
            .variants
            .iter()
            .any(|v| std::ptr::eq(v, kernel.variant))
        {
            return Err(Error::Device(format!(
                "{} has no variant {}",
                shader.file, kernel.variant.name
            )));
        }
        if !shader.dtypes.contains(&kernel.dtype) {
            let have: Vec<&str> = shader.dtypes.iter().map(|d| d.name()).collect();
            return Err(Error::Device(format!(
                "{} has no {} kernels (it has {})",
                kernel.entry.name,
                kernel.dtype,
                have.join(", ")
            )));
        }
        if let Some(why) = kernel.variant.needs.unmet(&self.gpu) {
            return Err(Error::Device(format!(
                "{} variant {} {why}; choose another with --kernels",
                shader.op, kernel.variant.name
            )));
        }
        let module = self.module(shader, kernel.variant, kernel.dtype)?;
        let pipeline = Arc::new(self.create_pipeline(&module, kernel)?);
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(
        &self,
        shader: &'static Shader,
        variant: &'static Variant,
        dtype: DType,
    ) -> Result<Arc<wgpu::ShaderModule>> {
        let key = (shader.file, variant.name, dtype);
        if let Some(m) = self.modules.lock().expect("module cache").get(&key) {
            return Ok(m.clone());
        }
        let source = shader.full_source(variant, dtype);
        let scope = ErrorScope::push(&self.gpu.device);
        let label = format!("{}[{},{}]", shader.file, variant.name, dtype);
        let module = self
            .gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        if let Some(e) = scope.pop() {
            return Err(Error::Device(format!("shader {label}: {e}")));
        }
        let module = Arc::new(module);
        self.modules
            .lock()
            .expect("module cache")
            .insert(key, module.clone());
        Ok(module)
    }

    fn create_pipeline(&self, module: &wgpu::ShaderModule, kernel: Kernel) -> Result<Pipeline> {
        let entry = kernel.entry;
        let limits = &self.gpu.limits;
        let storage = entry.bindings.len() as u32;
        if storage > limits.max_storage_buffers_per_shader_stage {
            return Err(Error::Limit {
                what: format!("kernel {} ({} storage buffers)", entry.name, storage),
                needed: storage as u64,
                limit: limits.max_storage_buffers_per_shader_stage as u64,
                hint: "this adapter cannot run the kernel; choose another with --adapter",
            });
        }
        let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut layout_entries = vec![buffer(0, wgpu::BufferBindingType::Uniform)];
        for b in entry.bindings {
            let read_only = b.access == Access::Read;
            layout_entries.push(buffer(
                b.index,
                wgpu::BufferBindingType::Storage { read_only },
            ));
        }
        let device = &self.gpu.device;
        let label = kernel.label();
        let scope = ErrorScope::push(device);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&label),
            entries: &layout_entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some(entry.name),
            // No zeroing of workgroup memory before each workgroup: every kernel writes its
            // workgroup arrays before it reads them (reductions fill all slots, the tiles and
            // tables are staged whole each step), and on llvmpipe's OpenGL the zeroing code,
            // which naga writes into the shader there, made the workgroup-tiled convolutions
            // compile 25x slower (10.5 s instead of 0.4 s per entry point).
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: None,
        });
        if let Some(e) = scope.pop() {
            return Err(Error::Device(format!("creating kernel {label}: {e}")));
        }
        Ok(Pipeline {
            kernel,
            pipeline,
            layout,
        })
    }
}

/// Validation errors of the calls between `push` and `pop`. Natively they are waited for,
/// so a bad shader is an error of the call that made it. A browser reports them only
/// asynchronously, and a page cannot block: there the scope is not opened, and the errors
/// reach the device's uncaptured-error handler, which the web front-end shows.
struct ErrorScope {
    #[cfg(not(target_arch = "wasm32"))]
    guard: wgpu::ErrorScopeGuard,
}

impl ErrorScope {
    #[cfg(not(target_arch = "wasm32"))]
    fn push(device: &wgpu::Device) -> ErrorScope {
        ErrorScope {
            guard: device.push_error_scope(wgpu::ErrorFilter::Validation),
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn push(_device: &wgpu::Device) -> ErrorScope {
        ErrorScope {}
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn pop(self) -> Option<wgpu::Error> {
        pollster::block_on(self.guard.pop())
    }

    #[cfg(target_arch = "wasm32")]
    fn pop(self) -> Option<wgpu::Error> {
        None
    }
}
