//! The registry of services and backends (config, admin state, health
//! state, counters) and the building of snapshots from it. Owned by the
//! control-plane thread; workers only ever see the snapshots it publishes.
//! Nodes that join at run time: `control/join.rs`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use std::net::SocketAddr;

use crate::config::{AdminState, Balance, Config, HealthCheck, HealthKind, RetryBeforeResponse};
use crate::fingerprint::{Fingerprints, Part};
use crate::health::BackendKey;
use crate::maglev::MaglevTable;
use crate::snapshot::{BackendEntry, ServiceSettings, ServiceTable, Snapshot};
use crate::sni_routes::SniRoutes;
use crate::source_limits::SourcePolicy;
use crate::stats::{BackendStats, ServiceStats};

use super::history::{Rates, Reading, Transitions};
use super::join;

/// A backend's health as the control plane knows it (the prober's state:
/// `Unknown` until its first probe result, and then `Up` or `Down`).
pub(crate) use crate::health::State as Health;

/// One backend in the registry.
#[derive(Debug)]
pub struct BackendRecord {
    pub config: crate::config::Backend,
    pub admin: AdminState,
    pub health: Health,
    /// Why the health is what it is (probe result, "not probed", …).
    pub reason: String,
    pub last_change: SystemTime,
    pub stats: Arc<BackendStats>,
    /// Added by a node's join request, not by the config file: only these
    /// may leave through the API, and a reload keeps them (unless the file
    /// now configures their name). Lost at restart.
    pub joined: bool,
    /// When a published snapshot last showed this backend usable after one
    /// that did not (or for the first time): the start of its slow-start
    /// window. None while unusable. Set in [`Registry::snapshot`], so a
    /// down-and-up between two publications (no client moved) is no return.
    pub(crate) usable_since: Option<Instant>,
    /// The last five minutes of its traffic, one sample a second, for the
    /// status page's sparklines (`control/history.rs`).
    pub(crate) rates: Rates,
    /// Its last health transitions with their reasons, for the status
    /// page's health strip.
    pub(crate) transitions: Transitions,
}

impl BackendRecord {
    /// May receive new connections.
    pub fn usable(&self) -> bool {
        self.admin == AdminState::Enabled && self.health == Health::Up
    }

    /// Sets the health state and its reason; a change is counted
    /// (`ringlb_backend_health_transitions_total`), dated and kept in the
    /// backend's transitions. True if it changed.
    pub(crate) fn change_health(&mut self, health: Health, reason: String) -> bool {
        let from = self.health;
        self.reason = reason;
        if from == health {
            return false;
        }
        self.health = health;
        self.last_change = SystemTime::now();
        self.stats.count_health_change(health);
        self.transitions
            .push(self.last_change, from, health, &self.reason);
        true
    }
}

/// One service in the registry.
#[derive(Debug)]
pub struct ServiceRecord {
    pub config: crate::config::Service,
    pub backends: Vec<BackendRecord>,
    pub stats: Arc<ServiceStats>,
    /// Maglev table of the current backend list, reused while only health
    /// or admin state changes (building one costs milliseconds). A join or
    /// leave drops it (`control/join.rs`).
    pub(super) maglev: Option<MaglevTable>,
    /// The per-source rules with their shared tables (None when none is
    /// set), made once per configuration: a snapshot, made on every health
    /// change, must not start the counts over.
    pub(super) sources: Option<Arc<SourcePolicy>>,
    /// The fingerprints of the last snapshot built (`fingerprint.rs`), for
    /// `/metrics`: how a tier checks its instances agree.
    pub(super) fingerprints: Fingerprints,
}

/// Errors of registry operations (admin actions on unknown names…).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("service {service:?} has no backend named {backend:?}")]
    NoBackend { service: String, backend: String },
    #[error("cannot build the Maglev table of service {service:?}: {reason}")]
    Maglev { service: String, reason: String },
}

/// What a reload changed, for the log and the admin API.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSummary {
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
}

