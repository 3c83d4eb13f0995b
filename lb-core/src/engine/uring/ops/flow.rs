//! One connection's flows in completion-driven forwarding: what each flow
//! holds while bytes are in flight ([`InFlight`]), the pools they borrow
//! from, and the state machine's steps as a flow's request completes
//! (`Ops::step`). Runs on the worker's thread, inside `Ops::complete`.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use super::{Ops, Sq};
use crate::buffer::BufferPool;
use crate::conn::FlowError;
use crate::engine::uring::bufring::BufRing;
use crate::engine::uring::user_data::Op;
use crate::pipe::{Pipe, PipePool};
use crate::sys;

/// Bytes read and not yet all sent (uring-copy): `len` bytes, `sent` of
/// them written.
#[derive(Debug)]
pub(super) struct Held {
    pub store: Store,
    pub len: u32,
    pub sent: u32,
}

/// Where held bytes are.
#[derive(Debug)]
pub(super) enum Store {
    /// In the ring buffer the receive filled.
    Ring(u16),
    /// Copied out of it when the destination was full (see
    /// [`Ops::spill`]): the ring buffer went back at once.
    Spilled(Box<[u8]>),
}

/// What a flow holds between reading bytes and having written them all:
/// a buffer (uring-copy) or a pipe (uring-splice), never both, and nothing
/// while idle (an idle connection holds no memory).
#[derive(Debug, Default)]
pub(super) enum InFlight {
    #[default]
    Idle,
    /// uring-copy: the bytes of the last receive, until they are all sent
    /// (and the send's completion is in).
    Buffer(Held),
    /// uring-splice: the pipe, from a readable source until it is empty
    /// again (and no splice on it is in flight), with the `len` bytes in
    /// it.
    Pipe { pipe: Pipe, len: usize },
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub(super) struct FlowOps {
    /// The one request in flight (its user data is that of
    /// [`Op`] on this flow of this slot at the slot's sequence number).
    pub pending: Option<Op>,
    /// The flow's bytes in flight and what holds them.
    pub in_flight: InFlight,
    /// Waiting in `Ops::starved` for a buffer.
    pub starved: bool,
    /// EOF read and passed on as a FIN: this flow is done.
    pub shut: bool,
}

/// One connection's flows.
#[derive(Debug, Default)]
pub(super) struct OpsConn {
    /// Bumped on every reuse of the slot.
    pub seq: u32,
    /// The worker's token of the connection, for reports.
    pub token: u64,
    /// The worker still has the connection. After [`Ops::stop`] the slot
    /// only waits for its requests' completions to let go of their memory.
    pub live: bool,
    /// Live, or stopped with requests in flight.
    pub used: bool,
    /// [client, backend]: flow `d` reads `fds[d]` and writes `fds[1 - d]`.
    pub fds: [RawFd; 2],
    pub flows: [FlowOps; 2],
    /// After [`Ops::stop`]: the sockets, closed when the slot is freed.
    pub closing: Option<[OwnedFd; 2]>,
}

/// The buffers and pipes flows borrow.
pub(super) struct Pools {
    /// uring-copy's provided buffer ring (None with uring-splice).
    pub bufs: Option<BufRing>,
    /// uring-copy: buffers that hold the bytes of a flow whose destination
    /// is full, so that flows stalled by slow readers never keep the
    /// ring's buffers (one per stalled flow, as the inline copy's).
    pub spills: BufferPool,
    /// uring-splice's pipes (never used with uring-copy).
    pub pipes: PipePool,
}

impl Pools {
    /// Lets go of what a flow with no request in flight holds: its buffer
    /// back to the ring, its pipe back to the pool if empty, else closed.
    pub(super) fn release(&mut self, f: &mut FlowOps) {
        debug_assert!(f.pending.is_none());
        match std::mem::take(&mut f.in_flight) {
            InFlight::Idle => {}
            InFlight::Buffer(h) => match h.store {
                Store::Ring(bid) => self.give_back(bid),
                Store::Spilled(b) => self.spills.give_back(b),
            },
            InFlight::Pipe { pipe, len: 0 } => self.pipes.give_back(pipe),
            InFlight::Pipe { pipe, .. } => self.pipes.discard(pipe),
        }
    }

    pub(super) fn give_back(&mut self, bid: u16) {
        if let Some(b) = &mut self.bufs {
            b.give_back(bid);
        }
    }

    /// Buffers in the ring now.
    pub(super) fn available(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.entries() - b.lent())
    }
}

