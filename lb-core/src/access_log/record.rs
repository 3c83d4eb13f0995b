//! What an access log line says: why a connection ended ([`EndCause`], the
//! documented set with stable labels), the fixed-size [`AccessRecord`] a
//! worker builds at a connection's end, the per-service counts by cause
//! ([`EndCounts`], for `/metrics`), and the two line formats.
//!
//! Records and counts are made on the worker threads (no allocation, no
//! formatting, no syscall there); the lines are formatted on the
//! `ringlb-access-log` thread.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a client connection ended. The labels are stable: they are what the
/// access log, `/metrics` and dashboards say (docs/admin.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// Both directions finished; the client sent the first FIN.
    ClientClosed,
    /// Both directions finished; the backend sent the first FIN.
    BackendClosed,
    /// The client's socket failed (an RST, a write that failed): the
    /// backend was reset.
    ClientReset,
    /// The backend's socket failed: the client was reset.
    BackendReset,
    /// No byte moved for the service's `idle_timeout`: both were reset.
    IdleTimeout,
    /// Every backend tried failed to connect (refused, timed out,
    /// unreachable): the client was reset.
    ConnectFailed,
    /// No backend was usable to try (all down, drained or disabled, or the
    /// service left the config): the client was reset.
    NoBackend,
    /// A shortage of this host (descriptors, memory, local ports), never a
    /// backend's fault: the connection was reset.
    LocalError,
    /// ringlb was stopping: the connection outlived the drain, or was
    /// accepted by a listener that was closing.
    Shutdown,
    /// An `accept_proxy` service's client sent no usable PROXY header (from
    /// an untrusted address, malformed, oversized, late, or closed first:
    /// `ringlb_proxy_header_refused_total` has the reason): the client was
    /// reset, no backend asked.
    ProxyHeader,
    /// The service's per-source rules refused the client (`deny`, not in
    /// `allow`, `max_connections_per_source`, `new_connections_per_source`:
    /// `ringlb_service_refused_total` has the reason): the client was
    /// reset, no backend asked.
    SourceRefused,
    /// A client of a listen address that routes by server name (`sni`)
    /// sent no ClientHello ringlb reads in time, or asked for a name no
    /// service there takes (`ringlb_sni_refused_total` has the reason):
    /// the client was reset, no backend asked.
    SniRefused,
}

impl EndCause {
    /// Every cause, in label order of the docs.
    pub const ALL: [EndCause; 12] = [
        EndCause::ClientClosed,
        EndCause::BackendClosed,
        EndCause::ClientReset,
        EndCause::BackendReset,
        EndCause::IdleTimeout,
        EndCause::ConnectFailed,
        EndCause::NoBackend,
        EndCause::LocalError,
        EndCause::Shutdown,
        EndCause::ProxyHeader,
        EndCause::SourceRefused,
        EndCause::SniRefused,
    ];

