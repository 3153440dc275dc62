//! Keeping the host a bounded number of submissions ahead of the device.

use std::collections::VecDeque;

use futures_channel::oneshot;

use super::Gpu;
use crate::error::{Error, Result};

/// A submission and the signal that it has finished.
struct Pending {
    index: wgpu::SubmissionIndex,
    done: oneshot::Receiver<()>,
}

/// At most `depth` submissions in flight: pushing one more waits for the oldest.
pub struct InFlight {
    queue: VecDeque<Pending>,
    depth: usize,
}

impl InFlight {
    pub fn new(depth: usize) -> InFlight {
        InFlight {
            queue: VecDeque::new(),
            depth: depth.max(1),
        }
    }

    /// Records `index`, which must be the latest submission, then waits (natively: blocks
    /// in the device's poll; in a browser: yields to its event loop) while more than
    /// `depth` are unfinished.
    pub async fn push_async(&mut self, gpu: &Gpu, index: wgpu::SubmissionIndex) -> Result<()> {
        self.queue.push_back(Pending {
            index,
            done: gpu.work_done(),
        });
        while self.queue.len() > self.depth {
            let oldest = self.queue.pop_front().expect("non-empty");
            gpu.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest.index),
                    timeout: None,
                })
                .map_err(|e| Error::Device(format!("waiting for a submission: {e}")))?;
            oldest.done.await.map_err(|_| {
                Error::Device("a submission's completion was never signalled".into())
            })?;
        }
        Ok(())
    }

    /// [`InFlight::push_async`], blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn push(&mut self, gpu: &Gpu, index: wgpu::SubmissionIndex) -> Result<()> {
        pollster::block_on(self.push_async(gpu, index))
    }
}

impl Gpu {
    /// A signal that fires once everything submitted so far has finished (natively, only
    /// while the device is polled).
    pub fn work_done(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        rx
    }

    /// Waits until all submitted work has finished (in a browser: yields until it has).
    pub async fn finish(&self) -> Result<()> {
        let done = self.work_done();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        done.await
            .map_err(|_| Error::Device("the queue's completion was never signalled".into()))
    }
}
