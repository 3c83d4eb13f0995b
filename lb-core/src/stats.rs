//! Live counters shared between workers (writers) and the control plane
//! (reader). Plain relaxed atomics: exact totals, no ordering promises.
//!
//! A backend's counters outlive snapshots: the registry keeps one
//! `Arc<BackendStats>` per (service, backend name) and every snapshot that
//! lists the backend points at the same one.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

use crate::health::State as Health;
use crate::proxy_header::Refusal;
use crate::source_limits::SourceRefused;
use crate::tls_hello::Refusal as HelloRefusal;

/// Log records that never reached the log, since the process started.
/// Written by the binary's log writer (it owns stderr), read by /metrics;
/// a static because the writer exists before any server does.
#[derive(Debug)]
pub struct LogLoss {
    /// Records dropped because the log queue was full (the reader of
    /// stderr too slow, or not reading at all).
    dropped: AtomicU64,
    /// Records whose write failed (EPIPE: the reader closed the pipe;
    /// ENOSPC: the disk behind a redirected stderr is full).
    failed: AtomicU64,
}

/// The one [`LogLoss`] of the process.
pub static LOG_LOSS: LogLoss = LogLoss {
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

impl LogLoss {
    /// Counts a record dropped for a full queue.
    pub fn record_dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// Counts a record whose write failed.
    pub fn record_failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Records whose write failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }
}

/// The process's client connections against its budget (`budget.rs`):
/// taken by a worker when it admits a client, given back when the
/// connection closes, shared by every worker. At the budget workers stop
/// accepting; clients wait in the listen backlog.
#[derive(Debug, Default)]
pub(crate) struct ConnectionBudget {
    /// Most client connections held at once (set at start and on reload).
    limit: AtomicUsize,
    /// Client connections held now, over all workers and services.
    active: AtomicUsize,
    /// Times a worker paused accepting because the budget was spent.
    full: AtomicU64,
}

impl ConnectionBudget {
    pub(crate) fn new(limit: usize) -> ConnectionBudget {
        ConnectionBudget {
            limit: AtomicUsize::new(limit),
            ..ConnectionBudget::default()
        }
    }