impl Ops {
    /// The flow `dir` of live slot `index` after its `op` completed with
    /// `res`: submits its next request. Ok(progressed): bytes or a FIN
    /// moved; `moved`: bytes written to the destination.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &mut self,
        sq: &mut Sq,
        index: usize,
        dir: usize,
        op: Op,
        res: i32,
        picked: Option<u16>,
        moved: &mut u64,
    ) -> Result<bool, FlowError> {
        let error = || io::Error::from_raw_os_error(-res);
        let f = &mut self.conns[index].flows[dir];
        match op {
            Op::Recv if res > 0 => {
                let Some(bid) = picked else {
                    return Err(FlowError::Source(io::Error::other(
                        "a receive completed without a buffer",
                    )));
                };
                f.in_flight = InFlight::Buffer(Held {
                    store: Store::Ring(bid),
                    len: res as u32,
                    sent: 0,
                });
                self.write(sq, index, dir);
                Ok(true)
            }
            Op::Recv => {
                if let Some(bid) = picked {
                    self.pools.give_back(bid);
                }
                match -res {
                    0 => self.eof(index, dir),
                    libc::ENOBUFS => {
                        // The bytes wait in the socket; see `wake_starved`.
                        f.starved = true;
                        let seq = self.conns[index].seq;
                        self.starved.push_back((index as u32, seq, dir));
                        Ok(false)
                    }
                    libc::EINTR | libc::EAGAIN => {
                        self.read(sq, index, dir);
                        Ok(false)
                    }
                    _ => Err(FlowError::Source(error())),
                }
            }
            Op::Send if !matches!(f.in_flight, InFlight::Buffer(_)) => Err(FlowError::Destination(
                io::Error::other("a send completed with no buffer held"),
            )),
            Op::Send | Op::SpliceOut => self.wrote(sq, index, dir, res, moved),
            Op::PollIn if res < 0 => Err(FlowError::Source(error())),
            Op::PollIn => {
                self.splice_in(sq, index, dir)?;
                Ok(false)
            }
            Op::SpliceIn => match res {
                1.. => {
                    if let InFlight::Pipe { len, .. } = &mut f.in_flight {
                        *len = res as usize;
                    }
                    self.write(sq, index, dir);
                    Ok(true)
                }
                0 => {
                    self.pools.release(f);
                    self.eof(index, dir)
                }
                _ if matches!(-res, libc::EAGAIN | libc::EINTR) => {
                    // Readable was a false alarm: back to waiting, with no
                    // pipe.
                    self.pools.release(f);
                    self.read(sq, index, dir);
                    Ok(false)
                }
                _ => Err(FlowError::Source(error())),
            },
            Op::PollOut if res < 0 => Err(FlowError::Destination(error())),
            Op::PollOut => {
                self.write(sq, index, dir);
                Ok(false)
            }
        }
    }

    /// A write of the flow's bytes in flight (a send from its buffer or a
    /// splice from its pipe) completed with `res`: the rest is written,
    /// or, all written, the flow reads again; a full destination is waited
    /// for (the bytes out of the shared ring first, see `spill`).
    fn wrote(
        &mut self,
        sq: &mut Sq,
        index: usize,
        dir: usize,
        res: i32,
        moved: &mut u64,
    ) -> Result<bool, FlowError> {
        match res {
            1.. => {
                *moved = res as u64;
                let f = &mut self.conns[index].flows[dir];
                let more = match &mut f.in_flight {
                    InFlight::Buffer(h) => {
                        h.sent = h.sent.saturating_add(res as u32);
                        h.sent < h.len
                    }
                    InFlight::Pipe { len, .. } => {
                        *len = len.saturating_sub(res as usize);
                        *len > 0
                    }
                    InFlight::Idle => false,
                };
                if more {
                    self.write(sq, index, dir);
                } else {
                    self.pools.release(f);
                    self.read(sq, index, dir);
                }
                Ok(true)
            }
            0 => Err(FlowError::Destination(io::ErrorKind::WriteZero.into())),
            _ if -res == libc::EINTR => {
                self.write(sq, index, dir);
                Ok(false)
            }
            _ if -res == libc::EAGAIN => {
                // The destination is full (writes do not wait).
                self.spill(index, dir);
                self.poll(sq, index, dir, Op::PollOut);
                Ok(false)
            }
            _ => Err(FlowError::Destination(io::Error::from_raw_os_error(-res))),
        }
    }

    /// EOF from the source of a flow with nothing in flight: FIN to the
    /// destination.
    fn eof(&mut self, index: usize, dir: usize) -> Result<bool, FlowError> {
        let c = &mut self.conns[index];
        sys::shutdown_write(c.fds[1 - dir]).map_err(FlowError::Destination)?;
        c.flows[dir].shut = true;
        Ok(true)
    }

    /// Moves the unsent bytes of the flow's ring buffer into a spill buffer
    /// of its own and gives the ring buffer back. For a flow whose
    /// destination is full: the ring is shared by every flow of the worker
    /// and a few readers that stop reading must not hold all of it (every
    /// other flow would wait for a buffer for as long as they stall).
    fn spill(&mut self, index: usize, dir: usize) {
        #[cfg(test)]
        if self.keep_ring_when_stalled {
            return;
        }
        let f = &mut self.conns[index].flows[dir];
        let (InFlight::Buffer(h), Some(bufs)) = (&mut f.in_flight, &self.pools.bufs) else {
            return;
        };
        let Store::Ring(bid) = h.store else {
            return;
        };
        let rest = bufs.bytes(bid, h.sent as usize, h.len as usize);
        let mut spilled = self.pools.spills.take();
        spilled[..rest.len()].copy_from_slice(rest);
        h.len = rest.len() as u32;
        h.sent = 0;
        h.store = Store::Spilled(spilled);
        self.pools.give_back(bid);
    }
}
