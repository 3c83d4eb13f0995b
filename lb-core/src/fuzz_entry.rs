//! Hostile input for a coverage-guided fuzzer: one entry point per target
//! (`config`, `health`, `admin`, `join`, `handover`), each taking the raw
//! bytes afl (or any other driver) hands it and asserting the properties
//! the proptest targets (`src/fuzz.rs`) check: no panic, bounded errors
//! whose positions point inside the input, answers that the rest of ringlb
//! would accept. A violated property panics, which is how a fuzzer sees a
//! finding; a hang is the fuzzer's own timeout. Runs on the caller's
//! thread (plus a loopback server thread for `health`, a peer thread for
//! `handover`).
//!
//! Built only with the `fuzzing` feature (the `fuzz/` crate, driven by
//! `scripts/fuzz.sh --afl`) and in lb-core's own tests, which feed it the
//! committed corpora. Not part of ringlb's API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use http::Method;

use crate::admin::auth::{constant_time_eq, cross_origin, Credentials};
use crate::admin::join::{parse_join, parse_leave};
use crate::admin::{parse_weight, Route};
use crate::config::{
    BackendAddr, BackendName, Config, DegradedIs, HealthCheck, HealthKind, MAX_WEIGHT,
};
use crate::handover::{decode_batch, serve_takeover, Offer};
use crate::health::probe::connect_status;
use crate::health::verdict::judge;
use crate::health::{probe, ProxySettings, Reason};

/// Longest error message any parser of outside bytes may produce: an
/// attacker's bytes must not be echoed back (or logged) unbounded.
pub const MAX_MESSAGE: usize = 1024;

/// Longest config error, in characters (long values are cut in the middle).
pub const MAX_CONFIG_MESSAGE: usize = 600;

/// What is wrong with an error `message` about `input`, if anything: empty,
/// longer than [`MAX_MESSAGE`], or naming a serde_json position (`line L
/// column C`) outside `input`.
pub fn message_fault(message: &str, input: &[u8]) -> Option<String> {
    if message.is_empty() {
        return Some("an empty error message".to_owned());
    }
    if message.len() > MAX_MESSAGE {
        return Some(format!(
            "an error message of {} bytes: {:?}…",
            message.len(),
            message.chars().take(120).collect::<String>()
        ));
    }
    let (line, col) = json_position(message)?;
    (!position_inside(input, line, col)).then(|| {
        format!(
            "{message:?} points at {line}:{col}, outside the {}-byte input",
            input.len()
        )
    })
}

/// The `line L column C` serde_json puts at the end of its messages.
pub fn json_position(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind(" at line ")?;
    let mut words = message[at..].split_whitespace().skip(2);
    let line = words.next()?.parse().ok()?;
    let _column = words.next()?;
    let col = words.next()?.parse().ok()?;
    Some((line, col))
}

/// True if 1-based `line`:`col` lies in `input` or just past its end (an
/// error at end of input). Columns count bytes (serde_json) or chars
/// (the config): bytes is the looser bound.
pub fn position_inside(input: &[u8], line: usize, col: usize) -> bool {
    let Some(text) = input.split(|&b| b == b'\n').nth(line.wrapping_sub(1)) else {
        return false;
    };
    line >= 1 && col <= text.len() + 1
}

/// Panics with the fault of `message`, if it has one.
fn assert_message(what: &str, message: &str, input: &[u8]) {
    if let Some(fault) = message_fault(message, input) {
        panic!("{what}: {fault}");
    }
}

/// Target `config`: [`Config`] from bytes (UTF-8 or not). Its error is
/// short, and located inside the text or about the file as a whole.
pub fn config(data: &[u8]) {
    let Err(e) = Config::parse_bytes(data, None) else {
        return;
    };
    assert!(!e.message.is_empty(), "an empty config error");
    let chars = e.message.chars().count();
    assert!(
        chars <= MAX_CONFIG_MESSAGE,
        "a config error of {chars} characters: {:.200}",
        e.message
    );
    match (e.line, e.col) {
        (Some(line), Some(col)) => assert!(
            position_inside(data, line, col),
            "{e:.300} points outside the {}-byte text",
            data.len()
        ),
        (None, None) => {}
        _ => panic!("a line without a column or the reverse: {e:?}"),
    }
}

/// Target `health`: `data` as a body to judge (as the router's JSON or
/// text), as a proxy's answer to CONNECT, and as a whole HTTP answer that
/// a loopback server sends a real [`probe`].
pub fn health(data: &[u8]) {
    health_body(data);
    health_answer(data);
}

/// The verdict on a body and the CONNECT status line (no sockets).
pub fn health_body(data: &[u8]) {
    for (status, degraded) in [
        (200, DegradedIs::Unhealthy),
        (200, DegradedIs::Healthy),
        (503, DegradedIs::Unhealthy),
    ] {
        if let Err(reason) = judge(status, data, degraded) {
            let shown = reason.to_string();
            assert!(
                shown.len() <= MAX_MESSAGE,
                "a reason of {} bytes: {shown:.200}",
                shown.len()
            );
            if let Reason::BadJson(why) = &reason {
                assert_message("judge", why, data.trim_ascii());
            }
        }
    }
    if let Some(code) = connect_status(data) {
        assert!(code <= 999, "status {code} from a CONNECT answer");
    }
}

