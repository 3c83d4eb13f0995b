//! PROXY protocol out (`send_proxy`), against real receivers: an nginx
//! backend (`listen … proxy_protocol`) and an HAProxy one (`bind …
//! accept-proxy`), both started here by pid on loopback ports, see each
//! loopback client's own address and port (127.0.0.2, 127.0.0.3, ::1)
//! through ringlb with v1 and v2, on both engines and every forwarding
//! mode; the exact bytes on the wire before the first client byte; a
//! backend's `send_proxy = "off"` override; and health probes with
//! `[service.health] send_proxy = true` passing against an nginx that
//! requires the header (and failing without it).
//!
//! ringlb's own IPv6 listeners are IPV6_V6ONLY, so no IPv4-mapped client
//! reaches them; the header's normalisation of such an address (a socket
//! from systemd with `BindIPv6Only=both`) is a unit test of
//! `proxy_header::encode`.
//!
//! nginx and HAProxy come from the distribution (`.ci/run` installs them);
//! a machine without them skips those tests, saying so.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::harness::{
    self, connect_from, for_each_engine, Backend, Deadline, LbConfig, Ringlb, TempDir, Variant,
    LOCALHOST,
};

const V6_LOCALHOST: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
/// How long nginx or HAProxy may take to listen.
const SERVER_READY: Duration = Duration::from_secs(10);
/// Ports the soak test on this machine owns; never used here.
const RESERVED: std::ops::RangeInclusive<u16> = 29080..=29089;

