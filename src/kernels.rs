//! The kernel registry and the one way every op is launched.
//!
//! Each op module declares its WGSL file as a [`Shader`]: the embedded source and, per entry
//! point, the storage bindings it uses and its workgroup size. Binding 0 is always the op's
//! uniform params struct. Pipelines and bind-group layouts are created from these
//! declarations (never inferred), once per device; a test checks every declaration against
//! what naga finds in the WGSL.
//!
//! A launcher turns params and buffer views into [`Dispatch`]es: pipeline, bind group and
//! workgroup counts, all created up front so that recording a step allocates nothing.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, View, ELEM};

/// How an entry point uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One WGSL entry point: its name (shared with the reference and the launcher), the storage
/// bindings it touches (binding 0, the params uniform, is implied) and its workgroup size.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    pub bindings: &'static [(u32, Access)],
    pub workgroup_size: u32,
    /// `size_of` the Rust params struct bound at binding 0.
    pub params_size: usize,
}

impl Entry {
    /// An entry point whose params uniform is a `P`.
    pub const fn new<P>(
        name: &'static str,
        bindings: &'static [(u32, Access)],
        workgroup_size: u32,
    ) -> Entry {
        Entry {
            name,
            bindings,
            workgroup_size,
            params_size: std::mem::size_of::<P>(),
        }
    }
}

/// One WGSL file.
#[derive(Debug)]
pub struct Shader {
    pub file: &'static str,
    pub source: &'static str,
    pub entries: &'static [Entry],
}

/// Helpers every kernel may use; prepended to each op's source.
pub const COMMON_WGSL: &str = include_str!("../shaders/common.wgsl");

impl Shader {
    /// The source as compiled: the common helpers, then the op's own file.
    pub fn full_source(&self) -> String {
        format!("{COMMON_WGSL}\n{}", self.source)
    }
}

/// Every shader of the crate.
pub fn all_shaders() -> &'static [&'static Shader] {
    crate::ops::SHADERS
}

pub(crate) fn find_entry(name: &str) -> Option<(&'static Shader, &'static Entry)> {
    all_shaders()
        .iter()
        .find_map(|s| s.entries.iter().find(|e| e.name == name).map(|e| (*s, e)))
}

/// A compiled entry point with its explicit bind-group layout.
pub struct Pipeline {
    pub entry: &'static Entry,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

pub(crate) fn create_pipeline(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    shader: &'static Shader,
    entry: &'static Entry,
) -> Result<Pipeline> {
    let storage = entry.bindings.len() as u32;
    if storage > gpu.limits.max_storage_buffers_per_shader_stage {
        return Err(Error::Limit {
            what: format!("kernel {} ({} storage buffers)", entry.name, shader.file),
            needed: storage as u64,
            limit: gpu.limits.max_storage_buffers_per_shader_stage as u64,
            hint: "this adapter cannot run the kernel; choose another with --adapter",
        });
    }
    let mut layout_entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    for &(binding, access) in entry.bindings {
        layout_entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: access == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let layout = gpu
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry.name),
            entries: &layout_entries,
        });
    let pipeline_layout = gpu
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry.name),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some(entry.name),
            compilation_options: Default::default(),
            cache: None,
        });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Device(format!(
            "creating kernel {} from {}: {e}",
            entry.name, shader.file
        )));
    }
    Ok(Pipeline {
        entry,
        pipeline,
        layout,
    })
}

/// One recorded kernel launch: everything it needs was created when it was built.
pub struct Dispatch {
    pub pipeline: Arc<Pipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// The params uniform, kept so a plan can rewrite it (e.g. a new learning rate).
    pub params: wgpu::Buffer,
}

impl Dispatch {
    pub fn name(&self) -> &'static str {
        self.pipeline.entry.name
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Replaces the params uniform; takes effect for the next submitted use.
    pub fn set_params<P: bytemuck::Pod>(&self, gpu: &Gpu, params: &P) {
        gpu.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(params));
    }
}

/// Records dispatches into one compute pass of a new encoder and submits it.
pub fn submit(gpu: &Gpu, dispatches: &[Dispatch]) {
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("ops"),
            timestamp_writes: None,
        });
        for d in dispatches {
            d.record(&mut pass);
        }
    }
    gpu.queue.submit([enc.finish()]);
}

