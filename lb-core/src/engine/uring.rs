//! The io_uring engine: one ring per worker, created and driven by the
//! worker's thread. Readiness comes from multishot `POLL_ADD` requests (one
//! per socket, edge-triggered: each wake-up of the socket posts one
//! completion with its current poll mask), connections from a multishot
//! `ACCEPT` per listener, and the bytes are moved by the same inline
//! non-blocking `splice(2)` (or, with `forwarding = "copy"`, recv/send)
//! state machine as on epoll (see `conn`): the kernel hands
//! `IORING_OP_SPLICE` to io-wq threads, which costs a context switch per
//! operation (DESIGN.md, "Data plane"). With `forwarding = "uring-copy"` or
//! `"uring-splice"` the ring moves the bytes instead: established
//! connections are handed to `ops`, which chains `RECV`/`SEND` (through
//! a provided buffer ring, `bufring`) or `POLL_ADD`/`SPLICE` requests,
//! and their sockets' polls are removed.
//!
//! A turn: submit everything queued during the previous turn and wait for
//! completions in one `io_uring_enter` (bounded by the worker's sleep
//! budget), copy the completions out, hand them to the worker, and let it
//! finish the turn. SQEs queued by the worker go to the kernel with the next
//! turn's enter; only a full submission queue forces an earlier submit, and
//! only a kernel holding ready completions back (`UringReactor::enter`)
//! makes a turn enter again.
//!
//! Request lifetimes, the part that differs from epoll:
//! - No request of this module references user memory: polls and accepts
//!   carry an fd and flags (accept asks for no address), cancels carry a
//!   user_data, and the wait's timespec is read during the `io_uring_enter`
//!   call itself. So no buffer has to outlive a request. The forwarding
//!   requests of `ops` do (a send's bytes, a receive's buffer ring): that
//!   module says how their memory outlives them, and they go through
//!   `Sq::queue_unchecked`; this module waits for their last completions
//!   before the ring and its buffers go (`UringReactor::finish`).
//! - A request holds its own reference to its file: closing the fd does not
//!   end it, and the socket would stay open (no FIN, no RST) as long as the
//!   request lives. So the worker removes every watch before it closes the
//!   fd (`Reactor::remove`), and removal queues an `ASYNC_CANCEL` by
//!   user_data (never `POLL_REMOVE`: see `cancel_poll`); it reaches the kernel, ahead of anything
//!   queued after it, with the next enter, and the socket's last reference
//!   goes with the request.
//! - Completions of removed requests still arrive (the final `-ECANCELED`,
//!   or events posted before the cancel landed). Each user_data carries a
//!   sequence number bumped by every `add` on the same fd (or listener):
//!   completions of a removed or replaced registration are dropped and
//!   never re-armed. Connection tokens also carry the worker's slot
//!   generation, so the worker ignores what might still slip through.
//! - Accepted fds are owned from the moment their completion is read: a
//!   connection accepted by a cancelled or stale accept is still handed to
//!   the worker (which serves it, holds it, or resets it), never leaked.

mod bufring;
mod ops;
mod setup;
mod user_data;

pub use setup::self_test;
pub use setup::RingMode;
pub(crate) use setup::{build, Ring, Unusable};

use ops::Ops;
use user_data::{Request, UserData, WATCH_SEQ_MASK};

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring};

use crate::conn::Readiness;
use crate::engine::Engine;
use crate::sys;
use crate::worker::{Reactor, Token, Worker, WorkerForwarding, WorkerSetup};

