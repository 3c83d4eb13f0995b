//! A worker's deadlines: the header timeout of a connection in its
//! preamble (then it is refused), the connect timeout of a connecting
//! connection (then the next candidate is tried) and the idle timeout of
//! an established one (or one waiting for its backend's first byte,
//! `replay.rs`) (then both sides are reset), and how long the engine
//! may sleep before the next one is due.
//!
//! Runs on the worker's thread. Each connection has at most one live entry
//! in the heap (`Conn::timer_at`); an entry that no longer matches it, or
//! names a freed slot, is skipped when it comes up. An idle connection's
//! entry is pushed back when it fires early (activity since), so activity
//! costs no heap operation. Before an idle connection is reset, the kernel
//! is asked whether it still delivered bytes ringlb wrote earlier
//! ([`Syscalls::delivery`]): then it is not idle.

use std::cmp::Reverse;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::stats::{ProxyRefused, SniRefused};

use super::connect::ConnectFailure;
use super::{Phase, Reactor, Syscalls, Worker};
use crate::access_log::EndCause;

/// Longest an idle worker sleeps: bounds how late it notices a paused
/// listener may resume.
const MAX_SLEEP: Duration = Duration::from_millis(100);

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    /// How long the engine may sleep waiting for events.
    pub(crate) fn sleep_budget(&self) -> Duration {
        if !self.again.is_empty() || self.listeners.iter().any(|l| l.more) {
            return Duration::ZERO;
        }
        let mut d = MAX_SLEEP;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            d = d.min(at.saturating_duration_since(Instant::now()));
        }
        d
    }

    /// Adds the heap entry of the connection in `slot`, due `at`.
    pub(crate) fn arm_timer(&mut self, at: Instant, slot: usize) {
        let token = self.slab.token(slot, false);
        self.timers.push(Reverse((at, token)));
    }

    /// Acts on every entry due by `now`.
    pub(crate) fn run_timers(&mut self) {
        while let Some(&Reverse((at, token))) = self.timers.peek() {
            if at > self.now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slab.slot_of(token) else {
                continue;
            };
            let Some(conn) = self.slab.get_mut(slot) else {
                continue;
            };
            if conn.timer_at != at {
                continue;
            }
            let due = match &conn.phase {
                Phase::Preamble { deadline }
                | Phase::Hello { deadline }
                | Phase::Connecting { deadline, .. } => *deadline,
                Phase::Established { .. } | Phase::Replayable(_) => {
                    let idle = self.listeners[conn.listener]
                        .service_index
                        .map_or(Duration::from_secs(900), |si| {
                            self.snapshot.services[si].settings.idle_timeout
                        });
                    if conn.last_active + idle <= self.now {
                        self.kernel_activity(slot);
                    }
                    match self.slab.get_mut(slot) {
                        Some(conn) => conn.last_active + idle,
                        None => continue,
                    }
                }
            };
            let Some(conn) = self.slab.get_mut(slot) else {
                continue;
            };
            if due > self.now {
                conn.timer_at = due;
                self.timers.push(Reverse((due, token)));
                continue;
            }
            match conn.phase {
                Phase::Preamble { .. } => self.refuse(slot, ProxyRefused::Timeout),
                Phase::Hello { .. } => self.refuse_hello(slot, SniRefused::Timeout),
                Phase::Connecting { target, .. } => {
                    let si = self.listeners[conn.listener].service_index;
                    self.drop_backend(slot);
                    if let (Some(si), Some(addr)) = (si, target) {
                        self.report_failure(si, addr, ConnectFailure::Timeout);
                    }
                    // Sets a fresh deadline and timer if it goes on.
                    self.next_attempt(slot);
                }
                // Idle too long: both sides learn it by a reset.
                Phase::Established { .. } | Phase::Replayable(_) => {
                    self.abort(slot, EndCause::IdleTimeout)
                }
            }
        }
    }

    /// ringlb moved nothing of the connection in `slot` for its idle
    /// timeout, but its kernel may have: a send buffer of a MiB or more
    /// drains to a slow peer for seconds after ringlb's last write, and
    /// wakes ringlb only once a third of it is free. If bytes ringlb wrote
    /// are still on their way and the peers acknowledged more since the
    /// last look, the connection was active until the last ACK:
    /// `last_active` moves there. A peer whose window stays shut (ACKs but
    /// no bytes acknowledged) is idle from the next look on; with nothing
    /// on its way the connection is idle as before.
    fn kernel_activity(&mut self, slot: usize) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let fds = [
            Some(conn.client.as_raw_fd()),
            conn.backend.as_ref().map(|b| b.as_raw_fd()),
        ];
        let (mut acked, mut queued, mut since_ack) = (0u64, false, Duration::MAX);
        for fd in fds.into_iter().flatten() {
            let Some(d) = self.sys.delivery(fd) else {
                return;
            };
            acked = acked.wrapping_add(d.acked);
            queued |= d.queued;
            since_ack = since_ack.min(d.since_ack);
        }
        if !queued || acked == conn.acked {
            return;
        }
        conn.acked = acked;
        if let Some(last_ack) = self.now.checked_sub(since_ack) {
            conn.last_active = conn.last_active.max(last_ack);
        }
    }
}
