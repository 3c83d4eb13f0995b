//! SNI routing on a shared listener (issue 14 §1): several services on one
//! address and port, chosen by the TLS server name of the client's
//! ClientHello, the bytes untouched (the certificates of the backends
//! verify end to end through ringlb).
//!
//! Backends are TLS servers (rustls) with certificates from a test CA made
//! by rcgen; each answers an HTTP request with its pool's name. Clients
//! are the real `openssl s_client` and `curl` (skipped with a message when
//! missing) and a rustls client whose ClientHello is written one byte per
//! segment. Refusals are checked three ways: the client sees a reset, no
//! backend accepted a connection, and `ringlb_sni_refused_total` counts the
//! reason.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::access_log::wait_record;
use crate::harness::{
    for_each_engine, for_each_variant, read_request_head, run_to_exit, Backend, BackendConfig,
    Deadline, LbConfig, Ringlb, TempDir, Variant, IO_TIMEOUT, LOCALHOST,
};
use crate::test_ca::TestCa;
use crate::upgrade::{free_port, upgrade, Proc};

/// A TLS backend of pool `pool`: terminates TLS with `tls`, reads an HTTP
/// request head and answers `pool=<pool>` (HTTP/1.0, then closes).
fn tls_backend(pool: &str, tls: Arc<rustls::ServerConfig>) -> Backend {
    let body = format!("pool={pool}\n");
    Backend::spawn(pool, LOCALHOST, move |tcp| {
        let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&tls)) else {
            return;
        };
        let mut s = rustls::StreamOwned::new(conn, tcp);
        if !read_request_head(&mut s) {
            return;
        }
        let reply = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes());
        s.conn.send_close_notify();
        let _ = s.flush();
    })
}

/// The services of the tests on one shared address `addr`: `art`
/// (art.example.com), `xray` (*.example.com) and, with `default`, `rest`
/// (sni_default); admin on, `sni_timeout` as given.
fn config(
    engine: impl Into<Variant>,
    addr: SocketAddr,
    pools: &[(&str, &Backend, &str)],
    timeout: &str,
) -> LbConfig {
    let mut config = LbConfig::single(engine, Vec::new());
    config.admin = true;
    let template = config.services[0].clone();
    config.services = pools
        .iter()
        .map(|(name, backend, keys)| {
            let mut s = template.clone();
            s.name = (*name).to_owned();
            s.listen = vec![addr.to_string()];
            s.extra = vec![(*keys).to_owned(), format!("sni_timeout = {timeout:?}")];
            s.backends = vec![BackendConfig::from(*backend)];
            s
        })
        .collect();
    config
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `openssl s_client` to `addr` asking for `name` (None: no server name),
/// verifying the chain against the CA (and that the certificate is for
/// `name`, with `own_name`), sending a request: (success, what it
/// printed).
fn s_client(addr: SocketAddr, name: Option<&str>, own_name: bool, ca: &Path) -> (bool, String) {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "10",
        "openssl",
        "s_client",
        "-quiet",
        "-verify_return_error",
    ])
    .arg("-connect")
    .arg(addr.to_string())
    .arg("-CAfile")
    .arg(ca);
    match name {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    if let (Some(name), true) = (name, own_name) {
        cmd.args(["-verify_hostname", name]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    // -quiet implies -ign_eof: s_client reads on after its stdin ends,
    // until the server closes.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let out = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `curl` to https://`name`:port/ resolved to `addr`, verifying against
/// the CA: (success, body and errors).
fn curl(addr: SocketAddr, name: &str, ca: &Path) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:{}", addr.port(), addr.ip()))
        .arg(format!("https://{name}:{}/", addr.port()))
        .output()
        .expect("run curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A real ClientHello for `name`, as rustls writes it, and the client
/// that wrote it (to finish the handshake after the hello was sent by
/// hand).
fn hello(pki: &TestCa, name: &str) -> (rustls::ClientConnection, Vec<u8>) {
    let server = ServerName::try_from(name.to_owned()).expect("server name");
    let mut conn = rustls::ClientConnection::new(pki.rustls_client(), server).expect("client");
    let mut bytes = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut bytes).expect("hello bytes");
    }
    (conn, bytes)
}

/// Reads until EOF or an error: whether the connection was reset (and
/// how long that took), and the bytes read.
fn read_end(mut s: TcpStream) -> (io::Result<()>, Vec<u8>) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got).map(|_| ());
    (r, got)
}

