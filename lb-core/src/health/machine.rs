//! The health state machine of one backend: consecutive probe results
//! counted against `rise` and `fall`. Pure (no I/O, no clock, no logging);
//! owned by that backend's prober task on the control-plane thread.
//!
//! # Rules
//!
//! - A backend starts [`State::Unknown`], which is *not usable*.
//! - Start-up: its FIRST result decides at once (pass → `Up`, fail → `Down`),
//!   without waiting for `rise` or `fall` results, so that the balancer can
//!   open its listeners after a single probe round instead of after `rise`
//!   intervals.
//! - After that, `rise` consecutive passes bring a `Down` backend `Up`, and
//!   `fall` consecutive failures take an `Up` backend `Down`. A result that
//!   agrees with the state resets the count of disagreeing ones.
//! - [`HealthState::record`] returns a [`Flip`] only when the state changes;
//!   only flips are logged and published.
//! - [`HealthState::is_changing`] is true while the last result disagrees with
//!   the state (the backend is on its way to a flip); the prober then uses
//!   `fast_interval`.

use std::fmt;
use std::num::NonZeroU32;

/// Health of one backend as decided by its probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No result yet: not usable.
    Unknown,
    Up,
    Down,
}

impl State {
    /// Lower-case name, as shown in logs, metrics and the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, returned by [`HealthState::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flip {
    pub from: State,
    pub to: State,
}

impl fmt::Display for Flip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// Consecutive results of one backend against its `rise`/`fall` thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthState {
    /// Passes in a row that bring a `Down` backend `Up`.
    rise: NonZeroU32,
    /// Failures in a row that take an `Up` backend `Down`.
    fall: NonZeroU32,
    state: State,
    /// Consecutive results disagreeing with `state` (0 when the last one
    /// agreed). Never reaches the threshold: reaching it flips and resets.
    against: u32,
}

impl HealthState {
    /// A backend with no result yet ([`State::Unknown`]).
    pub(crate) fn new(rise: NonZeroU32, fall: NonZeroU32) -> Self {
        HealthState {
            rise,
            fall,
            state: State::Unknown,
            against: 0,
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// True when the backend may receive new connections.
    #[cfg(test)]
    pub(crate) fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// True while the last result disagrees with the state.
    pub(crate) fn is_changing(&self) -> bool {
        self.against > 0
    }

    /// Changes the thresholds (a reload), keeping the state and the count of
    /// disagreeing results. If that count already reaches a lowered
    /// threshold, the next disagreeing result flips.
    pub(crate) fn set_thresholds(&mut self, rise: NonZeroU32, fall: NonZeroU32) {
        self.rise = rise;
        self.fall = fall;
    }

    /// Records one result; returns the transition if the state changed.
    pub(crate) fn record(&mut self, ok: bool) -> Option<Flip> {
        let from = self.state;
        let to = match (from, ok) {
            (State::Unknown, true) => State::Up,
            (State::Unknown, false) => State::Down,
            (State::Up, true) | (State::Down, false) => {
                self.against = 0;
                return None;
            }
            (State::Up, false) | (State::Down, true) => {
                self.against = self.against.saturating_add(1);
                let threshold = if ok { self.rise } else { self.fall };
                if self.against < threshold.get() {
                    return None;
                }
                if ok {
                    State::Up
                } else {
                    State::Down
                }
            }
        };
        self.state = to;
        self.against = 0;
        Some(Flip { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(rise: u32, fall: u32) -> HealthState {
        let n = |v| NonZeroU32::new(v).expect("non-zero");
        HealthState::new(n(rise), n(fall))
    }

    fn flip(from: State, to: State) -> Option<Flip> {
        Some(Flip { from, to })
    }

    #[test]
    fn starts_unknown_and_not_up() {
        let m = machine(2, 3);
        assert_eq!(m.state(), State::Unknown);
        assert!(!m.is_up());
        assert!(!m.is_changing());
    }

    #[test]
    fn first_pass_decides_up_at_once() {
        let mut m = machine(5, 5);
        assert_eq!(m.record(true), flip(State::Unknown, State::Up));
        assert!(m.is_up());
        assert!(!m.is_changing());
    }

    #[test]
    fn first_failure_decides_down_at_once() {
        let mut m = machine(5, 5);
        assert_eq!(m.record(false), flip(State::Unknown, State::Down));
        assert_eq!(m.state(), State::Down);
        assert!(!m.is_changing());
    }

    #[test]
    fn up_goes_down_after_fall_consecutive_failures() {
        let mut m = machine(2, 3);
        m.record(true);
        assert_eq!(m.record(false), None);
        assert!(m.is_changing());
        assert_eq!(m.record(false), None);
        assert!(m.is_changing());
        assert_eq!(m.record(false), flip(State::Up, State::Down));
        assert!(!m.is_changing());
    }

    #[test]
    fn down_comes_up_after_rise_consecutive_passes() {
        let mut m = machine(2, 3);
        m.record(false);
        assert_eq!(m.record(true), None);
        assert!(m.is_changing());
        assert_eq!(m.record(true), flip(State::Down, State::Up));
        assert!(!m.is_changing());
    }

    #[test]
    fn an_agreeing_result_resets_the_count() {
        let mut m = machine(2, 2);
        m.record(true);
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(true), None);
        assert!(!m.is_changing());
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(false), flip(State::Up, State::Down));
        assert_eq!(m.record(true), None);
        assert_eq!(m.record(false), None);
        assert_eq!(m.record(true), None);
        assert_eq!(m.record(true), flip(State::Down, State::Up));
    }

    #[test]
    fn agreeing_results_never_flip() {
        let mut m = machine(1, 1);
        m.record(true);
        for _ in 0..10 {
            assert_eq!(m.record(true), None);
        }
        m.record(false);
        for _ in 0..10 {
            assert_eq!(m.record(false), None);
        }
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change() {
        let mut m = machine(1, 1);
        assert_eq!(m.record(true), flip(State::Unknown, State::Up));
        assert_eq!(m.record(false), flip(State::Up, State::Down));
        assert_eq!(m.record(true), flip(State::Down, State::Up));
    }

    #[test]
    fn new_thresholds_keep_state_and_count() {
        let mut m = machine(2, 5);
        m.record(true);
        m.record(false);
        m.record(false);
        m.set_thresholds(NonZeroU32::MIN, NonZeroU32::MIN.saturating_add(1));
        assert!(m.is_up());
        assert!(m.is_changing());
        assert_eq!(m.record(false), flip(State::Up, State::Down));
    }
}
