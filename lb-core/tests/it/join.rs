//! Node registration against a real ringlb: a `Server` with one epoll
//! worker, echo backends on 127.0.0.1:0 probed by TCP connect, the admin
//! listener on 127.0.0.1:0, and plain HTTP/1.1 spoken over std sockets
//! from several loopback source addresses (each one a distinct peer for the
//! rate limiter and a distinct client for Maglev). Waits are conditions with
//! deadlines, never fixed sleeps.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lb_core::Config;
use lb_core::{Server, StartOptions};
use serde_json::{json, Value};

const KEY: &str = "j0in-k3y-for-tests";
const TOKEN: &str = "admin-t0ken";

use crate::support::loopback::*;
use crate::support::response::*;
use crate::support::wait::*;

// ---------------------------------------------------------------- harness

/// How a request presents the join key.
#[derive(Clone, Copy)]
enum Key<'a> {
    None,
    Header(&'a str),
    Bearer(&'a str),
}

/// A running ringlb with service `web` over the configured backends, its
/// config in a scratch file (so that it can be reloaded).
struct Lb {
    server: Server,
    listen: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    file: PathBuf,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The config text: `global_extra` in `[global]`, TCP health checks every
/// 200 ms (rise 1; fall 3, so that one slow probe on a loaded machine
/// flips nothing), `backends` as (name, address).
fn config_text(global_extra: &str, backends: &[(&str, SocketAddr)]) -> String {
    let mut toml = format!(
        "[global]\nworkers = 1\nengine = \"epoll\"\nadmin = \"127.0.0.1:0\"\n\
         shutdown_timeout = \"1s\"\n{global_extra}\n\n\
         [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nconnect_timeout = \"1s\"\n\n\
         [service.health]\nkind = \"tcp\"\ninterval = \"200ms\"\nfast_interval = \"50ms\"\n\
         timeout = \"200ms\"\nrise = 1\nfall = 3\n"
    );
    for (name, addr) in backends {
        toml.push_str(&format!(
            "\n[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    toml
}

fn start(global_extra: &str, backends: &[(&str, SocketAddr)]) -> Lb {
    static SCRATCH: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringlb-join-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let file = dir.join("ringlb.toml");
    std::fs::write(&file, config_text(global_extra, backends)).expect("write config");
    let config = Config::from_file(&file).expect("test config");
    let options = StartOptions {
        config_path: Some(file.clone()),
        ..StartOptions::default()
    };
    let server = Server::start(config, options).expect("server starts");
    let listen = server.listening()[0].1;
    let admin = server.admin_addr().expect("admin listener");
    Lb {
        server,
        listen,
        admin,
        dir,
        file,
    }
}

/// A ringlb with `join_key = KEY` and one configured backend, `b1`.
fn start_with_key(global_extra: &str) -> Lb {
    let b1 = named_echo_backend("b1");
    start(
        &format!("join_key = \"{KEY}\"\n{global_extra}"),
        &[("b1", b1)],
    )
}

impl Lb {
    /// Sends one request from `source` and reads the whole answer.
    fn request(
        &self,
        source: &str,
        method: &str,
        path: &str,
        key: Key<'_>,
        extra: &str,
        body: &[u8],
    ) -> Resp {
        let mut text = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}",
            self.admin
        );
        match key {
            Key::None => {}
            Key::Header(k) => text.push_str(&format!("X-Join-Key: {k}\r\n")),
            Key::Bearer(k) => text.push_str(&format!("Authorization: Bearer {k}\r\n")),
        }
        if method == "POST" || !body.is_empty() {
            text.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        raw_from(ip(source), self.admin, &bytes)
    }

    /// `POST /api/v1/services/web/join` from 127.0.0.1 with the right key.
    fn join(&self, body: &Value) -> Resp {
        self.join_as("127.0.0.1", "web", Key::Header(KEY), body)
    }

    fn join_as(&self, source: &str, service: &str, key: Key<'_>, body: &Value) -> Resp {
        let path = format!("/api/v1/services/{service}/join");
        let body = body.to_string();
        self.request(source, "POST", &path, key, "", body.as_bytes())
    }

    fn leave(&self, name: &str) -> Resp {
        let body = json!({ "name": name }).to_string();
        self.request(
            "127.0.0.1",
            "POST",
            "/api/v1/services/web/leave",
            Key::Header(KEY),
            "",
            body.as_bytes(),
        )
    }

    fn services(&self) -> Value {
        let r = self.request("127.0.0.1", "GET", "/api/v1/services", Key::None, "", b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The backends of `web` as the API shows them.
    fn backends(&self) -> Vec<Value> {
        self.services()["services"][0]["backends"]
            .as_array()
            .expect("backends")
            .clone()
    }

    fn backend(&self, name: &str) -> Option<Value> {
        self.backends().into_iter().find(|b| b["name"] == name)
    }

    /// What a refused request must not change: the table generation and
    /// every backend's (name, address, state, joined).
    fn fingerprint(&self) -> (u64, Vec<String>) {
        let doc = self.services();
        let generation = doc["generation"].as_u64().expect("generation");
        let backends = doc["services"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| {
                format!(
                    "{} {} {} {}",
                    b["name"], b["address"], b["state"], b["joined"]
                )
            })
            .collect();
        (generation, backends)
    }

    /// Connects as a client from `source`; returns the stream and the name
    /// of the backend that answered.
    fn client(&self, source: &str) -> (TcpStream, String) {
        greeted_client(ip(source), self.listen)
    }

    /// Waits until a client reaches `backend`, trying source addresses
    /// 127.0.0.2, .3, … in turn (Maglev sends each client IP to one home);
    /// returns that connection and its source address.
    fn reach(&self, backend: &str) -> (TcpStream, String) {
        let deadline = Instant::now() + DEADLINE;
        let mut i = 0;
        loop {
            let source = format!("127.0.0.{}", 2 + i % 200);
            let (stream, name) = self.client(&source);
            if name == backend {
                return (stream, source);
            }
            assert!(
                Instant::now() < deadline,
                "no client reached {backend} in time"
            );
            i += 1;
        }
    }
}

fn node(name: &str, addr: SocketAddr) -> Value {
    json!({ "name": name, "address": addr.to_string() })
}

// ------------------------------------------------------------ joining

#[test]
fn a_node_with_the_key_joins_and_gets_traffic_once_its_probe_passes() {
    // The admin token guards operator actions, not joins.
    let lb = start_with_key(&format!("admin_token = \"{TOKEN}\""));
    let n1 = named_echo_backend("n1");

    let r = lb.join(&json!({ "name": "n1", "address": n1.to_string(), "weight": 100 }));
    assert_eq!(r.status, 201, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["service"], "web");
    assert_eq!(doc["name"], "n1");
    assert_eq!(doc["address"], n1.to_string());
    assert_eq!(doc["weight"], 100);
    assert_eq!(doc["joined"], true);
    assert_eq!(doc["admin"], "enabled");

    wait_until("n1 to pass its probe", || {
        lb.backend("n1").is_some_and(|b| b["usable"] == true)
    });
    let (mut stream, _) = lb.reach("n1");
    echo_round_trip(&mut stream, b"through the joined node");

    // Shown like the others, marked joined.
    let b1 = lb.backend("b1").expect("b1");
    assert_eq!(b1["joined"], false);
    let metrics = lb.request("127.0.0.1", "GET", "/metrics", Key::None, "", b"");
    let line = format!(
        "ringlb_backend_info{{service=\"web\",backend=\"n1\",address=\"{n1}\",joined=\"true\"}} 1"
    );
    assert!(metrics.text().contains(&line), "{}", metrics.text());

    // Bearer works as well as X-Join-Key; the admin token is not the key.
    let n2 = named_echo_backend("n2");
    let r = lb.join_as("127.0.0.2", "web", Key::Bearer(KEY), &node("n2", n2));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = lb.join_as("127.0.0.3", "web", Key::Bearer(TOKEN), &node("n3", n2));
    assert_eq!(r.status, 401, "{}", r.text());

    // Operator actions on a joined node still need the admin token.
    let r = lb.request(
        "127.0.0.1",
        "POST",
        "/api/v1/services/web/backends/n1/drain",
        Key::Header(KEY),
        "",
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn joining_again_is_idempotent_and_conflicts_are_refused() {
    let lb = start_with_key("");
    let b1 = lb.backend("b1").expect("b1")["address"]
        .as_str()
        .expect("address")
        .to_string();
    let n1 = named_echo_backend("n1");
    let other = named_echo_backend("other");
    assert_eq!(lb.join(&node("n1", n1)).status, 201);
    wait_until("n1 usable", || {
        lb.backend("n1").is_some_and(|b| b["usable"] == true)
    });
    let before = lb.fingerprint();

    // Same name, same address: 200, nothing changes (not even the weight).
    let r = lb.join(&json!({ "name": "n1", "address": n1.to_string(), "weight": 7 }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["weight"], 100);
    assert_eq!(r.json()["joined"], true);
    assert_eq!(lb.fingerprint(), before);

    let refused = [
        (node("n1", other), 409, "has joined service \"web\" already"),
        (node("b1", other), 409, "configured backend named \"b1\""),
        (
            json!({ "name": "n2", "address": b1 }),
            409,
            "is already the address of backend \"b1\"",
        ),
    ];
    for (body, status, message) in refused {
        let r = lb.join(&body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.error().contains(message), "{body}: {}", r.error());
    }
    let r = lb.join_as("127.0.0.1", "nope", Key::Header(KEY), &node("n2", other));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error(), "no service named \"nope\"");

    // Only joined nodes leave.
    let r = lb.leave("b1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("config file"), "{}", r.error());
    assert_eq!(lb.leave("zz").status, 404);
    assert_eq!(lb.fingerprint(), before);
}

#[test]
fn a_node_that_leaves_gets_no_new_connections_and_established_ones_flow() {
    let lb = start_with_key("");
    let n1 = named_echo_backend("n1");
    assert_eq!(lb.join(&node("n1", n1)).status, 201);
    let (mut established, source) = lb.reach("n1");
    echo_round_trip(&mut established, b"before leaving");

    let r = lb.leave("n1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ "service": "web", "name": "n1", "address": n1.to_string(), "left": true })
    );
    assert!(lb.backend("n1").is_none());

    // Its clients go elsewhere; the one connected keeps flowing both ways.
    let (mut moved, home) = lb.client(&source);
    assert_eq!(home, "b1");
    echo_round_trip(&mut moved, b"new connection");
    for i in 2..40 {
        assert_eq!(lb.client(&format!("127.0.0.{i}")).1, "b1");
    }
    echo_round_trip(&mut established, b"after leaving: still flowing");

    // Leaving twice: it is gone. Joining again: a new backend.
    assert_eq!(lb.leave("n1").status, 404);
    assert_eq!(lb.join(&node("n1", n1)).status, 201);
}

#[test]
fn a_reload_keeps_joined_nodes_and_applies_a_new_key() {
    let b1 = named_echo_backend("b1");
    let lb = start(&format!("join_key = \"{KEY}\""), &[("b1", b1)]);
    let n1 = named_echo_backend("n1");
    let n2 = named_echo_backend("n2");
    assert_eq!(lb.join(&node("n1", n1)).status, 201);
    assert_eq!(lb.join(&node("n2", n2)).status, 201);
    wait_until("n1 usable", || {
        lb.backend("n1").is_some_and(|b| b["usable"] == true)
    });

    // The file now configures n2 itself, and another key.
    std::fs::write(
        &lb.file,
        config_text("join_key = \"new-key\"", &[("b1", b1), ("n2", n2)]),
    )
    .expect("rewrite config");
    let summary = lb.server.handle().reload().expect("reload");
    assert!(summary.backends_removed.is_empty(), "{summary:?}");
    let config_generation = lb.services()["config_generation"].clone();
    assert_eq!(config_generation, 2);

    let n1_doc = lb.backend("n1").expect("n1 kept");
    assert_eq!(n1_doc["joined"], true);
    assert_eq!(n1_doc["usable"], true, "its state survives: {n1_doc}");
    assert_eq!(
        lb.backend("n2").expect("n2")["joined"],
        false,
        "the file wins"
    );
    let (mut stream, _) = lb.reach("n1");
    echo_round_trip(&mut stream, b"after the reload");

    // The key follows the file.
    let n3 = named_echo_backend("n3");
    let r = lb.join_as("127.0.0.1", "web", Key::Header(KEY), &node("n3", n3));
    assert_eq!(r.status, 401, "{}", r.text());
    let r = lb.join_as("127.0.0.1", "web", Key::Header("new-key"), &node("n3", n3));
    assert_eq!(r.status, 201, "{}", r.text());
    // n2 is the file's now: it cannot leave through the API.
    let body = json!({ "name": "n2" }).to_string();
    let r = lb.request(
        "127.0.0.1",
        "POST",
        "/api/v1/services/web/leave",
        Key::Header("new-key"),
        "",
        body.as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text());

    // A file without a key turns joining off; the joined nodes stay.
    std::fs::write(&lb.file, config_text("", &[("b1", b1)])).expect("rewrite config");
    lb.server.handle().reload().expect("reload");
    let r = lb.join_as("127.0.0.1", "web", Key::Header("new-key"), &node("n4", n3));
    assert_eq!(r.status, 403, "{}", r.text());
    let names: Vec<Value> = lb.backends().iter().map(|b| b["name"].clone()).collect();
    assert_eq!(names, [json!("b1"), json!("n1"), json!("n3")]);
}

// ----------------------------------------------------- access control

#[test]
fn a_wrong_or_missing_key_is_refused_and_changes_nothing() {
    let lb = start_with_key(&format!("admin_token = \"{TOKEN}\""));
    let n1 = named_echo_backend("n1");
    let before = lb.fingerprint();
    let attempts = [
        ("127.0.0.2", Key::Header("wrong")),
        ("127.0.0.2", Key::Header("")),
        ("127.0.0.3", Key::Bearer("j0in-k3y-for-test")),
        ("127.0.0.3", Key::None),
        ("127.0.0.4", Key::Header(&KEY[1..])),
        ("127.0.0.4", Key::Bearer(TOKEN)),
    ];
    for (source, key) in attempts {
        let r = lb.join_as(source, "web", key, &node("n1", n1));
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"ringlb join\"")
        );
    }
    let r = lb.join_as("127.0.0.5", "web", Key::None, &node("n1", n1));
    assert!(r.error().contains("X-Join-Key"), "{}", r.error());
    // A wrong key is refused before the service is looked up.
    let r = lb.join_as("127.0.0.5", "nope", Key::Header("wrong"), &node("n1", n1));
    assert_eq!(r.status, 401);
    let r = lb.request(
        "127.0.0.5",
        "POST",
        "/api/v1/services/web/join",
        Key::Header(KEY),
        "Origin: http://evil.example\r\n",
        node("n1", n1).to_string().as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(lb.fingerprint(), before);
}

#[test]
fn without_a_join_key_joining_is_off() {
    let b1 = named_echo_backend("b1");
    let lb = start(&format!("admin_token = \"{TOKEN}\""), &[("b1", b1)]);
    let n1 = named_echo_backend("n1");
    let before = lb.fingerprint();
    for key in [Key::None, Key::Header(KEY), Key::Bearer(TOKEN)] {
        let r = lb.join_as("127.0.0.1", "web", key, &node("n1", n1));
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.error().starts_with("joining is off"), "{}", r.error());
    }
    let r = lb.leave("b1");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(lb.fingerprint(), before);
}

#[test]
fn failed_attempts_are_rate_limited_per_peer() {
    let lb = start_with_key("");
    let n1 = named_echo_backend("n1");
    for i in 0..5 {
        let r = lb.join_as("127.0.0.7", "web", Key::Header("guess"), &node("n1", n1));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
    }
    // The bucket is empty: refused without looking at the key, right or
    // wrong, with the time to wait.
    for key in [Key::Header("guess"), Key::Header(KEY)] {
        let r = lb.join_as("127.0.0.7", "web", key, &node("n1", n1));
        assert_eq!(r.status, 429, "{}", r.text());
        let wait: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers));
        assert!((1..=10).contains(&wait), "Retry-After {wait}");
    }
    let r = lb.leave("n1");
    assert_eq!(r.status, 404, "another peer is not limited: {}", r.text());
    // Other peers are not limited, and successes cost nothing.
    for _ in 0..10 {
        let r = lb.join_as("127.0.0.8", "web", Key::Header(KEY), &node("n1", n1));
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    assert!(lb.backend("n1").is_some());
}

/// Key guessing is bounded for all addresses together: 60 loopback
/// sources (127.0.0.10 …) guess 4 times each, 6 threads in parallel; each
/// source stays inside its own budget (5), so only the global one (30 at
/// once, then one per 2 s: at most 60 a minute) stops them. Without it all
/// 240 guesses were looked at.
#[test]
fn key_guessing_from_many_addresses_is_bounded_globally() {
    let lb = start_with_key("");
    let n1 = named_echo_backend("n1");
    let before = lb.fingerprint();
    let started = Instant::now();
    let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|t| {
                let lb = &lb;
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    for i in 0..10 {
                        let source = format!("127.0.0.{}", 10 + t * 10 + i);
                        for g in 0..4 {
                            let guess = format!("guess-{t}-{i}-{g}");
                            let r =
                                lb.join_as(&source, "web", Key::Header(&guess), &node("n1", n1));
                            seen.push((r.status, r.text()));
                        }
                    }
                    seen
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("guessing thread"))
            .collect()
    });
    let took = started.elapsed();
    let looked_at = statuses.iter().filter(|(s, _)| *s == 401).count();
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(
        looked_at + limited.len(),
        240,
        "only 401 and 429: {statuses:?}"
    );
    // 30 at once, one more per 2 s of the run.
    let allowed = 30 + (took.as_secs() / 2) as usize + 1;
    eprintln!(
        "global join cap: {looked_at} of 240 guesses from 60 addresses looked at in {took:?} \
         (cap {allowed} for this run, 60 per minute)"
    );
    assert!(
        looked_at <= allowed.min(60),
        "{looked_at} guesses looked at in {took:?} (cap {allowed})"
    );
    assert!(
        limited
            .iter()
            .all(|(_, body)| body.contains("all addresses")),
        "the 429 says the global budget is spent: {:?}",
        limited.first()
    );
    assert_eq!(lb.fingerprint(), before, "a guess changed something");
}

#[test]
fn the_allow_list_comes_before_the_key() {
    let lb = start_with_key("admin_allow = [\"127.0.0.2/32\"]");
    let n1 = named_echo_backend("n1");
    let r = lb.join_as("127.0.0.1", "web", Key::Header(KEY), &node("n1", n1));
    assert_eq!(r.status, 403);
    assert!(r.error().contains("admin_allow"), "{}", r.error());
    let r = lb.join_as("127.0.0.2", "web", Key::Header(KEY), &node("n1", n1));
    assert_eq!(r.status, 201, "{}", r.text());
}

// -------------------------------------------------------- bad requests

#[test]
fn bad_bodies_are_answered_400_and_change_nothing() {
    let lb = start_with_key("");
    let before = lb.fingerprint();
    let bodies: &[&[u8]] = &[
        b"",
        b"{",
        b"[]",
        br#"{"name": "n1"}"#,
        br#"{"address": "127.0.0.1:9"}"#,
        br#"{"name": "n1", "address": "127.0.0.1:9", "zone": "a"}"#,
        br#"{"name": "", "address": "127.0.0.1:9"}"#,
        br#"{"name": "n 1", "address": "127.0.0.1:9"}"#,
        br#"{"name": "../n1", "address": "127.0.0.1:9"}"#,
        br#"{"name": "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", "address": "127.0.0.1:9"}"#,
        br#"{"name": "n1", "address": "localhost:9"}"#,
        br#"{"name": "n1", "address": "127.0.0.1"}"#,
        br#"{"name": "n1", "address": "127.0.0.1:0"}"#,
        br#"{"name": "n1", "address": "0.0.0.0:9"}"#,
        br#"{"name": "n1", "address": "[::]:9"}"#,
        br#"{"name": "n1", "address": "239.1.2.3:9"}"#,
        br#"{"name": "n1", "address": "127.0.0.1:9", "weight": 0}"#,
        br#"{"name": "n1", "address": "127.0.0.1:9", "weight": 10001}"#,
        br#"{"name": "n1", "address": "127.0.0.1:9", "weight": 2.5}"#,
        b"\xff\xfe",
    ];
    for body in bodies {
        let r = lb.request(
            "127.0.0.1",
            "POST",
            "/api/v1/services/web/join",
            Key::Header(KEY),
            "",
            body,
        );
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert!(!r.error().is_empty());
    }
    for body in [&b"{}"[..], br#"{"name": 1}"#, br#"{"name": "a b"}"#] {
        let r = lb.request(
            "127.0.0.1",
            "POST",
            "/api/v1/services/web/leave",
            Key::Header(KEY),
            "",
            body,
        );
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let huge = vec![b' '; (64 << 10) + 1];
    let r = lb.request(
        "127.0.0.1",
        "POST",
        "/api/v1/services/web/join",
        Key::Header(KEY),
        "",
        &huge,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    let r = lb.request(
        "127.0.0.1",
        "GET",
        "/api/v1/services/web/join",
        Key::Header(KEY),
        "",
        b"",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(lb.fingerprint(), before);
    // None of these was a failed key: the peer is not limited.
    let n1 = named_echo_backend("n1");
    assert_eq!(lb.join(&node("n1", n1)).status, 201);
}
