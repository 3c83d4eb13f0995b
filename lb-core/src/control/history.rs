//! A backend's recent past, for the status page's pictures: a ring of
//! one-second samples (new connections and bytes both ways) covering the
//! last five minutes, and the last health transitions with their reasons.
//! Both live in the backend's registry record, so a reload keeps them for
//! a backend that stays (by service and backend name) and a removed backend
//! loses them with its record. Owned and written by the control-plane
//! thread: once a second the event loop reads the counters the workers
//! already keep (relaxed loads of the backend's `BackendStats`) and pushes
//! the deltas; nothing is added to a worker's path.
//!
//! Memory, fixed per backend: [`SAMPLES`] × (4 + 8) bytes = 3 600 bytes of
//! samples, plus at most [`TRANSITIONS`] transitions of at most
//! [`REASON_MAX`] bytes of reason each (about 5 KiB): under 9 KiB a
//! backend, so 1 000 backends hold under 9 MiB.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use super::Health;
use crate::stats::BackendStats;

/// Seconds of the sample ring: five minutes of one-second samples.
pub(crate) const SAMPLES: usize = 300;
/// How often the control plane samples (and what one sample covers).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Health transitions kept per backend (the oldest goes first).
pub(crate) const TRANSITIONS: usize = 20;
/// Longest reason kept with a transition, in bytes (longer ones are cut at
/// a character boundary and end with `…`).
pub(crate) const REASON_MAX: usize = 200;

/// A backend's cumulative counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// Connections ever established to it.
    pub(crate) connections: u64,
    /// Bytes forwarded both ways (to the backend plus to the client).
    pub(crate) bytes: u64,
}

impl Reading {
    /// Reads a backend's counters (relaxed loads; what the workers wrote).
    pub(crate) fn of(stats: &BackendStats) -> Reading {
        Reading {
            connections: stats.total.load(Relaxed),
            bytes: stats
                .bytes_to_backend
                .load(Relaxed)
                .saturating_add(stats.bytes_to_client.load(Relaxed)),
        }
    }
}

/// The last [`SAMPLES`] one-second samples of a backend's traffic, as a
/// fixed ring (allocated once, never grows).
#[derive(Debug)]
pub(crate) struct Rates {
    /// New connections in each second (a second holds far fewer than 2³²).
    connections: Box<[u32; SAMPLES]>,
    /// Bytes forwarded both ways in each second.
    bytes: Box<[u64; SAMPLES]>,
    /// Where the next sample goes.
    next: usize,
    /// Samples held (up to [`SAMPLES`]); fewer only in the first minutes.
    len: usize,
    /// The counters at the last sample, which the next one is the
    /// difference from. None until the first reading (which only sets it).
    last: Option<Reading>,
}

impl Default for Rates {
    fn default() -> Rates {
        Rates {
            connections: Box::new([0; SAMPLES]),
            bytes: Box::new([0; SAMPLES]),
            next: 0,
            len: 0,
            last: None,
        }
    }
}

impl Rates {
    /// Takes the counters read `seconds` sample periods after the last
    /// reading (1 normally; more when the control plane was held up: the
    /// difference is then spread evenly over that many samples, so a rate
    /// stays a rate). A counter lower than last time started again from
    /// zero (a new set of counters): everything it holds is new.
    pub(crate) fn record(&mut self, now: Reading, seconds: u32) {
        let Some(last) = self.last.replace(now) else {
            return;
        };
        let delta = |now: u64, last: u64| if now >= last { now - last } else { now };
        let connections = delta(now.connections, last.connections);
        let bytes = delta(now.bytes, last.bytes);
        let slots = u64::from(seconds.max(1)).min(SAMPLES as u64);
        for i in 0..slots {
            // The first slots take the remainder, so the sum is exact.
            let share = |total: u64| total / slots + u64::from(i < total % slots);
            self.push(
                u32::try_from(share(connections)).unwrap_or(u32::MAX),
                share(bytes),
            );
        }
    }

