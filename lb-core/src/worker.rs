//! One worker: the engine-independent half of a data-plane thread.
//!
//! A worker owns its listeners (one `SO_REUSEPORT` socket per listen
//! address), its connections, its pipe pool and its timers. It is driven by
//! an engine (epoll or io_uring) through a [`Reactor`]: the engine reports
//! readiness, the worker decides, and asks the reactor to watch or forget
//! sockets. Nothing here blocks or takes a lock; the only shared state it
//! reads on the hot path is the snapshot generation (once per turn) and the
//! per-service/backend atomic counters.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::buffer::BufferPool;
use crate::config::Forwarding;
use crate::conn::{self, Outcome, Pair, Readiness};
use crate::pipe::PipePool;
use crate::snapshot::{PickState, Snapshot, SnapshotCell};
use crate::stats::{BackendStats, Latencies, ServiceStats};
use crate::sys;

/// Most backends one client connection tries.
pub const MAX_ATTEMPTS: usize = 8;
/// Connections accepted from one listener per readiness event before the
/// worker serves the others (the rest are picked up next turn).
const ACCEPT_BATCH: usize = 64;
/// Splice calls per direction per drive before yielding to other connections.
const DRIVE_BUDGET: u32 = 16;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest an idle worker sleeps: bounds how late it notices a paused
/// listener may resume.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Most often a worker publishes its latency histograms for scrapes.
const LATENCY_PUBLISH: Duration = Duration::from_secs(1);

/// Token of a listener (high bit set) or a connection socket.
/// Connection tokens: generation << 32 | slot << 1 | side.
pub const LISTENER_FLAG: u64 = 1 << 63;
/// Token of the engine's wake-up source.
pub const WAKE_TOKEN: u64 = u64::MAX;
/// Slot generations wrap within 31 bits (see `open`).
const GENERATION_MASK: u32 = 0x7fff_ffff;

/// How an engine watches sockets for the worker. Registrations are
/// edge-triggered for read and write readiness.
pub trait Reactor {
    /// The engine accepts connections itself (io_uring's multishot accept)
    /// and hands each to [`Worker::on_accepted`]; the worker then never
    /// calls accept(2) and listener tokens never reach `on_event`.
    const DELIVERS_ACCEPTS: bool = false;

    fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()>;
    /// Stops watching `fd`. `closing`: the fd is about to be closed (epoll
    /// forgets closed fds by itself; io_uring needs a cancel).
    fn remove(&mut self, fd: RawFd, token: u64, closing: bool);

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
    fn start_flows(&mut self, _token: u64, _client: RawFd, _backend: RawFd) -> io::Result<u64> {
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
}

/// A connect failure, sent to the control plane (passive health).
#[derive(Debug, Clone)]
pub struct PassiveFailure {
    pub service: Arc<str>,
    pub backend: Arc<str>,
    pub address: SocketAddr,
    pub reason: ConnectFailure,
}

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Unreachable,
    Other(i32),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Refused => f.write_str("connection refused"),
            ConnectFailure::Timeout => f.write_str("connect timed out"),
            ConnectFailure::Unreachable => f.write_str("unreachable"),
            ConnectFailure::Other(errno) => write!(f, "{}", io::Error::from_raw_os_error(*errno)),
        }
    }
}

impl ConnectFailure {
    fn from_io(e: &io::Error) -> ConnectFailure {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
            Some(libc::ETIMEDOUT) => ConnectFailure::Timeout,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
                ConnectFailure::Unreachable
            }
            Some(n) => ConnectFailure::Other(n),
            None => ConnectFailure::Other(0),
        }
    }
}

/// Where workers send passive failures; never blocks (drops when full).
pub type FailureSender = tokio::sync::mpsc::Sender<PassiveFailure>;