/// Services, backends and their live state.
#[derive(Debug)]
pub struct Registry {
    /// In configuration order, joined nodes after (`control/join.rs`).
    pub(super) services: Vec<ServiceRecord>,
    generation: u64,
    /// Configurations loaded: 1 at start; a successful reload adds one
    /// (and must carry it over if it builds a new registry). Shown by the
    /// admin API and metrics so an operator sees a reload took.
    config_generation: u64,
}

impl Registry {
    /// Builds the registry of a fresh start. Backends with an active health
    /// check start `Unknown`; those with `kind = "none"` start `Up`.
    pub fn new(config: &Config) -> Registry {
        let services = config
            .services
            .iter()
            .map(|s| ServiceRecord {
                config: s.clone(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| new_backend(s.health.kind, b))
                    .collect(),
                stats: Arc::new(ServiceStats::default()),
                maglev: None,
                sources: SourcePolicy::build(&s.sources, s.hash_prefix_v4, s.hash_prefix_v6, None),
                fingerprints: Fingerprints::default(),
            })
            .collect();
        Registry {
            services,
            generation: 0,
            config_generation: 1,
        }
    }

    /// Generation of the last snapshot built (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Configurations loaded so far (see the field).
    pub fn config_generation(&self) -> u64 {
        self.config_generation
    }

    pub fn services(&self) -> &[ServiceRecord] {
        &self.services
    }

    pub fn service(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.iter().find(|s| s.config.name == name)
    }

    fn backend_mut(
        &mut self,
        service: &str,
        backend: &str,
    ) -> Result<&mut BackendRecord, RegistryError> {
        let svc = self
            .services
            .iter_mut()
            .find(|s| s.config.name == service)
            .ok_or_else(|| RegistryError::NoService(service.into()))?;
        svc.backends
            .iter_mut()
            .find(|b| b.config.name == backend)
            .ok_or_else(|| RegistryError::NoBackend {
                service: service.into(),
                backend: backend.into(),
            })
    }

    /// Takes a reloaded config: services and backends that remain (by name)
    /// keep their counters, admin state and health (a backend whose address
    /// changed is probed anew); new ones start as at start-up; removed ones
    /// go (their established connections are not touched: they hold their
    /// own counters). The admin state of a remaining backend is the
    /// operator's and survives a reload; a changed `state` in the file only
    /// applies to new backends.
    pub fn apply(&mut self, config: &Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let mut old: Vec<ServiceRecord> = std::mem::take(&mut self.services);
        for s in &config.services {
            let Some(pos) = old.iter().position(|o| o.config.name == s.name) else {
                summary.services_added.push(s.name.clone());
                self.services.push(ServiceRecord {
                    config: s.clone(),
                    backends: s
                        .backends
                        .iter()
                        .map(|b| new_backend(s.health.kind, b))
                        .collect(),
                    stats: Arc::new(ServiceStats::default()),
                    maglev: None,
                    sources: SourcePolicy::build(
                        &s.sources,
                        s.hash_prefix_v4,
                        s.hash_prefix_v6,
                        None,
                    ),
                    fingerprints: Fingerprints::default(),
                });
                continue;
            };
            let mut prev = old.swap_remove(pos);
            // The Maglev table depends on names, weights (as running: an
            // operator may have changed one), size and policy.
            let running: Vec<(&str, u32)> = prev
                .backends
                .iter()
                .map(|b| (b.config.name.as_str(), b.config.weight.get()))
                .collect();
            let wanted: Vec<(&str, u32)> = s
                .backends
                .iter()
                .map(|b| (b.name.as_str(), b.weight.get()))
                .collect();
            let same_table = prev.config.balance == s.balance
                && prev.config.maglev_table_size == s.maglev_table_size
                && running == wanted;
            let mut backends = Vec::with_capacity(s.backends.len());
            for b in &s.backends {
                match prev.backends.iter().position(|p| p.config.name == b.name) {
                    Some(i) => {
                        // `remove`: the joined nodes left over keep their order.
                        let mut rec = prev.backends.remove(i);
                        // A joined name now in the file: the file wins.
                        rec.joined = false;
                        if rec.config.address != b.address
                            || prev.config.health.kind != s.health.kind
                        {
                            let fresh = new_backend(s.health.kind, b);
                            rec.change_health(fresh.health, fresh.reason);
                            rec.last_change = SystemTime::now();
                        }
                        rec.config = b.clone();
                        backends.push(rec);
                    }
                    None => {
                        summary
                            .backends_added
                            .push(format!("{}/{}", s.name, b.name));
                        backends.push(new_backend(s.health.kind, b));
                    }
                }
            }
            // Left over: backends the file dropped, and joined nodes, which
            // stay while they still fit the service (control/join.rs).
            let kind_changed = prev.config.health.kind != s.health.kind;
            let dropped = join::keep_joined(s, &mut backends, prev.backends, kind_changed);
            summary.backends_removed.extend(
                dropped
                    .iter()
                    .map(|b| format!("{}/{}", s.name, b.config.name)),
            );
            // Unchanged rules keep their policy (and its counts); changed
            // ones keep the tables that still count the same way.
            let sources = match prev.sources {
                Some(p) if p.is(&s.sources, s.hash_prefix_v4, s.hash_prefix_v6) => Some(p),
                p => SourcePolicy::build(
                    &s.sources,
                    s.hash_prefix_v4,
                    s.hash_prefix_v6,
                    p.as_deref(),
                ),
            };
            self.services.push(ServiceRecord {
                config: s.clone(),
                backends,
                stats: prev.stats,
                maglev: if same_table { prev.maglev } else { None },
                sources,
                fingerprints: prev.fingerprints,
            });
        }
        summary.services_removed = old.into_iter().map(|o| o.config.name).collect();
        self.config_generation += 1;
        summary
    }

