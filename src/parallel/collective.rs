//! Collectives over a [`Transport`]: the ring all-reduce of the gradients, all-gather,
//! broadcast from rank 0, and the small agreements a training loop needs. Every one sums
//! in an order fixed by the ranks alone, so a run is reproducible bit for bit, and
//! [`ring_mean`] computes the all-reduce's exact result in one process (the simulator's and
//! the tests' oracle).

use super::Transport;
use crate::error::{Error, Result};

/// The communicator of one rank.
pub struct Collective {
    transport: Box<dyn Transport>,
}

/// Elements [start, end) of chunk `c` when `len` elements are cut into `n` chunks.
fn chunk(len: usize, n: usize, c: usize) -> std::ops::Range<usize> {
    c * len / n..(c + 1) * len / n
}

/// The mean of `parts` (one slice per rank, equal lengths) exactly as [`Collective::
/// all_reduce_mean`] computes it on `parts.len()` ranks: element i of chunk c is summed
/// from rank c onward around the ring, ((x_c + x_c+1) + x_c+2) + ..., then divided by the
/// rank count.
pub fn ring_mean(parts: &[&[f32]]) -> Vec<f32> {
    let n = parts.len();
    let len = parts.first().map_or(0, |p| p.len());
    let mut out = vec![0f32; len];
    for c in 0..n {
        for i in chunk(len, n, c) {
            let mut acc = parts[c][i];
            for j in 1..n {
                acc += parts[(c + j) % n][i];
            }
            out[i] = acc / n as f32;
        }
    }
    out
}

impl Collective {
    pub fn new(transport: Box<dyn Transport>) -> Collective {
        Collective { transport }
    }

    pub fn rank(&self) -> usize {
        self.transport.rank()
    }

    pub fn size(&self) -> usize {
        self.transport.size()
    }

    fn next(&self) -> usize {
        (self.rank() + 1) % self.size()
    }

    fn prev(&self) -> usize {
        (self.rank() + self.size() - 1) % self.size()
    }

    /// Replaces `data` on every rank by its mean over the ranks: a ring reduce-scatter (each
    /// chunk summed from its own rank onward) and a ring all-gather, 2 (n - 1) / n of the
    /// bytes each way per rank, the bandwidth-optimal all-reduce. The order of every sum
    /// is fixed, so every rank ends with the same bits as [`ring_mean`] of the inputs.
    pub fn all_reduce_mean(&self, data: &mut [f32]) -> Result<()> {
        let (n, r, len) = (self.size(), self.rank(), data.len());
        if n == 1 {
            return Ok(());
        }
        let largest = (0..n).map(|c| chunk(len, n, c).len()).max().unwrap_or(0);
        let mut inbox = vec![0f32; largest];
        // Step s: send chunk r - s (summed over s + 1 ranks), receive chunk r - s - 1 and
        // add this rank's own values to it.
        for s in 0..n - 1 {
            let send = chunk(len, n, (r + n - s) % n);
            let recv = chunk(len, n, (r + 2 * n - s - 1) % n);
            let got = &mut inbox[..recv.len()];
            self.transport.exchange(
                Some((self.next(), bytemuck::cast_slice(&data[send]))),
                Some((self.prev(), bytemuck::cast_slice_mut(got))),
            )?;
            for (d, g) in data[recv].iter_mut().zip(got.iter()) {
                *d += *g;
            }
        }
        // This rank now holds chunk r + 1 summed over every rank: divide it, then pass the
        // finished chunks around.
        let own = chunk(len, n, (r + 1) % n);
        for v in &mut data[own] {
            *v /= n as f32;
        }
        for s in 0..n - 1 {
            let send = chunk(len, n, (r + 1 + n - s) % n);
            let recv = chunk(len, n, (r + n - s) % n);
            let got = &mut inbox[..recv.len()];
            self.transport.exchange(
                Some((self.next(), bytemuck::cast_slice(&data[send]))),
                Some((self.prev(), bytemuck::cast_slice_mut(got))),
            )?;
            data[recv].copy_from_slice(got);
        }
        Ok(())
    }

    /// Every rank's `mine`, in rank order (lengths may differ).
    pub fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lens = self.all_gather_fixed(&(mine.len() as u64).to_le_bytes())?;
        let mut out: Vec<Vec<u8>> = lens
            .iter()
            .map(|b| vec![0u8; u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize])
            .collect();
        out[self.rank()].copy_from_slice(mine);
        self.ring_gather(&mut out)?;
        Ok(out)
    }

    /// [`Collective::all_gather`] of values of one size on every rank.
    fn all_gather_fixed(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (n, r) = (self.size(), self.rank());
        let mut out = vec![vec![0u8; mine.len()]; n];
        out[r].copy_from_slice(mine);
        self.ring_gather(&mut out)?;
        Ok(out)
    }

    /// Fills `blocks` (one per rank, each sized, this rank's own filled in) around the ring:
    /// at step s each rank passes on the block it received at step s - 1.
    fn ring_gather(&self, blocks: &mut [Vec<u8>]) -> Result<()> {
        let (n, r) = (self.size(), self.rank());
        for s in 0..n - 1 {
            let (send, recv) = ((r + n - s) % n, (r + 2 * n - s - 1) % n);
            let outgoing = blocks[send].clone();
            self.transport.exchange(
                Some((self.next(), &outgoing)),
                Some((self.prev(), &mut blocks[recv])),
            )?;
        }
        Ok(())
    }

    /// Rank 0's `data` on every rank (the others' is replaced), passed along the chain.
    pub fn broadcast(&self, data: &mut Vec<u8>) -> Result<()> {
        let (n, r) = (self.size(), self.rank());
        if n == 1 {
            return Ok(());
        }
        let mut len = (data.len() as u64).to_le_bytes();
        let send_to = (r + 1 < n).then_some(r + 1);
        if r > 0 {
            self.transport.exchange(None, Some((r - 1, &mut len)))?;
            data.resize(u64::from_le_bytes(len) as usize, 0);
            self.transport.exchange(None, Some((r - 1, data)))?;
        }
        if let Some(to) = send_to {
            self.transport.exchange(Some((to, &len)), None)?;
            self.transport.exchange(Some((to, data)), None)?;
        }
        Ok(())
    }

    /// The sums of `values` over the ranks, added in rank order (the same bits everywhere).
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let all = self.all_gather_fixed(bytemuck::cast_slice(values))?;
        let mut out = vec![0f64; values.len()];
        for part in &all {
            let v: Vec<f64> = bytemuck::pod_collect_to_vec(part);
            for (o, x) in out.iter_mut().zip(v) {
                *o += x;
            }
        }
        Ok(out)
    }

    /// Whether any rank says `yes` (Ctrl-C on one rank stops them all at the same step).
    pub fn any(&self, yes: bool) -> Result<bool> {
        let all = self.all_gather_fixed(&[yes as u8])?;
        Ok(all.iter().any(|b| b[0] != 0))
    }

    /// Fails on every rank, naming the first that differs, unless all ranks hold the same
    /// `bytes` (e.g. the weights after an epoch).
    pub fn check_same(&self, what: &str, bytes: &[u8]) -> Result<()> {
        let digest = fnv1a(bytes).to_le_bytes();
        let all = self.all_gather_fixed(&digest)?;
        match all.iter().position(|d| d != &all[0]) {
            None => Ok(()),
            Some(r) => Err(Error::Device(format!(
                "rank {r}'s {what} differ from rank 0's: the replicas diverged (a kernel that \
                 is not deterministic, or ranks built with different settings)"
            ))),
        }
    }
}

/// FNV-1a over the bytes: a digest to compare replicas, not a cryptographic hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
