//! A worker's deadlines: the connect timeout of a connecting connection
//! (then the next candidate is tried) and the idle timeout of an
//! established one (then both sides are reset), and how long the engine
//! may sleep before the next one is due.
//!
//! Runs on the worker's thread. Each connection has at most one live entry
//! in the heap (`Conn::timer_at`); an entry that no longer matches it, or
//! names a freed slot, is skipped when it comes up. An idle connection's
//! entry is pushed back when it fires early (activity since), so activity
//! costs no heap operation.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

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
                Phase::Connecting { deadline, .. } => *deadline,
                Phase::Established { .. } => {
                    let idle = self.listeners[conn.listener]
                        .service_index
                        .map_or(Duration::from_secs(900), |si| {
                            self.snapshot.services[si].settings.idle_timeout
                        });
                    conn.last_active + idle
                }
            };
            if due > self.now {
                conn.timer_at = due;
                self.timers.push(Reverse((due, token)));
                continue;
            }
            match conn.phase {
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
                Phase::Established { .. } => self.abort(slot, EndCause::IdleTimeout),
            }
        }
    }
}