    fn push(&mut self, connections: u32, bytes: u64) {
        self.connections[self.next] = connections;
        self.bytes[self.next] = bytes;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// Index of the oldest sample held.
    fn oldest(&self) -> usize {
        (self.next + SAMPLES - self.len) % SAMPLES
    }

    /// New connections per second, oldest first.
    pub(crate) fn connections(&self) -> Vec<u32> {
        let start = self.oldest();
        (0..self.len)
            .map(|i| self.connections[(start + i) % SAMPLES])
            .collect()
    }

    /// Bytes per second (both ways), oldest first.
    pub(crate) fn bytes(&self) -> Vec<u64> {
        let start = self.oldest();
        (0..self.len)
            .map(|i| self.bytes[(start + i) % SAMPLES])
            .collect()
    }
}

/// One change of a backend's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) at: SystemTime,
    pub(crate) from: Health,
    pub(crate) to: Health,
    /// Why (the probe's result), at most [`REASON_MAX`] bytes.
    pub(crate) reason: String,
}

/// The last [`TRANSITIONS`] health transitions of a backend, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Transitions(VecDeque<Transition>);

impl Transitions {
    /// Records a transition, forgetting the oldest beyond the bound.
    pub(crate) fn push(&mut self, at: SystemTime, from: Health, to: Health, reason: &str) {
        if self.0.len() == TRANSITIONS {
            self.0.pop_front();
        }
        self.0.push_back(Transition {
            at,
            from,
            to,
            reason: cut(reason, REASON_MAX),
        });
    }

    /// Oldest first.
    pub(crate) fn to_vec(&self) -> Vec<Transition> {
        self.0.iter().cloned().collect()
    }
}

/// `text`, or its longest prefix of at most `max` bytes (less the ellipsis)
/// that ends on a character boundary, with `…` after it.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What the admin API shows of a backend's recent past (copied from the
/// registry at one instant: `StatusView`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HistoryView {
    /// New connections per second, oldest first (up to [`SAMPLES`]).
    pub(crate) new_connections: Vec<u32>,
    /// Bytes per second both ways, oldest first (as many as the above).
    pub(crate) bytes: Vec<u64>,
    /// The last health transitions, oldest first.
    pub(crate) transitions: Vec<Transition>,
}

impl HistoryView {
    pub(crate) fn new(rates: &Rates, transitions: &Transitions) -> HistoryView {
        HistoryView {
            new_connections: rates.connections(),
            bytes: rates.bytes(),
            transitions: transitions.to_vec(),
        }
    }
}

/// The control plane's once-a-second sampling tick. A late tick (the
/// event loop was busy) is not made up in a burst: the one sample it takes
/// covers the seconds it missed ([`Rates::record`] spreads them).
#[derive(Debug)]
pub(crate) struct SampleClock {
    interval: tokio::time::Interval,
    /// When the last tick came.
    last: tokio::time::Instant,
}