    /// Takes one connection's place; false when the budget is spent.
    pub(crate) fn try_take(&self) -> bool {
        let prev = self.active.fetch_add(1, Relaxed);
        if prev >= self.limit.load(Relaxed) {
            self.active.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn release(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    /// True when no place is free.
    pub(crate) fn is_spent(&self) -> bool {
        self.active.load(Relaxed) >= self.limit.load(Relaxed)
    }

    /// Counts a worker pausing at the budget.
    pub(crate) fn count_full(&self) {
        self.full.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    pub(crate) fn full_total(&self) -> u64 {
        self.full.load(Relaxed)
    }
}

/// A shortage of this host, not of a backend: what a local error was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalKind {
    /// EMFILE: the process's open-files limit.
    Emfile,
    /// ENFILE: the system's file table.
    Enfile,
    /// ENOBUFS: socket buffers.
    Enobufs,
    /// ENOMEM: kernel memory.
    Enomem,
    /// EADDRNOTAVAIL: no free local port (or source address) to connect
    /// from.
    Eaddrnotavail,
    /// EADDRINUSE: the same, as `connect` reports it with a bound source.
    Eaddrinuse,
}

impl LocalKind {
    pub(crate) const ALL: [LocalKind; 6] = [
        LocalKind::Emfile,
        LocalKind::Enfile,
        LocalKind::Enobufs,
        LocalKind::Enomem,
        LocalKind::Eaddrnotavail,
        LocalKind::Eaddrinuse,
    ];

    /// The local shortage `e` reports, if it is one.
    pub(crate) fn of(e: &io::Error) -> Option<LocalKind> {
        LocalKind::of_errno(e.raw_os_error()?)
    }

    pub(crate) fn of_errno(errno: i32) -> Option<LocalKind> {
        match errno {
            libc::EMFILE => Some(LocalKind::Emfile),
            libc::ENFILE => Some(LocalKind::Enfile),
            libc::ENOBUFS => Some(LocalKind::Enobufs),
            libc::ENOMEM => Some(LocalKind::Enomem),
            libc::EADDRNOTAVAIL => Some(LocalKind::Eaddrnotavail),
            libc::EADDRINUSE => Some(LocalKind::Eaddrinuse),
            _ => None,
        }
    }

    /// The `kind` label of `ringlb_local_errors_total`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LocalKind::Emfile => "emfile",
            LocalKind::Enfile => "enfile",
            LocalKind::Enobufs => "enobufs",
            LocalKind::Enomem => "enomem",
            LocalKind::Eaddrnotavail => "eaddrnotavail",
            LocalKind::Eaddrinuse => "eaddrinuse",
        }
    }

    /// What the operator can do about it.
    fn advice(self) -> &'static str {
        match self {
            LocalKind::Emfile => {
                "the open-files limit is reached: raise it (ulimit -n, systemd LimitNOFILE=) \
                 or lower [global] max_connections"
            }
            LocalKind::Enfile => "the system's file table is full: raise fs.file-max",
            LocalKind::Enobufs | LocalKind::Enomem => {
                "the kernel is short of memory for sockets: check memory and net.ipv4.tcp_mem"
            }
            LocalKind::Eaddrnotavail | LocalKind::Eaddrinuse => {
                "no local port is free to connect from: widen net.ipv4.ip_local_port_range \
                 or wait for TIME_WAIT sockets to expire"
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Local errors (the host's shortages, never a backend's fault) since the
/// process started, by kind; each kind is logged at most once a second.
/// Written from any thread (workers, the prober, the admin server), read
/// by /metrics.
#[derive(Debug)]
pub(crate) struct LocalErrors {
    counts: [AtomicU64; 6],
    /// Per kind: milliseconds since [`epoch`] of the last log line, + 1
    /// (0: never logged).
    logged: [AtomicU64; 6],
}

/// The one [`LocalErrors`] of the process.
pub(crate) static LOCAL_ERRORS: LocalErrors = LocalErrors {
    counts: [const { AtomicU64::new(0) }; 6],
    logged: [const { AtomicU64::new(0) }; 6],
};

/// Least time between two log lines of one kind of local error.
const LOCAL_LOG_EVERY_MS: u64 = 1000;

/// The instant the rate limit counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LocalErrors {
    /// Counts `e` if it is a local shortage and logs it (at most once a
    /// second per kind); `what` says what was being done. Returns its kind,
    /// None when `e` is not a local shortage (nothing counted).
    pub(crate) fn record(&self, e: &io::Error, what: &dyn std::fmt::Display) -> Option<LocalKind> {
        let kind = LocalKind::of(e)?;
        let total = self.counts[kind.index()].fetch_add(1, Relaxed) + 1;
        if self.due(kind, epoch().elapsed().as_millis() as u64) {
            tracing::warn!(
                kind = kind.name(),
                total,
                error = %e,
                "local error {what}: {}; not a backend failure (logged at most once a second)",
                kind.advice()
            );
        }
        Some(kind)
    }

    /// True when a log line of `kind` may be written at `now_ms`; claims it.
    fn due(&self, kind: LocalKind, now_ms: u64) -> bool {
        let slot = &self.logged[kind.index()];
        let last = slot.load(Relaxed);
        if last != 0 && now_ms + 1 < last + LOCAL_LOG_EVERY_MS {
            return false;
        }
        slot.compare_exchange(last, now_ms + 1, Relaxed, Relaxed)
            .is_ok()
    }

    /// Errors of `kind` so far.
    pub(crate) fn count(&self, kind: LocalKind) -> u64 {
        self.counts[kind.index()].load(Relaxed)
    }
}

/// Counters of one backend.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Established client connections forwarded to it now (least-conn and
    /// bounded load read this).
    pub active: AtomicU64,
    /// Connections ever established to it.
    pub total: AtomicU64,
    /// Bytes client → backend and backend → client: an open
    /// connection's are added once a second by its worker, the rest when
    /// it closes.
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Failed connects, by reason.
    pub connect_refused: AtomicU64,
    pub connect_timeout: AtomicU64,
    pub connect_other: AtomicU64,
    /// Time of the successful connects (`ringlb_backend_connect_seconds`),
    /// recorded by the worker that connected.
    pub connect_time: ConnectHistogram,
    /// Health state changes, by the state entered (indexed as
    /// [`HEALTH_STATES`]): counted by the control plane, kept across
    /// reloads with the rest of these counters.
    health_transitions: [AtomicU64; 3],
}

/// The states a backend's health moves to, in the order of
/// `BackendStats::health_transitions`.
pub(crate) const HEALTH_STATES: [Health; 3] = [Health::Up, Health::Down, Health::Unknown];

impl BackendStats {
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Counts a change of the backend's health to `to`.
    pub(crate) fn count_health_change(&self, to: Health) {
        if let Some(i) = HEALTH_STATES.iter().position(|&s| s == to) {
            self.health_transitions[i].fetch_add(1, Relaxed);
        }
    }

    /// Changes of health to `to` so far.
    pub(crate) fn health_changes(&self, to: Health) -> u64 {
        HEALTH_STATES
            .iter()
            .position(|&s| s == to)
            .map_or(0, |i| self.health_transitions[i].load(Relaxed))
    }
}

/// Upper bounds (µs) of the connect-time buckets, then +Inf. From
/// loopback and same-rack connects (100 µs to 1 ms) through cross-site
/// ones (10 to 100 ms) to connects that needed a SYN retransmit (Linux
/// resends after 1 s, then 3 s): 12 buckets, Prometheus-style 1-2.5-5
/// steps where they matter.
pub(crate) const CONNECT_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// A fixed-bucket histogram of connect times: one bucket's relaxed add and
/// the sum's per connect, written by any worker, read by scrapes. Each
/// bucket counts its own range (not cumulative); the last one is +Inf.
#[derive(Debug, Default)]
pub struct ConnectHistogram {
    buckets: [AtomicU64; CONNECT_BUCKETS_US.len() + 1],
    /// Sum of the recorded times, µs.
    sum_us: AtomicU64,
}

impl ConnectHistogram {
    /// Records one connect that took `d`.
    pub(crate) fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = CONNECT_BUCKETS_US.partition_point(|&le| le < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The cumulative counts (`le` each bound of [`CONNECT_BUCKETS_US`],
    /// then +Inf, which is the count) and the sum in µs.
    pub(crate) fn read(&self) -> ([u64; CONNECT_BUCKETS_US.len() + 1], u64) {
        let mut out = [0u64; CONNECT_BUCKETS_US.len() + 1];
        let mut total = 0u64;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Relaxed);
            *o = total;
        }
        (out, self.sum_us.load(Relaxed))
    }
}

/// Counters of one service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Client connections held now (accepted and not yet closed), across
    /// workers; `max_connections` is enforced against it.
    pub active: AtomicUsize,
    /// Client connections accepted in all.
    pub accepted: AtomicU64,
    /// Connections that found no usable backend or exhausted their attempts.
    pub no_backend: AtomicU64,
    /// Connect retries on another backend.
    pub retries: AtomicU64,
    /// Client connections whose TLS ClientHello was replayed to another
    /// backend after the one it was sent to closed or reset before
    /// answering (`retry_before_response = "tls"`).
    pub tls_replays: AtomicU64,
    /// Connection ends by cause, with and without a backend reached.
    pub ends: crate::access_log::EndCounts,
    /// Clients closed before a backend was chosen because their PROXY
    /// header was missing, bad or late (`accept_proxy`), by
    /// [`ProxyRefused::index`].
    pub(crate) proxy_refused: [AtomicU64; ProxyRefused::COUNT],
    /// Clients of a listen address that routes by server name (`sni`)
    /// closed before a service was chosen, by [`SniRefused::index`];
    /// counted on the service whose listener accepted them (the first
    /// service listing the address).
    pub(crate) sni_refused: [AtomicU64; SniRefused::COUNT],
    /// Clients refused by the per-source rules (`allow`/`deny` and the
    /// per-source limits), by [`SourceRefused`] in `ALL` order.
    pub(crate) source_refused: [AtomicU64; SourceRefused::ALL.len()],
}

/// Why a client of an `accept_proxy` service was closed before a backend
/// was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyRefused {
    /// Its address is not in `proxy_trusted`.
    Untrusted,
    /// What it sent is not a header ringlb takes.
    Header(Refusal),
    /// No whole header within `proxy_header_timeout`.
    Timeout,
    /// It closed (or reset) before its header was whole.
    Closed,
}

