//! Overload (issue 12, part 3): ringlb under more than it is usually
//! asked for. A connection storm beside a dead backend, a storm of
//! reloads under new connections and long transfers, and thousands of
//! slow readers beside idle connections. Each test states its load, its
//! bound and the figures it measured (printed), and fails on a client
//! failure, a broken stream or a bound passed.
//!
//! Runs on the test thread plus the clients' threads it spawns (open-loop
//! senders, transfers, the slow readers' pacer) and the backends' threads.
//! Each test holds the load lock exclusively: it saturates the machine.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, Backend, BackendConfig, DeadPort, Deadline, LbConfig,
    Ringlb,
};
use crate::memory::{lent, open_fds, vm_rss, wait_for_gauges, HeldEcho, KIB, MIB};

/// The engine of these tests: ringlb's default (io_uring where the
/// machine allows it, else epoll). The data-plane matrix is covered by
/// the other modules; these are about load, and run once.
const ENGINE: &str = "auto";

/// The `p`-th percentile (0..=100) of `samples`, which it sorts.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1) - 1;
    samples[rank.min(samples.len() - 1)]
}

/// One short exchange: connect from `src`, send `message`, read its echo
/// back and check it, then leave with an RST (no TIME_WAIT left behind:
/// tens of thousands of them would reach net.ipv4.tcp_max_tw_buckets and
/// disturb the `time_wait` tests) or, every `ORDERLY_EVERY`-th, a FIN.
fn exchange(src: IpAddr, lb: SocketAddr, message: &[u8], orderly: bool) -> Result<(), String> {
    let mut s = connect_from(src, lb).map_err(|e| format!("connect from {src}: {e}"))?;
    s.write_all(message)
        .map_err(|e| format!("send from {src}: {e}"))?;
    let mut echo = vec![0u8; message.len()];
    s.read_exact(&mut echo)
        .map_err(|e| format!("read the echo from {src}: {e}"))?;
    if echo != message {
        return Err(format!("{src} got {echo:?} back for {message:?}"));
    }
    if orderly {
        drop(s);
    } else {
        harness::reset(s);
    }
    Ok(())
}

/// Every this-many-th short exchange leaves with a FIN, the others with an
/// RST (see [`exchange`]).
const ORDERLY_EVERY: usize = 10;

// ---------------------------------------------------------------------------
// A dead backend and a connection storm

/// New connections per second the open-loop clients aim at (issue 12).
const STORM_RATE: u64 = 2_000;
/// How long they keep it up.
const STORM_FOR: Duration = Duration::from_secs(30);
/// Client threads sharing the schedule: a connection that takes long
/// delays only its own thread's next ones.
const STORM_THREADS: u64 = 16;
/// A thread that falls this far behind its schedule stops: the rate is
/// not reachable on this machine, and the test says what was reached.
const STORM_GRACE: Duration = Duration::from_secs(10);
/// ringlb's admin health answer, asked this often during the storm.
const HEALTH_EVERY: Duration = Duration::from_millis(20);
/// The bound on its p99 (issue 12).
const HEALTH_P99: Duration = Duration::from_millis(100);
/// Below this share of [`STORM_RATE`] the machine is too loaded for the
/// test to mean anything: it fails rather than pass on a trickle.
const STORM_MIN_SHARE: f64 = 0.25;

