//! The worker's decisions, fed events the way an engine feeds them, with a
//! fake reactor (records what is watched) and a fake kernel (a backlog of
//! clients, scripted connect outcomes). Snapshots are real: built from a
//! parsed config by the control plane's registry. Sockets handed to the
//! worker are Unix socket pairs, so closes and resets can be observed from
//! the far end without touching the network.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use socket2::Socket;
use tokio::sync::mpsc;

use super::connect::ConnectFailure;
use super::*;
use crate::config::{Config, TcpLiveness};
use crate::control::Registry;
use crate::snapshot::{PickState, SnapshotCell};
use crate::source_limits::SourceRefused;

// The replayable phase's tests (`replay.rs`), with this file's fakes.
mod replay;

/// What the worker asked to watch. `ACCEPTS`: the engine accepts by itself
/// (io_uring's multishot accept) and hands connections to `on_accepted`.
#[derive(Default)]
struct FakeReactor<const ACCEPTS: bool> {
    watched: HashMap<Token, RawFd>,
}

impl<const ACCEPTS: bool> Reactor for FakeReactor<ACCEPTS> {
    const DELIVERS_ACCEPTS: bool = ACCEPTS;

    fn add(&mut self, fd: RawFd, token: Token) -> io::Result<()> {
        self.watched.insert(token, fd);
        Ok(())
    }

    fn remove(&mut self, _fd: RawFd, token: Token, _closing: bool) {
        self.watched.remove(&token);
    }
}

/// The kernel as the worker's decisions see it.
#[derive(Default)]
struct FakeKernel {
    /// Clients queued on the listener, accepted in order.
    backlog: VecDeque<(OwnedFd, SocketAddr)>,
    accepted: usize,
    /// Every connect started, in order.
    connects: Vec<SocketAddr>,
    /// Connects to these addresses fail at once with this errno.
    fail_at_once: HashMap<SocketAddr, i32>,
    /// What SO_ERROR reports for a backend socket (0: none).
    so_error: i32,
    /// The far ends of the backend sockets handed out.
    backends: Vec<UnixStream>,
    /// A peek fails with this errno (0: the socket pair answers).
    peek_error: i32,
    /// Peeks made.
    peeks: usize,
    /// PROXY headers written, in order: (backend socket, bytes).
    headers: Vec<(RawFd, Vec<u8>)>,
    /// The next header writes end this way, in order: Ok(n) writes only n
    /// bytes, Err(errno) fails; when empty, a write takes everything.
    header_outcomes: VecDeque<Result<usize, i32>>,
    /// Held bytes written to backends (`replay.rs`), in order: (backend
    /// socket, bytes). They reach the backend's far end too.
    sent: Vec<(RawFd, Vec<u8>)>,
    /// The next held-byte writes take at most this many bytes each, in
    /// order; when empty, the socket pair takes what it can.
    send_limits: VecDeque<usize>,
}

/// The address every fake client connected to (its socket's local address).
const LISTEN_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 8080);

impl Syscalls for FakeKernel {
    fn accept(&mut self, _listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
        let client = self
            .backlog
            .pop_front()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAGAIN))?;
        self.accepted += 1;
        Ok(client)
    }

    fn start_connect(
        &mut self,
        addr: SocketAddr,
        _source: Option<IpAddr>,
        _liveness: &TcpLiveness,
    ) -> io::Result<Socket> {
        self.connects.push(addr);
        if let Some(&errno) = self.fail_at_once.get(&addr) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let (ours, theirs) = UnixStream::pair()?;
        self.backends.push(theirs);
        Ok(Socket::from(OwnedFd::from(ours)))
    }

    fn take_socket_error(&mut self, _fd: RawFd) -> io::Result<Option<io::Error>> {
        Ok((self.so_error != 0).then(|| io::Error::from_raw_os_error(self.so_error)))
    }

    // The clients are Unix socket pairs: MSG_PEEK and recv answer on them
    // as on TCP (bytes kept, bytes taken, 0 at EOF, EAGAIN when empty).
    fn peek(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        self.peeks += 1;
        if self.peek_error != 0 {
            return Err(io::Error::from_raw_os_error(self.peek_error));
        }
        crate::sys::peek(fd, buf)
    }

    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::recv(fd, buf)
    }

    fn local_addr(&mut self, _client: &OwnedFd) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(LISTEN_ADDR))
    }

    fn send_header(&mut self, fd: RawFd, header: &[u8]) -> io::Result<usize> {
        let n = match self.header_outcomes.pop_front() {
            None => header.len(),
            Some(Ok(n)) => n.min(header.len()),
            Some(Err(errno)) => return Err(io::Error::from_raw_os_error(errno)),
        };
        self.headers.push((fd, header[..n].to_vec()));
        Ok(n)
    }

    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        let limit = self.send_limits.pop_front().unwrap_or(buf.len());
        let n = crate::sys::send(fd, &buf[..limit.min(buf.len())])?;
        self.sent.push((fd, buf[..n].to_vec()));
        Ok(n)
    }
}

/// How a failed connect is reported (POLLERR|POLLHUP).
const CONNECT_FAILED: Readiness = Readiness {
    readable: true,
    writable: true,
    read_closed: true,
};
/// How a completed connect is reported.
const CONNECTED: Readiness = Readiness {
    readable: false,
    writable: true,
    read_closed: false,
};
/// A peer's FIN.
const FIN: Readiness = Readiness {
    readable: true,
    writable: true,
    read_closed: true,
};

