//! The published backend table: one immutable [`Snapshot`] per change,
//! built by the control plane and read by every worker.
//!
//! Publishing swaps one `Arc` and bumps a generation counter; a worker
//! checks the counter once per event-loop turn (one relaxed-acquire load)
//! and only then loads the new `Arc`. Readers never lock, never see half a
//! change, and connections already established never look at it again.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{AcceptProxy, Balance, TcpLiveness};
use crate::hash;
use crate::maglev::{EffectiveTable, MaglevTable};
use crate::policy::{self, P2c, RoundRobin};
use crate::proxy_header::ProxyVersion;
use crate::sni_routes::SniRoutes;
use crate::source_limits::SourcePolicy;
use crate::stats::{BackendStats, ServiceStats};

/// Everything a worker needs to place new connections, at one instant.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one per publication.
    pub generation: u64,
    /// In configuration order; workers map listeners to services by name
    /// when the generation changes.
    pub services: Vec<ServiceTable>,
    /// The SNI routes of every address whose services route by server
    /// name (none: no service sets `sni`).
    pub(crate) sni: Vec<Arc<SniRoutes>>,
}

impl Snapshot {
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| &*s.name == name)
    }

    /// The SNI routes of the listener of service `si` bound at `bound`, if
    /// its address routes by server name.
    pub(crate) fn sni_routes(
        &self,
        si: Option<usize>,
        bound: SocketAddr,
    ) -> Option<Arc<SniRoutes>> {
        let si = si?;
        self.sni.iter().find(|r| r.of_listener(si, bound)).cloned()
    }
}

/// Per-service settings a worker applies to new connections.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Distinct backends tried per client connection.
    pub connect_attempts: usize,
    pub max_connections: Option<usize>,
    pub hash_prefix_v4: u8,
    pub hash_prefix_v6: u8,
    pub bounded_load: Option<f64>,
    /// `slow_start`: the window over which a backend that became usable
    /// again takes its Maglev clients back, or its weight ramps up for
    /// least-conn and p2c (None: all at once).
    pub slow_start: Option<Duration>,
    pub source_address: Option<IpAddr>,
    /// TCP_USER_TIMEOUT and keepalive of backend-side sockets.
    pub liveness: TcpLiveness,
    /// Clients must start with a PROXY header (`accept_proxy = true`):
    /// who may send one and how long it may take.
    pub accept_proxy: Option<AcceptProxy>,
    /// `allow`/`deny` and the per-source limits with their shared tables;
    /// None when none is set (then they cost one branch per connection).
    pub(crate) sources: Option<Arc<SourcePolicy>>,
    /// `retry_before_response = "tls"`: a connected client is held in the
    /// replayable phase (`worker/replay.rs`) until its backend answers.
    pub retry_tls: bool,
}

/// One backend as the workers see it.
#[derive(Debug, Clone)]
pub struct BackendEntry {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub weight: u32,
    /// Shared with every other snapshot listing this backend.
    pub stats: Arc<BackendStats>,
    /// The PROXY header its connections begin with (the backend's
    /// `send_proxy`, else the service's): the one field a worker reads.
    pub send_proxy: Option<ProxyVersion>,
    /// When it last became usable (the registry's record, kept across
    /// snapshots): the start of its slow-start window. None while unusable.
    pub usable_since: Option<Instant>,
}

/// A service's backends, which of them take new connections, and the
/// tables to choose among them.
#[derive(Debug)]
pub struct ServiceTable {
    pub name: Arc<str>,
    pub settings: ServiceSettings,
    pub backends: Vec<BackendEntry>,
    /// `usable[i]`: backend i may receive new connections (healthy and
    /// enabled by the operator).
    pub usable: Vec<bool>,
    /// Built over all configured backends (so a flip does not reshuffle);
    /// None for the other policies.
    maglev: Option<(MaglevTable, EffectiveTable)>,
    weights: Vec<u32>,
    pub stats: Arc<ServiceStats>,
}

/// A worker's own state for the non-hash policies of one service.
#[derive(Debug)]
pub struct PickState {
    rr: RoundRobin,
    p2c: P2c,
    /// Rotates least-conn's tie-breaking start.
    turn: usize,
}

impl PickState {
    pub fn new(seed: u64) -> PickState {
        PickState {
            rr: RoundRobin::new(seed as usize),
            p2c: P2c::new(seed),
            turn: seed as usize,
        }
    }
}

