//! The registry at one instant: a [`StatusView`], built on the control-plane
//! thread when the admin server asks (`Command::Status`) and read there by
//! the admin API and metrics, so no admin handler ever holds the registry.
//! Counters are not copied: the view holds the same `Arc`s the workers
//! count into. The JSON documents made from it are `admin/view.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::history::HistoryView;
use super::{BackendRecord, Health, Registry};
use crate::config::{AdminState, Balance};
use crate::fingerprint::Fingerprints;
use crate::stats::{BackendStats, ServiceStats};

/// Control-plane figures, shown by `/metrics` (through the `StatusView`)
/// and in systemd's `STATUS=` line. Owned and written by the control plane.
#[derive(Debug, Default)]
pub(crate) struct ControlCounters {
    /// Reloads applied (SIGHUP or the admin API).
    pub reloads_ok: u64,
    /// Reloads refused; the running config kept serving.
    pub reloads_failed: u64,
    /// The last reload's outcome (None: no reload since start).
    pub last_reload: Option<LastReload>,
}

/// When the last reload ran and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastReload {
    pub at: SystemTime,
    /// Why it was refused; None when it was applied.
    pub refused: Option<String>,
}

impl ControlCounters {
    /// Counts a reload: applied (`refused` None) or refused with a reason.
    pub(crate) fn record_reload(&mut self, refused: Option<String>) {
        if refused.is_some() {
            self.reloads_failed += 1;
        } else {
            self.reloads_ok += 1;
        }
        self.last_reload = Some(LastReload {
            at: SystemTime::now(),
            refused,
        });
    }

    /// False only when the last reload was refused (the start counts as a
    /// successful load).
    pub(crate) fn last_reload_successful(&self) -> bool {
        self.last_reload
            .as_ref()
            .is_none_or(|r| r.refused.is_none())
    }
}

/// The line systemd shows for the service (`STATUS=`): how many client
/// connections and services are served, and how the last reload went
/// (times in UTC).
pub(crate) fn status_line(
    connections: usize,
    services: usize,
    last: Option<&LastReload>,
) -> String {
    let plural = |n: usize, one: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    let serving = format!(
        "serving {}, {}",
        plural(connections, "connection"),
        plural(services, "service")
    );
    match last {
        None => format!("{serving}; no reload since start"),
        Some(r) => {
            let secs =
                r.at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
            match &r.refused {
                None => format!("{serving}; last reload ok at {h:02}:{m:02}:{s:02} UTC"),
                Some(reason) => {
                    format!("{serving}; last reload refused at {h:02}:{m:02}:{s:02} UTC: {reason}")
                }
            }
        }
    }
}

/// The registry at one instant, for the admin API and metrics.
#[derive(Debug)]
pub(crate) struct StatusView {
    /// Generation of the last published snapshot (bumps on every change).
    pub generation: u64,
    /// Configurations loaded so far (1 at start, +1 per successful reload).
    pub config_generation: u64,
    /// Reloads applied since start.
    pub reloads_ok: u64,
    /// Reloads refused since start (the running config kept serving).
    pub reloads_failed: u64,
    /// The last reload was applied (or none ran since start).
    pub last_reload_successful: bool,
    /// In configuration order.
    pub services: Vec<ServiceView>,
}

/// One service of a [`StatusView`].
#[derive(Debug)]
pub(crate) struct ServiceView {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub balance: Balance,
    /// Live: shared with the workers' listeners.
    pub stats: Arc<ServiceStats>,
    /// In configuration order.
    pub backends: Vec<BackendView>,
    /// As of the last snapshot: whether a tier's instances agree.
    pub fingerprints: Fingerprints,
}

/// One backend of a [`ServiceView`].
#[derive(Debug)]
pub(crate) struct BackendView {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub admin: AdminState,
    pub health: Health,
    /// Why the health is what it is.
    pub reason: String,
    /// Last change of health or admin state.
    pub last_change: SystemTime,
    /// Live: shared with every snapshot listing the backend.
    pub stats: Arc<BackendStats>,
    /// Added by a node's join request, not by the config file.
    pub joined: bool,
    /// Its last five minutes of traffic and last health transitions
    /// (copied: the registry's ring goes on).
    pub history: HistoryView,
}

