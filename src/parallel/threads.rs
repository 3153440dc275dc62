//! Ranks as threads of one process, joined by channels: the collectives' tests run on it,
//! and it shows what a [`Transport`] must do.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use super::Transport;
use crate::error::{Error, Result};

/// One thread's end: a sender to every rank and its own inbox.
pub struct ThreadTransport {
    rank: usize,
    peers: Vec<Sender<(usize, Vec<u8>)>>,
    inbox: Receiver<(usize, Vec<u8>)>,
    /// Messages that arrived from other ranks than the one being waited for.
    early: Mutex<Vec<VecDeque<Vec<u8>>>>,
    deadline: Duration,
}

/// `n` connected transports, one per rank, each giving up after `deadline` of silence.
pub fn connected(n: usize, deadline: Duration) -> Vec<ThreadTransport> {
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..n).map(|_| channel()).unzip();
    inboxes
        .into_iter()
        .enumerate()
        .map(|(rank, inbox)| ThreadTransport {
            rank,
            peers: senders.clone(),
            inbox,
            early: Mutex::new(vec![VecDeque::new(); n]),
            deadline,
        })
        .collect()
}

impl Transport for ThreadTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.peers.len()
    }

    fn exchange(
        &self,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, &mut [u8])>,
    ) -> Result<()> {
        if let Some((to, bytes)) = send {
            // A rank that has gone drops its inbox: the send fails as MPI's would time out.
            self.peers[to]
                .send((self.rank, bytes.to_vec()))
                .map_err(|_| Error::Device(format!("rank {to} has gone")))?;
        }
        let Some((from, buf)) = recv else {
            return Ok(());
        };
        let mut early = self.early.lock().expect("one user per transport");
        let msg = loop {
            if let Some(m) = early[from].pop_front() {
                break m;
            }
            match self.inbox.recv_timeout(self.deadline) {
                Ok((src, m)) => early[src].push_back(m),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(Error::Device(format!(
                        "rank {}: nothing from rank {from} for {:.0} s: it has likely died",
                        self.rank,
                        self.deadline.as_secs_f64()
                    )))
                }
            }
        };
        if msg.len() != buf.len() {
            return Err(Error::Device(format!(
                "rank {}: rank {from} sent {} bytes where {} were expected: the ranks run \
                 different plans",
                self.rank,
                msg.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(&msg);
        Ok(())
    }
}
