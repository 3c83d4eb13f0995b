//! The status page's pictures, seen from outside through
//! `GET /api/v1/services`: each backend's one-second traffic samples count
//! the connections made through ringlb and the bytes they moved, and its
//! health transitions list a backend going down with the probe's reason.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{connect_from, BackendConfig, Deadline, LbConfig, Ringlb, LOCALHOST};
use crate::metrics::health_endpoint;

/// Longest a sample may take to show a connection: the next sample after
/// the workers' byte flush (once a second), with room for a slow machine.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);
/// Connections made through ringlb.
const CONNECTIONS: u64 = 6;
/// What each of them sends.
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// The body of `GET /api/v1/services`, parsed.
fn services(lb: &Ringlb) -> serde_json::Value {
    let mut s = TcpStream::connect_timeout(&lb.admin_addr(), Duration::from_secs(2))
        .expect("connect to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "GET /api/v1/services HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

/// Polls the backend `h1` until `condition` holds on its JSON object.
fn wait_backend(
    lb: &Ringlb,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Deadline::after(SHOWS_WITHIN);
    loop {
        let doc = services(lb);
        let b = doc["services"][0]["backends"][0].clone();
        if condition(&b) {
            return b;
        }
        assert!(
            !deadline.passed(),
            "{what}: not within {SHOWS_WITHIN:?}\n{b:#}\n{}",
            lb.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sum(samples: &serde_json::Value) -> u64 {
    samples
        .as_array()
        .map_or(0, |a| a.iter().filter_map(serde_json::Value::as_u64).sum())
}

#[test]
fn samples_count_the_traffic_and_transitions_name_the_reason() {
    let _shared = crate::harness::shared();
    let up = Arc::new(AtomicBool::new(true));
    // The health endpoint is the backend too: every connection through
    // ringlb gets its `HTTP/1.1 200 OK` answer and is closed.
    let (addr, stop) = health_endpoint(up.clone());
    let mut config = LbConfig::single("epoll", vec![BackendConfig::new("h1", addr)]);
    config.admin = true;
    config.service().health = "kind = \"http\"\npath = \"/health\"\ninterval = \"300ms\"\n\
                               fast_interval = \"300ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 1"
        .to_owned();
    let lb = Ringlb::start(&config);
    wait_backend(&lb, "h1 up", |b| b["health"] == "up");

    let mut answered = 0u64;
    for _ in 0..CONNECTIONS {
        let mut s = connect_from(LOCALHOST, lb.addr()).expect("connect through ringlb");
        s.write_all(REQUEST).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read the answer");
        answered += answer.len() as u64;
    }
    // Every connection and byte the counters hold ends up in a sample
    // (the counters of a closing connection may land a moment after the
    // client saw its end, hence the wait).
    let b = wait_backend(&lb, "the traffic in the samples", |b| {
        let counted = b["bytes_to_backend"].as_u64().unwrap_or(0)
            + b["bytes_to_client"].as_u64().unwrap_or(0);
        sum(&b["history"]["new_connections"]) == CONNECTIONS
            && sum(&b["history"]["bytes"]) == counted
            && counted >= answered + CONNECTIONS * REQUEST.len() as u64
    });
    let history = &b["history"];
    assert_eq!(history["interval_s"], 1);
    let samples = history["new_connections"].as_array().unwrap();
    assert!(
        !samples.is_empty() && samples.len() <= 300,
        "{} samples",
        samples.len()
    );
    assert_eq!(
        history["bytes"].as_array().unwrap().len(),
        samples.len(),
        "one bytes sample per connections sample"
    );

    up.store(false, Ordering::SeqCst);
    let b = wait_backend(&lb, "h1 down", |b| b["health"] == "down");
    let transitions = b["transitions"].as_array().unwrap();
    let pairs: Vec<(&str, &str)> = transitions
        .iter()
        .map(|t| (t["from"].as_str().unwrap(), t["to"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs, vec![("unknown", "up"), ("up", "down")], "{b:#}");
    let down = &transitions[1];
    assert!(
        down["reason"].as_str().unwrap().contains("503"),
        "the probe's reason: {down}"
    );
    assert_eq!(down["reason"], b["reason"]);
    assert_eq!(down["at"], b["last_change"]);
    assert!(down["at_unix"].as_u64().unwrap() >= transitions[0]["at_unix"].as_u64().unwrap());

    stop.store(true, Ordering::SeqCst);
    // Wakes the endpoint's accept so its thread sees `stop`.
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}
