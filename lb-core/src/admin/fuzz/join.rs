//! Hostile input, target `join`: the bodies of `POST …/join` and
//! `…/leave` ([`parse_join`], [`parse_leave`]), sent by any peer that holds
//! the join key. Holds: no panic, bounded time, a backend that the config
//! file would accept too (name and address parse again, weight in range),
//! short errors whose JSON positions point inside the body. Test-only (see
//! `src/fuzz.rs`).

use proptest::prelude::*;

use super::super::join::{parse_join, parse_leave};
use crate::config::{BackendAddr, BackendName, MAX_WEIGHT};
use crate::fuzz::{check_message, config, inputs, timed};

static SEEDS: &[&[u8]] = &[
    include_bytes!("../../fuzz/corpus/join/join.json"),
    include_bytes!("../../fuzz/corpus/join/leave.json"),
    // What afl found (`afl-*`: the queue entries that added the most
    // coverage over the seeds; `scripts/fuzz.sh --afl join`).
    include_bytes!("../../fuzz/corpus/join/afl-1.json"),
    include_bytes!("../../fuzz/corpus/join/afl-2.json"),
    include_bytes!("../../fuzz/corpus/join/afl-3.json"),
    include_bytes!("../../fuzz/corpus/join/afl-4.json"),
    include_bytes!("../../fuzz/corpus/join/afl-5.json"),
];

static DICT: &[&[u8]] = &[
    b"\"name\": ",
    b"\"address\": ",
    b"\"weight\": ",
    b"\"extra\": 1, ",
    b"\"",
    b",",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"\\n",
    b"\xc3\xa9",
    b"\xff",
    b"0.0.0.0:1",
    b"255.255.255.255:80",
    b"224.0.0.1:80",
    b"[::]:80",
    b"[::ffff:127.0.0.1]:80",
    b"[fe80::1%eth0]:80",
    b":0",
    b":65536",
    b"localhost:80",
    b"0",
    b"-1",
    b"1e2",
    b"100000000000000000000",
    b"null",
    b"true",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn join_bodies_give_a_valid_backend_or_a_short_error(body in inputs(SEEDS, DICT)) {
        match timed("parse_join", || parse_join(&body))? {
            Ok(backend) => {
                prop_assert!(BackendName::parse(&backend.name).is_ok(), "{:?}", backend.name);
                let again = BackendAddr::parse(&backend.address.to_string());
                prop_assert!(again.is_ok(), "{} does not parse again", backend.address);
                prop_assert!(backend.weight.get() <= MAX_WEIGHT);
            }
            Err(message) => check_message(&message, &body)?,
        }
    }

    #[test]
    fn leave_bodies_give_a_valid_name_or_a_short_error(body in inputs(SEEDS, DICT)) {
        match timed("parse_leave", || parse_leave(&body))? {
            Ok(name) => prop_assert!(BackendName::parse(&name).is_ok(), "{name:?}"),
            Err(message) => check_message(&message, &body)?,
        }
    }
}

/// Found by the `join` target (`{",255.255,2…`, `{"name": ",0…`): the
/// "unknown field" error quoted the whole field name back.
#[test]
fn long_unknown_fields_are_cut_in_join_and_leave_errors() {
    let body = format!("{{\"{}\": 1}}", "x".repeat(60_000));
    let join = parse_join(body.as_bytes()).expect_err("not a join body");
    let leave = parse_leave(body.as_bytes()).expect_err("not a leave body");
    for message in [join, leave] {
        assert!(message.len() <= 400, "an error of {} bytes", message.len());
        assert!(message.contains("at line 1 column"), "{message:.300}");
    }
}
