//! One worker: the engine-independent half of a data-plane thread.
//!
//! A worker owns its listeners (one `SO_REUSEPORT` socket per listen
//! address), its connections, its pipe pool and its timers. It is driven by
//! an engine (epoll or io_uring) through a [`Reactor`]: the engine reports
//! readiness, the worker decides, and asks the reactor to watch or forget
//! sockets. Nothing here blocks or takes a lock; the only shared state it
//! reads on the hot path is the snapshot generation (once per turn) and the
//! per-service/backend atomic counters.
//!
//! This file holds the worker itself, its turn and the life of an
//! established connection (forwarding, close). The rest, by concern:
//! `listeners` (accept and admission), `slab` (connections by slot and the
//! [`Token`]s naming them), `connect` (backend choice and retries),
//! `preamble` (what a client sends before a backend is chosen: a PROXY
//! header), `sni` (the ClientHello that picks the service on an address
//! that routes by server name), `replay` (a connected backend's silence
//! before its first byte, when a TLS ClientHello can still go to another),
//! `timers` (preamble, hello, connect and idle timeouts), `mailbox` (the
//! link with the control plane), `forwarding` (how bytes move, resolved at
//! start-up) and `syscalls` (the kernel calls, a seam for tests).

mod connect;
mod forwarding;
mod listeners;
mod mailbox;
mod preamble;
mod replay;
mod slab;
mod sni;
mod syscalls;
mod timers;

#[cfg(test)]
mod tests;

pub(crate) use connect::{FailureSender, PassiveFailure, MAX_ATTEMPTS};
pub(crate) use forwarding::{InlineForwarding, RingForwarding, WorkerForwarding};
pub(crate) use listeners::Listener;
pub use mailbox::WorkerControl;
pub(crate) use mailbox::WorkerMessage;
pub(crate) use slab::{Token, TokenKind};
pub(crate) use syscalls::{Kernel, Syscalls};

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::access_log::{AccessLogSender, AccessRecord, EndCause};
use crate::buffer::BufferPool;
use crate::conn::{self, Outcome, Pair, Readiness, Side};
use crate::pipe::PipePool;
use crate::snapshot::{PickState, Snapshot, SnapshotCell};
use crate::source_limits::SourceHold;
use crate::stats::{BackendStats, ConnectionBudget, Latencies};

use listeners::ListenerState;
use slab::Slab;

/// Splice calls per direction per drive before yielding to other connections.
const DRIVE_BUDGET: u32 = 16;

/// Most often a worker publishes its latency histograms for scrapes.
const LATENCY_PUBLISH: Duration = Duration::from_secs(1);

/// How often the bytes open connections moved are added to their
/// backends' counters (so a long transfer shows in rates while it runs).
const BYTES_FLUSH: Duration = Duration::from_secs(1);

/// How an engine watches sockets for the worker. Registrations are
/// edge-triggered for read and write readiness.
pub(crate) trait Reactor {
    /// The engine accepts connections itself (io_uring's multishot accept)
    /// and hands each to [`Worker::on_accepted`]; the worker then never
    /// calls accept(2) and listener tokens never reach `on_event`.
    const DELIVERS_ACCEPTS: bool = false;

    fn add(&mut self, fd: RawFd, token: Token) -> io::Result<()>;
    /// For an engine that accepts by itself: arm listeners one connection
    /// at a time (`one`) or in bulk from now on. True when that changed
    /// (then the worker re-adds its watched listeners).
    fn accept_one_at_a_time(&mut self, _one: bool) -> bool {
        false
    }
    /// Stops watching `fd`. `closing`: the fd is about to be closed (epoll
    /// forgets closed fds by itself; io_uring needs a cancel).
    fn remove(&mut self, fd: RawFd, token: Token, closing: bool);

