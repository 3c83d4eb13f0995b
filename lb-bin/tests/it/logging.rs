//! Logging never panics or blocks (issue 11, parts 3 and 4): a ringlb
//! whose stderr reader closes the pipe (`ringlb 2>&1 | head -2`), or keeps
//! it open but stops reading (a stalled journal: the 64 KiB pipe fills),
//! goes on forwarding clients promptly, goes on answering its admin API
//! (the control plane logs every admin action), and stops on SIGTERM with
//! exit 0.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, read_line, Backend, LbConfig, Ringlb, StderrOnceReady,
};

/// How long a client round trip or an admin answer may take while stderr
/// is closed or full; a thread blocked on stderr never answers at all.
const RESPONSIVE: Duration = Duration::from_secs(5);
/// SIGTERM to exit: the log writer gives up on a stuck reader after 2 s.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Two named backends behind ringlb, the admin API on.
fn config(b1: &Backend, b2: &Backend) -> LbConfig {
    let mut config = LbConfig::over("epoll", &[b1, b2]);
    config.admin = true;
    config
}

/// Drains or enables b2 through the admin API: each action is logged by
/// the admin API and by the control plane (about 300 bytes of log).
fn toggle_b2(lb: &Ringlb, round: usize) {
    let action = if round % 2 == 0 { "drain" } else { "enable" };
    let path = format!("/api/v1/services/web/backends/b2/{action}");
    let status = lb
        .admin_post(&path, RESPONSIVE)
        .unwrap_or_else(|e| panic!("round {round}: POST {path}: {e}\n{}", lb.report()));
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "round {round}: POST {path} answered {status:?}\n{}",
        lb.report()
    );
}

/// One client connection through ringlb from `src`: a backend greets with
/// its name, then echoes a line. Panics unless that took at most
/// [`RESPONSIVE`].
fn round_trip(lb: &Ringlb, src: IpAddr, round: usize) {
    let started = Instant::now();
    let result = connect_from(src, lb.addr()).and_then(|mut s| {
        s.set_read_timeout(Some(RESPONSIVE))?;
        let name = read_line(&mut s)?;
        std::io::Write::write_all(&mut s, b"ping\n")?;
        Ok((name, read_line(&mut s)?))
    });
    let took = started.elapsed();
    match result {
        Ok((name, echo)) => assert!(
            (name == "b1" || name == "b2") && echo == "ping" && took <= RESPONSIVE,
            "round {round} from {src}: greeted {name:?}, echoed {echo:?} in {took:?}\n{}",
            lb.report()
        ),
        Err(e) => panic!(
            "round {round} from {src}: no round trip through ringlb: {e} (after {took:?})\n{}",
            lb.report()
        ),
    }
}

fn expect_clean_stop(lb: &mut Ringlb, what: &str) {
    let status = lb.signal_and_wait(libc::SIGTERM, STOP_DEADLINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "{what}: SIGTERM gave exit {status:?} within {STOP_DEADLINE:?}, expected exit 0 \
         (101 is a panic; none means ringlb ignored SIGTERM)\n{}",
        lb.report()
    );
}

#[test]
fn stderr_closed_by_its_reader_costs_log_lines_only() {
    let _shared = harness::shared();
    let (b1, b2) = (Backend::named("b1"), Backend::named("b2"));
    let mut lb = Ringlb::start_with_stderr(&config(&b1, &b2), &[], StderrOnceReady::Close);
    // Every write to stderr now fails with EPIPE. A reload logs too.
    lb.signal(libc::SIGHUP);
    let sources = client_sources();
    for round in 0..40 {
        toggle_b2(&lb, round);
        round_trip(&lb, sources[round % sources.len()], round);
    }
    expect_clean_stop(&mut lb, "stderr closed");
}

#[test]
fn stderr_nobody_reads_blocks_no_thread() {
    let _shared = harness::shared();
    let (b1, b2) = (Backend::named("b1"), Backend::named("b2"));
    let mut lb = Ringlb::start_with_stderr(&config(&b1, &b2), &[], StderrOnceReady::Hold);
    // 1000 toggles log ~300 KB, several times the 64 KiB the pipe holds:
    // past the first few hundred, every log write would block.
    let sources = client_sources();
    for round in 0..1000 {
        toggle_b2(&lb, round);
        if round % 10 == 0 {
            round_trip(&lb, sources[(round / 10) % sources.len()], round);
        }
    }
    expect_clean_stop(&mut lb, "stderr full");
}
