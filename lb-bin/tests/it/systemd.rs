//! systemd integration seen from outside: the notifications ringlb sends on
//! a test `NOTIFY_SOCKET` (READY=1 once serving, RELOADING=1 with
//! MONOTONIC_USEC then READY=1 around a reload, STOPPING=1 on SIGTERM), an
//! `STATUS=` lines (connections and services served, the last reload's
//! result), an upgrade in place on SIGUSR2 (the new process becomes the main PID:
//! `MAINPID=<new>` and READY=1, then the old one exits 0 without a
//! STOPPING=1, and the new one keeps the watchdog fed), and a graceful
//! drain that carries a slow transfer to its end.

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

/// Receives datagrams until a `STATUS=` line contains every one of
/// `needles` (or the deadline); that line.
fn expect_status(sock: &UnixDatagram, needles: &[&str], seen: &mut Vec<String>) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let n = sock.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        if let Some(line) = msg
            .lines()
            .find(|l| l.starts_with("STATUS=") && needles.iter().all(|n| l.contains(n)))
        {
            return Some(line.to_owned());
        }
    }
    None
}

#[test]
fn status_says_what_is_served_and_how_the_last_reload_went() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let dir = TempDir::new("notify-status");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let config = LbConfig::over("epoll", &[&b1]);
    let mut lb = Ringlb::start_with_env(&config, &[("NOTIFY_SOCKET", path.as_os_str())]);
    let mut seen = Vec::new();
    let first = expect_status(&sock, &["serving 0 connections, 1 service"], &mut seen);
    assert_eq!(
        first.as_deref(),
        Some("STATUS=serving 0 connections, 1 service; no reload since start"),
        "{seen:?}\n{}",
        lb.report()
    );
    // A client held: the count follows within a refresh.
    let mut client = connect_from(client_sources()[0], lb.addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(read_line(&mut client).unwrap(), "b1");
    assert!(
        expect_status(&sock, &["serving 1 connection, 1 service"], &mut seen).is_some(),
        "{seen:?}\n{}",
        lb.report()
    );
    // A refused reload says so, with its reason; a good one after it too.
    let good = config.to_toml();
    lb.rewrite_config("[[service]]\nname = \"web\"\nlisten = [\"not an address\"]\n");
    lb.signal(libc::SIGHUP);
    let refused = expect_status(
        &sock,
        &["last reload refused at", "not an address"],
        &mut seen,
    );
    assert!(refused.is_some(), "{seen:?}\n{}", lb.report());
    lb.rewrite_config(&good);
    lb.signal(libc::SIGHUP);
    let ok = expect_status(
        &sock,
        &["serving 1 connection", "last reload ok at"],
        &mut seen,
    );
    assert!(ok.is_some(), "{seen:?}\n{}", lb.report());
    drop(client);
}

/// Whether `pid` is gone (or a zombie, which an init that reaps late
/// leaves behind: it serves nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The process SIGUSR2 started (a grandchild of the test): killed on drop
/// if a failed test leaves it running.
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        if !gone(self.0) {
            // SAFETY: kill(2) takes plain integers; the pid is the ringlb
            // our ringlb started, seen alive just now.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[test]
fn sigusr2_upgrades_in_place_and_hands_systemd_the_new_main_pid() {
    use crate::upgrade::{admin_health, fixed_config, free_port, Proc};
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let dir = TempDir::new("sigusr2");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let config = dir.write(
        "ringlb.toml",
        &fixed_config(LbConfig::over("epoll", &[&b1]), port, admin_port),
    );
    let upgrade_sock = dir.path().join("upgrade.sock");
    // As systemd starts it: the watchdog request names the main process.
    let mut cmd = crate::harness::ringlb_command();
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000");
    let mut sh = std::process::Command::new("/bin/sh");
    sh.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\" --upgrade-socket \"$2\"")
        .arg(env!("CARGO_BIN_EXE_ringlb"))
        .arg(&config)
        .arg(&upgrade_sock)
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("RUST_LOG");
    let mut old = Proc::spawn(sh);
    let addr = old.wait_listening();
    let mut seen = Vec::new();
    assert!(
        expect(&notify, "READY=1", &mut seen),
        "no READY=1: {seen:?}\n{}",
        old.log()
    );
    let old_pid = old.pid();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(old_pid as libc::pid_t, libc::SIGUSR2) };
    assert!(
        expect(&notify, "MAINPID=", &mut seen),
        "no MAINPID= after SIGUSR2: {seen:?}\n{}",
        old.log()
    );
    let msg = seen.last().unwrap().clone();
    let new_pid: u32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad MAINPID message {msg:?}"));
    let _orphan = Orphan(new_pid);
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "MAINPID= must come with READY=1: {msg:?}"
    );
    assert_ne!(new_pid, old_pid, "{msg:?}");
    let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--upgrade-socket"),
        "MAINPID names pid {new_pid}, which is not the new ringlb: {cmdline:?}"
    );
    // The old one had no connections: it exits 0 at once, saying nothing
    // more to systemd (a STOPPING=1 would stop the service).
    let status = old.wait_exit(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "old: {status:?}\n{}",
        old.log()
    );
    // The new one serves the same addresses, admin API included…
    let mut c = connect_from(client_sources()[2], addr).unwrap();
    assert_eq!(read_line(&mut c).unwrap(), "b1");
    drop(c);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    assert!(
        admin_health(admin).is_ok_and(|l| l.starts_with("HTTP/1.1 ")),
        "{}",
        old.log()
    );
    // …and feeds the watchdog (the old one is gone, so this ping is its).
    let mut after = Vec::new();
    assert!(
        expect(&notify, "WATCHDOG=1", &mut after),
        "the new process does not ping the watchdog: {after:?}\n{}",
        old.log()
    );
    assert!(
        !after.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 sent by the old process after the upgrade: {after:?}"
    );
    // SAFETY: kill(2) takes plain integers; new_pid is the live ringlb
    // started by ours (checked through /proc above).
    unsafe { libc::kill(new_pid as libc::pid_t, libc::SIGTERM) };
    assert!(
        expect(&notify, "STOPPING=1", &mut after),
        "no STOPPING=1 from the new main process: {after:?}\n{}",
        old.log()
    );
    let deadline = Instant::now() + WAIT;
    while !gone(new_pid) {
        assert!(
            Instant::now() < deadline,
            "the new process ignored SIGTERM\n{}",
            old.log()
        );
        std::thread::sleep(Duration::from_millis(10)); // polling /proc, bounded by the deadline
    }
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
