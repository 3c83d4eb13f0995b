//! Where ringlb reaches a backend: `[service.health] port`/`address` (probes
//! to another endpoint than the traffic's) and backends given by host name
//! (resolved on the control plane at start, reload and every
//! `resolve_interval`).
//!
//! Runs on the test harness's threads; every wait has a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::harness::{
    self, read_line, read_request_head, Backend, BackendConfig, Deadline, LbConfig, Ringlb,
    IO_TIMEOUT, LOCALHOST,
};

/// How long a health state change may take to show in the metrics.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);

/// Waits until `backend`'s `ringlb_backend_healthy` is `want`.
fn wait_healthy(lb: &Ringlb, backend: &str, want: u64) {
    let deadline = Deadline::after(SHOWS_WITHIN);
    loop {
        let m = lb.metrics();
        if m.for_backend("ringlb_backend_healthy", backend) == Some(want) {
            return;
        }
        assert!(
            !deadline.passed(),
            "{backend} healthy != {want} within {SHOWS_WITHIN:?}\n{}\n{}",
            m.text(),
            lb.report()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `text` on `s` and reads it back (the backends echo).
fn echoes(s: &mut TcpStream, text: &[u8]) {
    s.write_all(text).unwrap();
    let mut back = vec![0u8; text.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, text);
}

/// A connection through `lb` to whichever backend it picks: its greeting
/// (the backend's name) and the open stream.
fn through(lb: &Ringlb) -> (String, TcpStream) {
    try_through(lb).unwrap_or_else(|e| panic!("greeting: {e}\n{}", lb.report()))
}

fn try_through(lb: &Ringlb) -> std::io::Result<(String, TcpStream)> {
    let mut s = TcpStream::connect_timeout(&lb.addr(), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = read_line(&mut s)?;
    Ok((name, s))
}

/// An HTTP endpoint answering 200 to anything, on `LOCALHOST`:0.
fn http_ok(name: &str) -> Backend {
    Backend::spawn(name, LOCALHOST, |mut s| {
        if !read_request_head(&mut s) {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    })
}

/// The data port is a plain greeting echo server, which fails an HTTP
/// probe; `[service.health] port` sends the probes to an HTTP endpoint on
/// another port: the backend is up only through it, and goes down when it
/// stops while established traffic is untouched.
#[test]
fn health_probes_go_to_the_configured_port() {
    let _shared = harness::shared();
    let data = Backend::named("b1");
    let health = http_ok("b1-health");
    let mut config = LbConfig::single("epoll", vec![BackendConfig::from(&data)]);
    config.admin = true;
    config.service().health = format!(
        "kind = \"http\"\npath = \"/health\"\nport = {}\ninterval = \"200ms\"\n\
         fast_interval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1",
        health.addr().port()
    );
    let lb = Ringlb::start(&config);
    wait_healthy(&lb, "b1", 1);
    assert!(health.accepted() > 0, "the health port was probed");
    assert_eq!(data.accepted(), 0, "no probe went to the data port");

    let (name, mut before) = through(&lb);
    assert_eq!(name, "b1");
    echoes(&mut before, b"while the health endpoint is up\n");

    drop(health);
    wait_healthy(&lb, "b1", 0);
    echoes(&mut before, b"after it stopped\n");
    assert_eq!(data.accepted(), 1, "still no probe to the data port");
}

/// `/etc/hosts` with lines of this test added; the file as it was comes
/// back on drop. Every change replaces the file whole (a new file renamed
/// over it), so a concurrent lookup never reads it half written.
struct EtcHosts {
    original: String,
}

impl EtcHosts {
    const PATH: &'static str = "/etc/hosts";

    /// None (with the reason) when this process may not change the file.
    fn take() -> Result<EtcHosts, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".to_owned());
        }
        let original =
            std::fs::read_to_string(Self::PATH).map_err(|e| format!("{}: {e}", Self::PATH))?;
        let hosts = EtcHosts { original };
        hosts.set("")?;
        Ok(hosts)
    }

    /// The original file plus `extra` (whole lines).
    fn set(&self, extra: &str) -> Result<(), String> {
        let tmp = format!("{}.ringlb-test-{}", Self::PATH, std::process::id());
        let mut text = self.original.clone();
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(extra);
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, Self::PATH))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot replace {}: {e}", Self::PATH)
            })
    }
}

impl Drop for EtcHosts {
    fn drop(&mut self) {
        if let Err(e) = self.set("") {
            // Not a panic in a drop: say loudly what to put back.
            let _ = writeln!(
                std::io::stderr(),
                "backend_address: {e}; restore it to:\n{}",
                self.original
            );
        }
    }
}

