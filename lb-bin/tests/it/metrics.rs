//! What `/metrics` tells an operator, seen from outside: byte counters
//! that move while a long download is still open (every engine and
//! forwarding strategy) and are exact once it closed, a connect-time
//! histogram per backend that counts every connection, reload results,
//! health transitions, and the standard process collector against what
//! /proc says about the ringlb process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    self, connect_from, for_each_variant, read_request_head, seeded_bytes, Backend, BackendConfig,
    Deadline, LbConfig, Metrics, Ringlb, LOCALHOST,
};

/// Longest a counter may take to show what happened (the workers flush
/// byte counts once a second).
const SHOWS_WITHIN: Duration = Duration::from_secs(5);
/// The download: far more than socket buffers and pipes hold, so the
/// connection stays open until the client has read nearly all of it.
const DOWNLOAD: usize = 48 << 20;
/// What the client sends before the download starts.
const REQUEST: &[u8] = b"GET\n";

/// Polls `/metrics` until `condition` holds; the scrape that satisfied it.
fn wait_metrics(lb: &Ringlb, what: &str, condition: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Deadline::after(SHOWS_WITHIN);
    loop {
        let m = lb.metrics();
        if condition(&m) {
            return m;
        }
        assert!(
            !deadline.passed(),
            "{what}: not within {SHOWS_WITHIN:?}\n{}\n{}",
            m.text(),
            lb.report()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn bytes(m: &Metrics, direction: &str) -> u64 {
    m.sample(&format!(
        "ringlb_backend_bytes_total{{service=\"web\",backend=\"d1\",direction=\"{direction}\"}}"
    ))
    .unwrap_or(0)
}

/// A client whose receive buffer is small and fixed (set before the
/// handshake): ringlb cannot run far ahead of what it read.
fn connect_small(dst: std::net::SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
        .expect("client socket");
    socket.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
    socket
        .connect_timeout(&dst.into(), harness::CLIENT_CONNECT_TIMEOUT)
        .expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(harness::IO_TIMEOUT)).unwrap();
    stream
}

/// A backend that reads [`REQUEST`], sends [`DOWNLOAD`] bytes, shuts its
/// write side and waits for the client's EOF.
fn downloader() -> Backend {
    Backend::spawn("d1", LOCALHOST, |mut s| {
        let mut request = [0u8; REQUEST.len()];
        if s.read_exact(&mut request).is_err() {
            return;
        }
        let chunk = seeded_bytes(7, 1 << 20);
        for _ in 0..DOWNLOAD / chunk.len() {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    })
}

#[test]
fn byte_counters_move_during_a_long_download_and_are_exact_after_it() {
    let _shared = harness::shared();
    for_each_variant("metrics::live_bytes", |variant| {
        let d1 = downloader();
        let mut config = LbConfig::over(variant, &[&d1]);
        config.workers = 1;
        config.admin = true;
        let lb = Ringlb::start(&config);
        let tag = variant.to_string();

        let mut client = connect_small(lb.addr());
        client.write_all(REQUEST).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        let mut read_some = |client: &mut TcpStream, n: usize| {
            let until = got + n;
            while got < until {
                let r = client.read(&mut buf).expect("read the download");
                assert!(r > 0, "[{tag}] the download ended early at {got}");
                got += r;
            }
            got
        };

        // The first MiB: the counters show it while the connection is
        // still open (on the old code they stayed 0 until the close).
        let first = read_some(&mut client, 1 << 20);
        let open = |m: &Metrics| {
            m.sample("ringlb_backend_connections_active{service=\"web\",backend=\"d1\"}") == Some(1)
        };
        let m1 = wait_metrics(&lb, &format!("[{tag}] bytes of the open download"), |m| {
            open(m) && bytes(m, "to_client") >= first as u64 && bytes(m, "to_backend") > 0
        });
        let (down1, t1) = (bytes(&m1, "to_client"), Instant::now());
        assert_eq!(bytes(&m1, "to_backend"), REQUEST.len() as u64, "[{tag}]");
        // At most what the client read plus ringlb's send buffer and pipe.
        assert!(
            down1 < (first + (16 << 20)) as u64,
            "[{tag}] {down1} counted, {first} read"
        );

        // More read: the counter grows again, still open.
        let second = read_some(&mut client, 4 << 20);
        let m2 = wait_metrics(&lb, &format!("[{tag}] growth of the open download"), |m| {
            open(m) && bytes(m, "to_client") >= second as u64 && bytes(m, "to_client") > down1
        });
        println!(
            "[{tag}] open download: {down1} then {} bytes counted, {:?} apart",
            bytes(&m2, "to_client"),
            t1.elapsed()
        );

        // The rest, then close: the totals are exactly what moved.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("read to the end");
        assert_eq!(got + rest.len(), DOWNLOAD, "[{tag}] bytes lost or added");
        drop(client);
        let m3 = wait_metrics(&lb, &format!("[{tag}] the closed download"), |m| {
            m.sample("ringlb_backend_connections_active{service=\"web\",backend=\"d1\"}") == Some(0)
        });
        assert_eq!(
            (bytes(&m3, "to_backend"), bytes(&m3, "to_client")),
            (REQUEST.len() as u64, DOWNLOAD as u64),
            "[{tag}] totals after the close (counted twice, or lost)"
        );
    });
}

#[test]
fn the_connect_histogram_counts_every_connection_per_backend() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let b2 = Backend::named("b2");
    let mut config = LbConfig::over("epoll", &[&b1, &b2]);
    config.admin = true;
    config.service().balance = "round-robin".to_owned();
    let lb = Ringlb::start(&config);
    const CONNECTIONS: u64 = 6;
    for _ in 0..CONNECTIONS {
        let mut c = connect_from(LOCALHOST, lb.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 3];
        c.read_exact(&mut greeting).expect("greeting");
    }
    let m = wait_metrics(&lb, "every connection established", |m| {
        m.total("ringlb_backend_connections_total") == CONNECTIONS
    });
    for b in ["b1", "b2"] {
        let labels = format!("service=\"web\",backend=\"{b}\"");
        let established = m
            .sample(&format!("ringlb_backend_connections_total{{{labels}}}"))
            .expect("connections_total");
        let count = m.sample(&format!("ringlb_backend_connect_seconds_count{{{labels}}}"));
        let inf = m.sample(&format!(
            "ringlb_backend_connect_seconds_bucket{{{labels},le=\"+Inf\"}}"
        ));
        assert!(established > 0, "round robin skipped {b}");
        assert_eq!(
            (count, inf),
            (Some(established), Some(established)),
            "{b}: histogram count != connections\n{}",
            lb.report()
        );
        // Loopback connects take well under 5 s.
        let le5 = m.sample(&format!(
            "ringlb_backend_connect_seconds_bucket{{{labels},le=\"5\"}}"
        ));
        assert_eq!(le5, Some(established), "{b}");
    }
}

#[test]
fn reload_results_are_counted_and_the_last_one_shown() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let mut config = LbConfig::over("epoll", &[&b1]);
    config.admin = true;
    let good = config.to_toml();
    let mut lb = Ringlb::start(&config);
    let reloads =
        |m: &Metrics, result: &str| m.labelled("ringlb_config_reloads_total", "result", result);
    let m = lb.metrics();
    assert_eq!(
        (
            reloads(&m, "success"),
            reloads(&m, "failure"),
            m.value("ringlb_config_last_reload_successful")
        ),
        (Some(0), Some(0), Some(1))
    );

    lb.rewrite_config("[global]\nadmin = \"127.0.0.1:0\"\n[[service]]\nname = \"web\"\nlisten = [\"not an address\"]\n");
    lb.signal(libc::SIGHUP);
    assert!(
        lb.wait_for_log("reload refused", SHOWS_WITHIN).is_some(),
        "no refusal\n{}",
        lb.report()
    );
    let m = lb.metrics();
    assert_eq!(
        (
            reloads(&m, "success"),
            reloads(&m, "failure"),
            m.value("ringlb_config_last_reload_successful")
        ),
        (Some(0), Some(1), Some(0)),
        "after a refused reload\n{}",
        lb.report()
    );

    lb.rewrite_config(&good);
    lb.signal(libc::SIGHUP);
    assert!(
        lb.wait_for_log("config reloaded", SHOWS_WITHIN).is_some(),
        "no reload\n{}",
        lb.report()
    );
    let m = lb.metrics();
    assert_eq!(
        (
            reloads(&m, "success"),
            reloads(&m, "failure"),
            m.value("ringlb_config_last_reload_successful")
        ),
        (Some(1), Some(1), Some(1)),
        "after a good reload\n{}",
        lb.report()
    );
}

/// An HTTP health endpoint that answers 200 or 503 as `up` says.
pub(crate) fn health_endpoint(up: Arc<AtomicBool>) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let listener = harness::listen(std::net::SocketAddr::new(LOCALHOST, 0));
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    thread::Builder::new()
        .name("health-endpoint".into())
        .stack_size(harness::SMALL_STACK)
        .spawn(move || serve_health(listener, up, stopped))
        .unwrap();
    (addr, stop)
}