    /// The engine moves the bytes of established connections itself
    /// (io_uring with `forwarding = "uring-copy"` or `"uring-splice"`):
    /// the worker hands each over with [`start_flows`](Reactor::start_flows)
    /// and never pumps it; completions come back through
    /// [`Worker::on_forwarded`].
    fn forwards(&self) -> bool {
        false
    }
    /// Starts forwarding between the two sockets of the connection with
    /// `token`; returns a handle for [`stop_flows`](Reactor::stop_flows).
    fn start_flows(&mut self, _token: Token, _client: RawFd, _backend: RawFd) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Ends the forwarding of `handle` and takes the connection's sockets
    /// ([client, backend], SO_LINGER already set for a reset): the engine
    /// cancels what is in flight on them and closes them when no request
    /// names them any more (a request queued but not yet submitted names
    /// an fd *number*, which a socket accepted meanwhile could reuse).
    fn stop_flows(&mut self, _handle: u64, fds: [OwnedFd; 2]) {
        drop(fds);
    }
    /// (pipes, buffers) the engine's forwarding holds (metrics, leak checks).
    fn lent(&self) -> (usize, usize) {
        (0, 0)
    }
    /// The engine's own accept on listener `li` may still be in the kernel
    /// (a cancelled multishot accept lives until its last completion).
    fn accepting(&self, _li: usize) -> bool {
        false
    }
}

/// What a worker is started with.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub listeners: Vec<Listener>,
    pub snapshots: Arc<SnapshotCell>,
    pub failures: FailureSender,
    pub control: Arc<WorkerControl>,
    pub pipe_size: usize,
    pub pipe_pool: usize,
    /// How bytes are moved, resolved at start-up; copies use buffers of
    /// `pipe_size` bytes, at most `pipe_pool` of them kept idle.
    pub forwarding: WorkerForwarding,
    /// The process's connection budget, shared by every worker.
    pub budget: Arc<ConnectionBudget>,
    /// This worker's access log queue; None with `access_log = "off"`.
    pub access_log: Option<AccessLogSender>,
}

enum Phase {
    /// Before a backend is chosen: the client's PROXY header is awaited
    /// (`preamble.rs`) until `deadline`.
    Preamble { deadline: Instant },
    /// Before a service is chosen, on an address that routes by server
    /// name: the client's ClientHello is awaited (`sni.rs`) until
    /// `deadline`.
    Hello { deadline: Instant },
    Connecting {
        /// Backend being tried (u32::MAX before the first attempt), by index
        /// in the snapshot of `generation` and by address.
        backend_index: u32,
        target: Option<SocketAddr>,
        /// Candidates (indices in the snapshot of `generation`) and how many
        /// were tried.
        candidates: [u32; MAX_ATTEMPTS],
        count: u8,
        tried: u8,
        /// Connects started in all (`tried` restarts when the table
        /// changes mid-way): the access log's attempts.
        attempts: u8,
        generation: u64,
        deadline: Instant,
        /// When the current attempt started (connect-time histogram).
        started: Instant,
    },
    /// Connected, and the backend has sent nothing yet: the client's
    /// first bytes (none, or a TLS ClientHello) stay in its socket, copied
    /// to the backend, so that a backend closing or resetting before it
    /// answers is replaced by the next candidate (`replay.rs`).
    Replayable(replay::Held),
    Established {
        /// The inline pumps' state; with the engine forwarding (`flows`)
        /// only its byte counts are used.
        pair: Pair,
        stats: Arc<BackendStats>,
        since: Instant,
        /// The engine forwards this connection (`Reactor::forwards`): its
        /// handle. Readiness then never drives the inline pumps.
        flows: Option<u64>,
        /// What the access log says of the connect: the backend's address,
        /// its name (only kept with the log on), the connects it took and
        /// how long the last one did.
        address: SocketAddr,
        name: Option<Arc<str>>,
        attempts: u8,
        connect_time: Duration,
    },
}

struct Conn {
    client: OwnedFd,
    /// The client's address and port as accepted: what the service hashes
    /// and what a connection's records name.
    peer: SocketAddr,
    client_ready: Readiness,
    /// The backend socket: connecting, then established.
    backend: Option<Socket>,
    backend_ready: Readiness,
    listener: usize,
    phase: Phase,
    /// When it was accepted (the access log's duration).
    accepted: Instant,
    /// When ringlb last moved a byte of it (read or write).
    last_active: Instant,
    /// Bytes both peers had acknowledged (TCP_INFO) when the idle timer
    /// last found ringlb idle: more since then are bytes the kernel
    /// delivered from its send buffers, so the connection is not idle.
    acked: u64,
    /// When this connection's one live timer entry fires.
    timer_at: Instant,
    /// Its count in the service's per-source connection table
    /// (`max_connections_per_source`), taken back when the connection is
    /// dropped, whatever ended it. None when connections are not counted.
    source: Option<SourceHold>,
}

