//! The access log: one line per connection at its end, with the fields and
//! the cause the connection really had, in text and JSON, on every engine;
//! `/metrics`' closed and refused counts agree with it; SIGUSR1 and
//! `POST /api/v1/log/reopen` move it to a fresh file; a log nobody reads
//! never slows the data plane (records are dropped and counted instead).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, for_each_variant, read_outcome, reset,
    Backend, BackendConfig, DeadPort, Deadline, LbConfig, ReadOutcome, Ringlb, ServiceConfig,
    TempDir, Variant, LOCALHOST,
};

/// How long a record may take to reach the file (the writer writes at
/// least every 100 ms; generous for a loaded machine).
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// One log line's fields, as strings (JSON nulls as `-`, like the text
/// form writes them).
pub(crate) type Fields = HashMap<String, String>;

/// Parses one line of `format`. JSON lines must be valid JSON objects.
fn parse(format: &str, line: &str) -> Fields {
    if format == "json" {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let object = v
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {line:?}"));
        object
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".to_owned(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    } else {
        line.split(' ')
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not key=value: {kv:?} in {line:?}"));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }
}

/// Every complete line of the log at `path`, parsed.
fn records(path: &Path, format: &str) -> Vec<Fields> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(|l| parse(format, l)).collect()
}

/// Waits for the record of the client at `client`.
pub(crate) fn wait_record(lb: &Ringlb, path: &Path, format: &str, client: SocketAddr) -> Fields {
    let deadline = Deadline::after(RECORD_WAIT);
    let want = client.to_string();
    loop {
        if let Some(r) = records(path, format)
            .into_iter()
            .find(|r| r["client"] == want)
        {
            return r;
        }
        assert!(
            !deadline.passed(),
            "no access log record for client {client} in {}:\n{}\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default(),
            lb.report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the fields every record has, and those given.
fn check(r: &Fields, lb: &Ringlb, service: &str, expect: &[(&str, String)]) {
    assert_eq!(r["service"], service, "{r:?}");
    assert_eq!(
        r["listen"],
        lb.addrs(service)[0].to_string(),
        "listen address: {r:?}"
    );
    for key in ["time", "duration_ms", "connect_ms", "backend_address"] {
        assert!(r.contains_key(key), "{key} missing: {r:?}");
    }
    for (key, value) in expect {
        assert_eq!(&r[*key], value, "field {key} of {r:?}");
    }
}

/// A client of a service that resets it at once: its address (bound
/// before connecting, as the connect itself may already report the reset).
fn refused_client(src: IpAddr, dst: SocketAddr) -> SocketAddr {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&SocketAddr::new(src, 0).into()).unwrap();
    let me = socket.local_addr().unwrap().as_socket().unwrap();
    if socket
        .connect_timeout(&dst.into(), Duration::from_secs(5))
        .is_ok()
    {
        let mut c = std::net::TcpStream::from(socket);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let end = read_outcome(&mut c, &mut [0u8; 16]);
        assert!(
            matches!(end, ReadOutcome::Reset | ReadOutcome::Eof),
            "{end:?}"
        );
    }
    me
}

fn service(name: &str, backends: Vec<BackendConfig>) -> ServiceConfig {
    let mut base = LbConfig::single("epoll", backends);
    let mut s = base.services.remove(0);
    s.name = name.to_owned();
    s
}

/// Every cause, over real sockets, with its fields checked; then the
/// metrics against the log; then `shutdown` at a SIGTERM drain.
#[test]
fn every_end_cause_is_logged_with_its_fields_and_counted_in_metrics() {
    let _shared = harness::shared();
    let mut index = 0;
    for_each_variant("access_log::causes", |variant| {
        // Each format on both engines: text on epoll and uring-copy, JSON
        // on uring and uring-splice.
        let format = if index % 2 == 0 { "text" } else { "json" };
        index += 1;
        causes(variant, format);
    });
}

fn causes(variant: Variant, format: &str) {
    let dir = TempDir::new("access-log");
    let path = dir.path().join("access.log");
    let echo = Backend::echo("echo");
    let greet = Backend::spawn("greet", LOCALHOST, |mut s| {
        // Sends a greeting and its FIN first, then waits for the client's.
        if s.write_all(b"hello").is_ok() && s.shutdown(Shutdown::Write).is_ok() {
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(1..)) {}
        }
    });
    let (got_tx, _got) = std::sync::mpsc::channel();
    let resetting = Backend::resetting("rst", got_tx);
    let dead: Vec<DeadPort> = (0..4).map(|_| DeadPort::new()).collect();

    let mut config = LbConfig::over(variant, &[&echo]);
    config.admin = true;
    config.global_extra = vec![
        format!("access_log = {:?}", path.display().to_string()),
        format!("access_log_format = {format:?}"),
        "shutdown_timeout = \"300ms\"".to_owned(),
    ];
    config
        .services
        .push(service("greet", vec![(&greet).into()]));
    config
        .services
        .push(service("rst", vec![(&resetting).into()]));
    let mut idle = service("idle", vec![(&echo).into()]);
    idle.idle_timeout = "300ms".to_owned();
    config.services.push(idle);
    let mut failover = service(
        "failover",
        vec![BackendConfig::new("dead", dead[0].addr()), (&echo).into()],
    );
    failover.connect_attempts = 2;
    config.services.push(failover);
    let mut down = service(
        "down",
        vec![
            BackendConfig::new("d1", dead[1].addr()),
            BackendConfig::new("d2", dead[2].addr()),
        ],
    );
    down.connect_attempts = 2;
    config.services.push(down);
    // An active check keeps the refusing backend out: none is usable.
    let mut none = service("none", vec![BackendConfig::new("gone", dead[3].addr())]);
    none.health = "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"200ms\"".to_owned();
    config.services.push(none);
    let mut lb = Ringlb::start(&config);
    let sources = client_sources();
    let addr = |s: &str| lb.addrs(s)[0];
    let echo_addr = echo.addr().to_string();

    // client_closed: the client's FIN first; exact byte counts.
    let mut c = connect_from(sources[0], addr("web")).unwrap();
    let me = c.local_addr().unwrap();
    let payload = vec![7u8; 1000];
    c.write_all(&payload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 1000);
    drop(c);
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "web",
        &[
            ("cause", "client_closed".into()),
            ("backend", "echo".into()),
            ("backend_address", echo_addr.clone()),
            ("attempts", "1".into()),
            ("bytes_to_backend", "1000".into()),
            ("bytes_to_client", "1000".into()),
        ],
    );
    assert_ne!(r["connect_ms"], "-", "{r:?}");

    // backend_closed: the backend's FIN first.
    let mut c = connect_from(sources[1], addr("greet")).unwrap();
    let me = c.local_addr().unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hello");
    drop(c);
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "greet",
        &[
            ("cause", "backend_closed".into()),
            ("backend", "greet".into()),
            ("bytes_to_backend", "0".into()),
            ("bytes_to_client", "5".into()),
        ],
    );

    // client_reset: the client closes with an RST.
    let mut c = connect_from(sources[2], addr("web")).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"ping").unwrap();
    let mut four = [0u8; 4];
    c.read_exact(&mut four).unwrap();
    reset(c);
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "web",
        &[
            ("cause", "client_reset".into()),
            ("bytes_to_backend", "4".into()),
            ("bytes_to_client", "4".into()),
        ],
    );

    // backend_reset: the backend resets after reading.
    let mut c = connect_from(sources[3], addr("rst")).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"x").unwrap();
    let mut buf = [0u8; 16];
    let end = read_outcome(&mut c, &mut buf);
    assert!(
        matches!(end, ReadOutcome::Reset | ReadOutcome::Eof),
        "{end:?}"
    );
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "rst",
        &[
            ("cause", "backend_reset".into()),
            ("backend", "rst".into()),
            ("bytes_to_backend", "1".into()),
        ],
    );

    // idle_timeout: nothing moves for 300 ms.
    let mut c = connect_from(sources[4], addr("idle")).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"z").unwrap();
    c.read_exact(&mut buf[..1]).unwrap();
    let end = read_outcome(&mut c, &mut buf);
    assert!(
        matches!(end, ReadOutcome::Reset | ReadOutcome::Eof),
        "{end:?}"
    );
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "idle",
        &[("cause", "idle_timeout".into()), ("backend", "echo".into())],
    );

    // attempts = 2: clients whose first choice refuses fail over.
    let mut failed_over = 0;
    for &src in &sources[5..25] {
        let mut c = connect_from(src, addr("failover")).unwrap();
        let me = c.local_addr().unwrap();
        c.write_all(b"a").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"a");
        drop(c);
        let r = wait_record(&lb, &path, format, me);
        check(
            &r,
            &lb,
            "failover",
            &[
                ("backend", "echo".into()),
                ("cause", "client_closed".into()),
            ],
        );
        if r["attempts"] == "2" {
            failed_over += 1;
        } else {
            assert_eq!(r["attempts"], "1", "{r:?}");
        }
    }
    assert!(
        failed_over > 0,
        "no client of 20 had the refusing backend first (attempts=2)"
    );

    // connect_failed: every backend refuses.
    let me = refused_client(sources[30], addr("down"));
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "down",
        &[
            ("cause", "connect_failed".into()),
            ("attempts", "2".into()),
            ("backend", "-".into()),
            ("connect_ms", "-".into()),
        ],
    );

    // no_backend: none usable to try.
    let me = refused_client(sources[31], addr("none"));
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "none",
        &[
            ("cause", "no_backend".into()),
            ("attempts", "0".into()),
            ("backend", "-".into()),
        ],
    );

    // The metrics count what the log says, by service and cause.
    let all = records(&path, format);
    let metrics = lb.metrics();
    for s in ["web", "greet", "rst", "idle", "failover", "down", "none"] {
        for cause in [
            "client_closed",
            "backend_closed",
            "client_reset",
            "backend_reset",
            "idle_timeout",
            "connect_failed",
            "no_backend",
            "local_error",
            "shutdown",
        ] {
            let logged = |reached: bool| {
                all.iter()
                    .filter(|r| r["service"] == s && r["cause"] == cause)
                    .filter(|r| (r["backend"] != "-") == reached)
                    .count() as u64
            };
            let closed =
                format!("ringlb_connections_closed_total{{service=\"{s}\",cause=\"{cause}\"}}");
            let refused =
                format!("ringlb_connections_refused_total{{service=\"{s}\",reason=\"{cause}\"}}");
            assert_eq!(metrics.sample(&closed), Some(logged(true)), "{closed}");
            assert_eq!(metrics.sample(&refused), Some(logged(false)), "{refused}");
        }
    }
    assert_eq!(metrics.value("ringlb_access_log_dropped_total"), Some(0));

    // shutdown: a connection that outlives the drain.
    let mut c = connect_from(sources[32], addr("web")).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"q").unwrap();
    c.read_exact(&mut buf[..1]).unwrap();
    let status = lb
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .expect("ringlb exits after its drain");
    assert!(status.success(), "{status:?}\n{}", lb.report());
    let r = wait_record(&lb, &path, format, me);
    check(
        &r,
        &lb,
        "web",
        &[
            ("cause", "shutdown".into()),
            ("bytes_to_backend", "1".into()),
            ("bytes_to_client", "1".into()),
        ],
    );
}

