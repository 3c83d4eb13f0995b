//! Hostile input: property tests of every parser of bytes from outside
//! (the config text, health answers, admin requests, join bodies, the
//! upgrade handover, PROXY headers). Test-only; runs on the test
//! harness's threads.
//!
//! Stable Rust has no libFuzzer, so this is proptest driving a mutational
//! fuzzer: each case is a seed from `fuzz/corpus/<target>/` (or random
//! bytes) put through random byte edits and dictionary splices. The
//! properties, per input: no panic, an answer within [`PER_INPUT`], bounded
//! output (error messages stay short), and every error position points
//! inside the input.
//!
//! `cargo test` runs [`DEFAULT_CASES`] per target (a smoke, seconds);
//! `scripts/fuzz.sh TARGET CASES` runs one target long (release build,
//! `RINGLB_FUZZ_CASES`). The targets sit next to what they test (a child
//! module sees its parent's private parsers): `config/fuzz.rs`,
//! `health/fuzz.rs`, `admin/fuzz.rs`, `admin/fuzz/join.rs`,
//! `handover/fuzz.rs`, `proxy_header/parse_fuzz.rs` (target
//! `proxy_header`: the PROXY header a trusted balancer sends first). The
//! same properties, as functions of bytes for a coverage-guided fuzzer
//! (afl, `scripts/fuzz.sh --afl`), are in `src/fuzz_entry.rs`, which this
//! module shares its checks with.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Cases per target in a plain `cargo test`.
const DEFAULT_CASES: u32 = 512;
/// Longest one input may take to be judged. Generous: the debug build on
/// a busy shared machine; a real hang takes forever.
pub(crate) const PER_INPUT: Duration = Duration::from_secs(2);
pub(crate) use crate::fuzz_entry::{position_inside, MAX_MESSAGE};
/// The proptest settings of every target: `RINGLB_FUZZ_CASES` cases
/// (default [`DEFAULT_CASES`]), no failure files (a failure is printed;
/// it becomes a regression test by hand).
pub(crate) fn config() -> ProptestConfig {
    let cases = std::env::var("RINGLB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// One edit of a mutated input.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite the byte at (position mod length).
    Set(usize, u8),
    /// Insert a byte.
    Insert(usize, u8),
    /// Remove up to `n` bytes.
    Remove(usize, usize),
    /// Insert a dictionary word.
    Splice(usize, usize),
    /// Repeat a slice (long inputs, deep nesting).
    Repeat(usize, usize, usize),
}

fn apply(mut data: Vec<u8>, edits: &[Edit], dict: &[&[u8]]) -> Vec<u8> {
    for edit in edits {
        let len = data.len();
        let at = |p: usize| if len == 0 { 0 } else { p % (len + 1) };
        match *edit {
            Edit::Set(p, b) if len > 0 => data[p % len] = b,
            Edit::Set(..) => {}
            Edit::Insert(p, b) => data.insert(at(p), b),
            Edit::Remove(p, n) => {
                let start = at(p).min(len);
                let end = start.saturating_add(n).min(len);
                data.drain(start..end);
            }
            Edit::Splice(p, w) => {
                if let Some(word) = dict.get(w % dict.len().max(1)) {
                    let p = at(p);
                    data.splice(p..p, word.iter().copied());
                }
            }
            Edit::Repeat(p, n, times) if len > 0 => {
                let start = p % len;
                let end = (start + 1 + n % 32).min(len);
                let piece = data[start..end].to_vec();
                for _ in 0..times % 200 {
                    data.splice(end..end, piece.iter().copied());
                }
            }
            Edit::Repeat(..) => {}
        }
    }
    data
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        2 => (any::<usize>(), 0..16usize).prop_map(|(p, n)| Edit::Remove(p, n)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(p, w)| Edit::Splice(p, w)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(p, n, t)| Edit::Repeat(p, n, t)),
    ]
}

/// Inputs for a target: mostly a seed with 0–8 edits, sometimes raw bytes.
pub(crate) fn inputs(
    seeds: &'static [&'static [u8]],
    dict: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (proptest::sample::select(seeds), proptest::collection::vec(edit(), 0..8))
            .prop_map(move |(seed, edits)| apply(seed.to_vec(), &edits, dict)),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// Runs `parse` on one input and fails the case if it took longer than
/// [`PER_INPUT`].
pub(crate) fn timed<T>(what: &str, parse: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let start = Instant::now();
    let out = parse();
    let took = start.elapsed();
    prop_assert!(
        took <= PER_INPUT,
        "{what} took {took:?} on one input (limit {PER_INPUT:?})"
    );
    Ok(out)
}

/// Fails the case if a message is empty or too long, or if it names a
/// serde_json position (`line L column C`) outside `input`
/// ([`crate::fuzz_entry::message_fault`]).
pub(crate) fn check_message(message: &str, input: &[u8]) -> Result<(), TestCaseError> {
    match crate::fuzz_entry::message_fault(message, input) {
        Some(fault) => Err(TestCaseError::fail(fault)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounds() {
        let dict: &[&[u8]] = &[b"xy"];
        let out = apply(
            b"abc".to_vec(),
            &[
                Edit::Set(7, b'z'),
                Edit::Insert(99, b'!'),
                Edit::Remove(1, 100),
                Edit::Splice(0, 5),
                Edit::Repeat(0, 0, 2),
            ],
            dict,
        );
        assert_eq!(out, b"xxxya".to_vec());
    }
}