impl ProxyRefused {
    pub(crate) const COUNT: usize = 3 + Refusal::ALL.len();

    /// Every reason, in [`index`](ProxyRefused::index) order.
    pub(crate) fn all() -> impl Iterator<Item = ProxyRefused> {
        [ProxyRefused::Untrusted]
            .into_iter()
            .chain(Refusal::ALL.into_iter().map(ProxyRefused::Header))
            .chain([ProxyRefused::Timeout, ProxyRefused::Closed])
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ProxyRefused::Untrusted => 0,
            ProxyRefused::Header(r) => 1 + r as usize,
            ProxyRefused::Timeout => 1 + Refusal::ALL.len(),
            ProxyRefused::Closed => 2 + Refusal::ALL.len(),
        }
    }

    /// The `reason` label of `ringlb_proxy_header_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ProxyRefused::Untrusted => "untrusted",
            ProxyRefused::Header(r) => r.label(),
            ProxyRefused::Timeout => "timeout",
            ProxyRefused::Closed => "closed",
        }
    }
}

/// Why a client of a listen address that routes by server name was closed
/// before a service was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SniRefused {
    /// Its first bytes are not a ClientHello ringlb reads (not TLS,
    /// malformed, over 16 KiB).
    Hello(HelloRefusal),
    /// No whole ClientHello within `sni_timeout`.
    Timeout,
    /// It closed (or reset) before its ClientHello was whole.
    Closed,
    /// Its server name (or its lack of one) matches no service, and the
    /// address has no `sni_default`.
    UnknownName,
    /// The service its name picked is at its `max_connections`.
    Full,
}