#[test]
fn a_dead_backend_under_a_connection_storm_fails_no_client() {
    let _alone = harness::exclusive();
    let dead = DeadPort::new();
    let live = HeldEcho::spawn();
    let mut config = LbConfig::single(
        ENGINE,
        vec![
            BackendConfig::new("dead", dead.addr()),
            BackendConfig::new("live", live.addr),
        ],
    );
    config.admin = true;
    config.service().health = "kind = \"tcp\"\ninterval = \"200ms\"\nfast_interval = \"100ms\"\n\
                               timeout = \"200ms\"\nrise = 1\nfall = 2"
        .to_owned();
    let lb = Ringlb::start(&config);
    let (addr, admin) = (lb.addr(), lb.admin_addr());

    let stop = Arc::new(AtomicBool::new(false));
    let health = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let deadline = Deadline::after(STORM_FOR + STORM_GRACE * 2);
            let mut samples = Vec::new();
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) && !deadline.passed() {
                let asked = Instant::now();
                let answer = admin_health(admin);
                samples.push(asked.elapsed());
                match answer {
                    Ok(status) if status.starts_with("HTTP/1.1 200") => {}
                    other => answers.push(format!("{other:?}")),
                }
                thread::sleep(HEALTH_EVERY.saturating_sub(asked.elapsed()));
            }
            (samples, answers)
        })
    };

    let started = Instant::now();
    let sources = client_sources();
    let completed = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let total = STORM_RATE * STORM_FOR.as_secs();
    let threads: Vec<_> = (0..STORM_THREADS)
        .map(|t| {
            let (sources, completed, failures) = (
                sources.clone(),
                Arc::clone(&completed),
                Arc::clone(&failures),
            );
            thread::Builder::new()
                .stack_size(harness::SMALL_STACK)
                .spawn(move || {
                    let mut late = Vec::new();
                    for i in (t..total).step_by(STORM_THREADS as usize) {
                        // Open loop: connection i is due at i / rate.
                        let due = started + Duration::from_micros(i * 1_000_000 / STORM_RATE);
                        let now = Instant::now();
                        if now < due {
                            thread::sleep(due - now);
                        } else if now - due > STORM_GRACE {
                            break;
                        }
                        let src = sources[i as usize % sources.len()];
                        let message = i.to_le_bytes();
                        let orderly = i as usize % ORDERLY_EVERY == 0;
                        match exchange(src, addr, &message, orderly) {
                            Ok(()) => {
                                completed.fetch_add(1, Ordering::Relaxed);
                                late.push(due.elapsed());
                            }
                            Err(e) => failures.lock().unwrap().push(format!("#{i}: {e}")),
                        }
                    }
                    late
                })
                .expect("spawn a storm client")
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (mut health_samples, bad_health) = health.join().unwrap();

    let done = completed.load(Ordering::SeqCst);
    let failures = failures.lock().unwrap().clone();
    let rate = done as f64 / took.as_secs_f64();
    let p99 = percentile(&mut latencies, 99);
    let health_p99 = percentile(&mut health_samples, 99);
    let m = lb.metrics();
    let dead_up = m.sample(r#"ringlb_backend_healthy{service="web",backend="dead"}"#);
    println!(
        "overload::storm: {done} of {total} connections in {took:.1?} ({rate:.0}/s of \
         {STORM_RATE}/s), {} failed; connect+echo p99 from the intended time {p99:.1?}; admin \
         health p99 {health_p99:.1?} over {} asks ({} not 200); dead backend healthy gauge \
         {dead_up:?}",
        failures.len(),
        health_samples.len(),
        bad_health.len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {total} clients failed with a usable backend behind ringlb; first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        lb.report()
    );
    assert!(
        bad_health.is_empty(),
        "ringlb's health answer was not 200 with one backend usable: {:?}",
        &bad_health[..bad_health.len().min(5)]
    );
    assert!(
        health_p99 <= HEALTH_P99,
        "ringlb's admin health answer took {health_p99:?} at p99 under {rate:.0} new \
         connections/s (bound {HEALTH_P99:?}): the control plane starves under data-plane load"
    );
    assert!(
        rate >= STORM_RATE as f64 * STORM_MIN_SHARE,
        "only {rate:.0} connections/s of {STORM_RATE}/s were reached: the machine is too \
         loaded for this test to mean anything"
    );
    assert_eq!(
        dead_up,
        Some(0),
        "the dead backend must be reported down by its health check"
    );
}

/// `GET /router/api/v1/system/health`: its status line.
fn admin_health(admin: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, harness::CLIENT_CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(harness::IO_TIMEOUT))?;
    s.write_all(
        b"GET /router/api/v1/system/health HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

// ---------------------------------------------------------------------------
// A storm of reloads under load

/// Reloads (SIGHUP, each waited for) and the time they are spread over
/// (issue 12).
const RELOADS: usize = 100;
const RELOADS_OVER: Duration = Duration::from_secs(10);
/// One reload's longest wait for its `config reloaded` line.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Short-connection client threads and long transfers running through it.
const RELOAD_CONNECTORS: usize = 2;
const TRANSFERS: usize = 4;
/// Each transfer sends this much every [`TRANSFER_TICK`] (4 MiB/s each),
/// so it spans all the reloads without saturating the machine.
const TRANSFER_CHUNK: usize = 64 * 1024;
const TRANSFER_TICK: Duration = Duration::from_millis(16);
/// Longest any load thread runs, whatever happens.
const RELOAD_LOAD_LIMIT: Duration = Duration::from_secs(40);
/// A transfer's stream: seeded bytes of a prime length, which lines up
/// with no buffer or pipe size, cycled.
const TRANSFER_PATTERN: usize = 1_048_573;
/// `pipe_pool` in this test's config: idle pipes a worker may keep after
/// the load, which the descriptor count after it may include.
const RELOAD_PIPE_POOL: usize = 8;
/// Growth of ringlb's RSS allowed from the warmed-up baseline to after
/// 100 reloads and the load (measured: see the printed figures). A
/// snapshot or config kept per reload, or a buffer per connection never
/// returned, would pass it: 100 reloads × 2 workers × a Maglev table.
const RELOAD_RSS_SLACK: u64 = 4 * MIB;
/// Descriptors beyond the baseline allowed after the load: the pipe pools
/// (two fds a pipe) and a few the allocator or health probes may hold.
const RELOAD_FD_SLACK: usize = 4 * RELOAD_PIPE_POOL + 8;

#[test]
fn a_hundred_reloads_under_load_fail_no_connection_and_leak_nothing() {
    let _alone = harness::exclusive();
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let mut config = LbConfig::over(ENGINE, &[&a, &b]);
    config.admin = true;
    config
        .global_extra
        .push(format!("pipe_pool = {RELOAD_PIPE_POOL}"));
    let mut lb = Ringlb::start(&config);
    let (addr, pid) = (lb.addr(), lb.pid());
    // The files keep `127.0.0.1:0`, which a reload matches to the
    // listener it bound: the listeners stay as they are.
    let render = |config: &LbConfig| config.to_toml();
    // The two files the reloads alternate between: b's weight changes,
    // so every reload builds and publishes a new backend table.
    let mut heavier = config.clone();
    heavier.service().backends[1].weight = 300;
    let files = [render(&config), render(&heavier)];

    // Warm up: connections and a transfer of each kind, so the baseline
    // includes what the first load allocates for good (pools, the admin
    // API's buffers).
    let sources = client_sources();
    for (i, &src) in sources.iter().enumerate().take(20) {
        exchange(src, addr, &(i as u64).to_le_bytes(), false)
            .unwrap_or_else(|e| panic!("warm-up: {e}\n{}", lb.report()));
    }
    transfer(
        addr,
        sources[0],
        0,
        &AtomicBool::new(false),
        TRANSFER_CHUNK * 64,
    )
    .unwrap_or_else(|e| panic!("warm-up transfer: {e}\n{}", lb.report()));
    settle(&lb, "after the warm-up");
    let (rss_before, fds_before) = (vm_rss(pid), open_fds(pid));
    let generation_before = lb.metrics().total("ringlb_snapshot_generation");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let connectors: Vec<_> = (0..RELOAD_CONNECTORS)
        .map(|t| {
            let (stop, opened, sources) = (Arc::clone(&stop), Arc::clone(&opened), sources.clone());
            thread::spawn(move || {
                let deadline = Deadline::after(RELOAD_LOAD_LIMIT);
                let mut failures = Vec::new();
                let mut i = t;
                while !stop.load(Ordering::SeqCst) && !deadline.passed() {
                    let src = sources[i % sources.len()];
                    if let Err(e) = exchange(src, addr, &(i as u64).to_le_bytes(), i % 10 == 0) {
                        failures.push(e);
                    }
                    opened.fetch_add(1, Ordering::Relaxed);
                    i += RELOAD_CONNECTORS;
                }
                failures
            })
        })
        .collect();
    let transfers: Vec<_> = (0..TRANSFERS)
        .map(|t| {
            let (stop, src) = (Arc::clone(&stop), sources[10 + t]);
            thread::spawn(move || transfer(addr, src, t as u64 + 1, &stop, usize::MAX))
        })
        .collect();

    let started = Instant::now();
    let mut reload_times = Vec::new();
    for r in 0..RELOADS {
        let due = started + RELOADS_OVER * r as u32 / RELOADS as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let asked = Instant::now();
        lb.rewrite_config(&files[(r + 1) % 2]);
        lb.signal(libc::SIGHUP);
        let reloaded = lb.wait_for_log("config reloaded", RELOAD_TIMEOUT);
        reload_times.push(asked.elapsed());
        if reloaded.is_none() {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "reload {r}: no `config reloaded` within {RELOAD_TIMEOUT:?} of SIGHUP\n{}",
                lb.report()
            );
        }
    }
    let reloads_took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = connectors
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let transferred: Vec<Result<u64, String>> =
        transfers.into_iter().map(|t| t.join().unwrap()).collect();
    let generation = lb.metrics().total("ringlb_snapshot_generation") - generation_before;
    settle(&lb, "after the reloads");
    let (rss_after, fds_after) = (vm_rss(pid), open_fds(pid));
    let opened = opened.load(Ordering::SeqCst);
    println!(
        "overload::reloads: {RELOADS} reloads in {reloads_took:.1?} (slowest {:.1?}), {generation} \
         tables published; {opened} connections, {} failed; transfers {:?} bytes; ringlb RSS \
         {} KiB before, {} KiB after; fds {fds_before} before, {fds_after} after",
        reload_times.iter().max().copied().unwrap_or_default(),
        failures.len(),
        transferred,
        rss_before / KIB,
        rss_after / KIB,
    );
    assert!(
        failures.is_empty(),
        "{} of {opened} connections failed across {RELOADS} reloads; first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        lb.report()
    );
    for (t, outcome) in transferred.iter().enumerate() {
        if let Err(e) = outcome {
            panic!(
                "transfer {t} across {RELOADS} reloads: {e}\n{}",
                lb.report()
            );
        }
    }
    assert!(
        generation >= RELOADS as u64,
        "{RELOADS} reloads that each changed a weight published only {generation} tables"
    );
    assert!(
        fds_after <= fds_before + RELOAD_FD_SLACK,
        "after {RELOADS} reloads and the load, ringlb holds {fds_after} descriptors (baseline \
         {fds_before}, slack {RELOAD_FD_SLACK}): something opened per reload or connection \
         is never closed"
    );
    assert!(
        rss_after <= rss_before + RELOAD_RSS_SLACK,
        "after {RELOADS} reloads and the load, ringlb's RSS is {} KiB (baseline {} KiB, slack \
         {} KiB): something kept per reload or connection is never freed",
        rss_after / KIB,
        rss_before / KIB,
        RELOAD_RSS_SLACK / KIB
    );
}

/// Waits until ringlb holds no connection and lends no pipe or buffer.
fn settle(lb: &Ringlb, when: &str) {
    wait_for_gauges(lb, |m| {
        m.total("ringlb_worker_connections") == 0 && lent(m) == (0, 0)
    })
    .unwrap_or_else(|m| {
        panic!(
            "{when}: ringlb still counts {} connections, (pipes, buffers) lent {:?}\n{}",
            m.total("ringlb_worker_connections"),
            lent(&m),
            lb.report()
        )
    });
}

/// A long transfer through the echo backend: sends stream `seed`
/// [`TRANSFER_CHUNK`] per [`TRANSFER_TICK`] until `stop` is set or
/// `limit` bytes are sent (and never past [`RELOAD_LOAD_LIMIT`]), then
/// half-closes; a reader thread checks every echoed byte and the EOF.
/// Returns the bytes that made the round trip.
fn transfer(
    lb: SocketAddr,
    src: IpAddr,
    seed: u64,
    stop: &AtomicBool,
    limit: usize,
) -> Result<u64, String> {
    let pattern = Arc::new(harness::seeded_bytes(seed, TRANSFER_PATTERN));
    let mut out = connect_from(src, lb).map_err(|e| format!("connect from {src}: {e}"))?;
    let mut back = out.try_clone().map_err(|e| format!("clone: {e}"))?;
    let reader = {
        let pattern = Arc::clone(&pattern);
        thread::spawn(move || -> Result<u64, String> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                let n = match back.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => n,
                    Err(e) => return Err(format!("read after {got} bytes: {e}")),
                };
                for (k, &byte) in buf[..n].iter().enumerate() {
                    let at = got + k as u64;
                    if byte != pattern[(at % TRANSFER_PATTERN as u64) as usize] {
                        return Err(format!("byte {at} of the echo is not what was sent"));
                    }
                }
                got += n as u64;
            }
        })
    };
    let deadline = Deadline::after(RELOAD_LOAD_LIMIT);
    let mut sent = 0usize;
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) && sent < limit && !deadline.passed() {
        let tick = Instant::now();
        let chunk: Vec<u8> = (0..TRANSFER_CHUNK)
            .map(|k| pattern[(sent + k) % TRANSFER_PATTERN])
            .collect();
        if let Err(e) = out.write_all(&chunk) {
            outcome = Err(format!("send after {sent} bytes: {e}"));
            break;
        }
        sent += TRANSFER_CHUNK;
        if sent < limit {
            thread::sleep(TRANSFER_TICK.saturating_sub(tick.elapsed()));
        }
    }
    let _ = out.shutdown(Shutdown::Write);
    let got = reader
        .join()
        .map_err(|_| "the reader panicked".to_owned())??;
    outcome?;
    if got != sent as u64 {
        return Err(format!("sent {sent} bytes, {got} came back"));
    }
    Ok(got)
}

