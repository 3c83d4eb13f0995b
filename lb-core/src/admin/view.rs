//! What the admin API shows: the JSON documents made from a [`StatusView`]
//! of the registry (built by the control plane on request, see
//! `control/status.rs`, so no admin handler ever holds the registry).
//! Counters are not copied: the view holds the same `Arc`s the workers
//! count into, read when a document is rendered. Pure apart from those
//! relaxed loads. Runs in the admin server, on the control-plane thread.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{AdminState, Balance};
use crate::control::history::SAMPLE_EVERY;
pub(crate) use crate::control::status::{BackendView, ServiceView, StatusView};

/// The config file's word for an admin state.
pub(crate) fn admin_str(state: AdminState) -> &'static str {
    match state {
        AdminState::Enabled => "enabled",
        AdminState::Drain => "drain",
        AdminState::Disabled => "disabled",
    }
}

/// The config file's word for a balance policy.
pub(crate) fn balance_str(balance: Balance) -> &'static str {
    match balance {
        Balance::Maglev => "maglev",
        Balance::RoundRobin => "round-robin",
        Balance::LeastConn => "least-conn",
        Balance::P2c => "p2c",
    }
}

/// `GET /router/api/v1/system/health`: ringlb's own health in the cluster
/// router's shape. `serving` is false while ringlb shuts down.
#[derive(Debug, Serialize)]
pub(crate) struct HealthDoc<'a> {
    pub router: RouterDoc<'a>,
    pub services: Vec<HealthServiceDoc<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RouterDoc<'a> {
    pub node_id: &'a str,
    pub state: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct HealthServiceDoc<'a> {
    /// `service/backend`.
    pub service_id: String,
    pub node_id: &'a str,
    pub state: &'static str,
    pub message: &'a str,
}

impl<'a> HealthDoc<'a> {
    /// Healthy when serving and every service has a usable backend.
    pub(crate) fn new(
        view: Option<&'a StatusView>,
        node_id: &'a str,
        stopping: Option<&str>,
    ) -> HealthDoc<'a> {
        let mut services = Vec::new();
        let mut empty = Vec::new();
        for svc in view.map(|v| v.services.as_slice()).unwrap_or_default() {
            if svc.usable_count() == 0 {
                empty.push(svc.name.as_str());
            }
            for b in &svc.backends {
                services.push(HealthServiceDoc {
                    service_id: format!("{}/{}", svc.name, b.name),
                    node_id,
                    state: b.router_state().as_str(),
                    message: &b.reason,
                });
            }
        }
        let serving = stopping.is_none();
        let message = if let Some(why) = stopping {
            why.to_string()
        } else if view.is_none() {
            "the control plane did not answer".to_string()
        } else if !empty.is_empty() {
            format!("no usable backend in service {}", empty.join(", "))
        } else {
            "OK".to_string()
        };
        let healthy = serving && view.is_some() && empty.is_empty();
        HealthDoc {
            router: RouterDoc {
                node_id,
                state: if healthy { "HEALTHY" } else { "UNHEALTHY" },
                message,
            },
            services,
        }
    }

    pub(crate) fn healthy(&self) -> bool {
        self.router.state == "HEALTHY"
    }
}

/// `GET /api/v1/services`.
#[derive(Debug, Serialize)]
pub(crate) struct ServicesDoc<'a> {
    pub node_id: &'a str,
    pub version: &'static str,
    /// Server time (unix seconds), so a page can age `last_change` without
    /// trusting the browser's clock.
    pub now_unix: u64,
    pub generation: u64,
    pub config_generation: u64,
    pub services: Vec<ServiceDoc<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServiceDoc<'a> {
    pub name: &'a str,
    pub listen: &'a [SocketAddr],
    pub balance: &'static str,
    pub usable_backends: usize,
    pub accepted: u64,
    pub active: u64,
    pub retries: u64,
    pub no_backend: u64,
    pub backends: Vec<BackendDoc<'a>>,
}