fn serve_health(listener: TcpListener, up: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        // Answered even when the head is cut short.
        let _ = read_request_head(&mut s);
        let status = if up.load(Ordering::SeqCst) {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
        );
    }
}

#[test]
fn health_transitions_are_counted_by_the_state_entered() {
    let _shared = harness::shared();
    let up = Arc::new(AtomicBool::new(true));
    let (addr, stop) = health_endpoint(up.clone());
    let mut config = LbConfig::single("epoll", vec![BackendConfig::new("h1", addr)]);
    config.admin = true;
    config.service().health = "kind = \"http\"\npath = \"/health\"\ninterval = \"300ms\"\n\
                               fast_interval = \"300ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2"
        .to_owned();
    let lb = Ringlb::start(&config);
    let transitions = |m: &Metrics, to: &str| {
        m.sample(&format!(
            "ringlb_backend_health_transitions_total{{service=\"web\",backend=\"h1\",to=\"{to}\"}}"
        ))
    };
    let healthy = |m: &Metrics| m.for_backend("ringlb_backend_healthy", "h1");
    let m = wait_metrics(&lb, "h1 up", |m| healthy(m) == Some(1));
    assert_eq!(
        (transitions(&m, "up"), transitions(&m, "down")),
        (Some(1), Some(0)),
        "the first probe: unknown → up\n{}",
        lb.report()
    );
    up.store(false, Ordering::SeqCst);
    let m = wait_metrics(&lb, "h1 down", |m| healthy(m) == Some(0));
    assert_eq!(transitions(&m, "down"), Some(1), "{}", lb.report());
    up.store(true, Ordering::SeqCst);
    let m = wait_metrics(&lb, "h1 up again", |m| healthy(m) == Some(1));
    assert_eq!(
        (transitions(&m, "up"), transitions(&m, "down")),
        (Some(2), Some(1)),
        "{}",
        lb.report()
    );
    stop.store(true, Ordering::SeqCst);
    // Wakes the endpoint's accept so its thread sees `stop`.
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

/// Entries of /proc/PID/fd.
fn fds_of(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count() as u64
}

/// The soft "Max open files" of /proc/PID/limits.
fn soft_nofile_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("soft limit")
}

#[test]
fn process_metrics_match_what_proc_says() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let mut config = LbConfig::over("epoll", &[&b1]);
    config.admin = true;
    let lb = Ringlb::start(&config);
    // Hold a few client connections, so the count is not just start-up's.
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut c = connect_from(LOCALHOST, lb.addr()).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut greeting = [0u8; 3];
            c.read_exact(&mut greeting).expect("greeting");
            c
        })
        .collect();
    let before = fds_of(lb.pid());
    let m = lb.metrics();
    let after = fds_of(lb.pid());
    let text = m.text();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    // The scrape itself holds its connection and the directory it
    // counts: at most two more than around it.
    let open = value("process_open_fds") as u64;
    assert!(
        open + 2 >= before.min(after) && open <= before.max(after) + 2,
        "process_open_fds {open}, /proc says {before} and {after}"
    );
    assert!(open >= 10, "5 clients, 5 backend sockets and more: {open}");
    assert_eq!(value("process_max_fds") as u64, soft_nofile_of(lb.pid()));
    let rss = value("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 1e9, "rss {rss}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start > now - 120.0,
        "start {start}, now {now}"
    );
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert_eq!(m.value("ringlb_connections_active"), Some(5));
    drop(clients);
}
