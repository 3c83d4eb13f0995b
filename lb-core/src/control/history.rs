//! The recent past of every backend, for the status page's pictures: its
//! new connections and bytes per second over the last five minutes (a ring
//! of one-second samples of the counters the workers keep anyway), and its
//! last health transitions with their reasons. Owned by the control-plane
//! thread, which samples once a second (`control/plane.rs`); nothing is
//! added to the data path. Served as `GET /api/v1/history`.
//!
//! Memory is bounded: [`SAMPLES`] + 1 pairs of counters and [`TRANSITIONS`]
//! transitions per backend, and a backend the registry no longer has is
//! forgotten at the next sample.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Health, Registry};
use crate::health::BackendKey;

/// Seconds of rates kept: five minutes.
pub(crate) const SAMPLES: usize = 300;
/// Health transitions kept per backend.
pub(crate) const TRANSITIONS: usize = 12;

/// One backend's samples and transitions.
#[derive(Debug, Default)]
struct BackendHistory {
    /// (connections established, bytes both ways) at each of the last
    /// `SAMPLES + 1` seconds, oldest first: `SAMPLES` per-second rates.
    counters: VecDeque<(u64, u64)>,
    /// The last health changes, oldest first.
    transitions: VecDeque<Transition>,
    /// The health seen at the previous sample: a change since is a
    /// transition. None before the first sample.
    seen: Option<Health>,
}

/// A health change, as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Transition {
    /// When the registry dated the change (unix seconds).
    pub at_unix: u64,
    /// `up` | `down` | `unknown`.
    pub to: &'static str,
    /// The health reason at the time (probe result, "not probed", …).
    pub reason: String,
}

/// Every backend's history, by service and name.
#[derive(Debug, Default)]
pub(crate) struct History {
    backends: BTreeMap<BackendKey, BackendHistory>,
}

