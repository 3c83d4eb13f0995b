//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted: the
//! lookup table that sends a client key to a backend, the "effective table"
//! that skips backends which cannot take connections, and each client's
//! failover preference order.
//!
//! Threads: the control thread builds a [`MaglevTable`] when the configured
//! backend set or weights change, and an [`EffectiveTable`] whenever a
//! backend's usability flips; both go into the published snapshot. Workers
//! only call [`EffectiveTable::lookup`] and [`MaglevTable::candidates`].
//! Pure: no I/O, no clocks, no logging.
//!
//! How the table is filled (so two instances with the same backend set agree):
//! - Members are taken in canonical order, sorted by name (bytewise), so the
//!   caller's list order does not matter.
//! - Each member's permutation of the `M` slots (M prime) starts at
//!   `offset = h1 % M` and steps by `skip = h2 % (M - 1) + 1`, with
//!   `(h1, h2) = hash::name_hashes(name)`: it depends on the name only, never
//!   on a list position.
//! - Weights use the credit scheme of Katran's `MaglevHashV2` (Envoy does the
//!   same in floating point): in each round every member, in canonical order,
//!   adds its weight to its credit; a member whose credit reaches the largest
//!   weight spends that much and claims the next free slot of its permutation.
//!   With equal weights this is classic Maglev's round-robin fill.

use std::fmt;

use crate::hash;

/// Smallest table size accepted. Real deployments want a prime above
/// 100 × the number of backends (65 537 by default).
pub(crate) const MIN_TABLE_SIZE: u32 = 7;

/// One backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The backend's configured name: its stable identity, which alone decides
    /// where its slots fall.
    pub name: &'a str,
    /// Relative share of the slots; at least 1.
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("a Maglev table needs at least one backend")]
    NoMembers,
    #[error("{count} backends are more than a Maglev table can index (at most {max})", max = u32::MAX)]
    TooManyMembers { count: usize },
    #[error("Maglev table size {size} is too small: use a prime of at least {MIN_TABLE_SIZE} (default 65537)")]
    SizeTooSmall { size: u32 },
    #[error("Maglev table size {size} is not prime: use a prime such as 65537 or 655373")]
    SizeNotPrime { size: u32 },
    #[error(
        "Maglev table size {size} must be larger than the number of backends ({members}); \
         a prime above 100 × {members} keeps every share within 1%"
    )]
    SizeNotAboveMembers { size: u32, members: usize },
    #[error(
        "backend {name:?} has weight 0: weights start at 1 \
         (drain or disable a backend instead of weighting it to 0)"
    )]
    ZeroWeight { name: String },
    #[error("backend name {name:?} appears twice: Maglev places backends by name, so names must be unique")]
    DuplicateName { name: String },
}

/// A built Maglev lookup table: slot → member. Immutable; rebuilt (not edited)
/// when the member set or a weight changes.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    /// Owner of each slot, as an index into the `members` slice given to
    /// [`MaglevTable::build`]. Its length is the prime table size `M`.
    slots: Box<[u32]>,
    /// How many members the table was built over: `usable` slices are read up
    /// to this length, and candidate walks stop once all of them are found.
    members: u32,
}

/// Marks a slot not yet claimed while filling. Never a member index: indices
/// are below `members.len()`, which is below `M <= u32::MAX`.
const EMPTY: u32 = u32::MAX;

/// One member's state while the table fills.
struct Fill {
    /// The member's index in the caller's slice (what the slots store).
    index: u32,
    weight: u64,
    /// Accumulated weight not yet spent on a slot (the credit scheme).
    credit: u64,
    /// The next slot of this member's permutation to try.
    next: u64,
    /// Permutation step; in `1..M`, so with `M` prime it visits every slot.
    skip: u64,
}