/// A loopback server that answers each connection with the next of
/// `answers` (after reading the request head), then closes it. Ends when
/// `answers` is dropped.
pub(crate) fn answering_server(answers: mpsc::Receiver<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("the listener's address");
    std::thread::spawn(move || {
        for answer in answers {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(&answer);
        }
    });
    addr
}

/// A whole HTTP answer read by [`probe`] from a loopback server (one per
/// thread, kept): a verdict within the probe's timeout (the fuzzer's
/// timeout catches a hang), a reason of bounded length.
pub fn health_answer(data: &[u8]) {
    thread_local! {
        static SERVER: (mpsc::Sender<Vec<u8>>, SocketAddr, tokio::runtime::Runtime) = {
            let (tx, rx) = mpsc::channel();
            let addr = answering_server(rx);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            (tx, addr, rt)
        };
    }
    let check = HealthCheck {
        kind: HealthKind::Http,
        timeout: Duration::from_millis(500),
        max_body: 4096,
        ..HealthCheck::default()
    };
    let verdict = SERVER.with(|(tx, addr, rt)| {
        tx.send(data.to_vec()).expect("the answering server runs");
        rt.block_on(probe(&check, *addr, None, &ProxySettings::default()))
    });
    if let Err(reason) = verdict {
        let shown = reason.to_string();
        assert!(
            shown.len() <= MAX_MESSAGE,
            "a reason of {} bytes: {shown:.200}",
            shown.len()
        );
    }
}

/// The token the `admin` target compares against.
const TOKEN: &str = "s3cret-T0ken";

/// Target `admin`: `data` as a request path ([`Route`]), an
/// `Authorization` value, an `Origin` and a `Host` (split at the first
/// newline) and a `PUT …/weight` body.
pub fn admin(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    if let Some(route) = Route::parse(&path) {
        // A route answers one method (and HEAD for GET), never others.
        assert!(route.accepts(&route.method()), "{path:?}");
        assert!(!route.accepts(&Method::DELETE), "{path:?}");
        match route {
            Route::Backend {
                service, backend, ..
            } => {
                assert!(!service.is_empty() && !service.contains('/'), "{path:?}");
                assert!(!backend.is_empty() && !backend.contains('/'), "{path:?}");
            }
            Route::Membership { service, .. } => {
                assert!(!service.is_empty() && !service.contains('/'), "{path:?}");
            }
            _ => {}
        }
    }

    let credentials = Credentials::from_header(Some(data));
    if let Credentials::Bearer(token) = credentials {
        assert_eq!(token.trim(), token, "a bearer token with spaces around it");
    }
    assert_eq!(
        credentials.match_token(TOKEN),
        credentials == Credentials::Bearer(TOKEN),
        "the token check is not exact"
    );
    assert_eq!(
        constant_time_eq(data, TOKEN.as_bytes()),
        data == TOKEN.as_bytes(),
        "constant_time_eq is not exact"
    );

    let (origin, host) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    let _ = cross_origin(Some(origin), Some(host));
    assert!(
        !cross_origin(None, Some(host)),
        "no Origin header is a script, and passes"
    );
    let same: Vec<u8> = [b"http://".as_slice(), host].concat();
    assert!(
        !cross_origin(Some(&same), Some(host)),
        "the same origin is refused"
    );

    match parse_weight(data) {
        Ok(weight) => assert!(weight.get() <= MAX_WEIGHT, "weight {weight}"),
        Err(message) => assert_message("parse_weight", &message, data),
    }
}

/// Target `join`: join and leave bodies. An accepted backend is one the
/// config file would accept too.
pub fn join(data: &[u8]) {
    match parse_join(data) {
        Ok(backend) => {
            assert!(
                BackendName::parse(&backend.name).is_ok(),
                "{:?}",
                backend.name
            );
            assert!(
                BackendAddr::parse(&backend.address.to_string()).is_ok(),
                "{} does not parse again",
                backend.address
            );
            assert!(backend.weight.get() <= MAX_WEIGHT, "{}", backend.weight);
        }
        Err(message) => assert_message("parse_join", &message, data),
    }
    match parse_leave(data) {
        Ok(name) => assert!(BackendName::parse(&name).is_ok(), "{name:?}"),
        Err(message) => assert_message("parse_leave", &message, data),
    }
}