fn refused(lb: &Ringlb, owner: &str, reason: &str) -> u64 {
    lb.metrics()
        .sample(&format!(
            "ringlb_sni_refused_total{{service=\"{owner}\",reason=\"{reason}\"}}"
        ))
        .unwrap_or(0)
}

/// Waits (bounded) until `ringlb_sni_refused_total` of `reason` reaches `n`.
fn wait_refused(lb: &Ringlb, owner: &str, reason: &str, n: u64) -> u64 {
    let deadline = Deadline::after(Duration::from_secs(5));
    loop {
        let got = refused(lb, owner, reason);
        if got >= n || deadline.passed() {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_names_reach_two_pools_whose_certificates_verify_end_to_end() {
    let _shared = crate::harness::shared();
    if !installed("openssl") || !installed("curl") {
        println!("sni two pools: SKIPPED: needs openssl and curl");
        return;
    }
    let pki = TestCa::new("sni-pki");
    let art = tls_backend("art", pki.rustls_server(&["art.example.com"]));
    let xray = tls_backend("xray", pki.rustls_server(&["*.example.com"]));
    let rest = tls_backend("rest", pki.rustls_server(&["rest.example.org"]));
    let ca = pki.ca_file();
    for_each_engine("sni two pools", |engine| {
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let lb = Ringlb::start(&config(
            engine,
            addr,
            &[
                ("art", &art, "sni = [\"art.example.com\"]"),
                ("xray", &xray, "sni = [\"*.example.com\"]"),
                ("rest", &rest, "sni_default = true"),
            ],
            "3s",
        ));
        let before = (art.accepted(), xray.accepted(), rest.accepted());

        let (ok, out) = s_client(addr, Some("art.example.com"), true, &ca);
        assert!(
            ok && out.contains("pool=art"),
            "[{engine}] s_client art: {out}"
        );
        let (ok, out) = curl(addr, "art.example.com", &ca);
        assert!(ok && out.contains("pool=art"), "[{engine}] curl art: {out}");
        // Case-insensitive, and a wildcard takes one more label.
        let (ok, out) = curl(addr, "XRAY.Example.com", &ca);
        assert!(
            ok && out.contains("pool=xray"),
            "[{engine}] curl xray: {out}"
        );
        let (ok, out) = s_client(addr, Some("ci.example.com"), true, &ca);
        assert!(
            ok && out.contains("pool=xray"),
            "[{engine}] s_client ci: {out}"
        );
        // Unknown names and no name at all: the default pool (its
        // certificate's chain verifies; the name is not its own).
        let (ok, out) = s_client(addr, Some("a.b.example.com"), false, &ca);
        assert!(
            ok && out.contains("pool=rest"),
            "[{engine}] s_client a.b: {out}"
        );
        let (ok, out) = s_client(addr, None, false, &ca);
        assert!(
            ok && out.contains("pool=rest"),
            "[{engine}] s_client no name: {out}"
        );
        println!(
            "[{engine}] art.example.com → art, XRAY.Example.com and ci.example.com → xray, \
             a.b.example.com and no name → rest (default); certificates verified by openssl and curl"
        );
        assert_eq!(
            (art.accepted(), xray.accepted(), rest.accepted()),
            (before.0 + 2, before.1 + 2, before.2 + 2),
            "[{engine}] one backend connection per client, in the right pool"
        );
        let m = lb.metrics();
        for (service, n) in [("art", 2), ("xray", 2), ("rest", 2)] {
            assert_eq!(
                m.labelled("ringlb_service_accepted_total", "service", service),
                Some(n),
                "[{engine}] {service}'s accepted count is its routed clients\n{}",
                m.text()
            );
        }
    });
}

#[test]
fn without_a_default_unknown_names_and_non_tls_are_refused_without_a_backend() {
    let _shared = crate::harness::shared();
    let pki = TestCa::new("sni-pki");
    let art = tls_backend("art", pki.rustls_server(&["art.example.com"]));
    let xray = tls_backend("xray", pki.rustls_server(&["*.example.com"]));
    for_each_engine("sni refusals", |engine| {
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let log = TempDir::new("sni-log");
        let log_path = log.path().join("access.log");
        let mut config = config(
            engine,
            addr,
            &[
                ("art", &art, "sni = [\"art.example.com\"]"),
                ("xray", &xray, "sni = [\"*.example.com\"]"),
            ],
            "3s",
        );
        config.global_extra = vec![format!("access_log = {:?}", log_path.display().to_string())];
        let lb = Ringlb::start(&config);
        let before = art.accepted() + xray.accepted();

        // An unknown name, from a real ClientHello.
        let (_, bytes) = hello(&pki, "nobody.test");
        let mut s = TcpStream::connect(addr).unwrap();
        let client = s.local_addr().unwrap();
        s.write_all(&bytes).unwrap();
        let (r, got) = read_end(s);
        let kind = r.as_ref().map_err(io::Error::kind).err();
        assert_eq!(
            (kind, got.len()),
            (Some(io::ErrorKind::ConnectionReset), 0),
            "[{engine}] unknown name: reset"
        );
        assert_eq!(wait_refused(&lb, "art", "unknown_name", 1), 1, "[{engine}]");
        // Logged under the service owning the listener, no backend.
        let r = wait_record(&lb, &log_path, "text", client);
        assert_eq!(
            (
                r["cause"].as_str(),
                r["service"].as_str(),
                r["backend_address"].as_str()
            ),
            ("sni_refused", "art", "-"),
            "[{engine}] {r:?}"
        );

        // Plain HTTP.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: art.example.com\r\n\r\n")
            .unwrap();
        let (r, _) = read_end(s);
        let kind = r.as_ref().map_err(io::Error::kind).err();
        assert_eq!(
            kind,
            Some(io::ErrorKind::ConnectionReset),
            "[{engine}] not TLS"
        );
        assert_eq!(wait_refused(&lb, "art", "not_tls", 1), 1, "[{engine}]");

        // A client that leaves before its hello is whole.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&bytes[..bytes.len() / 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = read_end(s);
        assert_eq!(wait_refused(&lb, "art", "closed", 1), 1, "[{engine}]");

        // A record declaring a 64 KiB ClientHello: oversized, judged from
        // the declared length.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[22, 3, 1, 0x40, 0, 1, 0, 0xff, 0xff]).unwrap();
        let (r, _) = read_end(s);
        let kind = r.as_ref().map_err(io::Error::kind).err();
        assert_eq!(
            kind,
            Some(io::ErrorKind::ConnectionReset),
            "[{engine}] oversized"
        );
        assert_eq!(wait_refused(&lb, "art", "oversized", 1), 1, "[{engine}]");

        // The cost of a refusal, as a client sees it: connect, send a
        // hello for an unknown name, get the reset (bounded: 200 rounds).
        let mut took = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(&bytes).unwrap();
            let (r, _) = read_end(s);
            assert!(r.is_err(), "[{engine}] refused");
            took.push(t.elapsed());
        }
        took.sort();
        println!(
            "[{engine}] refusal (unknown name) seen by the client: median {:?}, p99 {:?}, max {:?} over 200",
            took[100], took[198], took[199]
        );
        assert_eq!(
            wait_refused(&lb, "art", "unknown_name", 201),
            201,
            "[{engine}]"
        );

        assert_eq!(
            art.accepted() + xray.accepted(),
            before,
            "[{engine}] no backend connection for a refused client"
        );
        let m = lb.metrics();
        assert_eq!(
            m.sample("ringlb_connections_refused_total{service=\"art\",reason=\"sni_refused\"}"),
            Some(204),
            "[{engine}]\n{}",
            m.text()
        );
        println!("[{engine}] unknown name, plain HTTP, half a hello then FIN, oversized: reset, no backend connection, counted by reason");
    });
}

#[test]
fn a_hello_written_byte_by_byte_still_routes_and_a_stalled_one_is_closed_at_the_timeout() {
    let _shared = crate::harness::shared();
    let pki = TestCa::new("sni-pki");
    let art = tls_backend("art", pki.rustls_server(&["art.example.com"]));
    let xray = tls_backend("xray", pki.rustls_server(&["*.example.com"]));
    for_each_variant("sni byte by byte", |engine| {
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let lb = Ringlb::start(&config(
            engine,
            addr,
            &[
                ("art", &art, "sni = [\"art.example.com\"]"),
                ("xray", &xray, "sni = [\"*.example.com\"]"),
            ],
            "1s",
        ));

        // One byte per write, each its own segment (TCP_NODELAY), then
        // the rest of the handshake by rustls, verifying the backend.
        let (conn, bytes) = hello(&pki, "xray.example.com");
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let started = Instant::now();
        for b in &bytes {
            tcp.write_all(std::slice::from_ref(b)).unwrap();
        }
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        let r = tls.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.contains("pool=xray"),
            "[{engine}] byte by byte: {r:?} {reply:?}"
        );
        println!(
            "[{engine}] a {}-byte ClientHello in {} one-byte writes routed to xray, verified, in {:?}",
            bytes.len(),
            bytes.len(),
            started.elapsed()
        );

        // Half a hello, then nothing: closed at sni_timeout (1s).
        let before = art.accepted() + xray.accepted();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&bytes[..bytes.len() / 2]).unwrap();
        let sent = Instant::now();
        let (r, _) = read_end(s);
        let took = sent.elapsed();
        let kind = r.as_ref().map_err(io::Error::kind).err();
        assert_eq!(
            kind,
            Some(io::ErrorKind::ConnectionReset),
            "[{engine}] stalled"
        );
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(3),
            "[{engine}] a stalled hello is closed at sni_timeout = 1s, not after {took:?}"
        );
        println!("[{engine}] half a hello then silence: reset after {took:?} (sni_timeout = 1s)");
        assert_eq!(wait_refused(&lb, "art", "timeout", 1), 1, "[{engine}]");
        assert_eq!(art.accepted() + xray.accepted(), before, "[{engine}]");
    });
}

