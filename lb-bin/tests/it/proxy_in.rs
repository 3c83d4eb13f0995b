//! PROXY protocol in (`accept_proxy`): behind a balancer that sends a
//! PROXY header, ringlb hashes the client the header names, not the
//! balancer; bytes after the header reach the backend intact; a header
//! that is bad, late, abandoned or from an untrusted peer closes the
//! connection without a backend connection, counted by reason.
//!
//! The balancer in front is a real HAProxy (`send-proxy`,
//! `send-proxy-v2`; skipped with a message where it is not installed), or
//! another ringlb with `send_proxy` in front, or the test client writing
//! the header itself over a real socket. Which backend a client "should" reach is asked of a plain ringlb
//! over the same backends (Maglev depends only on the backends' names).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, for_each_variant, read_line, read_outcome,
    seeded_bytes, Backend, BackendConfig, Deadline, LbConfig, Metrics, ReadOutcome, Ringlb,
    TempDir, Variant,
};

/// A ringlb over `backends` that takes PROXY headers from `trusted`.
fn proxied(variant: impl Into<Variant>, backends: &[&Backend], trusted: &str) -> LbConfig {
    let mut config = LbConfig::over(variant, backends);
    config.admin = true;
    let extra = &mut config.service().extra;
    extra.push("accept_proxy = true".to_owned());
    extra.push(format!("proxy_trusted = [{trusted:?}]"));
    config
}

/// The three backends of every test here: each says its name, then echoes.
fn backends() -> [Backend; 3] {
    [
        Backend::named("b1"),
        Backend::named("b2"),
        Backend::named("b3"),
    ]
}

/// Which backend a plain ringlb at `lb` sends a client from `src` to.
fn direct(src: IpAddr, lb: SocketAddr) -> String {
    let mut s = connect_from(src, lb).unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    read_line(&mut s).unwrap_or_else(|e| panic!("greeting for {src} from {lb}: {e}"))
}