// ---------------------------------------------------------------------------
// Thousands of slow readers beside idle connections

/// Connections held (issue 12): half read slowly a stream the backend
/// pushes as fast as it is taken, half sit idle after one echo.
const HELD: usize = 8_000;
const SLOW: usize = HELD / 2;
/// What a slow reader takes per [`SLOW_TICK`]: 1 KiB/s (issue 12).
const SLOW_READ: usize = 1024;
const SLOW_TICK: Duration = Duration::from_secs(1);
/// The slices of a tick the slow readers' reads are spread over.
const SLOW_SLICES: usize = 10;
/// The slow readers' and the feeding backend's socket buffers, kept small
/// so 4 000 stalled streams do not park hundreds of MiB in the kernel.
const SLOW_SOCKET_BUFFER: usize = 4 * 1024;
/// `pipe_size` in this test's config: each copy buffer (and pipe).
const SLOW_PIPE_SIZE: u64 = 16 * KIB;
/// ringlb's memory per held connection beyond what it moves: its slot and
/// the engine's bookkeeping (memory.rs measures 0.4–0.6 KiB; this is its
/// bound there).
const PER_CONNECTION: u64 = 2 * KIB;
/// ringlb's fixed part above its baseline: the allocator's arenas growing
/// under 8 000 connections, the admin API's scrapes, the engine's rings.
const FIXED: u64 = 32 * MIB;
/// Fresh clients that connect and echo while the slow ones read, one per
/// [`FRESH_EVERY`], and the bound on their p99 (issue 12).
const FRESH_CLIENTS: usize = 400;
const FRESH_EVERY: Duration = Duration::from_millis(10);
const FRESH_P99: Duration = Duration::from_millis(50);
/// The slow readers must each have had this many reads before the fresh
/// clients start: their streams are flowing and ringlb's buffers are
/// taken.
const SLOW_ROUNDS_FIRST: usize = 2;
/// Opening 8 000 connections (memory.rs opens 5 000 in 0.3–0.5 s), with
/// room on a loaded machine.
const HELD_OPEN_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the slow readers read, whatever happens.
const SLOW_LIMIT: Duration = Duration::from_secs(60);
/// Descriptors this process needs: a client and a backend socket per
/// held connection, and a few hundred of its own.
const HELD_FDS_NEEDED: u64 = 2 * HELD as u64 + 1_000;