/// Target `handover`: `data` as a JSON batch carrying 0 to 3 sockets, and
/// as the new process's lines to the old one over a real Unix socket pair.
pub fn handover(data: &[u8]) {
    for fds in 0..4 {
        match decode_batch(data, fds) {
            Ok(batch) => assert_eq!(batch.listeners.len(), fds, "a batch lists other sockets"),
            Err(e) => assert_message("decode_batch", &e.to_string(), data),
        }
    }
    let (ours, theirs) = UnixStream::pair().expect("a socket pair");
    let sent = data.to_vec();
    let peer = std::thread::spawn(move || {
        let mut theirs = theirs;
        let _ = theirs.write_all(&sent);
        let _ = theirs.shutdown(std::net::Shutdown::Write);
        // Drain whatever the old side sends, until it closes.
        let _ = theirs.set_read_timeout(Some(Duration::from_secs(5)));
        let mut sink = Vec::new();
        let _ = theirs.read_to_end(&mut sink);
    });
    let served = serve_takeover(ours, &Offer::default(), Duration::from_secs(1));
    peer.join().expect("the peer thread");
    if let Err(e) = served {
        let message = e.to_string();
        assert!(
            message.len() <= MAX_MESSAGE,
            "an error of {} bytes: {message:.200}",
            message.len()
        );
    }
}

/// Target `proxy_header`: the first bytes of a connection from a trusted
/// balancer. A complete header is no longer than the input or the cap and
/// judged the same on its own bytes; `Incomplete` only below the cap; a
/// verdict, once given, stands on every longer prefix.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy_header::{parse, Parsed, MAX_HEADER};
    let verdict = parse(data);
    match verdict {
        Parsed::Complete { len, .. } => {
            assert!(
                len <= data.len() && len <= MAX_HEADER,
                "a {len}-byte header"
            );
            assert_eq!(parse(&data[..len]), verdict, "judged otherwise alone");
        }
        Parsed::Incomplete => assert!(data.len() < MAX_HEADER, "incomplete at {}", data.len()),
        Parsed::Refused(_) => {}
    }
    let mut decided = None;
    for n in 0..=data.len().min(MAX_HEADER) {
        match (decided, parse(&data[..n])) {
            (None, Parsed::Incomplete) => {}
            (None, v) => decided = Some(v),
            (Some(d), v) => assert_eq!(d, v, "at {n} bytes"),
        }
    }
}

/// Target `tls_hello`: the first bytes of a client of an SNI-routed
/// service (or one a TLS-safe retry may replay). A complete hello is no
/// longer than the input or the cap and judged the same on its own bytes;
/// `Incomplete` only below the cap; a verdict, once given, stands on every
/// longer prefix (checked on every prefix of the first 4 KiB, then every
/// 61st: a worker re-scans a growing peek).
pub fn tls_hello(data: &[u8]) {
    use crate::tls_hello::{scan, Scan, MAX_HELLO};
    let verdict = scan(data);
    match verdict {
        Scan::Complete { len, .. } => {
            assert!(len <= data.len() && len <= MAX_HELLO, "a {len}-byte hello");
            assert_eq!(scan(&data[..len]), verdict, "judged otherwise alone");
        }
        Scan::Incomplete => assert!(data.len() < MAX_HELLO, "incomplete at {}", data.len()),
        Scan::Refused(_) => {}
    }
    let mut decided = None;
    let end = data.len().min(MAX_HELLO);
    let prefixes = (0..=end.min(4096))
        .chain((4096..=end).step_by(61))
        .chain([end]);
    for n in prefixes {
        match (decided, scan(&data[..n])) {
            (None, Scan::Incomplete) => {}
            (None, v) => decided = Some(v),
            (Some(d), v) => assert_eq!(d, v, "at {n} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_inside_and_outside() {
        assert!(position_inside(b"ab\ncd", 2, 3));
        assert!(position_inside(b"", 1, 1));
        assert!(!position_inside(b"ab\ncd", 3, 1));
        assert!(!position_inside(b"ab\ncd", 1, 5));
        assert!(!position_inside(b"ab", 0, 1));
        assert_eq!(
            json_position("expected value at line 3 column 14"),
            Some((3, 14))
        );
        assert_eq!(json_position("no position"), None);
        assert!(message_fault("bad at line 9 column 1", b"{}").is_some());
        assert!(message_fault("bad at line 1 column 2", b"{}").is_none());
        assert!(message_fault("", b"{}").is_some());
    }

    /// Every committed corpus file (the seeds and what afl found) through
    /// its target's entry point: the entry points hold on them.
    #[test]
    fn the_corpora_pass_their_entry_points() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fuzz/corpus");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 7] = [
            ("config", config),
            ("health", health),
            ("admin", admin),
            ("join", join),
            ("handover", handover),
            ("proxy_header", proxy_header),
            ("tls_hello", tls_hello),
        ];
        for (target, entry) in targets {
            let dir = root.join(target);
            let mut seen = 0;
            for file in std::fs::read_dir(&dir).expect("the corpus directory") {
                let path = file.expect("a corpus entry").path();
                let data = std::fs::read(&path).expect("a corpus file");
                let outcome = std::panic::catch_unwind(|| entry(&data));
                assert!(outcome.is_ok(), "{target} fails on {}", path.display());
                seen += 1;
            }
            assert!(
                seen >= 2,
                "{target}: only {seen} corpus files in {}",
                dir.display()
            );
        }
    }
}
