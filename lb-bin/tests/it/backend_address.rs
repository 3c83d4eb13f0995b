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
    self, read_line, Backend, BackendConfig, Deadline, LbConfig, Ringlb, IO_TIMEOUT, LOCALHOST,
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
    let mut s = TcpStream::connect_timeout(&lb.addr(), IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let name = read_line(&mut s).unwrap_or_else(|e| panic!("greeting: {e}\n{}", lb.report()));
    (name, s)
}

/// An HTTP endpoint answering 200 to anything, on `LOCALHOST`:0.
fn http_ok(name: &str) -> Backend {
    Backend::spawn(name, LOCALHOST, |mut s| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
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
