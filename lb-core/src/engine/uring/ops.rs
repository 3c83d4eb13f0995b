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
//!
//! # Files
//!
//! This file: the slots' life (start, stop, a completion's dispatch, the
//! flows waiting for a buffer). `flow`: what a flow holds while bytes are
//! in flight, and its steps as requests complete. `submit`: the requests
//! themselves (their user data is `user_data`'s encoding). `tests`: real
//! rings and sockets.

mod flow;
mod submit;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

use io_uring::{cqueue, opcode, Probe, Submitter};

use super::bufring::BufRing;
use super::user_data::{FlowRequest, Op, UserData, FLOW_SEQ_MASK};
use super::Sq;
use crate::buffer::BufferPool;
use crate::conn::{Outcome, Side};
use crate::pipe::PipePool;
use crate::worker::RingForwarding;

use flow::{Held, InFlight, OpsConn, Pools, Store};

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

/// Flow index: up (client → backend) is 0, down is 1.
const UP: usize = 0;
const DOWN: usize = 1;

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
    /// This completion passed on the FIN of that side (who closed first
    /// is what the access log's end cause says).
    pub fin_from: Option<Side>,
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
        c.seq = c.seq.wrapping_add(1) & FLOW_SEQ_MASK;
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
        for (dir, f) in c.flows.iter_mut().enumerate() {
            f.starved = false;
            match f.pending {
                Some(op) => sq.cancel(UserData::flow(FlowRequest {
                    op,
                    dir,
                    seq,
                    slot: index as u32,
                })),
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
        req: FlowRequest,
        res: i32,
        flags: u32,
    ) -> Option<Report> {
        let FlowRequest { op, dir, seq, slot } = req;
        let index = slot as usize;
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
            .is_some_and(|c| c.used && c.seq == seq && c.flows[dir].pending == Some(op));
        if !current {
            // Cannot happen: a slot is reused only when none of its
            // requests is in flight. Keep the buffer count right anyway.
            debug_assert!(false, "stale ops completion {req:?}");
            if let Some(bid) = picked {
                self.pools.give_back(bid);
            }
            return None;
        }
        let c = &mut self.conns[index];
        c.flows[dir].pending = None;
        if !c.live {
            let f = &mut c.flows[dir];
            if let (InFlight::Pipe { len, .. }, 1..) = (&mut f.in_flight, res) {
                match op {
                    Op::SpliceIn => *len += res as usize,
                    Op::SpliceOut => *len = len.saturating_sub(res as usize),
                    _ => {}
                }
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
        let was_shut = c.flows[dir].shut;
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
        let fin_from = (!was_shut && self.conns[index].flows[dir].shut).then_some(if dir == UP {
            Side::Client
        } else {
            Side::Backend
        });
        Some(Report {
            token,
            up,
            down,
            outcome,
            fin_from,
        })
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
                    if let InFlight::Buffer(Held {
                        store: Store::Spilled(b),
                        ..
                    }) = std::mem::take(&mut f.in_flight)
                    {
                        std::mem::forget(b);
                    }
                }
            }
        }
    }
}
