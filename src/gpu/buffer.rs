//! Storage buffers with an element type, views into them, upload and readback.

use wgpu::util::DeviceExt;

use super::Gpu;
use crate::error::{Error, Result};

/// The element type of a buffer or view: byte sizes and offsets come from it, and a kernel is
/// looked up by the element type of the tensors it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    /// Labels, argmax indices, counters.
    U32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }

    /// The bytes of `elems` elements, rounded up to wgpu's 4-byte copy granularity.
    pub const fn bytes(self, elems: u64) -> u64 {
        (elems * self.size()).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that a buffer can hold.
pub trait Element: bytemuck::Pod {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}

impl Element for u32 {
    const DTYPE: DType = DType::U32;
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}

/// A storage buffer, its length in elements and their type.
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    pub len: u64,
    pub dtype: DType,
}

/// A range of elements of a buffer, as a kernel binding sees it.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    /// First element; its byte offset must be a multiple of the adapter's storage offset
    /// alignment.
    pub offset: u64,
    pub len: u64,
    pub dtype: DType,
}

impl View<'_> {
    pub fn byte_offset(&self) -> u64 {
        self.offset * self.dtype.size()
    }

    /// Bytes of the range (at least 4, the smallest binding).
    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.len.max(1))
    }

    /// Elements [start, start + len) of this view, checked.
    pub fn sub(&self, start: u64, len: u64) -> Result<Self> {
        if start + len > self.len {
            return Err(Error::Device(format!(
                "sub-view [{start}, {}) of a view of {} elements",
                start + len,
                self.len
            )));
        }
        Ok(View {
            offset: self.offset + start,
            len,
            ..*self
        })
    }
}

impl GpuBuffer {
    pub fn view(&self) -> View<'_> {
        View {
            buffer: &self.buffer,
            offset: 0,
            len: self.len,
            dtype: self.dtype,
        }
    }

    /// Elements `[offset, offset + len)`; the byte offset must satisfy the storage offset
    /// alignment (checked when the view is bound).
    pub fn slice(&self, offset: u64, len: u64) -> View<'_> {
        debug_assert!(offset + len <= self.len);
        View {
            buffer: &self.buffer,
            offset,
            len,
            dtype: self.dtype,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.len)
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

    /// A zero-filled buffer of `len` f32 elements.
    pub fn zeros(&self, label: &str, len: u64) -> Result<GpuBuffer> {
        self.zeros_of(label, DType::F32, len)
    }

    /// A zero-filled buffer of `len` elements of `dtype`.
    pub fn zeros_of(&self, label: &str, dtype: DType, len: u64) -> Result<GpuBuffer> {
        let bytes = dtype.bytes(len.max(1));
        self.check_buffer_size(label, bytes)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: USAGE,
            mapped_at_creation: false,
        });
        Ok(GpuBuffer { buffer, len, dtype })
    }

    /// A buffer holding `data`; its element type is `T`'s.
    pub fn upload<T: Element>(&self, label: &str, data: &[T]) -> Result<GpuBuffer> {
        let len = data.len() as u64;
        let bytes = T::DTYPE.bytes(len);
        if len == 0 || bytes != len * T::DTYPE.size() {
            // Empty, or an odd number of f16 values: zeros of the padded size, then the data.
            let buf = self.zeros_of(label, T::DTYPE, len)?;
            self.write(&buf, data)?;
            return Ok(buf);
        }
        self.check_buffer_size(label, bytes)?;
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: USAGE,
            });
        Ok(GpuBuffer {
            buffer,
            len,
            dtype: T::DTYPE,
        })
    }

    /// Overwrites the start of `buf` with `data`, which must be of the buffer's type.
    pub fn write<T: Element>(&self, buf: &GpuBuffer, data: &[T]) -> Result<()> {
        if T::DTYPE != buf.dtype || data.len() as u64 > buf.len {
            return Err(Error::Device(format!(
                "writing {} {} values into a buffer of {} {}",
                data.len(),
                T::DTYPE,
                buf.len,
                buf.dtype
            )));
        }
        let mut bytes: Vec<u8> = bytemuck::cast_slice(data).to_vec();
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        if !bytes.is_empty() {
            self.queue.write_buffer(&buf.buffer, 0, &bytes);
        }
        Ok(())
    }

    /// Copies `view` back to the host once all submitted work has finished. In a browser
    /// this yields to its event loop until the copy is mapped; natively it waits for the
    /// device (see [`Gpu::read`]).
    pub async fn read_async<T: Element>(&self, view: View<'_>) -> Result<Vec<T>> {
        if T::DTYPE != view.dtype {
            return Err(Error::Device(format!(
                "reading {} values from a view of {}",
                T::DTYPE,
                view.dtype
            )));
        }
        if view.len == 0 {
            return Ok(Vec::new());
        }
        // Copies move whole 4-byte words: round the range out, then cut the values back.
        let start = view.byte_offset() / 4 * 4;
        let skip = (view.byte_offset() - start) as usize;
        let end = (view.byte_offset() + view.len * view.dtype.size()).next_multiple_of(4);
        let bytes = end - start;
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
        enc.copy_buffer_to_buffer(view.buffer, start, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let data = self.map_read(&staging, "the readback buffer").await?;
        let wanted = &data[skip..skip + (view.len * view.dtype.size()) as usize];
        Ok(bytemuck::pod_collect_to_vec::<u8, T>(wanted))
    }

    /// Maps a MAP_READ buffer whose copy has been submitted and returns its bytes (then
    /// unmaps it). Natively the device is polled until the copy is done; a browser polls
    /// its device itself, and the await yields to it.
    pub async fn map_read(&self, staging: &wgpu::Buffer, what: &str) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        rx.await
            .map_err(|_| Error::Device(format!("mapping {what}: the callback never ran")))?
            .map_err(|e| Error::Device(format!("mapping {what}: {e}")))?;
        let range = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(format!("reading {what}: {e}")))?;
        let out = range.to_vec();
        drop(range);
        staging.unmap();
        Ok(out)
    }

    /// Copies `view` back to the host, waiting for all submitted work first.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read<T: Element>(&self, view: View<'_>) -> Result<Vec<T>> {
        pollster::block_on(self.read_async(view))
    }

    /// Reads a whole buffer back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_all<T: Element>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        self.read(buf.view())
    }

    /// Reads a whole buffer back, asynchronously.
    pub async fn read_all_async<T: Element>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        self.read_async(buf.view()).await
    }

    /// Overwrites the start of a float buffer (f32 or f16) with `data`, converted to its type
    /// (f16: rounded to nearest, with `half`).
    pub fn write_floats(&self, buf: &GpuBuffer, data: &[f32]) -> Result<()> {
        match buf.dtype {
            DType::F16 => {
                let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                self.write(buf, &h)
            }
            _ => self.write(buf, data),
        }
    }

    /// A float buffer's values (f32 or f16) as f32.
    pub async fn read_floats_async(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        match buf.dtype {
            DType::F16 => {
                let h: Vec<half::f16> = self.read_all_async(buf).await?;
                Ok(h.iter().map(|v| v.to_f32()).collect())
            }
            _ => self.read_all_async(buf).await,
        }
    }

    /// A float buffer's values (f32 or f16) as f32, waiting for the device.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_floats(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        pollster::block_on(self.read_floats_async(buf))
    }
}