/// A v1 header for `client` → `dest`.
fn v1(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        dest.ip(),
        client.port(),
        dest.port()
    )
    .into_bytes()
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for IPv4 `client` → `dest`, with a NOOP TLV.
fn v2(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(c), IpAddr::V4(d)) = (client.ip(), dest.ip()) else {
        panic!("v2() writes IPv4 only");
    };
    let mut block = Vec::new();
    block.extend_from_slice(&c.octets());
    block.extend_from_slice(&d.octets());
    block.extend_from_slice(&client.port().to_be_bytes());
    block.extend_from_slice(&dest.port().to_be_bytes());
    block.extend_from_slice(&[0x04, 0, 2, 0, 0]);
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11]);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// A v2 LOCAL header (what a balancer's health check sends).
fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Waits until /metrics shows `want` for every (reason, count) of
/// `ringlb_proxy_header_refused_total{service="web"}`; the last scrape.
fn wait_refusals(lb: &Ringlb, want: &[(&str, u64)], timeout: Duration) -> Metrics {
    let deadline = Deadline::after(timeout);
    loop {
        let m = lb.metrics();
        let value = |reason: &str| {
            m.sample(&format!(
                "ringlb_proxy_header_refused_total{{service=\"web\",reason=\"{reason}\"}}"
            ))
        };
        if want.iter().all(|(r, n)| value(r) == Some(*n)) || deadline.passed() {
            for (r, n) in want {
                assert_eq!(value(r), Some(*n), "refusals for {r}\n{}", lb.report());
            }
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// HAProxy in front

/// A running HAProxy with two TCP frontends on listeners this test made
/// (passed as `fd@`, so no port is guessed): one sending v1 headers to
/// `lb`, one v2. Killed on drop.
struct Haproxy {
    child: Child,
    v1: SocketAddr,
    v2: SocketAddr,
    dir: TempDir,
}

const HAPROXY: &str = "/usr/sbin/haproxy";

impl Haproxy {
    /// None (with a printed reason) where HAProxy is not installed.
    fn start(test: &str, lb: SocketAddr) -> Option<Haproxy> {
        let binary = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            println!("{test}: SKIPPED: HAProxy is not installed ({HAPROXY})");
            return None;
        };
        let l1 = TcpListener::bind("127.0.0.1:0").expect("a listener for HAProxy");
        let l2 = TcpListener::bind("127.0.0.1:0").expect("a listener for HAProxy");
        let (v1, v2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let dir = TempDir::new("haproxy");
        let config = format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend v1\n    bind fd@100\n    default_backend ringlb_v1\n\
             backend ringlb_v1\n    server s1 {lb} send-proxy\n\
             frontend v2\n    bind fd@101\n    default_backend ringlb_v2\n\
             backend ringlb_v2\n    server s1 {lb} send-proxy-v2\n"
        );
        let path = dir.write("haproxy.cfg", &config);
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("a log file");
        let mut cmd = Command::new(binary);
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let (f1, f2) = (l1.as_raw_fd(), l2.as_raw_fd());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec and calls only
            // dup2(2), which is async-signal-safe; it allocates nothing.
            // dup2 gives the copies no close-on-exec flag, so HAProxy
            // inherits them as fds 100 and 101.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(f1, 100) < 0 || libc::dup2(f2, 101) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start HAProxy");
        // HAProxy holds the listeners now; ours close (a connection made
        // before HAProxy runs waits in their backlog).
        drop((l1, l2));
        Some(Haproxy { child, v1, v2, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn behind_haproxy_ringlb_hashes_the_original_client_v1_and_v2() {
    let _shared = harness::shared();
    for_each_engine("proxy_in::behind_haproxy", |engine| {
        let backends = backends();
        let plain = Ringlb::start(&LbConfig::over(engine, &backends.each_ref()));
        let lb = Ringlb::start(&proxied(engine, &backends.each_ref(), "127.0.0.1/32"));
        let Some(haproxy) = Haproxy::start("proxy_in::behind_haproxy", lb.addr()) else {
            return;
        };
        let sources: Vec<IpAddr> = client_sources().into_iter().take(12).collect();
        let mut used = std::collections::BTreeSet::new();
        for src in &sources {
            let expected = direct(*src, plain.addr());
            for (version, front) in [("v1", haproxy.v1), ("v2", haproxy.v2)] {
                let mut s = connect_from(*src, front)
                    .unwrap_or_else(|e| panic!("[{engine}] connect to HAProxy: {e}"));
                let got = read_line(&mut s).unwrap_or_else(|e| {
                    panic!(
                        "[{engine}] {version} greeting for {src}: {e}\n{}\nHAProxy: {}",
                        lb.report(),
                        haproxy.log()
                    )
                });
                assert_eq!(
                    got, expected,
                    "[{engine}] {src} through HAProxy {version} reached {got}, directly {expected}"
                );
                // And the stream works both ways after the header.
                s.write_all(b"ping\n").unwrap();
                assert_eq!(read_line(&mut s).unwrap(), "ping");
                used.insert(got);
            }
        }
        // HAProxy itself connects from 127.0.0.1: had ringlb hashed it,
        // every client would have landed on one backend.
        assert!(
            used.len() > 1,
            "[{engine}] all {} clients on {used:?}",
            sources.len()
        );
        let m = wait_refusals(&lb, &[("untrusted", 0), ("malformed", 0)], Duration::ZERO);
        assert_eq!(m.total("ringlb_proxy_header_refused_total"), 0);
    });
}

#[test]
fn behind_another_ringlb_with_send_proxy_the_inner_one_hashes_and_logs_the_original_client() {
    let _shared = harness::shared();
    for_each_engine("proxy_in::ringlb_behind_ringlb", |engine| {
        let backends = backends();
        let plain = Ringlb::start(&LbConfig::over(engine, &backends.each_ref()));
        let dir = TempDir::new("proxy-in-inner-log");
        let log = dir.path().join("access.log");
        let mut inner_config = proxied(engine, &backends.each_ref(), "127.0.0.1/32");
        inner_config.global_extra = vec![format!("access_log = {:?}", log.display().to_string())];
        let inner = Ringlb::start(&inner_config);
        let sources: Vec<IpAddr> = client_sources().into_iter().take(12).collect();
        for version in SEND_PROXY {
            let outer_backend = vec![BackendConfig::new("inner", inner.addr())];
            let mut config = LbConfig::single(engine, outer_backend);
            config
                .service()
                .extra
                .push(format!("send_proxy = {version:?}"));
            let outer = Ringlb::start(&config);
            let mut used = std::collections::BTreeSet::new();
            for src in &sources {
                let expected = direct(*src, plain.addr());
                let mut s = connect_from(*src, outer.addr())
                    .unwrap_or_else(|e| panic!("[{engine}] connect to the outer ringlb: {e}"));
                let got = read_line(&mut s).unwrap_or_else(|e| {
                    panic!(
                        "[{engine}] {version} greeting for {src}: {e}\nouter: {}\ninner: {}",
                        outer.report(),
                        inner.report()
                    )
                });
                assert_eq!(
                    got, expected,
                    "[{engine}] {src} through ringlb ({version}) reached {got}, directly {expected}"
                );
                s.write_all(b"ping\n").unwrap();
                assert_eq!(read_line(&mut s).unwrap(), "ping");
                // The inner one's access log names the client, port and
                // all, and the backend it chose.
                let me = s.local_addr().unwrap();
                drop(s);
                let r = crate::access_log::wait_record(&inner, &log, "text", me);
                assert_eq!(r["backend"], got, "[{engine}] {version} {r:?}");
                used.insert(got);
            }
            // The outer ringlb connects from 127.0.0.1: had the inner one
            // hashed that, every client would have landed on one backend.
            assert!(
                used.len() > 1,
                "[{engine}] {version}: all {} clients on {used:?}",
                sources.len()
            );
        }
        let m = wait_refusals(
            &inner,
            &[("untrusted", 0), ("malformed", 0)],
            Duration::ZERO,
        );
        assert_eq!(m.total("ringlb_proxy_header_refused_total"), 0);
    });
}

/// The outer ringlb's `send_proxy` in the ringlb-behind-ringlb test.
const SEND_PROXY: [&str; 2] = ["v1", "v2"];

// ---------------------------------------------------------------------------
// Headers written by the client (what a ringlb with send_proxy would send)

#[test]
fn the_header_names_the_client_and_the_bytes_after_it_arrive_intact() {
    let _shared = harness::shared();
    for_each_variant("proxy_in::bytes_after_the_header", |variant| {
        let backends = backends();
        let plain = Ringlb::start(&LbConfig::over(variant, &backends.each_ref()));
        let lb = Ringlb::start(&proxied(variant, &backends.each_ref(), "127.0.0.2/32"));
        let payload = seeded_bytes(13, 256 * 1024);
        for (n, last) in (20..=27u8).enumerate() {
            let client = SocketAddr::new(ip(last), 40_000 + last as u16);
            let expected = direct(client.ip(), plain.addr());
            let mut header = if n % 2 == 0 {
                v1(client, lb.addr())
            } else {
                v2(client, lb.addr())
            };
            // The header and the first bytes in one segment.
            header.extend_from_slice(&payload[..1000]);
            let mut s = connect_from(ip(2), lb.addr()).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(&header).unwrap();
            let got = read_line(&mut s).unwrap_or_else(|e| {
                panic!("[{variant}] greeting for {client}: {e}\n{}", lb.report())
            });
            assert_eq!(got, expected, "[{variant}] header client {client}");
            // The rest, echoed back whole and in order.
            let writer = {
                let mut w = s.try_clone().unwrap();
                let rest = payload[1000..].to_vec();
                std::thread::spawn(move || w.write_all(&rest))
            };
            let mut echoed = vec![0u8; payload.len()];
            s.read_exact(&mut echoed)
                .unwrap_or_else(|e| panic!("[{variant}] echo for {client}: {e}"));
            writer.join().unwrap().unwrap();
            assert!(
                echoed == payload,
                "[{variant}] the bytes after the header changed"
            );
        }
    });
}

#[test]
fn a_header_split_byte_by_byte_with_pauses_is_read() {
    let _shared = harness::shared();
    for_each_engine("proxy_in::split_header", |engine| {
        let backends = backends();
        let plain = Ringlb::start(&LbConfig::over(engine, &backends.each_ref()));
        let lb = Ringlb::start(&proxied(engine, &backends.each_ref(), "127.0.0.2/32"));
        for (version, client) in [("v1", ip(31)), ("v2", ip(32))] {
            let client = SocketAddr::new(client, 5555);
            let header = match version {
                "v1" => v1(client, lb.addr()),
                _ => v2(client, lb.addr()),
            };
            let expected = direct(client.ip(), plain.addr());
            let mut s = connect_from(ip(2), lb.addr()).unwrap();
            s.set_nodelay(true).unwrap();
            for b in &header {
                s.write_all(std::slice::from_ref(b)).unwrap();
                // A pause: each byte its own segment, each a new edge.
                std::thread::sleep(Duration::from_millis(5));
            }
            s.write_all(b"after\n").unwrap();
            let got = read_line(&mut s).unwrap_or_else(|e| {
                panic!("[{engine}] {version} split header: {e}\n{}", lb.report())
            });
            assert_eq!(got, expected, "[{engine}] {version} split header");
            assert_eq!(read_line(&mut s).unwrap(), "after");
        }
    });
}

#[test]
fn a_v2_local_header_is_served_with_the_peers_own_address() {
    let _shared = harness::shared();
    for_each_engine("proxy_in::v2_local", |engine| {
        let backends = backends();
        let plain = Ringlb::start(&LbConfig::over(engine, &backends.each_ref()));
        let lb = Ringlb::start(&proxied(engine, &backends.each_ref(), "127.0.0.0/8"));
        for last in [2u8, 3, 4, 5] {
            let expected = direct(ip(last), plain.addr());
            let mut s = connect_from(ip(last), lb.addr()).unwrap();
            s.write_all(&v2_local()).unwrap();
            let got = read_line(&mut s)
                .unwrap_or_else(|e| panic!("[{engine}] LOCAL from {}: {e}", ip(last)));
            assert_eq!(got, expected, "[{engine}] LOCAL from {}", ip(last));
            // The header was read, not passed on: the echo is the bytes
            // after it alone.
            s.write_all(b"after\n").unwrap();
            assert_eq!(read_line(&mut s).unwrap(), "after", "[{engine}] LOCAL");
        }
    });
}

// ---------------------------------------------------------------------------
// Refusals

/// How a refused client's connection ends, and when: it must end, with
/// no byte from any backend.
fn ended(s: &mut TcpStream) -> (ReadOutcome, Instant) {
    let mut buf = [0u8; 64];
    let outcome = read_outcome(s, &mut buf);
    (outcome, Instant::now())
}

#[test]
fn bad_late_abandoned_and_untrusted_headers_reach_no_backend_and_are_counted() {
    let _shared = harness::shared();
    for_each_engine("proxy_in::refusals", |engine| {
        let backends = backends();
        let mut config = proxied(engine, &backends.each_ref(), "127.0.0.2/32");
        config
            .service()
            .extra
            .push("proxy_header_timeout = \"500ms\"".to_owned());
        let lb = Ringlb::start(&config);
        let dest = lb.addr();

        // Untrusted: 127.0.0.3 with a perfect header.
        // It is reset at once: possibly before connect() returned, which
        // then reports the reset (seen under the full suite).
        let mut untrusted = match connect_from(ip(3), dest) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("[{engine}] untrusted connect: {e}"),
        };
        if let Some(s) = &mut untrusted {
            let _ = s.write_all(&v1(SocketAddr::new(ip(9), 1), dest));
        }
        // Garbage, an oversized v1 line, a wrong v2 version.
        let mut garbage = connect_from(ip(2), dest).unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut oversized = connect_from(ip(2), dest).unwrap();
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(200, b'x');
        oversized.write_all(&line).unwrap();
        let mut version = connect_from(ip(2), dest).unwrap();
        let mut bad = v2(SocketAddr::new(ip(9), 1), dest);
        bad[12] = 0x31;
        version.write_all(&bad).unwrap();
        // Closed early: half a header, then FIN.
        let mut early = connect_from(ip(2), dest).unwrap();
        early.write_all(b"PROXY TCP4 127.0.0.9 ").unwrap();
        early.shutdown(std::net::Shutdown::Write).unwrap();
        let untrusted = untrusted.as_mut().map(|s| ("untrusted", s));
        for (what, s) in untrusted.into_iter().chain([
            ("garbage", &mut garbage),
            ("oversized", &mut oversized),
            ("version", &mut version),
            ("closed early", &mut early),
        ]) {
            let (outcome, _) = ended(s);
            assert!(
                matches!(outcome, ReadOutcome::Reset | ReadOutcome::Eof),
                "[{engine}] {what}: {outcome:?}\n{}",
                lb.report()
            );
        }

        // Never whole: closed after proxy_header_timeout, not before.
        let mut slow = connect_from(ip(2), dest).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let sent = Instant::now();
        slow.write_all(b"PROXY TCP4 127.0.0.9").unwrap();
        let (outcome, at) = ended(&mut slow);
        let took = at - sent;
        assert!(
            matches!(outcome, ReadOutcome::Reset | ReadOutcome::Eof),
            "[{engine}] slow header: {outcome:?} after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(450) && took <= Duration::from_millis(1000),
            "[{engine}] a header not whole in 500 ms was closed after {took:?}"
        );

        wait_refusals(
            &lb,
            &[
                ("untrusted", 1),
                ("malformed", 1),
                ("oversized", 1),
                ("version", 1),
                ("closed", 1),
                ("timeout", 1),
                ("command", 0),
                ("family", 0),
            ],
            Duration::from_secs(5),
        );
        let reached: usize = backends.iter().map(Backend::accepted).sum();
        assert_eq!(reached, 0, "[{engine}] a refused client reached a backend");
        // And the service still serves a good header afterwards.
        let mut ok = connect_from(ip(2), dest).unwrap();
        ok.write_all(&v1(SocketAddr::new(ip(9), 1), dest)).unwrap();
        read_line(&mut ok).unwrap_or_else(|e| panic!("[{engine}] a good header after: {e}"));
    });
}
