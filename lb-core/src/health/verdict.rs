//! What a health answer means, and why a probe failed. Pure (no I/O); called
//! by the prober on the control-plane thread.
//!
//! [`judge`] reads an HTTP answer to `GET /router/api/v1/system/health`: the
//! backend is healthy when the status is 200 and the body is one of
//!
//! - the router's JSON (`{"router": {"state": …}, "services": [{"service_id":
//!   …, "state": …}]}`, other fields ignored) with `router.state` and every
//!   `services[].state` equal to `HEALTHY` (or `DEGRADED` when
//!   `degraded = "healthy"`); a missing `services` list is fine;
//! - the plain text `OK` (trimmed, any case);
//! - empty.
//!
//! A body that starts with `{` but is not the router's JSON is unhealthy
//! ([`Reason::BadJson`], with the parser's message); any other text is
//! unhealthy ([`Reason::UnexpectedBody`]). States are compared exactly, as
//! the router writes them (upper case).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::config::DegradedIs;
use crate::excerpt::{self, json_error};

/// Bytes of an unexpected body kept for the log line.
const BODY_EXCERPT_CHARS: usize = 64;

/// Why a probe counts as failed. The `Display` form is one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The answer's status was not 200.
    Status(u16),
    /// `router.state` was not acceptable (the state as received).
    RouterState(String),
    /// One of `services[]` was not in an acceptable state.
    ServiceState { id: String, state: String },
    /// The body looked like JSON but was not the router's JSON.
    BadJson(String),
    /// The body was neither JSON, `OK`, nor empty: its first 64 characters.
    UnexpectedBody(String),
    /// The whole probe took longer than the check's timeout (kept here).
    Timeout(Duration),
    /// The backend refused the connection (nothing listening).
    Refused,
    /// Any other failure to connect to the backend.
    Connect(String),
    /// The TLS handshake failed (certificate, name, protocol), or the TLS
    /// settings of the check are unusable.
    Tls(String),
    /// The outbound proxy could not be reached or refused the tunnel.
    Proxy(String),
    /// The answer was not valid HTTP/1.1, or the connection broke mid-answer.
    Http(String),
    /// The body was longer than the check's `max_body` (kept here).
    BodyTooLarge(usize),
    /// A worker failed to connect to the backend (passive health).
    Passive(String),
    /// The probe could not be made for a shortage of this host (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM, no free local port): says nothing about
    /// the backend, whose state stays as it was.
    Local(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Status(code) => write!(f, "HTTP {code}"),
            Reason::RouterState(state) => write!(f, "router is {state}"),
            Reason::ServiceState { id, state } => write!(f, "service {id} is {state}"),
            Reason::BadJson(why) => write!(f, "health answer is not the router's JSON: {why}"),
            Reason::UnexpectedBody(start) => {
                write!(
                    f,
                    "unexpected body {start:?} (expected the router's JSON, OK or nothing)"
                )
            }
            Reason::Timeout(after) => write!(f, "timed out after {after:?}"),
            Reason::Refused => f.write_str("connection refused"),
            Reason::Connect(why) => write!(f, "cannot connect: {why}"),
            Reason::Tls(why) => write!(f, "TLS: {why}"),
            Reason::Proxy(why) => write!(f, "proxy: {why}"),
            Reason::Http(why) => write!(f, "bad HTTP answer: {why}"),
            Reason::BodyTooLarge(limit) => {
                write!(f, "health answer longer than max_body ({limit} bytes)")
            }
            Reason::Passive(why) => write!(f, "passive: {why}"),
            Reason::Local(why) => write!(f, "local shortage, not the backend's: {why}"),
        }
    }
}

impl std::error::Error for Reason {}

/// The part of the router's health JSON that decides health.
#[derive(Deserialize)]
struct RouterHealth {
    router: ComponentState,
    #[serde(default)]
    services: Vec<ServiceHealth>,
}

#[derive(Deserialize)]
struct ComponentState {
    state: String,
}