impl MaglevTable {
    /// Builds the table of `size` slots over `members`. Slots hold indices into
    /// `members`. Errors, never panics, on bad input: no members, more than
    /// `u32::MAX` of them, `size` below [`MIN_TABLE_SIZE`] or not prime or not
    /// larger than the member count, a zero weight, a duplicate name.
    ///
    /// Cost: O(M log M) slot probes plus O(N) per fill round; rounds are about
    /// `M × max_weight / sum_of_weights`.
    pub fn build(members: &[Member<'_>], size: u32) -> Result<Self, MaglevError> {
        if members.is_empty() {
            return Err(MaglevError::NoMembers);
        }
        let count = u32::try_from(members.len()).map_err(|_| MaglevError::TooManyMembers {
            count: members.len(),
        })?;
        if size < MIN_TABLE_SIZE {
            return Err(MaglevError::SizeTooSmall { size });
        }
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime { size });
        }
        if size <= count {
            return Err(MaglevError::SizeNotAboveMembers {
                size,
                members: members.len(),
            });
        }
        if let Some(zero) = members.iter().find(|m| m.weight == 0) {
            return Err(MaglevError::ZeroWeight {
                name: zero.name.to_owned(),
            });
        }

        // Canonical order: by name, so every instance fills identically.
        let mut order: Vec<u32> = (0..count).collect();
        order.sort_unstable_by(|&a, &b| members[a as usize].name.cmp(members[b as usize].name));
        if let Some(pair) = order
            .windows(2)
            .find(|pair| members[pair[0] as usize].name == members[pair[1] as usize].name)
        {
            return Err(MaglevError::DuplicateName {
                name: members[pair[0] as usize].name.to_owned(),
            });
        }

        let m = u64::from(size);
        let mut fills: Vec<Fill> = order
            .iter()
            .map(|&index| {
                let member = &members[index as usize];
                let (h1, h2) = hash::name_hashes(member.name);
                Fill {
                    index,
                    weight: u64::from(member.weight),
                    credit: 0,
                    next: h1 % m,
                    skip: h2 % (m - 1) + 1,
                }
            })
            .collect();
        let max_weight = fills.iter().map(|f| f.weight).max().unwrap_or(1);

        let mut slots = vec![EMPTY; size as usize].into_boxed_slice();
        let mut filled: u64 = 0;
        'fill: loop {
            for f in &mut fills {
                f.credit += f.weight;
                if f.credit < max_weight {
                    continue;
                }
                f.credit -= max_weight;
                // Terminates: the permutation visits every slot (M prime, skip
                // in 1..M) and at least one slot is still empty.
                while slots[f.next as usize] != EMPTY {
                    f.next = advance(f.next, f.skip, m);
                }
                slots[f.next as usize] = f.index;
                f.next = advance(f.next, f.skip, m);
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Ok(MaglevTable {
            slots,
            members: count,
        })
    }

    /// The table size `M` (prime).
    pub fn size(&self) -> u32 {
        // The length came from a `u32` in `build`.
        self.slots.len() as u32
    }

    /// How many members the table was built over.
    pub fn member_count(&self) -> u32 {
        self.members
    }

    /// The member (index into the `members` given to `build`) that owns
    /// `slot`. Slots at or beyond [`size`](Self::size) wrap around.
    pub fn owner(&self, slot: u32) -> u32 {
        self.slots[slot as usize % self.slots.len()]
    }

    /// The slot a client key falls into: `key % size`.
    pub fn slot_of(&self, key: u64) -> u32 {
        // The remainder is below `size`, a `u32`.
        (key % self.slots.len() as u64) as u32
    }

    /// The table with unusable members skipped: each slot whose owner is not
    /// usable goes to the owner of the next slot (wrapping) whose owner is.
    /// `usable[i]` says whether member `i` may take new connections; members
    /// beyond `usable.len()` count as unusable. O(M): one backwards pass.
    ///
    /// So a failed member's clients spread over the others in table order,
    /// every other client keeps its backend, and once the member is usable
    /// again the table is exactly what it was.
    pub fn effective(&self, usable: &[bool]) -> EffectiveTable {
        let is_usable = |member: u32| usable.get(member as usize).copied().unwrap_or(false);
        let Some(anchor) = self.slots.iter().position(|&owner| is_usable(owner)) else {
            return EffectiveTable {
                slots: Box::new([]),
            };
        };
        // Walking backwards from a usable slot, `carry` is always the owner of
        // the nearest usable slot at or after the current one.
        let mut slots = self.slots.clone();
        let mut carry = self.slots[anchor];
        for slot in (0..=anchor)
            .rev()
            .chain((anchor + 1..self.slots.len()).rev())
        {
            let owner = self.slots[slot];
            if is_usable(owner) {
                carry = owner;
            }
            slots[slot] = carry;
        }
        EffectiveTable { slots }
    }