/// Shared between a worker and the control plane.
#[derive(Default)]
pub struct WorkerControl {
    /// Stop accepting (close listeners); keep serving connections.
    pub draining: AtomicBool,
    /// Exit now, closing every connection.
    pub stop: AtomicBool,
    /// Connections this worker holds.
    pub connections: AtomicUsize,
    /// Connections accepted in all.
    pub accepted: AtomicU64,
    /// Event-loop turns in all (the watchdog checks it moves).
    pub turns: AtomicU64,
    /// Pipes currently lent to connections (leak checks, metrics).
    pub pipes_lent: AtomicUsize,
    /// Copy buffers currently lent to connections (`forwarding = "copy"`/`"auto"`).
    pub buffers_lent: AtomicUsize,
    /// The engine that runs this worker, once started.
    pub engine: OnceLock<&'static str>,
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The worker's latency histograms as of its last publication (at most
    /// once a second); scrapes merge these copies.
    pub latencies: arc_swap::ArcSwapOption<Latencies>,
    /// Requests from the control plane (reload). The worker looks at
    /// `has_mail` once per turn and takes the lock only when it is set.
    mail: Mutex<Vec<WorkerMessage>>,
    has_mail: AtomicBool,
}

/// What the control plane may ask of a running worker.
pub enum WorkerMessage {
    /// Accept on a new listener (a reload added a listen address).
    AddListener(Listener),
    /// Stop accepting on an address (a reload removed it); established
    /// connections stay.
    CloseListener { service: Arc<str>, addr: SocketAddr },
}

impl std::fmt::Debug for WorkerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerControl")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl WorkerControl {
    /// Wakes the worker's event loop (after publishing, or to stop it).
    pub fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }

    /// Queues a request and wakes the worker.
    pub fn send(&self, msg: WorkerMessage) {
        self.mail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
        self.has_mail.store(true, Release);
        self.wake();
    }

    fn take_mail(&self) -> Vec<WorkerMessage> {
        if !self.has_mail.swap(false, Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.mail.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Called once by the engine with its way to be woken.
    pub fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(waker);
    }
}

/// A listening socket given to a worker.
pub struct Listener {
    pub service: Arc<str>,
    /// The address it is bound to (port 0 in the config resolved).
    pub addr: SocketAddr,
    pub socket: Socket,
    pub stats: Arc<ServiceStats>,
}

/// What a worker is started with.
pub struct WorkerSetup {
    pub id: usize,
    pub listeners: Vec<Listener>,
    pub snapshots: Arc<SnapshotCell>,
    pub failures: FailureSender,
    pub control: Arc<WorkerControl>,
    pub pipe_size: usize,
    pub pipe_pool: usize,
    /// How bytes are moved; `Copy` uses buffers of `pipe_size` bytes, at
    /// most `pipe_pool` of them kept idle. Anything else splices.
    pub forwarding: Forwarding,
}

struct ListenerState {
    service: Arc<str>,
    addr: SocketAddr,
    /// None once closed (drain, or removed by a reload); the state stays for
    /// the connections it accepted.
    socket: Option<Socket>,
    stats: Arc<ServiceStats>,
    /// Index of the service in the worker's current snapshot.
    service_index: Option<usize>,
    /// Not watched now: the service is full, or accept hit a resource limit.
    paused: bool,
    /// Accept batch ran out with connections left: accept again next turn.
    more: bool,
    /// Connections the engine accepted while this listener could not take
    /// them (multishot accept cannot be told to wait: it accepts until its
    /// cancel lands). They wait here as they would in the backlog, in
    /// order, and are served first on resume. Always empty on epoll.
    held: VecDeque<(OwnedFd, SocketAddr)>,
}

enum Phase {
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
        generation: u64,
        deadline: Instant,
        /// When the current attempt started (connect-time histogram).
        started: Instant,
    },
    Established {
        /// The inline pumps' state; with the engine forwarding (`flows`)
        /// only its byte counts are used.
        pair: Pair,
        stats: Arc<BackendStats>,
        since: Instant,
        /// The engine forwards this connection (`Reactor::forwards`): its
        /// handle. Readiness then never drives the inline pumps.
        flows: Option<u64>,
    },
}

struct Conn {
    client: OwnedFd,
    client_ip: IpAddr,
    client_ready: Readiness,
    /// The backend socket: connecting, then established.
    backend: Option<Socket>,
    backend_ready: Readiness,
    listener: usize,
    phase: Phase,
    last_active: Instant,
    /// When this connection's one live timer entry fires.
    timer_at: Instant,
}