/// A worker with one listener on service "s" and its observers.
struct Rig<const ACCEPTS: bool> {
    worker: Worker<FakeReactor<ACCEPTS>, FakeKernel>,
    snapshots: Arc<SnapshotCell>,
    failures: mpsc::Receiver<PassiveFailure>,
    /// The far ends of the clients, by arrival.
    clients: Vec<UnixStream>,
}

/// Service "s" with `settings` (TOML lines) and `backends` backends
/// b0, b1, … at 127.0.0.1:10000, :10001, …, all up (no health check).
fn rig<const ACCEPTS: bool>(settings: &str, backends: usize) -> Rig<ACCEPTS> {
    rig_with_budget(settings, backends, usize::MAX)
}

/// [`rig`] with a process connection budget of `budget`.
fn rig_with_budget<const ACCEPTS: bool>(
    settings: &str,
    backends: usize,
    budget: usize,
) -> Rig<ACCEPTS> {
    let mut text = format!(
        "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n{settings}\n\
         [service.health]\nkind = \"none\"\n"
    );
    for i in 0..backends {
        text.push_str(&format!(
            "[[service.backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{}\"\n",
            10_000 + i
        ));
    }
    let config = Config::parse(&text, None).expect("a valid config");
    let mut registry = Registry::new(&config);
    let snapshots = Arc::new(SnapshotCell::new(registry.snapshot().expect("a snapshot")));
    let (tx, failures) = mpsc::channel(64);
    let (listening, _) = UnixStream::pair().expect("a socket pair");
    let setup = WorkerSetup {
        id: 0,
        listeners: vec![Listener {
            service: Arc::from("s"),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            socket: Socket::from(OwnedFd::from(listening)),
            stats: registry.service_stats("s").expect("service s"),
        }],
        snapshots: snapshots.clone(),
        failures: tx,
        control: Arc::default(),
        pipe_size: 64 * 1024,
        pipe_pool: 4,
        forwarding: super::InlineForwarding::Splice.into(),
        budget: Arc::new(ConnectionBudget::new(budget)),
        access_log: None,
    };
    let mut worker = Worker::with_syscalls(setup, FakeReactor::default(), FakeKernel::default());
    worker.start().expect("listeners registered");
    worker.begin_turn();
    Rig {
        worker,
        snapshots,
        failures,
        clients: Vec::new(),
    }
}

impl<const ACCEPTS: bool> Rig<ACCEPTS> {
    /// A client from `ip`, its far end kept; the worker's end.
    fn client(&mut self, ip: [u8; 4]) -> (OwnedFd, SocketAddr) {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        theirs.set_nonblocking(true).expect("non-blocking");
        self.clients.push(theirs);
        (OwnedFd::from(ours), SocketAddr::from((ip, 40_000)))
    }

    /// Queues a client from `ip` on the listener's backlog.
    fn queue_client(&mut self, ip: [u8; 4]) {
        let c = self.client(ip);
        self.worker.sys.backlog.push_back(c);
    }

    /// The listener reports readable (epoll).
    fn listener_readable(&mut self) {
        self.worker.on_event(
            Token::listener(0),
            Readiness {
                readable: true,
                ..Readiness::default()
            },
        );
    }

    fn listening(&self) -> bool {
        self.worker
            .reactor
            .watched
            .contains_key(&Token::listener(0))
    }

    /// The backend leg being watched of the connection in `slot`.
    fn backend_leg(&self, slot: usize) -> Token {
        let token = self.worker.slab.token(slot, true);
        assert!(
            self.worker.reactor.watched.contains_key(&token),
            "slot {slot} has no backend socket watched"
        );
        token
    }

    /// The connect of the connection in `slot` fails with `errno`.
    fn connect_fails(&mut self, slot: usize, errno: i32) {
        let token = self.backend_leg(slot);
        self.worker.sys.so_error = errno;
        self.worker.on_event(token, CONNECT_FAILED);
    }

    /// The connect of the connection in `slot` completes.
    fn connect_succeeds(&mut self, slot: usize) {
        let token = self.backend_leg(slot);
        self.worker.sys.so_error = 0;
        self.worker.on_event(token, CONNECTED);
    }

    /// Time passes; the engine ends a turn.
    fn after(&mut self, d: Duration) {
        self.worker.now += d;
        self.worker.end_turn();
    }

    /// Passive failures reported so far: (backend address, reason).
    fn failures(&mut self) -> Vec<(SocketAddr, ConnectFailure)> {
        let mut out = Vec::new();
        while let Ok(f) = self.failures.try_recv() {
            assert_eq!(&*f.service, "s");
            out.push((f.address, f.reason));
        }
        out
    }

    /// The worker closed client `i` (its far end reads EOF or an error).
    fn client_closed(&mut self, i: usize) -> bool {
        closed(&mut self.clients[i])
    }

    /// The backends the worker would try for a first client from `ip`, in
    /// order (the service's preference order, bounded by its attempts).
    fn preference(&self, ip: [u8; 4]) -> Vec<SocketAddr> {
        let snapshot = self.snapshots.load();
        let svc = &snapshot.services[0];
        let attempts = svc.settings.connect_attempts.clamp(1, MAX_ATTEMPTS);
        let mut out = [0u32; MAX_ATTEMPTS];
        let n = svc.candidates(
            IpAddr::from(ip),
            &mut PickState::new(seed(0, 0)),
            &mut out[..attempts],
        );
        out[..n]
            .iter()
            .map(|&b| svc.backends[b as usize].address)
            .collect()
    }