impl Conn {
    /// A client just admitted on listener `li`, in `phase` until `deadline`
    /// (its first timer), with no backend socket yet; `source`: its place
    /// in the per-source connection table, if it took one.
    fn new(
        client: OwnedFd,
        peer: SocketAddr,
        li: usize,
        phase: Phase,
        now: Instant,
        deadline: Instant,
        source: Option<SourceHold>,
    ) -> Conn {
        Conn {
            client,
            peer,
            client_ready: Readiness::default(),
            backend: None,
            backend_ready: Readiness::default(),
            listener: li,
            phase,
            accepted: now,
            last_active: now,
            acked: 0,
            timer_at: deadline,
            source,
        }
    }
}

/// The worker's event-driven core. `S` is the kernel ([`Kernel`]) except in
/// unit tests.
pub(crate) struct Worker<R: Reactor, S: Syscalls = Kernel> {
    pub reactor: R,
    /// Accept and connect (zero-sized in production).
    sys: S,
    id: usize,
    listeners: Vec<ListenerState>,
    snapshots: Arc<SnapshotCell>,
    snapshot: Arc<Snapshot>,
    picks: Vec<PickState>,
    failures: FailureSender,
    control: Arc<WorkerControl>,
    /// The process's client connections against the fd limit's budget: a
    /// place is taken on admission and given back on release.
    budget: Arc<ConnectionBudget>,
    /// Where a connection's end is recorded; None: the log is off.
    access_log: Option<AccessLogSender>,
    pool: PipePool,
    /// Copy buffers (`forwarding = "copy"` or `"auto"`; none made otherwise).
    buffers: BufferPool,
    /// How the inline pumps move bytes: splice through `pool`, recv/send
    /// through `buffers`, or per flow (auto). Unused for connections the
    /// engine forwards (`Reactor::forwards`).
    forwarding: InlineForwarding,
    /// The connections; their count is what the worker publishes.
    slab: Slab<Conn>,
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
    /// Connections whose budget ran out: driven again next turn.
    again: Vec<Token>,
    now: Instant,
    /// Accept paused until then after a resource error.
    accept_backoff: Option<Instant>,
    listeners_closed: bool,
    /// Live histograms; a copy goes to `WorkerControl::latencies` at most
    /// once per `LATENCY_PUBLISH` when something was recorded.
    latencies: Latencies,
    latencies_dirty: bool,
    latencies_published: Instant,
    /// Where preambles and ClientHellos are peeked (one per worker, never
    /// per connection; empty until a service reads PROXY headers or
    /// routes by server name).
    scratch: Vec<u8>,
    /// When the bytes of open connections were last added to their
    /// backends' counters (every `BYTES_FLUSH`; a close adds its rest).
    bytes_flushed: Instant,
}

