//! `GET /metrics`: the Prometheus text exposition format 0.0.4, rendered
//! at scrape time from a [`StatusView`] and the workers' counters. Runs in
//! the admin server on the control-plane thread. `process`: the standard
//! process collector's families, from /proc.
//!
//! Written by hand rather than with `prometheus-client`: every counter here
//! is an atomic owned by a worker or the registry, so a registry of metric
//! objects would only mirror them; and that crate writes OpenMetrics (its
//! counter families drop the `_total` the samples carry, and it ends with
//! `# EOF`), which is not the 0.0.4 text a `text/plain; version=0.0.4`
//! scrape expects. The format rules kept here: one `# HELP` and one
//! `# TYPE` per family, before its samples; a family's samples contiguous;
//! label values escaped (`\\`, `\"`, `\n`); one series per label set.

mod process;

use std::fmt::{Display, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::access_log::{AccessLogHandle, EndCause};
use crate::admin::view::{admin_str, ServiceView, StatusView};
use crate::config::AdminState;
use crate::control::Health;
use crate::source_limits::SourceRefused;
use crate::stats::{
    ConnectionBudget, LocalKind, ProxyRefused, SniRefused, CONNECT_BUCKETS_US, HEALTH_STATES,
    LOCAL_ERRORS, LOG_LOSS,
};
use crate::worker::WorkerControl;

/// `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The text being written.
struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family just started.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Renders every metric. Counters are read with relaxed loads: each value
/// is exact, the set is not one instant (as with any scrape).
pub(crate) fn render(
    view: &StatusView,
    workers: &[Arc<WorkerControl>],
    budget: &ConnectionBudget,
    access_log: Option<&AccessLogHandle>,
) -> String {
    let mut e = Exposition {
        out: String::with_capacity(4096),
    };

    e.family(
        "ringlb_build_info",
        Kind::Gauge,
        "Always 1; the version label says which ringlb runs.",
    );
    e.sample(
        "ringlb_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    process::ProcessFigures::read().render(&mut e);
    e.family(
        "ringlb_config_generation",
        Kind::Gauge,
        "Configurations loaded: 1 at start, +1 per successful reload.",
    );
    e.sample("ringlb_config_generation", &[], view.config_generation);
    e.family(
        "ringlb_config_reloads_total",
        Kind::Counter,
        "Config reloads (SIGHUP or the admin API), by result: success (applied) or failure (refused; the running config kept serving).",
    );
    for (result, n) in [
        ("success", view.reloads_ok),
        ("failure", view.reloads_failed),
    ] {
        e.sample("ringlb_config_reloads_total", &[("result", result)], n);
    }
    e.family(
        "ringlb_config_last_reload_successful",
        Kind::Gauge,
        "1 if the last reload was applied (or none was asked for since start), 0 if it was refused.",
    );
    e.sample(
        "ringlb_config_last_reload_successful",
        &[],
        u64::from(view.last_reload_successful),
    );
    e.family(
        "ringlb_log_records_lost_total",
        Kind::Counter,
        "Log records that never reached the log, by reason: dropped (the log queue was full: its reader is slow or stopped) or failed (the write failed: a closed pipe, a full disk).",
    );
    for (reason, n) in [
        ("dropped", LOG_LOSS.dropped()),
        ("failed", LOG_LOSS.failed()),
    ] {
        e.sample("ringlb_log_records_lost_total", &[("reason", reason)], n);
    }
    render_budget(&mut e, budget);
    e.family(
        "ringlb_snapshot_generation",
        Kind::Gauge,
        "Generation of the published backend table; increases on every reload, admin action and health change.",
    );
    e.sample("ringlb_snapshot_generation", &[], view.generation);

    render_services(&mut e, view);
    render_fingerprints(&mut e, view);
    render_ends(&mut e, view);
    if let Some(log) = access_log {
        render_access_log(&mut e, log);
    }
    render_backends(&mut e, view);
    render_workers(&mut e, workers);
    render_latencies(&mut e, workers);
    e.out
}

/// The process's connection budget and the local errors.
fn render_budget(e: &mut Exposition, budget: &ConnectionBudget) {
    e.family(
        "ringlb_connections_budget",
        Kind::Gauge,
        "Client connections the process holds at most ([global] max_connections, by default what the open-files limit can hold); at it workers stop accepting and clients wait in the listen backlog.",
    );
    e.sample("ringlb_connections_budget", &[], budget.limit());
    e.family(
        "ringlb_connections_active",
        Kind::Gauge,
        "Client connections held now by the whole process (all services and workers).",
    );
    e.sample("ringlb_connections_active", &[], budget.active());
    e.family(
        "ringlb_connections_budget_full_total",
        Kind::Counter,
        "Times a worker paused accepting because the connection budget was spent.",
    );
    e.sample(
        "ringlb_connections_budget_full_total",
        &[],
        budget.full_total(),
    );
    e.family(
        "ringlb_local_errors_total",
        Kind::Counter,
        "Errors that are this host's shortage, not a backend's (never counted against a backend's health), by kind: emfile, enfile, enobufs, enomem (on accept, socket, connect, pipe), eaddrnotavail, eaddrinuse (no free local port to connect from).",
    );
    for kind in LocalKind::ALL {
        e.sample(
            "ringlb_local_errors_total",
            &[("kind", kind.name())],
            LOCAL_ERRORS.count(kind),
        );
    }
}

fn render_services(e: &mut Exposition, view: &StatusView) {
    type Read = fn(&ServiceView) -> u64;
    let families: [(&str, Kind, &str, Read); 6] = [
        (
            "ringlb_service_accepted_total",
            Kind::Counter,
            "Client connections accepted.",
            |s| s.stats.accepted.load(Relaxed),
        ),
        (
            "ringlb_service_connections_active",
            Kind::Gauge,
            "Client connections held now (accepted, not yet closed).",
            |s| s.stats.active.load(Relaxed) as u64,
        ),
        (
            "ringlb_service_retries_total",
            Kind::Counter,
            "Connects retried on another backend after a failure.",
            |s| s.stats.retries.load(Relaxed),
        ),
        (
            "ringlb_tls_replays_total",
            Kind::Counter,
            "TLS ClientHellos replayed to another backend after the first closed or reset before answering.",
            |s| s.stats.tls_replays.load(Relaxed),
        ),
        (
            "ringlb_service_no_backend_total",
            Kind::Counter,
            "Client connections closed because no backend was usable or every attempt failed.",
            |s| s.stats.no_backend.load(Relaxed),
        ),
        (
            "ringlb_service_backends_usable",
            Kind::Gauge,
            "Backends that take new connections now (enabled and healthy).",
            |s| s.usable_count() as u64,
        ),
    ];
    for (name, kind, help, read) in families {
        e.family(name, kind, help);
        for s in &view.services {
            e.sample(name, &[("service", &s.name)], read(s));
        }
    }
}

/// The tier's agreement check (docs/ha.md): info-style gauges, always 1,
/// the value in the `fingerprint` label, so a rule can count distinct
/// values across instances.
fn render_fingerprints(e: &mut Exposition, view: &StatusView) {
    type Read = fn(&ServiceView) -> u64;
    let families: [(&str, &str, Read); 2] = [
        (
            "ringlb_backends_fingerprint",
            "Always 1; the fingerprint label hashes the service's configured backends (names, addresses, weights), policy and table size. Instances of a tier that differ here pick backends differently.",
            |s| s.fingerprints.backends,
        ),
        (
            "ringlb_table_fingerprint",
            "Always 1; the fingerprint label hashes the table new clients are placed with now (the backend set and which backends are usable). Instances of a tier that differ here send some clients to different backends.",
            |s| s.fingerprints.table,
        ),
    ];
    for (name, help, read) in families {
        e.family(name, Kind::Gauge, help);
        for s in &view.services {
            let fingerprint = crate::fingerprint::hex(read(s));
            e.sample(
                name,
                &[("service", &s.name), ("fingerprint", &fingerprint)],
                1,
            );
        }
    }
}

/// A counter family with a series per service and per reason (`key` =
/// each of `reasons`' labels), every series written so each exists before
/// its first count.
fn per_service_reasons<R: Copy>(
    e: &mut Exposition,
    view: &StatusView,
    (name, help): (&str, &str),
    (key, reasons): (&str, &[(R, &str)]),
    read: impl Fn(&ServiceView, R) -> u64,
) {
    e.family(name, Kind::Counter, help);
    for s in &view.services {
        for &(reason, label) in reasons {
            e.sample(name, &[("service", &s.name), (key, label)], read(s, reason));
        }
    }
}

/// Connection ends by cause (the access log's causes, docs/admin.md), and
/// the refusals before a backend was chosen: by the PROXY header
/// (`accept_proxy`) and by the per-source rules.
fn render_ends(e: &mut Exposition, view: &StatusView) {
    let causes: Vec<(EndCause, &str)> = EndCause::ALL.iter().map(|c| (*c, c.label())).collect();
    per_service_reasons(
        e,
        view,
        (
            "ringlb_connections_closed_total",
            "Client connections that reached a backend and ended, by cause (the access log's cause field).",
        ),
        ("cause", &causes),
        |s, cause| s.stats.ends.closed(cause),
    );
    per_service_reasons(
        e,
        view,
        (
            "ringlb_connections_refused_total",
            "Client connections that ended before reaching a backend, by reason (the access log's cause field).",
        ),
        ("reason", &causes),
        |s, cause| s.stats.ends.refused(cause),
    );
    let proxy: Vec<(ProxyRefused, &str)> = ProxyRefused::all().map(|r| (r, r.label())).collect();
    per_service_reasons(
        e,
        view,
        (
            "ringlb_proxy_header_refused_total",
            "Clients of an accept_proxy service closed without a backend connection, by reason: untrusted (not in proxy_trusted), malformed, oversized, version, command, family (the header), timeout (not whole within proxy_header_timeout), closed (the client left first).",
        ),
        ("reason", &proxy),
        |s, reason| s.stats.proxy_refused(reason),
    );
    let sni: Vec<(SniRefused, &str)> = SniRefused::all().map(|r| (r, r.label())).to_vec();
    per_service_reasons(
        e,
        view,
        (
            "ringlb_sni_refused_total",
            "Clients of a listen address that routes by TLS server name (sni), closed without a backend connection before a service was chosen, counted on the first service listing the address, by reason: not_tls, malformed, oversized (the ClientHello), timeout (not whole within sni_timeout), closed (the client left first), unknown_name (no service takes its name and no sni_default), full (the chosen service is at max_connections).",
        ),
        ("reason", &sni),
        |s, reason| s.stats.sni_refused(reason),
    );
    let sources: Vec<(SourceRefused, &str)> =
        SourceRefused::ALL.iter().map(|r| (*r, r.label())).collect();
    per_service_reasons(
        e,
        view,
        (
            "ringlb_service_refused_total",
            "Clients reset without a backend connection by the service's per-source rules, by reason: denied (deny, or not in allow), per_source_connections (max_connections_per_source), per_source_rate (new_connections_per_source).",
        ),
        ("reason", &sources),
        |s, reason| s.stats.source_refused(reason),
    );
}

/// The access log's own counters (only with the log on).
fn render_access_log(e: &mut Exposition, log: &AccessLogHandle) {
    let families: [(&str, &str, u64); 3] = [
        (
            "ringlb_access_log_records_total",
            "Access log lines written.",
            log.written(),
        ),
        (
            "ringlb_access_log_dropped_total",
            "Access log records dropped because a worker's queue was full (the log's writer is slower than the connections end, or blocked).",
            log.dropped(),
        ),
        (
            "ringlb_access_log_write_errors_total",
            "Access log lines lost because their write failed (a full disk, a closed pipe).",
            log.write_errors(),
        ),
    ];
    for (name, help, value) in families {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], value);
    }
}

