//! Per-source admission of a service's clients (`allow`, `deny`,
//! `max_connections_per_source`, `new_connections_per_source`): the
//! [`SourcePolicy`] a worker asks where a backend is about to be chosen,
//! and the lock-free tables behind the two limits, shared by every worker.
//! Built on the control thread (the registry, once per configuration: a
//! reload that keeps the settings keeps the tables); read and updated by
//! the worker threads with atomics only.
//!
//! A source is the client's address masked to `hash_prefix_v4` /
//! `hash_prefix_v6`, keyed by [`hash::client_key`] (the grouping Maglev
//! uses), then spread over the tables with a per-table random seed (so the
//! slots a client lands in cannot be chosen from outside).
//!
//! Open connections ([`ConnectionTable`]): two rows of [`ROW`] `AtomicU32`
//! counters (count-min sketch: a source counts in one slot of each row,
//! its estimate is the smaller of the two). Admission increments both and
//! then re-reads both: if both are above the limit the connection is
//! refused and its increments taken back. Re-reading after incrementing
//! means two workers admitting the same source at once can refuse each
//! other, never both get in past the limit. Collisions only add to a
//! count, so a source is never let past its limit; another source in both
//! of its slots can refuse it early. A [`SourceHold`] in the connection
//! takes its count back when the connection is dropped.
//!
//! New connections ([`RateTable`]): [`RATE_SLOTS`] `AtomicU64`s, one per
//! hashed source, each the theoretical arrival time of the GCRA (the
//! token bucket of rate N/s and burst N, stated as one timestamp), updated
//! by compare-and-swap. Sources sharing a slot share one budget.
//!
//! Memory, per service with the setting on: 2 × 32 768 × 4 B = 256 KiB for
//! the connections, 32 768 × 8 B = 256 KiB for the rate; none with it off.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{IpNet, SourceLimits};
use crate::hash;

/// Counters per row of the connection table (two rows).
pub(crate) const ROW: usize = 1 << 15;
/// Slots of the rate table.
pub(crate) const RATE_SLOTS: usize = 1 << 15;

/// Why a client was refused by its service's per-source rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceRefused {
    /// In `deny`, or not in a non-empty `allow`.
    Denied,
    /// Its source holds `max_connections_per_source` open connections.
    Connections,
    /// Its source opened `new_connections_per_source` too fast.
    Rate,
}

impl SourceRefused {
    pub(crate) const ALL: [SourceRefused; 3] = [
        SourceRefused::Denied,
        SourceRefused::Connections,
        SourceRefused::Rate,
    ];

    /// The `reason` label of `ringlb_service_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            SourceRefused::Denied => "denied",
            SourceRefused::Connections => "per_source_connections",
            SourceRefused::Rate => "per_source_rate",
        }
    }
}

/// A service's per-source rules with their shared tables. Absent from the
/// settings when no rule is set.
#[derive(Debug)]
pub(crate) struct SourcePolicy {
    /// What the policy was built from (to keep the tables across a reload
    /// that keeps the settings).
    limits: SourceLimits,
    /// The grouping of addresses into sources (the service's hash prefixes).
    prefix_v4: u8,
    prefix_v6: u8,
    /// `max_connections_per_source` and the counts, if set.
    connections: Option<(u32, Arc<ConnectionTable>)>,
    /// `new_connections_per_source` and the arrival times, if set.
    rate: Option<Arc<RateTable>>,
}

impl SourcePolicy {
    /// The policy of a service's `limits`, or None when no rule is set.
    /// The tables of `previous` are kept when they count the same way
    /// (same limit set, same grouping): connections counted in them keep
    /// being counted.
    pub(crate) fn build(
        limits: &SourceLimits,
        prefix_v4: u8,
        prefix_v6: u8,
        previous: Option<&SourcePolicy>,
    ) -> Option<Arc<SourcePolicy>> {
        if limits.is_off() {
            return None;
        }
        let same_grouping =
            previous.filter(|p| p.prefix_v4 == prefix_v4 && p.prefix_v6 == prefix_v6);
        let connections = limits.max_connections_per_source.map(|max| {
            let table = same_grouping
                .and_then(|p| p.connections.as_ref())
                .map(|(_, t)| t.clone())
                .unwrap_or_else(|| Arc::new(ConnectionTable::new()));
            (max.get(), table)
        });
        let rate = limits.new_connections_per_source.map(|n| {
            same_grouping
                .and_then(|p| p.rate.as_ref())
                .filter(|t| t.per_second == n.get())
                .cloned()
                .unwrap_or_else(|| Arc::new(RateTable::new(n.get())))
        });
        Some(Arc::new(SourcePolicy {
            limits: limits.clone(),
            prefix_v4,
            prefix_v6,
            connections,
            rate,
        }))
    }

