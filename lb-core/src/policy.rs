//! Backend choice without client stickiness: round-robin, least connections,
//! power of two choices; the failover order for them; and the bounded-load
//! test that any policy (Maglev included) can apply to its first choice.
//!
//! Threads: workers, once per accepted connection. Each worker keeps its own
//! [`RoundRobin`] cursor and [`P2c`] generator, so nothing here is shared.
//! Pure and allocation-free. Backends are described by index-aligned slices
//! (`usable[i]`, `weights[i]`) and a closure for active connection counts, so
//! this module does not depend on the snapshot's types. A backend missing from
//! `weights` (or with weight 0) counts as weight 1.

/// Round-robin over the usable backends, one cursor per worker. Weights are
/// not considered.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoundRobin {
    /// Index to try first on the next pick. May be beyond the backend count
    /// after the set shrinks; it is taken modulo the count.
    next: usize,
}

impl RoundRobin {
    /// A cursor starting at `start` (a worker's index, so that workers don't
    /// all send their first connection to backend 0).
    pub(crate) fn new(start: usize) -> Self {
        RoundRobin { next: start }
    }

    /// The next usable backend after the previous pick, or None if none is
    /// usable. O(backends) at worst, O(1) when the next one is usable.
    pub(crate) fn pick(&mut self, usable: &[bool]) -> Option<usize> {
        let n = usable.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let chosen = (start..n).chain(0..start).find(|&i| usable[i])?;
        self.next = chosen + 1;
        Some(chosen)
    }
}

/// The usable backend with the fewest active connections per unit of weight,
/// counting the connection about to be placed: it minimises
/// `(active(i) + 1) / weight(i)`. (The `+ 1` makes weights count from the
/// first connection: an idle pair weighted 3 and 1 sends the first connection
/// to the heavier one.) Ties go to the first in index order from `start`
/// (wrapping), so a caller that advances `start` spreads equal backends.
pub(crate) fn least_conn(
    usable: &[bool],
    active: impl Fn(usize) -> u64,
    weights: &[u32],
    start: usize,
) -> Option<usize> {
    let n = usable.len();
    if n == 0 {
        return None;
    }
    let start = start % n;
    let mut best: Option<usize> = None;
    for i in (start..n).chain(0..start).filter(|&i| usable[i]) {
        if best.is_none_or(|b| lighter(i, b, &active, weights)) {
            best = Some(i);
        }
    }
    best
}

/// Power of two choices: two distinct usable backends drawn at random, the
/// one with fewer active connections per unit of weight wins (as in
/// [`least_conn`]; a tie keeps the first draw). Near least-connections
/// quality without scanning every backend, and no herd on one idle backend
/// when many workers choose at once. One generator per worker.
#[derive(Debug, Clone)]
pub(crate) struct P2c {
    /// xorshift64* state; never zero.
    rng: u64,
}

/// Draws that may miss an unusable backend before falling back to a scan.
const P2C_DRAWS: usize = 8;

impl P2c {
    /// A generator seeded with `seed` (a zero seed is replaced, since
    /// xorshift's state must never be zero). Seed workers differently.
    pub(crate) fn new(seed: u64) -> Self {
        P2c {
            rng: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
        }
    }

    /// Picks a backend, or None if none is usable; the only usable one if
    /// there is just one.
    pub(crate) fn pick(
        &mut self,
        usable: &[bool],
        active: impl Fn(usize) -> u64,
        weights: &[u32],
    ) -> Option<usize> {
        let first = self.random_usable(usable, None)?;
        let Some(second) = self.random_usable(usable, Some(first)) else {
            return Some(first);
        };
        Some(if lighter(second, first, &active, weights) {
            second
        } else {
            first
        })
    }

    /// A uniformly random usable backend other than `except`. Expected O(1)
    /// draws while most backends are usable; otherwise one counting scan and a
    /// uniform pick by rank (both halves are uniform, so the mix is too).
    fn random_usable(&mut self, usable: &[bool], except: Option<usize>) -> Option<usize> {
        let n = usable.len();
        let eligible = |i: &usize| usable[*i] && Some(*i) != except;
        for _ in 0..P2C_DRAWS.min(n) {
            let i = self.below(n);
            if eligible(&i) {
                return Some(i);
            }
        }
        let count = (0..n).filter(eligible).count();
        if count == 0 {
            return None;
        }
        let rank = self.below(count);
        (0..n).filter(eligible).nth(rank)
    }

