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
