//! Memory under load that does not move: ringlb holds thousands of idle
//! connections for the price of their bookkeeping (no pipe, no buffer
//! each), and a client that stops reading stalls its backend's writes
//! (backpressure) instead of making ringlb keep what it cannot deliver.
//!
//! ringlb's memory is read from outside: VmRSS and the descriptor count in
//! /proc/PID, and the worker gauges of its admin `/metrics` (connections,
//! pipes and buffers lent). RSS alone would miss a pipe held per idle
//! connection (pipe pages are kernel memory), so the descriptors and the
//! pipes-lent gauge stand guard for that.
//!
//! Runs on the test thread, plus the backends' threads: one mio thread for
//! the thousands of idle connections, one per connection for the few
//! streaming ones.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::TcpListener as MioListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, seeded_bytes, Backend, BackendConfig,
    Counter, Deadline, LbConfig, Metrics, Ringlb, LOCALHOST,
};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// Both tests run with each way of moving bytes: the inline ones on both
/// engines, the completion-driven ones (ring RECV/SEND through a provided
/// buffer ring; IORING_OP_SPLICE) on io_uring.
const FORWARDING_MODES: [&str; 3] = ["splice", "copy", "auto"];
const URING_FORWARDING_MODES: [&str; 2] = ["uring-copy", "uring-splice"];

/// The forwarding modes to try on `engine`.
fn forwarding_modes(engine: &str) -> Vec<&'static str> {
    let mut modes = FORWARDING_MODES.to_vec();
    if engine == "uring" {
        modes.extend(URING_FORWARDING_MODES);
    }
    modes
}

// ---------------------------------------------------------------------------
// Idle connections

const IDLE_CONNECTIONS: usize = 5_000;
/// The fewest connections the test holds (when the connection budget is
/// below [`IDLE_CONNECTIONS`]: `splice` modes under a small limit).
const MIN_IDLE_CONNECTIONS: usize = 1_000;
/// Descriptors the test process needs: a client and a backend socket per
/// connection, plus its ordinary few hundred (threads' pipes, listeners).
const IDLE_FDS_NEEDED: u64 = 2 * IDLE_CONNECTIONS as u64 + 1_000;
/// Every this-many-th connection echoes a byte as soon as all are open.
const SAMPLE_EVERY: usize = 50;
/// Then every connection echoes one, this many at a time: a bounded number
/// of pipes or buffers in flight at once, so the pools stay small.
const ECHO_BATCH: usize = 50;
/// Average growth of ringlb's RSS per idle connection allowed while all
/// are held (after each has echoed a byte). Measured: 0.4–0.6 KiB (its
/// slot and the engine's bookkeeping), on both engines and every
/// forwarding mode. A buffer kept per idle connection touches at least
/// one 4 KiB page of it (its first bytes, the allocator's header); this
/// bound fails well before that.
const IDLE_RSS_PER_CONNECTION: u64 = 2 * KIB;
/// Descriptors ringlb may hold beyond the two sockets per connection:
/// the pool's idle pipes after [`ECHO_BATCH`] concurrent echoes (at most
/// two pipes each, two fds a pipe) and slack. A pipe per idle connection
/// would be 10 000 more.
const IDLE_FD_SLACK: usize = 4 * ECHO_BATCH + 50;
/// ringlb's default `pipe_pool`: idle pipes a worker keeps.
const PIPE_POOL: usize = 256;
/// Memory of one worker's provided buffer ring (`uring-copy`), as
/// lb-core's engine sizes it.
const BUFFER_RING_MEMORY: u64 = 16 * MIB;
/// Every this-many-th client leaves with a FIN, the others with an RST:
/// both ways out of ringlb's tables are taken, and few TIME_WAITs are left
/// behind (an orderly close leaves one on the client leg and one on
/// ringlb's backend leg for a minute; 10 000 per run, six runs, would near
/// net.ipv4.tcp_max_tw_buckets, past which the kernel drops them and the
/// `time_wait` tests could miss theirs).
const ORDERLY_CLOSE_EVERY: usize = 10;
/// Opening 5 000 connections (measured: 0.3–0.5 s) on a loaded 2-vCPU
/// machine, with room.
const OPEN_DEADLINE: Duration = Duration::from_secs(20);
/// ringlb's gauges settle (a worker publishes them every loop turn).
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
/// How often a condition on ringlb's gauges is re-checked.
const POLL_EVERY: Duration = Duration::from_millis(20);

