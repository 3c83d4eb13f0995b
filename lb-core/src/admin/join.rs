//! The join endpoints: `POST /api/v1/services/{service}/join` and
//! `…/leave`, by which a node adds itself to a service (or takes itself
//! out) with the shared join key. Part of the admin server, on the
//! control-plane thread.
//!
//! Checked in this order, and nothing changes unless all pass: the peer is
//! in `admin_allow` (at accept, as for every admin request); the request is
//! not cross-origin; joining is on (a `join_key` is configured, else 403);
//! the peer has failures left ([`FailureLimiter`](super::limit::FailureLimiter), else 429 with
//! `Retry-After`); the key, from `X-Join-Key` or `Authorization: Bearer`,
//! equals the join key (constant-time, else 401 and one failure counted);
//! the body parses ([`parse_join`], else 400). The admin token is not asked
//! for: nodes hold the join key, not the operator's token. The registry's
//! own refusals (unknown service, name or address taken) come back from
//! the control plane as [`JoinError`]s.
//!
//! The key in force is asked from the control plane on each request, so a
//! reload that changes or removes it applies to the next request.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};

use super::auth::{constant_time_eq, Credentials};
use super::limit::{Budget, Refusal};
use super::view::BackendDoc;
use super::{error, json, read_body, unavailable, AdminContext, Unavailable};
use crate::config::{Backend, BackendAddr, BackendName, Weight, MAX_WEIGHT};
use crate::control::command::Command;
use crate::control::{JoinError, JoinOutcome};

/// Failed key attempts a peer may make: 5 at once, then one per 10 s.
pub(crate) const PEER_FAILURES: Budget = Budget {
    burst: match NonZeroU32::new(5) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    },
    refill: Duration::from_secs(10),
};
/// Failed key attempts all peers together may make: 30 at once, then one
/// per 2 s; so at most 60 in any minute, however many addresses guess.
pub(crate) const GLOBAL_FAILURES: Budget = Budget {
    burst: match NonZeroU32::new(30) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    },
    refill: Duration::from_secs(2),
};
/// Peers whose failures are remembered at once (an entry is a few dozen
/// bytes: the table stays under a megabyte).
pub(crate) const FAILURE_PEERS: usize = 4096;
/// The header a node sends its key in (`Authorization: Bearer` works too).
const JOIN_KEY_HEADER: &str = "x-join-key";

/// Which of the two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    Join,
    Leave,
}

/// The body of `POST …/join`, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    name: String,
    address: String,
    /// Default 100, as in the config file.
    weight: Option<i64>,
}

/// The body of `POST …/leave`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaveBody {
    name: String,
}

/// The answer to a leave.
#[derive(Debug, Serialize)]
struct LeftDoc<'a> {
    service: &'a str,
    name: &'a str,
    address: SocketAddr,
    left: bool,
}

/// The key a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PresentedKey<'a> {
    Missing,
    /// From `X-Join-Key` (preferred) or `Authorization: Bearer`.
    Given(&'a [u8]),
    /// An `Authorization` header of another scheme.
    Malformed,
}

impl<'a> PresentedKey<'a> {
    fn from_headers(headers: &'a HeaderMap) -> PresentedKey<'a> {
        if let Some(value) = headers.get(JOIN_KEY_HEADER) {
            return PresentedKey::Given(value.as_bytes());
        }
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match Credentials::from_header(auth) {
            Credentials::Missing => PresentedKey::Missing,
            Credentials::Bearer(key) => PresentedKey::Given(key.as_bytes()),
            Credentials::Malformed => PresentedKey::Malformed,
        }
    }
}

impl AdminContext {
    /// Answers `POST /api/v1/services/{service}/join` or `…/leave`.
    pub(super) async fn membership(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        service: &str,
        op: Membership,
    ) -> Response<Full<Bytes>> {
        if let Some(refusal) = super::check_origin(&req) {
            return refusal;
        }
        let key =
            match self.ask(|reply| Command::JoinKey { reply }).await {
                Ok(Some(key)) => key,
                Ok(None) => return error(
                    StatusCode::FORBIDDEN,
                    "joining is off: this ringlb has no join key (set join_key or join_key_file \
                     in [global] and reload)",
                ),
                Err(Unavailable) => return unavailable(),
            };
        if let Some(refusal) = self.check_join_key(req.headers(), peer.ip(), &key) {
            return refusal;
        }
        let body = match read_body(req.into_body()).await {
            Ok(body) => body,
            Err(refusal) => return refusal,
        };
        match op {
            Membership::Join => self.join(peer, service, &body).await,
            Membership::Leave => self.leave(peer, service, &body).await,
        }
    }