impl ServiceTable {
    /// Builds the table. `maglev_table` is the (reused) Maglev table for the
    /// same backend list, or None to build one.
    pub fn new(
        name: Arc<str>,
        settings: ServiceSettings,
        backends: Vec<BackendEntry>,
        usable: Vec<bool>,
        maglev_table: Option<MaglevTable>,
        maglev_size: u32,
        stats: Arc<ServiceStats>,
    ) -> Result<ServiceTable, crate::maglev::MaglevError> {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let maglev = if settings.balance == Balance::Maglev {
            let table = match maglev_table {
                Some(t) => t,
                None => {
                    let members: Vec<crate::maglev::Member<'_>> = backends
                        .iter()
                        .map(|b| crate::maglev::Member {
                            name: &b.name,
                            weight: b.weight,
                        })
                        .collect();
                    MaglevTable::build(&members, maglev_size)?
                }
            };
            let effective = table.effective(&usable);
            Some((table, effective))
        } else {
            None
        };
        Ok(ServiceTable {
            name,
            settings,
            backends,
            usable,
            maglev,
            weights,
            stats,
        })
    }

    /// The Maglev table, to be reused by the next snapshot when the backend
    /// list is unchanged (only usability changed).
    pub fn maglev_table(&self) -> Option<&MaglevTable> {
        self.maglev.as_ref().map(|(t, _)| t)
    }

    /// The Maglev table with unusable backends skipped (None for the other
    /// policies): what the table fingerprint is taken over.
    pub(crate) fn effective_table(&self) -> Option<&crate::maglev::EffectiveTable> {
        self.maglev.as_ref().map(|(_, e)| e)
    }

    /// Fills `out` with the backends to try for a new connection from
    /// `client`, best first, distinct and usable; returns how many.
    /// Zero means no backend is usable.
    pub fn candidates(&self, client: IpAddr, state: &mut PickState, out: &mut [u32]) -> usize {
        self.candidates_at(client, state, out, Instant::now)
    }

    /// [`Self::candidates`] with the clock as an argument, read only when a
    /// slow start is configured (tests pass a fixed instant).
    fn candidates_at(
        &self,
        client: IpAddr,
        state: &mut PickState,
        out: &mut [u32],
        now: impl FnOnce() -> Instant,
    ) -> usize {
        if out.is_empty() {
            return 0;
        }
        let n = match &self.maglev {
            Some((table, effective)) => {
                let key = hash::client_key(
                    client,
                    self.settings.hash_prefix_v4,
                    self.settings.hash_prefix_v6,
                );
                let n = if out.len() == 1 {
                    match effective.lookup(key) {
                        Some(b) => {
                            out[0] = b;
                            1
                        }
                        None => 0,
                    }
                } else {
                    table.candidates(key, &self.usable, out)
                };
                match self.settings.slow_start {
                    None => n,
                    Some(window) => self.slow_start(window, key, table, &mut out[..n], now()),
                }
            }
            None => {
                let ramp = self.settings.slow_start.map(|window| (window, now()));
                let active = |i: usize| {
                    let active = self.backends[i].stats.active();
                    match ramp {
                        None => active,
                        Some((window, now)) => self.ramped_active(i, active, window, now),
                    }
                };
                let first = match self.settings.balance {
                    Balance::RoundRobin => state.rr.pick(&self.usable),
                    Balance::LeastConn => {
                        state.turn = state.turn.wrapping_add(1);
                        policy::least_conn(&self.usable, active, &self.weights, state.turn)
                    }
                    Balance::P2c | Balance::Maglev => {
                        state.p2c.pick(&self.usable, active, &self.weights)
                    }
                };
                match first {
                    // The pick first, then the others in index order.
                    Some(first) => {
                        out[0] = first as u32;
                        1 + policy::failover_order(first, &self.usable, &mut out[1..])
                    }
                    None => 0,
                }
            }
        };
        if let Some(c) = self.settings.bounded_load {
            self.apply_bounded_load(c, &mut out[..n]);
        }
        n
    }