impl SniRefused {
    pub(crate) const COUNT: usize = 7;

    /// Every reason, in [`index`](SniRefused::index) order.
    pub(crate) fn all() -> [SniRefused; SniRefused::COUNT] {
        [
            SniRefused::Hello(HelloRefusal::NotTls),
            SniRefused::Hello(HelloRefusal::Malformed),
            SniRefused::Hello(HelloRefusal::Oversized),
            SniRefused::Timeout,
            SniRefused::Closed,
            SniRefused::UnknownName,
            SniRefused::Full,
        ]
    }

    pub(crate) fn index(self) -> usize {
        match self {
            SniRefused::Hello(HelloRefusal::NotTls) => 0,
            SniRefused::Hello(HelloRefusal::Malformed) => 1,
            SniRefused::Hello(HelloRefusal::Oversized) => 2,
            SniRefused::Timeout => 3,
            SniRefused::Closed => 4,
            SniRefused::UnknownName => 5,
            SniRefused::Full => 6,
        }
    }

    /// The `reason` label of `ringlb_sni_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            SniRefused::Hello(r) => r.label(),
            SniRefused::Timeout => "timeout",
            SniRefused::Closed => "closed",
            SniRefused::UnknownName => "unknown_name",
            SniRefused::Full => "full",
        }
    }
}

impl ServiceStats {
    /// Counts a client refused before its service was chosen by name.
    pub(crate) fn count_sni_refused(&self, reason: SniRefused) {
        self.sni_refused[reason.index()].fetch_add(1, Relaxed);
    }

    /// Clients refused for `reason` before a service was chosen by name.
    pub(crate) fn sni_refused(&self, reason: SniRefused) -> u64 {
        self.sni_refused[reason.index()].load(Relaxed)
    }

    /// Counts a client refused by the per-source rules for `reason`.
    pub(crate) fn count_source_refused(&self, reason: SourceRefused) {
        self.source_refused[reason as usize].fetch_add(1, Relaxed);
    }

    /// Clients refused by the per-source rules for `reason` so far.
    pub(crate) fn source_refused(&self, reason: SourceRefused) -> u64 {
        self.source_refused[reason as usize].load(Relaxed)
    }

    /// Counts a client refused for `reason`.
    pub(crate) fn count_proxy_refused(&self, reason: ProxyRefused) {
        self.proxy_refused[reason.index()].fetch_add(1, Relaxed);
    }

    /// Clients refused for `reason` so far.
    pub(crate) fn proxy_refused(&self, reason: ProxyRefused) -> u64 {
        self.proxy_refused[reason.index()].load(Relaxed)
    }
}

impl ServiceStats {
    /// Reserves a connection slot under `max`; false if the service is full.
    pub fn try_reserve(&self, max: Option<usize>) -> bool {
        let prev = self.active.fetch_add(1, Relaxed);
        match max {
            Some(max) if prev >= max => {
                self.active.fetch_sub(1, Relaxed);
                false
            }
            _ => true,
        }
    }