/// What a socket is watched for. ERR and HUP are always reported; asking
/// for them says so.
const POLL_MASK: u32 =
    (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;
const READ_BITS: u32 = (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as u32;
const WRITE_BITS: u32 = (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) as u32;
/// The peer's FIN, a hang-up or an error: no further edge will say so.
const CLOSED_BITS: u32 = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as u32;

/// Most completions one turn collects before handing them to the worker:
/// half the completion queue, so collecting never overflows it.
const TURN_COMPLETIONS: usize = setup::CQ_ENTRIES as usize / 2;

/// Longest a stopping worker waits for its accepts to end.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// Failed completions in a row after which a request is no longer re-armed
/// (a persistent kernel refusal would otherwise spin the worker). The
/// connection then ends by its timers.
const MAX_REARM_ERRORS: u8 = 8;

/// One registration: a multishot request the worker asked for.
#[derive(Debug, Default, Clone, Copy)]
struct Watch {
    /// The worker's token, given back with every event.
    token: u64,
    /// The fd the request names (accepts are indexed by listener).
    fd: RawFd,
    /// Bumped by every `add` at this index: tells this registration's
    /// completions from those of an earlier one on the same fd number.
    seq: u32,
    /// The worker wants events: from `add` to `remove`.
    live: bool,
    /// A request is queued or in the kernel, until its final completion
    /// (one without `IORING_CQE_F_MORE`).
    armed: bool,
    /// Failed completions in a row.
    errors: u8,
}

impl Watch {
    /// A new registration at this index, armed: its sequence number (a new
    /// one, so the completions of the one before are told apart).
    fn renew(&mut self, token: u64, fd: RawFd) -> u32 {
        *self = Watch {
            token,
            fd,
            seq: self.seq.wrapping_add(1) & WATCH_SEQ_MASK,
            live: true,
            armed: true,
            errors: 0,
        };
        self.seq
    }

    /// Counts a completion without `F_MORE`; true when it should be
    /// re-armed (still wanted, and not failing over and over).
    fn ended(&mut self, failed: bool) -> bool {
        self.armed = false;
        if failed {
            self.errors = self.errors.saturating_add(1);
        }
        self.live && self.errors < MAX_REARM_ERRORS
    }
}

/// Grows `v` so that index `i` exists; returns it.
fn watch_at(v: &mut Vec<Watch>, i: usize) -> &mut Watch {
    if v.len() <= i {
        v.resize(i + 1, Watch::default());
    }
    &mut v[i]
}

/// The ring's submission side: what the reactor and the ops module queue.
pub(crate) struct Sq {
    ring: IoUring,
    /// Entries that found the submission queue full even after a submit:
    /// queued first, in order, before the next enter.
    backlog: VecDeque<squeue::Entry>,
    /// Flags of cancel requests: SKIP_SUCCESS when the kernel has it.
    cancel_flags: squeue::Flags,
}

/// The ring as the worker's [`Reactor`].
pub(crate) struct UringReactor {
    /// First field: dropped (the ring closed) before `ops` frees the
    /// memory its requests may have referenced (see `ops`).
    sq: Sq,
    /// Socket watches, indexed by fd (small integers, each open fd watched
    /// at most once per worker).
    polls: Vec<Watch>,
    /// Listener watches (multishot accepts), indexed by listener.
    accepts: Vec<Watch>,
    /// Accepts are armed one connection at a time (a one-shot accept,
    /// re-armed on its completion) instead of multishot: the worker asks
    /// for it when its connection budget is nearly spent, so that what is
    /// accepted past the budget before the worker pauses stays at one per
    /// listener (a multishot accept takes the whole backlog at once).
    accept_one: bool,
    /// The wake-up eventfd's poll.
    wake: Watch,
    /// Completion-driven forwarding (`forwarding = "uring-copy"` or
    /// `"uring-splice"`); None: the worker forwards inline.
    ops: Option<Ops>,
}

impl Reactor for UringReactor {
    const DELIVERS_ACCEPTS: bool = true;

    fn add(&mut self, fd: RawFd, token: Token) -> io::Result<()> {
        let id = u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        if let Some(li) = token.listener_index() {
            let li = li as u32;
            self.cancel_accept(li as usize);
            let seq = watch_at(&mut self.accepts, li as usize).renew(token.raw(), fd);
            let entry = accept_entry_for(self.accept_one);
            self.sq.queue(entry(fd, UserData::accept(seq, li)));
        } else {
            self.cancel_poll(fd);
            let seq = watch_at(&mut self.polls, id as usize).renew(token.raw(), fd);
            self.sq.queue(poll_entry(fd, UserData::poll(seq, id)));
        }
        Ok(())
    }

    fn remove(&mut self, fd: RawFd, token: Token, _closing: bool) {
        // Closing or not, the request must go: it holds the file open.
        if let Some(li) = token.listener_index() {
            if self.accepts.get(li).is_some_and(|w| w.fd == fd) {
                self.cancel_accept(li);
            }
        } else if self
            .polls
            .get(fd as usize)
            .is_some_and(|w| w.token == token.raw())
        {
            self.cancel_poll(fd);
        }
    }

    fn accept_one_at_a_time(&mut self, one: bool) -> bool {
        let changed = self.accept_one != one;
        self.accept_one = one;
        changed
    }

    fn forwards(&self) -> bool {
        self.ops.is_some()
    }

    fn accepting(&self, li: usize) -> bool {
        self.accepts.get(li).is_some_and(|w| w.armed)
    }

    fn start_flows(&mut self, token: Token, client: RawFd, backend: RawFd) -> io::Result<u64> {
        match &mut self.ops {
            Some(ops) => Ok(ops.start(&mut self.sq, token.raw(), client, backend)),
            None => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn stop_flows(&mut self, handle: u64, fds: [OwnedFd; 2]) {
        if let Some(ops) = &mut self.ops {
            ops.stop(&mut self.sq, handle, fds);
        }
    }

    fn lent(&self) -> (usize, usize) {
        self.ops.as_ref().map_or((0, 0), Ops::lent)
    }
}

impl UringReactor {
    fn new(ring: Ring, ops: Option<Ops>) -> UringReactor {
        UringReactor {
            sq: Sq::new(ring),
            polls: Vec::new(),
            accepts: Vec::new(),
            accept_one: false,
            wake: Watch::default(),
            ops,
        }
    }

    /// Ends the poll on `fd` if one is live (its later completions are
    /// dropped by sequence).
    fn cancel_poll(&mut self, fd: RawFd) {
        let Some(w) = self.polls.get_mut(fd as usize) else {
            return;
        };
        if !w.live {
            return;
        }
        w.live = false;
        if w.armed {
            // ASYNC_CANCEL, not POLL_REMOVE: POLL_REMOVE gives up (ENOENT)
            // when a wake-up of the poll is being handled at that moment
            // (its task work owns the request, as under load with
            // DEFER_TASKRUN until the next enter), leaving the poll armed
            // and the closed socket open without its FIN, for good.
            // ASYNC_CANCEL marks the request cancelled whoever owns it.
            self.sq.cancel(UserData::poll(w.seq, fd as u32));
        }
    }

    /// Ends the multishot accept of listener `li` if one is live.
    fn cancel_accept(&mut self, li: usize) {
        let Some(w) = self.accepts.get_mut(li) else {
            return;
        };
        if !w.live {
            return;
        }
        w.live = false;
        if w.armed {
            self.sq.cancel(UserData::accept(w.seq, li as u32));
        }
    }

    /// Watches the wake-up eventfd (again, after its poll ended).
    fn arm_wake(&mut self, fd: RawFd) {
        self.wake.fd = fd;
        self.wake.live = true;
        self.wake.armed = true;
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(UserData::WAKE.raw());
        self.sq.queue(entry);
    }

    /// Submits what the turn queued, waits up to `budget` for at least one
    /// completion, and collects every completion the kernel has ready: the
    /// turn's `io_uring_enter`, plus more only when the kernel holds back.
    ///
    /// Since Linux 6.13 a `DEFER_TASKRUN` ring turns at most about 20
    /// queued task-work items (each a poll wake-up or an accepted
    /// connection becoming a completion) into completions per enter and
    /// keeps the rest queued. A turn that only saw those would serve ~20
    /// sockets per turn, however many are ready; under load, with turns
    /// made long by busy connections, readiness waited in the kernel for
    /// seconds (connects timed out while connected). epoll_wait hands over
    /// every ready socket at once; to do the same, the ring is set up with
    /// `IORING_SETUP_TASKRUN_FLAG`, the kernel raises `IORING_SQ_TASKRUN`
    /// while such work is queued, and this enters again (without waiting)
    /// until the flag drops or a turn's worth of completions is ready. With
    /// the flag up the turn does not sleep either.
    fn enter(&mut self, budget: Duration) -> io::Result<()> {
        self.sq.flush_backlog();
        let result = if budget.is_zero() || self.sq.ring.submission().taskrun() {
            self.enter_nowait()
        } else {
            let ts = Timespec::from(budget);
            let args = SubmitArgs::new().timespec(&ts);
            self.sq.ring.submitter().submit_with_args(1, &args)
        };
        tolerate(result)?;
        // Bounded: work that yields no completion could keep arriving.
        for _ in 0..TURN_COMPLETIONS / 20 {
            if !self.sq.ring.submission().taskrun()
                || self.sq.ring.completion().len() >= TURN_COMPLETIONS
            {
                break;
            }
            tolerate(self.enter_nowait())?;
        }
        Ok(())
    }

    /// Submits what is queued and runs queued task work, without waiting.
    fn enter_nowait(&mut self) -> io::Result<usize> {
        let queued = self.sq.ring.submission().len() as u32;
        // SAFETY: no extended argument is passed (a null pointer, with the
        // size of a sigset_t that is never read); the kernel reads only the
        // rings it mapped.
        unsafe {
            self.sq.ring.submitter().enter::<libc::sigset_t>(
                queued,
                0,
                EnterFlags::GETEVENTS.bits(),
                None,
            )
        }
    }

    /// Moves every available completion into `out` (the worker then runs
    /// with the ring free for new requests).
    fn reap(&mut self, out: &mut Vec<cqueue::Entry>) {
        out.extend(self.sq.ring.completion());
    }

    /// After `close_all`: hands the kernel the last cancels, and ends every
    /// multishot accept before the ring goes. The kernel cancels whatever
    /// is left when the ring is dropped, polls included, but an accept
    /// could meanwhile install a connection's fd that nobody would ever
    /// read from the completion queue, let alone close. Connections that
    /// arrive until the accepts end are reset. Also waits for the final
    /// completions of forwarding requests (cancelled by `close_all`): their
    /// buffers may be freed only then (`ops`). Bounded by `deadline`.
    fn finish(&mut self, deadline: Instant) {
        for li in 0..self.accepts.len() {
            self.cancel_accept(li);
        }
        let mut completions = Vec::new();
        loop {
            if self.enter(Duration::ZERO).is_err() {
                return;
            }
            self.reap(&mut completions);
            for cqe in completions.drain(..) {
                let (seq, listener) = match UserData::from_raw(cqe.user_data()).request() {
                    Some(Request::Flow(req)) => {
                        if let Some(ops) = &mut self.ops {
                            // Every connection is stopped: nothing to report.
                            let _ = ops.complete(&mut self.sq, req, cqe.result(), cqe.flags());
                        }
                        continue;
                    }
                    Some(Request::Accept { seq, listener }) => (seq, listener),
                    _ => continue,
                };
                if cqe.result() >= 0 {
                    // SAFETY: as in `on_accept`: a fresh descriptor of ours.
                    let fd = unsafe { OwnedFd::from_raw_fd(cqe.result()) };
                    crate::conn::prepare_reset(fd.as_raw_fd());
                }
                let w = self.accepts.get_mut(listener as usize);
                if let Some(w) = w.filter(|w| w.seq == seq) {
                    if !cqueue::more(cqe.flags()) {
                        w.armed = false;
                    }
                }
            }
            let ops_done = self.ops.as_ref().is_none_or(|o| o.in_flight() == 0);
            if ops_done {
                if let Some(ops) = &mut self.ops {
                    ops.close(&self.sq.ring.submitter());
                }
            }
            if (ops_done && !self.accepts.iter().any(|w| w.armed)) || Instant::now() >= deadline {
                return;
            }
            std::thread::yield_now();
        }
    }
}

impl Sq {
    /// The submission side of `ring`.
    pub(crate) fn new(ring: Ring) -> Sq {
        let cancel_flags = if ring.skip_success {
            squeue::Flags::SKIP_SUCCESS
        } else {
            squeue::Flags::empty()
        };
        Sq {
            ring: ring.ring,
            backlog: VecDeque::new(),
            cancel_flags,
        }
    }

    /// Queues an SQE that references no user memory (a poll, an accept
    /// without an address, a cancel, a splice between fds) for the next
    /// enter. A full queue is submitted at once to make room; what still
    /// finds no room waits in `backlog`.
    pub(crate) fn queue(&mut self, entry: squeue::Entry) {
        // SAFETY: the entries queued here reference no user memory (see
        // above); the fds they name are removed (cancelled) by the worker
        // before it closes them, and a request holds its own file
        // reference anyway. See the module docs.
        unsafe { self.queue_unchecked(entry) }
    }

    /// [`queue`](Sq::queue) for an entry that may reference user memory.
    ///
    /// # Safety
    ///
    /// Memory the entry references must stay valid (and, for a buffer the
    /// kernel writes, unused by anyone else) until the request's final
    /// completion has been reaped.
    pub(crate) unsafe fn queue_unchecked(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: the caller's promise covers the entry.
            if unsafe { self.push(&entry) } {
                return;
            }
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.push(&entry) } {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    /// Queues a cancel of the request with `target` user_data; its own
    /// completion says when it ended.
    pub(crate) fn cancel(&mut self, target: UserData) {
        let entry = opcode::AsyncCancel::new(target.raw())
            .build()
            .flags(self.cancel_flags)
            .user_data(UserData::CANCEL.raw());
        self.queue(entry);
    }

    /// # Safety
    ///
    /// As for [`queue_unchecked`](Sq::queue_unchecked).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: the caller vouches for the memory the entry references.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: every backlog entry came through `queue_unchecked`,
            // whose callers vouched for it until its completion, which
            // cannot come before it is submitted.
            if unsafe { self.push(&entry) } {
                continue;
            }
            let _ = self.ring.submit();
            // SAFETY: as above.
            if !unsafe { self.push(&entry) } {
                self.backlog.push_front(entry);
                return;
            }
        }
    }
}

/// Timed out, interrupted, or the kernel wants the completion queue drained
/// first (EBUSY): the turn goes on. Anything else is the ring failing.
fn tolerate(result: io::Result<usize>) -> io::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn poll_entry(fd: RawFd, ud: UserData) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), POLL_MASK)
        .multi(true)
        .build()
        .user_data(ud.raw())
}

