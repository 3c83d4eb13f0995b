//! Hostile input, target `health`: what a backend (or a proxy) answers a
//! probe. Three parsers: the verdict on a body ([`judge`]: text or the
//! router's JSON), the proxy's answer to CONNECT ([`connect_status`]), and
//! a whole HTTP answer (status line, headers, chunked or sized body) read
//! by `probe` from a real loopback server. Holds: no panic, an answer
//! within the probe's timeout, a [`Reason`] of bounded length, JSON error
//! positions inside the body. Test-only (see `src/fuzz.rs`).

use proptest::prelude::*;

use super::super::verdict::{judge, Reason};
use super::connect_status;
use crate::config::DegradedIs;
use crate::fuzz::{check_message, config, inputs, timed, MAX_MESSAGE};

static BODY_SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/health/router.json"),
    include_bytes!("../fuzz/corpus/health/ok.txt"),
    // What afl found (`afl-*`: the queue entries that added the most
    // coverage over the seeds; `scripts/fuzz.sh --afl health`).
    include_bytes!("../fuzz/corpus/health/afl-body-1.json"),
    include_bytes!("../fuzz/corpus/health/afl-body-2.json"),
];

static ANSWER_SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/health/answer_ok.http"),
    include_bytes!("../fuzz/corpus/health/answer_chunked.http"),
    include_bytes!("../fuzz/corpus/health/connect.http"),
    include_bytes!("../fuzz/corpus/health/afl-answer-1.http"),
    include_bytes!("../fuzz/corpus/health/afl-answer-2.http"),
    include_bytes!("../fuzz/corpus/health/afl-answer-3.http"),
    include_bytes!("../fuzz/corpus/health/afl-answer-4.http"),
];

static DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\\u0000",
    b"\\ud800",
    b"\"state\":",
    b"\"router\":",
    b"\"services\":",
    b"\"service_id\":",
    b"\"HEALTHY\"",
    b"\"DEGRADED\"",
    b"\"UNHEALTHY\"",
    b"null",
    b"1e999",
    b"-0.0",
    b"OK",
    b"\xff\xfe",
    b"\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 ",
    b"HTTP/1.0 200 ",
    b"HTTP/2 200",
    b"content-length: ",
    b"content-length: 99999999999999999999\r\n",
    b"content-length: -1\r\n",
    b"transfer-encoding: chunked\r\n",
    b"ffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"connection: keep-alive\r\n",
    b"x: \x01\r\n",
    b" ",
    b"000",
    b"999",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn health_bodies_are_judged_briefly(
        body in inputs(BODY_SEEDS, DICT),
        status in prop_oneof![4 => Just(200u16), 1 => any::<u16>()],
        degraded_healthy in any::<bool>(),
    ) {
        let degraded = if degraded_healthy { DegradedIs::Healthy } else { DegradedIs::Unhealthy };
        let verdict = timed("judge", || judge(status, &body, degraded))?;
        if let Err(reason) = verdict {
            let shown = reason.to_string();
            prop_assert!(shown.len() <= MAX_MESSAGE, "a reason of {} bytes", shown.len());
            if let Reason::BadJson(why) = &reason {
                check_message(why, body.trim_ascii())?;
            }
        }
    }

    #[test]
    fn connect_answers_give_a_three_digit_status_or_none(answer in inputs(ANSWER_SEEDS, DICT)) {
        if let Some(code) = timed("connect_status", || connect_status(&answer))? {
            prop_assert!(code <= 999, "status {code} from {answer:?}");
        }
    }
}

proptest! {
    #![proptest_config({
        // A socket round trip per case: a quarter of the cases.
        let mut c = config();
        c.cases = (c.cases / 4).max(1);
        c
    })]

    #[test]
    fn whole_http_answers_end_in_a_verdict_within_the_timeout(answer in inputs(ANSWER_SEEDS, DICT)) {
        // The afl target's check (a loopback server per thread, a verdict
        // with a bounded reason), timed; a violation panics, which fails
        // the case like a prop_assert.
        timed("probe", || crate::fuzz_entry::health_answer(&answer))?;
    }
}

/// The router's JSON names states and services with strings of any
/// length; the reason (logged, shown on the status page, kept per
/// backend) quoted them whole: a backend could make every log line about
/// it up to `max_body` long. They are cut like an unexpected body.
#[test]
fn long_states_and_service_ids_are_cut_in_the_reason() {
    let long = "x".repeat(10_000);
    let bodies = [
        format!(r#"{{"router":{{"state":"{long}"}}}}"#),
        format!(
            r#"{{"router":{{"state":"HEALTHY"}},"services":[{{"service_id":"{long}","state":"DOWN"}}]}}"#
        ),
        format!(
            r#"{{"router":{{"state":"HEALTHY"}},"services":[{{"service_id":"a","state":"{long}"}}]}}"#
        ),
    ];
    for body in bodies {
        let reason = judge(200, body.as_bytes(), DegradedIs::Unhealthy)
            .expect_err("a bad state is unhealthy");
        let shown = reason.to_string();
        assert!(
            shown.len() <= 200,
            "a reason of {} bytes: {shown:.120}…",
            shown.len()
        );
    }
}

/// A JSON error quoted the answer too (`invalid type: string "…"`).
#[test]
fn json_errors_in_health_answers_are_short() {
    let body = format!(r#"{{"router":"{}"}}"#, "y".repeat(10_000));
    let reason = judge(200, body.as_bytes(), DegradedIs::Unhealthy).expect_err("bad JSON");
    let shown = reason.to_string();
    assert!(shown.len() <= 300, "a reason of {} bytes", shown.len());
}