/// The worker's event-driven core.
pub struct Worker<R: Reactor> {
    pub reactor: R,
    id: usize,
    listeners: Vec<ListenerState>,
    snapshots: Arc<SnapshotCell>,
    snapshot: Arc<Snapshot>,
    picks: Vec<PickState>,
    failures: FailureSender,
    control: Arc<WorkerControl>,
    pool: PipePool,
    /// Copy buffers (`forwarding = "copy"` or `"auto"`; none made otherwise).
    buffers: BufferPool,
    /// How bytes move: splice through `pool`, recv/send through `buffers`,
    /// or per flow (auto).
    forwarding: Forwarding,
    slots: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    /// Freed during this turn: reused only next turn, so a stale event of
    /// this turn's batch never reaches a new connection.
    freed: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Connections whose budget ran out: driven again next turn.
    again: Vec<u64>,
    now: Instant,
    /// Accept paused until then after a resource error.
    accept_backoff: Option<Instant>,
    listeners_closed: bool,
    conn_count: usize,
    /// Live histograms; a copy goes to `WorkerControl::latencies` at most
    /// once per `LATENCY_PUBLISH` when something was recorded.
    latencies: Latencies,
    latencies_dirty: bool,
    latencies_published: Instant,
}

impl<R: Reactor> Worker<R> {
    pub fn new(setup: WorkerSetup, reactor: R) -> Worker<R> {
        let snapshot = setup.snapshots.load();
        let listeners = setup
            .listeners
            .into_iter()
            .map(|l| ListenerState {
                service_index: snapshot.service_index(&l.service),
                addr: l.addr,
                service: l.service,
                socket: Some(l.socket),
                stats: l.stats,
                paused: false,
                more: false,
                held: VecDeque::new(),
            })
            .collect();
        let picks = (0..snapshot.services.len())
            .map(|i| PickState::new(seed(setup.id, i)))
            .collect();
        Worker {
            reactor,
            id: setup.id,
            listeners,
            snapshots: setup.snapshots,
            snapshot,
            picks,
            failures: setup.failures,
            control: setup.control,
            pool: PipePool::new(setup.pipe_size, setup.pipe_pool),
            buffers: BufferPool::new(setup.pipe_size, setup.pipe_pool),
            forwarding: setup.forwarding,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            now: Instant::now(),
            accept_backoff: None,
            listeners_closed: false,
            conn_count: 0,
            latencies: Latencies::new(),
            latencies_dirty: false,
            latencies_published: Instant::now(),
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn control(&self) -> &Arc<WorkerControl> {
        &self.control
    }

    /// Registers the listeners; call once before the loop.
    pub fn start(&mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(s) = &l.socket {
                self.reactor.add(s.as_raw_fd(), LISTENER_FLAG | i as u64)?;
            }
        }
        Ok(())
    }

    /// How long the engine may sleep waiting for events.
    pub fn sleep_budget(&self) -> Duration {
        if !self.again.is_empty() || self.listeners.iter().any(|l| l.more) {
            return Duration::ZERO;
        }
        let mut d = MAX_SLEEP;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            d = d.min(at.saturating_duration_since(Instant::now()));
        }
        d
    }

    /// Start of a turn: the clock, and the one generation check.
    pub fn begin_turn(&mut self) {
        self.now = Instant::now();
        self.control.turns.fetch_add(1, Relaxed);
        if self.snapshots.generation() != self.snapshot.generation {
            self.snapshot = self.snapshots.load();
            for l in &mut self.listeners {
                l.service_index = self.snapshot.service_index(&l.service);
            }
            while self.picks.len() < self.snapshot.services.len() {
                let i = self.picks.len();
                self.picks.push(PickState::new(seed(self.id, i)));
            }
        }
    }

    /// Handles one readiness report.
    pub fn on_event(&mut self, token: u64, event: Readiness) {
        if token == WAKE_TOKEN {
            return;
        }
        if token & LISTENER_FLAG != 0 {
            self.accept_from((token & !LISTENER_FLAG) as usize);
            return;
        }
        let Some(slot) = self.slot_of(token) else {
            return;
        };
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let connecting = matches!(conn.phase, Phase::Connecting { .. });
        // Recorded in every phase: an edge is reported once (a request sent
        // while the backend connects, a server greeting with the connect).
        if token & 1 == 1 {
            conn.backend_ready.merge(event);
            if connecting {
                self.connect_done(slot);
                return;
            }
        } else {
            conn.client_ready.merge(event);
            if connecting {
                return;
            }
        }
        self.drive(slot);
    }