#[test]
fn sharing_conflicts_are_config_errors_with_their_position() {
    let dir = TempDir::new("sni-check");
    let service = |name: &str, keys: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:8443\"]\n{keys}\n\
             [[service.backend]]\nname = \"b\"\naddress = \"127.0.0.1:9\"\n\n"
        )
    };
    let art = service("art", "sni = [\"art.example.com\"]");
    for (second, line_col, want) in [
        (
            service("again", "sni = [\"ART.example.com\"]"),
            "12:8",
            "services[1].sni[0]: \"art.example.com\" is already routed to service \"art\"",
        ),
        (
            service("plain", ""),
            "11:11",
            "services[1].listen[0]: 127.0.0.1:8443 is already a listen address of service \"art\"",
        ),
    ] {
        let file = dir.write("ringlb.toml", &format!("{art}{second}"));
        let done = run_to_exit(&["check".as_ref(), "--config".as_ref(), file.as_os_str()]);
        assert!(!done.status.success(), "{second}");
        let want = format!("{}:{line_col}: {want}", file.display());
        assert!(
            done.stderr.contains(&want),
            "expected `{want}` in:\n{}",
            done.stderr
        );
        println!("{}", done.stderr.trim());
    }
    let one = service("one", "sni_default = true");
    let two = service("two", "sni = [\"x.org\"]\nsni_default = true");
    let file = dir.write("ringlb.toml", &format!("{one}{two}"));
    let done = run_to_exit(&["check".as_ref(), "--config".as_ref(), file.as_os_str()]);
    let want = format!(
        "{}:13:15: services[1].sni_default: service \"one\" is already the sni_default",
        file.display()
    );
    assert!(
        done.stderr.contains(&want),
        "expected `{want}` in:\n{}",
        done.stderr
    );
    println!("{}", done.stderr.trim());
}