fn accept_entry(fd: RawFd, ud: UserData) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        .build()
        .user_data(ud.raw())
}

/// A one-shot accept: one connection, then a final completion (re-armed
/// like a multishot request that ended).
fn accept_one_entry(fd: RawFd, ud: UserData) -> squeue::Entry {
    opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
        .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        .build()
        .user_data(ud.raw())
}

/// The accept request to arm: one at a time, or multishot.
fn accept_entry_for(one: bool) -> fn(RawFd, UserData) -> squeue::Entry {
    if one {
        accept_one_entry
    } else {
        accept_entry
    }
}

/// Runs a worker on its own ring until it is told to stop.
pub(crate) fn run(ring: Ring, setup: WorkerSetup) -> Result<(), crate::Error> {
    let wake = Arc::new(File::from(
        sys::eventfd().map_err(|e| crate::Error::io("creating worker waker", e))?,
    ));
    let waker = wake.clone();
    setup.control.set_waker(Box::new(move || {
        let _ = (&*waker).write(&1u64.to_ne_bytes());
    }));
    let _ = setup.control.engine.set(Engine::IoUring);
    let ops = match setup.forwarding.ring() {
        None => None,
        Some(mode) => match Ops::new(
            mode,
            &ring.ring.submitter(),
            setup.pipe_size,
            setup.pipe_pool,
        ) {
            Ok(ops) => Some(ops),
            Err(e) => {
                // The worker's pumps run the inline equivalent (the
                // worker takes it from its setup).
                tracing::warn!(
                    worker = setup.id,
                    error = %e,
                    "forwarding = {:?} cannot run on this ring; this worker forwards inline as {:?}",
                    setup.forwarding.name(),
                    WorkerForwarding::from(mode.inline()).name()
                );
                None
            }
        },
    };
    let mut reactor = UringReactor::new(ring, ops);
    reactor.arm_wake(wake.as_raw_fd());
    let mut worker = Worker::new(setup, reactor);
    worker
        .start()
        .map_err(|e| crate::Error::io("arming listeners", e))?;
    let mut completions = Vec::with_capacity(setup::CQ_ENTRIES as usize);
    let mut result = Ok(());
    while !worker.should_exit() {
        let budget = if worker.reactor.ops.as_ref().is_some_and(Ops::has_parked) {
            // Flows wait for buffers the ring has now (`Ops::turn`).
            Duration::ZERO
        } else {
            worker.sleep_budget()
        };
        if let Err(e) = worker.reactor.enter(budget) {
            result = Err(crate::Error::io("waiting for completions", e));
            break;
        }
        worker.reactor.reap(&mut completions);
        worker.begin_turn();
        for cqe in completions.drain(..) {
            dispatch(&mut worker, &cqe, &wake);
        }
        let r = &mut worker.reactor;
        if let Some(ops) = &mut r.ops {
            ops.turn(&mut r.sq);
        }
        worker.end_turn();
    }
    worker.close_all();
    worker.reactor.finish(Instant::now() + FINISH_TIMEOUT);
    worker.publish_counters();
    result
}

