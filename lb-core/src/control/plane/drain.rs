//! The end of the control plane's loop: the drain of a whole ringlb (SIGTERM,
//! SIGINT, or a newer ringlb took the sockets over). First, with
//! `drain_announce`, the health answers 503 while the listeners still
//! accept; then the workers close their listeners, established connections
//! get up to `shutdown_timeout`, and the workers stop. Runs on the
//! control-plane thread, at the end of `ControlPlane::run`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::ControlPlane;

/// Longest the drain waits for the workers to close their listeners.
const LISTENERS_CLOSE_WAIT: Duration = Duration::from_secs(2);

impl ControlPlane {
    /// Stop accepting, wait for connections up to the timeout, stop workers.
    pub(super) async fn drain(&mut self) {
        // Our copies of the listening sockets would keep them open (and the
        // kernel queueing to them) after the workers close theirs.
        self.handover.clear();
        self.admin_handover = None;
        // After an upgrade the new process is the service: a STOPPING=1
        // from us would stop it.
        if !self.handed_over {
            if let Err(e) = crate::notify::stopping() {
                tracing::warn!(error = %e, "cannot tell systemd we are stopping");
            }
        }
        // Announce first: the health answers 503 while the listeners still
        // accept, so keepalived/BIRD send new clients elsewhere before any
        // is refused. After a takeover the new process serves on: nothing
        // to announce.
        if !self.drain_announce.is_zero() && !self.handed_over {
            for w in &self.workers {
                w.announcing.store(true, Relaxed);
            }
            tracing::info!(
                drain_announce = ?self.drain_announce,
                "health answers 503 now; the listeners close after drain_announce"
            );
            tokio::time::sleep(self.drain_announce).await;
        }
        for w in &self.workers {
            w.draining.store(true, Relaxed);
            w.wake();
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        // A worker's count is only final once it has closed its listeners
        // (until then it may still accept): wait for that first. Workers
        // turn at least every 100 ms; a worker whose loop died never
        // answers, hence the bound.
        let closed_by = (tokio::time::Instant::now() + LISTENERS_CLOSE_WAIT).min(deadline);
        while !self.workers.iter().all(|w| {
            w.listeners_closed
                .load(std::sync::atomic::Ordering::Acquire)
        }) {
            if tokio::time::Instant::now() >= closed_by {
                tracing::warn!("some workers did not close their listeners in time; draining on");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        loop {
            let open: usize = self
                .workers
                .iter()
                .map(|w| w.connections.load(Relaxed))
                .sum();
            if open == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    connections = open,
                    "shutdown timeout: closing the remaining connections"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for w in &self.workers {
            w.stop.store(true, Relaxed);
            w.wake();
        }
    }
}