    /// Records a health result; true if the state changed.
    pub fn set_health(
        &mut self,
        service: &str,
        backend: &str,
        health: Health,
        reason: String,
    ) -> Result<bool, RegistryError> {
        let b = self.backend_mut(service, backend)?;
        Ok(b.change_health(health, reason))
    }

    /// Sets the operator's state; true if it changed.
    pub fn set_admin(
        &mut self,
        service: &str,
        backend: &str,
        state: AdminState,
    ) -> Result<bool, RegistryError> {
        let b = self.backend_mut(service, backend)?;
        if b.admin == state {
            return Ok(false);
        }
        b.admin = state;
        b.last_change = SystemTime::now();
        Ok(true)
    }

    /// Sets a backend's weight; returns the previous one. A change drops
    /// the service's cached Maglev table, so the next snapshot rebuilds it
    /// with the new weight.
    pub fn set_weight(
        &mut self,
        service: &str,
        backend: &str,
        weight: NonZeroU32,
    ) -> Result<NonZeroU32, RegistryError> {
        let svc = self
            .services
            .iter_mut()
            .find(|s| s.config.name == service)
            .ok_or_else(|| RegistryError::NoService(service.into()))?;
        let b = svc
            .backends
            .iter_mut()
            .find(|b| b.config.name == backend)
            .ok_or_else(|| RegistryError::NoBackend {
                service: service.into(),
                backend: backend.into(),
            })?;
        let old = b.config.weight;
        if old != weight {
            b.config.weight = weight;
            svc.maglev = None;
        }
        Ok(old)
    }

    /// The stats of a service (shared with workers' listeners).
    pub fn service_stats(&self, name: &str) -> Option<Arc<ServiceStats>> {
        self.service(name).map(|s| s.stats.clone())
    }