fn render_backends(e: &mut Exposition, view: &StatusView) {
    let each = || {
        view.services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s.name.as_str(), b)))
    };

    e.family(
        "ringlb_backend_info",
        Kind::Gauge,
        "Always 1; labels give the backend's address and whether it joined through the API.",
    );
    for (svc, b) in each() {
        let address = b.address.to_string();
        let joined = if b.joined { "true" } else { "false" };
        e.sample(
            "ringlb_backend_info",
            &[
                ("service", svc),
                ("backend", &b.name),
                ("address", &address),
                ("joined", joined),
            ],
            1,
        );
    }

    type Read = fn(&crate::admin::view::BackendView) -> u64;
    let families: [(&str, Kind, &str, Read); 5] = [
        (
            "ringlb_backend_connections_active",
            Kind::Gauge,
            "Established connections forwarded to the backend now.",
            |b| b.stats.active.load(Relaxed),
        ),
        (
            "ringlb_backend_connections_total",
            Kind::Counter,
            "Connections established to the backend.",
            |b| b.stats.total.load(Relaxed),
        ),
        (
            "ringlb_backend_weight",
            Kind::Gauge,
            "Configured weight (1..10000).",
            |b| u64::from(b.weight),
        ),
        (
            "ringlb_backend_healthy",
            Kind::Gauge,
            "1 if the health check passes, else 0 (down or not probed yet).",
            |b| u64::from(b.health == Health::Up),
        ),
        (
            "ringlb_backend_usable",
            Kind::Gauge,
            "1 if the backend takes new connections (enabled and healthy), else 0.",
            |b| u64::from(b.usable()),
        ),
    ];
    for (name, kind, help, read) in families {
        e.family(name, kind, help);
        for (svc, b) in each() {
            e.sample(name, &[("service", svc), ("backend", &b.name)], read(b));
        }
    }

    e.family(
        "ringlb_backend_bytes_total",
        Kind::Counter,
        "Bytes forwarded, by direction; an open connection's are added at least once a second, the rest when it closes.",
    );
    for (svc, b) in each() {
        for (direction, v) in [
            ("to_backend", &b.stats.bytes_to_backend),
            ("to_client", &b.stats.bytes_to_client),
        ] {
            e.sample(
                "ringlb_backend_bytes_total",
                &[
                    ("service", svc),
                    ("backend", &b.name),
                    ("direction", direction),
                ],
                v.load(Relaxed),
            );
        }
    }

    e.family(
        "ringlb_backend_connect_failures_total",
        Kind::Counter,
        "Failed connects to the backend, by reason.",
    );
    for (svc, b) in each() {
        for (reason, v) in [
            ("refused", &b.stats.connect_refused),
            ("timeout", &b.stats.connect_timeout),
            ("other", &b.stats.connect_other),
        ] {
            e.sample(
                "ringlb_backend_connect_failures_total",
                &[("service", svc), ("backend", &b.name), ("reason", reason)],
                v.load(Relaxed),
            );
        }
    }

    e.family(
        "ringlb_backend_health_transitions_total",
        Kind::Counter,
        "Changes of the backend's health, by the state entered: up, down, or unknown (probed anew after its address or check kind changed). Kept across reloads while the backend stays.",
    );
    for (svc, b) in each() {
        for to in HEALTH_STATES {
            e.sample(
                "ringlb_backend_health_transitions_total",
                &[("service", svc), ("backend", &b.name), ("to", to.as_str())],
                b.stats.health_changes(to),
            );
        }
    }

    let name = "ringlb_backend_connect_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time to establish a connection to the backend (successful attempts).",
    );
    let bounds: Vec<String> = CONNECT_BUCKETS_US
        .iter()
        .map(|&us| (us as f64 / 1e6).to_string())
        .chain(["+Inf".to_string()])
        .collect();
    for (svc, b) in each() {
        let (cumulative, sum_us) = b.stats.connect_time.read();
        for (le, n) in bounds.iter().zip(cumulative) {
            e.sample(
                "ringlb_backend_connect_seconds_bucket",
                &[("service", svc), ("backend", &b.name), ("le", le)],
                n,
            );
        }
        let labels = [("service", svc), ("backend", b.name.as_str())];
        e.sample(
            "ringlb_backend_connect_seconds_sum",
            &labels,
            sum_us as f64 / 1e6,
        );
        let count = cumulative.last().copied().unwrap_or(0);
        e.sample("ringlb_backend_connect_seconds_count", &labels, count);
    }

    e.family(
        "ringlb_backend_admin_state",
        Kind::Gauge,
        "The operator's state: 1 on the current one of enabled, drain, disabled.",
    );
    for (svc, b) in each() {
        for state in [AdminState::Enabled, AdminState::Drain, AdminState::Disabled] {
            e.sample(
                "ringlb_backend_admin_state",
                &[
                    ("service", svc),
                    ("backend", &b.name),
                    ("state", admin_str(state)),
                ],
                u64::from(b.admin == state),
            );
        }
    }
}

