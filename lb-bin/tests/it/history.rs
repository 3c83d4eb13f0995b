//! `GET /api/v1/history`, what the status page draws its sparklines and
//! health strips from: per backend, one value a second of new connections
//! and bytes (sampled on the control plane from the counters the workers
//! keep), and the last health transitions with their reasons. The browser
//! test (scripts/browser-test.sh) checks the drawing itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::harness::{
    self, Backend, Deadline, LbConfig, Ringlb, CLIENT_CONNECT_TIMEOUT, IO_TIMEOUT,
};

/// Longest wait for a sample (one a second) or a health flip (1 s probes).
const SHOWS_WITHIN: Duration = Duration::from_secs(10);

/// The history document's entry for backend `name`.
fn history(lb: &Ringlb, name: &str) -> serde_json::Value {
    let mut s = TcpStream::connect_timeout(&lb.admin_addr(), CLIENT_CONNECT_TIMEOUT)
        .expect("connect to the admin API");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /api/v1/history HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET /api/v1/history: {head}\n{}",
        lb.report()
    );
    let doc: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(doc["interval_seconds"], 1);
    doc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc}"))
        .clone()
}

fn sum(series: &serde_json::Value) -> u64 {
    let values = series.as_array().expect("a series");
    assert!(
        values.len() <= 300,
        "more than 5 minutes of samples: {}",
        values.len()
    );
    values.iter().map(|v| v.as_u64().expect("a count")).sum()
}

/// Polls the history of `name` until `condition` holds; that entry.
fn wait_history(
    lb: &Ringlb,
    name: &str,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Deadline::after(SHOWS_WITHIN);
    loop {
        let h = history(lb, name);
        if condition(&h) {
            return h;
        }
        assert!(
            !deadline.passed(),
            "{what}: not within {SHOWS_WITHIN:?}: {h}\n{}",
            lb.report()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_history_shows_each_seconds_connections_and_bytes_and_the_health_transitions() {
    let _shared = harness::shared();
    let backend = Backend::echo("h1");
    let mut config = LbConfig::over("epoll", &[&backend]);
    config.admin = true;
    config.service().health =
        "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1".to_owned();
    let lb = Ringlb::start(&config);
    wait_history(&lb, "h1", "h1 up", |h| {
        h["transitions"]
            .as_array()
            .and_then(|t| t.last())
            .is_some_and(|t| t["to"] == "up")
    });

    const CONNECTIONS: u64 = 5;
    const MESSAGE: &[u8] = b"sampled once a second\n";
    for _ in 0..CONNECTIONS {
        let mut c = TcpStream::connect_timeout(&lb.addr(), CLIENT_CONNECT_TIMEOUT).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(MESSAGE).unwrap();
        let mut echo = vec![0; MESSAGE.len()];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(echo, MESSAGE);
    }
    let h = wait_history(
        &lb,
        "h1",
        "the connections and bytes in the per-second series",
        |h| {
            sum(&h["connections_per_second"]) >= CONNECTIONS
                && sum(&h["bytes_per_second"]) >= 2 * CONNECTIONS * MESSAGE.len() as u64
        },
    );
    assert_eq!(sum(&h["connections_per_second"]), CONNECTIONS, "{h}");
    let up = h["transitions"]
        .as_array()
        .and_then(|t| t.last())
        .cloned()
        .expect("a transition");
    assert_eq!(up["reason"], "probe passed", "{h}");
    assert!(
        up["at_unix"].as_u64().is_some_and(|t| t > 1_700_000_000),
        "{h}"
    );

    // The backend goes away: its probe fails, a "down" transition with the
    // probe's reason follows.
    drop(backend);
    let h = wait_history(&lb, "h1", "a down transition", |h| {
        h["transitions"]
            .as_array()
            .and_then(|t| t.last())
            .is_some_and(|t| t["to"] == "down")
    });
    let down = h["transitions"]
        .as_array()
        .and_then(|t| t.last())
        .cloned()
        .expect("a transition");
    assert!(
        down["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty() && r != "probe passed"),
        "{h}"
    );
}