    fn backend_stats(&self, address: SocketAddr) -> Arc<BackendStats> {
        let snapshot = self.snapshots.load();
        let entry = snapshot.services[0]
            .backends
            .iter()
            .find(|b| b.address == address);
        entry.expect("a configured backend").stats.clone()
    }

    fn service_stat(&self, f: impl Fn(&crate::stats::ServiceStats) -> u64) -> u64 {
        f(&self.snapshots.load().services[0].stats)
    }
}

/// The far end of a socket pair sees its peer gone.
fn closed(far: &mut UnixStream) -> bool {
    far.set_nonblocking(true).expect("non-blocking");
    match far.read(&mut [0u8; 16]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

#[test]
fn at_max_connections_the_listener_pauses_and_resumes_when_a_connection_closes() {
    let mut r = rig::<false>("max_connections = 2\nconnect_attempts = 1", 1);
    for i in 0..3 {
        r.queue_client([10, 0, 0, i + 1]);
    }
    r.listener_readable();
    assert_eq!(r.worker.sys.accepted, 2, "no accept beyond the limit");
    assert_eq!(
        r.worker.sys.backlog.len(),
        1,
        "the third waits in the backlog"
    );
    assert_eq!(r.worker.slab.len(), 2);
    assert!(!r.listening(), "a full service's listener is not watched");

    // Still full: the turn's end does not resume it, a stray event does
    // not accept.
    r.after(Duration::ZERO);
    r.listener_readable();
    assert!(!r.listening());
    assert_eq!(r.worker.sys.accepted, 2);
    assert_eq!(r.worker.control.connections.load(Relaxed), 2);

    // One connection closes (its only backend refuses): room for one.
    r.connect_fails(0, libc::ECONNREFUSED);
    assert!(r.client_closed(0));
    assert_eq!(r.worker.slab.len(), 1);
    r.after(Duration::ZERO);
    assert!(r.listening(), "resumed once a place is free");

    // Edge-triggered: the queued client raises no new event; the worker
    // looks by itself next turn, and takes exactly the one place.
    r.after(Duration::ZERO);
    assert_eq!(r.worker.sys.accepted, 3);
    assert!(r.worker.sys.backlog.is_empty());
    assert_eq!(r.worker.slab.len(), 2);
    assert!(!r.listening(), "full again");
    assert!(!r.client_closed(1) && !r.client_closed(2));
}

#[test]
fn at_max_connections_connections_the_engine_accepted_are_held_and_served_on_resume() {
    let mut r = rig::<true>("max_connections = 2\nconnect_attempts = 1", 1);
    for i in 0..3 {
        let (fd, peer) = r.client([10, 0, 0, i + 1]);
        r.worker.on_accepted(0, fd, peer);
    }
    assert_eq!(r.worker.slab.len(), 2);
    assert_eq!(r.worker.listeners[0].held.len(), 1, "the third is held");
    assert!(!r.listening(), "the engine's accept is stopped");
    assert!(!r.client_closed(2), "held, not refused");

    r.connect_fails(0, libc::ECONNREFUSED);
    assert!(r.client_closed(0));
    r.after(Duration::ZERO);
    assert!(r.worker.listeners[0].held.is_empty(), "served on resume");
    assert_eq!(r.worker.slab.len(), 2);
    assert_eq!(r.worker.control.accepted.load(Relaxed), 3);
    // The held client got a connect of its own.
    assert_eq!(r.worker.sys.connects.len(), 3);
    assert!(!r.client_closed(2));
}

#[test]
fn a_failed_connect_tries_the_next_distinct_backend_in_preference_order_up_to_max_attempts() {
    let mut r = rig::<false>("connect_attempts = 20", 12);
    let ip = [10, 1, 2, 3];
    let expected = r.preference(ip);
    assert_eq!(expected.len(), MAX_ATTEMPTS, "attempts are bounded");
    // One fails at once (the connect call itself), the others when the
    // kernel reports the outcome.
    r.worker
        .sys
        .fail_at_once
        .insert(expected[2], libc::ENETUNREACH);

    r.queue_client(ip);
    r.listener_readable();
    for _ in 0..MAX_ATTEMPTS - 1 {
        assert!(
            !r.client_closed(0),
            "the client waits while backends are left"
        );
        r.connect_fails(0, libc::ECONNREFUSED);
    }

    assert_eq!(r.worker.sys.connects, expected, "preference order");
    let mut distinct = expected.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), MAX_ATTEMPTS, "each backend tried once");
    let reported: Vec<_> = r.failures();
    let want: Vec<_> = expected
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let reason = if i == 2 {
                ConnectFailure::Unreachable
            } else {
                ConnectFailure::Refused
            };
            (a, reason)
        })
        .collect();
    assert_eq!(reported, want, "every failure reported as passive health");
    assert_eq!(
        r.backend_stats(expected[0]).connect_refused.load(Relaxed),
        1
    );
    assert_eq!(r.backend_stats(expected[2]).connect_other.load(Relaxed), 1);

    assert!(r.client_closed(0), "all failed: the client is closed");
    assert_eq!(r.worker.slab.len(), 0);
    assert_eq!(r.service_stat(|s| s.no_backend.load(Relaxed)), 1);
    assert_eq!(
        r.service_stat(|s| s.retries.load(Relaxed)),
        MAX_ATTEMPTS as u64 - 1
    );
    assert!(
        r.worker.reactor.watched.len() == 1,
        "only the listener left"
    );
}