    /// Whether `limits` with these prefixes is what this policy enforces.
    pub(crate) fn is(&self, limits: &SourceLimits, prefix_v4: u8, prefix_v6: u8) -> bool {
        self.limits == *limits && self.prefix_v4 == prefix_v4 && self.prefix_v6 == prefix_v6
    }

    /// Admits a new connection from `ip` at `now`: Ok with the hold its
    /// connection must keep while open (None when connections are not
    /// counted), or why it is refused (then nothing stays counted). O(1)
    /// per connection apart from the CIDR lists, which are scanned.
    pub(crate) fn admit(
        &self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Option<SourceHold>, SourceRefused> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let l = &self.limits;
        if l.deny.iter().any(|n| n.contains(&ip))
            || (!l.allow.is_empty() && !l.allow.iter().any(|n: &IpNet| n.contains(&ip)))
        {
            return Err(SourceRefused::Denied);
        }
        if self.connections.is_none() && self.rate.is_none() {
            return Ok(None);
        }
        let key = hash::client_key(ip, self.prefix_v4, self.prefix_v6);
        // The connection count first: it can be taken back if the rate
        // refuses, a spent token cannot.
        let hold = match &self.connections {
            None => None,
            Some((max, table)) => Some(table.take(key, *max).ok_or(SourceRefused::Connections)?),
        };
        if let Some(rate) = &self.rate {
            if !rate.take(key, now) {
                return Err(SourceRefused::Rate);
            }
        }
        Ok(hold)
    }
}

