//! Hostile input, target `tls_hello`: the first bytes of a client of an
//! SNI-routed service or of a TLS-safe retry ([`scan`]). Holds, per input:
//! no panic, an answer within [`PER_INPUT`](crate::fuzz::PER_INPUT), and
//! the properties of `fuzz_entry::tls_hello` (a complete hello no longer
//! than the input or the cap and judged the same on its own bytes,
//! `Incomplete` only below the cap, a verdict that stands on every longer
//! input). Test-only (see `src/fuzz.rs`).

use proptest::prelude::*;

use super::scan;
use crate::fuzz::{config, inputs, timed};

static SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/tls_hello/openssl_sni.bin"),
    include_bytes!("../fuzz/corpus/tls_hello/openssl_no_sni.bin"),
    include_bytes!("../fuzz/corpus/tls_hello/openssl_tls12.bin"),
    include_bytes!("../fuzz/corpus/tls_hello/curl_sni.bin"),
];

static DICT: &[&[u8]] = &[
    b"\x16\x03\x01",
    b"\x16\x03\x03",
    b"\x14\x03\x03\x00\x01\x01",
    b"\x15\x03\x03\x00\x02\x02\x28",
    b"\x01\x00\x01\xfc",
    b"\x03\x03",
    b"\x00\x00",
    b"\x00\x00\x00\x0e\x00\x0c\x00\x00\x09",
    b"a.example",
    b"\x00\x2b\x00\x03\x02\x03\x04",
    b"\x40\x00",
    b"\xff\xff",
    b"\x00",
    b".",
    b"GET / HTTP/1.1\r\n",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn verdicts_are_bounded_and_stable(input in inputs(SEEDS, DICT)) {
        timed("tls_hello::scan", || scan(&input))?;
        // Its properties are asserts: a failing one fails the case.
        crate::fuzz_entry::tls_hello(&input);
    }
}

/// The seeds themselves: each is a whole hello.
#[test]
fn the_seeds_are_hellos() {
    for seed in SEEDS {
        assert!(matches!(scan(seed), super::Scan::Complete { .. }));
    }
}