/// Hands one completion to the worker.
fn dispatch(worker: &mut Worker<UringReactor>, cqe: &cqueue::Entry, wake: &File) {
    let ud = UserData::from_raw(cqe.user_data());
    let more = cqueue::more(cqe.flags());
    let Some(request) = ud.request() else { return };
    match request {
        Request::Poll { seq, fd } => on_poll(worker, ud, (seq, fd), cqe.result(), more),
        Request::Accept { seq, listener } => {
            on_accept(worker, ud, (seq, listener), cqe.result(), more)
        }
        Request::Flow(req) => {
            let r = &mut worker.reactor;
            let Some(ops) = &mut r.ops else { return };
            if let Some(report) = ops.complete(&mut r.sq, req, cqe.result(), cqe.flags()) {
                worker.on_forwarded(
                    Token::from_raw(report.token),
                    report.up,
                    report.down,
                    report.outcome,
                    report.fin_from,
                );
            }
        }
        Request::Wake => {
            let mut counter = [0u8; 8];
            let _ = (&*wake).read(&mut counter);
            worker.on_event(Token::WAKE, Readiness::default());
            if !more {
                let r = &mut worker.reactor;
                if r.wake.ended(cqe.result() < 0) {
                    let fd = r.wake.fd;
                    r.arm_wake(fd);
                } else {
                    tracing::error!(
                        worker = worker.id(),
                        "the wake-up poll keeps failing; the worker now notices changes only by its timers"
                    );
                }
            }
        }
        Request::Cancel => {}
    }
}