    /// Refuses a peer out of failures (429) or a wrong key (401, counted);
    /// None lets the request through. The limiter is checked and charged
    /// with no await in between, so concurrent attempts of one peer cannot
    /// overdraw it.
    fn check_join_key(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        key: &str,
    ) -> Option<Response<Full<Bytes>>> {
        let now = Instant::now();
        // A poisoned lock only means a panic elsewhere mid-update; the
        // table is still a valid map.
        let mut failures = self
            .join_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(refusal) = failures.check(peer, now) {
            drop(failures);
            let (Refusal::Peer(wait) | Refusal::Everyone(wait)) = refusal;
            let secs = wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0))
                .max(1);
            let whose = match refusal {
                Refusal::Peer(_) => "from your address",
                Refusal::Everyone(_) => "from all addresses together (a guessing attack?)",
            };
            tracing::debug!(peer = %peer, retry_after = secs, whose, "join refused: too many failed attempts");
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed join-key attempts {whose}; retry in {secs} s"),
            );
            if let Ok(value) = HeaderValue::try_from(secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Some(resp);
        }
        let presented = PresentedKey::from_headers(headers);
        if let PresentedKey::Given(given) = presented {
            if constant_time_eq(given, key.as_bytes()) {
                return None;
            }
        }
        failures.fail(peer, now);
        drop(failures);
        let message = match presented {
            PresentedKey::Missing => {
                "this endpoint needs the join key: send X-Join-Key: <join_key> \
                 (or Authorization: Bearer <join_key>)"
            }
            PresentedKey::Malformed => "the Authorization header must be: Bearer <join_key>",
            PresentedKey::Given(_) => "wrong join key",
        };
        tracing::warn!(peer = %peer, reason = message, "join request refused");
        let mut resp = error(StatusCode::UNAUTHORIZED, message);
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ringlb join\""),
        );
        Some(resp)
    }

    /// Adds the node; 201 with the new backend, 200 if it had joined
    /// already.
    async fn join(&self, peer: SocketAddr, service: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let backend = match parse_join(body) {
            Ok(backend) => backend,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let (name, address) = (backend.name.clone(), backend.address);
        let outcome = self
            .ask(|reply| Command::Join {
                service: service.into(),
                backend,
                reply,
            })
            .await;
        let status = match outcome {
            Err(Unavailable) => return unavailable(),
            Ok(Err(e)) => return refused(e),
            Ok(Ok(JoinOutcome::Added)) => StatusCode::CREATED,
            Ok(Ok(JoinOutcome::AlreadyJoined)) => StatusCode::OK,
        };
        tracing::info!(peer = %peer, service = %service, backend = %name, address = %address, status = status.as_u16(), "join request accepted");
        let Ok(view) = self.status(true).await else {
            return unavailable();
        };
        match view.backend(service, &name) {
            Some((s, b)) => json(status, &BackendDoc::new(s, b)),
            // Taken out by a leave or reload in between.
            None => error(
                StatusCode::NOT_FOUND,
                format!("service {service:?} has no backend named {name:?}"),
            ),
        }
    }

    /// Removes the joined node; 200 with what it was.
    async fn leave(&self, peer: SocketAddr, service: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let name = match parse_leave(body) {
            Ok(name) => name,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let outcome = self
            .ask(|reply| Command::Leave {
                service: service.into(),
                backend: name.clone(),
                reply,
            })
            .await;
        match outcome {
            Err(Unavailable) => unavailable(),
            Ok(Err(e)) => refused(e),
            Ok(Ok(left)) => {
                tracing::info!(peer = %peer, service = %service, backend = %name, address = %left.address, "leave request accepted");
                json(
                    StatusCode::OK,
                    &LeftDoc {
                        service,
                        name: &name,
                        address: left.address,
                        left: true,
                    },
                )
            }
        }
    }
}

/// The answer to a registry refusal.
fn refused(e: JoinError) -> Response<Full<Bytes>> {
    let status = match &e {
        JoinError::NoService(_) | JoinError::NoBackend { .. } => StatusCode::NOT_FOUND,
        JoinError::Configured { .. }
        | JoinError::OtherAddress { .. }
        | JoinError::AddressTaken { .. }
        | JoinError::Full { .. }
        | JoinError::NotJoined { .. }
        | JoinError::NoProxyVersion { .. } => StatusCode::CONFLICT,
        JoinError::Family { .. } => StatusCode::BAD_REQUEST,
        JoinError::Registry(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Parses a join body into the backend to add (enabled; weight 100 unless
/// given), through the same types as the config file's backends. The error
/// says what was wrong.
pub(crate) fn parse_join(body: &[u8]) -> Result<Backend, String> {
    let body: JoinBody = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body must be JSON {{\"name\": \"…\", \"address\": \"IP:port\", \"weight\": N}} \
             (weight optional, 1 to {MAX_WEIGHT}): {}",
            crate::excerpt::json_error(&e)
        )
    })?;
    let name = BackendName::parse(&body.name).map_err(|e| e.to_string())?;
    let address = BackendAddr::parse(&body.address).map_err(|e| e.to_string())?;
    let mut backend = Backend::new(name.into_string(), address.get());
    if let Some(weight) = body.weight {
        backend.weight = Weight::try_from(weight).map_err(|e| e.to_string())?.get();
    }
    Ok(backend)
}

/// Parses a leave body into the backend's name.
pub(crate) fn parse_leave(body: &[u8]) -> Result<String, String> {
    let body: LeaveBody = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body must be JSON {{\"name\": \"…\"}}: {}",
            crate::excerpt::json_error(&e)
        )
    })?;
    let name = BackendName::parse(&body.name).map_err(|e| e.to_string())?;
    Ok(name.into_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_join_body_becomes_an_enabled_backend() {
        let b =
            parse_join(br#"{"name": "art3", "address": "10.0.0.13:8081", "weight": 250}"#).unwrap();
        assert_eq!(b.name, "art3");
        assert_eq!(b.address, "10.0.0.13:8081".parse().unwrap());
        assert_eq!(b.weight.get(), 250);
        assert_eq!(b.state, crate::config::AdminState::Enabled);
        let b = parse_join(br#"{"name": "a_b.c-9", "address": "[fd00::13]:8081"}"#).unwrap();
        assert_eq!(b.weight.get(), 100);
        let longest = format!(
            r#"{{"name": "{}", "address": "10.0.0.1:1"}}"#,
            "n".repeat(64)
        );
        assert!(parse_join(longest.as_bytes()).is_ok());
    }

    #[test]
    fn bad_join_bodies_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "the body must be JSON"),
            (b"not json", "the body must be JSON"),
            (b"[]", "the body must be JSON"),
            (br#"{"address": "10.0.0.1:1"}"#, "missing field `name`"),
            (br#"{"name": "a"}"#, "missing field `address`"),
            (
                br#"{"name": "a", "address": "10.0.0.1:1", "x": 1}"#,
                "unknown field `x`",
            ),
            (
                br#"{"name": "", "address": "10.0.0.1:1"}"#,
                "not a valid name",
            ),
            (
                br#"{"name": "a b", "address": "10.0.0.1:1"}"#,
                "not a valid name",
            ),
            (
                br#"{"name": "a/b", "address": "10.0.0.1:1"}"#,
                "not a valid name",
            ),
            (
                br#"{"name": "\u00e9", "address": "10.0.0.1:1"}"#,
                "not a valid name",
            ),
            (br#"{"name": 7, "address": "10.0.0.1:1"}"#, "invalid type"),
            (
                br#"{"name": "a", "address": "art.example.com:80"}"#,
                "host names are not accepted",
            ),
            (
                br#"{"name": "a", "address": "10.0.0.1"}"#,
                "the port is missing",
            ),
            (br#"{"name": "a", "address": "10.0.0.1:0"}"#, "port 0"),
            (
                br#"{"name": "a", "address": "10.0.0.1:70000"}"#,
                "not a socket address",
            ),
            (br#"{"name": "a", "address": "0.0.0.0:80"}"#, "unspecified"),
            (br#"{"name": "a", "address": "[::]:80"}"#, "unspecified"),
            (
                br#"{"name": "a", "address": "[::ffff:0.0.0.0]:80"}"#,
                "unspecified",
            ),
            (br#"{"name": "a", "address": "224.0.0.1:80"}"#, "multicast"),
            (br#"{"name": "a", "address": "[ff02::1]:80"}"#, "multicast"),
            (
                br#"{"name": "a", "address": "255.255.255.255:80"}"#,
                "broadcast",
            ),
            (
                br#"{"name": "a", "address": "10.0.0.1:1", "weight": 0}"#,
                "0 is not a valid weight (expected an integer from 1 to 10000)",
            ),
            (
                br#"{"name": "a", "address": "10.0.0.1:1", "weight": 10001}"#,
                "10001 is not a valid weight",
            ),
            (
                br#"{"name": "a", "address": "10.0.0.1:1", "weight": -1}"#,
                "-1 is not a valid weight",
            ),
            (
                br#"{"name": "a", "address": "10.0.0.1:1", "weight": 1.5}"#,
                "invalid type",
            ),
            (
                br#"{"name": "a", "address": "10.0.0.1:1", "weight": "5"}"#,
                "invalid type",
            ),
        ];
        for (body, want) in cases {
            let err = parse_join(body).unwrap_err();
            assert!(
                err.contains(want),
                "{:?}: {err:?} lacks {want:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(
            r#"{{"name": "{}", "address": "10.0.0.1:1"}}"#,
            "n".repeat(65)
        );
        let err = parse_join(long.as_bytes()).unwrap_err();
        assert!(err.contains("1 to 64") && err.len() < 200, "{err}");
    }

    /// The config file and the join API take a backend's name, address and
    /// weight through the same types: what one refuses the other refuses,
    /// with the same words, and what both accept they store alike.
    #[test]
    fn the_config_and_the_join_api_agree_on_backends() {
        let config = |name: &str, address: &str, weight: &str| {
            let text = format!(
                "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\n\
                 [[service.backend]]\nname = \"{name}\"\naddress = \"{address}\"\nweight = {weight}\n"
            );
            crate::config::Config::parse(&text, None).map(|c| {
                let b = &c.services[0].backends[0];
                (b.name.clone(), b.address, b.weight)
            })
        };
        let join = |name: &str, address: &str, weight: &str| {
            let body =
                format!(r#"{{"name": "{name}", "address": "{address}", "weight": {weight}}}"#);
            parse_join(body.as_bytes()).map(|b| (b.name, b.address, b.weight))
        };
        let long_name = "n".repeat(65);
        let refused: &[(&str, &str, &str, &str)] = &[
            ("a", "255.255.255.255:80", "100", "address"),
            ("a", "[::ffff:255.255.255.255]:80", "100", "address"),
            ("a", "0.0.0.0:80", "100", "address"),
            ("a", "[::]:80", "100", "address"),
            ("a", "[::ffff:0.0.0.0]:80", "100", "address"),
            ("a", "224.0.0.1:80", "100", "address"),
            ("a", "[::ffff:224.0.0.1]:80", "100", "address"),
            ("a", "[ff02::1]:80", "100", "address"),
            ("a", "10.0.0.1:0", "100", "address"),
            ("a", "10.0.0.1", "100", "address"),
            // Not "art.example.com:80": the file takes a host name
            // (resolved on the control plane), the join API keeps to IPs
            // ("host names are not accepted", checked above).
            ("a", "[::1:80", "100", "address"),
            ("a b", "10.0.0.1:80", "100", "name"),
            ("", "10.0.0.1:80", "100", "name"),
            (&long_name, "10.0.0.1:80", "100", "name"),
            ("a", "10.0.0.1:80", "0", "weight"),
            ("a", "10.0.0.1:80", "10001", "weight"),
            ("a", "10.0.0.1:80", "-1", "weight"),
        ];
        for (name, address, weight, key) in refused {
            let Err(from_config) = config(name, address, weight) else {
                panic!("the config accepted {name:?} {address:?} {weight}")
            };
            let Err(from_join) = join(name, address, weight) else {
                panic!("the join API accepted {name:?} {address:?} {weight}")
            };
            let from_config = from_config.message;
            assert_eq!(
                from_config,
                format!("services[0].backend[0].{key}: {from_join}"),
                "the config and the join API word it differently"
            );
        }
        let v4 = "10.0.0.1:80".parse::<SocketAddr>().unwrap();
        for (written, stored) in [("[::ffff:10.0.0.1]:80", v4), ("10.0.0.1:80", v4)] {
            let from_config = config("a", written, "7").unwrap();
            let from_join = join("a", written, "7").unwrap();
            assert_eq!(from_config, from_join, "{written}");
            assert_eq!(
                from_config.1, stored,
                "{written} is stored as {}",
                from_config.1
            );
        }
    }

    #[test]
    fn leave_bodies_name_a_backend() {
        assert_eq!(parse_leave(br#"{"name": "art3"}"#).unwrap(), "art3");
        assert!(parse_leave(br#"{"name": "art3", "address": "10.0.0.1:1"}"#).is_err());
        assert!(parse_leave(br#"{"name": "../x"}"#).is_err());
        assert!(parse_leave(b"{}").is_err());
    }

    #[test]
    fn the_key_comes_from_x_join_key_or_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(PresentedKey::from_headers(&h), PresentedKey::Missing);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        assert_eq!(PresentedKey::from_headers(&h), PresentedKey::Malformed);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(PresentedKey::from_headers(&h), PresentedKey::Given(b"k1"));
        h.insert(JOIN_KEY_HEADER, HeaderValue::from_static("k2"));
        assert_eq!(PresentedKey::from_headers(&h), PresentedKey::Given(b"k2"));
    }
}
