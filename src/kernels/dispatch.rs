//! [`Dispatch`]: one kernel launch with everything it needs created up front (pipeline,
//! params uniform, bind group, workgroup counts), so that recording a step allocates nothing.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{Elem, Kernel, Kernels, Pipeline};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, View};

/// How many workgroups a launch has.
#[derive(Clone, Copy, Debug)]
pub enum Grid {
    /// One invocation per item: the count is rounded up to whole workgroups.
    Threads(u64),
    /// This many workgroups (one per channel, per tile, ...).
    Workgroups(u64),
}

/// The work of one launch, for the roofline: floating-point operations (a multiply-add
/// counts 2) and bytes moved to or from memory at least once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

/// One recorded kernel launch.
pub struct Dispatch {
    pub pipeline: Arc<Pipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// The params uniform, kept so a plan can rewrite it (e.g. a new learning rate).
    pub params: wgpu::Buffer,
    /// What the launch computes and moves: by default no arithmetic and every bound range
    /// once; launchers that know better say so with [`Dispatch::with_cost`].
    pub cost: Cost,
}

impl Dispatch {
    /// The launch's arithmetic, keeping the default bytes (every bound range once).
    pub fn with_flops(mut self, flops: u64) -> Self {
        self.cost.flops = flops;
        self
    }

    /// The launch's cost model: `flops` operations and `bytes` moved.
    pub fn with_cost(mut self, flops: u64, bytes: u64) -> Self {
        self.cost = Cost { flops, bytes };
        self
    }

    pub fn name(&self) -> &'static str {
        self.pipeline.kernel.name()
    }

    pub fn kernel(&self) -> Kernel {
        self.pipeline.kernel
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

/// WebGPU's rule beyond its limits: within one dispatch, a writable binding must not
/// overlap any other binding of the same buffer (browsers validate it; native wgpu does not).
fn check_aliasing(
    label: &str,
    bindings: &[super::Binding],
    views: &[(u32, View<'_>)],
    is_dummy: impl Fn(&View<'_>) -> bool,
) -> Result<()> {
    let ranges: Vec<(u32, &View<'_>, bool)> = bindings
        .iter()
        .zip(views)
        .filter(|(_, (_, v))| !is_dummy(v))
        .map(|(b, (i, v))| (*i, v, b.access == super::Access::ReadWrite))
        .collect();
    for (n, (i, a, wa)) in ranges.iter().enumerate() {
        for (j, b, wb) in &ranges[n + 1..] {
            let overlap = a.byte_offset() < b.byte_offset() + b.bytes()
                && b.byte_offset() < a.byte_offset() + a.bytes();
            if a.buffer == b.buffer && (*wa || *wb) && overlap {
                return Err(Error::Device(format!(
                    "kernel {label}: bindings {i} and {j} overlap in one buffer (bytes {}+{} \
                     and {}+{}) and one is written, which WebGPU forbids; a batch size whose \
                     batch x height x width is a multiple of 64 keeps a dense block's channel \
                     ranges apart",
                    a.byte_offset(),
                    a.bytes(),
                    b.byte_offset(),
                    b.bytes()
                )));
            }
        }
    }
    Ok(())
}

impl Kernels {
    /// Builds a launch of `kernel` with `params` at binding 0 and `views` at exactly the
    /// bindings its entry declares. Checks what wgpu would otherwise panic or fail on later:
    /// binding set, element types, alignment, ranges and the binding-size limit.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        params: &P,
        views: &[(u32, View<'_>)],
        grid: Grid,
    ) -> Result<Dispatch> {
        let pipeline = self.pipeline(kernel)?;
        let entry = kernel.entry;
        let label = kernel.label();
        debug_assert_eq!(std::mem::size_of::<P>(), entry.params_size, "{label}");
        let declared: Vec<u32> = entry.bindings.iter().map(|b| b.index).collect();
        let given: Vec<u32> = views.iter().map(|v| v.0).collect();
        if declared != given {
            return Err(Error::Device(format!(
                "kernel {label} takes bindings {declared:?} but was given {given:?}"
            )));
        }
        let gpu = self.gpu();
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
        let mut bytes = 0;
        for (b, (binding, view)) in entry.bindings.iter().zip(views) {
            self.check_view(kernel, b.elem, *binding, view)?;
            let dummy = View {
                buffer: self.dummy_for(b.access),
                ..*view
            };
            let view = match self.is_dummy(view) {
                true => &dummy,
                false => {
                    bytes += view.bytes();
                    view
                }
            };
            bind.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: view.buffer,
                    offset: view.byte_offset(),
                    size: wgpu::BufferSize::new(view.bytes()),
                }),
            });
        }
        if gpu.webgpu {
            check_aliasing(&label, entry.bindings, views, |v| self.is_dummy(v))?;
        }
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry.name),
            layout: &pipeline.layout,
            entries: &bind,
        });
        let workgroups = match grid {
            Grid::Threads(n) => n.div_ceil(entry.workgroup_size as u64),
            Grid::Workgroups(n) => n,
        };
        let workgroups = fold_grid(gpu, entry.name, workgroups)?;
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups,
            params: params_buf,
            cost: Cost { flops: 0, bytes },
        })
    }

    fn check_view(&self, kernel: Kernel, elem: Elem, binding: u32, view: &View<'_>) -> Result<()> {
        let label = kernel.label();
        let want = match elem {
            Elem::Float => kernel.dtype,
            Elem::F32 => crate::gpu::DType::F32,
            Elem::U32 => crate::gpu::DType::U32,
        };
        if view.dtype != want && !self.is_dummy(view) {
            return Err(Error::Device(format!(
                "kernel {label} binding {binding}: a view of {} where {want} is needed",
                view.dtype
            )));
        }
        let limits = &self.gpu().limits;
        let align = limits.min_storage_buffer_offset_alignment as u64;
        let (offset, size) = (view.byte_offset(), view.bytes());
        if offset % align != 0 {
            return Err(Error::Device(format!(
                "kernel {label} binding {binding}: offset {offset} bytes is not a multiple of {align}"
            )));
        }
        if offset + size > view.buffer.size() {
            return Err(Error::Device(format!(
                "kernel {label} binding {binding}: view [{offset}, {}) bytes exceeds its buffer of {}",
                offset + size,
                view.buffer.size()
            )));
        }
        let max_binding = limits.max_storage_buffer_binding_size;
        if size > max_binding {
            return Err(Error::Limit {
                what: format!("kernel {label} binding {binding}"),
                needed: size,
                limit: max_binding,
                hint: "use a smaller batch size or image size",
            });
        }
        Ok(())
    }
}