#[test]
fn idle_connections_are_held_with_bounded_memory() {
    // Ten thousand sockets in this process: no other test beside it.
    let _alone = harness::exclusive();
    if let Some(reason) = fd_budget_missing(IDLE_FDS_NEEDED) {
        println!("memory::idle: SKIPPED: {reason}");
        return;
    }
    for_each_engine("memory::idle", |engine| {
        for forwarding in forwarding_modes(engine) {
            idle_connections(engine, forwarding);
        }
    });
}

fn idle_connections(engine: &'static str, forwarding: &str) {
    let started = Instant::now();
    let tag = format!("{engine}, forwarding {forwarding}");
    let backend = HeldEcho::spawn();
    let mut config = LbConfig::single(engine, vec![BackendConfig::new("held", backend.addr)]);
    config.forwarding = forwarding.to_owned();
    config.admin = true;
    // 5 000 connects in a burst: should the backend's thread fall behind
    // and its accept queue overflow, the kernel drops SYNs and retries them
    // after 1 s, then 3 s. A connect that outlives that is not what this
    // test is about (the failover tests are).
    config.service().connect_timeout = "5s".to_owned();
    let lb = Ringlb::start(&config);
    let pid = lb.pid();
    // The first scrape wakes the admin API's lazy allocations: part of the
    // baseline, not of the connections.
    let m = lb.metrics();
    assert_eq!(m.total("ringlb_worker_connections"), 0);
    // `splice` and `uring-splice` let every flow hold a pipe: ringlb's
    // connection budget (lb-core's budget.rs) counts 6 descriptors per
    // connection for them, which under this machine's open-files limit
    // may be fewer than IDLE_CONNECTIONS; hold what the budget allows.
    let budget = m.total("ringlb_connections_budget") as usize;
    let count = IDLE_CONNECTIONS.min(budget / SAMPLE_EVERY * SAMPLE_EVERY);
    if count < IDLE_CONNECTIONS {
        println!(
            "memory::idle [{tag}]: the connection budget is {budget}: holding {count} \
             connections instead of {IDLE_CONNECTIONS}"
        );
    }
    assert!(
        count >= MIN_IDLE_CONNECTIONS,
        "[{tag}] a connection budget of {budget} is too small for this test"
    );
    let (rss_before, fds_before) = (vm_rss(pid), open_fds(pid));

    let sources = client_sources();
    let mut clients: Vec<TcpStream> = (0..count)
        .map(|i| {
            let src = sources[i % sources.len()];
            connect_from(src, lb.addr()).unwrap_or_else(|e| {
                panic!("[{tag}] connection {i} from {src}: {e}\n{}", lb.report())
            })
        })
        .collect();
    let accepted = backend.accepted.wait_for(count, OPEN_DEADLINE);
    assert_eq!(
        accepted,
        count,
        "[{tag}] {count} clients connected but the backend accepted only \
         {accepted} connections within {OPEN_DEADLINE:?}\n{}",
        lb.report()
    );
    let opened = started.elapsed();

    for i in (0..count).step_by(SAMPLE_EVERY) {
        echo_a_byte(&tag, &mut clients[i..=i], i);
    }
    for (batch, group) in clients.chunks_mut(ECHO_BATCH).enumerate() {
        echo_a_byte(&tag, group, batch * ECHO_BATCH);
    }

    // Held and idle again (a worker publishes its gauges at the end of the
    // turn that sent the last echo): measure.
    let settled = wait_for_gauges(&lb, |m| {
        m.total("ringlb_worker_connections") == count as u64 && lent(m) == (0, 0)
    });
    let (rss_holding, fds_holding) = (vm_rss(pid), open_fds(pid));
    let growth = rss_holding.saturating_sub(rss_before);
    let per_connection = growth / count as u64;
    println!(
        "memory::idle [{tag}]: {count} connections opened in {opened:.2?}; ringlb \
         RSS {} KiB before, {} KiB holding (+{} KiB, {per_connection} B per connection); fds \
         {fds_before} before, {fds_holding} holding",
        rss_before / KIB,
        rss_holding / KIB,
        growth / KIB,
    );
    assert!(
        growth <= IDLE_RSS_PER_CONNECTION * count as u64,
        "[{tag}] ringlb's RSS grew by {} KiB ({per_connection} B per connection) to hold \
         {count} idle connections; at most {IDLE_RSS_PER_CONNECTION} B each is \
         bookkeeping, more means per-connection buffers",
        growth / KIB
    );
    assert!(
        fds_holding <= fds_before + 2 * count + IDLE_FD_SLACK,
        "[{tag}] ringlb holds {fds_holding} descriptors for {count} idle \
         connections (from {fds_before}); two sockets each plus {IDLE_FD_SLACK} is the most, \
         more means pipes held by idle connections"
    );
    let m = settled.unwrap_or_else(|m| {
        panic!(
            "[{tag}] with {count} idle connections held, ringlb reports {} \
             connections and (pipes, buffers) lent {:?} after {SETTLE_DEADLINE:?}: an idle \
             connection must hold neither\n{}",
            m.total("ringlb_worker_connections"),
            lent(&m),
            lb.report()
        )
    });
    assert_eq!(
        backend.accepted.get(),
        count,
        "[{tag}] ringlb opened more backend connections than it had clients"
    );
    assert_eq!(m.total("ringlb_service_accepted_total"), count as u64);

    // Every client leaves (a tenth with a FIN, the rest with an RST): every
    // backend connection is closed and ringlb's tables empty.
    for (i, client) in clients.into_iter().enumerate() {
        if i % ORDERLY_CLOSE_EVERY == 0 {
            drop(client);
        } else {
            harness::reset(client);
        }
    }
    let closed = backend.closed.wait_for(count, SETTLE_DEADLINE);
    assert_eq!(
        closed,
        count,
        "[{tag}] all {count} clients closed, but only {closed} backend connections \
         were closed within {SETTLE_DEADLINE:?}\n{}",
        lb.report()
    );
    wait_for_gauges(&lb, |m| {
        m.total("ringlb_worker_connections") == 0
            && m.total("ringlb_service_connections_active") == 0
            && lent(m) == (0, 0)
    })
    .unwrap_or_else(|m| {
        panic!(
            "[{tag}] every client closed, but after {SETTLE_DEADLINE:?} ringlb still counts {} \
             connections (service: {}), (pipes, buffers) lent {:?}\n{}",
            m.total("ringlb_worker_connections"),
            m.total("ringlb_service_connections_active"),
            lent(&m),
            lb.report()
        )
    });
    let (rss_after, fds_after) = (vm_rss(pid), open_fds(pid));
    println!(
        "memory::idle [{tag}]: after closing: RSS {} KiB, fds {fds_after}; {:.2?} in all",
        rss_after / KIB,
        started.elapsed()
    );
    // uring-splice may end with the pipe pools full: the configured bound
    // (pipe_pool idle pipes per worker, two fds each), not a leak — what
    // is lent is 0, checked above.
    let pool_fds = if forwarding == "uring-splice" {
        2 * PIPE_POOL * config.workers as usize
    } else {
        0
    };
    assert!(
        fds_after <= fds_before + IDLE_FD_SLACK + pool_fds,
        "[{tag}] every connection closed, but ringlb holds {fds_after} descriptors (from \
         {fds_before})"
    );
    assert!(
        rss_after <= rss_before + IDLE_RSS_PER_CONNECTION * count as u64,
        "[{tag}] every connection closed, but ringlb's RSS is {} KiB (from {} KiB)",
        rss_after / KIB,
        rss_before / KIB
    );
}