    /// Slow start (Maglev): a candidate still inside its window (it became
    /// usable `elapsed` ago) takes this client only if the client's fixed
    /// fraction (from its key, independent of the table) is below
    /// `elapsed / window`; otherwise the client goes where it would if that
    /// backend were unusable: the next candidate, which is where it was
    /// while the backend was down. The ramp only grows and the fraction is
    /// fixed, so each client moves home exactly once, and clients of other
    /// backends never move. Refused candidates stay in the list, last (a
    /// connect failover may still use them). If every candidate refuses
    /// (all in their windows, as after a start), the client goes to the one
    /// usable the longest: it is the first to admit anyone, so the choice
    /// only ever moves towards home (to the first candidate that admits)
    /// and backends that came up together send their clients home at once.
    /// Returns how many candidates `cands` holds.
    fn slow_start(
        &self,
        window: Duration,
        key: u64,
        table: &MaglevTable,
        cands: &mut [u32],
        now: Instant,
    ) -> usize {
        let fraction = client_fraction(key);
        let since = |b: u32| self.backends.get(b as usize).and_then(|e| e.usable_since);
        let admits = |b: u32| match since(b) {
            None => true,
            Some(since) => {
                let elapsed = now.saturating_duration_since(since);
                elapsed >= window || fraction < elapsed.as_secs_f64() / window.as_secs_f64()
            }
        };
        // The first that admits, else the first usable the longest.
        let choose = |list: &[u32]| {
            list.iter().position(|&b| admits(b)).unwrap_or_else(|| {
                list.iter()
                    .enumerate()
                    .min_by_key(|(_, &b)| since(b))
                    .map_or(0, |(i, _)| i)
            })
        };
        let n = cands.len();
        match cands.first() {
            None => return 0,
            Some(&first) if admits(first) => return n,
            Some(_) => {}
        }
        if n == 1 {
            // Only the first was asked for: look further on the stack.
            let mut more = [0u32; SLOW_START_LOOKAHEAD];
            let m = table.candidates(key, &self.usable, &mut more);
            if let Some(&b) = more[..m].get(choose(&more[..m])) {
                cands[0] = b;
            }
            return 1;
        }
        cands.rotate_left(choose(cands));
        n
    }

    /// Slow start for the weighted policies (least-conn, p2c): backend `i`'s
    /// `active` count as if its weight were scaled by its ramp (elapsed /
    /// window, in 1/1024 steps, at least one): they compare
    /// `(active + 1) / weight`, so `(active + 1) / ramp - 1`, with every
    /// backend's count on the same × 1024 scale.
    fn ramped_active(&self, i: usize, active: u64, window: Duration, now: Instant) -> u64 {
        const FULL: u64 = 1024;
        let ramp = match self.backends.get(i).and_then(|b| b.usable_since) {
            Some(since) if now.saturating_duration_since(since) < window => {
                let elapsed = now.saturating_duration_since(since);
                ((elapsed.as_secs_f64() / window.as_secs_f64() * FULL as f64) as u64).max(1)
            }
            _ => FULL,
        };
        (active.saturating_add(1).saturating_mul(FULL * FULL) / ramp).saturating_sub(1)
    }

    /// Moves the first candidate within the load bound to the front, keeping
    /// the others' order; if none is within the bound, leaves the order.
    fn apply_bounded_load(&self, c: f64, cands: &mut [u32]) {
        let usable_count = self.usable.iter().filter(|u| **u).count();
        let total: u64 = self
            .backends
            .iter()
            .zip(&self.usable)
            .filter(|(_, u)| **u)
            .map(|(b, _)| b.stats.active())
            .sum();
        let within = |i: u32| {
            let active = self.backends[i as usize].stats.active();
            policy::bounded_load_ok(active, total, usable_count, c)
        };
        if let Some(pos) = cands.iter().position(|&i| within(i)) {
            cands[..=pos].rotate_right(1);
        }
    }
}

/// How many candidates a single-choice pick looks at when its first one is
/// still in its slow-start window.
const SLOW_START_LOOKAHEAD: usize = 8;

/// A client's fixed place in [0, 1) for slow start: its key through the
/// splitmix64 finaliser (so not the key's residue that picks its table
/// slot), top 53 bits.
fn client_fraction(key: u64) -> f64 {
    let mut z = key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Where the control plane publishes and workers read the current snapshot.
#[derive(Debug)]
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
}

impl SnapshotCell {
    pub fn new(first: Snapshot) -> SnapshotCell {
        let generation = AtomicU64::new(first.generation);
        SnapshotCell {
            current: ArcSwap::from_pointee(first),
            generation,
        }
    }

    /// Swaps in a new snapshot (control plane only).
    pub fn publish(&self, next: Snapshot) {
        let generation = next.generation;
        self.current.store(Arc::new(next));
        self.generation.store(generation, Ordering::Release);
    }