#[test]
fn slow_readers_hold_bounded_memory_and_fresh_clients_are_served() {
    let _alone = harness::exclusive();
    if let Some(reason) = crate::memory::fd_budget_missing(HELD_FDS_NEEDED) {
        println!("overload::slow_readers: SKIPPED: {reason}");
        return;
    }
    let backend = Feeder::spawn();
    let mut config = LbConfig::single(ENGINE, vec![BackendConfig::new("feed", backend.addr)]);
    config.admin = true;
    config
        .global_extra
        .push(format!("pipe_size = \"{}KiB\"", SLOW_PIPE_SIZE / KIB));
    config.service().connect_timeout = "5s".to_owned();
    let lb = Ringlb::start(&config);
    let pid = lb.pid();
    let m = lb.metrics();
    let budget = m.total("ringlb_connections_budget") as usize;
    assert!(
        budget >= HELD + FRESH_CLIENTS,
        "ringlb's connection budget is {budget}: too small for {HELD} connections"
    );
    let (rss_before, fds_before) = (vm_rss(pid), open_fds(pid));

    let opening = Instant::now();
    let sources = client_sources();
    let mut slow = Vec::with_capacity(SLOW);
    let mut idle = Vec::with_capacity(HELD - SLOW);
    for i in 0..HELD {
        let src = sources[i % sources.len()];
        if i % 2 == 0 {
            let mut s = connect_small(src, lb.addr())
                .unwrap_or_else(|e| panic!("slow reader {i} from {src}: {e}\n{}", lb.report()));
            s.write_all(b"S").expect("ask for a stream");
            slow.push(s);
        } else {
            let mut s = connect_from(src, lb.addr())
                .unwrap_or_else(|e| panic!("idle client {i} from {src}: {e}\n{}", lb.report()));
            s.write_all(b"E").expect("ask for an echo");
            idle.push(s);
        }
    }
    // Every idle connection echoes its `E` and a byte of its own: wired
    // end to end, to its own backend connection.
    for (k, s) in idle.iter_mut().enumerate() {
        s.write_all(&[k as u8]).expect("send a byte");
    }
    for (k, s) in idle.iter_mut().enumerate() {
        let mut echo = [0u8; 2];
        s.read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("idle client {k}'s echo: {e}\n{}", lb.report()));
        assert_eq!(echo, [b'E', k as u8], "idle client {k} got another's echo");
    }
    let accepted = backend.accepted.wait_for(HELD, HELD_OPEN_DEADLINE);
    assert_eq!(accepted, HELD, "the backend accepted {accepted} of {HELD}");
    let opened = opening.elapsed();

    // The slow readers read 1 KiB/s each, checking every byte.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        thread::spawn(move || read_slowly(slow, &stop, &rounds))
    };
    let flowing = wait_until(HELD_OPEN_DEADLINE, || {
        rounds.load(Ordering::SeqCst) >= SLOW_ROUNDS_FIRST
    });
    assert!(
        flowing,
        "the slow readers did not get {SLOW_ROUNDS_FIRST} rounds of reads done\n{}",
        lb.report()
    );

    // Fresh clients, one per FRESH_EVERY, while the slow ones read; ringlb's
    // RSS is sampled all along and its largest value kept.
    let mut fresh = Vec::with_capacity(FRESH_CLIENTS);
    let mut fresh_failures = Vec::new();
    let mut rss_max = vm_rss(pid);
    let started = Instant::now();
    for k in 0..FRESH_CLIENTS {
        let due = started + FRESH_EVERY * k as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let src = sources[k % sources.len()];
        let asked = Instant::now();
        let mut message = *b"E-fresh-";
        message[1] = k as u8;
        match exchange(src, lb.addr(), &message, false) {
            Ok(()) => fresh.push(asked.elapsed()),
            Err(e) => fresh_failures.push(format!("fresh client {k}: {e}")),
        }
        if k % 10 == 0 {
            rss_max = rss_max.max(vm_rss(pid));
        }
    }
    let m = lb.metrics();
    let (pipes, buffers) = lent(&m);
    let fds_holding = open_fds(pid);
    rss_max = rss_max.max(vm_rss(pid));
    stop.store(true, Ordering::SeqCst);
    let (slow, read_errors) = reader.join().unwrap();
    let rounds = rounds.load(Ordering::SeqCst);

    let busy = SLOW as u64;
    let bound = busy * SLOW_PIPE_SIZE + HELD as u64 * PER_CONNECTION + FIXED;
    let growth = rss_max.saturating_sub(rss_before);
    let p99 = percentile(&mut fresh, 99);
    println!(
        "overload::slow_readers: {HELD} connections ({SLOW} slow readers at {SLOW_READ} B/s) \
         opened in {opened:.1?}; {rounds} read rounds; ringlb RSS {} KiB before, at most {} KiB \
         holding (+{} KiB; bound +{} KiB = {busy} busy directions × {} KiB + {HELD} × {} KiB + \
         {} MiB); lent {pipes} pipes, {buffers} buffers; fds {fds_before} before, {fds_holding} \
         holding; fresh connect+echo p99 {p99:.1?} (max {:.1?}) over {} clients, {} failed",
        rss_before / KIB,
        rss_max / KIB,
        growth / KIB,
        bound / KIB,
        SLOW_PIPE_SIZE / KIB,
        PER_CONNECTION / KIB,
        FIXED / MIB,
        fresh.last().copied().unwrap_or_default(),
        fresh.len(),
        fresh_failures.len(),
    );
    assert!(
        read_errors.is_empty(),
        "slow readers' streams broke: {:?}\n{}",
        &read_errors[..read_errors.len().min(10)],
        lb.report()
    );
    assert!(
        fresh_failures.is_empty(),
        "fresh clients beside {HELD} held connections failed: {:?}\n{}",
        &fresh_failures[..fresh_failures.len().min(10)],
        lb.report()
    );
    assert!(
        pipes + buffers <= busy + 2,
        "{busy} busy directions hold {pipes} pipes and {buffers} buffers: at most one each"
    );
    assert!(
        growth <= bound,
        "ringlb's RSS grew by {} KiB holding {HELD} connections with {busy} busy directions; \
         the config bounds it to {} KiB",
        growth / KIB,
        bound / KIB
    );
    assert!(
        p99 <= FRESH_P99,
        "a fresh client's connect + echo took {p99:?} at p99 beside {HELD} held connections \
         (bound {FRESH_P99:?})"
    );

    for s in slow.into_iter().chain(idle) {
        harness::reset(s);
    }
    settle(&lb, "after every client left");
}

