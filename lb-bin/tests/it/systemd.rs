//! systemd integration seen from outside: the notifications ringlb sends on
//! a test `NOTIFY_SOCKET` (READY=1 once serving, RELOADING=1 with
//! MONOTONIC_USEC then READY=1 around a reload, STOPPING=1 on SIGTERM), and
//! a graceful drain that carries a slow transfer to its end.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, read_line, Backend, LbConfig, Ringlb, TempDir,
};

const WAIT: Duration = Duration::from_secs(10);

/// Receives datagrams until one contains `needle` (or the deadline).
fn expect(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(msg.clone());
                if msg.lines().any(|l| l == needle || l.starts_with(needle)) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn notify_socket_sees_ready_reloading_and_stopping() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut lb = Ringlb::start_with_env(
        &LbConfig::over("epoll", &[&b1]),
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let mut seen = Vec::new();
    assert!(
        expect(&sock, "READY=1", &mut seen),
        "no READY=1: {seen:?}\n{}",
        lb.report()
    );
    lb.signal(libc::SIGHUP);
    assert!(
        expect(&sock, "RELOADING=1", &mut seen),
        "no RELOADING=1: {seen:?}\n{}",
        lb.report()
    );
    assert!(
        seen.last().is_some_and(|m| m.contains("MONOTONIC_USEC=")),
        "RELOADING=1 must come with MONOTONIC_USEC: {seen:?}"
    );
    assert!(
        expect(&sock, "READY=1", &mut seen),
        "no READY=1 after the reload: {seen:?}\n{}",
        lb.report()
    );
    let status = lb.signal_and_wait(libc::SIGTERM, WAIT);
    assert!(
        expect(&sock, "STOPPING=1", &mut seen),
        "no STOPPING=1: {seen:?}\n{}",
        lb.report()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        lb.report()
    );
}

#[test]
fn sigterm_drains_a_slow_transfer_to_completion_and_refuses_new_clients() {
    let _shared = harness::shared();
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16;
    // Sends its name, waits for the client's "go", then 1 MiB slowly
    // (a chunk every 50 ms: ~0.8 s), then closes.
    let slow = Backend::spawn("slow", std::net::IpAddr::from([127, 0, 0, 1]), |mut s| {
        if s.write_all(b"slow\n").is_err() {
            return;
        }
        let mut go = [0u8; 3];
        if s.read_exact(&mut go).is_err() {
            return;
        }
        let chunk = vec![7u8; CHUNK];
        for _ in 0..CHUNKS {
            if s.write_all(&chunk).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50)); // the slowness under test, not a wait
        }
    });
    let mut lb = Ringlb::start(&LbConfig::over("epoll", &[&slow]));
    let addr = lb.addr();
    let mut client = connect_from(client_sources()[0], addr).unwrap();
    assert_eq!(read_line(&mut client).unwrap(), "slow");
    client.write_all(b"go\n").unwrap();
    lb.signal(libc::SIGTERM);
    // New clients are refused once the listeners close…
    let deadline = Instant::now() + WAIT;
    while connect_from(client_sources()[1], addr)
        .and_then(|mut s| read_line(&mut s))
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "ringlb kept accepting after SIGTERM\n{}",
            lb.report()
        );
        std::thread::yield_now();
    }
    // …while the transfer in flight completes, byte for byte.
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(
        got.len(),
        CHUNK * CHUNKS,
        "the slow transfer was cut by the drain\n{}",
        lb.report()
    );
    drop(client);
    let status = lb.signal_and_wait(libc::SIGTERM, WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        lb.report()
    );
}