impl<R: Reactor> Worker<R> {
    pub(crate) fn new(setup: WorkerSetup, reactor: R) -> Worker<R> {
        Worker::with_syscalls(setup, reactor, Kernel)
    }
}

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    /// A worker whose accepts and connects go through `sys`.
    pub(crate) fn with_syscalls(setup: WorkerSetup, reactor: R, sys: S) -> Worker<R, S> {
        let snapshot = setup.snapshots.load();
        let listeners = setup
            .listeners
            .into_iter()
            .map(|l| {
                let si = snapshot.service_index(&l.service);
                let mut state = ListenerState::new(l, si, false);
                state.refresh(&snapshot);
                state
            })
            .collect();
        let picks = (0..snapshot.services.len())
            .map(|i| PickState::new(seed(setup.id, i)))
            .collect();
        Worker {
            reactor,
            sys,
            id: setup.id,
            listeners,
            snapshots: setup.snapshots,
            snapshot,
            picks,
            failures: setup.failures,
            control: setup.control,
            budget: setup.budget,
            access_log: setup.access_log,
            pool: PipePool::new(setup.pipe_size, setup.pipe_pool),
            buffers: BufferPool::new(setup.pipe_size, setup.pipe_pool),
            forwarding: setup.forwarding.inline(),
            slab: Slab::new(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            now: Instant::now(),
            accept_backoff: None,
            listeners_closed: false,
            latencies: Latencies::new(),
            latencies_dirty: false,
            latencies_published: Instant::now(),
            scratch: Vec::new(),
            bytes_flushed: Instant::now(),
        }
    }

    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// Registers the listeners; call once before the loop.
    pub(crate) fn start(&mut self) -> io::Result<()> {
        self.choose_accept_batch();
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(s) = &l.socket {
                self.reactor.add(s.as_raw_fd(), Token::listener(i))?;
            }
        }
        Ok(())
    }

    /// Start of a turn: the clock, and the one generation check.
    pub(crate) fn begin_turn(&mut self) {
        self.now = Instant::now();
        self.control.turns.fetch_add(1, Relaxed);
        if self.snapshots.generation() != self.snapshot.generation {
            self.snapshot = self.snapshots.load();
            for l in &mut self.listeners {
                l.refresh(&self.snapshot);
            }
            while self.picks.len() < self.snapshot.services.len() {
                let i = self.picks.len();
                self.picks.push(PickState::new(seed(self.id, i)));
            }
        }
    }

    /// Handles one readiness report.
    pub(crate) fn on_event(&mut self, token: Token, event: Readiness) {
        let backend = match token.kind() {
            TokenKind::Wake => return,
            TokenKind::Listener(li) => {
                self.accept_from(li);
                return;
            }
            TokenKind::Leg { backend, .. } => backend,
        };
        let Some(slot) = self.slab.slot_of(token) else {
            return;
        };
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        // Recorded in every phase: an edge is reported once (a request sent
        // while the backend connects, a server greeting with the connect).
        if backend {
            conn.backend_ready.merge(event);
        } else {
            conn.client_ready.merge(event);
        }
        match conn.phase {
            Phase::Established { .. } => {}
            Phase::Replayable(_) => {
                self.replay_event(slot, backend);
                return;
            }
            Phase::Connecting { .. } => {
                if backend {
                    self.connect_done(slot);
                }
                return;
            }
            // No backend socket yet: only the client's can report.
            Phase::Preamble { .. } => {
                self.read_preamble(slot);
                return;
            }
            Phase::Hello { .. } => {
                self.read_hello(slot);
                return;
            }
        }
        self.drive(slot);
    }

    /// End of a turn: starved connections, timers, listener pauses, frees.
    pub(crate) fn end_turn(&mut self) {
        let again = std::mem::take(&mut self.again);
        for token in again {
            if let Some(slot) = self.slab.slot_of(token) {
                self.drive(slot);
            }
        }
        for i in 0..self.listeners.len() {
            if self.listeners[i].more {
                self.listeners[i].more = false;
                self.accept_from(i);
            }
        }
        self.run_timers();
        for msg in self.control.take_mail() {
            self.on_message(msg);
        }
        self.manage_listeners();
        self.slab.end_turn();
        self.publish_counters();
        if self.listeners_closed
            && !self.control.listeners_closed.load(Relaxed)
            && self.listeners.iter().all(|l| l.socket.is_none())
        {
            self.control
                .listeners_closed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        if self.latencies_dirty
            && self.now.duration_since(self.latencies_published) >= LATENCY_PUBLISH
        {
            self.control
                .latencies
                .store(Some(Arc::new(self.latencies.clone())));
            self.latencies_dirty = false;
            self.latencies_published = self.now;
        }
        if self.now.duration_since(self.bytes_flushed) >= BYTES_FLUSH {
            self.flush_bytes();
        }
    }

    /// Adds what every open connection moved since the last flush to its
    /// backend's byte counters: O(connections) once a second, nothing per
    /// byte. Engine-forwarded connections count too: their completions
    /// add to the same `Pair` (`on_forwarded`).
    fn flush_bytes(&mut self) {
        self.bytes_flushed = self.now;
        for slot in 0..self.slab.slots() {
            if let Some(Conn {
                phase: Phase::Established { pair, stats, .. },
                ..
            }) = self.slab.get_mut(slot)
            {
                let (up, down) = pair.take_uncounted();
                if up > 0 {
                    stats.bytes_to_backend.fetch_add(up, Relaxed);
                }
                if down > 0 {
                    stats.bytes_to_client.fetch_add(down, Relaxed);
                }
            }
        }
    }

    /// Connections, pipes and buffers held, for the control plane (once a
    /// turn, and by the engine after its last completions on stop).
    pub(crate) fn publish_counters(&self) {
        let (pipes, buffers) = self.reactor.lent();
        self.control.connections.store(self.slab.len(), Relaxed);
        self.control
            .pipes_lent
            .store(self.pool.lent() + pipes, Relaxed);
        self.control
            .buffers_lent
            .store(self.buffers.lent() + buffers, Relaxed);
    }

    /// True once the worker should leave its loop.
    pub(crate) fn should_exit(&self) -> bool {
        self.control.stop.load(Relaxed)
    }

    /// Closes every connection (on stop), with RST: they outlived the drain.
    pub(crate) fn close_all(&mut self) {
        self.reset_held();
        for slot in 0..self.slab.slots() {
            if self.slab.get(slot).is_some() {
                self.abort(slot, EndCause::Shutdown);
            }
        }
        self.slab.end_turn();
        self.publish_counters();
    }

    /// Gives an established connection's forwarding to the engine. Its
    /// socket watches go: readiness means nothing to it any more.
    fn hand_over(&mut self, slot: usize) {
        let client_token = self.slab.token(slot, false);
        let backend_token = self.slab.token(slot, true);
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Some(backend) = conn.backend.as_ref().map(|b| b.as_raw_fd()) else {
            return;
        };
        let client = conn.client.as_raw_fd();
        self.reactor.remove(client, client_token, false);
        self.reactor.remove(backend, backend_token, false);
        match self.reactor.start_flows(client_token, client, backend) {
            Ok(handle) => {
                if let Phase::Established { flows, .. } = &mut conn.phase {
                    *flows = Some(handle);
                }
            }
            Err(_) => self.abort(slot, EndCause::LocalError),
        }
    }

    /// A completion of the engine's forwarding of the connection with
    /// `token`: `up`/`down` bytes written to the backend / client, and
    /// what became of it (as from the inline pumps); `fin_from`: it passed
    /// on that side's FIN.
    pub(crate) fn on_forwarded(
        &mut self,
        token: Token,
        up: u64,
        down: u64,
        outcome: Outcome,
        fin_from: Option<Side>,
    ) {
        let Some(slot) = self.slab.slot_of(token) else {
            return;
        };
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Phase::Established { pair, .. } = &mut conn.phase else {
            return;
        };
        pair.up.bytes += up;
        pair.down.bytes += down;
        if let Some(side) = fin_from {
            pair.note_fin(side);
        }
        match outcome {
            Outcome::Open { progressed, .. } => {
                if progressed {
                    conn.last_active = self.now;
                }
            }
            Outcome::Finished => self.finish(slot),
            Outcome::Aborted {
                reset_client,
                reset_backend,
            } => self.abort(slot, EndCause::of_abort(reset_client, reset_backend)),
        }
    }

    fn drive(&mut self, slot: usize) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Phase::Established {
            pair, flows: None, ..
        } = &mut conn.phase
        else {
            // Connecting, or forwarded by the engine.
            return;
        };
        let Some(backend) = &conn.backend else { return };
        let (client, backend) = (conn.client.as_raw_fd(), backend.as_raw_fd());
        let (cr, br) = (&mut conn.client_ready, &mut conn.backend_ready);
        let outcome = match self.forwarding {
            InlineForwarding::Copy => {
                pair.drive_copy(client, backend, cr, br, &mut self.buffers, DRIVE_BUDGET)
            }
            InlineForwarding::Auto => pair.drive_auto(
                client,
                backend,
                cr,
                br,
                &mut self.pool,
                &mut self.buffers,
                DRIVE_BUDGET,
            ),
            InlineForwarding::Splice => {
                pair.drive(client, backend, cr, br, &mut self.pool, DRIVE_BUDGET)
            }
        };
        match outcome {
            Outcome::Open {
                progressed,
                starved,
            } => {
                if progressed {
                    conn.last_active = self.now;
                }
                if starved {
                    let token = self.slab.token(slot, false);
                    self.again.push(token);
                }
            }
            Outcome::Finished => self.finish(slot),
            Outcome::Aborted {
                reset_client,
                reset_backend,
            } => self.abort(slot, EndCause::of_abort(reset_client, reset_backend)),
        }
    }

    /// Both directions done: a plain close. (On a leg where ringlb sent the
    /// first FIN, the kernel makes the TIME_WAIT when the second FIN arrives,
    /// whatever close() does; on the other leg the peer that closed first
    /// keeps it. Only an RST would avoid it, and that breaks half-close.)
    fn finish(&mut self, slot: usize) {
        let cause = match self.slab.get(slot).map(|c| &c.phase) {
            Some(Phase::Established { pair, .. }) if pair.first_fin() == Some(Side::Backend) => {
                EndCause::BackendClosed
            }
            _ => EndCause::ClientClosed,
        };
        self.release(slot, cause);
    }

    /// Closes a connection for `cause`, with RST on the sides it names.
    fn abort(&mut self, slot: usize, cause: EndCause) {
        let (reset_client, reset_backend) = cause.resets();
        if let Some(conn) = self.slab.get(slot) {
            if reset_client {
                conn::prepare_reset(conn.client.as_raw_fd());
            }
            if let (true, Some(b)) = (reset_backend, &conn.backend) {
                conn::prepare_reset(b.as_raw_fd());
            }
        }
        self.release(slot, cause);
    }

    /// Frees a connection that ended for `cause`: counts the end, and
    /// records it in the access log if that is on.
    fn release(&mut self, slot: usize, cause: EndCause) {
        let client_token = self.slab.token(slot, false);
        let backend_token = self.slab.token(slot, true);
        let Some(mut conn) = self.slab.remove(slot) else {
            return;
        };
        self.reactor
            .remove(conn.client.as_raw_fd(), client_token, true);
        if let Some(b) = &conn.backend {
            self.reactor.remove(b.as_raw_fd(), backend_token, true);
        }
        if let Phase::Established {
            pair, stats, since, ..
        } = &mut conn.phase
        {
            self.latencies
                .record_duration(self.now.saturating_duration_since(*since));
            self.latencies_dirty = true;
            pair.release(&mut self.pool);
            pair.release_buffers(&mut self.buffers);
            stats.active.fetch_sub(1, Relaxed);
            // What the last flush (`flush_bytes`) did not add yet.
            let (up, down) = pair.take_uncounted();
            stats.bytes_to_backend.fetch_add(up, Relaxed);
            stats.bytes_to_client.fetch_add(down, Relaxed);
        }
        if let Phase::Replayable(held) = &conn.phase {
            held.stats().active.fetch_sub(1, Relaxed);
        }
        let listener = &self.listeners[conn.listener];
        let established = matches!(conn.phase, Phase::Established { .. });
        listener.stats.ends.count(established, cause);
        if let Some(log) = &self.access_log {
            log.send(record(&conn, listener, self.now, cause));
        }
        listener.stats.release();
        self.budget.release();
        let Conn {
            client,
            backend,
            phase,
            ..
        } = conn;
        if let (
            Phase::Established {
                flows: Some(handle),
                ..
            },
            Some(backend),
        ) = (phase, backend)
        {
            // The engine cancels what it has in flight on the sockets and
            // closes them once nothing names them any more.
            self.reactor.stop_flows(handle, [client, backend.into()]);
        }
        // Otherwise both close here.
    }
}