/// Sends one byte on each of `group` (connection numbers from `first`),
/// then reads each echo: every connection is wired end to end, to its own
/// backend connection.
fn echo_a_byte(tag: &str, group: &mut [TcpStream], first: usize) {
    let byte = |i: usize| [(i % 251) as u8];
    for (i, client) in (first..).zip(group.iter_mut()) {
        client
            .write_all(&byte(i))
            .unwrap_or_else(|e| panic!("[{tag}] send on idle connection {i}: {e}"));
    }
    for (i, client) in (first..).zip(group.iter_mut()) {
        let mut echo = [0u8; 1];
        client
            .read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("[{tag}] echo on idle connection {i}: {e}"));
        assert_eq!(echo, byte(i), "[{tag}] connection {i} got another's echo");
    }
}

/// A backend that holds every connection it accepts and echoes what
/// arrives, all on one thread (mio): 5 000 connections must not mean 5 000
/// threads. A connection is closed when ringlb ends it (EOF or error).
pub struct HeldEcho {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<Counter>,
    /// Connections ringlb has ended so far.
    pub closed: Arc<Counter>,
    stop: Arc<AtomicBool>,
    /// Wakes the thread to see `stop`.
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

impl HeldEcho {
    pub fn spawn() -> HeldEcho {
        let listener = harness::listen(SocketAddr::new(LOCALHOST, 0));
        let addr = listener.local_addr().expect("backend addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut listener = MioListener::from_std(listener);
        let poll = Poll::new().expect("mio poll");
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .expect("register listener");
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("mio waker"));
        let accepted = Arc::new(Counter::default());
        let closed = Arc::new(Counter::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, closed, stop) = (
                Arc::clone(&accepted),
                Arc::clone(&closed),
                Arc::clone(&stop),
            );
            thread::Builder::new()
                .name("held-echo".into())
                .stack_size(harness::SMALL_STACK)
                .spawn(move || serve_held(listener, poll, &accepted, &closed, &stop))
                .expect("spawn held-echo backend")
        };
        HeldEcho {
            addr,
            accepted,
            closed,
            stop,
            waker,
            thread: Some(thread),
        }
    }
}