#[test]
fn a_connect_that_completes_after_a_failure_is_established_with_the_second_backend() {
    // Without the TLS-safe retry's wait for the backend's first byte
    // (`tests/replay.rs` has it): established on connect.
    let mut r = rig::<false>("connect_attempts = 3\nretry_before_response = \"off\"", 3);
    let ip = [10, 9, 8, 7];
    let expected = r.preference(ip);
    r.queue_client(ip);
    r.listener_readable();
    r.connect_fails(0, libc::ECONNREFUSED);
    r.connect_succeeds(0);
    assert_eq!(r.worker.sys.connects, expected[..2]);
    assert_eq!(r.backend_stats(expected[1]).active.load(Relaxed), 1);
    assert_eq!(r.backend_stats(expected[0]).active.load(Relaxed), 0);
    assert!(matches!(
        r.worker.slab.get(0).map(|c| &c.phase),
        Some(Phase::Established { .. })
    ));
    assert!(!r.client_closed(0));
    assert_eq!(r.service_stat(|s| s.retries.load(Relaxed)), 1);
}

#[test]
fn a_connect_timeout_tries_the_next_backend_and_an_idle_connection_is_reset() {
    let mut r = rig::<false>(
        "connect_timeout = \"1s\"\nidle_timeout = \"10s\"\nconnect_attempts = 3",
        3,
    );
    let ip = [10, 0, 0, 1];
    let expected = r.preference(ip);
    r.queue_client(ip);
    r.listener_readable();
    assert_eq!(r.worker.sys.connects, expected[..1]);

    r.after(Duration::from_millis(999));
    assert_eq!(r.worker.sys.connects.len(), 1, "not timed out yet");
    assert!(r.failures().is_empty());

    r.after(Duration::from_millis(2));
    assert_eq!(r.worker.sys.connects, expected[..2], "on to the next");
    assert_eq!(r.failures(), [(expected[0], ConnectFailure::Timeout)]);
    assert_eq!(
        r.backend_stats(expected[0]).connect_timeout.load(Relaxed),
        1
    );
    assert!(
        closed(&mut r.worker.sys.backends[0]),
        "the timed-out socket is closed"
    );

    r.connect_succeeds(0);
    assert_eq!(r.backend_stats(expected[1]).active.load(Relaxed), 1);

    // The old connect deadline passes: nothing happens to an established
    // connection that is not idle for long.
    r.after(Duration::from_secs(5));
    assert!(!r.client_closed(0));
    assert_eq!(r.worker.slab.len(), 1);
    r.after(Duration::from_secs(4));
    assert!(!r.client_closed(0), "idle for 9 s of 10");

    r.after(Duration::from_millis(1_100));
    assert!(r.client_closed(0), "idle too long: closed");
    assert!(closed(&mut r.worker.sys.backends[1]));
    assert_eq!(r.worker.slab.len(), 0);
    assert_eq!(r.backend_stats(expected[1]).active.load(Relaxed), 0);
    assert_eq!(r.service_stat(|s| s.active.load(Relaxed) as u64), 0);
    assert!(
        r.failures().is_empty(),
        "an idle close is no backend failure"
    );
}

#[test]
fn draining_stops_accepting_and_lets_established_connections_finish() {
    let mut r = rig::<false>("", 1);
    r.queue_client([10, 0, 0, 1]);
    r.listener_readable();
    r.connect_succeeds(0);
    r.queue_client([10, 0, 0, 2]);

    r.worker.control.draining.store(true, Relaxed);
    r.after(Duration::ZERO);
    assert!(!r.listening(), "the listener is closed");
    assert!(r.worker.listeners[0].socket.is_none());
    r.listener_readable();
    r.after(Duration::ZERO);
    assert_eq!(r.worker.sys.accepted, 1, "nothing accepted while draining");

    // The established connection goes on.
    assert!(!r.client_closed(0));
    assert_eq!(r.worker.control.connections.load(Relaxed), 1);
    assert!(!r.worker.should_exit());

    // Both peers close: the connection finishes on its own.
    let client_leg = r.worker.slab.token(0, false);
    let backend_leg = r.worker.slab.token(0, true);
    r.clients[0] = UnixStream::pair().expect("a socket pair").0; // drops the client's end
    r.worker.sys.backends.clear();
    r.worker.on_event(client_leg, FIN);
    r.worker.on_event(backend_leg, FIN);
    r.after(Duration::ZERO);
    assert_eq!(r.worker.slab.len(), 0);
    assert_eq!(
        r.worker.control.connections.load(Relaxed),
        0,
        "what the control plane waits for before it stops the worker"
    );

    // The worker leaves its loop when told to stop, not before.
    assert!(!r.worker.should_exit());
    r.worker.control.stop.store(true, Relaxed);
    assert!(r.worker.should_exit());
}

