//! Data-parallel training: one replica of the plan per GPU, each on its shard of every
//! global batch, the gradients averaged through host memory before every update (wgpu
//! cannot share buffers between devices or with NCCL), so every replica takes the same
//! step. docs/PARALLEL.md has the launch recipes and the cost model.
//!
//! - [`Transport`]: point-to-point bytes between ranks with a deadline: MPI
//!   ([`mpi::MpiTransport`], cargo feature `mpi`), or threads in one process
//!   ([`threads`], tests).
//! - [`Collective`]: the ring all-reduce, all-gather, broadcast and agreements on top, in
//!   an order fixed by the ranks alone (bit-for-bit reproducible runs).
//! - [`replica::Replica`]: one rank's training step: the plan's commands cut at gradient
//!   buckets (reduced while the backward still runs) and at synchronized batch norms.
//! - [`simulate::Simulated`]: the same step for N replicas in one process, the oracle the
//!   MPI runs are tested against (`--simulate-ranks N`).

mod collective;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod replica;
pub mod simulate;
pub mod threads;

pub use collective::{ring_mean, Collective};

use crate::error::Result;

/// Bytes between the ranks of one job.
pub trait Transport {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sends `send`'s bytes to its rank while receiving exactly `recv`'s length from its
    /// rank (either may be absent); returns when both are done, or fails once the other
    /// side has not answered within the transport's deadline (a rank that died).
    fn exchange(
        &self,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, &mut [u8])>,
    ) -> Result<()>;
}

/// The ranks of a data-parallel run and what they agree on.
pub struct Ranks {
    pub comm: Collective,
    /// Synchronized batch norm: every rank normalizes with the global batch's statistics.
    pub sync_bn: bool,
    /// Gradients are reduced in buckets of at least this many bytes (PyTorch DDP's
    /// `bucket_cap_mb`), each as soon as the backward has written it.
    pub bucket_bytes: u64,
}

/// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun) of more
/// than one process.
pub fn launched_by_mpi() -> bool {
    let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok());
    size.is_some_and(|n| n > 1)
}

/// The default bucket: a few per step for the d2l network (3 MB of gradients), about 32 for
/// DenseNet-121 (32 MB).
pub const DEFAULT_BUCKET_MIB: f64 = 1.0;