impl SampleClock {
    /// Needs the tokio runtime (the control plane's).
    pub(crate) fn new() -> SampleClock {
        let mut interval = tokio::time::interval(SAMPLE_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        SampleClock {
            interval,
            last: tokio::time::Instant::now(),
        }
    }

    /// Waits for the next tick; how many sample periods passed since the
    /// last one (see [`periods`]).
    pub(crate) async fn tick(&mut self) -> u32 {
        let now = self.interval.tick().await;
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        periods(elapsed)
    }
}

/// How many sample periods `elapsed` is, rounded, at least one: the
/// `seconds` of [`Rates::record`] for a tick that came `elapsed` after the
/// last one.
pub(crate) fn periods(elapsed: Duration) -> u32 {
    let every = SAMPLE_EVERY.as_millis().max(1);
    let n = (elapsed.as_millis() + every / 2) / every;
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(connections: u64, bytes: u64) -> Reading {
        Reading { connections, bytes }
    }

    #[test]
    fn the_first_reading_is_only_the_baseline() {
        let mut r = Rates::default();
        r.record(reading(40, 4000), 1);
        assert!(r.connections().is_empty() && r.bytes().is_empty());
        r.record(reading(43, 4100), 1);
        assert_eq!((r.connections(), r.bytes()), (vec![3], vec![100]));
    }

    #[test]
    fn samples_are_deltas_oldest_first_and_the_ring_wraps() {
        let mut r = Rates::default();
        let (mut conns, mut bytes) = (0u64, 0u64);
        r.record(reading(conns, bytes), 1);
        // SAMPLES + 50 seconds: second i brings i connections, 10·i bytes.
        for i in 1..=(SAMPLES as u64 + 50) {
            conns += i;
            bytes += 10 * i;
            r.record(reading(conns, bytes), 1);
        }
        let c = r.connections();
        let b = r.bytes();
        assert_eq!(c.len(), SAMPLES, "bounded");
        assert_eq!(b.len(), SAMPLES);
        assert_eq!(c[0], 51, "the oldest kept is second 51");
        assert_eq!(*c.last().unwrap(), SAMPLES as u32 + 50, "newest last");
        assert!(c.windows(2).all(|w| w[1] == w[0] + 1), "in order");
        assert_eq!(b[0], 510);
        assert_eq!(*b.last().unwrap(), 10 * (SAMPLES as u64 + 50));
    }

    #[test]
    fn a_counter_that_starts_again_counts_from_zero() {
        let mut r = Rates::default();
        r.record(reading(1000, 1 << 30), 1);
        // New counters (a fresh set): 5 connections and 700 bytes since.
        r.record(reading(5, 700), 1);
        r.record(reading(8, 900), 1);
        assert_eq!(r.connections(), vec![5, 3]);
        assert_eq!(r.bytes(), vec![700, 200]);
    }

    #[test]
    fn a_late_tick_spreads_its_difference_over_the_seconds_it_covers() {
        let mut r = Rates::default();
        r.record(reading(0, 0), 1);
        r.record(reading(10, 3001), 3);
        assert_eq!(r.connections(), vec![4, 3, 3]);
        assert_eq!(r.bytes(), vec![1001, 1000, 1000]);
        assert_eq!(r.connections().iter().sum::<u32>(), 10, "nothing lost");
        // A stall longer than the window fills it, no more.
        r.record(reading(10 + 2 * SAMPLES as u64, 3001), 10_000);
        assert_eq!(r.connections(), vec![2; SAMPLES]);
    }

    #[test]
    fn periods_round_to_whole_seconds_and_are_at_least_one() {
        assert_eq!(periods(Duration::ZERO), 1);
        assert_eq!(periods(Duration::from_millis(980)), 1);
        assert_eq!(periods(Duration::from_millis(1_499)), 1);
        assert_eq!(periods(Duration::from_millis(2_600)), 3);
        assert_eq!(periods(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn transitions_are_bounded_oldest_first() {
        let mut t = Transitions::default();
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        for i in 0..(TRANSITIONS as u64 + 7) {
            let (from, to) = if i % 2 == 0 {
                (Health::Down, Health::Up)
            } else {
                (Health::Up, Health::Down)
            };
            t.push(at(i), from, to, &format!("reason {i}"));
        }
        let v = t.to_vec();
        assert_eq!(v.len(), TRANSITIONS);
        assert_eq!(v[0].at, at(7));
        assert_eq!(v[0].reason, "reason 7");
        assert_eq!(
            v[TRANSITIONS - 1].reason,
            format!("reason {}", TRANSITIONS + 6)
        );
        assert_eq!((v[0].from, v[0].to), (Health::Up, Health::Down));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let mut t = Transitions::default();
        let long = "é".repeat(REASON_MAX);
        t.push(SystemTime::UNIX_EPOCH, Health::Up, Health::Down, &long);
        let kept = &t.to_vec()[0].reason;
        assert!(kept.len() <= REASON_MAX, "{} bytes", kept.len());
        assert!(kept.ends_with('…') && kept.starts_with("éé"));
        assert_eq!(cut("short", REASON_MAX), "short");
    }
}