impl Drop for HeldEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`HeldEcho`]'s thread: accepts, echoes, closes what ringlb ended.
fn serve_held(
    listener: MioListener,
    mut poll: Poll,
    accepted: &Counter,
    closed: &Counter,
    stop: &AtomicBool,
) {
    // Token i is held[i]; None once ringlb has ended it.
    let mut held: Vec<Option<mio::net::TcpStream>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("held-echo backend: poll failed: {e}");
        }
        for event in &events {
            match event.token() {
                WAKER => {}
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            poll.registry()
                                .register(&mut stream, Token(held.len()), Interest::READABLE)
                                .expect("register connection");
                            held.push(Some(stream));
                            accepted.increment();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("held-echo backend: accept failed: {e}"),
                    }
                },
                Token(i) => {
                    let Some(stream) = held[i].as_mut() else {
                        continue;
                    };
                    if !echo_available(stream, &mut buf) {
                        let _ = poll.registry().deregister(stream);
                        held[i] = None;
                        closed.increment();
                    }
                }
            }
        }
    }
}

/// Echoes everything readable now (edge-triggered: until EAGAIN); false
/// once the connection is over. The echoes here are single bytes, which
/// always fit an idle socket's send buffer, so a write never waits.
fn echo_available(stream: &mut mio::net::TcpStream, buf: &mut [u8]) -> bool {
    loop {
        match stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------------
// A client that stops reading

const STALLED_CLIENTS: usize = 20;
/// Each client reads this much, then stops reading.
const FIRST_READ: usize = 64 * 1024;
/// A writer is stalled once its count has not moved for this long.
const QUIET: Duration = Duration::from_millis(300);
const STALL_DEADLINE: Duration = Duration::from_secs(10);
/// Growth of ringlb's RSS allowed while the clients are stalled. Copy
/// forwarding holds one 64 KiB buffer per stalled direction (20 × 64 KiB
/// = 1.25 MiB); a connection buffering what its client does not read
/// would hold megabytes each.
const STALL_RSS_GROWTH: u64 = 8 * MIB;
/// A fresh client reads this much while the others are stalled.
const FRESH_READ: usize = 1 << 20;
/// After resuming, each client reads this much beyond what its writer
/// had written when stalled.
const RESUME_EXTRA: u64 = MIB;
/// Seeded random bytes of a prime length, which lines up with no pipe,
/// buffer or socket buffer size: a lost, repeated or reordered chunk of
/// the stream shows as a mismatch.
const PATTERN_LEN: usize = 1_048_573;
/// Connection `id`'s stream starts at `id * PATTERN_STRIDE` in the pattern,
/// so no two connections carry the same bytes at the same offset.
const PATTERN_STRIDE: usize = 7_919;
/// Bytes per write of the streaming backend.
const WRITE_CHUNK: usize = 64 * 1024;

#[test]
fn a_client_that_stops_reading_does_not_grow_memory() {
    // Streams of tens of MiB into stalled sockets and RSS readings: alone.
    let _alone = harness::exclusive();
    let pattern = Arc::new(Pattern::new());
    let stall_bound = stall_bound();
    for_each_engine("memory::stopped_reader", |engine| {
        for forwarding in forwarding_modes(engine) {
            stopped_readers(engine, forwarding, &pattern, stall_bound);
        }
    });
}

fn stopped_readers(
    engine: &'static str,
    forwarding: &str,
    pattern: &Arc<Pattern>,
    stall_bound: u64,
) {
    let started = Instant::now();
    let tag = format!("{engine}, forwarding {forwarding}");
    let writers = Writers::default();
    let backend = streaming_backend(pattern, &writers);
    let mut config = LbConfig::over(engine, &[&backend]);
    config.forwarding = forwarding.to_owned();
    config.admin = true;
    let lb = Ringlb::start(&config);
    let pid = lb.pid();
    let m = lb.metrics();
    assert_eq!(m.total("ringlb_worker_connections"), 0);
    let rss_before = vm_rss(pid);

    let sources = client_sources();
    let mut clients: Vec<TcpStream> = (0..STALLED_CLIENTS)
        .map(|i| {
            let mut client = stream_client(&lb, sources[i], i as u32);
            read_pattern(&mut client, pattern, i as u32, 0, FIRST_READ)
                .unwrap_or_else(|e| panic!("[{tag}] client {i}'s first read: {e}"));
            client
        })
        .collect();
    let written: Vec<Arc<AtomicU64>> = (0..STALLED_CLIENTS).map(|i| writers.of(i as u32)).collect();

    // (a) backpressure: every writer stalls, below the bound.
    let stalled = wait_for_stall(&written, stall_bound).unwrap_or_else(|e| {
        panic!(
            "[{tag}] {STALLED_CLIENTS} clients stopped reading: {e}\n{}",
            lb.report()
        )
    });
    let stalled_for = started.elapsed();
    // (b) ringlb's memory stays bounded while they are stalled.
    let rss_stalled = vm_rss(pid);
    let growth = rss_stalled.saturating_sub(rss_before);
    let m = lb.metrics();
    let (pipes, buffers) = lent(&m);
    println!(
        "memory::stopped_reader [{tag}]: writers stalled at {} .. {} KiB (bound {} KiB) after \
         {stalled_for:.2?}; ringlb RSS {} KiB before, {} KiB stalled (+{} KiB); lent: {pipes} \
         pipes, {buffers} buffers",
        stalled.iter().min().copied().unwrap_or(0) / KIB,
        stalled.iter().max().copied().unwrap_or(0) / KIB,
        stall_bound / KIB,
        rss_before / KIB,
        rss_stalled / KIB,
        growth / KIB
    );
    // uring-copy reads into the worker's provided buffer ring, allocated
    // at start and touched page by page as the ring cycles: a fixed
    // amount per worker, whatever the bytes in flight.
    let ring = if forwarding == "uring-copy" {
        BUFFER_RING_MEMORY * u64::from(config.workers)
    } else {
        0
    };
    assert!(
        growth <= STALL_RSS_GROWTH + ring,
        "[{tag}] with {STALLED_CLIENTS} clients not reading, ringlb's RSS grew by {} KiB \
         (limit {} KiB): it buffers what it cannot deliver",
        growth / KIB,
        STALL_RSS_GROWTH / KIB
    );
    assert!(
        pipes + buffers <= STALLED_CLIENTS as u64,
        "[{tag}] {STALLED_CLIENTS} stalled connections (one direction busy each) hold {pipes} \
         pipes and {buffers} buffers: at most one per busy direction"
    );

    // ringlb still serves: a fresh client gets its stream meanwhile.
    let fresh_id = STALLED_CLIENTS as u32;
    let mut fresh = stream_client(&lb, sources[STALLED_CLIENTS], fresh_id);
    read_pattern(&mut fresh, pattern, fresh_id, 0, FRESH_READ).unwrap_or_else(|e| {
        panic!(
            "[{tag}] a fresh client beside {STALLED_CLIENTS} stalled ones: {e}\n{}",
            lb.report()
        )
    });
    drop(fresh);

    // (c) each client resumes and gets its exact stream: every byte its
    // writer had written when stalled, then more.
    for (i, client) in clients.iter_mut().enumerate() {
        let until = stalled[i] + RESUME_EXTRA;
        let len = (until - FIRST_READ as u64) as usize;
        read_pattern(client, pattern, i as u32, FIRST_READ as u64, len).unwrap_or_else(|e| {
            panic!(
                "[{tag}] client {i} resumed reading after its writer stalled at {} bytes: {e}",
                stalled[i]
            )
        });
    }

    drop(clients);
    wait_for_gauges(&lb, |m| {
        m.total("ringlb_worker_connections") == 0 && lent(m) == (0, 0)
    })
    .unwrap_or_else(|m| {
        panic!(
            "[{tag}] every client closed, but after {SETTLE_DEADLINE:?} ringlb counts {} \
             connections, (pipes, buffers) lent {:?}\n{}",
            m.total("ringlb_worker_connections"),
            lent(&m),
            lb.report()
        )
    });
    println!(
        "memory::stopped_reader [{tag}]: resumed and verified; {:.2?} in all",
        started.elapsed()
    );
}

/// The most bytes a writer may get out while its reader reads nothing:
/// everything the kernel may queue on the way (the backend's send buffer,
/// ringlb's receive buffer on the backend side and send buffer on the
/// client side, the client's receive buffer; each at most the autotuning
/// maximum of net.ipv4.tcp_{r,w}mem), ringlb's pipe or buffer (64 KiB) and
/// what the client read, with 1 MiB to spare. Anything ringlb itself kept
/// beyond its one pipe or buffer would come on top.
fn stall_bound() -> u64 {
    let max_of = |name: &str| -> u64 {
        let path = format!("/proc/sys/net/ipv4/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{path}: expected three sizes, got {text:?}"))
    };
    let (rmem, wmem) = (max_of("tcp_rmem"), max_of("tcp_wmem"));
    2 * (rmem + wmem) + 64 * KIB + FIRST_READ as u64 + MIB
}

/// Waits until no writer has moved for [`QUIET`]; returns each one's count
/// then. Fails as soon as one passes `bound`, or at [`STALL_DEADLINE`].
fn wait_for_stall(written: &[Arc<AtomicU64>], bound: u64) -> Result<Vec<u64>, String> {
    let deadline = Deadline::after(STALL_DEADLINE);
    let read = || -> Vec<u64> { written.iter().map(|w| w.load(Ordering::SeqCst)).collect() };
    let mut last = read();
    let mut quiet_since = Instant::now();
    loop {
        thread::sleep(POLL_EVERY);
        let now = read();
        if let Some((i, n)) = now.iter().enumerate().find(|(_, n)| **n > bound) {
            return Err(format!(
                "writer {i} got {n} bytes out, more than the {bound} that the kernel's buffers \
                 and ringlb's one pipe or buffer can hold: ringlb keeps reading from a backend \
                 whose client does not read"
            ));
        }
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            return Ok(last);
        }
        if deadline.passed() {
            return Err(format!(
                "the writers never stopped for {QUIET:?} within {STALL_DEADLINE:?} (bytes \
                 written: {last:?})"
            ));
        }
    }
}