    /// The generation last published: the one load a worker makes per turn.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot (workers call this only when the generation moved).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn table(balance: Balance, usable: &[bool]) -> ServiceTable {
        let settings = ServiceSettings {
            balance,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            connect_attempts: 3,
            max_connections: None,
            hash_prefix_v4: 32,
            hash_prefix_v6: 128,
            bounded_load: None,
            slow_start: None,
            source_address: None,
            liveness: TcpLiveness::default(),
            accept_proxy: None,
            sources: None,
            retry_tls: true,
        };
        let backends = (0..usable.len())
            .map(|i| BackendEntry {
                name: Arc::from(format!("b{i}").as_str()),
                address: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight: 1,
                stats: Arc::default(),
                send_proxy: None,
                usable_since: None,
            })
            .collect();
        ServiceTable::new(
            Arc::from("s"),
            settings,
            backends,
            usable.to_vec(),
            None,
            101,
            Arc::default(),
        )
        .unwrap()
    }

    #[test]
    fn every_policy_lists_its_pick_first_then_the_other_usable_backends() {
        for balance in [
            Balance::Maglev,
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::P2c,
        ] {
            for usable in [vec![true], vec![true, false, true], vec![false, true, true]] {
                let t = table(balance, &usable);
                let mut state = PickState::new(7);
                let mut out = [u32::MAX; 3];
                let n = t.candidates(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), &mut state, &mut out);
                let usable_count = usable.iter().filter(|u| **u).count();
                assert_eq!(n, usable_count, "{balance:?} {usable:?}: {out:?}");
                let mut seen = out[..n].to_vec();
                seen.sort();
                seen.dedup();
                assert_eq!(
                    seen.len(),
                    n,
                    "{balance:?}: candidates must be distinct: {out:?}"
                );
                assert!(
                    out[..n].iter().all(|&b| usable[b as usize]),
                    "{balance:?}: only usable ones: {out:?}"
                );
            }
        }
    }

    /// Maglev over three backends; `since[i]` is when backend i became usable.
    fn slow_table(
        usable: &[bool],
        since: &[Option<Instant>],
        window: Option<Duration>,
    ) -> ServiceTable {
        let t = table(Balance::Maglev, usable);
        let mut settings = t.settings.clone();
        settings.slow_start = window;
        let backends = t
            .backends
            .iter()
            .zip(since)
            .map(|(b, s)| BackendEntry {
                usable_since: *s,
                ..b.clone()
            })
            .collect();
        ServiceTable::new(
            t.name.clone(),
            settings,
            backends,
            usable.to_vec(),
            None,
            1009,
            Arc::default(),
        )
        .unwrap()
    }

    fn clients() -> impl Iterator<Item = IpAddr> {
        (0..3000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7)))
    }

    fn first_at(t: &ServiceTable, client: IpAddr, len: usize, now: Instant) -> Option<u32> {
        let mut out = [u32::MAX; 3];
        let n = t.candidates_at(client, &mut PickState::new(1), &mut out[..len], || now);
        (n > 0).then_some(out[0])
    }

    #[test]
    fn slow_start_off_or_over_is_todays_choice() {
        let t0 = Instant::now();
        let plain = slow_table(&[true; 3], &[None; 3], None);
        let off = slow_table(&[true; 3], &[Some(t0); 3], None);
        let window = Duration::from_secs(2);
        let since = [Some(t0), Some(t0 - window), None];
        let on = slow_table(&[true; 3], &since, Some(window));
        for c in clients() {
            for len in [1, 3] {
                let want = first_at(&plain, c, len, t0);
                assert_eq!(first_at(&off, c, len, t0), want, "off, {c}");
                assert_eq!(first_at(&on, c, len, t0 + window), want, "window over, {c}");
            }
        }
    }

    #[test]
    fn backends_usable_since_the_same_instant_take_their_clients_at_once() {
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        let plain = slow_table(&[true; 3], &[None; 3], None);
        let start = slow_table(&[true; 3], &[Some(t0); 3], Some(window));
        for c in clients() {
            for step in 0..=20u32 {
                let now = t0 + window * step / 20;
                for len in [1, 3] {
                    assert_eq!(first_at(&start, c, len, now), first_at(&plain, c, len, t0));
                }
            }
        }
    }

    #[test]
    fn slow_start_brings_home_clients_back_gradually_each_once() {
        let window = Duration::from_secs(2);
        // b1 and b2 have been usable for a whole window when b0 returns, or
        // only for 100 ms (still in their own windows, as just after a start).
        let long_ago = Instant::now();
        let t0 = long_ago + window;
        for others in [long_ago, t0 - Duration::from_millis(100)] {
            brings_home_gradually(window, t0, others);
        }
    }

    fn brings_home_gradually(window: Duration, t0: Instant, others: Instant) {
        let down = slow_table(
            &[false, true, true],
            &[None, Some(others), Some(others)],
            None,
        );
        let home = slow_table(&[true; 3], &[None; 3], None);
        let since = [Some(t0), Some(others), Some(others)];
        let back = slow_table(&[true; 3], &since, Some(window));
        let clients: Vec<IpAddr> = clients().collect();
        let before: Vec<u32> = clients
            .iter()
            .map(|&c| first_at(&down, c, 1, t0).unwrap())
            .collect();
        let homes: Vec<u32> = clients
            .iter()
            .map(|&c| first_at(&home, c, 1, t0).unwrap())
            .collect();
        let b0_home = homes.iter().filter(|&&h| h == 0).count();
        assert!(
            b0_home > 500,
            "b0 should be home to ~1/3 of clients: {b0_home}"
        );
        let mut last = before.clone();
        let mut moves = vec![0u32; clients.len()];
        let mut shares = Vec::new();
        // Checked after each step and from a just-restarted backend's first
        // instant (ramp 0) to past its end.
        for step in 0..=24u32 {
            let now = t0 + window * step / 20;
            let mut back_home = 0;
            for (i, &c) in clients.iter().enumerate() {
                let one = first_at(&back, c, 1, now).unwrap();
                let three = first_at(&back, c, 3, now).unwrap();
                assert_eq!(
                    one, three,
                    "{c}: one candidate or three, the first is the same"
                );
                if homes[i] != 0 {
                    assert_eq!(one, homes[i], "{c}: a client of another backend moved");
                    continue;
                }
                assert!(one == homes[i] || one == before[i], "{c}: went to {one}");
                if one != last[i] {
                    moves[i] += 1;
                    last[i] = one;
                }
                back_home += usize::from(one == 0);
            }
            let share = back_home as f64 / b0_home as f64;
            let ramp = (f64::from(step) / 20.0).min(1.0);
            assert!(
                (share - ramp).abs() < 0.08,
                "step {step}: share {share} for ramp {ramp}"
            );
            shares.push(share);
        }
        assert_eq!(shares[0], 0.0, "nobody back at the first instant");
        assert_eq!(shares[20], 1.0, "all back once the window is over");
        assert!(
            shares.windows(2).all(|w| w[0] <= w[1]),
            "not monotone: {shares:?}"
        );
        assert!(moves.iter().all(|&m| m <= 1), "a client moved twice");
    }

    #[test]
    fn slow_start_scales_a_returning_backends_weight_for_least_conn_and_p2c() {
        let window = Duration::from_secs(10);
        let long_ago = Instant::now();
        let t0 = long_ago + window;
        for balance in [Balance::LeastConn, Balance::P2c] {
            let base = table(balance, &[true, true]);
            let mut settings = base.settings.clone();
            settings.slow_start = Some(window);
            let since = [Some(t0), Some(long_ago)];
            let backends: Vec<BackendEntry> = base
                .backends
                .iter()
                .zip(since)
                .map(|(b, s)| BackendEntry {
                    usable_since: s,
                    ..b.clone()
                })
                .collect();
            // b1 is busy (9 open), b0 just returned and idle.
            backends[1].stats.active.store(9, Ordering::Relaxed);
            let off = ServiceTable::new(
                Arc::from("s"),
                base.settings.clone(),
                backends.clone(),
                vec![true, true],
                None,
                101,
                Arc::default(),
            )
            .unwrap();
            let on = ServiceTable::new(
                Arc::from("s"),
                settings,
                backends,
                vec![true, true],
                None,
                101,
                Arc::default(),
            )
            .unwrap();
            let pick = |t: &ServiceTable, now: Instant| {
                let mut out = [u32::MAX; 2];
                let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
                t.candidates_at(client, &mut PickState::new(3), &mut out, || now);
                out[0]
            };
            // Weighted 5 % of b1's, idle b0 weighs (0 + 1) / 0.05 = 20 > 10.
            assert_eq!(pick(&off, t0 + window / 20), 0, "{balance:?}: off");
            assert_eq!(pick(&on, t0 + window / 20), 1, "{balance:?}: at 5 %");
            // At 20 %: 5 < 10.
            assert_eq!(pick(&on, t0 + window / 5), 0, "{balance:?}: at 20 %");
            assert_eq!(pick(&on, t0 + window), 0, "{balance:?}: over");
        }
    }

    #[test]
    fn nothing_usable_gives_no_candidate() {
        for balance in [
            Balance::Maglev,
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::P2c,
        ] {
            let t = table(balance, &[false, false]);
            let mut out = [0u32; 3];
            assert_eq!(
                t.candidates(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    &mut PickState::new(1),
                    &mut out
                ),
                0
            );
        }
    }
}
