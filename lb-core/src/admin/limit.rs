//! Failed join-key attempts, bounded per peer, so that the key cannot be
//! guessed at line rate. A token bucket per peer, counting failures only: a
//! peer may fail `burst` times at once, then once per `refill`; beyond that
//! it is refused (429) without its key being looked at, right or wrong.
//! Successes cost nothing. Pure (the caller passes the time); owned by the
//! admin server on the control-plane thread.
//!
//! Failures are also bounded for all peers together, by one more bucket:
//! many addresses (a botnet, or every 127.0.0.x of a local user) guessing
//! in parallel get no more guesses than the global budget, whatever each
//! one's own bucket holds. The price: while the global budget is spent,
//! a node with the right key is refused (429) too, until it refills.
//!
//! Memory is bounded: at most `max_peers` peers are tracked. A peer whose
//! bucket has refilled holds no entry; when the table is full of peers
//! still paying off failures, the one closest to a full bucket is
//! forgotten. An IPv6 peer is tracked by its /64 (one host usually owns a
//! whole /64 and could otherwise change address per attempt).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// How many failures a bucket allows: `burst` at once, then one per
/// `refill`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) burst: NonZeroU32,
    pub(crate) refill: Duration,
}

impl Budget {
    /// How long a full bucket's worth of failures takes to be forgiven.
    fn window(self) -> Duration {
        self.refill.saturating_mul(self.burst.get())
    }

    /// How long until a bucket that is full at `full_at` allows one more
    /// failure; None: now.
    fn wait(self, full_at: Instant, now: Instant) -> Option<Duration> {
        let owed = full_at.saturating_duration_since(now) + self.refill;
        owed.checked_sub(self.window()).filter(|w| !w.is_zero())
    }

    /// Where `full_at` moves with one more failure at `now`.
    fn charge(self, full_at: Option<Instant>, now: Instant) -> Instant {
        let from = full_at.map_or(now, |t| t.max(now));
        from.checked_add(self.refill).unwrap_or(from)
    }
}

/// Why a join attempt is refused before its key is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This peer spent its own budget; it may try again after this long.
    Peer(Duration),
    /// All peers together spent the global budget.
    Everyone(Duration),
}

/// The failure budget of every peer, and of all peers together.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    /// Each peer's budget.
    peer: Budget,
    /// The budget of all peers together.
    global: Budget,
    /// The instant the global bucket is full again (None: full).
    global_full_at: Option<Instant>,
    /// Most peers tracked at once.
    max_peers: usize,
    /// Peer → the instant its bucket is full again. Absent: full. Each
    /// failure pushes it `refill` further; a peer may try while it is at
    /// most `window - refill` away.
    full_at: HashMap<IpAddr, Instant>,
}

impl FailureLimiter {
    pub(crate) fn new(peer: Budget, global: Budget, max_peers: usize) -> FailureLimiter {
        FailureLimiter {
            peer,
            global,
            global_full_at: None,
            max_peers: max_peers.max(1),
            full_at: HashMap::new(),
        }
    }