    /// Fills `out` with up to `out.len()` distinct usable members in this
    /// client's preference order and returns how many it wrote: the owners met
    /// walking the table forward (wrapping) from `slot_of(key)`, skipping
    /// unusable and repeated ones. The first equals
    /// `self.effective(usable).lookup(key)`, and each next one is where the
    /// client would land if all before it were unusable.
    ///
    /// For connect failover on a worker: allocation-free, and at most `M`
    /// steps (it stops early once every usable member is found).
    pub fn candidates(&self, key: u64, usable: &[bool], out: &mut [u32]) -> usize {
        let known = &usable[..usable.len().min(self.members as usize)];
        let want = out.len().min(known.iter().filter(|&&u| u).count());
        if want == 0 {
            return 0;
        }
        let start = self.slot_of(key) as usize;
        let mut found = 0;
        for slot in (start..self.slots.len()).chain(0..start) {
            let owner = self.slots[slot];
            if known.get(owner as usize).copied().unwrap_or(false) && !out[..found].contains(&owner)
            {
                out[found] = owner;
                found += 1;
                if found == want {
                    break;
                }
            }
        }
        found
    }
}

impl fmt::Debug for MaglevTable {
    /// Sizes only: the slot array is 65 537 entries by default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.slots.len())
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// A [`MaglevTable`] with unusable members replaced, made by
/// [`MaglevTable::effective`]. What a worker looks a client up in.
#[derive(Clone, PartialEq, Eq)]
pub struct EffectiveTable {
    /// Usable owner of each slot; empty when no member is usable.
    slots: Box<[u32]>,
}

impl EffectiveTable {
    /// The usable owner of every slot (empty when none is usable): what
    /// the tier's table fingerprint is taken over (`fingerprint.rs`).
    pub(crate) fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The usable member for a client key, or None when no member is usable.
    /// The hot path: one modulo, one load.
    #[inline]
    pub fn lookup(&self, key: u64) -> Option<u32> {
        // `checked_rem` is None for the empty table: no panic path.
        let slot = key.checked_rem(self.slots.len() as u64)?;
        self.slots.get(slot as usize).copied()
    }
}

impl fmt::Debug for EffectiveTable {
    /// Size only, like [`MaglevTable`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EffectiveTable")
            .field("size", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The next position of a permutation: `(pos + skip) % m`, for `pos, skip < m`.
fn advance(pos: u64, skip: u64, m: u64) -> u64 {
    let next = pos + skip;
    if next >= m {
        next - m
    } else {
        next
    }
}

/// Trial division (at most ~32 768 divisions for a u32); table sizes are
/// checked once per build, and by the config when it is loaded.
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const M: u32 = 65_537;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn members(names: &[String]) -> Vec<Member<'_>> {
        names
            .iter()
            .map(|name| Member { name, weight: 1 })
            .collect()
    }