#[test]
fn at_the_process_budget_the_listener_pauses_and_resumes_when_a_connection_closes() {
    let mut r = rig_with_budget::<false>("connect_attempts = 1", 1, 2);
    for i in 0..3 {
        r.queue_client([10, 0, 0, i + 1]);
    }
    r.listener_readable();
    assert_eq!(r.worker.sys.accepted, 2, "no accept beyond the budget");
    assert_eq!(
        r.worker.sys.backlog.len(),
        1,
        "the third waits in the backlog"
    );
    assert!(!r.listening(), "at the budget the listener is not watched");
    assert_eq!(r.worker.budget.full_total(), 1);
    assert_eq!(r.worker.budget.active(), 2);
    // The service's own count gave its place back: only the budget is full.
    assert_eq!(r.snapshots.load().services[0].stats.active.load(Relaxed), 2);
    r.after(Duration::ZERO);
    assert!(!r.listening(), "still spent: stays paused");
    assert_eq!(r.worker.budget.full_total(), 1, "one pause, counted once");

    // A connection closes: the place is back and the waiting client served.
    r.connect_fails(0, libc::ECONNREFUSED);
    assert_eq!(r.worker.budget.active(), 1);
    r.after(Duration::ZERO);
    assert!(r.listening(), "resumed once the budget has room");
    r.after(Duration::ZERO);
    assert_eq!(r.worker.sys.accepted, 3);
    assert_eq!(r.worker.budget.active(), 2);
    assert!(!r.client_closed(1) && !r.client_closed(2), "nobody reset");
}

#[test]
fn at_the_process_budget_engine_accepted_connections_are_held_not_reset() {
    let mut r = rig_with_budget::<true>("connect_attempts = 1", 1, 1);
    for i in 0..2 {
        let (fd, peer) = r.client([10, 0, 0, i + 1]);
        r.worker.on_accepted(0, fd, peer);
    }
    assert_eq!(r.worker.slab.len(), 1);
    assert_eq!(r.worker.listeners[0].held.len(), 1, "the second is held");
    assert!(!r.client_closed(1), "held, not refused");
    r.connect_fails(0, libc::ECONNREFUSED);
    r.after(Duration::ZERO);
    assert!(r.worker.listeners[0].held.is_empty(), "served on resume");
    assert_eq!(r.worker.slab.len(), 1);
    assert_eq!(r.worker.budget.active(), 1);
}

#[test]
fn a_local_connect_error_is_not_a_backend_failure_and_is_not_retried_elsewhere() {
    use crate::stats::{LocalKind, LOCAL_ERRORS};
    for errno in [libc::EADDRNOTAVAIL, libc::EMFILE, libc::ENOBUFS] {
        let kind = LocalKind::of_errno(errno).expect("a local kind");
        let before = LOCAL_ERRORS.count(kind);
        let mut r = rig::<false>("connect_attempts = 3", 3);
        let first = r.preference([10, 0, 0, 1])[0];
        r.worker.sys.fail_at_once.insert(first, errno);
        r.queue_client([10, 0, 0, 1]);
        r.listener_readable();
        assert_eq!(
            r.worker.sys.connects,
            vec![first],
            "errno {errno}: one attempt only"
        );
        assert!(
            r.failures().is_empty(),
            "errno {errno}: reported as passive health"
        );
        assert!(r.client_closed(0), "errno {errno}: the client is closed");
        assert_eq!(r.worker.slab.len(), 0);
        assert_eq!(r.worker.budget.active(), 0, "its place is given back");
        assert!(LOCAL_ERRORS.count(kind) > before, "errno {errno}: counted");
        assert_eq!(r.backend_stats(first).connect_other.load(Relaxed), 0);
    }
    // The same errors when the connect completes (SO_ERROR).
    let mut r = rig::<false>("connect_attempts = 3", 3);
    r.queue_client([10, 0, 0, 1]);
    r.listener_readable();
    r.connect_fails(0, libc::EADDRNOTAVAIL);
    assert!(r.failures().is_empty());
    assert!(r.client_closed(0));
    assert_eq!(r.worker.sys.connects.len(), 1, "no other backend tried");
}

#[test]
fn pick_seeds_exist_for_any_number_of_services_and_workers() {
    // A config with three services or more once overflowed this in debug
    // builds (a worker panic at start).
    let seeds: Vec<u64> = (0..64)
        .flat_map(|w| (0..64).map(move |s| super::seed(w, s)))
        .collect();
    assert!(seeds.iter().all(|s| s & 1 == 1), "seeds are odd");
    assert_ne!(super::seed(0, 1), super::seed(0, 2));
}

/// A service reading PROXY headers from 10.0.0.0/24, with four backends.
const ACCEPT_PROXY: &str = "accept_proxy = true\nproxy_trusted = [\"10.0.0.0/24\"]\n\
                            proxy_header_timeout = \"500ms\"\nconnect_attempts = 1";

/// A readable edge on client `slot`'s socket, with `fin` when its peer
/// shut down.
fn client_edge<const A: bool>(r: &mut Rig<A>, slot: usize, fin: bool) {
    let token = r.worker.slab.token(slot, false);
    let event = Readiness {
        readable: true,
        writable: true,
        read_closed: fin,
    };
    r.worker.on_event(token, event);
}

fn refused<const A: bool>(r: &Rig<A>, reason: crate::stats::ProxyRefused) -> u64 {
    r.service_stat(|s| s.proxy_refused(reason))
}

/// An address whose first choice differs from `peer`'s (so a test can
/// tell which of the two was hashed).
fn other_client<const A: bool>(r: &Rig<A>, peer: [u8; 4]) -> [u8; 4] {
    (1..=50u8)
        .map(|i| [192, 0, 2, i])
        .find(|ip| r.preference(*ip)[0] != r.preference(peer)[0])
        .expect("some address hashes elsewhere")
}

