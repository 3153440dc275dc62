//! Storage buffers of 4-byte elements (f32 or u32), views into them, upload and readback.

use wgpu::util::DeviceExt;

use super::Gpu;
use crate::error::{Error, Result};

/// Bytes per element: every kernel works on 4-byte elements (f32 data, u32 labels and indices).
pub const ELEM: u64 = 4;

/// A storage buffer and its length in elements.
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    pub len: u64,
}

/// A range of elements of a buffer, as a kernel binding sees it.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    /// First element; must be a multiple of the adapter's storage offset alignment.
    pub offset: u64,
    pub len: u64,
}

impl GpuBuffer {
    pub fn view(&self) -> View<'_> {
        View {
            buffer: &self.buffer,
            offset: 0,
            len: self.len,
        }
    }

    /// Elements `[offset, offset + len)`; `offset` must satisfy the storage offset alignment.
    pub fn slice(&self, offset: u64, len: u64) -> View<'_> {
        debug_assert!(offset + len <= self.len);
        View {
            buffer: &self.buffer,
            offset,
            len,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.len * ELEM
    }
}

impl<'a> From<&'a GpuBuffer> for View<'a> {
    fn from(b: &'a GpuBuffer) -> View<'a> {
        b.view()
    }
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// Checks a buffer size against the adapter's limits before wgpu would panic on it.
    /// (A buffer may exceed the binding limit: kernels then bind ranges of it, which the
    /// dispatch builder checks.)
    pub fn check_buffer_size(&self, label: &str, bytes: u64) -> Result<()> {
        let max = self.limits.max_buffer_size;
        if bytes > max {
            return Err(Error::Limit {
                what: format!("buffer {label}"),
                needed: bytes,
                limit: max,
                hint: "use a smaller batch size or image size",
            });
        }
        Ok(())
    }

    /// A zero-filled buffer of `len` 4-byte elements.
    pub fn zeros(&self, label: &str, len: u64) -> Result<GpuBuffer> {
        let bytes = (len * ELEM).max(ELEM);
        self.check_buffer_size(label, bytes)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: USAGE,
            mapped_at_creation: false,
        });
        Ok(GpuBuffer { buffer, len })
    }

    /// A buffer holding `data` (f32 or u32 elements).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<GpuBuffer> {
        assert_eq!(
            std::mem::size_of::<T>() as u64,
            ELEM,
            "4-byte elements only"
        );
        let len = data.len() as u64;
        if len == 0 {
            return self.zeros(label, 0);
        }
        self.check_buffer_size(label, len * ELEM)?;
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: USAGE,
            });
        Ok(GpuBuffer { buffer, len })
    }

    /// Overwrites the start of `buf` with `data`.
    pub fn write<T: bytemuck::Pod>(&self, buf: &GpuBuffer, data: &[T]) {
        debug_assert!(data.len() as u64 <= buf.len);
        self.queue
            .write_buffer(&buf.buffer, 0, bytemuck::cast_slice(data));
    }

    /// Copies `view` back to the host, waiting for all submitted work first.
    pub fn read<T: bytemuck::Pod>(&self, view: View<'_>) -> Result<Vec<T>> {
        let bytes = view.len * ELEM;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(view.buffer, view.offset * ELEM, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::Device("readback callback never ran".into()))?
            .map_err(|e| Error::Device(format!("mapping the readback buffer: {e}")))?;
        let data = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(format!("reading the readback buffer: {e}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&data).to_vec();
        drop(data);
        staging.unmap();
        Ok(out)
    }

    /// Reads a whole buffer back.
    pub fn read_all<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        self.read(buf.view())
    }
}