    /// End of a turn: starved connections, timers, listener pauses, frees.
    pub fn end_turn(&mut self) {
        let again = std::mem::take(&mut self.again);
        for token in again {
            if let Some(slot) = self.slot_of(token) {
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
        self.free.append(&mut self.freed);
        self.publish_counters();
        if self.latencies_dirty
            && self.now.duration_since(self.latencies_published) >= LATENCY_PUBLISH
        {
            self.control
                .latencies
                .store(Some(Arc::new(self.latencies.clone())));
            self.latencies_dirty = false;
            self.latencies_published = self.now;
        }
    }

    /// Connections, pipes and buffers held, for the control plane (once a
    /// turn, and by the engine after its last completions on stop).
    pub fn publish_counters(&self) {
        let (pipes, buffers) = self.reactor.lent();
        self.control.connections.store(self.conn_count, Relaxed);
        self.control
            .pipes_lent
            .store(self.pool.lent() + pipes, Relaxed);
        self.control
            .buffers_lent
            .store(self.buffers.lent() + buffers, Relaxed);
    }

    /// True once the worker should leave its loop.
    pub fn should_exit(&self) -> bool {
        self.control.stop.load(Relaxed)
    }

    /// Closes every connection (on stop), with RST: they outlived the drain.
    pub fn close_all(&mut self) {
        self.reset_held();
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_some() {
                self.abort(slot, true, true);
            }
        }
        self.free.append(&mut self.freed);
        self.publish_counters();
    }

    fn slot_of(&self, token: u64) -> Option<usize> {
        let slot = ((token & 0xffff_ffff) >> 1) as usize;
        let generation = (token >> 32) as u32;
        (self.generations.get(slot) == Some(&generation) && self.slots[slot].is_some())
            .then_some(slot)
    }

    fn token(&self, slot: usize, backend: bool) -> u64 {
        (u64::from(self.generations[slot]) << 32) | ((slot as u64) << 1) | u64::from(backend)
    }

    fn accept_from(&mut self, li: usize) {
        if self.accept_backoff.is_some() || self.listeners[li].paused {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let l = &self.listeners[li];
            let Some(socket) = &l.socket else { return };
            let Some(si) = l.service_index else { return };
            if !self.reserve(li, si) {
                self.pause_listener(li);
                return;
            }
            match sys::accept(socket.as_raw_fd()) {
                Ok((fd, peer)) => self.admit(li, si, fd, peer),
                Err(e) => {
                    self.listeners[li].stats.release();
                    if !self.accept_failed(&e) {
                        return;
                    }
                }
            }
        }
        self.listeners[li].more = true;
    }

    fn on_message(&mut self, msg: WorkerMessage) {
        match msg {
            WorkerMessage::AddListener(l) => {
                if self.listeners_closed {
                    return; // draining: a new listener would only be closed
                }
                let i = self.listeners.len();
                let fd = l.socket.as_raw_fd();
                self.listeners.push(ListenerState {
                    service_index: self.snapshot.service_index(&l.service),
                    service: l.service,
                    addr: l.addr,
                    socket: Some(l.socket),
                    stats: l.stats,
                    paused: false,
                    // Clients may be queued already; edge-triggered (an
                    // engine that accepts by itself finds them on arming).
                    more: !R::DELIVERS_ACCEPTS,
                    held: Default::default(),
                });
                if let Err(e) = self.reactor.add(fd, LISTENER_FLAG | i as u64) {
                    tracing::error!(worker = self.id, error = %e, "cannot watch a new listener");
                    self.listeners[i].socket = None;
                }
            }
            WorkerMessage::CloseListener { service, addr } => {
                for (i, l) in self.listeners.iter_mut().enumerate() {
                    if l.service == service && l.addr == addr {
                        // Held ones go as the kernel resets a closed
                        // listener's backlog.
                        for (fd, _) in l.held.drain(..) {
                            conn::prepare_reset(fd.as_raw_fd());
                        }
                        if let Some(s) = l.socket.take() {
                            if !l.paused {
                                self.reactor
                                    .remove(s.as_raw_fd(), LISTENER_FLAG | i as u64, true);
                            }
                        }
                        l.more = false;
                    }
                }
            }
        }
    }

    /// A connection the engine accepted on listener `li` (multishot
    /// accept). Runs the same admission as the epoll path's accept: when the
    /// service is full or accepting is backed off, the connection waits in
    /// the listener's `held` queue and the listener pauses.
    pub fn on_accepted(&mut self, li: usize, fd: OwnedFd, peer: SocketAddr) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if l.socket.is_none() || l.service_index.is_none() {
            // Draining (or the service left the table): the kernel would
            // have reset it in the closed listener's backlog; do the same.
            conn::prepare_reset(fd.as_raw_fd());
            return;
        }
        l.held.push_back((fd, peer));
        if !l.paused && self.accept_backoff.is_none() {
            self.serve_held(li);
        }
    }