/// logrotate's way: the file is renamed, then SIGUSR1 (or the admin API)
/// has ringlb open a fresh file at the path; the old file keeps every line
/// written before.
#[test]
fn sigusr1_and_the_admin_api_reopen_the_log_at_its_path() {
    let _shared = harness::shared();
    for_each_engine("access_log::reopen", |engine| {
        let dir = TempDir::new("access-log-reopen");
        let path = dir.path().join("access.log");
        let echo = Backend::echo("echo");
        let mut config = LbConfig::over(engine, &[&echo]);
        config.admin = true;
        config.global_extra = vec![format!("access_log = {:?}", path.display().to_string())];
        let mut lb = Ringlb::start(&config);
        let round_trip = |lb: &Ringlb| {
            let mut c = connect_from(LOCALHOST, lb.addr()).unwrap();
            let me = c.local_addr().unwrap();
            c.write_all(b"r").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            me
        };
        let first = round_trip(&lb);
        wait_record(&lb, &path, "text", first);

        let (rotated1, rotated2) = (
            dir.path().join("access.log.1"),
            dir.path().join("access.log.2"),
        );
        std::fs::rename(&path, &rotated1).unwrap();
        lb.signal(libc::SIGUSR1);
        assert!(
            lb.wait_for_log("access log reopened", RECORD_WAIT)
                .is_some(),
            "[{engine}] no reopen after SIGUSR1\n{}",
            lb.report()
        );
        let second = round_trip(&lb);
        let r = wait_record(&lb, &path, "text", second);
        assert_eq!(r["cause"], "client_closed");
        let old = records(&rotated1, "text");
        assert_eq!(old.len(), 1, "[{engine}] the rotated file: {old:?}");
        assert_eq!(old[0]["client"], first.to_string());

        std::fs::rename(&path, &rotated2).unwrap();
        let answer = lb
            .admin_post("/api/v1/log/reopen", Duration::from_secs(5))
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert!(
            lb.wait_for_log("access log reopened", RECORD_WAIT)
                .is_some(),
            "[{engine}] no reopen after POST\n{}",
            lb.report()
        );
        let third = round_trip(&lb);
        wait_record(&lb, &path, "text", third);
        let mid = records(&rotated2, "text");
        assert_eq!(mid.len(), 1, "[{engine}] the second rotated file: {mid:?}");
        assert_eq!(mid[0]["client"], second.to_string());
        assert_eq!(records(&path, "text").len(), 1);
    });
}