    pub fn release(&self) {
        self.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_refusals_have_distinct_indices_and_labels() {
        let all: Vec<ProxyRefused> = ProxyRefused::all().collect();
        assert_eq!(all.len(), ProxyRefused::COUNT);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), ProxyRefused::COUNT);
    }

    #[test]
    fn sni_refusals_have_distinct_indices_and_labels() {
        let all = SniRefused::all();
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), SniRefused::COUNT);
    }

    #[test]
    fn reserve_stops_at_max_and_release_frees() {
        let s = ServiceStats::default();
        assert!(s.try_reserve(Some(2)));
        assert!(s.try_reserve(Some(2)));
        assert!(!s.try_reserve(Some(2)));
        s.release();
        assert!(s.try_reserve(Some(2)));
        assert!(s.try_reserve(None));
        assert_eq!(s.active.load(Relaxed), 3);
    }

    #[test]
    fn the_budget_stops_at_its_limit_and_follows_a_new_one() {
        let b = ConnectionBudget::new(2);
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take() && b.is_spent());
        b.release();
        assert!(!b.is_spent() && b.try_take());
        b.set_limit(3);
        assert!(b.try_take());
        assert_eq!((b.active(), b.limit()), (3, 3));
        b.set_limit(1);
        assert!(b.is_spent() && !b.try_take());
    }

    #[test]
    fn local_errors_are_the_hosts_shortages_only() {
        for (errno, name) in [
            (libc::EMFILE, "emfile"),
            (libc::ENFILE, "enfile"),
            (libc::ENOBUFS, "enobufs"),
            (libc::ENOMEM, "enomem"),
            (libc::EADDRNOTAVAIL, "eaddrnotavail"),
            (libc::EADDRINUSE, "eaddrinuse"),
        ] {
            let kind = LocalKind::of(&io::Error::from_raw_os_error(errno));
            assert_eq!(kind.map(LocalKind::name), Some(name));
        }
        for errno in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert_eq!(LocalKind::of(&io::Error::from_raw_os_error(errno)), None);
        }
        let errors = LocalErrors {
            counts: [const { AtomicU64::new(0) }; 6],
            logged: [const { AtomicU64::new(0) }; 6],
        };
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(errors.record(&refused, &"connecting"), None);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(
            errors.record(&emfile, &"connecting"),
            Some(LocalKind::Emfile)
        );
        assert_eq!(errors.count(LocalKind::Emfile), 1);
        assert_eq!(errors.count(LocalKind::Enfile), 0);
    }

    #[test]
    fn connect_times_fall_in_their_buckets_cumulatively() {
        use std::time::Duration;
        let h = ConnectHistogram::default();
        let (empty, sum) = h.read();
        assert_eq!((empty, sum), ([0; 13], 0));
        for us in [0, 100, 101, 900, 1_000_000, 7_000_000] {
            h.record(Duration::from_micros(us));
        }
        let (cum, sum) = h.read();
        // le 100 µs: 0 and 100 (bounds are inclusive); le 250: + 101;
        // le 1 ms: + 900; le 1 s: + 1 s; +Inf: + 7 s.
        assert_eq!(cum, [2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 6]);
        assert_eq!(sum, 100 + 101 + 900 + 1_000_000 + 7_000_000);
        assert!(CONNECT_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn health_changes_count_by_state_entered() {
        let b = BackendStats::default();
        b.count_health_change(Health::Up);
        b.count_health_change(Health::Down);
        b.count_health_change(Health::Up);
        assert_eq!(b.health_changes(Health::Up), 2);
        assert_eq!(b.health_changes(Health::Down), 1);
        assert_eq!(b.health_changes(Health::Unknown), 0);
    }

    #[test]
    fn a_kind_is_logged_at_most_once_a_second() {
        let errors = LocalErrors {
            counts: [const { AtomicU64::new(0) }; 6],
            logged: [const { AtomicU64::new(0) }; 6],
        };
        assert!(errors.due(LocalKind::Emfile, 0));
        assert!(!errors.due(LocalKind::Emfile, 10));
        assert!(!errors.due(LocalKind::Emfile, 998));
        // Another kind has its own second.
        assert!(errors.due(LocalKind::Enfile, 10));
        assert!(errors.due(LocalKind::Emfile, 1000));
        assert!(!errors.due(LocalKind::Emfile, 1500));
        assert!(errors.due(LocalKind::Emfile, 2000));
    }
}

/// A worker's latency distributions. Recorded by the worker only; a copy is
/// published for scrapes at most once a second (see
/// `WorkerControl::histograms`), so readers never touch the live one.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Lifetime of forwarded connections (backend established → closed), ms.
    pub duration_ms: hdrhistogram::Histogram<u64>,
}

impl Latencies {
    /// Up to ~11.5 days of connection life, at 2 significant digits (a
    /// few KiB). (Connect times are per backend: `ConnectHistogram`.)
    pub fn new() -> Latencies {
        // Constant, valid bounds: creation cannot fail.
        let h = |max| {
            hdrhistogram::Histogram::new_with_bounds(1, max, 2).expect("valid histogram bounds")
        };
        Latencies {
            duration_ms: h(1_000_000_000),
        }
    }

    pub fn record_duration(&mut self, d: std::time::Duration) {
        self.duration_ms
            .saturating_record(d.as_millis().try_into().unwrap_or(u64::MAX).max(1));
    }

    /// Adds another worker's figures (scrape-time merge).
    pub fn add(&mut self, other: &Latencies) {
        let _ = self.duration_ms.add(&other.duration_ms);
    }
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}
