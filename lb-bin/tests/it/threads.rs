//! No silent thread death (issue 11): a panic in a worker or in the
//! control plane makes ringlb exit non-zero within a second, naming the
//! thread and the panic in its log; no client is left waiting on a
//! listener nobody accepts from, and SIGTERM is never ignored. And systemd's
//! watchdog is pinged while every thread turns, and no longer once one is
//! stuck.
//!
//! The panics come from lb-core's test-only failpoints
//! (`RINGLB_FAILPOINT`, compiled in because this suite's dev-dependency
//! turns the `failpoints` feature on).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, Backend, Counter, Deadline, LbConfig,
    Ringlb, TempDir, SMALL_STACK,
};

/// The promise: from the panic to the process's exit.
const EXIT_AFTER_PANIC: Duration = Duration::from_secs(1);
/// Longest wait for the exit at all (a failing ringlb never exits).
const EXIT_WAIT: Duration = Duration::from_secs(8);
/// One client attempt (connect, send, echo) must end within this: done,
/// refused, reset or closed. Past it, the client hangs.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(2);
/// Client threads opening connections one after another.
const CLIENTS: usize = 4;
/// Bounds of the client loop, per thread.
const MAX_ATTEMPTS: usize = 2_000;
const CLIENT_TIME: Duration = Duration::from_secs(20);
/// Attempts after the exit that must all be refused quickly (every thread
/// makes a few).
const AFTER_EXIT: usize = 3 * CLIENTS;
/// The worker panics on this accept (process-wide).
const PANIC_AT_ACCEPT: usize = 20;
/// The environment of every ringlb here: the failpoint, and no backtrace
/// (with `RUST_BACKTRACE=1` inherited, the panic hook's symbolising of a
/// debug build alone takes ~300 ms, which is not what is measured here).
fn env(failpoint: &str) -> [(&'static str, &std::ffi::OsStr); 2] {
    [
        ("RINGLB_FAILPOINT", failpoint.as_ref()),
        ("RUST_BACKTRACE", "0".as_ref()),
    ]
}

/// How one client attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The echo came back.
    Done,
    /// Nothing listens (the process is gone).
    Refused,
    /// Reset, at connect, send or read.
    Reset,
    /// EOF before the echo (the process closed the connection).
    Closed,
    /// Nothing within [`ATTEMPT_DEADLINE`]: the bug.
    Hung,
}

/// Outcomes of all attempts, and how many came after the exit.
#[derive(Debug, Default)]
struct Tally {
    done: usize,
    refused: usize,
    reset: usize,
    closed: usize,
    hung: usize,
    /// Refused attempts started after the exit was seen.
    refused_after_exit: usize,
    /// Attempts started after the exit that were not refused.
    other_after_exit: Vec<Attempt>,
}

/// One client: connect from `src`, send a line, wait for its echo.
fn attempt(src: IpAddr, dst: SocketAddr, n: usize) -> Attempt {
    let classify = |e: &io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused => Attempt::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Attempt::Hung,
        io::ErrorKind::UnexpectedEof => Attempt::Closed,
        _ => Attempt::Reset,
    };
    let socket = match Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => panic!("client socket: {e}"),
    };
    socket.bind(&SocketAddr::new(src, 0).into()).unwrap();
    if let Err(e) = socket.connect_timeout(&dst.into(), ATTEMPT_DEADLINE) {
        return classify(&e);
    }
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(ATTEMPT_DEADLINE)).unwrap();
    s.set_write_timeout(Some(ATTEMPT_DEADLINE)).unwrap();
    let line = format!("attempt {n}\n");
    if let Err(e) = s.write_all(line.as_bytes()) {
        return classify(&e);
    }
    let mut got = vec![0u8; line.len()];
    match s.read_exact(&mut got) {
        Ok(()) if got == line.as_bytes() => Attempt::Done,
        Ok(()) => panic!(
            "echo mismatch: sent {line:?}, got {:?}",
            String::from_utf8_lossy(&got)
        ),
        Err(e) => classify(&e),
    }
}

