//! The admin API against a real ringlb: a `Server` with one epoll worker,
//! echo backends on 127.0.0.1:0, the admin listener on 127.0.0.1:0, and
//! plain HTTP/1.1 spoken over std sockets from several loopback source
//! addresses. Waits are conditions with deadlines, never fixed sleeps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lb_core::Config;
use lb_core::{Server, StartOptions};
use serde_json::Value;

const TOKEN: &str = "s3cret-token";

use crate::support::loopback::*;
use crate::support::response::*;
use crate::support::wait::*;

// ---------------------------------------------------------------- harness

/// A running ringlb over echo backends `b1`, `b2` (and `b3` if asked).
struct Lb {
    /// Stopped (and waited for) when the test ends.
    _server: Server,
    listen: SocketAddr,
    admin: SocketAddr,
}

fn start(global_extra: &str, backends: &[&'static str]) -> Lb {
    let mut toml = format!(
        "[global]\nworkers = 1\nengine = \"epoll\"\nadmin = \"127.0.0.1:0\"\n\
         shutdown_timeout = \"1s\"\n{global_extra}\n\n\
         [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nconnect_timeout = \"1s\"\n\n\
         [service.health]\nkind = \"none\"\n"
    );
    for name in backends {
        let addr = named_echo_backend(name);
        toml.push_str(&format!(
            "\n[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    let config = Config::parse(&toml, None).expect("test config");
    let server = Server::start(config, StartOptions::default()).expect("server starts");
    let listen = server.listening()[0].1;
    let admin = server.admin_addr().expect("admin listener");
    Lb {
        _server: server,
        listen,
        admin,
    }
}

/// An admin API request, for [`Lb::send`].
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    token: Option<&'a str>,
    body: Option<&'a [u8]>,
    extra: &'a str,
}

fn req<'a>(method: &'a str, path: &'a str) -> Req<'a> {
    Req {
        method,
        path,
        token: None,
        body: None,
        extra: "",
    }
}

impl Lb {
    fn send(&self, r: Req<'_>) -> Resp {
        let mut text = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}",
            r.method, r.path, self.admin, r.extra
        );
        if let Some(t) = r.token {
            text.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = r.body.unwrap_or_default();
        if r.body.is_some() || r.method == "POST" || r.method == "PUT" {
            text.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        raw_from(ip("127.0.0.1"), self.admin, &bytes)
    }

    fn get(&self, path: &str) -> Resp {
        self.send(req("GET", path))
    }

    fn action(&self, backend: &str, action: &str) -> Resp {
        let path = format!("/api/v1/services/web/backends/{backend}/{action}");
        self.send(Req {
            token: Some(TOKEN),
            ..req("POST", &path)
        })
    }

    fn weight(&self, backend: &str, body: &[u8]) -> Resp {
        let path = format!("/api/v1/services/web/backends/{backend}/weight");
        self.send(Req {
            token: Some(TOKEN),
            body: Some(body),
            ..req("PUT", &path)
        })
    }

    fn services(&self) -> Value {
        let r = self.get("/api/v1/services");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// What an action may change: per backend (admin, state, weight), and
    /// the table generation (a publication bumps it).
    fn fingerprint(&self) -> (u64, Vec<(String, String, String, u64)>) {
        let doc = self.services();
        let generation = doc["generation"].as_u64().expect("generation");
        let mut backends = Vec::new();
        for s in doc["services"].as_array().expect("services") {
            for b in s["backends"].as_array().expect("backends") {
                backends.push((
                    b["name"].as_str().expect("name").to_string(),
                    b["admin"].as_str().expect("admin").to_string(),
                    b["state"].as_str().expect("state").to_string(),
                    b["weight"].as_u64().expect("weight"),
                ));
            }
        }
        (generation, backends)
    }

    /// Connects as a client from `source`; returns the stream and the name
    /// of the backend that answered.
    fn client(&self, source: &str) -> (TcpStream, String) {
        greeted_client(ip(source), self.listen)
    }
}

#[test]
fn allow_list_refuses_other_peers_before_reading() {
    let lb = start("admin_allow = [\"127.0.0.2/32\"]", &["b1"]);
    let get = format!(
        "GET /api/v1/services HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        lb.admin
    );
    let refused = raw_from(ip("127.0.0.1"), lb.admin, get.as_bytes());
    assert_eq!(refused.status, 403);
    assert!(refused.json()["error"]
        .as_str()
        .expect("error")
        .contains("admin_allow"));
    // Refused without reading: even a peer that sends nothing gets it.
    let mut silent = connect_from(ip("127.0.0.1"), lb.admin);
    assert_eq!(parse_response(&read_all(&mut silent)).status, 403);

    let allowed = raw_from(ip("127.0.0.2"), lb.admin, get.as_bytes());
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.json()["services"][0]["name"], "web");
}

#[test]
fn token_guards_actions_but_not_reads() {
    let lb = start(&format!("admin_token = \"{TOKEN}\""), &["b1", "b2"]);
    let before = lb.fingerprint();
    assert_eq!(lb.get("/api/v1/services").status, 200);
    assert_eq!(lb.get("/metrics").status, 200);

    let path = "/api/v1/services/web/backends/b1/drain";
    let missing = lb.send(req("POST", path));
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"ringlb admin\"")
    );
    assert!(missing.json()["error"].is_string());
    let wrong = lb.send(Req {
        token: Some("s3cret-tokeN"),
        ..req("POST", path)
    });
    assert_eq!(wrong.status, 401);
    let basic = lb.send(Req {
        extra: "Authorization: Basic YWRtaW46YWRtaW4=\r\n",
        ..req("POST", path)
    });
    assert_eq!(basic.status, 401);
    assert_eq!(lb.fingerprint(), before, "a refused action changed state");

    let ok = lb.send(Req {
        token: Some(TOKEN),
        ..req("POST", path)
    });
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["state"], "DRAINING");
}

