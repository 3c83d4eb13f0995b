//! Completion-driven forwarding: `forwarding = "uring-copy"` and
//! `forwarding = "uring-splice"`. The io_uring engine's alternative to the
//! worker's inline pumps (`conn`): here the kernel does each read and write
//! as a ring request and this module, on the worker's thread, chains them
//! as completions arrive. Owned by the worker's `UringReactor`.
//!
//! # State machine
//!
//! An established connection is two flows, up (client → backend) and down
//! (backend → client). Each flow is a loop with exactly one request in
//! flight at a time:
//!
//! - uring-copy: `RECV` with buffer select (the kernel picks a buffer of
//!   the worker's provided buffer ring when bytes arrive, so a pending
//!   receive on an idle connection holds no memory) → `SEND` of exactly
//!   those bytes, again for the rest after a short send, in order → the
//!   buffer goes back to the ring → `RECV` … Sends do not wait
//!   (`MSG_DONTWAIT`): when the destination is full the unsent bytes move
//!   to a spill buffer of the flow's own, the ring buffer goes back at
//!   once, and a `POLL_ADD` writable comes before the next `SEND`. The ring
//!   is shared by the worker's flows; readers that stop reading must not
//!   hold it.
//! - uring-splice: `POLL_ADD` (one-shot, readable) → a pipe from the
//!   worker's pool → `SPLICE` socket → pipe → `SPLICE` pipe → socket until
//!   the pipe is empty (`POLL_ADD` writable first when the socket is full)
//!   → the pipe goes back → `POLL_ADD` … The kernel runs every
//!   `IORING_OP_SPLICE` on an io-wq thread, and a blocking splice would
//!   hold that thread for as long as the socket stays idle; the sockets and
//!   pipes are non-blocking, so each splice returns at once (`EAGAIN` when
//!   there is nothing to do) and the poll does the waiting, without a
//!   thread or a pipe. io-wq is capped per worker ([`IOWQ_MAX_WORKERS`]).
//!
//! The next read is submitted only after the bytes of the previous one are
//! all written: a slow reader stops ringlb reading from its writer, and
//! memory in flight is one buffer or pipe per busy flow (backpressure).
//! When the buffer ring is empty a receive fails with `ENOBUFS`: the flow
//! waits in a queue and its receive is submitted again once the ring has a
//! buffer (checked after every completion and once per turn; a flow waits
//! again only after the ring ran empty again, so nothing spins), and its
//! bytes wait in the socket.
//!
//! TCP semantics are the inline state machine's: a read of 0 (EOF), which
//! comes only after every earlier byte was written, becomes
//! `shutdown(SHUT_WR)` on the other socket and the other flow goes on
//! (half-close); a failed read or write ends the connection with the resets
//! [`FlowError`] prescribes (the failed side closed, the other reset); both
//! flows shut is a plain close. Each completion is reported to the worker
//! ([`Report`]) with the bytes written, so metrics and idle timeouts work as
//! for the inline strategies.
//!
//! # Lifetimes
//!
//! - A request holds its own reference to its socket (and pipe): closing an
//!   fd does not end it. And a request queued in this turn is submitted
//!   only with the next enter, when the kernel looks its fd *number* up:
//!   closed by then, that number may already belong to a socket accepted
//!   in the same turn, whose bytes the stale receive would take. So when
//!   the worker ends a connection it hands its sockets to [`Ops::stop`]
//!   (SO_LINGER already set where a reset is due), which queues an
//!   `ASYNC_CANCEL` by user_data for each request of the connection still
//!   in flight and closes the sockets only when the last of them has
//!   completed (the FIN or RST goes out then, typically one turn later).
//! - Memory is another matter: a cancelled request may already be running,
//!   and until its final completion the kernel may still read a send's
//!   bytes or write into a pipe. So the flow record, not the worker's
//!   connection, owns what its request uses (the buffer id of a send, the
//!   pipe of a splice), and it lives on after [`Ops::stop`] until that
//!   completion: then the buffer goes back to the ring whatever the
//!   completion says, and the pipe back to the pool if it is known empty,
//!   else it is closed (never lent again with stray bytes in it). A
//!   connection's slot here is reused only once none of its requests is in
//!   flight.
//! - user_data carries the slot, its sequence number (bumped on every
//!   reuse), the direction and the operation; a completion is checked
//!   against the slot's sequence and the flow's one pending request, so a
//!   stale one is never taken for a new connection's. Reports carry the
//!   worker's token, whose slot generation the worker checks again; a
//!   stopped connection reports nothing.
//! - The buffer ring's memory is unmapped only when no request is in
//!   flight: the engine waits for the last completions after `close_all`
//!   (bounded), and if some never come the memory is leaked, not freed
//!   under the kernel.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, Probe, Submitter};

use super::bufring::BufRing;
use super::{Sq, KIND_OP, KIND_SHIFT};
use crate::buffer::BufferPool;
use crate::conn::{FlowError, Outcome, Side};
use crate::pipe::{Pipe, PipePool};
use crate::sys;
use crate::worker::RingForwarding;

/// io-wq threads per worker for `uring-splice`: [bounded, unbounded]
/// (splices between sockets and pipes run on the unbounded list). Every
/// splice here is non-blocking, so none waits in io-wq for data, and the
/// threads inherit the worker's CPU affinity: more threads cannot add
/// throughput, only kernel threads (uncapped, the kernel made 16 for 8
/// busy connections). Measured on 2 vCPUs, proxy pinned to one, wrk
/// keep-alive with 64 connections, 6 alternating runs of each: 1 thread
/// cost 28.1 (25.5..30.8) µs/request, 2 threads 25.4 (23.8..25.7), the
/// same as uncapped within noise (presumably because a lone thread
/// serialises every splice, and none can take over while it sleeps, e.g.
/// on a socket lock); bulk transfers showed no difference.
pub(crate) const IOWQ_MAX_WORKERS: [u32; 2] = [2, 2];