/// Splits a 1-D count of workgroups into a 2-D grid within the per-dimension limit;
/// kernels recover the flat index with `flat_workgroup` from common.wgsl.
pub fn fold_grid(gpu: &Gpu, name: &str, workgroups: u64) -> Result<[u32; 3]> {
    let max = gpu.limits.max_compute_workgroups_per_dimension as u64;
    let workgroups = workgroups.max(1);
    let x = workgroups.min(max);
    let y = workgroups.div_ceil(x);
    if y > max {
        return Err(Error::Limit {
            what: format!("kernel {name} grid"),
            needed: workgroups,
            limit: max * max,
            hint: "use a smaller batch size",
        });
    }
    Ok([x as u32, y as u32, 1])
}

/// Builds a dispatch of `entry` over `invocations` threads (rounded up to whole workgroups)
/// with `params` at binding 0 and `views` at the bindings the entry declares.
pub fn dispatch<P: bytemuck::Pod>(
    gpu: &Gpu,
    entry: &'static str,
    params: &P,
    views: &[(u32, View<'_>)],
    invocations: u64,
) -> Result<Dispatch> {
    let pipeline = gpu.pipeline(entry)?;
    let wg = pipeline.entry.workgroup_size as u64;
    dispatch_groups(gpu, pipeline, params, views, invocations.div_ceil(wg))
}

/// As [`dispatch`], but with the number of workgroups given directly (one per channel, ...).
pub fn dispatch_workgroups<P: bytemuck::Pod>(
    gpu: &Gpu,
    entry: &'static str,
    params: &P,
    views: &[(u32, View<'_>)],
    workgroups: u64,
) -> Result<Dispatch> {
    let pipeline = gpu.pipeline(entry)?;
    dispatch_groups(gpu, pipeline, params, views, workgroups)
}

fn dispatch_groups<P: bytemuck::Pod>(
    gpu: &Gpu,
    pipeline: Arc<Pipeline>,
    params: &P,
    views: &[(u32, View<'_>)],
    workgroups: u64,
) -> Result<Dispatch> {
    let entry = pipeline.entry;
    debug_assert_eq!(
        std::mem::size_of::<P>(),
        entry.params_size,
        "{}",
        entry.name
    );
    let declared: Vec<u32> = entry.bindings.iter().map(|b| b.0).collect();
    let given: Vec<u32> = views.iter().map(|v| v.0).collect();
    if declared != given {
        return Err(Error::Device(format!(
            "kernel {} takes bindings {declared:?} but was given {given:?}",
            entry.name
        )));
    }
    let align = gpu.limits.min_storage_buffer_offset_alignment as u64;
    let max_binding = gpu.limits.max_storage_buffer_binding_size;
    let params_buf = gpu
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(entry.name),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
    let mut bind = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: params_buf.as_entire_binding(),
    }];
    for (binding, view) in views {
        let offset = view.offset * ELEM;
        let size = view.len.max(1) * ELEM;
        if offset % align != 0 {
            return Err(Error::Device(format!(
                "kernel {} binding {binding}: offset {offset} bytes is not a multiple of {align}",
                entry.name
            )));
        }
        if offset + size > view.buffer.size() {
            return Err(Error::Device(format!(
                "kernel {} binding {binding}: view [{offset}, {}) bytes exceeds its buffer of {}",
                entry.name,
                offset + size,
                view.buffer.size()
            )));
        }
        if size > max_binding {
            return Err(Error::Limit {
                what: format!("kernel {} binding {binding}", entry.name),
                needed: size,
                limit: max_binding,
                hint: "use a smaller batch size or image size",
            });
        }
        bind.push(wgpu::BindGroupEntry {
            binding: *binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: view.buffer,
                offset,
                size: wgpu::BufferSize::new(size),
            }),
        });
    }
    let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(entry.name),
        layout: &pipeline.layout,
        entries: &bind,
    });
    let workgroups = fold_grid(gpu, entry.name, workgroups)?;
    Ok(Dispatch {
        pipeline,
        bind_group,
        workgroups,
        params: params_buf,
    })
}