/// After the final completion (no `F_MORE`) of the request `ud` of watch
/// `w`: re-arms it with `entry` if it is still wanted (ended by an error,
/// or cancelled by the kernel). False only when it is wanted but keeps
/// failing, for the caller to log; a replaced or removed watch is left
/// alone.
fn rearm(
    w: Option<&mut Watch>,
    (ud, seq): (UserData, u32),
    res: i32,
    sq: &mut Sq,
    entry: fn(RawFd, UserData) -> squeue::Entry,
) -> bool {
    let Some(w) = w.filter(|w| w.seq == seq) else {
        return true;
    };
    if w.ended(res < 0) {
        w.armed = true;
        sq.queue(entry(w.fd, ud));
        return true;
    }
    !w.live
}

/// A completion of the poll `ud` (registration `seq` of socket `fd`).
fn on_poll(
    worker: &mut Worker<UringReactor>,
    ud: UserData,
    (seq, fd): (u32, u32),
    res: i32,
    more: bool,
) {
    let fd = fd as usize;
    let Some(w) = worker.reactor.polls.get_mut(fd) else {
        return;
    };
    if w.seq != seq {
        // An earlier registration of this fd number.
        return;
    }
    if !w.live {
        if !more {
            w.armed = false;
        }
        return;
    }
    let token = Token::from_raw(w.token);
    if res > 0 {
        w.errors = 0;
        let mask = res as u32;
        let event = Readiness {
            readable: mask & READ_BITS != 0,
            writable: mask & WRITE_BITS != 0,
            read_closed: mask & CLOSED_BITS != 0,
        };
        if event.readable || event.writable {
            worker.on_event(token, event);
        }
    }
    // The worker may have removed (or replaced) the watch meanwhile.
    if more {
        return;
    }
    // Re-arming reports the socket's current state at once, so nothing is
    // missed.
    let r = &mut worker.reactor;
    if !rearm(r.polls.get_mut(fd), (ud, seq), res, &mut r.sq, poll_entry) {
        tracing::warn!(
            worker = worker.id(),
            error = %io::Error::from_raw_os_error(-res),
            "socket poll keeps failing; leaving the connection to its timers"
        );
    }
}