    /// Builds the next snapshot from the current state.
    pub fn snapshot(&mut self) -> Result<Snapshot, RegistryError> {
        let mut services = Vec::with_capacity(self.services.len());
        let now = Instant::now();
        for svc in &mut self.services {
            for b in &mut svc.backends {
                if !b.usable() {
                    b.usable_since = None;
                } else if b.usable_since.is_none() {
                    b.usable_since = Some(now);
                }
            }
            let c = &svc.config;
            let settings = ServiceSettings {
                balance: c.balance,
                connect_timeout: c.connect_timeout,
                idle_timeout: c.idle_timeout,
                connect_attempts: c.connect_attempts.get() as usize,
                max_connections: c.max_connections.map(|m| m.get()),
                hash_prefix_v4: c.hash_prefix_v4,
                hash_prefix_v6: c.hash_prefix_v6,
                bounded_load: c.bounded_load,
                slow_start: c.slow_start,
                source_address: c.source_address,
                liveness: c.liveness,
                accept_proxy: c.accept_proxy.clone(),
                sources: svc.sources.clone(),
                retry_tls: c.retry_before_response == RetryBeforeResponse::Tls,
            };
            let backends: Vec<BackendEntry> = svc
                .backends
                .iter()
                .map(|b| BackendEntry {
                    name: Arc::from(b.config.name.as_str()),
                    address: b.config.address,
                    weight: b.config.weight.get(),
                    stats: b.stats.clone(),
                    send_proxy: b.config.proxy_header(c.send_proxy),
                    usable_since: b.usable_since,
                })
                .collect();
            let usable = svc.backends.iter().map(BackendRecord::usable).collect();
            let table = ServiceTable::new(
                Arc::from(c.name.as_str()),
                settings,
                backends,
                usable,
                svc.maglev.take(),
                c.maglev_table_size,
                svc.stats.clone(),
            )
            .map_err(|e| RegistryError::Maglev {
                service: c.name.clone(),
                reason: e.to_string(),
            })?;
            if c.balance == Balance::Maglev {
                svc.maglev = table.maglev_table().cloned();
            }
            let parts: Vec<Part<'_>> = svc
                .backends
                .iter()
                .map(|b| Part {
                    name: &b.config.name,
                    address: b.config.address,
                    weight: b.config.weight.get(),
                    usable: b.usable(),
                })
                .collect();
            svc.fingerprints = crate::fingerprint::compute(
                crate::admin::view::balance_str(c.balance),
                c.maglev_table_size,
                &parts,
                table.effective_table(),
            );
            services.push(table);
        }
        self.generation += 1;
        let sni = SniRoutes::build(self.services.iter().map(|s| &s.config))
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(Snapshot {
            generation: self.generation,
            services,
            sni,
        })
    }

    /// Takes one sample of every backend's traffic (see
    /// `control/history.rs`): `periods` sample periods since the last one.
    /// Relaxed loads of counters the workers keep anyway.
    pub(crate) fn sample(&mut self, periods: u32) {
        for b in self.services.iter_mut().flat_map(|s| s.backends.iter_mut()) {
            let now = Reading::of(&b.stats);
            b.rates.record(now, periods);
        }
    }

    /// What the prober should probe: every backend of every service, with
    /// its service's check.
    pub fn probe_targets(&self) -> Vec<(BackendKey, SocketAddr, Arc<HealthCheck>)> {
        let mut out = Vec::new();
        for s in &self.services {
            let check = Arc::new(s.config.health.clone());
            for b in &s.backends {
                let key = BackendKey {
                    service: s.config.name.clone(),
                    backend: b.config.name.clone(),
                };
                // With `health.send_proxy`, a probe speaks the version of the
                // backend it probes (the prober shares one context among
                // equal checks, so backends of one version still share).
                let header = b.config.proxy_header(s.config.send_proxy);
                let check = if check.send_proxy.is_some() && check.send_proxy != header {
                    Arc::new(HealthCheck {
                        send_proxy: header,
                        ..(*check).clone()
                    })
                } else {
                    check.clone()
                };
                out.push((key, probe_target(&check, b.config.address), check));
            }
        }
        out
    }
}

/// Where a backend's probes go: `[service.health] address`/`port` where
/// set, else the backend's own IP/port.
fn probe_target(check: &HealthCheck, backend: SocketAddr) -> SocketAddr {
    SocketAddr::new(
        check.address.unwrap_or(backend.ip()),
        check.port.unwrap_or(backend.port()),
    )
}

