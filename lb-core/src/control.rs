//! The control plane's state: the registry of services and backends (config,
//! admin state, health state, counters) and the building of snapshots from
//! it. Owned by the control-plane thread; workers only ever see the
//! snapshots it publishes.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use std::net::SocketAddr;

use crate::config::{AdminState, Balance, Config, HealthCheck, HealthKind};
use crate::health::BackendKey;
use crate::maglev::MaglevTable;
use crate::snapshot::{BackendEntry, ServiceSettings, ServiceTable, Snapshot};
use crate::stats::{BackendStats, ServiceStats};

/// A backend's health as the control plane knows it (the prober's state:
/// `Unknown` until its first probe result, and then `Up` or `Down`).
pub use crate::health::State as Health;

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
}

impl BackendRecord {
    /// May receive new connections.
    pub fn usable(&self) -> bool {
        self.admin == AdminState::Enabled && self.health == Health::Up
    }
}

/// One service in the registry.
#[derive(Debug)]
pub struct ServiceRecord {
    pub config: crate::config::Service,
    pub backends: Vec<BackendRecord>,
    pub stats: Arc<ServiceStats>,
    /// Maglev table of the current backend list, reused while only health
    /// or admin state changes (building one costs milliseconds).
    maglev: Option<MaglevTable>,
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

/// Services, backends and their live state.
#[derive(Debug)]
pub struct Registry {
    services: Vec<ServiceRecord>,
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

    /// Records a health result; true if the state changed.
    pub fn set_health(
        &mut self,
        service: &str,
        backend: &str,
        health: Health,
        reason: String,
    ) -> Result<bool, RegistryError> {
        let b = self.backend_mut(service, backend)?;
        b.reason = reason;
        if b.health == health {
            return Ok(false);
        }
        b.health = health;
        b.last_change = SystemTime::now();
        Ok(true)
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
        for svc in &mut self.services {
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
                source_address: c.source_address,
            };
            let backends: Vec<BackendEntry> = svc
                .backends
                .iter()
                .map(|b| BackendEntry {
                    name: Arc::from(b.config.name.as_str()),
                    address: b.config.address,
                    weight: b.config.weight.get(),
                    stats: b.stats.clone(),
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
            services.push(table);
        }
        self.generation += 1;
        Ok(Snapshot {
            generation: self.generation,
            services,
        })
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
                out.push((key, b.config.address, check.clone()));
            }
        }
        out
    }
}

fn new_backend(kind: HealthKind, b: &crate::config::Backend) -> BackendRecord {
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
    }
}
