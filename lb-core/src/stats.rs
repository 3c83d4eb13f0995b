//! Live counters shared between workers (writers) and the control plane
//! (reader). Plain relaxed atomics: exact totals, no ordering promises.
//!
//! A backend's counters outlive snapshots: the registry keeps one
//! `Arc<BackendStats>` per (service, backend name) and every snapshot that
//! lists the backend points at the same one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

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

/// Counters of one backend.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Established client connections forwarded to it now (least-conn and
    /// bounded load read this).
    pub active: AtomicU64,
    /// Connections ever established to it.
    pub total: AtomicU64,
    /// Bytes client → backend and backend → client, added when a
    /// connection ends.
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Failed connects, by reason.
    pub connect_refused: AtomicU64,
    pub connect_timeout: AtomicU64,
    pub connect_other: AtomicU64,
}

impl BackendStats {
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
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
}

/// A worker's latency distributions. Recorded by the worker only; a copy is
/// published for scrapes at most once a second (see
/// `WorkerControl::histograms`), so readers never touch the live one.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Time from starting a connect to the backend to its completion, µs.
    pub connect_us: hdrhistogram::Histogram<u64>,
    /// Lifetime of forwarded connections (backend established → closed), ms.
    pub duration_ms: hdrhistogram::Histogram<u64>,
}

impl Latencies {
    /// Up to 1 minute of connect time and ~11.5 days of connection life, at
    /// 2 significant digits (a few KiB each).
    pub fn new() -> Latencies {
        // Constant, valid bounds: creation cannot fail.
        let h = |max| {
            hdrhistogram::Histogram::new_with_bounds(1, max, 2).expect("valid histogram bounds")
        };
        Latencies {
            connect_us: h(60_000_000),
            duration_ms: h(1_000_000_000),
        }
    }

    pub fn record_connect(&mut self, d: std::time::Duration) {
        self.connect_us
            .saturating_record(d.as_micros().try_into().unwrap_or(u64::MAX).max(1));
    }

    pub fn record_duration(&mut self, d: std::time::Duration) {
        self.duration_ms
            .saturating_record(d.as_millis().try_into().unwrap_or(u64::MAX).max(1));
    }

    /// Adds another worker's figures (scrape-time merge).
    pub fn add(&mut self, other: &Latencies) {
        let _ = self.connect_us.add(&other.connect_us);
        let _ = self.duration_ms.add(&other.duration_ms);
    }
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}