/// Microseconds since the epoch of a log line's leading RFC 3339 UTC
/// timestamp (`2026-12-04T11:31:04.514926Z …`).
fn log_time(line: &str) -> Option<u128> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from 1970-01-01 (the civil-from-days inverse, proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + min * 60 + sec;
    u128::try_from(secs * 1_000_000 + micros).ok()
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// The exit status and the time from the panic (its log line) to the exit
/// being seen, in ms; `Err` with the log when ringlb did not exit within
/// [`EXIT_WAIT`], after trying SIGTERM to tell a hang from an ignored
/// SIGTERM.
fn exit_after_panic(
    lb: &mut Ringlb,
    panic_text: &str,
    what: &str,
) -> Result<(ExitStatus, u128), String> {
    let status = lb.wait_exit(EXIT_WAIT);
    let exited_at = now_micros();
    let Some(status) = status else {
        let after_term = lb.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
        return Err(format!(
            "{what}: ringlb still runs {EXIT_WAIT:?} after the panic (then SIGTERM: {})\n{}",
            match after_term {
                Some(s) => format!("exited {s}"),
                None => "IGNORED for 5 s".into(),
            },
            lb.report()
        ));
    };
    let log = lb.stderr();
    let panic_line = log
        .lines()
        .find(|l| l.contains("panic:") && l.contains(panic_text))
        .unwrap_or_else(|| panic!("{what}: no panic line with {panic_text:?}\n{}", lb.report()));
    let panicked_at =
        log_time(panic_line).unwrap_or_else(|| panic!("{what}: no timestamp on {panic_line:?}"));
    Ok((status, exited_at.saturating_sub(panicked_at) / 1_000))
}

#[test]
fn a_worker_panic_exits_ringlb_at_once_and_leaves_no_client_hanging() {
    let _shared = harness::shared();
    for_each_engine("worker panic", |engine| {
        let backend = Backend::echo("b1");
        let config = LbConfig::over(engine, &[&backend]);
        let spec = format!("worker-panic-after-accepts={PANIC_AT_ACCEPT}");
        let mut lb = Ringlb::start_with_env(&config, &env(&spec));
        let addr = lb.addr();

        let exited = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let after_exit = Arc::new(Counter::default());
        let tally = Arc::new(Mutex::new(Tally::default()));
        let clients: Vec<_> = client_sources()
            .into_iter()
            .take(CLIENTS)
            .enumerate()
            .map(|(c, src)| {
                let (exited, stop, after_exit, tally) = (
                    exited.clone(),
                    stop.clone(),
                    after_exit.clone(),
                    tally.clone(),
                );
                thread::Builder::new()
                    .stack_size(SMALL_STACK)
                    .spawn(move || {
                        let deadline = Deadline::after(CLIENT_TIME);
                        for n in 0..MAX_ATTEMPTS {
                            if stop.load(Ordering::SeqCst) || deadline.passed() {
                                break;
                            }
                            let late = exited.load(Ordering::SeqCst);
                            let outcome = attempt(src, addr, c * MAX_ATTEMPTS + n);
                            let mut t = tally.lock().unwrap();
                            match outcome {
                                Attempt::Done => t.done += 1,
                                Attempt::Refused => t.refused += 1,
                                Attempt::Reset => t.reset += 1,
                                Attempt::Closed => t.closed += 1,
                                Attempt::Hung => t.hung += 1,
                            }
                            if late {
                                if outcome == Attempt::Refused {
                                    t.refused_after_exit += 1;
                                } else {
                                    t.other_after_exit.push(outcome);
                                }
                                drop(t);
                                after_exit.increment();
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();

        let exit = exit_after_panic(
            &mut lb,
            &format!("failpoint {spec} reached"),
            &format!("[{engine}] worker panic"),
        );
        exited.store(true, Ordering::SeqCst);
        if exit.is_ok() {
            after_exit.wait_for(AFTER_EXIT, Duration::from_secs(10));
        }
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().unwrap();
        }
        let t = tally.lock().unwrap();
        let (status, ms) = exit.unwrap_or_else(|e| {
            panic!(
                "{e}\nclient attempts meanwhile: {} done, {} refused, {} reset, {} closed, \
                 {} HUNG (no answer within {ATTEMPT_DEADLINE:?})",
                t.done, t.refused, t.reset, t.closed, t.hung
            )
        });
        let log = lb.stderr();
        println!(
            "[{engine}] worker panic -> exit {ms} ms, status {status}; attempts: {} done, \
             {} refused, {} reset, {} closed, {} hung",
            t.done, t.refused, t.reset, t.closed, t.hung
        );
        assert_eq!(
            status.code(),
            Some(1),
            "[{engine}] exit status {status}\n{}",
            lb.report()
        );
        assert!(
            ms <= EXIT_AFTER_PANIC.as_millis(),
            "[{engine}] ringlb exited {ms} ms after the worker's panic (at most {EXIT_AFTER_PANIC:?})\n{}",
            lb.report()
        );
        assert_eq!(
            t.hung,
            0,
            "[{engine}] {} client attempts got no answer within {ATTEMPT_DEADLINE:?} \
             ({t:?})\n{}",
            t.hung,
            lb.report()
        );
        assert!(
            t.done >= 1,
            "[{engine}] no attempt was served before the panic: {t:?}"
        );
        assert!(
            t.refused_after_exit >= AFTER_EXIT && t.other_after_exit.is_empty(),
            "[{engine}] after the exit every attempt must be refused: {t:?}"
        );
        // The log says which thread died and of what.
        let died = log
            .lines()
            .find(|l| l.contains("thread died"))
            .unwrap_or_else(|| panic!("[{engine}] no `thread died` line\n{}", lb.report()));
        assert!(
            died.contains("thread=ringlb-w") && died.contains(&format!("failpoint {spec} reached")),
            "[{engine}] {died:?}"
        );
        assert!(
            log.contains("ringlb: ringlb-w") && log.contains("died: panicked: failpoint"),
            "[{engine}] no exit message naming the worker\n{}",
            lb.report()
        );
    });
}

#[test]
fn a_control_plane_panic_on_reload_exits_ringlb_at_once() {
    let _shared = harness::shared();
    for_each_engine("control-plane panic", |engine| {
        let backend = Backend::echo("b1");
        for trigger in ["SIGHUP", "admin API"] {
            let mut config = LbConfig::over(engine, &[&backend]);
            config.admin = true;
            let spec = "control-panic-on-reload=1";
            let mut lb = Ringlb::start_with_env(&config, &env(spec));
            let what = format!("[{engine}] control-plane panic on a reload by {trigger}");
            if trigger == "SIGHUP" {
                lb.signal(libc::SIGHUP);
            } else {
                // The control plane dies under the request: no answer, or
                // an error; either way the exit is what counts.
                let answer = lb.admin_post("/api/v1/reload", Duration::from_secs(5));
                assert!(
                    !answer.as_deref().is_ok_and(|a| a.contains(" 200 ")),
                    "{what}: the reload was answered 200: {answer:?}"
                );
            }
            let (status, ms) =
                exit_after_panic(&mut lb, &format!("failpoint {spec} reached"), &what)
                    .unwrap_or_else(|e| panic!("{e}"));
            println!("{what} -> exit {ms} ms, status {status}");
            assert_eq!(
                status.code(),
                Some(1),
                "{what}: exit status {status}\n{}",
                lb.report()
            );
            assert!(
                ms <= EXIT_AFTER_PANIC.as_millis(),
                "{what}: exited {ms} ms after the panic\n{}",
                lb.report()
            );
            let log = lb.stderr();
            assert!(
                log.contains("thread=ringlb-control")
                    && log.contains("ringlb: ringlb-control died: panicked: failpoint"),
                "{what}: the log does not name the control plane and its panic\n{}",
                lb.report()
            );
        }
    });
}

/// Receives notify datagrams until `want` `WATCHDOG=1` pings have come, or
/// the deadline; returns how many came.
fn pings(sock: &UnixDatagram, want: usize, within: Duration) -> usize {
    let deadline = Deadline::after(within);
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < want && !deadline.passed() {
        sock.set_read_timeout(Some(deadline.remaining().max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n)
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "WATCHDOG=1") =>
            {
                seen += 1
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen
}

#[test]
fn the_watchdog_is_pinged_while_every_thread_turns_and_not_once_one_is_stuck() {
    let _shared = harness::shared();
    // WatchdogSec=1s: a ping every 500 ms; a heartbeat still for 1 s is stuck.
    const PERIOD: Duration = Duration::from_millis(500);
    for_each_engine("watchdog", |engine| {
        let backend = Backend::echo("b1");
        let dir = TempDir::new("watchdog");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let mut lb = Ringlb::start_with_env(
            &LbConfig::over(engine, &[&backend]),
            &[
                ("NOTIFY_SOCKET", path.as_os_str()),
                ("WATCHDOG_USEC", "1000000".as_ref()),
                ("RINGLB_FAILPOINT", "worker-stall-after-accepts=1".as_ref()),
                ("RUST_BACKTRACE", "0".as_ref()),
            ],
        );
        let got = pings(&sock, 3, 10 * PERIOD);
        assert_eq!(
            got,
            3,
            "[{engine}] {got} WATCHDOG=1 pings while all is well\n{}",
            lb.report()
        );
        // The first client's accept stops its worker for good.
        let _client = connect_from(client_sources()[0], lb.addr()).unwrap();
        let line = lb
            .wait_for_log("not pinging the systemd watchdog", 10 * PERIOD)
            .unwrap_or_else(|| panic!("[{engine}] the pings did not stop\n{}", lb.report()));
        assert!(
            line.contains("ringlb-w") && line.contains("has not turned for"),
            "[{engine}] {line:?}"
        );
        // Pings sent before that decision may still be queued: drop them.
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while sock.recv(&mut buf).is_ok() {}
        sock.set_nonblocking(false).unwrap();
        let late = pings(&sock, 1, 4 * PERIOD);
        assert_eq!(
            late,
            0,
            "[{engine}] WATCHDOG=1 with a worker stuck\n{}",
            lb.report()
        );
        // A stuck worker holds the drain: systemd would kill it; so do we.
        assert!(lb
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .is_some());
    });
}

#[test]
fn log_timestamps_parse() {
    assert_eq!(
        log_time("1970-01-01T00:00:01.000002Z  INFO x"),
        Some(1_000_002)
    );
    assert_eq!(
        log_time("2026-12-04T11:31:04.514926Z  INFO backend is up"),
        Some(1_796_383_864_514_926)
    );
    assert_eq!(log_time("ringlb: no timestamp"), None);
}
