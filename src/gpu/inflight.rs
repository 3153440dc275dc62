//! Keeping the host a bounded number of submissions ahead of the device.

use std::collections::VecDeque;

use super::Gpu;
use crate::error::{Error, Result};

/// At most `depth` submissions in flight: pushing one more waits for the oldest.
pub struct InFlight {
    queue: VecDeque<wgpu::SubmissionIndex>,
    depth: usize,
}

impl InFlight {
    pub fn new(depth: usize) -> InFlight {
        InFlight {
            queue: VecDeque::new(),
            depth: depth.max(1),
        }
    }

    pub fn push(&mut self, gpu: &Gpu, idx: wgpu::SubmissionIndex) -> Result<()> {
        self.queue.push_back(idx);
        while self.queue.len() > self.depth {
            let oldest = self.queue.pop_front().expect("non-empty");
            gpu.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest),
                    timeout: None,
                })
                .map_err(|e| Error::Device(format!("waiting for a submission: {e}")))?;
        }
        Ok(())
    }
}