    /// A uniform integer in `0..n` (n > 0), by multiply-high rather than a
    /// biased, slower modulo.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// xorshift64* (Vigna 2016): fast, and plenty for spreading load.
    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Where to fail over after `first` for the non-hash policies: the usable
/// backends after it in index order (wrapping), each once, `first` excluded.
/// Fills `out` and returns how many it wrote.
pub(crate) fn failover_order(first: usize, usable: &[bool], out: &mut [u32]) -> usize {
    let n = usable.len();
    if n == 0 {
        return 0;
    }
    let start = (first % n) + 1;
    let mut written = 0;
    for i in (start..n)
        .chain(0..start)
        .filter(|&i| i != first && usable[i])
    {
        let (Some(slot), Ok(index)) = (out.get_mut(written), u32::try_from(i)) else {
            break;
        };
        *slot = index;
        written += 1;
    }
    written
}

/// Bounded load (Mirrokni et al., "Consistent Hashing with Bounded Loads"):
/// may a backend with `active` connections take one more, when the usable
/// backends hold `total_active` between them? Yes while `active` is below
/// `ceil(c × (total_active + 1) / usable_count)`, the cap counting the
/// connection being placed, so an idle cluster accepts. `c` below 1 (or NaN)
/// counts as 1: a lower cap could refuse every backend. With no usable
/// backends there is no mean to exceed, and the answer is yes.
pub(crate) fn bounded_load_ok(active: u64, total_active: u64, usable_count: usize, c: f64) -> bool {
    if usable_count == 0 {
        return true;
    }
    let c = c.max(1.0);
    let cap = (c * (total_active as f64 + 1.0) / usable_count as f64).ceil();
    (active as f64) < cap
}

/// Whether backend `a` is less loaded than `b` per unit of weight, counting
/// the connection being placed: `(active(a)+1)/w(a) < (active(b)+1)/w(b)`,
/// cross-multiplied in u128 so it is exact and cannot overflow.
fn lighter(a: usize, b: usize, active: &impl Fn(usize) -> u64, weights: &[u32]) -> bool {
    let weight = |i: usize| u128::from(weights.get(i).copied().unwrap_or(1).max(1));
    let load = |i: usize| u128::from(active(i)) + 1;
    load(a) * weight(b) < load(b) * weight(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_in_order_and_fairly() {
        let mut rr = RoundRobin::default();
        let usable = [true; 4];
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&usable)).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1].map(Some));
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[rr.pick(&usable).expect("usable")] += 1;
        }
        assert_eq!(counts, [1000; 4]);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let mut rr = RoundRobin::new(1);
        let usable = [true, false, true, false, true];
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&usable)).collect();
        assert_eq!(picks, [2, 4, 0, 2, 4, 0].map(Some));
    }

    #[test]
    fn round_robin_none_when_nothing_usable_and_survives_shrinking() {
        let mut rr = RoundRobin::new(0);
        assert_eq!(rr.pick(&[false, false]), None);
        assert_eq!(rr.pick(&[]), None);
        assert_eq!(rr.pick(&[true; 10]), Some(0));
        for _ in 0..8 {
            rr.pick(&[true; 10]);
        }
        // Cursor at 9; the set shrinks to 3.
        assert_eq!(rr.pick(&[true; 3]), Some(0));
        assert_eq!(rr.pick(&[true; 3]), Some(1));
    }

    #[test]
    fn least_conn_picks_fewest_active() {
        let active = [5u64, 2, 7, 2];
        let pick = |usable: &[bool], start| least_conn(usable, |i| active[i], &[], start);
        assert_eq!(pick(&[true; 4], 0), Some(1));
        assert_eq!(
            pick(&[true; 4], 2),
            Some(3),
            "tie goes to the first from start"
        );
        assert_eq!(pick(&[true, false, true, false], 0), Some(0));
        assert_eq!(pick(&[false; 4], 0), None);
        assert_eq!(pick(&[], 0), None);
    }

    #[test]
    fn least_conn_weighs_and_rotates_ties() {
        // Equal backends: a rotating start spreads picks evenly.
        let mut counts = [0u32; 3];
        for start in 0..300 {
            counts[least_conn(&[true; 3], |_| 4, &[2, 2, 2], start).expect("usable")] += 1;
        }
        assert_eq!(counts, [100; 3]);
        // Counting the new connection: weight 1 with 1 active is at 2/1.
        // Weight 3 with 4 active (5/3) beats it, with 5 (6/3) ties, with 6
        // (7/3) loses.
        assert_eq!(least_conn(&[true; 2], |i| [1, 4][i], &[1, 3], 0), Some(1));
        assert_eq!(least_conn(&[true; 2], |i| [1, 5][i], &[1, 3], 0), Some(0));
        assert_eq!(least_conn(&[true; 2], |i| [1, 5][i], &[1, 3], 1), Some(1));
        assert_eq!(least_conn(&[true; 2], |i| [1, 6][i], &[1, 3], 1), Some(0));
        // Idle cluster: the heavier backend goes first.
        assert_eq!(least_conn(&[true; 2], |_| 0, &[1, 3], 0), Some(1));
    }

    #[test]
    fn least_conn_converges_to_weight_shares() {
        let weights = [1u32, 2, 3, 4];
        let mut active = [0u64; 4];
        for start in 0..10_000 {
            let i = least_conn(&[true; 4], |i| active[i], &weights, start).expect("usable");
            active[i] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            assert!(active[i].abs_diff(u64::from(w) * 1000) <= 1, "{active:?}");
        }
    }

    #[test]
    fn least_conn_extreme_counts_do_not_overflow() {
        let active = [u64::MAX, u64::MAX - 1];
        assert_eq!(
            least_conn(&[true; 2], |i| active[i], &[u32::MAX, u32::MAX], 0),
            Some(1)
        );
    }

    #[test]
    fn p2c_never_picks_unusable_and_none_when_nothing_usable() {
        let mut p2c = P2c::new(1);
        let usable = [false, true, false, true, true];
        for _ in 0..1000 {
            let i = p2c.pick(&usable, |_| 0, &[]).expect("usable");
            assert!(usable[i]);
        }
        assert_eq!(p2c.pick(&[false; 5], |_| 0, &[]), None);
        assert_eq!(p2c.pick(&[], |_| 0, &[]), None);
        assert_eq!(p2c.pick(&[false, false, true], |_| 9, &[]), Some(2));
    }

    #[test]
    fn p2c_equal_loads_spread_uniformly() {
        let mut p2c = P2c::new(42);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[p2c.pick(&[true; 5], |_| 3, &[]).expect("usable")] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn p2c_never_picks_the_single_heaviest() {
        let active = [0u64, 10, 10, 100];
        let mut p2c = P2c::new(7);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[p2c.pick(&[true; 4], |i| active[i], &[]).expect("usable")] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        // The lightest wins every pair it is drawn into: half of all draws.
        assert!(counts[0] > 4_500, "{counts:?}");
    }

    #[test]
    fn p2c_keeps_loads_balanced_and_weighted() {
        let weights = [1u32, 1, 2, 4];
        let mut active = [0u64; 4];
        let mut p2c = P2c::new(3);
        for _ in 0..8_000 {
            let i = p2c
                .pick(&[true; 4], |i| active[i], &weights)
                .expect("usable");
            active[i] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let want = u64::from(w) * 1000;
            assert!(active[i].abs_diff(want) < 50, "{active:?}");
        }
    }

    #[test]
    fn p2c_finds_the_few_usable_among_many() {
        let mut usable = [false; 100];
        usable[17] = true;
        usable[83] = true;
        let mut p2c = P2c::new(5);
        let mut counts = [0u32; 100];
        for _ in 0..1000 {
            counts[p2c.pick(&usable, |_| 0, &[]).expect("usable")] += 1;
        }
        assert_eq!(counts[17] + counts[83], 1000);
        assert!(
            counts[17] > 350 && counts[83] > 350,
            "{} {}",
            counts[17],
            counts[83]
        );
    }

    #[test]
    fn p2c_zero_seed_still_random() {
        let mut p2c = P2c::new(0);
        let draws: Vec<u64> = (0..4).map(|_| p2c.next_u64()).collect();
        assert!(draws.iter().all(|&d| d != 0) && draws[0] != draws[1]);
    }

    #[test]
    fn failover_order_wraps_skips_and_is_bounded() {
        let usable = [true, false, true, true, false];
        let mut out = [u32::MAX; 8];
        let n = failover_order(2, &usable, &mut out);
        assert_eq!(&out[..n], &[3, 0]);
        let n = failover_order(1, &usable, &mut out);
        assert_eq!(
            &out[..n],
            &[2, 3, 0],
            "an unusable first still orders from after it"
        );
        let mut one = [u32::MAX; 1];
        assert_eq!(failover_order(0, &usable, &mut one), 1);
        assert_eq!(one, [2]);
        assert_eq!(failover_order(0, &[true], &mut out), 0);
        assert_eq!(failover_order(0, &[], &mut out), 0);
        assert_eq!(failover_order(3, &[false; 5], &mut out), 0);
        assert_eq!(failover_order(0, &usable, &mut []), 0);
    }

    #[test]
    fn bounded_load_caps_at_c_times_mean() {
        // Empty cluster accepts.
        assert!(bounded_load_ok(0, 0, 4, 1.25));
        assert!(bounded_load_ok(0, 0, 1, 1.0));
        // 4 backends, 100 active: cap = ceil(1.25 × 101 / 4) = 32.
        assert!(bounded_load_ok(31, 100, 4, 1.25));
        assert!(!bounded_load_ok(32, 100, 4, 1.25));
        // c below 1 or NaN acts as 1: cap = ceil(101 / 4) = 26.
        assert!(bounded_load_ok(25, 100, 4, 0.5));
        assert!(!bounded_load_ok(26, 100, 4, f64::NAN));
        // Nothing usable: nothing to compare with.
        assert!(bounded_load_ok(5, 5, 0, 1.25));
    }
}