#[test]
fn actions_from_another_origin_are_refused() {
    let lb = start("", &["b1"]);
    let before = lb.fingerprint();
    let r = lb.send(Req {
        extra: "Origin: http://evil.example\r\n",
        ..req("POST", "/api/v1/services/web/backends/b1/disable")
    });
    assert_eq!(r.status, 403);
    assert_eq!(lb.fingerprint(), before);
    // The page's own origin passes (no token configured here).
    let own = format!("Origin: http://{}\r\n", lb.admin);
    let r = lb.send(Req {
        extra: &own,
        ..req("POST", "/api/v1/services/web/backends/b1/disable")
    });
    assert_eq!(r.status, 200, "{}", r.text());
}

// ------------------------------------------------------------- actions

#[test]
fn every_action_applies_and_answers_the_new_state() {
    let lb = start(&format!("admin_token = \"{TOKEN}\""), &["b1", "b2"]);
    let g0 = lb.fingerprint().0;

    let r = lb.action("b1", "drain");
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(b["service"], "web");
    assert_eq!(b["name"], "b1");
    assert_eq!(b["admin"], "drain");
    assert_eq!(b["state"], "DRAINING");
    assert_eq!(b["usable"], false);
    assert!(b["last_change"].as_str().expect("time").ends_with('Z'));

    let b = lb.action("b1", "disable").json();
    assert_eq!(
        (b["admin"].as_str(), b["state"].as_str()),
        (Some("disabled"), Some("DISABLED"))
    );
    let b = lb.action("b1", "enable").json();
    assert_eq!(
        (b["admin"].as_str(), b["state"].as_str()),
        (Some("enabled"), Some("HEALTHY"))
    );
    // Idempotent: enabling an enabled backend is fine and publishes nothing.
    let g1 = lb.fingerprint().0;
    assert_eq!(lb.action("b1", "enable").status, 200);
    assert_eq!(lb.fingerprint().0, g1);
    assert!(
        g1 >= g0 + 3,
        "three changes, three publications ({g0} → {g1})"
    );

    let r = lb.weight("b2", br#"{"weight": 250}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["weight"], 250);
    let (g2, backends) = lb.fingerprint();
    assert_eq!(g2, g1 + 1);
    assert_eq!(backends[1].3, 250);
    for w in [1, 10_000] {
        let r = lb.weight("b2", format!("{{\"weight\": {w}}}").as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["weight"], w);
    }
    let metrics = lb.get("/metrics").text();
    assert!(metrics.contains("ringlb_backend_weight{service=\"web\",backend=\"b2\"} 10000\n"));
}

#[test]
fn bad_requests_are_answered_and_change_nothing() {
    let lb = start(&format!("admin_token = \"{TOKEN}\""), &["b1", "b2"]);
    let before = lb.fingerprint();
    let check = |r: Resp, status: u16, what: &str| {
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if r.status != 431 {
            let doc = r.json();
            assert!(
                doc["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {doc}"
            );
            assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        }
        assert_eq!(lb.fingerprint(), before, "{what} changed state");
    };

    check(lb.action("nope", "drain"), 404, "unknown backend");
    let r = lb.send(Req {
        token: Some(TOKEN),
        ..req("POST", "/api/v1/services/nope/backends/b1/drain")
    });
    check(r, 404, "unknown service");
    check(lb.action("b1", "explode"), 404, "unknown action");
    check(lb.get("/api/v1/nothing"), 404, "unknown path");
    check(
        lb.weight("nope", br#"{"weight": 5}"#),
        404,
        "weight of unknown backend",
    );

    for body in [
        &br#"{"weight": 0}"#[..],
        br#"{"weight": 10001}"#,
        br#"{"weight": -3}"#,
        br#"{"weight": 1.5}"#,
        br#"{"weight": "100"}"#,
        br#"{"weight": 99999999999999999999999}"#,
        br#"{"weight": 100, "extra": 1}"#,
        br#"{"wait": 100}"#,
        br#"{"weight": 100"#,
        b"not json",
        b"",
        b"\xff\xfe",
    ] {
        check(
            lb.weight("b1", body),
            400,
            &format!("weight body {:?}", String::from_utf8_lossy(body)),
        );
    }
    let big = vec![b' '; 70 << 10];
    check(lb.weight("b1", &big), 413, "oversized body");

    let r = lb.send(Req {
        token: Some(TOKEN),
        ..req("GET", "/api/v1/services/web/backends/b1/drain")
    });
    assert_eq!(r.header("allow"), Some("POST"));
    check(r, 405, "GET on an action");
    let r = lb.send(Req {
        token: Some(TOKEN),
        body: Some(br#"{"weight": 5}"#),
        ..req("POST", "/api/v1/services/web/backends/b1/weight")
    });
    assert_eq!(r.header("allow"), Some("PUT"));
    check(r, 405, "POST on weight");
    let r = lb.send(Req {
        token: Some(TOKEN),
        ..req("DELETE", "/api/v1/services")
    });
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    check(r, 405, "DELETE on services");
    check(
        lb.send(Req {
            token: Some(TOKEN),
            ..req("POST", "/metrics")
        }),
        405,
        "POST on metrics",
    );

    // Not HTTP at all, and a head larger than the limit: answered by hyper,
    // and the server keeps serving.
    let garbage = raw_from(
        ip("127.0.0.1"),
        lb.admin,
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    );
    assert_eq!(garbage.status, 400);
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(40 << 10)
    );
    let r = raw_from(ip("127.0.0.1"), lb.admin, huge.as_bytes());
    assert!(
        r.status == 431 || r.status == 400,
        "oversized head: {}",
        r.status
    );
    assert_eq!(lb.fingerprint(), before);
}

// ----------------------------------------------------------- data plane

#[test]
fn drain_moves_new_connections_and_keeps_established_ones() {
    let lb = start(&format!("admin_token = \"{TOKEN}\""), &["b1", "b2", "b3"]);
    let (mut established, home) = lb.client("127.0.0.1");
    echo_round_trip(&mut established, b"before drain");
    // Same client address, same backend: Maglev on the client IP.
    let (_again, again) = lb.client("127.0.0.1");
    assert_eq!(again, home);

    let r = lb.action(&home, "drain");
    assert_eq!(r.status, 200, "{}", r.text());

    let (mut moved, elsewhere) = lb.client("127.0.0.1");
    assert_ne!(
        elsewhere, home,
        "a new connection still went to the drained backend"
    );
    echo_round_trip(&mut moved, b"new connection");
    // The established one keeps flowing, both ways.
    echo_round_trip(&mut established, b"after drain: still flowing");
    let doc = lb.services();
    let drained = doc["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == home.as_str())
        .expect("home backend")
        .clone();
    assert_eq!(drained["active"], 2, "{drained}");

    // Enabled again: the client comes home.
    assert_eq!(lb.action(&home, "enable").status, 200);
    let (_back, back) = lb.client("127.0.0.1");
    assert_eq!(back, home);
}

// -------------------------------------------------------------- metrics

/// A strict parser of the Prometheus text format 0.0.4: every line is a
/// HELP, a TYPE, a comment or a sample; names and label names are valid;
/// label values use only the three escapes; values are floats; one HELP and
/// one TYPE per family, before its samples; a family's samples contiguous;
/// no series twice. Returns series (`name{labels}` as written) → value.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    fn metric_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn value(s: &str) -> f64 {
        match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => s.parse().unwrap_or_else(|_| panic!("bad value {s:?}")),
        }
    }

    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut series = BTreeMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    // Histograms, per (family, labels but `le`): the buckets in order as
    // (le, cumulative count), and the _count.
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let mut parts = rest.splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts.next().unwrap_or_else(|| panic!("{at}"));
                    assert!(metric_name(name), "{at}: bad name");
                    let doc = parts.next().unwrap_or("");
                    let mut chars = doc.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' {
                            assert!(matches!(chars.next(), Some('\\' | 'n')), "{at}: bad escape");
                        }
                    }
                    assert!(helped.insert(name.into()), "{at}: second HELP");
                    assert!(!sampled.contains(name), "{at}: HELP after samples");
                }
                Some("TYPE") => {
                    let name = parts.next().unwrap_or_else(|| panic!("{at}"));
                    assert!(metric_name(name), "{at}: bad name");
                    let kind = parts.next().unwrap_or_else(|| panic!("{at}"));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{at}: bad type"
                    );
                    assert!(
                        typed.insert(name.into(), kind.into()).is_none(),
                        "{at}: second TYPE"
                    );
                    assert!(!sampled.contains(name), "{at}: TYPE after samples");
                }
                _ => {} // a comment
            }
            continue;
        }
        // name{labels} value [timestamp]
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{at}: no value"));
        let name = &line[..name_end];
        assert!(metric_name(name), "{at}: bad metric name");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (parsed, close) = parse_labels(after).unwrap_or_else(|e| panic!("{at}: {e}"));
            labels = parsed;
            rest = &after[close + 1..];
        }
        let names: HashSet<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names.len(), labels.len(), "{at}: label twice");
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before value"));
        let mut fields = rest.split(' ');
        let v = value(fields.next().unwrap_or_else(|| panic!("{at}")));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("{at}: bad timestamp"));
        }
        assert!(fields.next().is_none(), "{at}: trailing fields");

        // Families: counters and gauges are named as their samples; a
        // histogram's samples are its name + _bucket (with `le`), _sum,
        // _count.
        let histogram_base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"));
        if histogram_base.is_some() && name.ends_with("_bucket") {
            assert!(
                labels.iter().any(|(k, _)| k == "le"),
                "{at}: bucket without le"
            );
        }
        let family = histogram_base.unwrap_or(name).to_string();
        assert!(typed.contains_key(&family), "{at}: sample without TYPE");
        if current.as_deref() != Some(family.as_str()) {
            assert!(
                !sampled.contains(&family),
                "{at}: family {family} not contiguous"
            );
            current = Some(family.clone());
        }
        sampled.insert(family.clone());
        let key = format!(
            "{name}{{{}}}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(series.insert(key, v).is_none(), "{at}: series twice");
        let kind = typed[family.as_str()].as_str();
        if kind == "counter" {
            assert!(v >= 0.0, "{at}: negative counter");
            assert!(
                name.ends_with("_total"),
                "{at}: a counter's name ends in _total"
            );
        }
        if kind == "histogram" {
            assert!(
                histogram_base.is_some(),
                "{at}: not a _bucket, _sum or _count"
            );
            let rest: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            let group = (family.clone(), rest.join(","));
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| value(v));
                buckets
                    .entry(group)
                    .or_default()
                    .push((le.unwrap_or(f64::NAN), v));
            } else if name.ends_with("_count") {
                counts.insert(group, v);
            }
        }
    }
    // Each histogram: bounds strictly increasing, ending at +Inf; counts
    // cumulative; +Inf equal to _count.
    for (group, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{group:?}: buckets out of order or not cumulative: {b:?}"
        );
        let last = b.last().copied().unwrap_or((0.0, 0.0));
        assert_eq!(last.0, f64::INFINITY, "{group:?}: no +Inf bucket");
        assert_eq!(
            Some(&last.1),
            counts.get(group),
            "{group:?}: +Inf != _count"
        );
    }
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        buckets.keys().collect::<Vec<_>>(),
        "a histogram with _count and no buckets"
    );
    series
}

