//! Per-worker pool of splice pipes. Owned by one worker thread; no sharing.
//!
//! A connection takes a pipe only while bytes are in flight in one direction
//! and gives it back as soon as the pipe is empty, so an idle connection
//! holds none. The pool keeps at most `cap` idle pipes; a pipe that still
//! holds bytes when its connection dies is closed, never reused (its bytes
//! would leak into another connection).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

/// A kernel pipe used as the zero-copy buffer between two sockets.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Capacity the kernel granted, in bytes.
    capacity: usize,
}

impl Pipe {
    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
    pub(crate) fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Idle pipes of one worker, and how many it has made in all.
#[derive(Debug)]
pub(crate) struct PipePool {
    idle: Vec<Pipe>,
    /// Most idle pipes kept; more are closed when returned.
    cap: usize,
    /// Capacity asked of each new pipe.
    size: usize,
    /// Pipes currently lent out (for the leak checks in tests and metrics).
    lent: usize,
}

impl PipePool {
    pub(crate) fn new(size: usize, cap: usize) -> PipePool {
        PipePool {
            idle: Vec::with_capacity(cap.min(1024)),
            cap,
            size,
            lent: 0,
        }
    }

    /// True while fewer than the pool's cap are lent: `forwarding =
    /// "auto"` splices only then (a flow that finds none copies), which
    /// keeps the worker's pipes, idle and lent, within the cap (a pipe is
    /// made only when none is idle) and so within the connection budget's
    /// reserve (`budget.rs`).
    pub(crate) fn may_lend(&self) -> bool {
        self.lent < self.cap
    }

    /// Takes an empty pipe, making one if none is idle.
    pub(crate) fn take(&mut self) -> io::Result<Pipe> {
        let pipe = match self.idle.pop() {
            Some(p) => p,
            None => {
                let (read, write) = sys::pipe()?;
                let capacity = sys::set_pipe_size(write.as_raw_fd(), self.size)?;
                Pipe {
                    read,
                    write,
                    capacity,
                }
            }
        };
        self.lent += 1;
        Ok(pipe)
    }

    /// Gives back a pipe the caller knows to be empty.
    pub(crate) fn give_back(&mut self, pipe: Pipe) {
        self.lent = self.lent.saturating_sub(1);
        if self.idle.len() < self.cap {
            self.idle.push(pipe);
        }
    }

    /// Closes a pipe that may still hold bytes.
    pub(crate) fn discard(&mut self, pipe: Pipe) {
        self.lent = self.lent.saturating_sub(1);
        drop(pipe);
    }

    pub(crate) fn lent(&self) -> usize {
        self.lent
    }
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    // A failed unwrap in a test is a failed test.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pool_reuses_up_to_cap_and_counts_loans() {
        let mut pool = PipePool::new(1 << 16, 1);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(a.capacity() >= 1 << 16);
        assert_eq!(pool.lent(), 2);
        let a_fd = a.read_fd();
        pool.give_back(a);
        pool.give_back(b); // over the cap: closed
        assert_eq!((pool.lent(), pool.idle()), (0, 1));
        let again = pool.take().unwrap();
        assert_eq!(again.read_fd(), a_fd);
        pool.discard(again);
        assert_eq!((pool.lent(), pool.idle()), (0, 0));
    }
}