/// Connects and names the stream it wants (4 bytes, little endian).
fn stream_client(lb: &Ringlb, src: std::net::IpAddr, id: u32) -> TcpStream {
    let mut client = connect_from(src, lb.addr())
        .unwrap_or_else(|e| panic!("connect from {src}: {e}\n{}", lb.report()));
    client
        .write_all(&id.to_le_bytes())
        .unwrap_or_else(|e| panic!("send stream id {id}: {e}"));
    client
}

/// Reads `len` bytes of stream `id` from `offset` on and checks them.
fn read_pattern(
    client: &mut TcpStream,
    pattern: &Pattern,
    id: u32,
    offset: u64,
    len: usize,
) -> Result<(), String> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    while got < len {
        let want = buf.len().min(len - got);
        let n = match client.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("EOF after {got} of {len} bytes")),
            Ok(n) => n,
            Err(e) => return Err(format!("read after {got} of {len} bytes: {e}")),
        };
        pattern.check(id, offset + got as u64, &buf[..n])?;
        got += n;
    }
    Ok(())
}

/// The endless stream of each streaming connection (see [`PATTERN_LEN`]):
/// byte k of stream `id` is `bytes[(id * PATTERN_STRIDE + k) % len]`.
struct Pattern {
    bytes: Vec<u8>,
}