/// A backend's state in the router's health vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouterState {
    /// Enabled and healthy: takes new connections.
    Healthy,
    /// Enabled but down or not probed yet.
    Unhealthy,
    /// Drained by the operator.
    Draining,
    /// Disabled by the operator.
    Disabled,
}

impl RouterState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RouterState::Healthy => "HEALTHY",
            RouterState::Unhealthy => "UNHEALTHY",
            RouterState::Draining => "DRAINING",
            RouterState::Disabled => "DISABLED",
        }
    }
}

impl StatusView {
    /// Copies the registry's state (names, states, reasons; the counters by
    /// `Arc`) and the control plane's reload counts. Called on the
    /// control-plane thread.
    pub(crate) fn new(
        registry: &Registry,
        counters: &ControlCounters,
        history: bool,
    ) -> StatusView {
        let services = registry
            .services()
            .iter()
            .map(|s| ServiceView {
                name: s.config.name.clone(),
                listen: s.config.listen.clone(),
                balance: s.config.balance,
                stats: s.stats.clone(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| BackendView::new(b, history))
                    .collect(),
                fingerprints: s.fingerprints,
            })
            .collect();
        StatusView {
            generation: registry.generation(),
            config_generation: registry.config_generation(),
            reloads_ok: counters.reloads_ok,
            reloads_failed: counters.reloads_failed,
            last_reload_successful: counters.last_reload_successful(),
            services,
        }
    }

    /// The backend `service`/`backend`, if both exist.
    pub(crate) fn backend(
        &self,
        service: &str,
        backend: &str,
    ) -> Option<(&ServiceView, &BackendView)> {
        let svc = self.services.iter().find(|s| s.name == service)?;
        let b = svc.backends.iter().find(|b| b.name == backend)?;
        Some((svc, b))
    }
}

impl ServiceView {
    /// Backends that may receive new connections now.
    pub(crate) fn usable_count(&self) -> usize {
        self.backends.iter().filter(|b| b.usable()).count()
    }
}

impl BackendView {
    /// `history`: with its samples and transitions (else empty).
    fn new(b: &BackendRecord, history: bool) -> BackendView {
        BackendView {
            name: b.config.name.clone(),
            address: b.config.address,
            weight: b.config.weight.get(),
            admin: b.admin,
            health: b.health,
            reason: b.reason.clone(),
            last_change: b.last_change,
            stats: b.stats.clone(),
            joined: b.joined,
            history: if history {
                HistoryView::new(&b.rates, &b.transitions)
            } else {
                HistoryView::default()
            },
        }
    }

    /// May receive new connections (the registry's rule).
    pub(crate) fn usable(&self) -> bool {
        self.admin == AdminState::Enabled && self.health == Health::Up
    }

    /// The operator's state wins over health: a drained backend that is
    /// also down shows as draining (that is what the operator asked for).
    pub(crate) fn router_state(&self) -> RouterState {
        match (self.admin, self.health) {
            (AdminState::Disabled, _) => RouterState::Disabled,
            (AdminState::Drain, _) => RouterState::Draining,
            (AdminState::Enabled, Health::Up) => RouterState::Healthy,
            (AdminState::Enabled, Health::Down | Health::Unknown) => RouterState::Unhealthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
            history: HistoryView::default(),
        }
    }

    #[test]
    fn operator_state_wins_over_health() {
        use AdminState::*;
        assert_eq!(
            backend(Enabled, Health::Up).router_state(),
            RouterState::Healthy
        );
        assert_eq!(
            backend(Enabled, Health::Down).router_state(),
            RouterState::Unhealthy
        );
        assert_eq!(
            backend(Enabled, Health::Unknown).router_state(),
            RouterState::Unhealthy
        );
        assert_eq!(
            backend(Drain, Health::Down).router_state(),
            RouterState::Draining
        );
        assert_eq!(
            backend(Disabled, Health::Up).router_state(),
            RouterState::Disabled
        );
        assert!(!backend(Drain, Health::Up).usable());
    }
}