/// Polls `condition` every few milliseconds until it holds (true) or
/// `timeout` passes (false).
fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Deadline::after(timeout);
    while !condition() {
        if deadline.passed() {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Connects from `src` with a [`SLOW_SOCKET_BUFFER`] receive buffer (set
/// before the handshake, so the window is small from the start).
fn connect_small(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_recv_buffer_size(SLOW_SOCKET_BUFFER)?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), harness::CLIENT_CONNECT_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(harness::IO_TIMEOUT))?;
    stream.set_write_timeout(Some(harness::IO_TIMEOUT))?;
    Ok(stream)
}

/// Byte `k` of every fed stream.
fn fed_byte(k: u64) -> u8 {
    (k % 251) as u8
}

/// The slow readers' thread: each reads [`SLOW_READ`] bytes per
/// [`SLOW_TICK`] and checks them, until `stop` (or [`SLOW_LIMIT`]); counts
/// the rounds. A round is spread over [`SLOW_SLICES`] slices of the tick,
/// as slow clients' reads are spread in time, rather than all 4 000 at
/// once. Returns the sockets and the errors seen.
fn read_slowly(
    mut slow: Vec<TcpStream>,
    stop: &AtomicBool,
    rounds: &AtomicUsize,
) -> (Vec<TcpStream>, Vec<String>) {
    let deadline = Deadline::after(SLOW_LIMIT);
    let mut offsets = vec![0u64; slow.len()];
    let mut errors = Vec::new();
    let mut buf = [0u8; SLOW_READ];
    let slice_every = SLOW_TICK / SLOW_SLICES as u32;
    let started = Instant::now();
    let mut slice = 0usize;
    while !stop.load(Ordering::SeqCst) && !deadline.passed() && errors.is_empty() {
        for (k, s) in slow.iter_mut().enumerate() {
            if k % SLOW_SLICES != slice % SLOW_SLICES {
                continue;
            }
            if let Err(e) = s.read_exact(&mut buf) {
                errors.push(format!("slow reader {k} after {} bytes: {e}", offsets[k]));
                continue;
            }
            if let Some(at) = (0..SLOW_READ).find(|&j| buf[j] != fed_byte(offsets[k] + j as u64)) {
                errors.push(format!(
                    "slow reader {k}: byte {} is not what the backend sent",
                    offsets[k] + at as u64
                ));
            }
            offsets[k] += SLOW_READ as u64;
        }
        slice += 1;
        if slice % SLOW_SLICES == 0 {
            rounds.fetch_add(1, Ordering::SeqCst);
        }
        let due = started + slice_every * slice as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    (slow, errors)
}

/// A backend on one thread (mio) for thousands of connections: a
/// connection's first byte chooses what it gets. `S`: an endless stream
/// ([`fed_byte`]) written as fast as it is taken, through a
/// [`SLOW_SOCKET_BUFFER`] send buffer; `E`: an echo of everything,
/// the `E` included.
struct Feeder {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<harness::Counter>,
    stop: Arc<AtomicBool>,
    /// Wakes the thread to see `stop`.
    waker: Arc<mio::Waker>,
    thread: Option<thread::JoinHandle<()>>,
}

const FEED_LISTENER: mio::Token = mio::Token(usize::MAX - 1);
const FEED_WAKER: mio::Token = mio::Token(usize::MAX);

impl Feeder {
    fn spawn() -> Feeder {
        let listener = harness::listen(SocketAddr::new(harness::LOCALHOST, 0));
        let addr = listener.local_addr().expect("backend addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = mio::Poll::new().expect("mio poll");
        poll.registry()
            .register(&mut listener, FEED_LISTENER, mio::Interest::READABLE)
            .expect("register listener");
        let waker = Arc::new(mio::Waker::new(poll.registry(), FEED_WAKER).expect("waker"));
        let accepted = Arc::new(harness::Counter::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            thread::Builder::new()
                .name("feeder".into())
                .stack_size(harness::SMALL_STACK)
                .spawn(move || feed(listener, poll, &accepted, &stop))
                .expect("spawn the feeder backend")
        };
        Feeder {
            addr,
            accepted,
            stop,
            waker,
            thread: Some(thread),
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One of [`Feeder`]'s connections.
struct Fed {
    stream: mio::net::TcpStream,
    /// None until the first byte came; then whether it streams.
    streams: Option<bool>,
    /// Bytes of the stream written so far.
    offset: u64,
}

/// [`Feeder`]'s thread.
fn feed(
    listener: mio::net::TcpListener,
    mut poll: mio::Poll,
    accepted: &harness::Counter,
    stop: &AtomicBool,
) {
    let mut conns: Vec<Option<Fed>> = Vec::new();
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    // One period of the stream, to write from at any offset.
    let period: Vec<u8> = (0..251 * 64).map(fed_byte).collect();
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("feeder backend: poll failed: {e}");
        }
        for event in &events {
            match event.token() {
                FEED_WAKER => {}
                FEED_LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = socket2::SockRef::from(&stream)
                                .set_send_buffer_size(SLOW_SOCKET_BUFFER);
                            poll.registry()
                                .register(
                                    &mut stream,
                                    mio::Token(conns.len()),
                                    mio::Interest::READABLE | mio::Interest::WRITABLE,
                                )
                                .expect("register connection");
                            conns.push(Some(Fed {
                                stream,
                                streams: None,
                                offset: 0,
                            }));
                            accepted.increment();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("feeder backend: accept failed: {e}"),
                    }
                },
                mio::Token(i) => {
                    let Some(fed) = conns[i].as_mut() else {
                        continue;
                    };
                    if !serve_fed(fed, &mut buf, &period) {
                        let _ = poll.registry().deregister(&mut fed.stream);
                        conns[i] = None;
                    }
                }
            }
        }
    }
}

/// Reads what has come and writes what fits (edge-triggered: until
/// EAGAIN); false once the connection is over.
fn serve_fed(fed: &mut Fed, buf: &mut [u8], period: &[u8]) -> bool {
    loop {
        match fed.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                let mut data = &buf[..n];
                if fed.streams.is_none() {
                    fed.streams = Some(data[0] == b'S');
                    if fed.streams == Some(true) {
                        data = &data[1..];
                    }
                }
                // Echoes are a few bytes on an idle socket: they fit.
                if fed.streams == Some(false) && fed.stream.write_all(data).is_err() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    while fed.streams == Some(true) {
        let start = (fed.offset % 251) as usize;
        match fed.stream.write(&period[start..]) {
            Ok(0) => return false,
            Ok(n) => fed.offset += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------
// A reload that closes a listener

/// Connections tried after a reload that rebinds the listen address: with
/// a stale socket left in the SO_REUSEPORT group beside the workers' two
/// new ones, each has a one-in-three chance of landing in it.
const REBIND_TRIES: usize = 30;
/// A connection through ringlb echoes within this, or it hangs in a queue
/// nobody accepts from.
const REBIND_ECHO_WITHIN: Duration = Duration::from_secs(2);

/// Found by the reload storm, two bugs. (1) A reload that closed a
/// listener closed the workers' sockets but kept the copy held for binary
/// upgrades: the kernel went on completing handshakes into that copy's
/// queue, which nobody accepts from, so clients hung instead of being
/// refused (or, for an address bound again, served), and an upgrade would
/// have handed the dead listener on. (2) A `:0` listen address written
/// out with the port it got was taken for a new address: the listener was
/// closed and bound again, resetting the connections in its queue.
#[test]
fn a_reload_that_closes_a_listener_leaves_nothing_queueing_behind() {
    let _alone = harness::exclusive();
    let a = Backend::echo("a");
    let config = LbConfig::over(ENGINE, &[&a]);
    let mut lb = Ringlb::start(&config);
    let first = lb.addr();
    let sources = client_sources();
    let echo_within = |src: IpAddr, addr: SocketAddr, i: usize| -> Result<(), String> {
        let mut s = connect_from(src, addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(REBIND_ECHO_WITHIN))
            .map_err(|e| e.to_string())?;
        let message = (i as u64).to_le_bytes();
        s.write_all(&message).map_err(|e| format!("send: {e}"))?;
        let mut echo = [0u8; 8];
        s.read_exact(&mut echo).map_err(|e| {
            format!("no echo within {REBIND_ECHO_WITHIN:?} ({e}): the connection hangs")
        })?;
        harness::reset(s);
        Ok(())
    };

    // The listen address written with the port it got: the listener is
    // closed and bound again.
    let mut rebound = config.clone();
    rebound.service().listen = vec![first.to_string()];
    lb.rewrite_config(&rebound.to_toml());
    lb.signal(libc::SIGHUP);
    assert!(
        lb.wait_for_log("config reloaded", RELOAD_TIMEOUT).is_some(),
        "{}",
        lb.report()
    );
    for i in 0..REBIND_TRIES {
        let src = sources[i % sources.len()];
        echo_within(src, first, i).unwrap_or_else(|e| {
            panic!(
                "connection {i} from {src} after a reload rebound {first}: {e}\n{}",
                lb.report()
            )
        });
    }

    // The address removed (the service moves to another address): it
    // must refuse connections, not complete their handshakes.
    let mut moved = config.clone();
    moved.service().listen = vec!["127.0.0.254:0".to_owned()];
    lb.rewrite_config(&moved.to_toml());
    lb.signal(libc::SIGHUP);
    assert!(
        lb.wait_for_log("config reloaded", RELOAD_TIMEOUT).is_some(),
        "{}",
        lb.report()
    );
    // The workers close their sockets as they get to the reload's message
    // (an io_uring worker once its accept is cancelled): refused within a
    // moment, and for good. Before the fix the upgrade copy kept listening.
    let closing = Deadline::after(Duration::from_secs(2));
    loop {
        match connect_from(sources[0], first) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            // The handshake completed in the listen queue just as the
            // worker closed the socket, which resets what it queued: the
            // close is under way, nothing hangs; look again.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !closing.passed() => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("a connect to the removed {first} failed with {e}, not refused"),
            Ok(_) if closing.passed() => panic!(
                "{first} was removed by a reload, but a connect there still completes its \
                 handshake 2 s later: a socket still listens on it that nobody accepts from\n{}",
                lb.report()
            ),
            Ok(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}