#[test]
fn a_proxy_header_split_byte_by_byte_is_read_then_its_client_is_hashed() {
    use std::io::Write;
    let mut r = rig::<false>(ACCEPT_PROXY, 4);
    let peer = [10, 0, 0, 5];
    let real = other_client(&r, peer);
    r.queue_client(peer);
    r.listener_readable();
    assert!(
        r.worker.sys.connects.is_empty(),
        "a backend before the header"
    );
    let header = format!(
        "PROXY TCP4 {}.{}.{}.{} 10.0.0.9 5555 80\r\n",
        real[0], real[1], real[2], real[3]
    );
    let bytes = header.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        r.clients[0].write_all(&[*b]).unwrap();
        // Edges come only for the bytes sent after the last one: the last
        // byte comes with the first request bytes.
        if i + 1 == bytes.len() {
            r.clients[0].write_all(b"GET /").unwrap();
        }
        client_edge(&mut r, 0, false);
        if i + 1 < bytes.len() {
            assert!(r.worker.sys.connects.is_empty(), "connected at byte {i}");
            assert!(!r.client_closed(0));
        }
    }
    assert_eq!(r.worker.sys.connects, vec![r.preference(real)[0]]);
    let conn = r.worker.slab.get(0).expect("the connection");
    assert_eq!(conn.peer, SocketAddr::from((real, 5555)));
    // Exactly the header was taken: the request waits for the backend,
    // and the pumps know to look.
    assert!(conn.client_ready.readable);
    let mut rest = [0u8; 16];
    let n = crate::sys::peek(conn.client.as_raw_fd(), &mut rest).unwrap();
    assert_eq!(&rest[..n], b"GET /");
    for reason in crate::stats::ProxyRefused::all() {
        assert_eq!(refused(&r, reason), 0, "{reason:?}");
    }
}