#[derive(Deserialize)]
struct ServiceHealth {
    /// Missing ids are tolerated; the log then says `?`.
    #[serde(default)]
    service_id: Option<String>,
    state: String,
}

/// Judges one HTTP answer (see the module doc).
pub(crate) fn judge(status: u16, body: &[u8], degraded: DegradedIs) -> Result<(), Reason> {
    if status != 200 {
        return Err(Reason::Status(status));
    }
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case(b"OK") {
        return Ok(());
    }
    if !trimmed.starts_with(b"{") {
        let excerpt = String::from_utf8_lossy(trimmed)
            .chars()
            .take(BODY_EXCERPT_CHARS)
            .collect();
        return Err(Reason::UnexpectedBody(excerpt));
    }
    let health: RouterHealth =
        serde_json::from_slice(trimmed).map_err(|e| Reason::BadJson(json_error(&e)))?;
    let acceptable = |state: &str| {
        state == "HEALTHY" || (degraded == DegradedIs::Healthy && state == "DEGRADED")
    };
    if !acceptable(&health.router.state) {
        return Err(Reason::RouterState(cut(&health.router.state)));
    }
    match health.services.into_iter().find(|s| !acceptable(&s.state)) {
        None => Ok(()),
        Some(s) => Err(Reason::ServiceState {
            id: s.service_id.as_deref().map_or_else(|| "?".to_owned(), cut),
            state: cut(&s.state),
        }),
    }
}

