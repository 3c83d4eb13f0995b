//! Abuse of the admin listener over real loopback sockets: the connection
//! cap, the request-head timeout (silent and trickling peers), and a flood
//! of garbage connections (mutated, oversized, truncated, binary requests)
//! while the health endpoint must keep answering. Figures are printed
//! (`--nocapture`) for docs/reliability.md.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_core::{Config, Server, StartOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::loopback::*;
use crate::support::response::*;
use crate::support::wait::*;

/// The admin server's limits (lb-core/src/admin.rs).
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const TOKEN: &str = "t0ken-for-hostile-tests";
const HEALTH: &[u8] =
    b"GET /router/api/v1/system/health HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n";

struct Lb {
    _server: Server,
    admin: SocketAddr,
}

fn start() -> Lb {
    let b1 = named_echo_backend("b1");
    let toml = format!(
        "[global]\nworkers = 1\nengine = \"epoll\"\nadmin = \"127.0.0.1:0\"\n\
         admin_token = \"{TOKEN}\"\nshutdown_timeout = \"1s\"\n\n\
         [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\n\
         [service.health]\nkind = \"none\"\n\n\
         [[service.backend]]\nname = \"b1\"\naddress = \"{b1}\"\n"
    );
    let config = Config::parse(&toml, None).expect("test config");
    let server = Server::start(config, StartOptions::default()).expect("server starts");
    let admin = server.admin_addr().expect("admin listener");
    Lb {
        _server: server,
        admin,
    }
}

