//! Hostile input, target `proxy_header`: the first bytes of a connection
//! from a trusted balancer ([`parse`]). Holds, per input: no panic, an
//! answer within [`PER_INPUT`](crate::fuzz::PER_INPUT), a complete header
//! no longer than the input and judged the same on its own bytes,
//! `Incomplete` only for an input shorter than the longest header, and a
//! verdict that never goes back to `Incomplete` on a longer input (what a
//! worker re-peeking a growing buffer relies on). Test-only (see
//! `src/fuzz.rs`).

use proptest::prelude::*;

use super::{parse, Parsed, MAX_HEADER};
use crate::fuzz::{config, inputs, timed};

static SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/proxy_header/v1_tcp4.txt"),
    include_bytes!("../fuzz/corpus/proxy_header/v1_tcp6.txt"),
    include_bytes!("../fuzz/corpus/proxy_header/v1_unknown.txt"),
    include_bytes!("../fuzz/corpus/proxy_header/v2_tcp4.bin"),
    include_bytes!("../fuzz/corpus/proxy_header/v2_tcp6.bin"),
    include_bytes!("../fuzz/corpus/proxy_header/v2_local.bin"),
    include_bytes!("../fuzz/corpus/proxy_header/v2_tlvs.bin"),
    include_bytes!("../fuzz/corpus/proxy_header/v2_unix.bin"),
];

static DICT: &[&[u8]] = &[
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"255.255.255.255",
    b"0.0.0.0",
    b"01.2.3.4",
    b"::ffff:",
    b"::",
    b"ffff:",
    b"65535",
    b"65536",
    b"00",
    b"\r\n\r\n\x00\r\nQUIT\n",
    b"\x20",
    b"\x21",
    b"\x11",
    b"\x12",
    b"\x21\x11\x00\x0c",
    b"\x21\x21\x00\x24",
    b"\x20\x00\x00\x00",
    b"\x08\x00",
    b"\xff\xff",
    b"\x01\x00\x02h2",
    b"\x04\x00\x00",
    b"\x00",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn verdicts_are_bounded_and_stable(input in inputs(SEEDS, DICT)) {
        let verdict = timed("proxy_header::parse", || parse(&input))?;
        match verdict {
            Parsed::Complete { len, .. } => {
                prop_assert!(len <= input.len(), "a {len}-byte header in {} bytes", input.len());
                prop_assert!(len <= MAX_HEADER, "a {len}-byte header over the cap");
                prop_assert_eq!(parse(&input[..len]), verdict, "judged otherwise on its own bytes");
            }
            Parsed::Incomplete => {
                prop_assert!(input.len() < MAX_HEADER, "incomplete at {} bytes", input.len());
            }
            Parsed::Refused(_) => {}
        }
        // A verdict once given stands as bytes are added: every prefix of
        // an input is Incomplete up to some length, then decided as the
        // whole is (a header's own bytes decide it).
        let mut decided = None;
        for n in 0..=input.len().min(MAX_HEADER) {
            let v = parse(&input[..n]);
            match (decided, v) {
                (None, Parsed::Incomplete) => {}
                (None, v) => decided = Some(v),
                (Some(d), v) => prop_assert_eq!(d, v, "at {} bytes", n),
            }
        }
    }
}

/// The seeds themselves: each is a complete header.
#[test]
fn the_seeds_are_headers() {
    for seed in SEEDS {
        assert!(
            matches!(parse(seed), Parsed::Complete { .. }),
            "{:?}",
            String::from_utf8_lossy(seed)
        );
    }
}