    /// The engine's accept on listener `li` failed (the worker decides
    /// whether to back off; the engine re-arms while the listener is
    /// watched).
    pub fn on_accept_error(&mut self, _li: usize, e: &io::Error) {
        self.accept_failed(e);
    }

    /// Admits held connections of listener `li` while the service has
    /// room; pauses the listener when it has none. True when none is left.
    fn serve_held(&mut self, li: usize) -> bool {
        while !self.listeners[li].held.is_empty() {
            let Some(si) = self.listeners[li].service_index else {
                return false;
            };
            if !self.reserve(li, si) {
                self.pause_listener(li);
                return false;
            }
            let Some((fd, peer)) = self.listeners[li].held.pop_front() else {
                break;
            };
            self.admit(li, si, fd, peer);
        }
        true
    }

    /// Takes one of the service's `max_connections` places, if free.
    fn reserve(&self, li: usize, si: usize) -> bool {
        let max = self.snapshot.services[si].settings.max_connections;
        self.listeners[li].stats.try_reserve(max)
    }

    /// After accept, with a place reserved: count it and open it. The one
    /// path both engines take.
    fn admit(&mut self, li: usize, si: usize, fd: OwnedFd, peer: SocketAddr) {
        self.listeners[li].stats.accepted.fetch_add(1, Relaxed);
        self.control.accepted.fetch_add(1, Relaxed);
        self.open(li, si, fd, peer);
    }