/// The access record of a connection ending now for `cause`.
fn record(conn: &Conn, listener: &ListenerState, now: Instant, cause: EndCause) -> AccessRecord {
    let (backend, attempts, connect_time, up, down) = match &conn.phase {
        Phase::Preamble { .. } | Phase::Hello { .. } => (None, 0, None, 0, 0),
        Phase::Connecting { attempts, .. } => (None, *attempts, None, 0, 0),
        Phase::Replayable(held) => (None, held.attempts(), None, 0, 0),
        Phase::Established {
            pair,
            address,
            name,
            attempts,
            connect_time,
            ..
        } => (
            name.clone().map(|n| (n, *address)),
            *attempts,
            Some(*connect_time),
            pair.up.bytes,
            pair.down.bytes,
        ),
    };
    AccessRecord {
        at: std::time::SystemTime::now(),
        service: listener.service.clone(),
        client: conn.peer,
        listen: listener.addr,
        backend,
        attempts,
        connect_time,
        duration: now.saturating_duration_since(conn.accepted),
        bytes_to_backend: up,
        bytes_to_client: down,
        cause,
    }
}

/// Counts (and logs) the end of a client accepted but never admitted: its
/// listener was closing.
pub(crate) fn unadmitted(
    log: &Option<AccessLogSender>,
    listener: &ListenerState,
    peer: SocketAddr,
    cause: EndCause,
) {
    listener.stats.ends.count(false, cause);
    let Some(log) = log else { return };
    log.send(AccessRecord {
        at: std::time::SystemTime::now(),
        service: listener.service.clone(),
        client: peer,
        listen: listener.addr,
        backend: None,
        attempts: 0,
        connect_time: None,
        duration: Duration::ZERO,
        bytes_to_backend: 0,
        bytes_to_client: 0,
        cause,
    });
}

fn seed(worker: usize, service: usize) -> u64 {
    0x9E37_79B9_7F4A_7C15u64
        .wrapping_mul(worker as u64 + 1)
        .wrapping_add((service as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        | 1
}