/// A completion of the accept `ud` (registration `seq` of listener `li`).
fn on_accept(
    worker: &mut Worker<UringReactor>,
    ud: UserData,
    (seq, li): (u32, u32),
    res: i32,
    more: bool,
) {
    let li = li as usize;
    if res >= 0 {
        // SAFETY: a successful accept completion's result is a descriptor
        // the kernel just installed in our table for this connection; no
        // one else knows it, so it is ours to own (and close).
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        // Whatever the state of the watch: the connection exists and is
        // served, held or reset by the worker, never leaked. No address:
        // the client reset it already; dropping it closes it.
        if let Ok(peer) = sys::peer_addr(&fd) {
            worker.on_accepted(li, fd, peer);
        }
    }
    let Some(w) = worker.reactor.accepts.get(li) else {
        return;
    };
    if w.seq != seq || !w.live {
        if !more {
            if let Some(w) = worker.reactor.accepts.get_mut(li) {
                if w.seq == seq {
                    w.armed = false;
                }
            }
        }
        return;
    }
    if res < 0 && res != -libc::ECANCELED {
        // The worker decides (EMFILE & co. back off and pause, removing
        // this watch).
        worker.on_accept_error(li, &io::Error::from_raw_os_error(-res));
    }
    if more {
        return;
    }
    let r = &mut worker.reactor;
    let entry = accept_entry_for(r.accept_one);
    if !rearm(r.accepts.get_mut(li), (ud, seq), res, &mut r.sq, entry) {
        tracing::error!(
            worker = worker.id(),
            error = %io::Error::from_raw_os_error(-res),
            "accept keeps failing on this worker's listener; it stops accepting"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::EngineKind;
    use crate::test_sockets::tcp_pair;
    use std::net::Shutdown;
    use std::time::Instant;

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_ring_is_built_and_passes_the_self_test_here() {
        let mode = self_test().expect("io_uring should be usable on this machine");
        assert!(!mode.name().is_empty());
        // And both ways of asking for it pick it.
        let auto = crate::engine::choose(EngineKind::Auto).unwrap();
        assert_eq!(auto.engine, Engine::IoUring, "{}", auto.reason);
        assert_eq!(
            crate::engine::choose(EngineKind::Uring).unwrap().engine,
            Engine::IoUring
        );
    }

    /// Removing a socket's watch and closing it sends its FIN even when a
    /// wake-up of its poll is queued as task work at that moment, as it is
    /// under load: with DEFER_TASKRUN the wake-up waits for the next enter,
    /// which submits the removal before running it. (A `POLL_REMOVE` gives
    /// up on a poll whose wake-up is pending: the poll, and with it the
    /// closed socket, stayed open for good and the peer never saw EOF.)
    #[test]
    fn a_socket_removed_while_its_poll_wake_up_is_pending_gets_closed() {
        let ring = setup::build().expect("io_uring should be usable here");
        let deferred = ring.mode.defers_taskrun();
        let mut reactor = UringReactor::new(ring, None);
        let (mut peer, ours) = tcp_pair();
        let fd = ours.as_raw_fd();
        // Slot 1, generation 0, client leg.
        const TOKEN: Token = Token::from_raw(2);
        reactor.add(fd, TOKEN).unwrap();
        // Armed; its first report (writable) is posted.
        let mut cqes = Vec::new();
        wait_until("the poll's first report", || {
            reactor.enter(Duration::from_millis(10)).unwrap();
            reactor.reap(&mut cqes);
            !cqes.is_empty()
        });
        // The peer's FIN wakes the poll; the wake-up's task work waits.
        peer.shutdown(Shutdown::Write).unwrap();
        wait_until("the FIN to arrive", || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no timeout.
            let ready = unsafe { libc::poll(&mut p, 1, 0) };
            ready == 1
        });
        reactor.remove(fd, TOKEN, true);
        drop(ours);
        reactor.enter(Duration::ZERO).unwrap();
        reactor.reap(&mut cqes);
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        match peer.read(&mut byte) {
            Ok(0) => {}
            other => panic!(
                "the closed socket is still open (deferred task work: {deferred}): {other:?}"
            ),
        }
    }
}