/// Mixes a source key with a table's seed into a slot index below `size`
/// (a power of two): the high bits of a multiplicative hash.
fn slot(key: u64, seed: u64, size: usize) -> usize {
    let h = (key ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (h >> (64 - size.trailing_zeros())) as usize
}

/// A fresh random seed (std's per-process random hasher keys).
fn random_seed() -> u64 {
    RandomState::new().hash_one(0x5eed_u64)
}

/// Open connections per source, count-min over two rows (module docs).
#[derive(Debug)]
pub(crate) struct ConnectionTable {
    /// Row 0 is `[0, ROW)`, row 1 `[ROW, 2 ROW)`.
    counts: Box<[AtomicU32]>,
    /// One seed per row, random per table.
    seeds: [u64; 2],
}

impl ConnectionTable {
    pub(crate) fn new() -> ConnectionTable {
        ConnectionTable {
            counts: (0..2 * ROW).map(|_| AtomicU32::new(0)).collect(),
            seeds: [random_seed(), random_seed()],
        }
    }

    /// The two slots of source `key`.
    fn slots(&self, key: u64) -> [usize; 2] {
        [
            slot(key, self.seeds[0], ROW),
            ROW + slot(key, self.seeds[1], ROW),
        ]
    }

    /// Counts one more connection of source `key` unless that would take
    /// its estimate past `max`.
    fn take(self: &Arc<Self>, key: u64, max: u32) -> Option<SourceHold> {
        let slots = self.slots(key);
        for &s in &slots {
            self.counts[s].fetch_add(1, SeqCst);
        }
        // Re-read after both increments (see the module docs).
        let estimate = slots
            .iter()
            .map(|&s| self.counts[s].load(SeqCst))
            .min()
            .unwrap_or(0);
        let hold = SourceHold {
            table: self.clone(),
            slots: [slots[0] as u32, slots[1] as u32],
        };
        if estimate > max {
            // Dropping the hold takes the increments back.
            return None;
        }
        Some(hold)
    }

    /// The estimated open connections of the source of `ip` (tests).
    #[cfg(test)]
    pub(crate) fn estimate(&self, ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> u32 {
        let key = hash::client_key(ip, prefix_v4, prefix_v6);
        self.slots(key)
            .iter()
            .map(|&s| self.counts[s].load(SeqCst))
            .min()
            .unwrap_or(0)
    }
}

/// One counted connection of a source; dropping it (when the connection
/// is released, whatever ended it) takes the count back, in the table it
/// was counted in even if a reload replaced the policy since.
#[derive(Debug)]
pub(crate) struct SourceHold {
    table: Arc<ConnectionTable>,
    slots: [u32; 2],
}

impl Drop for SourceHold {
    fn drop(&mut self) {
        for &s in &self.slots {
            self.table.counts[s as usize].fetch_sub(1, SeqCst);
        }
    }
}

/// New connections per source: GCRA arrival times (module docs).
#[derive(Debug)]
pub(crate) struct RateTable {
    /// Per slot, the theoretical arrival time in ns since `epoch`.
    slots: Box<[AtomicU64]>,
    seed: u64,
    /// Times are measured from here.
    epoch: Instant,
    /// The rate, per second (also the burst).
    per_second: u32,
    /// The emission interval 1 s / N, in ns.
    interval: u64,
    /// How far ahead of now an arrival time may be and still admit: the
    /// burst of N minus the one being admitted.
    tolerance: u64,
}

impl RateTable {
    pub(crate) fn new(per_second: u32) -> RateTable {
        let interval = 1_000_000_000 / u64::from(per_second.max(1));
        RateTable {
            slots: (0..RATE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            seed: random_seed(),
            epoch: Instant::now(),
            per_second,
            interval,
            tolerance: interval * u64::from(per_second.saturating_sub(1)),
        }
    }

    /// Takes one token of source `key` at `now`; false if it has none.
    fn take(&self, key: u64, now: Instant) -> bool {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let slot = &self.slots[slot(key, self.seed, RATE_SLOTS)];
        let mut tat = slot.load(Relaxed);
        loop {
            if tat > now.saturating_add(self.tolerance) {
                return false;
            }
            let next = tat.max(now).saturating_add(self.interval);
            match slot.compare_exchange_weak(tat, next, SeqCst, Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn policy(limits: SourceLimits) -> Arc<SourcePolicy> {
        SourcePolicy::build(&limits, 32, 64, None).expect("a rule is set")
    }

    #[test]
    fn nothing_set_builds_no_policy() {
        assert!(SourcePolicy::build(&SourceLimits::default(), 32, 128, None).is_none());
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_is_everyone() {
        let p = policy(SourceLimits {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
            ..SourceLimits::default()
        });
        let now = Instant::now();
        assert!(p.admit(v4(10, 1, 2, 3), now).is_ok());
        assert_eq!(
            p.admit(v4(10, 9, 2, 3), now).unwrap_err(),
            SourceRefused::Denied
        );
        assert_eq!(
            p.admit(v4(11, 1, 2, 3), now).unwrap_err(),
            SourceRefused::Denied
        );
        // A dual-stack listener's mapped IPv4 peer matches IPv4 CIDRs.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 9, 0, 1).to_ipv6_mapped());
        assert_eq!(p.admit(mapped, now).unwrap_err(), SourceRefused::Denied);
        let open = policy(SourceLimits {
            deny: vec!["::1/128".parse().unwrap()],
            ..SourceLimits::default()
        });
        assert!(open.admit(v4(192, 0, 2, 1), now).is_ok());
        assert!(open.admit(IpAddr::V6(Ipv6Addr::LOCALHOST), now).is_err());
    }

    #[test]
    fn the_connection_past_the_limit_is_refused_until_one_is_released() {
        let p = policy(SourceLimits {
            max_connections_per_source: NonZeroU32::new(3),
            ..SourceLimits::default()
        });
        let now = Instant::now();
        let mut held: Vec<SourceHold> = (0..3)
            .map(|_| p.admit(v4(10, 0, 0, 1), now).unwrap().unwrap())
            .collect();
        assert_eq!(
            p.admit(v4(10, 0, 0, 1), now).unwrap_err(),
            SourceRefused::Connections
        );
        // Another source is served; the refused one left no count behind.
        let other = p.admit(v4(10, 0, 0, 2), now).unwrap();
        let table = &p.connections.as_ref().unwrap().1;
        assert_eq!(table.estimate(v4(10, 0, 0, 1), 32, 64), 3);
        held.pop();
        assert_eq!(table.estimate(v4(10, 0, 0, 1), 32, 64), 2);
        assert!(p.admit(v4(10, 0, 0, 1), now).is_ok());
        drop((held, other));
    }

    #[test]
    fn one_v6_prefix_is_one_source() {
        let p = policy(SourceLimits {
            max_connections_per_source: NonZeroU32::new(1),
            ..SourceLimits::default()
        });
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = p.admit(a, now).unwrap();
        assert_eq!(p.admit(b, now).unwrap_err(), SourceRefused::Connections);
        assert!(p.admit(c, now).is_ok());
    }

    #[test]
    fn the_rate_admits_a_burst_of_n_then_n_per_second() {
        let p = policy(SourceLimits {
            new_connections_per_source: NonZeroU32::new(10),
            ..SourceLimits::default()
        });
        let start = Instant::now();
        let ip = v4(10, 0, 0, 1);
        let burst = (0..100).filter(|_| p.admit(ip, start).is_ok()).count();
        assert_eq!(burst, 10);
        assert_eq!(p.admit(ip, start).unwrap_err(), SourceRefused::Rate);
        assert!(p.admit(v4(10, 0, 0, 2), start).is_ok());
        // Over 5 s at 1 ms steps: 10 per second.
        let mut later = 0;
        for ms in 1..=5000 {
            if p.admit(ip, start + Duration::from_millis(ms)).is_ok() {
                later += 1;
            }
        }
        assert_eq!(later, 50);
    }

    #[test]
    fn a_rate_refusal_takes_its_connection_count_back() {
        let p = policy(SourceLimits {
            max_connections_per_source: NonZeroU32::new(5),
            new_connections_per_source: NonZeroU32::new(1),
            ..SourceLimits::default()
        });
        let now = Instant::now();
        let ip = v4(10, 0, 0, 1);
        let _held = p.admit(ip, now).unwrap();
        assert_eq!(p.admit(ip, now).unwrap_err(), SourceRefused::Rate);
        let table = &p.connections.as_ref().unwrap().1;
        assert_eq!(table.estimate(ip, 32, 64), 1);
    }

    #[test]
    fn a_reload_with_the_same_grouping_keeps_the_counts() {
        let limits = SourceLimits {
            max_connections_per_source: NonZeroU32::new(1),
            ..SourceLimits::default()
        };
        let first = policy(limits.clone());
        let now = Instant::now();
        let held = first.admit(v4(10, 0, 0, 1), now).unwrap();
        let raised = SourceLimits {
            max_connections_per_source: NonZeroU32::new(2),
            ..limits.clone()
        };
        let second = SourcePolicy::build(&raised, 32, 64, Some(&first)).unwrap();
        let _two = second.admit(v4(10, 0, 0, 1), now).unwrap();
        assert_eq!(
            second.admit(v4(10, 0, 0, 1), now).unwrap_err(),
            SourceRefused::Connections
        );
        // A new grouping starts a new table; the old holds still count
        // down in theirs.
        let regrouped = SourcePolicy::build(&raised, 24, 64, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(
            &regrouped.connections.as_ref().unwrap().1,
            &second.connections.as_ref().unwrap().1
        ));
        drop(held);
        let table = &second.connections.as_ref().unwrap().1;
        assert_eq!(table.estimate(v4(10, 0, 0, 1), 32, 64), 1);
    }

    #[test]
    fn concurrent_admissions_never_pass_the_limit() {
        let p = policy(SourceLimits {
            max_connections_per_source: NonZeroU32::new(8),
            ..SourceLimits::default()
        });
        let now = Instant::now();
        for _round in 0..50 {
            let admitted: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        let p = &p;
                        s.spawn(move || {
                            (0..8)
                                .filter_map(|_| p.admit(v4(10, 0, 0, 1), now).ok().flatten())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let holds: Vec<Vec<SourceHold>> = handles
                    .into_iter()
                    .map(|h| h.join().expect("admitting thread"))
                    .collect();
                holds.iter().map(Vec::len).sum()
            });
            assert!(admitted <= 8, "{admitted} admitted with a limit of 8");
        }
    }
}