fn render_workers(e: &mut Exposition, workers: &[Arc<WorkerControl>]) {
    let ids: Vec<String> = (0..workers.len()).map(|i| i.to_string()).collect();

    e.family(
        "ringlb_worker_info",
        Kind::Gauge,
        "Always 1; the engine label says which event engine runs the worker.",
    );
    for (id, w) in ids.iter().zip(workers) {
        let engine = w.engine.get().map_or("starting", |e| e.name());
        e.sample(
            "ringlb_worker_info",
            &[("worker", id), ("engine", engine)],
            1,
        );
    }

    type Read = fn(&WorkerControl) -> u64;
    let families: [(&str, Kind, &str, Read); 4] = [
        (
            "ringlb_worker_accepted_total",
            Kind::Counter,
            "Client connections the worker accepted.",
            |w| w.accepted.load(Relaxed),
        ),
        (
            "ringlb_worker_connections",
            Kind::Gauge,
            "Client connections the worker holds now.",
            |w| w.connections.load(Relaxed) as u64,
        ),
        (
            "ringlb_worker_pipes_lent",
            Kind::Gauge,
            "Splice pipes lent to connections now.",
            |w| w.pipes_lent.load(Relaxed) as u64,
        ),
        (
            "ringlb_worker_buffers_lent",
            Kind::Gauge,
            "Copy buffers lent to connections now.",
            |w| w.buffers_lent.load(Relaxed) as u64,
        ),
    ];
    for (name, kind, help, read) in families {
        e.family(name, kind, help);
        for (id, w) in ids.iter().zip(workers) {
            e.sample(name, &[("worker", id)], read(w));
        }
    }
}