impl Pattern {
    fn new() -> Pattern {
        Pattern {
            bytes: seeded_bytes(0x0b5e_55ed, PATTERN_LEN),
        }
    }

    /// Stream `id` from `offset` to the end of the pattern's period.
    fn stream_at(&self, id: u32, offset: u64) -> &[u8] {
        let start = (id as u64 * PATTERN_STRIDE as u64 + offset) % PATTERN_LEN as u64;
        &self.bytes[start as usize..]
    }

    /// Whether `got` is stream `id` at `offset`; says where it is not.
    fn check(&self, id: u32, offset: u64, got: &[u8]) -> Result<(), String> {
        let mut done = 0usize;
        while done < got.len() {
            let want = self.stream_at(id, offset + done as u64);
            let n = want.len().min(got.len() - done);
            if want[..n] != got[done..done + n] {
                let at = (0..n).find(|&k| want[k] != got[done + k]).unwrap_or(0);
                return Err(format!(
                    "stream {id}: byte {} differs from what the backend sent: lost, repeated \
                     or reordered data",
                    offset + (done + at) as u64
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// Bytes written so far by each streaming backend connection, by stream id.
#[derive(Default, Clone)]
struct Writers(Arc<Mutex<BTreeMap<u32, Arc<AtomicU64>>>>);

impl Writers {
    fn register(&self, id: u32) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&count));
        count
    }

    /// The count of stream `id`, whose client has read from it already.
    fn of(&self, id: u32) -> Arc<AtomicU64> {
        let writers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            writers
                .get(&id)
                .unwrap_or_else(|| panic!("stream {id} has no writer")),
        )
    }
}

/// A backend that reads a stream id, then writes that stream as fast as it
/// is taken (blocking writes), counting the bytes in `writers`; it stops
/// when ringlb closes the connection.
fn streaming_backend(pattern: &Arc<Pattern>, writers: &Writers) -> Backend {
    let (pattern, writers) = (Arc::clone(pattern), writers.clone());
    Backend::spawn("stream", LOCALHOST, move |mut s| {
        let mut id = [0u8; 4];
        if s.read_exact(&mut id).is_err() {
            return;
        }
        let id = u32::from_le_bytes(id);
        let written = writers.register(id);
        let mut offset = 0u64;
        loop {
            let chunk = pattern.stream_at(id, offset);
            match s.write(&chunk[..chunk.len().min(WRITE_CHUNK)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    offset += n as u64;
                    written.store(offset, Ordering::SeqCst);
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Reading ringlb from outside

/// ringlb's resident memory (VmRSS), in bytes.
pub fn vm_rss(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * KIB)
        .unwrap_or_else(|| panic!("{path} has no VmRSS line:\n{status}"))
}

/// Descriptors ringlb holds open.
pub fn open_fds(pid: u32) -> usize {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .count()
}

/// (pipes, copy buffers) lent to connections, over all workers.
pub fn lent(m: &Metrics) -> (u64, u64) {
    (
        m.total("ringlb_worker_pipes_lent"),
        m.total("ringlb_worker_buffers_lent"),
    )
}

/// Scrapes ringlb until `settled` holds (Ok with that scrape) or
/// [`SETTLE_DEADLINE`] passes (Err with the last scrape).
pub fn wait_for_gauges(
    lb: &Ringlb,
    settled: impl Fn(&Metrics) -> bool,
) -> Result<Metrics, Metrics> {
    let deadline = Deadline::after(SETTLE_DEADLINE);
    loop {
        let m = lb.metrics();
        if settled(&m) {
            return Ok(m);
        }
        if deadline.passed() {
            return Err(m);
        }
        thread::sleep(POLL_EVERY);
    }
}

/// Why this process cannot hold `needed` descriptors, if it cannot: raises
/// the soft RLIMIT_NOFILE to the hard limit first. (ringlb raises its own.)
pub fn fd_budget_missing(needed: u64) -> Option<String> {
    match lb_core::raise_nofile_limit() {
        Ok((_, limit)) if limit >= needed => None,
        Ok((_, limit)) => Some(format!(
            "the open-files hard limit is {limit}; this test needs {needed} (raise `ulimit -Hn`)"
        )),
        Err(e) => Some(format!("cannot raise RLIMIT_NOFILE: {e}")),
    }
}