    /// Handles an accept error; true when accepting may go on at once.
    fn accept_failed(&mut self, e: &io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => false,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                tracing::warn!(worker = self.id, error = %e, "accept failed: out of resources; pausing accepts for 100ms");
                self.accept_backoff = Some(self.now + ACCEPT_BACKOFF);
                for i in 0..self.listeners.len() {
                    self.pause_listener(i);
                }
                false
            }
            // The client went away before we accepted, or a signal: try
            // the next one.
            _ => true,
        }
    }

    /// Resets and drops every held connection (drain, stop).
    fn reset_held(&mut self) {
        for l in &mut self.listeners {
            for (fd, _) in l.held.drain(..) {
                conn::prepare_reset(fd.as_raw_fd());
            }
        }
    }

    fn pause_listener(&mut self, li: usize) {
        let l = &mut self.listeners[li];
        if l.paused {
            return;
        }
        l.paused = true;
        l.more = false;
        if let Some(s) = &l.socket {
            self.reactor
                .remove(s.as_raw_fd(), LISTENER_FLAG | li as u64, false);
        }
    }

    /// Resumes paused listeners whose reason has passed; closes them all
    /// when draining.
    fn manage_listeners(&mut self) {
        if self.control.draining.load(Relaxed) {
            if !self.listeners_closed {
                self.listeners_closed = true;
                self.reset_held();
                for (i, l) in self.listeners.iter_mut().enumerate() {
                    if let Some(s) = l.socket.take() {
                        if !l.paused {
                            self.reactor
                                .remove(s.as_raw_fd(), LISTENER_FLAG | i as u64, true);
                        }
                    }
                }
            }
            return;
        }
        if let Some(until) = self.accept_backoff {
            if self.now < until {
                return;
            }
            self.accept_backoff = None;
        }
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            if !l.paused {
                continue;
            }
            let max = l
                .service_index
                .and_then(|si| self.snapshot.services[si].settings.max_connections);
            let full = max.is_some_and(|m| l.stats.active.load(Relaxed) >= m);
            if full || !self.serve_held(i) {
                continue;
            }
            let l = &self.listeners[i];
            if let Some(s) = &l.socket {
                if self
                    .reactor
                    .add(s.as_raw_fd(), LISTENER_FLAG | i as u64)
                    .is_ok()
                {
                    self.listeners[i].paused = false;
                    // Edge-triggered: connections queued while paused raise
                    // no new edge, so look now (an engine that accepts by
                    // itself finds them when its accept is re-armed).
                    self.listeners[i].more = !R::DELIVERS_ACCEPTS;
                }
            }
        }
    }

    fn open(&mut self, li: usize, si: usize, client: OwnedFd, peer: SocketAddr) {
        let service = &self.snapshot.services[si];
        let attempts = service.settings.connect_attempts.clamp(1, MAX_ATTEMPTS);
        let mut candidates = [0u32; MAX_ATTEMPTS];
        let count = service.candidates(peer.ip(), &mut self.picks[si], &mut candidates[..attempts]);
        let deadline = self.now + service.settings.connect_timeout;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        // 31 bits: a connection token never sets LISTENER_FLAG (bit 63) nor
        // equals WAKE_TOKEN, however often a slot is reused.
        self.generations[slot] = self.generations[slot].wrapping_add(1) & GENERATION_MASK;
        self.conn_count += 1;
        let client_fd = client.as_raw_fd();
        self.slots[slot] = Some(Conn {
            client,
            client_ip: peer.ip(),
            client_ready: Readiness::default(),
            backend: None,
            backend_ready: Readiness::default(),
            listener: li,
            phase: Phase::Connecting {
                backend_index: u32::MAX,
                target: None,
                candidates,
                count: count as u8,
                tried: 0,
                generation: self.snapshot.generation,
                deadline,
                started: self.now,
            },
            last_active: self.now,
            timer_at: deadline,
        });
        let token = self.token(slot, false);
        if self.reactor.add(client_fd, token).is_err() {
            self.abort(slot, true, false);
            return;
        }
        self.next_attempt(slot);
    }

    /// Starts a connect to the next untried candidate, or gives up with a
    /// reset to the client.
    fn next_attempt(&mut self, slot: usize) {
        loop {
            let Some(conn) = self.slots[slot].as_mut() else {
                return;
            };
            let Some(si) = self.listeners[conn.listener].service_index else {
                self.abort(slot, true, false);
                return;
            };
            let svc = &self.snapshot.services[si];
            let Phase::Connecting {
                candidates,
                count,
                tried,
                generation,
                deadline,
                backend_index,
                target,
                started,
            } = &mut conn.phase
            else {
                return;
            };
            if *generation != self.snapshot.generation {
                // The table changed while we were trying (rare): recompute
                // in the new table, skipping the backend that just failed.
                let attempts = svc.settings.connect_attempts.clamp(1, MAX_ATTEMPTS);
                let left = usize::from(*count).saturating_sub(usize::from(*tried));
                let mut fresh = [0u32; MAX_ATTEMPTS];
                let got =
                    svc.candidates(conn.client_ip, &mut self.picks[si], &mut fresh[..attempts]);
                let failed = *target;
                let mut n = 0;
                for i in 0..got {
                    if Some(svc.backends[fresh[i] as usize].address) != failed && n < left {
                        fresh[n] = fresh[i];
                        n += 1;
                    }
                }
                *candidates = fresh;
                *count = n as u8;
                *tried = 0;
                *generation = self.snapshot.generation;
            }
            if *tried >= *count {
                svc.stats.no_backend.fetch_add(1, Relaxed);
                // No backend left: the client learns it by a reset.
                self.abort(slot, true, false);
                return;
            }
            let b = candidates[usize::from(*tried)];
            *tried += 1;
            if *tried > 1 {
                svc.stats.retries.fetch_add(1, Relaxed);
            }
            *backend_index = b;
            *started = self.now;
            *deadline = self.now + svc.settings.connect_timeout;
            let deadline = *deadline;
            let entry = &svc.backends[b as usize];
            *target = Some(entry.address);
            match sys::start_connect(entry.address, svc.settings.source_address) {
                Ok(sock) => {
                    let fd = sock.as_raw_fd();
                    conn.backend = Some(sock);
                    conn.backend_ready = Readiness::default();
                    conn.timer_at = deadline;
                    let token = self.token(slot, true);
                    if self.reactor.add(fd, token).is_err() {
                        self.abort(slot, true, false);
                        return;
                    }
                    self.timers
                        .push(Reverse((deadline, self.token(slot, false))));
                    return;
                }
                Err(e) => {
                    conn.backend = None;
                    self.report_failure(si, entry.address, ConnectFailure::from_io(&e));
                }
            }
        }
    }

    /// Counts a failed connect and tells the control plane (never blocks).
    fn report_failure(&self, si: usize, address: SocketAddr, reason: ConnectFailure) {
        let svc = &self.snapshot.services[si];
        let Some(entry) = svc.backends.iter().find(|b| b.address == address) else {
            return;
        };
        match reason {
            ConnectFailure::Refused => entry.stats.connect_refused.fetch_add(1, Relaxed),
            ConnectFailure::Timeout => entry.stats.connect_timeout.fetch_add(1, Relaxed),
            _ => entry.stats.connect_other.fetch_add(1, Relaxed),
        };
        let _ = self.failures.try_send(PassiveFailure {
            service: svc.name.clone(),
            backend: entry.name.clone(),
            address: entry.address,
            reason,
        });
    }

    /// Drops the backend socket of a failed attempt.
    fn drop_backend(&mut self, slot: usize) {
        let token = self.token(slot, true);
        if let Some(conn) = self.slots[slot].as_mut() {
            if let Some(b) = conn.backend.take() {
                self.reactor.remove(b.as_raw_fd(), token, true);
            }
        }
    }

    fn connect_done(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let Phase::Connecting {
            backend_index,
            target,
            generation,
            started,
            ..
        } = conn.phase
        else {
            return;
        };
        let Some(fd) = conn.backend.as_ref().map(|b| b.as_raw_fd()) else {
            return;
        };
        // A connect that completed cleanly was reported writable and nothing
        // else (a failed one: POLLERR|POLLHUP): only otherwise is SO_ERROR
        // asked for.
        let ready = conn.backend_ready;
        let error = if ready.writable && !ready.read_closed {
            None
        } else {
            sys::take_socket_error(fd).unwrap_or_else(Some)
        };
        let Some(si) = self.listeners[conn.listener].service_index else {
            self.abort(slot, true, true);
            return;
        };
        if let Some(e) = error {
            self.drop_backend(slot);
            if let Some(addr) = target {
                self.report_failure(si, addr, ConnectFailure::from_io(&e));
            }
            self.next_attempt(slot);
            return;
        }
        let backends = &self.snapshot.services[si].backends;
        let entry = if generation == self.snapshot.generation {
            backends.get(backend_index as usize)
        } else {
            backends.iter().find(|b| Some(b.address) == target)
        };
        let Some(entry) = entry else {
            self.abort(slot, true, true);
            return;
        };
        let stats = entry.stats.clone();
        stats.active.fetch_add(1, Relaxed);
        stats.total.fetch_add(1, Relaxed);
        self.latencies
            .record_connect(self.now.saturating_duration_since(started));
        self.latencies_dirty = true;
        conn.phase = Phase::Established {
            pair: Pair::default(),
            stats,
            since: self.now,
            flows: None,
        };
        conn.last_active = self.now;
        if self.reactor.forwards() {
            self.hand_over(slot);
            return;
        }
        // Connected: writable. Readable only if the event said so (the
        // backend's poll reported every edge since the connect started,
        // and the client's since its accept).
        conn.backend_ready.writable = true;
        self.drive(slot);
    }

    /// Gives an established connection's forwarding to the engine. Its
    /// socket watches go: readiness means nothing to it any more.
    fn hand_over(&mut self, slot: usize) {
        let client_token = self.token(slot, false);
        let backend_token = self.token(slot, true);
        let Some(conn) = self.slots[slot].as_mut() else {
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
            Err(_) => self.abort(slot, true, true),
        }
    }

    /// A completion of the engine's forwarding of the connection with
    /// `token`: `up`/`down` bytes written to the backend / client, and
    /// what became of it (as from the inline pumps).
    pub fn on_forwarded(&mut self, token: u64, up: u64, down: u64, outcome: Outcome) {
        let Some(slot) = self.slot_of(token) else {
            return;
        };
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let Phase::Established { pair, .. } = &mut conn.phase else {
            return;
        };
        pair.up.bytes += up;
        pair.down.bytes += down;
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
            } => self.abort(slot, reset_client, reset_backend),
        }
    }

    fn drive(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].as_mut() else {
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
            // The uring-* modes reach here only when the engine could not
            // set them up: they run their inline equivalent.
            Forwarding::Copy | Forwarding::UringCopy => {
                pair.drive_copy(client, backend, cr, br, &mut self.buffers, DRIVE_BUDGET)
            }
            Forwarding::Auto => pair.drive_auto(
                client,
                backend,
                cr,
                br,
                &mut self.pool,
                &mut self.buffers,
                DRIVE_BUDGET,
            ),
            Forwarding::Splice | Forwarding::UringSplice => {
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
                    let token = self.token(slot, false);
                    self.again.push(token);
                }
            }
            Outcome::Finished => self.finish(slot),
            Outcome::Aborted {
                reset_client,
                reset_backend,
            } => self.abort(slot, reset_client, reset_backend),
        }
    }

    fn run_timers(&mut self) {
        while let Some(&Reverse((at, token))) = self.timers.peek() {
            if at > self.now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slot_of(token) else {
                continue;
            };
            let Some(conn) = self.slots[slot].as_mut() else {
                continue;
            };
            if conn.timer_at != at {
                continue;
            }
            let due = match &conn.phase {
                Phase::Connecting { deadline, .. } => *deadline,
                Phase::Established { .. } => {
                    let idle = self.listeners[conn.listener]
                        .service_index
                        .map_or(Duration::from_secs(900), |si| {
                            self.snapshot.services[si].settings.idle_timeout
                        });
                    conn.last_active + idle
                }
            };
            if due > self.now {
                conn.timer_at = due;
                self.timers.push(Reverse((due, token)));
                continue;
            }
            match conn.phase {
                Phase::Connecting { target, .. } => {
                    let si = self.listeners[conn.listener].service_index;
                    self.drop_backend(slot);
                    if let (Some(si), Some(addr)) = (si, target) {
                        self.report_failure(si, addr, ConnectFailure::Timeout);
                    }
                    // Sets a fresh deadline and timer if it goes on.
                    self.next_attempt(slot);
                }
                // Idle too long: both sides learn it by a reset.
                Phase::Established { .. } => self.abort(slot, true, true),
            }
        }
    }

    /// Both directions done: a plain close. (On a leg where ringlb sent the
    /// first FIN, the kernel makes the TIME_WAIT when the second FIN arrives,
    /// whatever close() does; on the other leg the peer that closed first
    /// keeps it. Only an RST would avoid it, and that breaks half-close.)
    fn finish(&mut self, slot: usize) {
        self.release(slot);
    }

    /// Closes a connection, with RST on the sides named.
    fn abort(&mut self, slot: usize, reset_client: bool, reset_backend: bool) {
        if let Some(conn) = self.slots[slot].as_ref() {
            if reset_client {
                conn::prepare_reset(conn.client.as_raw_fd());
            }
            if let (true, Some(b)) = (reset_backend, &conn.backend) {
                conn::prepare_reset(b.as_raw_fd());
            }
        }
        self.release(slot);
    }

    fn release(&mut self, slot: usize) {
        let client_token = self.token(slot, false);
        let backend_token = self.token(slot, true);
        let Some(mut conn) = self.slots[slot].take() else {
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
            stats.bytes_to_backend.fetch_add(pair.up.bytes, Relaxed);
            stats.bytes_to_client.fetch_add(pair.down.bytes, Relaxed);
        }
        self.listeners[conn.listener].stats.release();
        self.conn_count -= 1;
        self.freed.push(slot);
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

fn seed(worker: usize, service: usize) -> u64 {
    0x9E37_79B9_7F4A_7C15u64
        .wrapping_mul(worker as u64 + 1)
        .wrapping_add(service as u64 * 0xD1B5_4A32_D192_ED03)
        | 1
}