#[test]
fn a_v2_local_header_is_served_with_the_peers_own_address() {
    use std::io::Write;
    let mut r = rig::<true>(ACCEPT_PROXY, 4);
    let peer = [10, 0, 0, 5];
    let (fd, addr) = r.client(peer);
    r.clients[0]
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
        .unwrap();
    // The header was there at accept: judged at once, no edge needed.
    r.worker.on_accepted(0, fd, addr);
    assert_eq!(r.worker.sys.connects, vec![r.preference(peer)[0]]);
    let conn = r.worker.slab.get(0).expect("the connection");
    assert_eq!(conn.peer, addr);
    // The header was taken off the socket: the backend gets none of it.
    let left = crate::sys::peek(conn.client.as_raw_fd(), &mut [0u8; 16]);
    assert_eq!(left.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
}

#[test]
fn an_untrusted_peer_is_reset_at_once_without_a_peek() {
    let mut r = rig::<false>(ACCEPT_PROXY, 4);
    r.queue_client([10, 0, 1, 5]);
    r.listener_readable();
    assert!(r.client_closed(0));
    assert_eq!(r.worker.sys.peeks, 0);
    assert!(r.worker.sys.connects.is_empty());
    assert_eq!(refused(&r, crate::stats::ProxyRefused::Untrusted), 1);
    // An end the access log and its counters name too.
    let ended = |cause| r.service_stat(|s| s.ends.refused(cause));
    assert_eq!(ended(crate::access_log::EndCause::ProxyHeader), 1);
    assert_eq!(r.service_stat(|s| s.active.load(Relaxed) as u64), 0);
    assert_eq!(r.worker.slab.len(), 0);
}

#[test]
fn bad_late_and_abandoned_headers_are_refused_by_reason_and_reach_no_backend() {
    use crate::proxy_header::Refusal;
    use crate::stats::ProxyRefused;
    use std::io::Write;
    let mut r = rig::<false>(ACCEPT_PROXY, 4);
    // 0: garbage; 1: v2 version 3; 2: a v1 line with no CRLF in 107 bytes;
    // 3: half a header, then FIN; 4: a FIN alone; 5: half a header, then
    // silence; 6: a reset while peeking.
    for i in 0..7 {
        r.queue_client([10, 0, 0, 10 + i]);
    }
    r.listener_readable();
    r.clients[0].write_all(b"GET / HTTP/1.1\r\n").unwrap();
    r.clients[1]
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c")
        .unwrap();
    r.clients[2].write_all(&[b'P'; 1]).unwrap();
    r.clients[2].write_all(b"ROXY UNKNOWN ").unwrap();
    r.clients[2].write_all(&[b'x'; 120]).unwrap();
    r.clients[3].write_all(b"PROXY TCP4 10.").unwrap();
    r.clients[3].shutdown(std::net::Shutdown::Write).unwrap();
    r.clients[4].shutdown(std::net::Shutdown::Write).unwrap();
    r.clients[5].write_all(b"PROXY TCP4 10.").unwrap();
    for slot in 0..5 {
        client_edge(&mut r, slot, slot == 3 || slot == 4);
    }
    client_edge(&mut r, 5, false);
    r.worker.sys.peek_error = libc::ECONNRESET;
    client_edge(&mut r, 6, false);
    r.worker.sys.peek_error = 0;
    for i in [0, 1, 2, 3, 4, 6] {
        assert!(r.client_closed(i), "client {i} still open");
    }
    assert!(!r.client_closed(5), "a slow header is given its time");
    assert_eq!(refused(&r, ProxyRefused::Header(Refusal::Malformed)), 1);
    assert_eq!(refused(&r, ProxyRefused::Header(Refusal::Version)), 1);
    assert_eq!(refused(&r, ProxyRefused::Header(Refusal::Oversized)), 1);
    assert_eq!(refused(&r, ProxyRefused::Closed), 3);
    assert_eq!(refused(&r, ProxyRefused::Timeout), 0);
    // The slow one: still there just before its deadline, gone after.
    r.after(Duration::from_millis(499));
    assert!(!r.client_closed(5));
    r.after(Duration::from_millis(1));
    assert!(r.client_closed(5));
    assert_eq!(refused(&r, ProxyRefused::Timeout), 1);
    assert!(
        r.worker.sys.connects.is_empty(),
        "a refused client reached a backend"
    );
    assert_eq!(r.worker.slab.len(), 0);
    assert_eq!(r.service_stat(|s| s.active.load(Relaxed) as u64), 0);
    assert_eq!(r.service_stat(|s| s.no_backend.load(Relaxed)), 0);
}

#[test]
fn a_service_without_accept_proxy_never_peeks() {
    use std::io::Write;
    let mut r = rig::<false>("connect_attempts = 1", 2);
    let (fd, addr) = r.client([10, 0, 0, 5]);
    r.clients[0]
        .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        .unwrap();
    r.worker.on_accepted(0, fd, addr);
    assert_eq!(r.worker.sys.peeks, 0);
    assert_eq!(r.worker.sys.connects, vec![r.preference([10, 0, 0, 5])[0]]);
}

#[test]
fn with_send_proxy_the_header_is_written_once_on_connect_and_off_writes_nothing() {
    let mut r = rig::<false>("send_proxy = \"v1\"\nconnect_attempts = 1", 1);
    r.queue_client([10, 0, 0, 7]);
    r.listener_readable();
    assert!(
        r.worker.sys.headers.is_empty(),
        "nothing before the connect completes"
    );
    r.connect_succeeds(0);
    let headers: Vec<Vec<u8>> = r
        .worker
        .sys
        .headers
        .iter()
        .map(|(_, h)| h.clone())
        .collect();
    assert_eq!(
        headers,
        vec![b"PROXY TCP4 10.0.0.7 127.0.0.1 40000 8080\r\n".to_vec()]
    );
    assert!(!r.client_closed(0));
    assert_eq!(
        r.backend_stats(r.worker.sys.connects[0])
            .active
            .load(Relaxed),
        1
    );

    let mut off = rig::<false>("connect_attempts = 1", 1);
    off.queue_client([10, 0, 0, 7]);
    off.listener_readable();
    off.connect_succeeds(0);
    assert!(
        off.worker.sys.headers.is_empty(),
        "send_proxy off: no header"
    );
    assert!(!off.client_closed(0));
}

#[test]
fn a_failed_or_short_header_write_is_a_connect_failure_and_the_next_backend_serves() {
    let mut r = rig::<false>("send_proxy = \"v2\"\nconnect_attempts = 3", 3);
    let ip = [10, 9, 8, 7];
    let expected = r.preference(ip);
    assert_eq!(expected.len(), 3);
    // The first backend resets at once; the second takes 5 bytes of 28.
    r.worker.sys.header_outcomes = VecDeque::from([Err(libc::ECONNRESET), Ok(5)]);
    r.queue_client(ip);
    r.listener_readable();
    r.connect_succeeds(0);
    assert!(
        !r.client_closed(0),
        "the client waits while backends are left"
    );
    r.connect_succeeds(0);
    assert!(!r.client_closed(0));
    r.connect_succeeds(0);

    assert_eq!(
        r.worker.sys.connects, expected,
        "on to the next in preference order"
    );
    let written: Vec<usize> = r.worker.sys.headers.iter().map(|(_, h)| h.len()).collect();
    assert_eq!(
        written,
        vec![5, 28],
        "the short write, then the whole v2 IPv4 header"
    );
    assert_eq!(
        r.failures(),
        vec![
            (expected[0], ConnectFailure::Other(libc::ECONNRESET)),
            (expected[1], ConnectFailure::Other(libc::EAGAIN)),
        ],
        "both count as the backends' connect failures"
    );
    assert_eq!(r.backend_stats(expected[0]).connect_other.load(Relaxed), 1);
    assert_eq!(r.backend_stats(expected[0]).active.load(Relaxed), 0);
    assert_eq!(r.backend_stats(expected[1]).active.load(Relaxed), 0);
    assert_eq!(
        r.backend_stats(expected[2]).active.load(Relaxed),
        1,
        "served by the third"
    );
    assert_eq!(r.service_stat(|s| s.retries.load(Relaxed)), 2);
    assert!(!r.client_closed(0));
}

#[test]
fn a_local_shortage_writing_the_header_resets_the_client_without_blaming_the_backend() {
    let mut r = rig::<false>("send_proxy = \"v1\"\nconnect_attempts = 3", 3);
    r.worker.sys.header_outcomes = VecDeque::from([Err(libc::ENOBUFS)]);
    r.queue_client([10, 0, 0, 9]);
    r.listener_readable();
    r.connect_succeeds(0);
    assert!(
        r.failures().is_empty(),
        "no passive failure for a local shortage"
    );
    assert_eq!(r.worker.sys.connects.len(), 1, "no other backend tried");
    assert!(r.client_closed(0));
}

fn source_refused<const A: bool>(r: &Rig<A>, reason: SourceRefused) -> u64 {
    r.service_stat(|s| s.source_refused(reason))
}

/// Clients from `ips`, handed to the worker by the engine (`ACCEPTS`) or
/// accepted by it from the backlog.
fn arrive<const A: bool>(r: &mut Rig<A>, ips: &[[u8; 4]]) {
    for ip in ips {
        if A {
            let (fd, peer) = r.client(*ip);
            r.worker.on_accepted(0, fd, peer);
        } else {
            r.queue_client(*ip);
        }
    }
    if !A {
        r.listener_readable();
    }
}

fn per_source_connections_and_deny<const A: bool>() {
    let mut r = rig::<A>(
        "deny = [\"10.9.0.0/16\"]\nmax_connections_per_source = 2\nconnect_attempts = 1",
        1,
    );
    let limited = [10, 0, 0, 1];
    arrive(
        &mut r,
        &[limited, limited, limited, [10, 9, 0, 1], [10, 0, 0, 2]],
    );
    // Two of the limited source's and the other source's reach a backend;
    // the third and the denied one are reset without a connect.
    assert_eq!(r.worker.sys.connects.len(), 3, "[{A}] connects");
    assert!(
        r.client_closed(2),
        "[{A}] the third from one source is reset"
    );
    assert!(r.client_closed(3), "[{A}] a denied client is reset");
    for i in [0, 1, 4] {
        assert!(!r.client_closed(i), "[{A}] client {i} served");
    }
    assert_eq!(source_refused(&r, SourceRefused::Denied), 1);
    assert_eq!(source_refused(&r, SourceRefused::Connections), 1);
    assert_eq!(source_refused(&r, SourceRefused::Rate), 0);
    // Ends the access log and its counters name too.
    let ended = |cause| r.service_stat(|s| s.ends.refused(cause));
    assert_eq!(ended(crate::access_log::EndCause::SourceRefused), 2);
    // The refused ones gave their places back.
    assert_eq!(r.worker.slab.len(), 3);
    assert_eq!(r.service_stat(|s| s.active.load(Relaxed) as u64), 3);
    assert_eq!(r.worker.budget.active(), 3);

    // One of the source's connections ends: its count goes, and the
    // source's next connection is served.
    r.connect_fails(0, libc::ECONNREFUSED);
    assert!(r.client_closed(0));
    arrive(&mut r, &[limited]);
    assert_eq!(r.worker.sys.connects.len(), 4, "[{A}] served after a close");
    assert!(!r.client_closed(5));
    arrive(&mut r, &[limited]);
    assert!(r.client_closed(6), "[{A}] at the limit again");
    assert_eq!(source_refused(&r, SourceRefused::Connections), 2);
    // An established connection's close takes its count back too.
    r.connect_succeeds(1);
    r.worker.close_all();
    let snapshot = r.snapshots.load();
    let policy = snapshot.services[0]
        .settings
        .sources
        .clone()
        .expect("rules");
    assert!(policy.admit(IpAddr::from(limited), r.worker.now).is_ok());
    assert!(policy.admit(IpAddr::from(limited), r.worker.now).is_ok());
}

#[test]
fn per_source_limit_and_deny_refuse_without_a_backend_and_a_close_gives_the_count_back() {
    per_source_connections_and_deny::<false>();
    per_source_connections_and_deny::<true>();
}

#[test]
fn the_per_source_rate_refuses_past_its_burst_until_time_passes() {
    let mut r = rig::<false>(
        "new_connections_per_source = \"2/s\"\nconnect_attempts = 1",
        1,
    );
    let ip = [10, 0, 0, 1];
    arrive(&mut r, &[ip, ip, ip]);
    assert_eq!(r.worker.sys.connects.len(), 2);
    assert!(r.client_closed(2));
    assert_eq!(source_refused(&r, SourceRefused::Rate), 1);
    r.after(Duration::from_millis(500));
    arrive(&mut r, &[ip, ip]);
    assert_eq!(r.worker.sys.connects.len(), 3, "one token in 500 ms at 2/s");
    assert!(r.client_closed(4));
    assert_eq!(source_refused(&r, SourceRefused::Rate), 2);
}

#[test]
fn with_accept_proxy_the_headers_client_is_the_source() {
    use std::io::Write;
    let mut r = rig::<false>(
        &format!("{ACCEPT_PROXY}\ndeny = [\"192.0.2.0/24\"]\nmax_connections_per_source = 1"),
        1,
    );
    // The balancer in front (10.0.0.5) is not denied; its clients are
    // judged by the address in their header.
    arrive(&mut r, &[[10, 0, 0, 5], [10, 0, 0, 5], [10, 0, 0, 5]]);
    r.clients[0]
        .write_all(b"PROXY TCP4 192.0.2.7 10.0.0.9 5555 80\r\n")
        .unwrap();
    r.clients[1]
        .write_all(b"PROXY TCP4 198.51.100.7 10.0.0.9 5555 80\r\n")
        .unwrap();
    r.clients[2]
        .write_all(b"PROXY TCP4 198.51.100.7 10.0.0.9 5556 80\r\n")
        .unwrap();
    for slot in 0..3 {
        client_edge(&mut r, slot, false);
    }
    assert!(r.client_closed(0), "the header's denied client is reset");
    assert!(!r.client_closed(1));
    assert!(r.client_closed(2), "a second from the same header client");
    assert_eq!(r.worker.sys.connects.len(), 1);
    assert_eq!(source_refused(&r, SourceRefused::Denied), 1);
    assert_eq!(source_refused(&r, SourceRefused::Connections), 1);
}

// The SNI phase (worker/sni.rs), on this file's rig.
mod sni;
