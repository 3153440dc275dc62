//! The MPI transport (cargo feature `mpi`): nonblocking sends and receives polled against
//! a deadline, so that a rank whose peer died stops with a clear error instead of hanging.

use std::time::{Duration, Instant};

use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;

use super::Transport;
use crate::error::{Error, Result};

/// One MPI process's end of the world communicator.
pub struct MpiTransport {
    // Finalizes MPI when dropped; kept for the life of the transport.
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    local_rank: usize,
    deadline: Duration,
}

impl MpiTransport {
    /// Initializes MPI (once per process); a peer silent for `deadline` is taken for dead.
    pub fn init(deadline: Duration) -> Result<MpiTransport> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Device("MPI was already initialized in this process".into()))?;
        let world = universe.world();
        // The ranks that share this machine, numbered from 0: each takes its own GPU.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(MpiTransport {
            _universe: universe,
            world,
            local_rank,
            deadline,
        })
    }

    /// This process's index among the ranks on its machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Stops every rank of the job (after an error on this one).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) {
        self.world.barrier();
    }
}

impl MpiTransport {
    fn give_up(&self, peer: usize) -> ! {
        eprintln!(
            "error: rank {}: no answer from rank {peer} for {:.0} s: it has likely died (see \
             its output); stopping every rank (--rank-timeout sets the wait)",
            self.world.rank(),
            self.deadline.as_secs_f64()
        );
        self.abort(3)
    }
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn exchange(
        &self,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, &mut [u8])>,
    ) -> Result<()> {
        let peer = send
            .as_ref()
            .map(|s| s.0)
            .or(recv.as_ref().map(|r| r.0))
            .unwrap_or(0);
        let started = Instant::now();
        mpi::request::scope(|scope| {
            let to = |r: usize| self.world.process_at_rank(r as i32);
            let mut s = send.map(|(r, b)| to(r).immediate_send(scope, b));
            let mut r = recv.map(|(r, b)| to(r).immediate_receive_into(scope, b));
            let mut spins = 0u32;
            while s.is_some() || r.is_some() {
                s = s.and_then(|q| q.test().err());
                r = r.and_then(|q| q.test().err());
                if started.elapsed() > self.deadline {
                    // An unfinished request cannot be dropped: the job ends here.
                    self.give_up(peer);
                }
                spins += 1;
                match spins < 2000 {
                    true => std::thread::yield_now(),
                    false => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        });
        Ok(())
    }
}