/// A string from the answer, cut to [`BODY_EXCERPT_CHARS`] characters: a
/// backend must not make the reasons about it, which are logged and kept,
/// as long as its answer.
fn cut(text: &str) -> String {
    excerpt::cut(text, BODY_EXCERPT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference document's healthy answer, made valid JSON, with the
    /// router's and the service's states as given.
    fn reference(router: &str, service: &str) -> String {
        format!(
            r#"{{
  "router": {{
    "node_id": "abcef-1324-wxyz",
    "state": "{router}",
    "message": "OK"
  }},
  "services": [
    {{
      "service_id": "jfsvc@123",
      "node_id": "hijkl-56789-mnopq",
      "state": "{service}",
      "message": "OK"
    }}
  ]
}}"#
        )
    }

    const STRICT: DegradedIs = DegradedIs::Unhealthy;

    #[test]
    fn reference_answer_is_healthy() {
        assert_eq!(
            judge(200, reference("HEALTHY", "HEALTHY").as_bytes(), STRICT),
            Ok(())
        );
    }

    #[test]
    fn status_other_than_200_is_unhealthy_whatever_the_body() {
        assert_eq!(
            judge(503, reference("HEALTHY", "HEALTHY").as_bytes(), STRICT),
            Err(Reason::Status(503))
        );
        assert_eq!(judge(204, b"", STRICT), Err(Reason::Status(204)));
        assert_eq!(judge(301, b"OK", STRICT), Err(Reason::Status(301)));
    }

    #[test]
    fn degraded_router_follows_the_setting() {
        let body = reference("DEGRADED", "HEALTHY");
        assert_eq!(
            judge(200, body.as_bytes(), STRICT),
            Err(Reason::RouterState("DEGRADED".into()))
        );
        assert_eq!(judge(200, body.as_bytes(), DegradedIs::Healthy), Ok(()));
    }

    #[test]
    fn unhealthy_router_is_unhealthy_even_when_degraded_counts_as_healthy() {
        let body = reference("UNHEALTHY", "HEALTHY");
        assert_eq!(
            judge(200, body.as_bytes(), DegradedIs::Healthy),
            Err(Reason::RouterState("UNHEALTHY".into()))
        );
    }

    #[test]
    fn one_bad_service_makes_the_backend_unhealthy() {
        let body = reference("HEALTHY", "UNHEALTHY");
        assert_eq!(
            judge(200, body.as_bytes(), DegradedIs::Healthy),
            Err(Reason::ServiceState {
                id: "jfsvc@123".into(),
                state: "UNHEALTHY".into()
            })
        );
        let body = reference("HEALTHY", "DEGRADED");
        assert_eq!(
            judge(200, body.as_bytes(), STRICT),
            Err(Reason::ServiceState {
                id: "jfsvc@123".into(),
                state: "DEGRADED".into()
            })
        );
        assert_eq!(judge(200, body.as_bytes(), DegradedIs::Healthy), Ok(()));
    }

    #[test]
    fn missing_services_is_fine_and_extra_fields_are_ignored() {
        let body = r#"{"router":{"state":"HEALTHY","extra":[1,2]},"version":"7.1"}"#;
        assert_eq!(judge(200, body.as_bytes(), STRICT), Ok(()));
        let body = r#"{"router":{"state":"HEALTHY"},"services":[]}"#;
        assert_eq!(judge(200, body.as_bytes(), STRICT), Ok(()));
    }

    #[test]
    fn service_without_id_is_named_with_a_question_mark() {
        let body = r#"{"router":{"state":"HEALTHY"},"services":[{"state":"DOWN"}]}"#;
        assert_eq!(
            judge(200, body.as_bytes(), STRICT),
            Err(Reason::ServiceState {
                id: "?".into(),
                state: "DOWN".into()
            })
        );
    }

    #[test]
    fn plain_ok_in_any_case_with_whitespace_is_healthy() {
        for body in ["OK", "ok", " Ok\r\n", "\n\tOK\n"] {
            assert_eq!(judge(200, body.as_bytes(), STRICT), Ok(()), "{body:?}");
        }
    }

    #[test]
    fn empty_body_is_healthy() {
        assert_eq!(judge(200, b"", STRICT), Ok(()));
        assert_eq!(judge(200, b" \r\n", STRICT), Ok(()));
    }

    #[test]
    fn broken_json_is_unhealthy_with_the_parse_error() {
        match judge(200, br#"{"router": {"state": "HEAL"#, STRICT) {
            Err(Reason::BadJson(why)) => assert!(why.contains("EOF"), "{why}"),
            other => panic!("expected BadJson, got {other:?}"),
        }
    }

    #[test]
    fn json_of_another_shape_is_bad_json() {
        match judge(200, br#"{"status": "UP"}"#, STRICT) {
            Err(Reason::BadJson(why)) => assert!(why.contains("router"), "{why}"),
            other => panic!("expected BadJson, got {other:?}"),
        }
    }

    #[test]
    fn other_text_is_an_unexpected_body_cut_to_64_chars() {
        assert_eq!(
            judge(200, b"  fine thanks ", STRICT),
            Err(Reason::UnexpectedBody("fine thanks".into()))
        );
        let long = "é".repeat(100);
        match judge(200, long.as_bytes(), STRICT) {
            Err(Reason::UnexpectedBody(start)) => assert_eq!(start.chars().count(), 64),
            other => panic!("expected UnexpectedBody, got {other:?}"),
        }
        assert!(matches!(
            judge(200, &[0xff, 0xfe, 0x00], STRICT),
            Err(Reason::UnexpectedBody(_))
        ));
    }

    #[test]
    fn display_is_one_readable_line() {
        assert_eq!(Reason::Status(503).to_string(), "HTTP 503");
        assert_eq!(
            Reason::ServiceState {
                id: "jfsvc@123".into(),
                state: "DEGRADED".into()
            }
            .to_string(),
            "service jfsvc@123 is DEGRADED"
        );
        assert_eq!(
            Reason::RouterState("DEGRADED".into()).to_string(),
            "router is DEGRADED"
        );
        assert_eq!(
            Reason::Timeout(Duration::from_secs(1)).to_string(),
            "timed out after 1s"
        );
        assert_eq!(
            Reason::Timeout(Duration::from_millis(500)).to_string(),
            "timed out after 500ms"
        );
        assert_eq!(Reason::Refused.to_string(), "connection refused");
        assert!(Reason::UnexpectedBody("a\nb".into())
            .to_string()
            .contains(r#""a\nb""#));
        assert_eq!(
            Reason::BodyTooLarge(65536).to_string(),
            "health answer longer than max_body (65536 bytes)"
        );
    }
}