/// A backend given by a name in `/etc/hosts` follows the name: traffic
/// reaches it at 127.0.0.2; once the entry says 127.0.0.3 (another backend
/// on the same port), new connections go there within `resolve_interval`
/// while one opened before stays intact; once the entry is gone, the last
/// good address is kept and one log line says the lookup failed.
#[test]
fn a_backend_by_name_follows_its_address() {
    let _shared = harness::shared();
    let hosts = match EtcHosts::take() {
        Ok(hosts) => hosts,
        Err(why) => {
            println!("backend_address by name: SKIPPED: cannot change /etc/hosts ({why})");
            return;
        }
    };
    let name = format!("ringlb-test-{}-a.invalid", std::process::id());
    // Two backends on one port, at 127.0.0.2 and 127.0.0.3. The port is
    // the first one's (any free); the second address may have it taken
    // (this sandbox's loopback refuses it now and then): then another.
    let (first, second) = (0..20)
        .find_map(|_| {
            let first = Backend::named_on("first", "127.0.0.2".parse().unwrap());
            let at = std::net::SocketAddr::new("127.0.0.3".parse().unwrap(), first.addr().port());
            std::net::TcpListener::bind(at).ok()?;
            Some((first, Backend::named_at("second", at)))
        })
        .expect("no port free on both 127.0.0.2 and 127.0.0.3 in 20 tries");
    let port = first.addr().port();
    hosts.set(&format!("127.0.0.2 {name}\n")).unwrap();

    let mut backend = BackendConfig::new("art1", first.addr());
    backend.host = Some(format!("{name}:{port}"));
    let mut config = LbConfig::single("epoll", vec![backend]);
    config
        .global_extra
        .push("resolve_interval = \"1s\"".to_owned());
    let mut lb = Ringlb::start(&config);

    let (greeting, mut before) = through(&lb);
    assert_eq!(greeting, "first", "the name resolved to 127.0.0.2 at start");
    echoes(&mut before, b"opened before the move\n");

    hosts.set(&format!("127.0.0.3 {name}\n")).unwrap();
    let moved = lb.wait_for_log("backend address changed", Duration::from_secs(5));
    assert!(
        moved.as_deref().is_some_and(|l| l.contains("127.0.0.3")),
        "no move to 127.0.0.3 logged within resolve_interval (1s) + 4s: {moved:?}\n{}",
        lb.report()
    );
    // The log line comes once the table is published; a connection
    // whose connect to the old address was in flight at that moment is
    // reset (the data plane's rule for a backend that left the table
    // while connecting), so the first new connection may be that one.
    let deadline = Deadline::after(Duration::from_secs(2));
    let mut after = loop {
        match try_through(&lb) {
            Ok((greeting, s)) if greeting == "second" => break s,
            other => assert!(
                !deadline.passed(),
                "new connections do not reach 127.0.0.3: {:?}\n{}",
                other.map(|(g, _)| g),
                lb.report()
            ),
        }
        thread::sleep(Duration::from_millis(20));
    };
    echoes(&mut after, b"opened after the move\n");
    echoes(&mut before, b"the old connection is intact\n");

    hosts.set("").unwrap();
    let failed = lb.wait_for_log("backend name lookup failed", Duration::from_secs(5));
    assert!(
        failed.as_deref().is_some_and(|l| l.contains("127.0.0.3")),
        "no failed lookup (keeping 127.0.0.3) logged: {failed:?}\n{}",
        lb.report()
    );
    // Two more rounds (resolve_interval = 1s) log nothing more: one line
    // per change, not per round.
    let again = lb.wait_for_log("backend name lookup failed", Duration::from_millis(2500));
    assert_eq!(
        again,
        None,
        "a second line for the same failure\n{}",
        lb.report()
    );
    let (greeting, mut later) = through(&lb);
    assert_eq!(greeting, "second", "the last good address is kept");
    echoes(&mut later, b"while the name does not resolve\n");
    echoes(&mut before, b"the first connection is still intact\n");
    assert!(
        second.accepted() >= 2,
        "the new connections reached 127.0.0.3"
    );
    drop(hosts);
}

/// A backend name that does not resolve fails `ringlb check` and the start
/// alike, saying which backend and what to do; a name that does passes.
#[test]
fn an_unresolvable_backend_name_fails_check_and_start() {
    let _shared = harness::shared();
    let run = |address: &str, command: &[&str]| {
        let mut backend = BackendConfig::new("art1", "127.0.0.1:1".parse().unwrap());
        backend.host = Some(address.to_owned());
        let config = LbConfig::single("epoll", vec![backend]);
        let dir = harness::TempDir::new("names");
        let path = dir.write("ringlb.toml", &config.to_toml());
        let mut args: Vec<&std::ffi::OsStr> = command.iter().map(std::ffi::OsStr::new).collect();
        args.push(std::ffi::OsStr::new("--config"));
        args.push(path.as_os_str());
        harness::run_to_exit(&args)
    };
    // `.invalid` never resolves (RFC 6761).
    let name = format!("ringlb-test-{}-none.invalid:8081", std::process::id());
    for command in [&["check"][..], &[][..]] {
        let finished = run(&name, command);
        assert!(
            !finished.status.success(),
            "{command:?}: accepted {name}\n{}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains(&format!(
                "service \"web\" backend \"art1\": address \"{name}\" does not resolve"
            )) && finished.stderr.contains("or give the backend's IP"),
            "{command:?}: {}",
            finished.stderr
        );
    }
    let finished = run("localhost:8081", &["check"]);
    assert!(finished.status.success(), "{}", finished.stderr);
}