/// Reads until the peer closes (EOF or reset) or `limit` passes; returns
/// what was read and when it closed (None: still open at `limit`).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (got, None);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// 64 connections that send no complete head fill the cap: the 65th is
/// answered 503 at once, not queued. The head timeout then closes them
/// all (a silent peer and one trickling a header line every 300 ms alike)
/// after 10 s, and the health endpoint answers again.
#[test]
fn the_connection_cap_refuses_at_once_and_the_head_timeout_frees_it() {
    let lb = start();
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..MAX_CONNECTIONS - 1)
        .map(|i| connect_from(ip(&format!("127.0.1.{}", 1 + i)), lb.admin))
        .collect();
    // One slowloris: a head that never ends, a line at a time.
    let trickler = connect_from(ip("127.0.2.1"), lb.admin);
    let mut writer = trickler.try_clone().expect("clone");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    let trickle = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: ringlb\r\n");
        // Bounded: 60 lines over at most 18 s, or until the server closes.
        for i in 0..60 {
            if stop_writer.load(Ordering::Relaxed)
                || writer
                    .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                    .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(300)); // the peer's pace, not a wait
        }
    });
    silent.push(trickler);

    // The 65th: refused at once. Connections are accepted in order, so the
    // 64 above hold every permit by the time this one is accepted.
    let asked = Instant::now();
    let mut over = connect_from(ip("127.0.3.1"), lb.admin);
    over.write_all(HEALTH).expect("send");
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(5));
    let refusal = asked.elapsed();
    assert_eq!(
        status_of(&answer),
        Some(503),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        String::from_utf8_lossy(&answer).contains("too many admin connections"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(closed.is_some(), "the refused connection is closed");
    assert!(
        refusal < Duration::from_secs(1),
        "refused after {refusal:?}"
    );

    // The head timeout closes every one of the 64.
    let mut closes = Vec::new();
    for (i, s) in silent.iter_mut().enumerate() {
        let left = (HEADER_TIMEOUT + Duration::from_secs(5)).saturating_sub(opened.elapsed());
        let (_, closed) = read_until_closed(s, left);
        assert!(
            closed.is_some(),
            "connection {i} still open {:?} after it opened",
            opened.elapsed()
        );
        closes.push(opened.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().expect("trickler");
    let first = closes.iter().min().copied().unwrap_or_default();
    let last = closes.iter().max().copied().unwrap_or_default();
    assert!(
        first >= HEADER_TIMEOUT - Duration::from_secs(1),
        "a connection closed after {first:?}, before the head timeout"
    );
    let health_back = Instant::now();
    wait_until("health answers once the cap is free", || {
        raw_from(ip("127.0.0.1"), lb.admin, HEALTH).status == 200
    });
    eprintln!(
        "admin cap: 65th connection refused (503) in {refusal:?}; the 64 held connections \
         closed by the head timeout {first:?}..{last:?} after opening (trickler included); \
         health 200 again {:?} later",
        health_back.elapsed()
    );
}

/// One garbage request: random bytes, a mutated GET, an oversized head,
/// a truncated one, a bad method or version, NULs and high bytes.
fn garbage(rng: &mut StdRng) -> Vec<u8> {
    const GET: &[u8] = b"GET /api/v1/services HTTP/1.1\r\nHost: ringlb\r\n\r\n";
    match rng.gen_range(0..8) {
        0 => (0..rng.gen_range(1..2048)).map(|_| rng.gen()).collect(),
        1 => {
            let mut r = GET.to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..r.len());
                r[at] = rng.gen();
            }
            r
        }
        2 => {
            let mut r = b"GET / HTTP/1.1\r\nHost: ringlb\r\nX-Big: ".to_vec();
            r.extend(std::iter::repeat_n(b'a', 20 << 10));
            r.extend_from_slice(b"\r\n\r\n");
            r
        }
        3 => GET[..rng.gen_range(0..GET.len() - 4)].to_vec(),
        4 => b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        5 => b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        6 => b"GET /\0\xff\xfe HTTP/1.1\r\nHost: \0\r\nContent-Length: -5\r\n\r\n".to_vec(),
        _ => {
            let mut r = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a/".repeat(10_000));
            r.truncate(rng.gen_range(100..r.len()));
            r.into_bytes()
        }
    }
}

/// 16 silent connections hold a quarter of the cap; four threads open
/// garbage connections back to back (at most 1000 each, 5 s in all) while a fifth asks for health every 10 ms: every health
/// request is answered 200, every garbage connection ends (an answer or a
/// close) within 5 s, and nothing changes.
#[test]
fn health_answers_through_a_flood_of_garbage_connections() {
    let lb = start();
    let before = services_at_rest(&lb);
    let flooding = AtomicBool::new(true);
    let budget = Duration::from_secs(5);
    let _held: Vec<TcpStream> = (0..16)
        .map(|i| connect_from(ip(&format!("127.0.5.{}", 1 + i)), lb.admin))
        .collect();
    let started = Instant::now();
    let (floods, health) = std::thread::scope(|scope| {
        let floods: Vec<_> = (0..4u8)
            .map(|t| {
                let admin = lb.admin;
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(0x5eed + u64::from(t));
                    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
                    for i in 0..1000u32 {
                        if started.elapsed() > budget {
                            break;
                        }
                        let source = ip(&format!("127.0.{}.{}", 10 + t, 1 + i % 250));
                        let mut s = connect_from(source, admin);
                        let _ = s.write_all(&garbage(&mut rng));
                        let _ = s.shutdown(Shutdown::Write);
                        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5));
                        assert!(closed.is_some(), "a garbage connection hung open 5 s");
                        let key = status_of(&answer).map_or("closed".to_owned(), |c| c.to_string());
                        *statuses.entry(key).or_default() += 1;
                    }
                    statuses
                })
            })
            .collect();
        let health = scope.spawn(|| {
            let mut took = Vec::new();
            while flooding.load(Ordering::Relaxed) && took.len() < 2000 {
                let t = Instant::now();
                let r = raw_from(ip("127.0.0.1"), lb.admin, HEALTH);
                took.push(t.elapsed());
                assert_eq!(r.status, 200, "health during the flood: {}", r.text());
                std::thread::sleep(Duration::from_millis(10)); // the prober's pace
            }
            took
        });
        let floods: Vec<_> = floods
            .into_iter()
            .map(|f| f.join().expect("flood thread"))
            .collect();
        flooding.store(false, Ordering::Relaxed);
        (floods, health.join().expect("health thread"))
    });
    let mut total = std::collections::BTreeMap::<String, usize>::new();
    for f in floods {
        for (k, v) in f {
            *total.entry(k).or_default() += v;
        }
    }
    let sent: usize = total.values().sum();
    let mut sorted = health.clone();
    sorted.sort();
    assert!(!sorted.is_empty(), "no health request ran during the flood");
    let p50 = percentile(&sorted, 0.5);
    let p99 = percentile(&sorted, 0.99);
    eprintln!(
        "garbage flood: {sent} connections in {:?} (answers {total:?}); health: {} requests, \
         all 200, p50 {p50:?}, p99 {p99:?}, max {:?}",
        started.elapsed(),
        sorted.len(),
        sorted.last().copied().unwrap_or_default()
    );
    assert!(
        p99 < Duration::from_secs(1),
        "health p99 {p99:?} during the flood"
    );
    let after = services_at_rest(&lb);
    assert_eq!(before, after, "the flood changed the services");
}

/// `/api/v1/services`' services without each backend's traffic samples,
/// which move every second by design; the samples must all be zero (the
/// admin port's garbage is no backend's traffic).
fn services_at_rest(lb: &Lb) -> serde_json::Value {
    let mut services = raw_from(
        ip("127.0.0.1"),
        lb.admin,
        b"GET /api/v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .json()["services"]
        .clone();
    for b in services
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(|s| s["backends"].as_array_mut())
        .flatten()
    {
        let history = b
            .as_object_mut()
            .and_then(|b| b.remove("history"))
            .expect("a backend's history");
        for key in ["new_connections", "bytes"] {
            let samples = history[key].as_array().expect("samples");
            assert!(
                samples.iter().all(|n| n == 0),
                "{key}: no traffic, yet {samples:?}"
            );
        }
    }
    services
}