/// HELP text escaping: backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label value escaping: backslash, double quote and newline.
fn escape_label_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Upper bounds (seconds) of the connection-duration buckets.
const DURATION_BUCKETS: [f64; 11] = [
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0,
];

/// Connection duration over all workers: each worker's last published
/// copy (at most a second old), merged here. (Connect times are per
/// backend, in `render_backends`.)
fn render_latencies(e: &mut Exposition, workers: &[Arc<WorkerControl>]) {
    let mut all = crate::stats::Latencies::new();
    for w in workers {
        if let Some(l) = w.latencies.load_full() {
            all.add(&l);
        }
    }
    histogram(
        e,
        "ringlb_connection_duration_seconds",
        "Lifetime of forwarded connections, from backend connect to close.",
        &all.duration_ms,
        1e-3,
        &DURATION_BUCKETS,
    );
}

/// One histogram family from an hdrhistogram whose values are in `unit`
/// seconds; `_sum` is the histogram's mean × count (exact to its precision).
fn histogram(
    e: &mut Exposition,
    name: &str,
    help: &str,
    h: &hdrhistogram::Histogram<u64>,
    unit: f64,
    bounds: &[f64],
) {
    e.family(name, Kind::Histogram, help);
    let bucket = format!("{name}_bucket");
    for &le in bounds {
        let upto = (le / unit).round() as u64;
        let n = if h.is_empty() {
            0
        } else {
            h.count_between(0, upto)
        };
        e.sample(&bucket, &[("le", &le.to_string())], n);
    }
    e.sample(&bucket, &[("le", "+Inf")], h.len());
    e.sample(
        &format!("{name}_sum"),
        &[],
        h.mean() * h.len() as f64 * unit,
    );
    e.sample(&format!("{name}_count"), &[], h.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::view::{BackendView, ServiceView};
    use crate::config::Balance;
    use std::time::UNIX_EPOCH;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label_into(&mut s, "a\\b\"c\nd");
        assert_eq!(s, "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn families_are_contiguous_with_one_help_and_type() {
        let backend = |name: &str| BackendView {
            name: name.into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            weight: 100,
            admin: AdminState::Drain,
            health: Health::Up,
            reason: String::new(),
            last_change: UNIX_EPOCH,
            stats: Arc::default(),
            joined: false,
            history: Default::default(),
        };
        let view = StatusView {
            generation: 7,
            config_generation: 2,
            reloads_ok: 1,
            reloads_failed: 3,
            last_reload_successful: false,
            services: vec![ServiceView {
                name: "we\"b".into(),
                listen: vec![],
                balance: Balance::Maglev,
                stats: Arc::default(),
                backends: vec![backend("a"), backend("b")],
                fingerprints: Default::default(),
            }],
        };
        let workers = vec![Arc::new(WorkerControl::default())];
        let text = render(&view, &workers, &ConnectionBudget::new(12), None);
        assert!(text.ends_with('\n'));
        assert!(text.contains("ringlb_snapshot_generation 7\n"));
        assert!(text.contains(
            "# TYPE ringlb_config_reloads_total counter\n\
             ringlb_config_reloads_total{result=\"success\"} 1\n\
             ringlb_config_reloads_total{result=\"failure\"} 3\n"
        ));
        assert!(text.contains("ringlb_config_last_reload_successful 0\n"));
        assert!(text.contains("# TYPE ringlb_log_records_lost_total counter\n"));
        assert!(text.contains("ringlb_connections_budget 12\n"));
        assert!(text.contains("ringlb_connections_active 0\n"));
        assert!(text.contains("ringlb_connections_budget_full_total 0\n"));
        assert!(text.contains("ringlb_local_errors_total{kind=\"eaddrnotavail\"} "));
        assert!(text.contains("ringlb_log_records_lost_total{reason=\"dropped\"} "));
        assert!(text.contains(
            "ringlb_backend_admin_state{service=\"we\\\"b\",backend=\"a\",state=\"drain\"} 1\n"
        ));
        assert!(text.contains("ringlb_worker_info{worker=\"0\",engine=\"starting\"} 1\n"));
        assert!(text.contains(
            "ringlb_proxy_header_refused_total{service=\"we\\\"b\",reason=\"untrusted\"} 0\n"
        ));
        // Every family's samples come right after its TYPE line.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name").to_string();
                assert!(seen.insert(name.clone()), "family {name} twice");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                // A histogram's samples: name_bucket, name_sum, name_count.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|base| *base == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "sample out of its family: {line}");
            }
        }
    }
}