    /// The stable snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            EndCause::ClientClosed => "client_closed",
            EndCause::BackendClosed => "backend_closed",
            EndCause::ClientReset => "client_reset",
            EndCause::BackendReset => "backend_reset",
            EndCause::IdleTimeout => "idle_timeout",
            EndCause::ConnectFailed => "connect_failed",
            EndCause::NoBackend => "no_backend",
            EndCause::LocalError => "local_error",
            EndCause::Shutdown => "shutdown",
            EndCause::ProxyHeader => "proxy_header",
            EndCause::SourceRefused => "source_refused",
            EndCause::SniRefused => "sni_refused",
        }
    }

    /// Which sides an abort for this cause resets (client, backend): the
    /// side that failed is only closed, the other learns it by an RST.
    pub(crate) fn resets(self) -> (bool, bool) {
        match self {
            EndCause::ClientClosed | EndCause::BackendClosed => (false, false),
            EndCause::ClientReset => (false, true),
            EndCause::BackendReset => (true, false),
            EndCause::ConnectFailed
            | EndCause::NoBackend
            | EndCause::ProxyHeader
            | EndCause::SourceRefused
            | EndCause::SniRefused => (true, false),
            EndCause::IdleTimeout | EndCause::LocalError | EndCause::Shutdown => (true, true),
        }
    }

    /// The cause of an abort the pumps asked for, from the sides to reset.
    pub(crate) fn of_abort(reset_client: bool, reset_backend: bool) -> EndCause {
        match (reset_client, reset_backend) {
            (false, true) => EndCause::ClientReset,
            (true, false) => EndCause::BackendReset,
            // Both reset: no pipe or buffer could be had (the host's).
            _ => EndCause::LocalError,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per-service connection ends by cause, split by whether a backend was
/// reached ("closed") or not ("refused"). Counted by the workers at every
/// end, log on or off.
#[derive(Debug, Default)]
pub struct EndCounts {
    closed: [AtomicU64; EndCause::ALL.len()],
    refused: [AtomicU64; EndCause::ALL.len()],
}

impl EndCounts {
    /// Counts one end; `established`: a backend was connected.
    pub(crate) fn count(&self, established: bool, cause: EndCause) {
        let by = if established {
            &self.closed
        } else {
            &self.refused
        };
        by[cause.index()].fetch_add(1, Relaxed);
    }

    /// Connections that reached a backend and ended for `cause`.
    pub fn closed(&self, cause: EndCause) -> u64 {
        self.closed[cause.index()].load(Relaxed)
    }

    /// Connections that ended for `cause` before reaching a backend.
    pub fn refused(&self, cause: EndCause) -> u64 {
        self.refused[cause.index()].load(Relaxed)
    }
}

/// One connection's end, as the worker saw it. Built without allocating
/// (the names are shared `Arc`s); formatted by the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct AccessRecord {
    /// When it ended (wall clock, for the line's timestamp).
    pub(crate) at: SystemTime,
    pub(crate) service: Arc<str>,
    /// The client's address and port.
    pub(crate) client: SocketAddr,
    /// The listener's address (the port that took it).
    pub(crate) listen: SocketAddr,
    /// The backend it was connected to (name, address); None when none was
    /// reached.
    pub(crate) backend: Option<(Arc<str>, SocketAddr)>,
    /// Connects started, across backends.
    pub(crate) attempts: u8,
    /// From the start of the successful connect to its completion.
    pub(crate) connect_time: Option<Duration>,
    /// From accept to close.
    pub(crate) duration: Duration,
    /// Bytes delivered to the backend / to the client.
    pub(crate) bytes_to_backend: u64,
    pub(crate) bytes_to_client: u64,
    pub(crate) cause: EndCause,
}

impl AccessRecord {
    /// Appends the text line (space-separated `key=value`, `\n`-ended).
    /// Values are bare unless they hold a space, a quote, `=`, a backslash
    /// or a control character; then they are JSON-quoted.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"time=");
        write_time(out, self.at);
        out.extend_from_slice(b" service=");
        write_value(out, &self.service);
        let _ = write!(out, " client={} listen={}", self.client, self.listen);
        match &self.backend {
            Some((name, address)) => {
                out.extend_from_slice(b" backend=");
                write_value(out, name);
                let _ = write!(out, " backend_address={address}");
            }
            None => out.extend_from_slice(b" backend=- backend_address=-"),
        }
        let _ = write!(out, " attempts={} connect_ms=", self.attempts);
        match self.connect_time {
            Some(t) => write_ms(out, t),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" duration_ms=");
        write_ms(out, self.duration);
        let _ = writeln!(
            out,
            " bytes_to_backend={} bytes_to_client={} cause={}",
            self.bytes_to_backend,
            self.bytes_to_client,
            self.cause.label()
        );
    }

    /// Appends the JSON line (one object, `\n`-ended).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let mut time = Vec::with_capacity(32);
        write_time(&mut time, self.at);
        let ms = |d: Duration| (d.as_micros() as f64) / 1000.0;
        let line = Json {
            time: std::str::from_utf8(&time).unwrap_or(""),
            service: &self.service,
            client: self.client,
            listen: self.listen,
            backend: self.backend.as_ref().map(|(n, _)| &**n),
            backend_address: self.backend.as_ref().map(|(_, a)| *a),
            attempts: self.attempts,
            connect_ms: self.connect_time.map(ms),
            duration_ms: ms(self.duration),
            bytes_to_backend: self.bytes_to_backend,
            bytes_to_client: self.bytes_to_client,
            cause: self.cause.label(),
        };
        // Writing into a Vec fails only for a map with non-string keys.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

/// The JSON line's fields, borrowed from the record.
#[derive(serde::Serialize)]
struct Json<'a> {
    time: &'a str,
    service: &'a str,
    client: SocketAddr,
    listen: SocketAddr,
    backend: Option<&'a str>,
    backend_address: Option<SocketAddr>,
    attempts: u8,
    connect_ms: Option<f64>,
    duration_ms: f64,
    bytes_to_backend: u64,
    bytes_to_client: u64,
    cause: &'a str,
}