/// A receiver of PROXY headers (nginx or HAProxy) run by this test: its
/// process (stopped on drop, by its pid), its directory and its listeners.
struct Receiver {
    what: &'static str,
    child: Child,
    dir: TempDir,
    v4: SocketAddr,
    /// None when this machine has no IPv6 loopback.
    v6: Option<SocketAddr>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // SIGTERM (both stop at once on it; nginx's master takes its
        // worker with it), then SIGKILL if it lingers.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Deadline::after(Duration::from_secs(5));
        while !deadline.passed() {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `binary` as it can be run here: on the PATH, else in /usr/sbin (where
/// Debian puts nginx and haproxy, off an ordinary user's PATH).
fn installed(binary: &str) -> Option<PathBuf> {
    [PathBuf::from(binary), Path::new("/usr/sbin").join(binary)]
        .into_iter()
        .find(|path| {
            Command::new(path)
                .arg("-v")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
}

fn ipv6_loopback() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A port free on `ip` now (the receiver binds it next; a lost race is
/// retried by [`start_receiver`]), outside the soak test's range.
fn free_port(ip: IpAddr) -> u16 {
    loop {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        if !RESERVED.contains(&port) {
            return port;
        }
    }
}

/// Starts a receiver: `config(dir, v4, v6)` writes its config and returns
/// the command; waits until every listener accepts. A port taken between
/// choosing and binding it is retried with new ports.
fn start_receiver(
    what: &'static str,
    config: impl Fn(&Path, SocketAddr, Option<SocketAddr>) -> Command,
) -> Receiver {
    let v6_ok = ipv6_loopback();
    for _ in 0..5 {
        let dir = TempDir::new(what);
        let v4 = SocketAddr::new(LOCALHOST, free_port(LOCALHOST));
        let v6 = v6_ok.then(|| SocketAddr::new(V6_LOCALHOST, free_port(V6_LOCALHOST)));
        let out = dir.path().join("stderr.log");
        let err = std::fs::File::create(&out).expect("create the receiver's stderr file");
        let child = config(dir.path(), v4, v6)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let mut receiver = Receiver {
            what,
            child,
            dir,
            v4,
            v6,
        };
        let deadline = Deadline::after(SERVER_READY);
        loop {
            if let Ok(Some(status)) = receiver.child.try_wait() {
                let log = receiver.logs();
                if log.contains("in use") {
                    break; // a lost race for a port: try others
                }
                panic!("{what} exited ({status}) before listening:\n{log}");
            }
            let listening = [Some(v4), v6]
                .into_iter()
                .flatten()
                .all(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
            if listening {
                return receiver;
            }
            assert!(
                !deadline.passed(),
                "{what} did not listen on {v4} and {v6:?} within {SERVER_READY:?}:\n{}",
                receiver.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{what}: no free ports in 5 tries");
}

impl Receiver {
    /// Every log file in its directory, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "error.log", "access.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(name)) {
                out.push_str(&format!("--- {} {name}:\n{text}\n", self.what));
            }
        }
        out
    }

    /// The access log (nginx).
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// nginx on `v4` (and `v6`), requiring the PROXY header on both: `/`
/// answers `"$proxy_protocol_addr $proxy_protocol_port"`, `/health` `OK`;
/// the access log names the header's address too.
fn nginx(binary: &Path) -> Receiver {
    nginx_with(binary, false)
}

/// [`nginx`], with `tls`: TLS on both listeners (after the PROXY header),
/// a self-signed certificate made by the openssl command.
fn nginx_with(binary: &Path, tls: bool) -> Receiver {
    start_receiver("nginx", |dir, v4, v6| {
        let d = dir.display();
        let ssl = if tls { "ssl " } else { "" };
        let v6_listen = v6.map_or(String::new(), |a| {
            format!("listen {a} {ssl}proxy_protocol;")
        });
        let certificate = if tls {
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run openssl");
            assert!(made.success(), "openssl could not make a certificate");
            format!("ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;")
        } else {
            String::new()
        };
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               log_format pp '$proxy_protocol_addr $proxy_protocol_port $remote_addr \"$request\"';\n\
               access_log {d}/access.log pp;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen {v4} {ssl}proxy_protocol;\n\
                 {v6_listen}\n\
                 {certificate}\n\
                 location = /health {{ return 200 \"OK\"; }}\n\
                 location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(binary);
        cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log"));
        cmd.arg("-c").arg(&path);
        cmd
    })
}

/// HAProxy on `v4` (and `v6`) with `accept-proxy`: answers `"%[src]
/// %[src_port]"`, the address and port the header carried.
fn haproxy(binary: &Path) -> Receiver {
    start_receiver("haproxy", |dir, v4, v6| {
        let v6_bind = v6.map_or(String::new(), |a| format!("  bind {a} accept-proxy\n"));
        let conf = format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind {v4} accept-proxy\n{v6_bind}\
               http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port]\\n\"\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, conf).expect("write haproxy.cfg");
        let mut cmd = Command::new(binary);
        cmd.arg("-db").arg("-f").arg(&path);
        cmd
    })
}

/// `GET path` from `src` through `lb`: the client's own address and the
/// answer's body.
fn get(src: IpAddr, lb: SocketAddr, path: &str) -> io::Result<(SocketAddr, String)> {
    let mut client = connect_from(src, lb)?;
    let me = client.local_addr()?;
    client.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    client.take(64 * 1024).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no HTTP answer: {answer:?}"),
            )
        })?;
    Ok((me, body))
}

/// ringlb on 127.0.0.1 over `receiver`'s IPv4 listener with `send_proxy =
/// version` (the callers add ::1).
fn over(receiver: &Receiver, variant: Variant, version: &str) -> LbConfig {
    let mut config = LbConfig::single(variant, Vec::new());
    let s = config.service();
    s.extra.push(format!("send_proxy = {version:?}"));
    s.backends
        .push(harness::BackendConfig::new("v4", receiver.v4));
    config
}

/// Each client sees its own address and port through `lb`, answered by
/// the receiver from the PROXY header.
fn clients_see_themselves(what: &str, cell: &str, lb: &Ringlb, v6: bool) -> Vec<String> {
    let addrs = lb.addrs("web");
    let v4_listener = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .expect("a v4 listener");
    let mut clients = vec![
        (IpAddr::from([127, 0, 0, 2]), v4_listener),
        (IpAddr::from([127, 0, 0, 3]), v4_listener),
    ];
    if v6 {
        let v6_listener = addrs
            .iter()
            .find(|a| a.is_ipv6())
            .copied()
            .expect("a v6 listener");
        clients.push((V6_LOCALHOST, v6_listener));
    }
    let mut seen = Vec::new();
    for (src, listener) in clients {
        let (me, body) = get(src, listener, "/").unwrap_or_else(|e| {
            panic!(
                "[{cell}] {what} via {listener} from {src}: {e}\n{}",
                lb.report()
            )
        });
        assert_eq!(
            body,
            format!("{} {}", me.ip(), me.port()),
            "[{cell}] {what} saw another address for client {me}"
        );
        seen.push(body);
    }
    seen
}

/// The forwarding modes of `engine`: its default, the inline pumps, and on
/// io_uring the ring's own.
fn forwardings(engine: &'static str) -> Vec<Variant> {
    let mut modes = vec!["auto", "splice", "copy"];
    if engine == "uring" {
        modes.extend(["uring-splice", "uring-copy"]);
    }
    modes
        .into_iter()
        .map(|forwarding| Variant { engine, forwarding })
        .collect()
}

#[test]
fn nginx_sees_each_clients_address_with_v1_and_v2_on_every_engine_and_forwarding() {
    let _shared = harness::shared();
    let Some(binary) = installed("nginx") else {
        println!("proxy_out nginx: SKIPPED: nginx is not installed (.ci/run installs it)");
        return;
    };
    let nginx = nginx(&binary);
    let v6 = nginx.v6.is_some();
    if !v6 {
        println!("proxy_out nginx: no IPv6 loopback: the ::1 client is SKIPPED");
    }
    for_each_engine("proxy_out nginx", |engine| {
        for variant in forwardings(engine) {
            for version in ["v1", "v2"] {
                let cell = format!("{variant} {version}");
                let mut config = over(&nginx, variant, version);
                if let Some(v6_addr) = nginx.v6 {
                    let s = config.service();
                    s.listen.push("[::1]:0".to_owned());
                    // One backend per family: the v6 client goes to the v6
                    // listener (Maglev may pick either; both are nginx).
                    s.backends.push(harness::BackendConfig::new("v6", v6_addr));
                }
                let lb = Ringlb::start(&config);
                let seen = clients_see_themselves("nginx", &cell, &lb, v6);
                // nginx's own access log names them too.
                let deadline = Deadline::after(Duration::from_secs(5));
                while !seen.iter().all(|s| nginx.access_log().contains(s.as_str())) {
                    assert!(
                        !deadline.passed(),
                        "[{cell}] nginx's access log lacks one of {seen:?}:\n{}",
                        nginx.logs()
                    );
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    });
}

#[test]
fn haproxy_accept_proxy_sees_each_clients_address_with_v1_and_v2() {
    let _shared = harness::shared();
    let Some(binary) = installed("haproxy") else {
        println!("proxy_out haproxy: SKIPPED: haproxy is not installed (.ci/run installs it)");
        return;
    };
    let haproxy = haproxy(&binary);
    let v6 = haproxy.v6.is_some();
    for_each_engine("proxy_out haproxy", |engine| {
        for version in ["v1", "v2"] {
            let cell = format!("{engine} {version}");
            let mut config = over(&haproxy, Variant::from(engine), version);
            if let Some(v6_addr) = haproxy.v6 {
                let s = config.service();
                s.listen.push("[::1]:0".to_owned());
                s.backends.push(harness::BackendConfig::new("v6", v6_addr));
            }
            let lb = Ringlb::start(&config);
            clients_see_themselves("haproxy", &cell, &lb, v6);
        }
    });
}

#[test]
fn the_header_precedes_the_first_client_byte_and_a_backend_can_opt_out() {
    let _shared = harness::shared();
    for_each_engine("proxy_out bytes", |engine| {
        // An echo backend returns the header it got, then the client's bytes.
        let echo = Backend::echo("echo");
        let plain = Backend::echo("plain");
        for version in ["v1", "v2"] {
            let mut config = LbConfig::over(engine, &[&echo]);
            config
                .service()
                .extra
                .push(format!("send_proxy = {version:?}"));
            let lb = Ringlb::start(&config);
            let mut client = connect_from(IpAddr::from([127, 0, 0, 2]), lb.addr()).unwrap();
            let me = client.local_addr().unwrap();
            client.write_all(b"hello\n").unwrap();
            let header = match version {
                "v1" => format!(
                    "PROXY TCP4 {} {} {} {}\r\n",
                    me.ip(),
                    lb.addr().ip(),
                    me.port(),
                    lb.addr().port()
                )
                .into_bytes(),
                _ => {
                    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
                    h.extend_from_slice(&[127, 0, 0, 2, 127, 0, 0, 1]);
                    h.extend_from_slice(&me.port().to_be_bytes());
                    h.extend_from_slice(&lb.addr().port().to_be_bytes());
                    h
                }
            };
            let mut got = vec![0u8; header.len() + 6];
            client
                .read_exact(&mut got)
                .unwrap_or_else(|e| panic!("[{engine} {version}] echo: {e}\n{}", lb.report()));
            assert_eq!(
                got[..header.len()].escape_ascii().to_string(),
                header.escape_ascii().to_string(),
                "[{engine} {version}] the header, exactly, first"
            );
            assert_eq!(
                &got[header.len()..],
                b"hello\n",
                "[{engine} {version}] then the client's bytes"
            );
        }

        // The service sends v2; this backend's own "off" wins.
        let mut config = LbConfig::over(engine, &[&plain]);
        config
            .service()
            .extra
            .push("send_proxy = \"v2\"".to_owned());
        config.service().backends[0]
            .extra
            .push("send_proxy = \"off\"".to_owned());
        let lb = Ringlb::start(&config);
        let mut client = connect_from(IpAddr::from([127, 0, 0, 3]), lb.addr()).unwrap();
        client.write_all(b"hello\n").unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(
            &got, b"hello\n",
            "[{engine}] send_proxy = \"off\" on the backend: no header"
        );
    });
}

/// Waits until ringlb logs backend `name` of service `web` going `want`
/// (`up` or `down`); the line.
fn wait_health(lb: &Ringlb, name: &str, want: &str, within: Duration) -> String {
    let deadline = Deadline::after(within);
    let needle = format!("backend is {want} backend=web/{name}");
    loop {
        if let Some(line) = lb.stderr().lines().find(|l| l.contains(&needle)) {
            return line.to_owned();
        }
        assert!(
            !deadline.passed(),
            "backend {name} not {want} within {within:?}\n{}",
            lb.report()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_probes_with_send_proxy_pass_against_an_nginx_that_requires_it() {
    let _shared = harness::shared();
    let Some(binary) = installed("nginx") else {
        println!("proxy_out health: SKIPPED: nginx is not installed (.ci/run installs it)");
        return;
    };
    let nginx = nginx(&binary);
    for_each_engine("proxy_out health", |engine| {
        for version in ["v1", "v2"] {
            for send in [true, false] {
                let mut config = over(&nginx, Variant::from(engine), version);
                config.admin = true;
                config.service().health = format!(
                    "kind = \"http\"\npath = \"/health\"\ninterval = \"1s\"\n\
                     fast_interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n\
                     send_proxy = {send}"
                );
                let lb = Ringlb::start(&config);
                if send {
                    wait_health(&lb, "v4", "up", Duration::from_secs(10));
                    let (me, body) = get(IpAddr::from([127, 0, 0, 2]), lb.addr(), "/").unwrap();
                    assert_eq!(
                        body,
                        format!("{} {}", me.ip(), me.port()),
                        "[{engine} {version}]"
                    );
                } else {
                    // Without the header nginx refuses the probe ("broken
                    // header"): the flag is what keeps the backend up.
                    let line = wait_health(&lb, "v4", "down", Duration::from_secs(10));
                    println!("[{engine} {version}] without health.send_proxy: {line}");
                    assert!(!lb.stderr().contains("backend is up"), "{}", lb.report());
                }
            }
        }
    });
}

#[test]
fn a_reload_turns_the_header_on_for_new_connections_only() {
    let _shared = harness::shared();
    for_each_engine("proxy_out reload", |engine| {
        let echo = Backend::echo("echo");
        let mut config = LbConfig::over(engine, &[&echo]);
        let mut lb = Ringlb::start(&config);
        let mut before = connect_from(IpAddr::from([127, 0, 0, 2]), lb.addr()).unwrap();
        before.write_all(b"a\n").unwrap();
        let mut got = [0u8; 2];
        before.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\n", "[{engine}] off: no header");

        config
            .service()
            .extra
            .push("send_proxy = \"v1\"".to_owned());
        lb.rewrite_config(&config.to_toml());
        lb.signal(libc::SIGHUP);
        assert!(
            lb.wait_for_log("config reloaded", Duration::from_secs(10))
                .is_some(),
            "[{engine}] no `config reloaded` after SIGHUP\n{}",
            lb.report()
        );

        let mut after = connect_from(IpAddr::from([127, 0, 0, 3]), lb.addr()).unwrap();
        let me = after.local_addr().unwrap();
        after.write_all(b"b\n").unwrap();
        let want = format!(
            "PROXY TCP4 127.0.0.3 127.0.0.1 {} {}\r\nb\n",
            me.port(),
            lb.addr().port()
        );
        let mut got = vec![0u8; want.len()];
        after
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("[{engine}] after the reload: {e}\n{}", lb.report()));
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "[{engine}] a new connection"
        );

        // The connection from before carries on as it began: no header.
        before.write_all(b"c\n").unwrap();
        let mut got = [0u8; 2];
        before.read_exact(&mut got).unwrap();
        assert_eq!(
            &got, b"c\n",
            "[{engine}] an established connection is untouched"
        );
    });
}

#[test]
fn tls_passes_through_after_the_header_and_https_probes_send_it_before_the_handshake() {
    let _shared = harness::shared();
    let (Some(binary), Some(_), Some(_)) =
        (installed("nginx"), installed("openssl"), installed("curl"))
    else {
        println!("proxy_out tls: SKIPPED: needs nginx, openssl and curl");
        return;
    };
    let nginx = nginx_with(&binary, true);
    for_each_engine("proxy_out tls", |engine| {
        for version in ["v1", "v2"] {
            let mut config = over(&nginx, Variant::from(engine), version);
            config.service().health = "kind = \"https\"\npath = \"/health\"\ninsecure_skip_verify = true\n\
                 interval = \"1s\"\nfast_interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n\
                 send_proxy = true"
                .to_owned();
            let lb = Ringlb::start(&config);
            // The probe's header came before its handshake, or nginx
            // would have refused it.
            wait_health(&lb, "v4", "up", Duration::from_secs(10));
            // A TLS client through ringlb: the ClientHello follows the
            // header, and nginx, terminating TLS, names the client.
            let out = Command::new("curl")
                .args(["-sS", "-k", "--max-time", "10", "--interface", "127.0.0.2"])
                .arg(format!("https://{}/", lb.addr()))
                .output()
                .expect("run curl");
            let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let (ip, port) = body.split_once(' ').unwrap_or_default();
            assert!(
                out.status.success() && ip == "127.0.0.2" && port.parse::<u16>().is_ok(),
                "[{engine} {version}] curl: {body:?} {}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                nginx.logs(),
                lb.report()
            );
        }
    });
}
