//! The commands a plan records: dispatches and buffer clears, and how a list of them is
//! encoded into one command encoder. The bottom of the plan's side: it knows only kernels.

use crate::kernels::Dispatch;

/// One command of a recorded pass.
pub enum Cmd {
    Run(Dispatch),
    /// Zero `size` bytes of a buffer from `offset` (gradients accumulate, so what they
    /// accumulate into starts at zero).
    Zero {
        buffer: wgpu::Buffer,
        offset: u64,
        size: u64,
    },
    /// Where a replica of a data-parallel run stops and agrees with the others before
    /// going on (synchronized batch norm); recorded as nothing.
    Sync(Sync),
}

/// What the replicas agree on at a [`Cmd::Sync`] (ranges in elements).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sync {
    /// The batch mean and variance of `len` channels from statistics slot `offset` (in
    /// `batch_mean` and `batch_var`): each replica's become the global batch's.
    BnStats { offset: u64, len: u64 },
    /// A batch norm's backward sums, sum(dy * xhat) and sum(dy), in the gradients at `dgamma`
    /// and `dbeta` (`len` each): each replica's become their mean over the replicas.
    BnSums { dgamma: u64, dbeta: u64, len: u64 },
}

impl Cmd {
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Run(d) => d.name(),
            Cmd::Zero { .. } => "clear_buffer",
            Cmd::Sync(_) => "sync",
        }
    }
}

/// Records commands into `enc`: consecutive dispatches share one compute pass, clears sit
/// between passes.
pub fn encode(cmds: &[Cmd], enc: &mut wgpu::CommandEncoder) {
    let mut i = 0;
    while i < cmds.len() {
        match &cmds[i] {
            Cmd::Zero {
                buffer,
                offset,
                size,
            } => {
                enc.clear_buffer(buffer, *offset, Some(*size));
                i += 1;
            }
            Cmd::Sync(_) => i += 1,
            Cmd::Run(_) => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("densenet"),
                    timestamp_writes: None,
                });
                while let Some(Cmd::Run(d)) = cmds.get(i) {
                    d.record(&mut pass);
                    i += 1;
                }
            }
        }
    }
}
