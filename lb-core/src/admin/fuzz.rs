//! Hostile input, target `admin`: the admin server's own parsers of a
//! request, after hyper has read it: the route ([`Route::parse`]), the
//! `Authorization` header ([`Credentials`]), the `Origin`/`Host` check,
//! the token comparison and the `PUT …/weight` body. The request line and
//! headers themselves are hyper's: `tests/it/hostile.rs` sends mutated raw
//! requests to a real admin listener. Holds: no panic, bounded time,
//! short errors whose JSON positions point inside the body. Test-only (see
//! `src/fuzz.rs`); the join bodies are the `join` target (`fuzz/join.rs`).

mod join;

use http::Method;
use proptest::prelude::*;

use super::auth::{constant_time_eq, cross_origin, Credentials};
use super::{parse_weight, Route};
use crate::config::MAX_WEIGHT;
use crate::fuzz::{check_message, config, inputs, timed};

static SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/admin/route.txt"),
    include_bytes!("../fuzz/corpus/admin/authorization.txt"),
    include_bytes!("../fuzz/corpus/admin/weight.json"),
    // What afl found (`afl-*`: the queue entries that added the most
    // coverage over the seeds; `scripts/fuzz.sh --afl admin`).
    include_bytes!("../fuzz/corpus/admin/afl-1.txt"),
    include_bytes!("../fuzz/corpus/admin/afl-2.txt"),
    include_bytes!("../fuzz/corpus/admin/afl-3.txt"),
    include_bytes!("../fuzz/corpus/admin/afl-4.txt"),
    include_bytes!("../fuzz/corpus/admin/afl-5.txt"),
];

static DICT: &[&[u8]] = &[
    b"/",
    b"//",
    b"/../",
    b"%2f",
    b"%00",
    b"?",
    b"#",
    b"api/v1/services/",
    b"/backends/",
    b"/drain",
    b"/weight",
    b"/join",
    b"/leave",
    b"router/api/v1/system/health",
    b"metrics",
    b"Bearer ",
    b"bearer  ",
    b"Basic ",
    b"\t",
    b" ",
    b"\xc3\xa9",
    b"\xff",
    b"\"weight\"",
    b":",
    b"{",
    b"}",
    b"0",
    b"-1",
    b"4294967296",
    b"9223372036854775808",
    b"1e3",
    b"1.5",
    b"null",
    b"http://",
    b"https://",
    b"null",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn routes_parse_to_their_own_segments(input in inputs(SEEDS, DICT)) {
        let path = String::from_utf8_lossy(&input);
        let route = timed("Route::parse", || Route::parse(&path))?;
        if let Some(route) = route {
            // A route answers one method (and HEAD for GET), never others.
            prop_assert!(route.accepts(&route.method()));
            prop_assert!(!route.accepts(&Method::DELETE));
            match route {
                Route::Backend { service, backend, .. } => {
                    prop_assert!(!service.is_empty() && !service.contains('/'));
                    prop_assert!(!backend.is_empty() && !backend.contains('/'));
                }
                Route::Membership { service, .. } => {
                    prop_assert!(!service.is_empty() && !service.contains('/'));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn authorization_headers_and_tokens(
        header in inputs(SEEDS, DICT),
        expected in "[!-~]{1,40}",
        absent in any::<bool>(),
    ) {
        let value = (!absent).then_some(header.as_slice());
        let credentials = timed("Credentials::from_header", || Credentials::from_header(value))?;
        if let Credentials::Bearer(token) = credentials {
            prop_assert_eq!(token.trim(), token, "a bearer token with spaces around it");
        }
        prop_assert_eq!(
            credentials.match_token(&expected),
            credentials == Credentials::Bearer(&expected)
        );
        // The comparison is exact, whatever the lengths.
        prop_assert_eq!(constant_time_eq(&header, expected.as_bytes()), header == expected.as_bytes());
    }

    #[test]
    fn origin_checks(origin in inputs(SEEDS, DICT), host in inputs(SEEDS, DICT), with_origin in any::<bool>()) {
        let origin = with_origin.then_some(origin.as_slice());
        let refused = timed("cross_origin", || cross_origin(origin, Some(&host)))?;
        if origin.is_none() {
            prop_assert!(!refused, "no Origin header is a script, and passes");
        }
        let same: Vec<u8> = [b"http://".as_slice(), &host].concat();
        prop_assert!(!cross_origin(Some(&same), Some(&host)), "the same origin is refused");
    }

    #[test]
    fn weight_bodies(body in inputs(SEEDS, DICT)) {
        match timed("parse_weight", || parse_weight(&body))? {
            Ok(weight) => prop_assert!(weight.get() <= MAX_WEIGHT),
            Err(message) => check_message(&message, &body)?,
        }
    }
}

/// Found by the `admin` target (`{"wwww…": 1}`): serde's "unknown field"
/// quoted the whole field name, so a 64 KiB body drew a 64 KiB error.
#[test]
fn a_long_unknown_field_is_cut_in_the_weight_error() {
    let body = format!("{{\"{}\": 1}}", "w".repeat(60_000));
    let message = parse_weight(body.as_bytes()).expect_err("not a weight body");
    assert!(message.len() <= 300, "an error of {} bytes", message.len());
    assert!(
        message.ends_with("at line 1 column 60003"),
        "{message:.300}"
    );
}