    fn build(members: &[Member<'_>], size: u32) -> MaglevTable {
        MaglevTable::build(members, size).expect("valid test table")
    }

    /// Slot counts per member index.
    fn counts(table: &MaglevTable) -> Vec<u64> {
        let mut counts = vec![0u64; table.member_count() as usize];
        for slot in 0..table.size() {
            counts[table.owner(slot) as usize] += 1;
        }
        counts
    }

    /// Owner of each slot by name.
    fn owner_names<'a>(table: &MaglevTable, members: &[Member<'a>]) -> Vec<&'a str> {
        (0..table.size())
            .map(|s| members[table.owner(s) as usize].name)
            .collect()
    }

    /// The effective table's owner of every slot (key = slot).
    fn effective_owners(table: &EffectiveTable, size: u32) -> Vec<Option<u32>> {
        (0..u64::from(size)).map(|k| table.lookup(k)).collect()
    }

    #[test]
    fn determinism_same_set_in_any_order_gives_same_table_by_name() {
        let names = names(25);
        let base = members(&names);
        let reference = owner_names(&build(&base, M), &base);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..5 {
            let mut shuffled = base.clone();
            shuffled.shuffle(&mut rng);
            assert_eq!(owner_names(&build(&shuffled, M), &shuffled), reference);
        }
        assert_eq!(build(&base, M), build(&base, M));
    }

    #[test]
    fn layout_is_pinned_across_versions() {
        // Instances of different versions must agree: this layout is part of
        // the contract, like the hash golden vectors.
        let ms = [
            Member {
                name: "art1",
                weight: 1,
            },
            Member {
                name: "art2",
                weight: 1,
            },
            Member {
                name: "art3",
                weight: 2,
            },
        ];
        let table = build(&ms, 13);
        let layout: Vec<u32> = (0..13).map(|s| table.owner(s)).collect();
        assert_eq!(layout, PINNED_LAYOUT);

        let names = names(10);
        let table = build(&members(&names), M);
        let checksum = (0..M).fold(0u64, |acc, s| {
            acc.wrapping_mul(31).wrapping_add(u64::from(table.owner(s)))
        });
        assert_eq!(
            checksum, PINNED_CHECKSUM_10_OF_65537,
            "got {checksum:#018x}"
        );
    }

    const PINNED_CHECKSUM_10_OF_65537: u64 = 0xc4dc_f1b3_0882_ced4;
    const PINNED_LAYOUT: [u32; 13] = [2, 0, 1, 1, 2, 2, 2, 0, 2, 2, 2, 0, 1];

    #[test]
    fn balance_unweighted_slot_counts_differ_by_at_most_one() {
        for n in [2, 3, 10, 100] {
            let names = names(n);
            let counts = counts(&build(&members(&names), M));
            let (min, max) = (counts.iter().min(), counts.iter().max());
            let spread = max.copied().unwrap_or(0) - min.copied().unwrap_or(0);
            eprintln!("balance N={n} M={M}: min {min:?} max {max:?} max-min {spread}");
            assert!(spread <= 1, "N={n}: counts {min:?}..{max:?}");
        }
    }

    #[test]
    fn weighted_shares_track_weights_within_one_percent() {
        for weights in [
            &[1u32, 2, 3, 4][..],
            &[100, 50],
            &[100, 100, 100, 1],
            &[10_000, 1, 5_000, 2_500, 3],
        ] {
            let names = names(weights.len());
            let ms: Vec<Member<'_>> = names
                .iter()
                .zip(weights)
                .map(|(name, &weight)| Member { name, weight })
                .collect();
            let counts = counts(&build(&ms, M));
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let mut worst = 0.0f64;
            for (&count, &w) in counts.iter().zip(weights) {
                let expected = f64::from(M) * f64::from(w) / total as f64;
                let relative = (count as f64 - expected).abs() / expected;
                worst = worst.max(relative);
                // Relative 1%, or one slot for members too light to measure
                // a percentage on (a weight-1 member next to 10 000).
                assert!(
                    relative < 0.01 || (count as f64 - expected).abs() <= 1.0,
                    "weights {weights:?}: weight {w} got {count} slots, expected {expected:.1}"
                );
            }
            eprintln!(
                "weights {weights:?}: counts {counts:?}, worst share error {:.4}%",
                worst * 100.0
            );
        }
    }

    #[test]
    fn higher_weight_gets_more_slots() {
        let ms = [
            Member {
                name: "light",
                weight: 1,
            },
            Member {
                name: "heavy",
                weight: 3,
            },
        ];
        let counts = counts(&build(&ms, M));
        assert!(counts[1] > 2 * counts[0], "{counts:?}");
    }

    #[test]
    fn disruption_removing_one_backend_moves_its_keys_and_few_others() {
        for n in [10, 100] {
            let names = names(n);
            let all = members(&names);
            let before = owner_names(&build(&all, M), &all);
            let mut worst_excess = 0.0f64;
            // Remove each of a few backends in turn.
            for removed in [0, n / 2, n - 1] {
                let mut rest = all.clone();
                let gone = rest.remove(removed).name;
                let after = owner_names(&build(&rest, M), &rest);
                let mut own = 0u64;
                let mut excess = 0u64;
                for (b, a) in before.iter().zip(&after) {
                    if *b == gone {
                        own += 1;
                    } else if b != a {
                        excess += 1;
                    }
                }
                let excess_pct = 100.0 * excess as f64 / f64::from(M);
                worst_excess = worst_excess.max(excess_pct);
                eprintln!(
                    "disruption N={n} remove {gone}: its slots {own} ({:.2}%), other slots moved {excess} ({excess_pct:.3}%)",
                    100.0 * own as f64 / f64::from(M)
                );
            }
            // The paper reports a few percent; anything near the removed
            // backend's own share means the canonical order is broken.
            assert!(
                worst_excess < 2.0,
                "N={n}: {worst_excess:.3}% of other keys moved"
            );
        }
    }

    #[test]
    fn effective_all_usable_is_the_raw_table() {
        let names = names(10);
        let table = build(&members(&names), M);
        let eff = table.effective(&[true; 10]);
        for slot in 0..M {
            assert_eq!(eff.lookup(u64::from(slot)), Some(table.owner(slot)));
        }
    }

    #[test]
    fn effective_unusable_backend_moves_only_its_own_keys_spread_over_others() {
        for n in [3, 10, 100] {
            let names = names(n);
            let table = build(&members(&names), M);
            let all = vec![true; n];
            let original = effective_owners(&table.effective(&all), M);
            for down in [0, n - 1] {
                let mut usable = all.clone();
                usable[down] = false;
                let eff = table.effective(&usable);
                let mut received = vec![0u64; n];
                for slot in 0..M {
                    let owner = table.owner(slot);
                    let now = eff.lookup(u64::from(slot)).expect("others are usable");
                    if owner as usize == down {
                        assert_ne!(now as usize, down);
                        received[now as usize] += 1;
                    } else {
                        assert_eq!(now, owner, "slot {slot} of a usable backend moved");
                    }
                }
                let moved: u64 = received.iter().sum();
                let most = received.iter().copied().max().unwrap_or(0);
                assert!(
                    most < moved,
                    "N={n}: one backend took all {moved} keys of the failed one"
                );
                // Each other backend takes some of them, none takes a glut:
                // the next-slot owner is spread like the table itself.
                let fair = moved as f64 / (n - 1) as f64;
                for (i, &r) in received.iter().enumerate().filter(|&(i, _)| i != down) {
                    assert!(
                        (r as f64) < 3.0 * fair && (n > 10 || (r as f64) > fair / 3.0),
                        "N={n}: backend {i} took {r} of {moved}"
                    );
                }
                if n == 10 {
                    eprintln!(
                        "effective N=10, backend {down} down: its {moved} slots went {received:?}"
                    );
                }
                usable[down] = true;
                assert_eq!(effective_owners(&table.effective(&usable), M), original);
                assert_eq!(table.effective(&usable), table.effective(&all));
            }
        }
    }

    #[test]
    fn effective_nothing_usable_looks_up_none() {
        let names = names(4);
        let table = build(&members(&names), 11);
        for usable in [&[false; 4][..], &[], &[false, false]] {
            let eff = table.effective(usable);
            assert_eq!(eff.lookup(0), None);
            assert_eq!(eff.lookup(u64::MAX), None);
        }
    }

    #[test]
    fn effective_treats_members_missing_from_usable_as_unusable() {
        let names = names(4);
        let table = build(&members(&names), 101);
        let eff = table.effective(&[true, true]);
        for key in 0..101 {
            assert!(matches!(eff.lookup(key), Some(0 | 1)));
        }
    }

    #[test]
    fn lookup_and_slot_of_use_key_modulo_size() {
        let names = names(5);
        let table = build(&members(&names), 31);
        let eff = table.effective(&[true; 5]);
        for key in [0, 30, 31, 32, u64::MAX, u64::MAX - 7, 1 << 40] {
            let slot = (key % 31) as u32;
            assert_eq!(table.slot_of(key), slot);
            assert_eq!(eff.lookup(key), Some(table.owner(slot)));
        }
        assert_eq!(table.owner(31), table.owner(0));
    }

    #[test]
    fn candidates_first_is_the_effective_lookup() {
        let names = names(10);
        let table = build(&members(&names), M);
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..50 {
            let usable: Vec<bool> = (0..10).map(|_| rng.gen_bool(0.6)).collect();
            let eff = table.effective(&usable);
            for _ in 0..200 {
                let key: u64 = rng.gen();
                let mut out = [0u32; 3];
                let n = table.candidates(key, &usable, &mut out);
                assert_eq!(eff.lookup(key), out[..n].first().copied());
            }
        }
    }

    #[test]
    fn candidates_are_distinct_usable_and_each_is_the_next_failover() {
        let names = names(10);
        let table = build(&members(&names), 1009);
        let mut rng = StdRng::seed_from_u64(12);
        for _ in 0..300 {
            let usable: Vec<bool> = (0..10).map(|_| rng.gen_bool(0.7)).collect();
            let usable_count = usable.iter().filter(|&&u| u).count();
            let key: u64 = rng.gen();
            let mut out = [u32::MAX; 10];
            let n = table.candidates(key, &usable, &mut out);
            assert_eq!(n, usable_count, "all usable members are found");
            let mut without = usable.clone();
            for (k, &c) in out[..n].iter().enumerate() {
                assert!(usable[c as usize]);
                assert!(!out[..k].contains(&c), "duplicate {c}");
                // Candidate k is where the client lands with 0..k down.
                assert_eq!(table.effective(&without).lookup(key), Some(c));
                without[c as usize] = false;
            }
        }
    }

    #[test]
    fn candidates_respect_out_length_and_empty_cases() {
        let names = names(5);
        let table = build(&members(&names), 101);
        let all = [true; 5];
        let mut three = [0u32; 3];
        assert_eq!(table.candidates(42, &all, &mut three), 3);
        let mut none: [u32; 0] = [];
        assert_eq!(table.candidates(42, &all, &mut none), 0);
        let mut eight = [0u32; 8];
        assert_eq!(table.candidates(42, &[false; 5], &mut eight), 0);
        assert_eq!(table.candidates(42, &[], &mut eight), 0);
        assert_eq!(table.candidates(42, &[false, true], &mut eight), 1);
        assert_eq!(eight[0], 1);
        // Extra entries beyond the member count are ignored.
        assert_eq!(table.candidates(42, &[true; 9], &mut eight), 5);
    }

    #[test]
    fn errors_for_each_bad_input() {
        let ok = [
            Member {
                name: "a",
                weight: 1,
            },
            Member {
                name: "b",
                weight: 2,
            },
        ];
        assert_eq!(MaglevTable::build(&[], 13), Err(MaglevError::NoMembers));
        assert_eq!(
            MaglevTable::build(&ok, 5),
            Err(MaglevError::SizeTooSmall { size: 5 })
        );
        assert_eq!(
            MaglevTable::build(&ok, 0),
            Err(MaglevError::SizeTooSmall { size: 0 })
        );
        assert_eq!(
            MaglevTable::build(&ok, 65_536),
            Err(MaglevError::SizeNotPrime { size: 65_536 })
        );
        assert_eq!(
            MaglevTable::build(&ok, 9),
            Err(MaglevError::SizeNotPrime { size: 9 })
        );
        let names = names(13);
        assert_eq!(
            MaglevTable::build(&members(&names), 13),
            Err(MaglevError::SizeNotAboveMembers {
                size: 13,
                members: 13
            })
        );
        assert_eq!(
            MaglevTable::build(
                &[
                    Member {
                        name: "a",
                        weight: 1
                    },
                    Member {
                        name: "z",
                        weight: 0
                    }
                ],
                13
            ),
            Err(MaglevError::ZeroWeight { name: "z".into() })
        );
        assert_eq!(
            MaglevTable::build(
                &[
                    Member {
                        name: "b",
                        weight: 1
                    },
                    Member {
                        name: "a",
                        weight: 1
                    },
                    Member {
                        name: "b",
                        weight: 2
                    }
                ],
                13
            ),
            Err(MaglevError::DuplicateName { name: "b".into() })
        );
        // More than u32::MAX members cannot be allocated in a test; the check
        // is a `u32::try_from` on the length, ahead of every other.
        let message = MaglevError::TooManyMembers { count: 1 << 33 }.to_string();
        assert!(message.contains("at most 4294967295"), "{message}");
        assert!(MaglevTable::build(&ok, 7).is_ok());
    }

    #[test]
    fn prime_check_is_exact() {
        let primes: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            primes,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
        );
        assert!(is_prime(65_537));
        assert!(is_prime(655_373));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(65_535));
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65_521 * 65_519));
    }
}