    /// Ok if `peer` may try its key now; otherwise whose budget is spent
    /// and how long until it may.
    pub(crate) fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Refusal> {
        if let Some(wait) = self
            .full_at
            .get(&bucket_of(peer))
            .and_then(|&full_at| self.peer.wait(full_at, now))
        {
            return Err(Refusal::Peer(wait));
        }
        match self.global_full_at.and_then(|t| self.global.wait(t, now)) {
            Some(wait) => Err(Refusal::Everyone(wait)),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt of `peer` (against its budget and the
    /// global one).
    pub(crate) fn fail(&mut self, peer: IpAddr, now: Instant) {
        self.global_full_at = Some(self.global.charge(self.global_full_at, now));
        let key = bucket_of(peer);
        if !self.full_at.contains_key(&key) && self.full_at.len() >= self.max_peers {
            self.make_room(now);
        }
        let full_at = self.peer.charge(self.full_at.get(&key).copied(), now);
        self.full_at.insert(key, full_at);
    }

    /// Peers tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.full_at.len()
    }

    /// Forgets the peers whose bucket has refilled; if none has, the one
    /// that will be full soonest.
    fn make_room(&mut self, now: Instant) {
        self.full_at.retain(|_, full_at| *full_at > now);
        if self.full_at.len() < self.max_peers {
            return;
        }
        let soonest = self
            .full_at
            .iter()
            .min_by_key(|(_, full_at)| **full_at)
            .map(|(peer, _)| *peer);
        if let Some(peer) = soonest {
            self.full_at.remove(&peer);
        }
    }
}

/// The key a peer is counted under: its IPv4 address (also when seen as
/// `::ffff:a.b.c.d`), or its IPv6 /64.
fn bucket_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const REFILL: Duration = Duration::from_secs(10);

    fn limiter(max_peers: usize) -> FailureLimiter {
        let peer = Budget {
            burst: NonZeroU32::new(5).unwrap(),
            refill: REFILL,
        };
        // Out of the way of the per-peer tests.
        let global = Budget {
            burst: NonZeroU32::new(100_000).unwrap(),
            refill: Duration::from_millis(1),
        };
        FailureLimiter::new(peer, global, max_peers)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_then_one_per_refill() {
        let mut l = limiter(16);
        let t0 = Instant::now();
        let peer = ip("10.0.0.1");
        for _ in 0..5 {
            assert_eq!(l.check(peer, t0), Ok(()));
            l.fail(peer, t0);
        }
        assert_eq!(l.check(peer, t0), Err(Refusal::Peer(REFILL)));
        assert_eq!(
            l.check(peer, t0 + Duration::from_secs(4)),
            Err(Refusal::Peer(Duration::from_secs(6)))
        );
        // One failure forgiven after one refill period, not two.
        let t1 = t0 + REFILL;
        assert_eq!(l.check(peer, t1), Ok(()));
        l.fail(peer, t1);
        assert_eq!(l.check(peer, t1), Err(Refusal::Peer(REFILL)));
        // Another peer is not affected.
        assert_eq!(l.check(ip("10.0.0.2"), t1), Ok(()));
        // After the whole window the bucket is full again.
        let t2 = t1 + REFILL * 5;
        for _ in 0..5 {
            assert_eq!(l.check(peer, t2), Ok(()));
            l.fail(peer, t2);
        }
        assert!(l.check(peer, t2).is_err());
    }

    #[test]
    fn idle_time_does_not_bank_more_than_the_burst() {
        let mut l = limiter(16);
        let t0 = Instant::now();
        let peer = ip("10.0.0.1");
        l.fail(peer, t0);
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert_eq!(l.check(peer, later), Ok(()));
            l.fail(peer, later);
        }
        assert!(l.check(peer, later).is_err());
    }

    #[test]
    fn ipv6_peers_share_their_64_and_mapped_ipv4_is_ipv4() {
        let mut l = limiter(16);
        let t0 = Instant::now();
        for i in 0..5 {
            l.fail(ip(&format!("2001:db8:1:2::{i}")), t0);
        }
        assert!(l.check(ip("2001:db8:1:2:ffff::1"), t0).is_err());
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        for _ in 0..5 {
            l.fail(ip("::ffff:10.0.0.9"), t0);
        }
        assert!(l.check(ip("10.0.0.9"), t0).is_err());
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn many_peers_together_get_no_more_than_the_global_budget() {
        let peer = Budget {
            burst: NonZeroU32::new(5).unwrap(),
            refill: REFILL,
        };
        let global = Budget {
            burst: NonZeroU32::new(30).unwrap(),
            refill: Duration::from_secs(2),
        };
        let mut l = FailureLimiter::new(peer, global, 4096);
        let t0 = Instant::now();
        // 250 peers, one failure each at once: 30 get through.
        let mut allowed = 0;
        for i in 0..250u32 {
            let p = IpAddr::from([127, 0, (i / 250) as u8, (i % 250) as u8 + 1]);
            if l.check(p, t0).is_ok() {
                allowed += 1;
                l.fail(p, t0);
            }
        }
        assert_eq!(allowed, 30);
        // A fresh peer is refused for all, for one refill.
        assert_eq!(
            l.check(ip("10.9.9.9"), t0),
            Err(Refusal::Everyone(Duration::from_secs(2)))
        );
        // Over a whole minute: at most burst + 60 s / refill.
        let mut in_minute = allowed;
        for ms in (0..60_000u64).step_by(100) {
            let now = t0 + Duration::from_millis(ms);
            let p = IpAddr::from([10, 1, (ms / 25_600) as u8, (ms / 100 % 256) as u8]);
            if l.check(p, now).is_ok() {
                in_minute += 1;
                l.fail(p, now);
            }
        }
        assert!(in_minute <= 60, "{in_minute} failures in a minute");
    }

    #[test]
    fn the_table_is_bounded_and_forgets_refilled_peers_first() {
        let mut l = limiter(3);
        let t0 = Instant::now();
        // a: 5 failures (full in 50 s); b: 1 (10 s); c: 2 (20 s).
        for _ in 0..5 {
            l.fail(ip("10.0.0.1"), t0);
        }
        l.fail(ip("10.0.0.2"), t0);
        l.fail(ip("10.0.0.3"), t0);
        l.fail(ip("10.0.0.3"), t0);
        assert_eq!(l.tracked(), 3);
        // A fourth peer: b is closest to full and goes.
        l.fail(ip("10.0.0.4"), t0);
        assert_eq!(l.tracked(), 3);
        assert!(l.check(ip("10.0.0.1"), t0).is_err(), "a is still limited");
        // Later, every refilled entry goes at once, and a stays.
        let t1 = t0 + Duration::from_secs(25);
        l.fail(ip("10.0.0.5"), t1);
        assert_eq!(l.tracked(), 2);
        for _ in 0..1000 {
            l.fail(ip("10.0.0.6"), t1);
        }
        assert!(l.tracked() <= 3);
    }
}