/// Milliseconds with microsecond precision (`12.345`).
fn write_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

/// A text value, quoted only when it must be.
fn write_value(out: &mut Vec<u8>, v: &str) {
    let bare = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if bare {
        out.extend_from_slice(v.as_bytes());
    } else {
        let _ = serde_json::to_writer(&mut *out, v);
    }
}

/// RFC 3339 UTC with milliseconds: `2026-12-04T14:25:11.123Z`.
fn write_time(out: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            at: UNIX_EPOCH + Duration::from_millis(1_796_394_311_123),
            service: Arc::from("web"),
            client: "127.0.0.2:40000".parse().unwrap(),
            listen: "127.0.0.1:8080".parse().unwrap(),
            backend: Some((Arc::from("b1"), "[::1]:9001".parse().unwrap())),
            attempts: 2,
            connect_time: Some(Duration::from_micros(1_250)),
            duration: Duration::from_micros(12_345_678),
            bytes_to_backend: 100,
            bytes_to_client: 2048,
            cause: EndCause::BackendClosed,
        }
    }

    #[test]
    fn the_text_line_is_one_line_of_key_value_pairs() {
        let mut out = Vec::new();
        record().write_text(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "time=2026-12-04T14:25:11.123Z service=web client=127.0.0.2:40000 \
             listen=127.0.0.1:8080 backend=b1 backend_address=[::1]:9001 attempts=2 \
             connect_ms=1.250 duration_ms=12345.678 bytes_to_backend=100 \
             bytes_to_client=2048 cause=backend_closed\n"
        );
        let mut r = record();
        r.backend = None;
        r.connect_time = None;
        r.service = Arc::from("a b\"=");
        let mut out = Vec::new();
        r.write_text(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(" service=\"a b\\\"=\" "), "{line}");
        assert!(line.contains(" backend=- backend_address=- "), "{line}");
        assert!(line.contains(" connect_ms=- "), "{line}");
    }

    #[test]
    fn the_json_line_is_one_valid_object() {
        let mut out = Vec::new();
        record().write_json(&mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-04T14:25:11.123Z");
        assert_eq!(v["client"], "127.0.0.2:40000");
        assert_eq!(v["backend"], "b1");
        assert_eq!(v["backend_address"], "[::1]:9001");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["connect_ms"], 1.25);
        assert_eq!(v["bytes_to_client"], 2048);
        assert_eq!(v["cause"], "backend_closed");
        let mut r = record();
        r.backend = None;
        let mut out = Vec::new();
        r.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["backend"].is_null() && v["backend_address"].is_null());
    }

    #[test]
    fn dates_are_proleptic_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn labels_are_distinct_and_snake_case() {
        let labels: Vec<_> = EndCause::ALL.iter().map(|c| c.label()).collect();
        for (i, l) in labels.iter().enumerate() {
            assert!(l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!labels[..i].contains(l));
            assert_eq!(EndCause::ALL[i].index(), i);
        }
    }
}