/// Parses `name="value",…}` (the part after `{`); returns the labels and
/// the index of the closing brace.
fn parse_labels(s: &str) -> Result<(Vec<(String, String)>, usize), String> {
    let label_name = |n: &str| {
        let mut c = n.chars();
        !n.starts_with("__")
            && matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        let start = match chars.peek() {
            Some(&(i, '}')) => return Ok((labels, i)),
            Some(&(i, _)) => i,
            None => return Err("unterminated labels".into()),
        };
        let eq = s[start..].find('=').ok_or("no '=' after a label name")? + start;
        let name = &s[start..eq];
        if !label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        while chars.peek().is_some_and(|&(i, _)| i <= eq) {
            chars.next();
        }
        if chars.next().map(|c| c.1) != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '"')) => break,
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        }
        labels.push((name.to_string(), value));
        match chars.next() {
            Some((_, ',')) => {}
            Some((i, '}')) => return Ok((labels, i)),
            other => return Err(format!("expected ',' or '}}', got {other:?}")),
        }
    }
}

#[test]
fn the_exposition_parser_is_strict() {
    let good = "# HELP a_total A \\\\ thing.\n# TYPE a_total counter\na_total{x=\"1\\\"\\n\"} 3\na_total{x=\"2\"} 4 1700000000\n# just a comment\n";
    assert_eq!(parse_exposition(good).len(), 2);
    for bad in [
        "a 1",                                             // no newline at the end
        "a 1\n",                                           // no TYPE
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                // bad escape
        "# TYPE a gauge\na{x=1} 1\n",                      // unquoted
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", // not contiguous
        "# TYPE a gauge\na 1\na 2\n",                      // series twice
        "# TYPE a gauge\na one\n",                         // bad value
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",           // TYPE twice
        "# TYPE 1a gauge\n",                               // bad name
        "# TYPE a gauge\na{__x=\"1\"} 1\n",                // reserved label
        "# TYPE a gauge\na{x=\"1\" 1\n",                   // unterminated labels
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",          // label twice
        "# TYPE a gauge\na{x=\"1\"}1\n",                   // no space before the value
        "# TYPE a counter\na 1\n",                         // a counter not named _total
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // le order
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n", // +Inf != count
        "# TYPE h histogram\nh 1\n",                         // a bare histogram sample
    ] {
        let caught = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(caught.is_err(), "accepted {bad:?}");
    }
}