/// A backend with its live figures; also the answer to every action.
#[derive(Debug, Serialize)]
pub(crate) struct BackendDoc<'a> {
    pub service: &'a str,
    pub name: &'a str,
    pub address: SocketAddr,
    pub weight: u32,
    /// `enabled` | `drain` | `disabled`.
    pub admin: &'static str,
    /// `up` | `down` | `unknown`.
    pub health: &'static str,
    /// `HEALTHY` | `UNHEALTHY` | `DRAINING` | `DISABLED`.
    pub state: &'static str,
    pub usable: bool,
    /// Added by a node's join request (it may leave through the API; a
    /// restart forgets it), not by the config file.
    pub joined: bool,
    pub reason: &'a str,
    /// RFC 3339, UTC.
    pub last_change: String,
    pub last_change_unix: u64,
    pub active: u64,
    pub total: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub connect_refused: u64,
    pub connect_timeout: u64,
    pub connect_other: u64,
    /// The last five minutes of traffic, one sample a second.
    pub history: HistoryDoc<'a>,
    /// The last health transitions (at most 20), oldest first.
    pub transitions: Vec<TransitionDoc<'a>>,
}

/// A backend's traffic samples: numbers only, to keep the document small.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryDoc<'a> {
    /// Seconds each sample covers.
    pub interval_s: u64,
    /// New connections in each interval, oldest first (up to 300; fewer
    /// in the first five minutes).
    pub new_connections: &'a [u32],
    /// Bytes forwarded both ways in each interval, as many as the above.
    pub bytes: &'a [u64],
}

/// One change of a backend's health.
#[derive(Debug, Serialize)]
pub(crate) struct TransitionDoc<'a> {
    /// RFC 3339, UTC.
    pub at: String,
    pub at_unix: u64,
    /// `up` | `down` | `unknown`.
    pub from: &'static str,
    pub to: &'static str,
    pub reason: &'a str,
}

impl<'a> ServicesDoc<'a> {
    pub(crate) fn new(view: &'a StatusView, node_id: &'a str, now: SystemTime) -> ServicesDoc<'a> {
        ServicesDoc {
            node_id,
            version: env!("CARGO_PKG_VERSION"),
            now_unix: unix_seconds(now),
            generation: view.generation,
            config_generation: view.config_generation,
            services: view
                .services
                .iter()
                .map(|s| ServiceDoc {
                    name: &s.name,
                    listen: &s.listen,
                    balance: balance_str(s.balance),
                    usable_backends: s.usable_count(),
                    accepted: s.stats.accepted.load(Relaxed),
                    active: s.stats.active.load(Relaxed) as u64,
                    retries: s.stats.retries.load(Relaxed),
                    no_backend: s.stats.no_backend.load(Relaxed),
                    backends: s.backends.iter().map(|b| BackendDoc::new(s, b)).collect(),
                })
                .collect(),
        }
    }
}

impl<'a> BackendDoc<'a> {
    pub(crate) fn new(service: &'a ServiceView, b: &'a BackendView) -> BackendDoc<'a> {
        let st = &b.stats;
        BackendDoc {
            service: &service.name,
            name: &b.name,
            address: b.address,
            weight: b.weight,
            admin: admin_str(b.admin),
            health: b.health.as_str(),
            state: b.router_state().as_str(),
            usable: b.usable(),
            joined: b.joined,
            reason: &b.reason,
            last_change: rfc3339(b.last_change),
            last_change_unix: unix_seconds(b.last_change),
            active: st.active.load(Relaxed),
            total: st.total.load(Relaxed),
            bytes_to_backend: st.bytes_to_backend.load(Relaxed),
            bytes_to_client: st.bytes_to_client.load(Relaxed),
            connect_refused: st.connect_refused.load(Relaxed),
            connect_timeout: st.connect_timeout.load(Relaxed),
            connect_other: st.connect_other.load(Relaxed),
            history: HistoryDoc {
                interval_s: SAMPLE_EVERY.as_secs(),
                new_connections: &b.history.new_connections,
                bytes: &b.history.bytes,
            },
            transitions: b
                .history
                .transitions
                .iter()
                .map(|t| TransitionDoc {
                    at: rfc3339(t.at),
                    at_unix: unix_seconds(t.at),
                    from: t.from.as_str(),
                    to: t.to.as_str(),
                    reason: &t.reason,
                })
                .collect(),
        }
    }
}