/// A whole TLS exchange through `addr` with rustls asking for `name`
/// (after `preface`, sent first in clear): the reply, or why it failed.
fn fetch(pki: &TestCa, addr: SocketAddr, name: &str, preface: &[u8]) -> io::Result<String> {
    let (conn, bytes) = hello(pki, name);
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.write_all(preface)?;
    tcp.write_all(&bytes)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[test]
fn a_reload_changes_the_routes_of_a_shared_address_at_once() {
    let _shared = crate::harness::shared();
    let pki = TestCa::new("sni-pki");
    let art = tls_backend(
        "art",
        pki.rustls_server(&["art.example.com", "ci.example.com"]),
    );
    let xray = tls_backend("xray", pki.rustls_server(&["*.example.com"]));
    for_each_engine("sni reload", |engine| {
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let pools = |art_names: &str| {
            config(
                engine,
                addr,
                &[
                    ("art", &art, art_names),
                    ("xray", &xray, "sni = [\"*.example.com\"]"),
                ],
                "3s",
            )
        };
        let mut lb = Ringlb::start(&pools("sni = [\"art.example.com\"]"));
        let got = fetch(&pki, addr, "ci.example.com", b"").unwrap();
        assert!(got.contains("pool=xray"), "[{engine}] before: {got}");
        lb.rewrite_config(&pools("sni = [\"art.example.com\", \"ci.example.com\"]").to_toml());
        lb.signal(libc::SIGHUP);
        assert!(
            lb.wait_for_log("config reloaded", Duration::from_secs(10))
                .is_some(),
            "[{engine}] no `config reloaded`\n{}",
            lb.report()
        );
        // Published with the snapshot the reload log line follows: the
        // next client sees the new routes.
        let got = fetch(&pki, addr, "ci.example.com", b"").unwrap();
        assert!(got.contains("pool=art"), "[{engine}] after: {got}");
        println!("[{engine}] ci.example.com: xray, then art after a reload that listed it on art");
    });
}

#[test]
fn behind_a_balancer_the_proxy_header_comes_first_then_the_hello_routes() {
    let _shared = crate::harness::shared();
    let pki = TestCa::new("sni-pki");
    let art = tls_backend("art", pki.rustls_server(&["art.example.com"]));
    let xray = tls_backend("xray", pki.rustls_server(&["*.example.com"]));
    for_each_engine("sni after proxy header", |engine| {
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let mut config = config(
            engine,
            addr,
            &[
                ("art", &art, "sni = [\"art.example.com\"]"),
                ("xray", &xray, "sni = [\"*.example.com\"]"),
            ],
            "3s",
        );
        config.services[0].extra.extend([
            "accept_proxy = true".to_owned(),
            "proxy_trusted = [\"127.0.0.0/8\"]".to_owned(),
        ]);
        let log = TempDir::new("sni-log");
        let log_path = log.path().join("access.log");
        config.global_extra = vec![format!("access_log = {:?}", log_path.display().to_string())];
        let lb = Ringlb::start(&config);
        for (name, pool, port) in [
            ("xray.example.com", "xray", 40000),
            ("art.example.com", "art", 40001),
        ] {
            let header = format!("PROXY TCP4 10.1.2.3 127.0.0.1 {port} 443\r\n");
            let got = fetch(&pki, addr, name, header.as_bytes()).unwrap();
            assert!(got.contains(&format!("pool={pool}")), "[{engine}] {got}");
            // The record names the picked service and the header's client.
            let client = SocketAddr::from(([10, 1, 2, 3], port));
            let r = wait_record(&lb, &log_path, "text", client);
            assert_eq!(r["service"], pool, "[{engine}] {r:?}");
            assert_eq!(r["listen"], addr.to_string(), "[{engine}] {r:?}");
        }
        // Without the header: refused by the PROXY rules, no backend.
        let before = art.accepted() + xray.accepted();
        assert!(fetch(&pki, addr, "art.example.com", b"").is_err());
        assert_eq!(art.accepted() + xray.accepted(), before, "[{engine}]");
        drop(lb);
        println!("[{engine}] PROXY header then ClientHello: routed by name");
    });
}

#[test]
fn an_upgrade_hands_over_the_shared_listener_and_routing_goes_on() {
    let _shared = crate::harness::shared();
    let pki = Arc::new(TestCa::new("sni-pki"));
    let art = tls_backend("art", pki.rustls_server(&["art.example.com"]));
    let xray = tls_backend("xray", pki.rustls_server(&["*.example.com"]));
    for_each_engine("sni upgrade", |engine| {
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let mut lb_config = config(
            engine,
            addr,
            &[
                ("art", &art, "sni = [\"art.example.com\"]"),
                ("xray", &xray, "sni = [\"*.example.com\"]"),
            ],
            "3s",
        );
        lb_config.admin = false;
        let dir = TempDir::new("sni-upgrade");
        let path = dir.write("ringlb.toml", &lb_config.to_toml());
        let sock = dir.path().join("upgrade.sock");
        let mut first = Proc::start(&path, &sock);
        assert_eq!(first.wait_listening(), addr, "{}", first.log());

        // TLS clients of both names, one after another, while the new
        // process takes the socket over (bounded: 60 s, stopped after).
        let stop = Arc::new(AtomicBool::new(false));
        let clients = {
            let (pki, stop) = (Arc::clone(&pki), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Deadline::after(Duration::from_secs(60));
                let (mut done, mut errors) = (0usize, Vec::new());
                while !stop.load(Ordering::SeqCst) && !deadline.passed() {
                    let (name, pool) =
                        [("art.example.com", "art"), ("ci.example.com", "xray")][done % 2];
                    match fetch(&pki, addr, name, b"") {
                        Ok(got) if got.contains(&format!("pool={pool}")) => {}
                        other => errors.push(format!("{name}: {other:?}")),
                    }
                    done += 1;
                }
                (done, errors)
            })
        };
        art.wait_accepted(art.accepted() + 20, Duration::from_secs(10));
        let (new, took) = upgrade(&path, &sock, &first);
        xray.wait_accepted(xray.accepted() + 20, Duration::from_secs(10));
        stop.store(true, Ordering::SeqCst);
        let (done, errors) = clients.join().unwrap();
        assert!(
            errors.is_empty(),
            "[{engine}] {} of {done} TLS clients failed across the upgrade: {:?}\n--- new ---\n{}",
            errors.len(),
            &errors[..errors.len().min(5)],
            new.log()
        );
        // The old process drained and left: the new one alone routes.
        let status = first.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "[{engine}] old: {status:?}\n{}",
            first.log()
        );
        for (name, pool) in [("art.example.com", "art"), ("ci.example.com", "xray")] {
            let got = fetch(&pki, addr, name, b"").unwrap();
            assert!(
                got.contains(&format!("pool={pool}")),
                "[{engine}] after: {got}"
            );
        }
        println!(
            "[{engine}] {done} TLS clients (two names) across an upgrade (switch {took:?}): none failed, each reached its pool"
        );
    });
}