fn metric(series: &BTreeMap<String, f64>, key: &str) -> f64 {
    *series
        .get(key)
        .unwrap_or_else(|| panic!("no series {key}; have {:#?}", series.keys()))
}

#[test]
fn metrics_are_a_valid_exposition_and_counters_move() {
    let lb = start("", &["b1", "b2"]);
    let r = lb.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let before = parse_exposition(&r.text());
    for key in [
        "ringlb_build_info{version=\"0.1.0\"}",
        "ringlb_config_generation{}",
        "ringlb_snapshot_generation{}",
        "ringlb_service_accepted_total{service=\"web\"}",
        "ringlb_service_connections_active{service=\"web\"}",
        "ringlb_service_retries_total{service=\"web\"}",
        "ringlb_service_no_backend_total{service=\"web\"}",
        "ringlb_backend_connections_active{service=\"web\",backend=\"b1\"}",
        "ringlb_backend_connections_total{service=\"web\",backend=\"b2\"}",
        "ringlb_backend_bytes_total{service=\"web\",backend=\"b1\",direction=\"to_backend\"}",
        "ringlb_backend_bytes_total{service=\"web\",backend=\"b1\",direction=\"to_client\"}",
        "ringlb_backend_connect_failures_total{service=\"web\",backend=\"b1\",reason=\"refused\"}",
        "ringlb_backend_connect_failures_total{service=\"web\",backend=\"b1\",reason=\"timeout\"}",
        "ringlb_backend_connect_failures_total{service=\"web\",backend=\"b1\",reason=\"other\"}",
        "ringlb_backend_healthy{service=\"web\",backend=\"b1\"}",
        "ringlb_backend_admin_state{service=\"web\",backend=\"b1\",state=\"enabled\"}",
        "ringlb_worker_accepted_total{worker=\"0\"}",
        "ringlb_worker_connections{worker=\"0\"}",
        "ringlb_worker_pipes_lent{worker=\"0\"}",
        "ringlb_worker_buffers_lent{worker=\"0\"}",
        "ringlb_worker_info{worker=\"0\",engine=\"epoll\"}",
    ] {
        metric(&before, key);
    }
    // Started without a config file: a reload is refused, and counted.
    assert_eq!(
        metric(&before, "ringlb_config_reloads_total{result=\"failure\"}"),
        0.0
    );
    let refused = lb.send(req("POST", "/api/v1/reload"));
    assert_eq!(refused.status, 422);
    assert!(refused.text().contains("started without a config file"));
    let reloaded = parse_exposition(&lb.get("/metrics").text());
    assert_eq!(
        metric(&reloaded, "ringlb_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    assert_eq!(
        metric(&reloaded, "ringlb_config_reloads_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(
        metric(&before, "ringlb_config_last_reload_successful{}"),
        1.0
    );
    assert_eq!(
        metric(&reloaded, "ringlb_config_last_reload_successful{}"),
        0.0
    );
    assert_eq!(
        metric(&before, "ringlb_service_accepted_total{service=\"web\"}"),
        0.0
    );
    assert_eq!(
        metric(
            &before,
            "ringlb_backend_healthy{service=\"web\",backend=\"b1\"}"
        ),
        1.0
    );

    // Traffic from three client addresses, each echoing 1000 bytes.
    let payload = vec![b'x'; 1000];
    for source in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let (mut s, _) = lb.client(source);
        echo_round_trip(&mut s, &payload);
    }
    let total = |m: &BTreeMap<String, f64>, name: &str, extra: &str| -> f64 {
        ["b1", "b2"]
            .iter()
            .map(|b| {
                metric(
                    m,
                    &format!("{name}{{service=\"web\",backend=\"{b}\"{extra}}}"),
                )
            })
            .sum()
    };
    // Bytes are counted when connections close: wait for it.
    let mut after = BTreeMap::new();
    wait_until("byte counters after the connections closed", || {
        after = parse_exposition(&lb.get("/metrics").text());
        total(
            &after,
            "ringlb_backend_bytes_total",
            ",direction=\"to_backend\"",
        ) >= 3000.0
            && total(&after, "ringlb_backend_connections_active", "") == 0.0
    });
    assert_eq!(total(&after, "ringlb_backend_connections_total", ""), 3.0);
    // The latency histograms: workers publish them at most once a second.
    wait_until("latency histograms to count the 3 connections", || {
        after = parse_exposition(&lb.get("/metrics").text());
        metric(&after, "ringlb_connection_duration_seconds_count{}") == 3.0
    });
    // Connect times: per backend, counted as the connect completes.
    assert_eq!(
        total(&after, "ringlb_backend_connect_seconds_count", ""),
        3.0
    );
    assert_eq!(
        total(
            &after,
            "ringlb_backend_connect_seconds_bucket",
            ",le=\"+Inf\""
        ),
        3.0
    );
    assert!(total(&after, "ringlb_backend_connect_seconds_sum", "") > 0.0);
    // Nobody's health changed (no checks: up from the start).
    assert_eq!(
        total(
            &after,
            "ringlb_backend_health_transitions_total",
            ",to=\"down\""
        ),
        0.0
    );
    // Each backend wrote its greeting ("b1\n") before the echo.
    assert_eq!(
        total(
            &after,
            "ringlb_backend_bytes_total",
            ",direction=\"to_client\""
        ),
        3.0 * 1003.0
    );
    assert_eq!(
        metric(&after, "ringlb_service_accepted_total{service=\"web\"}"),
        3.0
    );
    assert_eq!(
        metric(&after, "ringlb_worker_accepted_total{worker=\"0\"}"),
        3.0
    );

    // Admin state and usability show up too.
    assert_eq!(lb.action("b1", "drain").status, 200);
    let m = parse_exposition(&lb.get("/metrics").text());
    assert_eq!(
        metric(
            &m,
            "ringlb_backend_admin_state{service=\"web\",backend=\"b1\",state=\"drain\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "ringlb_backend_admin_state{service=\"web\",backend=\"b1\",state=\"enabled\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(&m, "ringlb_backend_usable{service=\"web\",backend=\"b1\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "ringlb_service_backends_usable{service=\"web\"}"),
        1.0
    );
    assert!(
        metric(&m, "ringlb_snapshot_generation{}")
            > metric(&before, "ringlb_snapshot_generation{}")
    );
}

// --------------------------------------------------------------- health

#[test]
fn health_is_ok_while_every_service_has_a_usable_backend() {
    let lb = start("", &["b1", "b2"]);
    let r = lb.get("/router/api/v1/system/health");
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["router"]["state"], "HEALTHY");
    assert_eq!(doc["router"]["message"], "OK");
    assert!(doc["router"]["node_id"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    let ids: Vec<&str> = doc["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["service_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["web/b1", "web/b2"]);
    assert_eq!(doc["services"][0]["state"], "HEALTHY");
    // The health reason, whatever the prober said.
    assert!(doc["services"][0]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));

    assert_eq!(lb.action("b1", "disable").status, 200);
    assert_eq!(lb.get("/router/api/v1/system/health").status, 200);
    assert_eq!(lb.action("b2", "drain").status, 200);
    let r = lb.get("/router/api/v1/system/health");
    assert_eq!(r.status, 503);
    let doc = r.json();
    assert_eq!(doc["router"]["state"], "UNHEALTHY");
    assert_eq!(doc["router"]["message"], "no usable backend in service web");
    assert_eq!(doc["services"][0]["state"], "DISABLED");
    assert_eq!(doc["services"][1]["state"], "DRAINING");

    assert_eq!(lb.action("b2", "enable").status, 200);
    assert_eq!(lb.get("/router/api/v1/system/health").status, 200);
}

#[test]
fn health_says_unhealthy_at_once_while_shutting_down() {
    let lb = start("", &["b1"]);
    // A held connection keeps the drain going (up to shutdown_timeout).
    let (mut held, _) = lb.client("127.0.0.1");
    lb._server.handle().shutdown();
    let mut doc = Value::Null;
    wait_until("the health answer to turn 503", || {
        let r = lb.get("/router/api/v1/system/health");
        doc = r.json();
        r.status == 503
    });
    assert_eq!(doc["router"]["state"], "UNHEALTHY");
    assert!(doc["router"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("shutting down")));
    // Reads and actions answer 503 at once instead of waiting for the
    // draining control plane.
    let asked = Instant::now();
    let r = lb.get("/api/v1/services");
    assert_eq!(r.status, 503);
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert_eq!(lb.action("b1", "drain").status, 503);
    // The established connection still flows while draining.
    echo_round_trip(&mut held, b"still here");
}

// ---------------------------------------------------------- status page

#[test]
fn status_page_is_one_self_contained_document() {
    let lb = start("", &["b1"]);
    let r = lb.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
    let html = r.text();
    assert!(html.contains("/api/v1/services"));
    assert!(!html.contains("<script src") && !html.contains("<link"));
    let head = lb.send(req("HEAD", "/metrics"));
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

// ------------------------------------------------------------- registry

#[test]
fn a_weight_change_rebuilds_the_maglev_table() {
    use lb_core::Registry;
    use std::num::NonZeroU32;
    let toml =
        "[global]\nadmin = \"off\"\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\
        [service.health]\nkind = \"none\"\n\
        [[service.backend]]\nname = \"b1\"\naddress = \"127.0.0.1:1\"\n\
        [[service.backend]]\nname = \"b2\"\naddress = \"127.0.0.1:2\"\n";
    let config = Config::parse(toml, None).expect("config");
    let mut registry = Registry::new(&config);
    let slots_of_b1 = |registry: &mut Registry| {
        let snap = registry.snapshot().expect("snapshot");
        let table = snap.services[0].maglev_table().expect("maglev").clone();
        (0..table.size()).filter(|&s| table.owner(s) == 0).count() as f64 / table.size() as f64
    };
    let even = slots_of_b1(&mut registry);
    assert!((even - 0.5).abs() < 0.01, "{even}");
    let old = registry
        .set_weight("web", "b1", NonZeroU32::new(300).expect("nonzero"))
        .expect("known backend");
    assert_eq!(old.get(), 100);
    let heavy = slots_of_b1(&mut registry);
    assert!((heavy - 0.75).abs() < 0.01, "{heavy}");
    assert!(registry.set_weight("web", "b9", NonZeroU32::MIN).is_err());
}