/// Memory of one worker's provided buffer ring (uring-copy): buffers of
/// `pipe_size` bytes (as the inline copy's), as many as fit, within
/// [`MIN_BUFFERS`, `MAX_BUFFERS`].
const BUFFER_MEMORY: usize = 16 << 20;
const MIN_BUFFERS: usize = 16;
const MAX_BUFFERS: usize = 1024;
/// Spill buffers a worker keeps for reuse (more are allocated while more
/// flows are stalled, and freed when they drain).
const SPILLS_IDLE: usize = 16;
/// The buffer group of the worker's ring (one per ring).
const BUFFER_GROUP: u16 = 0;

/// user_data: kind (4 bits) | op (4) | direction (1) | sequence (23) |
/// slot (32).
const OP_SHIFT: u32 = 56;
const DIR_SHIFT: u32 = 55;
const SEQ_SHIFT: u32 = 32;
const SEQ_MASK: u32 = (1 << 23) - 1;

/// The request a flow has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Recv = 1,
    Send = 2,
    PollIn = 3,
    PollOut = 4,
    SpliceIn = 5,
    SpliceOut = 6,
}

impl Op {
    fn from_bits(bits: u64) -> Option<Op> {
        Some(match bits {
            1 => Op::Recv,
            2 => Op::Send,
            3 => Op::PollIn,
            4 => Op::PollOut,
            5 => Op::SpliceIn,
            6 => Op::SpliceOut,
            _ => return None,
        })
    }
}

/// Flow index: up (client → backend) is 0, down is 1.
const UP: usize = 0;
const DOWN: usize = 1;

fn user_data(op: Op, dir: usize, seq: u32, index: u32) -> u64 {
    (KIND_OP << KIND_SHIFT)
        | ((op as u64) << OP_SHIFT)
        | ((dir as u64) << DIR_SHIFT)
        | (u64::from(seq & SEQ_MASK) << SEQ_SHIFT)
        | u64::from(index)
}

/// (op, direction, sequence, slot) of an ops user_data.
fn decode(ud: u64) -> Option<(Op, usize, u32, usize)> {
    let op = Op::from_bits((ud >> OP_SHIFT) & 0xf)?;
    let dir = ((ud >> DIR_SHIFT) & 1) as usize;
    let seq = (ud >> SEQ_SHIFT) as u32 & SEQ_MASK;
    Some((op, dir, seq, ud as u32 as usize))
}

/// A connection the worker handed over: the handle it keeps.
fn handle(index: u32, seq: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(index)
}

/// What a completion meant for a live connection, for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    /// The worker's token of the connection.
    pub token: u64,
    /// Bytes written to the backend / to the client by this completion.
    pub up: u64,
    pub down: u64,
    /// `Open { progressed, .. }`, `Finished` or `Aborted` as from the
    /// inline pumps; `starved` is never set (there is no budget here).
    pub outcome: Outcome,
}

/// Bytes read and not yet all sent (uring-copy): `len` bytes, `sent` of
/// them written.
#[derive(Debug)]
struct Held {
    store: Store,
    len: u32,
    sent: u32,
}

/// Where held bytes are.
#[derive(Debug)]
enum Store {
    /// In the ring buffer the receive filled.
    Ring(u16),
    /// Copied out of it when the destination was full (see
    /// [`Ops::spill`]): the ring buffer went back at once.
    Spilled(Box<[u8]>),
}

/// One direction of a connection.
#[derive(Debug, Default)]
struct FlowOps {
    /// user_data of the one request in flight.
    pending: Option<u64>,
    /// uring-copy: the bytes of the last receive, until they are all sent
    /// (and the send's completion is in).
    held: Option<Held>,
    /// uring-splice: the pipe, from a readable source until it is empty
    /// again (and no splice on it is in flight).
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// Waiting in `Ops::starved` for a buffer.
    starved: bool,
    /// EOF read and passed on as a FIN: this flow is done.
    shut: bool,
}

/// One connection's flows.
#[derive(Debug, Default)]
struct OpsConn {
    /// Bumped on every reuse of the slot.
    seq: u32,
    /// The worker's token of the connection, for reports.
    token: u64,
    /// The worker still has the connection. After [`Ops::stop`] the slot
    /// only waits for its requests' completions to let go of their memory.
    live: bool,
    /// Live, or stopped with requests in flight.
    used: bool,
    /// [client, backend]: flow `d` reads `fds[d]` and writes `fds[1 - d]`.
    fds: [RawFd; 2],
    flows: [FlowOps; 2],
    /// After [`Ops::stop`]: the sockets, closed when the slot is freed.
    closing: Option<[OwnedFd; 2]>,
}

/// The buffers and pipes flows borrow.
struct Pools {
    /// uring-copy's provided buffer ring (None with uring-splice).
    bufs: Option<BufRing>,
    /// uring-copy: buffers that hold the bytes of a flow whose destination
    /// is full, so that flows stalled by slow readers never keep the
    /// ring's buffers (one per stalled flow, as the inline copy's).
    spills: BufferPool,
    /// uring-splice's pipes (never used with uring-copy).
    pipes: PipePool,
}

impl Pools {
    /// Lets go of what a flow with no request in flight holds: its buffer
    /// back to the ring, its pipe back to the pool if empty, else closed.
    fn release(&mut self, f: &mut FlowOps) {
        debug_assert!(f.pending.is_none());
        if let Some(h) = f.held.take() {
            match h.store {
                Store::Ring(bid) => self.give_back(bid),
                Store::Spilled(b) => self.spills.give_back(b),
            }
        }
        if let Some(p) = f.pipe.take() {
            if f.in_pipe == 0 {
                self.pipes.give_back(p);
            } else {
                self.pipes.discard(p);
            }
        }
        f.in_pipe = 0;
    }

    fn give_back(&mut self, bid: u16) {
        if let Some(b) = &mut self.bufs {
            b.give_back(bid);
        }
    }

    /// Buffers in the ring now.
    fn available(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.entries() - b.lent())
    }
}