pub(super) fn new_backend(kind: HealthKind, b: &crate::config::Backend) -> BackendRecord {
    let (health, reason) = match kind {
        HealthKind::None => (Health::Up, "no health check configured".to_string()),
        _ => (Health::Unknown, "not probed yet".to_string()),
    };
    BackendRecord {
        config: b.clone(),
        admin: b.state,
        health,
        reason,
        last_change: SystemTime::now(),
        stats: Arc::new(BackendStats::default()),
        joined: false,
        usable_since: None,
        rates: Rates::default(),
        transitions: Transitions::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &[(&str, &str)], kind: &str) -> Config {
        let mut t = format!("[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n[service.health]\nkind = \"{kind}\"\n");
        for (name, addr) in backends {
            t.push_str(&format!(
                "[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            ));
        }
        Config::parse(&t, None).unwrap()
    }

    #[test]
    fn a_backend_is_dated_when_a_snapshot_first_shows_it_usable_again() {
        let mut r = Registry::new(&config(&[("a", "127.0.0.1:1001")], "http"));
        let since = |r: &mut Registry| r.snapshot().unwrap().services[0].backends[0].usable_since;
        assert_eq!(since(&mut r), None, "not probed yet");
        r.set_health("s", "a", Health::Up, "ok".into()).unwrap();
        let first = since(&mut r).expect("usable");
        assert_eq!(
            since(&mut r),
            Some(first),
            "a later snapshot keeps the instant"
        );
        r.set_admin("s", "a", AdminState::Disabled).unwrap();
        assert_eq!(since(&mut r), None, "disabled");
        r.set_admin("s", "a", AdminState::Enabled).unwrap();
        let again = since(&mut r).expect("enabled again");
        assert!(again > first, "a return starts a new window");
    }

    #[test]
    fn probes_go_to_the_health_port_and_address() {
        let targets = |kind: &str| -> Vec<SocketAddr> {
            let r = Registry::new(&config(
                &[("a", "127.0.0.1:1001"), ("b", "127.0.0.2:1002")],
                kind,
            ));
            r.probe_targets().into_iter().map(|(_, a, _)| a).collect()
        };
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        assert_eq!(
            targets("http"),
            addrs(&["127.0.0.1:1001", "127.0.0.2:1002"])
        );
        assert_eq!(
            targets("http\"\nport = 9090\n#\""),
            addrs(&["127.0.0.1:9090", "127.0.0.2:9090"])
        );
        assert_eq!(
            targets("http\"\naddress = \"127.0.0.9\"\nport = 9090\n#\""),
            addrs(&["127.0.0.9:9090", "127.0.0.9:9090"])
        );
    }

    #[test]
    fn a_reload_keeps_the_state_of_remaining_backends() {
        let mut r = Registry::new(&config(
            &[("a", "127.0.0.1:1001"), ("b", "127.0.0.1:1002")],
            "http",
        ));
        r.set_health("s", "a", Health::Up, "ok".into()).unwrap();
        r.set_health("s", "b", Health::Up, "ok".into()).unwrap();
        r.set_admin("s", "a", AdminState::Drain).unwrap();
        r.service("s").unwrap().backends[0]
            .stats
            .total
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);

        // b moves to a new address; c is new; a stays.
        let s = r.apply(&config(
            &[
                ("a", "127.0.0.1:1001"),
                ("b", "127.0.0.1:2002"),
                ("c", "127.0.0.1:1003"),
            ],
            "http",
        ));
        assert_eq!(s.backends_added, vec!["s/c".to_string()]);
        assert!(
            s.backends_removed.is_empty()
                && s.services_added.is_empty()
                && s.services_removed.is_empty()
        );
        let svc = r.service("s").unwrap();
        let a = &svc.backends[0];
        assert_eq!(
            (a.health, a.admin),
            (Health::Up, AdminState::Drain),
            "operator and health state survive"
        );
        assert_eq!(
            a.stats.total.load(std::sync::atomic::Ordering::Relaxed),
            7,
            "counters survive"
        );
        assert_eq!(
            svc.backends[1].health,
            Health::Unknown,
            "a new address is probed anew"
        );
        // Health transitions: a's (to up) survive; b's move to unknown
        // is one more.
        assert_eq!(
            (
                a.stats.health_changes(Health::Up),
                a.stats.health_changes(Health::Down)
            ),
            (1, 0)
        );
        assert_eq!(
            (
                svc.backends[1].stats.health_changes(Health::Up),
                svc.backends[1].stats.health_changes(Health::Unknown)
            ),
            (1, 1)
        );
        assert_eq!(
            svc.backends[2].health,
            Health::Unknown,
            "a new backend waits for its probe"
        );
        r.set_health("s", "a", Health::Down, "refused".into())
            .unwrap();
        r.set_health("s", "a", Health::Down, "refused again".into())
            .unwrap();
        r.set_health("s", "a", Health::Up, "ok".into()).unwrap();
        let a = &r.service("s").unwrap().backends[0];
        assert_eq!(
            (
                a.stats.health_changes(Health::Up),
                a.stats.health_changes(Health::Down)
            ),
            (2, 1),
            "only changes count"
        );

        let s = r.apply(&config(&[("c", "127.0.0.1:1003")], "http"));
        assert_eq!(
            s.backends_removed,
            vec!["s/a".to_string(), "s/b".to_string()]
        );
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.services[0].backends.len(), 1);
    }

    #[test]
    fn weight_changes_rebuild_the_table_and_unknown_names_are_errors() {
        let mut r = Registry::new(&config(
            &[("a", "127.0.0.1:1001"), ("b", "127.0.0.1:1002")],
            "none",
        ));
        let before = r.snapshot().unwrap();
        let w = std::num::NonZeroU32::new(300).unwrap();
        let default = std::num::NonZeroU32::new(100).unwrap();
        assert_eq!(r.set_weight("s", "a", w), Ok(default));
        assert_eq!(r.set_weight("s", "a", w), Ok(w));
        let after = r.snapshot().unwrap();
        assert_eq!(after.services[0].backends[0].weight, 300);
        assert_ne!(
            before.services[0].maglev_table(),
            after.services[0].maglev_table()
        );
        assert!(matches!(
            r.set_weight("s", "zz", w),
            Err(RegistryError::NoBackend { .. })
        ));
        assert!(matches!(
            r.set_admin("nope", "a", AdminState::Drain),
            Err(RegistryError::NoService(_))
        ));
        assert!(after.generation > before.generation);
    }

    #[test]
    fn samples_and_transitions_follow_the_backend_through_a_reload() {
        use std::sync::atomic::Ordering::Relaxed;
        let mut r = Registry::new(&config(
            &[("a", "127.0.0.1:1001"), ("b", "127.0.0.1:1002")],
            "http",
        ));
        r.sample(1); // the baseline
        r.set_health("s", "a", Health::Up, "probe passed".into())
            .unwrap();
        r.set_health("s", "a", Health::Down, "connection refused".into())
            .unwrap();
        r.set_health("s", "a", Health::Down, "refused again".into())
            .unwrap();
        {
            let a = &r.service("s").unwrap().backends[0];
            a.stats.total.fetch_add(4, Relaxed);
            a.stats.bytes_to_backend.fetch_add(100, Relaxed);
            a.stats.bytes_to_client.fetch_add(900, Relaxed);
        }
        r.sample(1);
        // b goes; a stays (the file now lists it second, after a new c).
        r.apply(&config(
            &[("c", "127.0.0.1:1003"), ("a", "127.0.0.1:1001")],
            "http",
        ));
        r.service("s").unwrap().backends[1]
            .stats
            .total
            .fetch_add(2, Relaxed);
        r.sample(1);
        let svc = r.service("s").unwrap();
        let a = &svc.backends[1];
        assert_eq!(a.config.name, "a");
        assert_eq!(a.rates.connections(), vec![4, 2], "kept by name");
        assert_eq!(a.rates.bytes(), vec![1000, 0]);
        let t = a.transitions.to_vec();
        assert_eq!(
            t.iter()
                .map(|t| (t.from, t.to, t.reason.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (Health::Unknown, Health::Up, "probe passed"),
                (Health::Up, Health::Down, "connection refused"),
            ],
            "only changes, with their reasons"
        );
        assert_eq!(a.reason, "refused again", "the reason is still the latest");
        let c = &svc.backends[0];
        assert_eq!(
            c.rates.connections(),
            Vec::<u32>::new(),
            "a new backend starts empty"
        );
        assert!(c.transitions.to_vec().is_empty());
    }
}