/// A log that nobody reads (a FIFO whose reader never reads) fills up and
/// blocks its writer thread; connections go on being served at full speed
/// and the records that cannot be queued are dropped and counted. ringlb
/// still stops promptly on SIGTERM.
#[test]
fn a_log_nobody_reads_never_slows_connections() {
    let _shared = harness::shared();
    for_each_engine("access_log::stalled", |engine| {
        let dir = TempDir::new("access-log-fifo");
        let fifo = dir.path().join("access.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo failed");
        // The reader: open, never read.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the FIFO's read end");
        let echo = Backend::echo("echo");
        let mut config = LbConfig::over(engine, &[&echo]);
        config.workers = 1;
        config.admin = true;
        config.global_extra = vec![format!("access_log = {:?}", fifo.display().to_string())];
        let mut lb = Ringlb::start(&config);

        // A pipe holds ~64 KiB (a few hundred lines), the queue 1024
        // records: 3000 connections overflow both.
        const ROUND_TRIPS: usize = 3000;
        let deadline = Deadline::after(Duration::from_secs(120));
        let sources: Vec<IpAddr> = client_sources();
        let mut slowest = Duration::ZERO;
        for i in 0..ROUND_TRIPS {
            let started = Instant::now();
            let mut c = connect_from(sources[i % sources.len()], lb.addr()).unwrap();
            c.write_all(b"ping").unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("[{engine}] round trip {i}: {e}\n{}", lb.report()));
            drop(c);
            slowest = slowest.max(started.elapsed());
            assert!(
                !deadline.passed(),
                "[{engine}] {i} round trips took over 120 s"
            );
        }
        assert!(
            slowest < Duration::from_secs(2),
            "[{engine}] the slowest round trip took {slowest:?}"
        );
        let dropped = {
            let deadline = Deadline::after(RECORD_WAIT);
            loop {
                let d = lb
                    .metrics()
                    .value("ringlb_access_log_dropped_total")
                    .unwrap();
                if d > 0 || deadline.passed() {
                    break d;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        assert!(dropped > 0, "[{engine}] nothing dropped\n{}", lb.report());
        let status = lb.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "[{engine}] ringlb did not stop cleanly with its log writer blocked: {status:?}\n{}",
            lb.report()
        );
    });
}

/// A log path that cannot be opened stops the start with the path and the
/// OS's reason.
#[test]
fn an_access_log_that_cannot_be_opened_is_a_start_up_error() {
    let dir = TempDir::new("access-log-bad");
    let bad = dir.path().join("no-such-dir").join("access.log");
    let config = format!(
        "[global]\nadmin = \"off\"\naccess_log = {:?}\n\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n",
        bad.display().to_string()
    );
    let file = dir.write("ringlb.toml", &config);
    let done = harness::run_to_exit(&["--config".as_ref(), file.as_os_str()]);
    assert!(!done.status.success(), "started with a bad access log");
    assert!(
        done.stderr.contains(&bad.display().to_string())
            && done.stderr.contains("No such file or directory"),
        "{}",
        done.stderr
    );
}