/// One worker's completion-driven flows.
pub(crate) struct Ops {
    pools: Pools,
    /// Slots, reused through `free`.
    conns: Vec<OpsConn>,
    free: Vec<u32>,
    /// Flows whose receive found the buffer ring empty, in order: (slot,
    /// sequence, direction). At most one entry per flow is current (the
    /// flow's `starved` flag); others are skipped.
    starved: VecDeque<(u32, u32, usize)>,
    /// Requests submitted and not yet finally completed.
    in_flight: usize,
    /// Tests of the empty-ring path: stalled flows keep their ring
    /// buffers (no spill), which is how a test empties the ring.
    #[cfg(test)]
    keep_ring_when_stalled: bool,
}

impl Ops {
    /// The ops for `forwarding` on the ring of `submitter`. Err: this
    /// kernel lacks something they need (the worker's pumps then run the
    /// inline equivalent).
    pub(crate) fn new(
        forwarding: RingForwarding,
        submitter: &Submitter,
        pipe_size: usize,
        pipe_pool: usize,
    ) -> io::Result<Ops> {
        let needed: &[(u8, &str)] = match forwarding {
            RingForwarding::Copy => &[(opcode::Recv::CODE, "RECV"), (opcode::Send::CODE, "SEND")],
            RingForwarding::Splice => &[
                (opcode::Splice::CODE, "SPLICE"),
                (opcode::PollAdd::CODE, "POLL_ADD"),
            ],
        };
        let mut probe = Probe::new();
        submitter.register_probe(&mut probe)?;
        if let Some((_, name)) = needed.iter().find(|(code, _)| !probe.is_supported(*code)) {
            return Err(io::Error::other(format!(
                "the kernel's io_uring lacks {name}"
            )));
        }
        let size = pipe_size.clamp(4096, 1 << 20);
        let bufs = match forwarding {
            RingForwarding::Copy => {
                let entries = (BUFFER_MEMORY / size)
                    .clamp(MIN_BUFFERS, MAX_BUFFERS)
                    .next_power_of_two() as u16;
                Some(
                    BufRing::new(submitter, BUFFER_GROUP, entries, size as u32).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("registering the provided buffer ring (Linux 5.19+): {e}"),
                        )
                    })?,
                )
            }
            RingForwarding::Splice => {
                let mut max = IOWQ_MAX_WORKERS;
                if let Err(e) = submitter.register_iowq_max_workers(&mut max) {
                    // Linux < 5.15: io-wq grows as it likes; still correct.
                    tracing::warn!(error = %e, "cannot cap this worker's io-wq threads");
                }
                None
            }
        };
        Ok(Ops {
            pools: Pools {
                bufs,
                spills: BufferPool::new(size, SPILLS_IDLE),
                pipes: PipePool::new(pipe_size, pipe_pool),
            },
            conns: Vec::new(),
            free: Vec::new(),
            starved: VecDeque::new(),
            in_flight: 0,
            #[cfg(test)]
            keep_ring_when_stalled: false,
        })
    }

    /// Takes over an established connection (worker token `token`) and
    /// starts both flows. Returns the handle for [`stop`](Ops::stop).
    pub(crate) fn start(&mut self, sq: &mut Sq, token: u64, client: RawFd, backend: RawFd) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(OpsConn::default());
                (self.conns.len() - 1) as u32
            }
        };
        let c = &mut self.conns[index as usize];
        c.seq = c.seq.wrapping_add(1) & SEQ_MASK;
        c.token = token;
        c.live = true;
        c.used = true;
        c.fds = [client, backend];
        c.flows = Default::default();
        let seq = c.seq;
        self.read(sq, index as usize, UP);
        self.read(sq, index as usize, DOWN);
        handle(index, seq)
    }

    /// The worker is done with the connection of `handle` and hands over
    /// its sockets: cancel whatever of it is in flight; what those requests
    /// use (the sockets included) is let go of as their completions
    /// arrive.
    pub(crate) fn stop(&mut self, sq: &mut Sq, handle: u64, fds: [OwnedFd; 2]) {
        let (index, seq) = (handle as u32 as usize, (handle >> 32) as u32);
        let Some(c) = self.conns.get_mut(index) else {
            return;
        };
        if !c.live || c.seq != seq {
            return;
        }
        c.live = false;
        c.closing = Some(fds);
        for f in &mut c.flows {
            f.starved = false;
            match f.pending {
                Some(ud) => sq.cancel(ud),
                None => self.pools.release(f),
            }
        }
        self.free_if_done(index);
    }

    /// Requests in flight (the engine waits for none before it frees the
    /// buffer ring).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// (pipes, buffers) lent to flows, stopped ones included.
    pub(crate) fn lent(&self) -> (usize, usize) {
        (
            self.pools.pipes.lent(),
            self.pools.bufs.as_ref().map_or(0, BufRing::lent) + self.pools.spills.lent(),
        )
    }

    /// After the last completion: unregisters the buffer ring.
    pub(crate) fn close(&mut self, submitter: &Submitter) {
        if self.in_flight == 0 {
            if let Some(b) = &mut self.pools.bufs {
                b.close(submitter);
            }
        }
    }

    /// Handles one completion of an ops request; a report for the worker
    /// when it concerns a live connection.
    pub(crate) fn complete(
        &mut self,
        sq: &mut Sq,
        ud: u64,
        res: i32,
        flags: u32,
    ) -> Option<Report> {
        let (op, dir, seq, index) = decode(ud)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        // A buffer the kernel picked is ours from here, whatever happens.
        let picked = if op == Op::Recv {
            cqueue::buffer_select(flags)
        } else {
            None
        };
        if let (Some(bid), Some(b)) = (picked, &mut self.pools.bufs) {
            b.taken(bid);
        }
        let current = self
            .conns
            .get(index)
            .is_some_and(|c| c.used && c.seq == seq && c.flows[dir].pending == Some(ud));
        if !current {
            // Cannot happen: a slot is reused only when none of its
            // requests is in flight. Keep the buffer count right anyway.
            debug_assert!(false, "stale ops completion {ud:#x}");
            if let Some(bid) = picked {
                self.pools.give_back(bid);
            }
            return None;
        }
        let c = &mut self.conns[index];
        c.flows[dir].pending = None;
        if !c.live {
            let f = &mut c.flows[dir];
            match op {
                Op::SpliceIn if res > 0 => f.in_pipe += res as usize,
                Op::SpliceOut if res > 0 => f.in_pipe = f.in_pipe.saturating_sub(res as usize),
                _ => {}
            }
            if let Some(bid) = picked {
                self.pools.give_back(bid);
            }
            self.pools.release(f);
            self.free_if_done(index);
            self.wake_starved(sq);
            return None;
        }
        let token = c.token;
        let mut moved = 0u64;
        let step = self.step(sq, index, dir, op, res, picked, &mut moved);
        let outcome = match step {
            Err(e) => {
                let f = &mut self.conns[index].flows[dir];
                self.pools.release(f);
                e.abort(if dir == UP {
                    Side::Client
                } else {
                    Side::Backend
                })
            }
            Ok(progressed) => {
                let c = &self.conns[index];
                if c.flows[UP].shut && c.flows[DOWN].shut {
                    Outcome::Finished
                } else {
                    Outcome::Open {
                        progressed,
                        starved: false,
                    }
                }
            }
        };
        self.wake_starved(sq);
        let (up, down) = if dir == UP { (moved, 0) } else { (0, moved) };
        Some(Report {
            token,
            up,
            down,
            outcome,
        })
    }

    /// The flow `dir` of live slot `index` after its `op` completed with
    /// `res`: submits its next request. Ok(progressed): bytes or a FIN
    /// moved; `moved`: bytes written to the destination.
    #[allow(clippy::too_many_arguments)]
    fn step(
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
                f.held = Some(Held {
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
            Op::Send if f.held.is_none() => Err(FlowError::Destination(io::Error::other(
                "a send completed with no buffer held",
            ))),
            Op::Send | Op::SpliceOut => self.wrote(sq, index, dir, res, moved),
            Op::PollIn if res < 0 => Err(FlowError::Source(error())),
            Op::PollIn => {
                self.splice_in(sq, index, dir)?;
                Ok(false)
            }
            Op::SpliceIn => match res {
                1.. => {
                    f.in_pipe = res as usize;
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
                let more = match &mut f.held {
                    Some(h) => {
                        h.sent = h.sent.saturating_add(res as u32);
                        h.sent < h.len
                    }
                    None => {
                        f.in_pipe = f.in_pipe.saturating_sub(res as usize);
                        f.in_pipe > 0
                    }
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

    /// Submits the flow's next read: a receive into a buffer the kernel
    /// picks, or (splice) a poll for readable.
    fn read(&mut self, sq: &mut Sq, index: usize, dir: usize) {
        let c = &self.conns[index];
        if c.flows[dir].shut {
            return;
        }
        let Some(bufs) = &self.pools.bufs else {
            self.poll(sq, index, dir, Op::PollIn);
            return;
        };
        let ud = user_data(Op::Recv, dir, c.seq, index as u32);
        let entry = opcode::Recv::new(types::Fd(c.fds[dir]), std::ptr::null_mut(), bufs.size())
            .buf_group(bufs.bgid())
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(ud);
        // SAFETY: the receive names no memory of its own: the kernel writes
        // into a buffer of the registered ring, whose mapping lives until
        // no request is in flight (module docs, "Lifetimes"), and only a
        // buffer that is in the ring, so used by nobody else.
        unsafe { sq.queue_unchecked(entry) };
        self.submitted(index, dir, ud);
    }

    /// Submits the flow's next write of the bytes it holds.
    fn write(&mut self, sq: &mut Sq, index: usize, dir: usize) {
        let c = &self.conns[index];
        let f = &c.flows[dir];
        let dst = types::Fd(c.fds[1 - dir]);
        if let (Some(h), Some(bufs)) = (&f.held, &self.pools.bufs) {
            let ud = user_data(Op::Send, dir, c.seq, index as u32);
            let base = match &h.store {
                Store::Ring(bid) => bufs.addr(*bid),
                Store::Spilled(b) => b.as_ptr(),
            };
            // The unsent rest of the bytes, within their buffer
            // (sent < len <= its size).
            let start = base.wrapping_add(h.sent as usize);
            // MSG_DONTWAIT: a full destination fails the send at once
            // (EAGAIN) instead of keeping it, and the ring buffer, waiting
            // for as long as the reader stalls.
            let entry = opcode::Send::new(dst, start, h.len - h.sent)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                .build()
                .user_data(ud);
            // SAFETY: the bytes are in ring buffer `bid`, taken out of the
            // ring by the receive that filled them, or in the flow's own
            // spill buffer (a heap allocation, not moved by moving the
            // Box). The flow holds either (`held`) until this send's final
            // completion, and gives it back only then, live or stopped
            // (`complete`), so nobody writes into it meanwhile. The ring's
            // mapping outlives every request.
            unsafe { sq.queue_unchecked(entry) };
            self.submitted(index, dir, ud);
        } else if let Some(pipe) = &f.pipe {
            let ud = user_data(Op::SpliceOut, dir, c.seq, index as u32);
            let entry =
                opcode::Splice::new(types::Fd(pipe.read_fd()), -1, dst, -1, f.in_pipe as u32)
                    .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
                    .build()
                    .user_data(ud);
            // A splice names fds only; the pipe is kept out of the pool
            // until this completes (module docs).
            sq.queue(entry);
            self.submitted(index, dir, ud);
        }
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
        let (Some(h), Some(bufs)) = (&mut f.held, &self.pools.bufs) else {
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

    /// A source that polled readable: a pipe, and a splice into it.
    fn splice_in(&mut self, sq: &mut Sq, index: usize, dir: usize) -> Result<(), FlowError> {
        let c = &mut self.conns[index];
        let f = &mut c.flows[dir];
        let pipe = match &mut f.pipe {
            Some(p) => p,
            None => f
                .pipe
                .insert(self.pools.pipes.take().map_err(FlowError::Pipe)?),
        };
        let ud = user_data(Op::SpliceIn, dir, c.seq, index as u32);
        let room = (pipe.capacity() - f.in_pipe) as u32;
        let entry = opcode::Splice::new(
            types::Fd(c.fds[dir]),
            -1,
            types::Fd(pipe.write_fd()),
            -1,
            room,
        )
        .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
        .build()
        .user_data(ud);
        sq.queue(entry);
        self.submitted(index, dir, ud);
        Ok(())
    }

    /// A one-shot poll: the flow's source for readable (`PollIn`) or its
    /// destination for writable (`PollOut`).
    fn poll(&mut self, sq: &mut Sq, index: usize, dir: usize, op: Op) {
        let c = &self.conns[index];
        let (fd, mask) = if op == Op::PollIn {
            (c.fds[dir], libc::POLLIN | libc::POLLRDHUP)
        } else {
            (c.fds[1 - dir], libc::POLLOUT)
        };
        let ud = user_data(op, dir, c.seq, index as u32);
        let entry = opcode::PollAdd::new(types::Fd(fd), mask as u32)
            .build()
            .user_data(ud);
        sq.queue(entry);
        self.submitted(index, dir, ud);
    }

    fn submitted(&mut self, index: usize, dir: usize, ud: u64) {
        let f = &mut self.conns[index].flows[dir];
        debug_assert!(f.pending.is_none(), "two requests in flight on one flow");
        f.pending = Some(ud);
        self.in_flight += 1;
    }

    /// Once per turn, after the completions: wakes flows parked for a
    /// buffer (see [`wake_starved`](Ops::wake_starved)).
    pub(crate) fn turn(&mut self, sq: &mut Sq) {
        self.wake_starved(sq);
    }

    /// Flows are parked while the ring has buffers: the engine should turn
    /// again at once rather than sleep. Each such turn wakes at least one
    /// of them, so this ends.
    pub(crate) fn has_parked(&self) -> bool {
        !self.starved.is_empty() && self.pools.available() > 0
    }

    /// Resubmits the receives of flows that found the ring empty, one per
    /// buffer now in it. Called after every completion and once per turn:
    /// a receive submitted while the ring is empty fails at once even on
    /// an idle socket, and such a flow, woken, takes no buffer, so waking
    /// only as buffers come back could leave flows parked for good once
    /// completions stop; the per-turn call (with `has_parked` keeping the
    /// engine awake) drains them, one ring's worth per turn.
    fn wake_starved(&mut self, sq: &mut Sq) {
        let mut available = self.pools.available();
        while available > 0 {
            let Some((index, seq, dir)) = self.starved.pop_front() else {
                return;
            };
            let index = index as usize;
            let c = &mut self.conns[index];
            if !c.live || c.seq != seq || !c.flows[dir].starved {
                continue;
            }
            c.flows[dir].starved = false;
            available -= 1;
            self.read(sq, index, dir);
        }
    }

    /// Frees a stopped slot once none of its requests is in flight, and
    /// closes its sockets.
    fn free_if_done(&mut self, index: usize) {
        let c = &mut self.conns[index];
        if c.used && !c.live && c.flows.iter().all(|f| f.pending.is_none()) {
            c.used = false;
            c.closing = None;
            self.free.push(index as u32);
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        // Requests that never completed may still touch the buffers: leave
        // the memory mapped rather than free it under the kernel.
        if self.in_flight > 0 {
            if let Some(b) = self.pools.bufs.take() {
                b.leak();
            }
            // Nor a spill buffer a send in flight may still read.
            for f in self.conns.iter_mut().flat_map(|c| c.flows.iter_mut()) {
                if f.pending.is_some() {
                    if let Some(Held {
                        store: Store::Spilled(b),
                        ..
                    }) = f.held.take()
                    {
                        std::mem::forget(b);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::conn::prepare_reset;
    use crate::test_sockets::tcp_pair;
    use io_uring::types::{SubmitArgs, Timespec};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// A ring and its ops, driven by the test's thread as the engine
    /// would (the sq field first: the ring closes before the buffers go).
    struct Rig {
        sq: Sq,
        ops: Ops,
    }

    impl Rig {
        fn new(forwarding: RingForwarding, pipe_size: usize) -> Rig {
            let ring = super::super::build().unwrap();
            let ops = Ops::new(forwarding, &ring.ring.submitter(), pipe_size, 4).unwrap();
            Rig {
                sq: Sq::new(ring),
                ops,
            }
        }

        /// One turn: submit, wait up to 10 ms, hand completions over.
        fn turn(&mut self) -> Vec<Report> {
            self.sq.flush_backlog();
            let ts = Timespec::from(Duration::from_millis(10));
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.sq.ring.submitter().submit_with_args(1, &args);
            let cqes: Vec<cqueue::Entry> = self.sq.ring.completion().collect();
            let mut reports = Vec::new();
            for cqe in cqes {
                if cqe.user_data() >> KIND_SHIFT == KIND_OP {
                    reports.extend(self.ops.complete(
                        &mut self.sq,
                        cqe.user_data(),
                        cqe.result(),
                        cqe.flags(),
                    ));
                }
            }
            self.ops.turn(&mut self.sq);
            reports
        }
    }

    /// A connection through the rig: the worker's part, played by the
    /// test (sockets, byte counts, ending it as the worker would).
    struct Link {
        client: TcpStream,
        backend: TcpStream,
        inside: Option<(TcpStream, TcpStream)>,
        handle: u64,
        up: u64,
        down: u64,
        outcome: Option<Outcome>,
    }

    impl Link {
        fn new(rig: &mut Rig, token: u64) -> Link {
            let (client, c_in) = tcp_pair();
            let (backend, b_in) = tcp_pair();
            let handle = rig
                .ops
                .start(&mut rig.sq, token, c_in.as_raw_fd(), b_in.as_raw_fd());
            Link {
                client,
                backend,
                inside: Some((c_in, b_in)),
                handle,
                up: 0,
                down: 0,
                outcome: None,
            }
        }

        /// What the worker does at the end: stop the flows, then close
        /// (with RST on the sides named).
        fn end(&mut self, rig: &mut Rig, reset_client: bool, reset_backend: bool) {
            let (c, b) = self.inside.take().expect("ended twice");
            if reset_client {
                prepare_reset(c.as_raw_fd());
            }
            if reset_backend {
                prepare_reset(b.as_raw_fd());
            }
            rig.ops.stop(&mut rig.sq, self.handle, [c.into(), b.into()]);
        }
    }

    /// Turns until `done`, applying reports to `links` (token = index).
    fn drive(rig: &mut Rig, links: &mut [Link], mut done: impl FnMut(&Rig, &[Link]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(rig, links) {
            assert!(
                Instant::now() < deadline,
                "the rig did not get there: lent {:?}, in flight {}, starved {}, up {:?}, down {:?}, pending {:?}",
                rig.ops.lent(),
                rig.ops.in_flight(),
                rig.ops.starved.len(),
                links.iter().map(|l| l.up).collect::<Vec<_>>(),
                links.iter().map(|l| l.down).collect::<Vec<_>>(),
                rig.ops
                    .conns
                    .iter()
                    .map(|c| c.flows.each_ref().map(|f| f.pending.and_then(decode)))
                    .collect::<Vec<_>>(),
            );
            for r in rig.turn() {
                let link = &mut links[r.token as usize];
                link.up += r.up;
                link.down += r.down;
                match r.outcome {
                    Outcome::Open { .. } => {}
                    Outcome::Finished => link.end(rig, false, false),
                    Outcome::Aborted {
                        reset_client,
                        reset_backend,
                    } => link.end(rig, reset_client, reset_backend),
                }
                if !matches!(r.outcome, Outcome::Open { .. }) {
                    link.outcome = Some(r.outcome);
                }
            }
        }
    }

    const MODES: [RingForwarding; 2] = [RingForwarding::Copy, RingForwarding::Splice];

    fn payload(seed: u32, len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(seed) ^ (i >> 9)) as u8)
            .collect()
    }

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(Op::SpliceOut, DOWN, SEQ_MASK, u32::MAX);
        assert_eq!(ud >> KIND_SHIFT, KIND_OP);
        assert_eq!(
            decode(ud),
            Some((Op::SpliceOut, DOWN, SEQ_MASK, u32::MAX as usize))
        );
        assert_eq!(
            decode(user_data(Op::Recv, UP, SEQ_MASK + 3, 5)),
            Some((Op::Recv, UP, 2, 5))
        );
    }

    /// 1 MiB each way at once, the client half-closing first, then the
    /// backend: every byte in order, both FINs passed on, nothing held.
    #[test]
    fn a_mebibyte_echoes_both_ways_with_half_close_in_each_mode() {
        for mode in MODES {
            let mut rig = Rig::new(mode, 64 << 10);
            let mut links = [Link::new(&mut rig, 0)];
            let sent = payload(7, 1 << 20);
            // The backend echoes until the client's FIN, then sends its own.
            let mut backend = links[0].backend.try_clone().unwrap();
            let echo = std::thread::spawn(move || {
                let mut r = backend.try_clone().unwrap();
                let n = std::io::copy(&mut r, &mut backend).unwrap();
                backend.shutdown(Shutdown::Write).unwrap();
                n
            });
            let mut client = links[0].client.try_clone().unwrap();
            let to_send = sent.clone();
            let writer = std::thread::spawn(move || {
                client.write_all(&to_send).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            });
            let mut client = links[0].client.try_clone().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                client.read_to_end(&mut got).unwrap();
                got
            });
            drive(&mut rig, &mut links, |_, l| l[0].outcome.is_some());
            writer.join().unwrap();
            assert_eq!(echo.join().unwrap(), 1 << 20, "{mode:?}: the backend got");
            let got = reader.join().unwrap();
            assert!(got == sent, "{mode:?}: echo differs ({} bytes)", got.len());
            assert_eq!(links[0].outcome, Some(Outcome::Finished), "{mode:?}");
            assert_eq!((links[0].up, links[0].down), (1 << 20, 1 << 20), "{mode:?}");
            assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}: pipes, buffers lent");
            assert_eq!(rig.ops.in_flight(), 0, "{mode:?}");
        }
    }

    /// Half-close the other way round: the backend answers and closes
    /// first, the client keeps sending afterwards.
    #[test]
    fn the_backend_closing_first_leaves_the_other_direction_open() {
        for mode in MODES {
            let mut rig = Rig::new(mode, 64 << 10);
            let mut links = [Link::new(&mut rig, 0)];
            links[0].backend.write_all(b"hello, then FIN").unwrap();
            links[0].backend.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            let mut client = links[0].client.try_clone().unwrap();
            let reader = std::thread::spawn(move || {
                client.read_to_end(&mut got).unwrap();
                got
            });
            // Until the client has the bytes and the FIN.
            drive(&mut rig, &mut links, |_, _| reader.is_finished());
            assert_eq!(reader.join().unwrap(), b"hello, then FIN", "{mode:?}");
            assert_eq!(links[0].down, 15);
            // The client still talks to the backend after the FIN.
            links[0].client.write_all(b"late words").unwrap();
            links[0].client.shutdown(Shutdown::Write).unwrap();
            drive(&mut rig, &mut links, |_, l| l[0].outcome.is_some());
            let mut late = Vec::new();
            links[0].backend.read_to_end(&mut late).unwrap();
            assert_eq!(late, b"late words", "{mode:?}");
            assert_eq!(links[0].outcome, Some(Outcome::Finished), "{mode:?}");
            assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}");
        }
    }

    #[test]
    fn a_reset_from_the_backend_resets_the_client() {
        for mode in MODES {
            let mut rig = Rig::new(mode, 64 << 10);
            let mut links = [Link::new(&mut rig, 0)];
            links[0].client.write_all(b"request").unwrap();
            drive(&mut rig, &mut links, |_, l| l[0].up == 7);
            prepare_reset(links[0].backend.as_raw_fd());
            let (_, backend) = tcp_pair();
            drop(std::mem::replace(&mut links[0].backend, backend));
            drive(&mut rig, &mut links, |_, l| l[0].outcome.is_some());
            assert_eq!(
                links[0].outcome,
                Some(Outcome::Aborted {
                    reset_client: true,
                    reset_backend: false
                }),
                "{mode:?}"
            );
            // The client's receive holds the socket until its cancel is in.
            drive(&mut rig, &mut links, |rig, _| rig.ops.in_flight() == 0);
            assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}");
            // The client learns it by an RST, not a FIN.
            let mut buf = [0u8; 16];
            let r = links[0].client.read(&mut buf);
            assert!(
                matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "{mode:?}: the client read {r:?}"
            );
        }
    }

    /// A connection stopped while a write is stuck on a reader that does
    /// not read (and a receive waits on the other side): the requests are
    /// cancelled, and the buffer or pipe they used comes back (the pipe,
    /// holding bytes, is closed) only when their completions are in.
    #[test]
    fn a_connection_stopped_with_requests_in_flight_gives_everything_back() {
        for mode in MODES {
            let mut rig = Rig::new(mode, 64 << 10);
            let mut links = [Link::new(&mut rig, 0)];
            // The client reads nothing: the backend's bytes pile up.
            let (c_in, _) = links[0].inside.as_ref().unwrap();
            socket2::SockRef::from(c_in)
                .set_send_buffer_size(16 << 10)
                .unwrap();
            socket2::SockRef::from(&links[0].client)
                .set_recv_buffer_size(16 << 10)
                .unwrap();
            let mut backend = links[0].backend.try_clone().unwrap();
            let flood = std::thread::spawn(move || {
                let chunk = vec![1u8; 1 << 16];
                while backend.write_all(&chunk).is_ok() {}
            });
            let stuck = |rig: &Rig, _: &[Link]| {
                let c = &rig.ops.conns[0];
                let writing = matches!(
                    c.flows[DOWN].pending.and_then(decode),
                    Some((Op::Send | Op::PollOut, ..))
                );
                let (pipes, bufs) = rig.ops.lent();
                writing && pipes + bufs == 1 && c.flows[UP].pending.is_some()
            };
            drive(&mut rig, &mut links, stuck);
            // And it stays so: the reader does not read.
            let mut turns = 0;
            drive(&mut rig, &mut links, |_, _| {
                turns += 1;
                turns > 10
            });
            assert!(stuck(&rig, &links), "{mode:?}: a write should be stuck");
            assert!(links[0].down > 0, "{mode:?}");
            assert_eq!(rig.ops.in_flight(), 2, "{mode:?}: a read and a write");
            links[0].end(&mut rig, true, true);
            drive(&mut rig, &mut links, |rig, _| rig.ops.in_flight() == 0);
            assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}: pipes, buffers lent");
            assert_eq!(rig.ops.free.len(), 1, "{mode:?}: the slot is free again");
            let _ = links[0].client.shutdown(Shutdown::Both);
            let _ = links[0].backend.shutdown(Shutdown::Both);
            flood.join().unwrap();
        }
    }

    /// The fd's target, "socket:[inode]", or None once closed.
    fn fd_target(fd: RawFd) -> Option<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
    }

    /// A connection stopped in the turn it started: its receives are
    /// queued, not yet submitted, and name fd numbers. The sockets stay
    /// open (so the numbers cannot go to a newly accepted socket, whose
    /// bytes a stale receive would eat) until those requests are over.
    #[test]
    fn sockets_handed_over_on_stop_close_only_after_their_last_request() {
        for mode in MODES {
            let mut rig = Rig::new(mode, 64 << 10);
            let mut links = [Link::new(&mut rig, 0)];
            let (c_in, b_in) = links[0].inside.as_ref().unwrap();
            let fds = [c_in.as_raw_fd(), b_in.as_raw_fd()];
            let targets = fds.map(fd_target);
            links[0].end(&mut rig, false, false);
            assert_eq!(fds.map(fd_target), targets, "{mode:?}: closed too early");
            assert_eq!(rig.ops.in_flight(), 2);
            drive(&mut rig, &mut links, |rig, _| rig.ops.in_flight() == 0);
            for (fd, before) in fds.into_iter().zip(targets) {
                // Closed (or the number since reused by another test).
                assert_ne!(fd_target(fd), before, "{mode:?}: fd {fd} still open");
            }
            assert_eq!(rig.ops.lent(), (0, 0));
        }
    }

    /// Receives submitted while the ring is empty fail with ENOBUFS even
    /// on idle sockets, and a woken idle flow takes no buffer: waking one
    /// flow per buffer as completions come is not enough when they stop
    /// coming. Once the ring has buffers again and the worker turns, no
    /// flow may stay parked, and each still forwards.
    #[test]
    fn idle_flows_that_found_the_ring_empty_are_not_forgotten() {
        let mut rig = Rig::new(RingForwarding::Copy, 1 << 20);
        rig.ops.keep_ring_when_stalled = true;
        // 16 busy links whose sends stick hold every buffer.
        let mut links: Vec<Link> = (0..MIN_BUFFERS)
            .map(|i| Link::new(&mut rig, i as u64))
            .collect();
        for l in &links {
            small_buffers(l);
            let mut c = l.client.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = c.write_all(&vec![9u8; 4 << 20]);
            });
        }
        drive(&mut rig, &mut links, |rig, _| {
            rig.ops.pools.available() == 0
        });
        // 200 idle links arrive now: all their receives find the ring
        // empty; more than the busy links' ends can wake one by one.
        let _ = sys::raise_nofile_limit();
        let idle = 200;
        for i in 0..idle {
            links.push(Link::new(&mut rig, (MIN_BUFFERS + i) as u64));
        }
        drive(&mut rig, &mut links, |rig, _| {
            rig.ops.starved.len() >= 2 * idle && rig.ops.in_flight() == 2 * MIN_BUFFERS
        });
        // The busy links end: their backends reset.
        for l in &mut links[..MIN_BUFFERS] {
            prepare_reset(l.backend.as_raw_fd());
            let (_, spare) = tcp_pair();
            drop(std::mem::replace(&mut l.backend, spare));
        }
        drive(&mut rig, &mut links, |_, l| {
            l[..MIN_BUFFERS].iter().all(|l| l.outcome.is_some())
        });
        // Quiet now. The engine turns without sleeping while flows are
        // parked and the ring has buffers; after that none may be left.
        drive(&mut rig, &mut links, |rig, _| !rig.ops.has_parked());
        assert_eq!(rig.ops.pools.available(), MIN_BUFFERS);
        let parked = rig
            .ops
            .conns
            .iter()
            .filter(|c| c.live && c.flows.iter().any(|f| f.starved));
        assert_eq!(
            parked.count(),
            0,
            "flows left waiting with buffers in the ring"
        );
        // And every idle link forwards.
        for l in &mut links[MIN_BUFFERS..] {
            l.client.write_all(b"ping").unwrap();
        }
        drive(&mut rig, &mut links, |_, l| {
            l[MIN_BUFFERS..].iter().all(|l| l.up == 4)
        });
    }

    /// More busy flows than buffers: receives that find the ring empty
    /// wait (ENOBUFS) and go on when a buffer comes back; no byte lost.
    /// Small socket buffers between ringlb's backend side and the backend,
    /// so that a send nobody reads sticks soon.
    fn small_buffers(l: &Link) {
        let (_, b_in) = l.inside.as_ref().unwrap();
        socket2::SockRef::from(b_in)
            .set_send_buffer_size(16 << 10)
            .unwrap();
        socket2::SockRef::from(&l.backend)
            .set_recv_buffer_size(16 << 10)
            .unwrap();
    }

    /// `n` links with small buffers whose clients each send a 3 MiB
    /// stream (seeded `seed + i`), then a FIN, that no backend reads yet.
    fn unread_streams(
        rig: &mut Rig,
        n: usize,
        seed: u32,
    ) -> (Vec<Link>, Vec<std::thread::JoinHandle<()>>) {
        let links: Vec<Link> = (0..n).map(|i| Link::new(rig, i as u64)).collect();
        links.iter().for_each(small_buffers);
        let writers = links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut c = l.client.try_clone().unwrap();
                std::thread::spawn(move || {
                    c.write_all(&payload(seed + i as u32, 3 << 20)).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                })
            })
            .collect();
        (links, writers)
    }

    /// The backends of the first `writers.len()` links read their streams
    /// to the end, then close: every link (whatever else `links` holds,
    /// already shut both ways) finishes, each stream arrives whole, and
    /// nothing stays lent or in flight.
    fn read_unread_streams(
        rig: &mut Rig,
        links: &mut [Link],
        seed: u32,
        writers: Vec<std::thread::JoinHandle<()>>,
    ) {
        let readers: Vec<_> = links[..writers.len()]
            .iter()
            .map(|l| {
                let mut b = l.backend.try_clone().unwrap();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    b.read_to_end(&mut got).unwrap();
                    b.shutdown(Shutdown::Write).unwrap();
                    got
                })
            })
            .collect();
        drive(rig, links, |_, l| l.iter().all(|l| l.outcome.is_some()));
        for (i, r) in readers.into_iter().enumerate() {
            assert!(
                r.join().unwrap() == payload(seed + i as u32, 3 << 20),
                "stream {i}"
            );
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(links.iter().all(|l| l.outcome == Some(Outcome::Finished)));
        assert_eq!((rig.ops.lent(), rig.ops.in_flight()), ((0, 0), 0));
    }

    #[test]
    fn readers_that_stop_reading_do_not_hold_the_buffer_ring() {
        // 1 MiB buffers: the ring has the minimum, 16, fewer than the
        // stalled readers.
        let mut rig = Rig::new(RingForwarding::Copy, 1 << 20);
        assert_eq!(rig.ops.pools.bufs.as_ref().unwrap().entries(), MIN_BUFFERS);
        let n = MIN_BUFFERS + 8;
        let (mut links, writers) = unread_streams(&mut rig, n, 5);
        // Each stalled flow holds its bytes in a spill buffer of its own;
        // the ring is all there for other flows.
        drive(&mut rig, &mut links, |rig, _| {
            let waiting = rig.ops.conns.iter().filter(|c| {
                matches!(
                    &c.flows[UP].held,
                    Some(Held {
                        store: Store::Spilled(_),
                        ..
                    })
                )
            });
            waiting.count() == n && rig.ops.pools.available() == MIN_BUFFERS
        });
        assert_eq!(rig.ops.lent(), (0, n), "one spill buffer per stalled flow");
        assert!(rig.ops.starved.is_empty());
        // A fresh link is served meanwhile, both ways.
        let mut fresh = Link::new(&mut rig, n as u64);
        fresh.client.write_all(b"ping").unwrap();
        fresh.backend.write_all(b"pong").unwrap();
        links.push(fresh);
        drive(&mut rig, &mut links, |_, l| l[n].up == 4 && l[n].down == 4);
        let mut got = [0u8; 4];
        links[n].backend.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        links[n].client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        links[n].client.shutdown(Shutdown::Write).unwrap();
        links[n].backend.shutdown(Shutdown::Write).unwrap();
        read_unread_streams(&mut rig, &mut links, 5, writers);
    }

    #[test]
    fn flows_that_find_the_buffer_ring_empty_wait_for_a_buffer() {
        // 1 MiB buffers: the ring has the minimum, 16.
        let mut rig = Rig::new(RingForwarding::Copy, 1 << 20);
        rig.ops.keep_ring_when_stalled = true;
        assert_eq!(rig.ops.pools.bufs.as_ref().unwrap().entries(), MIN_BUFFERS);
        let n = 24;
        // Each flow's send sticks holding a buffer, until the ring is
        // empty.
        let (mut links, writers) = unread_streams(&mut rig, n, 3);
        drive(&mut rig, &mut links, |rig, _| {
            let starved = rig.ops.conns.iter().filter(|c| c.flows[UP].starved);
            rig.ops.pools.available() == 0 && starved.count() == n - MIN_BUFFERS
        });
        read_unread_streams(&mut rig, &mut links, 3, writers);
    }
}