/// Whole seconds since the Unix epoch (0 for earlier times).
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDThh:mm:ssZ` (RFC 3339, UTC, whole seconds).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact for every i64 day we can meet).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Health;
    use std::sync::Arc;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(at(4_102_444_799)), "2099-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn civil_dates_round_the_leap_rules() {
        // 1900 is not a leap year, 2000 is.
        assert_eq!(civil_from_days(-25_508), (1900, 3, 1));
        assert_eq!(civil_from_days(-25_509), (1900, 2, 28));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }

    fn backend(admin: AdminState, health: Health) -> BackendView {
        BackendView {
            name: "b".into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            weight: 100,
            admin,
            health,
            reason: "r".into(),
            last_change: UNIX_EPOCH,
            stats: Arc::default(),
            joined: false,
            history: Default::default(),
        }
    }

    fn view(backends: Vec<BackendView>) -> StatusView {
        StatusView {
            generation: 1,
            config_generation: 1,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_successful: true,
            services: vec![ServiceView {
                name: "web".into(),
                listen: vec![],
                balance: Balance::Maglev,
                stats: Arc::default(),
                backends,
                fingerprints: Default::default(),
            }],
        }
    }

    #[test]
    fn health_needs_a_usable_backend_per_service() {
        let v = view(vec![
            backend(AdminState::Enabled, Health::Up),
            backend(AdminState::Drain, Health::Up),
        ]);
        let doc = HealthDoc::new(Some(&v), "lb1", None);
        assert!(doc.healthy());
        assert_eq!(doc.services.len(), 2);
        assert_eq!(doc.services[0].service_id, "web/b");
        assert_eq!(doc.services[1].state, "DRAINING");

        let v = view(vec![backend(AdminState::Disabled, Health::Up)]);
        let doc = HealthDoc::new(Some(&v), "lb1", None);
        assert!(!doc.healthy());
        assert_eq!(doc.router.message, "no usable backend in service web");

        let v = view(vec![backend(AdminState::Enabled, Health::Up)]);
        assert!(!HealthDoc::new(Some(&v), "lb1", Some("shutting down")).healthy());
        assert!(!HealthDoc::new(None, "lb1", None).healthy());
    }

    #[test]
    fn a_backend_shows_its_samples_and_transitions_as_compact_json() {
        use crate::control::history::{HistoryView, Transition};
        let mut b = backend(AdminState::Enabled, Health::Down);
        b.history = HistoryView {
            new_connections: vec![0, 3, 12],
            bytes: vec![0, 512, 70_000],
            transitions: vec![
                Transition {
                    at: at(1_700_000_000),
                    from: Health::Unknown,
                    to: Health::Up,
                    reason: "probe passed".into(),
                },
                Transition {
                    at: at(1_700_000_042),
                    from: Health::Up,
                    to: Health::Down,
                    reason: "connect: connection refused".into(),
                },
            ],
        };
        let v = view(vec![b]);
        let doc = BackendDoc::new(&v.services[0], &v.services[0].backends[0]);
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&doc).expect("serialize")).expect("json");
        assert_eq!(
            json["history"],
            serde_json::json!({
                "interval_s": 1,
                "new_connections": [0, 3, 12],
                "bytes": [0, 512, 70000],
            })
        );
        assert_eq!(
            json["transitions"],
            serde_json::json!([
                {"at": "2023-11-14T22:13:20Z", "at_unix": 1_700_000_000u64,
                 "from": "unknown", "to": "up", "reason": "probe passed"},
                {"at": "2023-11-14T22:14:02Z", "at_unix": 1_700_000_042u64,
                 "from": "up", "to": "down", "reason": "connect: connection refused"},
            ])
        );
        // A backend with no past yet: empty arrays, never missing keys.
        let v = view(vec![backend(AdminState::Enabled, Health::Unknown)]);
        let json =
            serde_json::to_value(BackendDoc::new(&v.services[0], &v.services[0].backends[0]))
                .expect("serialize");
        assert_eq!(json["history"]["new_connections"], serde_json::json!([]));
        assert_eq!(json["transitions"], serde_json::json!([]));
    }
}