/// `GET /api/v1/history`: per backend, the rates of the last
/// [`SAMPLES`] seconds (oldest first, one value a second) and the last
/// transitions.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryDoc {
    /// Seconds between two values of a rate series.
    pub interval_seconds: u64,
    pub backends: Vec<BackendHistoryDoc>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BackendHistoryDoc {
    pub service: String,
    pub name: String,
    /// New connections established per second.
    pub connections_per_second: Vec<u64>,
    /// Bytes forwarded per second, both directions together.
    pub bytes_per_second: Vec<u64>,
    pub transitions: Vec<Transition>,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl History {
    /// Takes one sample of every backend of `registry`: its counters, and
    /// its health if it changed since the last sample (or is seen for the
    /// first time). Forgets backends the registry no longer has.
    pub(crate) fn sample(&mut self, registry: &Registry) {
        let mut present = Vec::new();
        for service in registry.services() {
            for b in &service.backends {
                let key = BackendKey {
                    service: service.config.name.clone(),
                    backend: b.config.name.clone(),
                };
                let h = self.backends.entry(key.clone()).or_default();
                let bytes = b
                    .stats
                    .bytes_to_backend
                    .load(Relaxed)
                    .saturating_add(b.stats.bytes_to_client.load(Relaxed));
                h.push_counters(b.stats.total.load(Relaxed), bytes);
                if h.seen != Some(b.health) {
                    h.seen = Some(b.health);
                    h.push_transition(Transition {
                        at_unix: unix_seconds(b.last_change),
                        to: b.health.as_str(),
                        reason: b.reason.clone(),
                    });
                }
                present.push(key);
            }
        }
        present.sort();
        self.backends
            .retain(|key, _| present.binary_search(key).is_ok());
    }

    /// The document `GET /api/v1/history` answers.
    pub(crate) fn doc(&self) -> HistoryDoc {
        HistoryDoc {
            interval_seconds: 1,
            backends: self
                .backends
                .iter()
                .map(|(key, h)| {
                    let (connections_per_second, bytes_per_second) = h.rates();
                    BackendHistoryDoc {
                        service: key.service.clone(),
                        name: key.backend.clone(),
                        connections_per_second,
                        bytes_per_second,
                        transitions: h.transitions.iter().cloned().collect(),
                    }
                })
                .collect(),
        }
    }
}

impl BackendHistory {
    fn push_counters(&mut self, connections: u64, bytes: u64) {
        if self.counters.len() == SAMPLES + 1 {
            self.counters.pop_front();
        }
        self.counters.push_back((connections, bytes));
    }

    fn push_transition(&mut self, t: Transition) {
        if self.transitions.len() == TRANSITIONS {
            self.transitions.pop_front();
        }
        self.transitions.push_back(t);
    }

    /// The per-second differences of the samples, oldest first. Counters
    /// only grow; a smaller value (never expected) reads as 0.
    fn rates(&self) -> (Vec<u64>, Vec<u64>) {
        let pairs = self.counters.iter().zip(self.counters.iter().skip(1));
        pairs
            .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)))
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn registry(backends: &[&str]) -> Registry {
        let mut t = String::from(
            "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n[service.health]\nkind = \"tcp\"\n",
        );
        for (i, name) in backends.iter().enumerate() {
            t.push_str(&format!(
                "[[service.backend]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\n",
                1000 + i
            ));
        }
        Registry::new(&Config::parse(&t, None).expect("config"))
    }

    #[test]
    fn samples_follow_the_counters_and_transitions_the_health_with_its_reason() {
        let mut r = registry(&["a", "b"]);
        let mut history = History::default();
        history.sample(&r);
        let stats = r.service("s").expect("s").backends[0].stats.clone();
        stats.total.fetch_add(7, Relaxed);
        stats.bytes_to_client.fetch_add(5000, Relaxed);
        stats.bytes_to_backend.fetch_add(100, Relaxed);
        r.set_health("s", "a", Health::Down, "connect refused".into())
            .expect("a");
        history.sample(&r);
        history.sample(&r);
        let doc = history.doc();
        assert_eq!(doc.backends.len(), 2);
        let a = &doc.backends[0];
        assert_eq!((a.service.as_str(), a.name.as_str()), ("s", "a"));
        assert_eq!(a.connections_per_second, [7, 0]);
        assert_eq!(a.bytes_per_second, [5100, 0]);
        let to: Vec<(&str, &str)> = a
            .transitions
            .iter()
            .map(|t| (t.to, t.reason.as_str()))
            .collect();
        assert_eq!(to[1], ("down", "connect refused"), "{to:?}");
        assert_eq!(to.len(), 2, "the first state seen, then the change: {to:?}");
        assert_eq!(doc.backends[1].transitions.len(), 1, "b never changed");
    }

    #[test]
    fn a_backend_gone_from_the_registry_is_forgotten() {
        let mut history = History::default();
        history.sample(&registry(&["a", "b"]));
        history.sample(&registry(&["b"]));
        let names: Vec<String> = history.doc().backends.into_iter().map(|b| b.name).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn rates_are_the_differences_of_the_last_samples_and_stay_bounded() {
        let mut h = BackendHistory::default();
        for i in 0..(SAMPLES as u64 + 50) {
            h.push_counters(i * 3, i * 1000);
        }
        let (conns, bytes) = h.rates();
        assert_eq!(conns.len(), SAMPLES);
        assert!(conns.iter().all(|&c| c == 3));
        assert!(bytes.iter().all(|&b| b == 1000));
        assert_eq!(h.counters.len(), SAMPLES + 1);
    }

    #[test]
    fn a_counter_that_went_back_reads_as_zero() {
        let mut h = BackendHistory::default();
        h.push_counters(10, 100);
        h.push_counters(4, 50);
        h.push_counters(6, 80);
        assert_eq!(h.rates(), (vec![0, 2], vec![0, 30]));
    }

    #[test]
    fn only_the_last_transitions_are_kept() {
        let mut h = BackendHistory::default();
        for i in 0..(TRANSITIONS as u64 + 5) {
            h.push_transition(Transition {
                at_unix: i,
                to: "up",
                reason: format!("r{i}"),
            });
        }
        assert_eq!(h.transitions.len(), TRANSITIONS);
        assert_eq!(h.transitions.front().map(|t| t.at_unix), Some(5));
    }
}
