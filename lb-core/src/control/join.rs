//! Nodes that join a service at run time with the join key, and leave it:
//! the registry's side, and the control plane's (applying a
//! [`Command::Join`](super::Command::Join) or `Leave`: publishing the new
//! snapshot and pointing the prober at the changed targets). Runs on the
//! control-plane thread, between its other events, so a join is ordered
//! with reloads, admin actions and health flips. The key check and the
//! parsing of the request happen before, in `admin/join.rs`.
//!
//! A joined node is a backend like the configured ones (same record, same
//! health check, same Maglev identity: its name), marked `joined`. It is
//! appended to its service, starts `Unknown` (or `Up` under `kind =
//! "none"`) and takes traffic once its probe passes. A reload keeps it
//! unless the file now configures its name (the file wins) or it no longer
//! fits the service; nothing keeps it across a restart (the registry lives
//! in memory only).

use std::net::{IpAddr, SocketAddr};

use super::plane::ControlPlane;
use super::registry::{new_backend, BackendRecord, Registry, RegistryError};
use crate::config::{AdminState, Backend, Service};
use crate::health::Prober;

/// Most joined nodes one service takes. The cluster is 2 to ~100 nodes;
/// this only stops a runaway agent from growing the table (and the time to
/// build it) without bound.
pub(super) const MAX_JOINED: usize = 1024;

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// A new backend.
    Added,
    /// The node had joined already under that name and address: nothing
    /// changed (its state, health and weight are kept).
    AlreadyJoined,
}

/// Why a join or leave was refused; the registry is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("service {service:?} has no backend named {backend:?}")]
    NoBackend { service: String, backend: String },
    #[error(
        "service {service:?} has a configured backend named {backend:?}: a node cannot join under \
         the name of a backend of the config file (pick another name)"
    )]
    Configured { service: String, backend: String },
    #[error(
        "{backend:?} has joined service {service:?} already, at {address}: leave first to move it, \
         or join under another name"
    )]
    OtherAddress {
        service: String,
        backend: String,
        address: SocketAddr,
    },
    #[error("{address} is already the address of backend {other:?} in service {service:?}")]
    AddressTaken {
        service: String,
        address: SocketAddr,
        other: String,
    },
    #[error(
        "service {service:?} connects to its backends from {from} (source_address), \
         which cannot reach {address}: the address families differ"
    )]
    Family {
        service: String,
        from: IpAddr,
        address: SocketAddr,
    },
    #[error("service {service:?} cannot take more backends ({why})")]
    Full { service: String, why: String },
    #[error(
        "{backend:?} is a configured backend of service {service:?}, not a joined node: remove it \
         from the config file and reload"
    )]
    NotJoined { service: String, backend: String },
    // PROXY protocol out.
    #[error(
        "service {service:?} probes its backends with a PROXY header (health.send_proxy = true) \
         but has no send_proxy version of its own for a joined node: set send_proxy on the service"
    )]
    NoProxyVersion { service: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl Registry {
    /// Adds `backend` to `service` as a joined node (enabled, weight as
    /// given). Joining again with the same name and address changes
    /// nothing. The caller publishes, and points the prober at the new
    /// target.
    pub fn join(&mut self, service: &str, backend: Backend) -> Result<JoinOutcome, JoinError> {
        let svc = self
            .services
            .iter_mut()
            .find(|s| s.config.name == service)
            .ok_or_else(|| JoinError::NoService(service.into()))?;
        if let Some(b) = svc.backends.iter().find(|b| b.config.name == backend.name) {
            return match (b.joined, b.config.address == backend.address) {
                (false, _) => Err(JoinError::Configured {
                    service: service.into(),
                    backend: backend.name,
                }),
                (true, false) => Err(JoinError::OtherAddress {
                    service: service.into(),
                    backend: backend.name,
                    address: b.config.address,
                }),
                (true, true) => Ok(JoinOutcome::AlreadyJoined),
            };
        }
        fits(&svc.config, &svc.backends, &backend)?;
        let backend = Backend {
            state: AdminState::Enabled,
            ..backend
        };
        let mut record = new_backend(svc.config.health.kind, &backend);
        record.joined = true;
        svc.backends.push(record);
        // The table's backend list changed: the next snapshot rebuilds it.
        svc.maglev = None;
        Ok(JoinOutcome::Added)
    }

    /// Removes the joined node `backend` from `service`; returns its
    /// settings. Configured backends are refused (the file owns them).
    /// Established connections are not touched: they hold their own
    /// counters. The caller publishes and updates the prober.
    pub fn leave(&mut self, service: &str, backend: &str) -> Result<Backend, JoinError> {
        let svc = self
            .services
            .iter_mut()
            .find(|s| s.config.name == service)
            .ok_or_else(|| JoinError::NoService(service.into()))?;
        let pos = svc
            .backends
            .iter()
            .position(|b| b.config.name == backend)
            .ok_or_else(|| JoinError::NoBackend {
                service: service.into(),
                backend: backend.into(),
            })?;
        if !svc.backends[pos].joined {
            return Err(JoinError::NotJoined {
                service: service.into(),
                backend: backend.into(),
            });
        }
        // `remove`, not `swap_remove`: the others keep their order.
        let record = svc.backends.remove(pos);
        svc.maglev = None;
        Ok(record.config)
    }
}

/// Checks that `candidate` (whose name is not among `backends`) can be
/// added to a service configured as `service` that has `backends`: its
/// address is its own, `source_address` can reach it, and the service has
/// room (joined nodes under [`MAX_JOINED`], and the Maglev table larger
/// than the backend count, as the config file requires).
fn fits(
    service: &Service,
    backends: &[BackendRecord],
    candidate: &Backend,
) -> Result<(), JoinError> {
    if let Some(other) = backends
        .iter()
        .find(|b| b.config.address == candidate.address)
    {
        return Err(JoinError::AddressTaken {
            service: service.name.clone(),
            address: candidate.address,
            other: other.config.name.clone(),
        });
    }
    if service.health.send_proxy.is_some() && candidate.proxy_header(service.send_proxy).is_none() {
        // Its probes could not send the header the service's probes need.
        return Err(JoinError::NoProxyVersion {
            service: service.name.clone(),
        });
    }
    if let Some(from) = service.source_address {
        if from.is_ipv4() != candidate.address.is_ipv4() {
            return Err(JoinError::Family {
                service: service.name.clone(),
                from,
                address: candidate.address,
            });
        }
    }
    let joined = backends.iter().filter(|b| b.joined).count();
    let why = if joined >= MAX_JOINED {
        Some(format!("{joined} nodes have joined; at most {MAX_JOINED}"))
    } else if usize::try_from(service.maglev_table_size)
        .is_ok_and(|size| size <= backends.len() + 1)
    {
        Some(format!(
            "its maglev_table_size, {}, must stay larger than its backend count",
            service.maglev_table_size
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(JoinError::Full {
            service: service.name.clone(),
            why,
        }),
        None => Ok(()),
    }
}

/// The reload rule for joined nodes (called by `Registry::apply`): of
/// `left_over` (the old records the new file does not name), the joined
/// ones that still fit the service as the file now configures it are
/// appended to `backends`, probed anew if the service's health check kind
/// changed; the others are returned, dropped.
pub(super) fn keep_joined(
    service: &Service,
    backends: &mut Vec<BackendRecord>,
    left_over: Vec<BackendRecord>,
    kind_changed: bool,
) -> Vec<BackendRecord> {
    let mut dropped = Vec::new();
    for mut record in left_over {
        if !record.joined || fits(service, backends, &record.config).is_err() {
            dropped.push(record);
            continue;
        }
        if kind_changed {
            let fresh = new_backend(service.health.kind, &record.config);
            record.change_health(fresh.health, fresh.reason);
            record.last_change = fresh.last_change;
        }
        backends.push(record);
    }
    dropped
}

impl ControlPlane {
    /// Adds a joined node and publishes. The prober starts probing it at
    /// once; until its check passes (rise) it takes no traffic. A node that
    /// cannot be published is taken out again, so a refused join changes
    /// nothing.
    pub(super) fn join(
        &mut self,
        prober: &mut Prober,
        service: &str,
        backend: Backend,
    ) -> Result<JoinOutcome, JoinError> {
        let (name, address, weight) = (backend.name.clone(), backend.address, backend.weight);
        let outcome = self.registry.join(service, backend)?;
        if outcome == JoinOutcome::AlreadyJoined {
            tracing::debug!(service = %service, backend = %name, address = %address, "node joined again: nothing to change");
            return Ok(outcome);
        }
        if let Err(e) = self.publish() {
            let _ = self.registry.leave(service, &name);
            tracing::error!(service = %service, backend = %name, error = %e, "join refused: the backend table cannot be built");
            return Err(e.into());
        }
        prober.set_targets(self.registry.probe_targets());
        tracing::info!(service = %service, backend = %name, address = %address, weight = weight.get(), "node joined; it takes traffic once its health check passes");
        Ok(outcome)
    }

    /// Removes a joined node and publishes: no new connections go to it;
    /// established ones are not touched. Removing a backend cannot make a
    /// table unbuildable (the configured backends remain, fewer than the
    /// table size); should publishing fail anyway, the error is answered and
    /// the next publication carries the removal.
    pub(super) fn leave(
        &mut self,
        prober: &mut Prober,
        service: &str,
        backend: &str,
    ) -> Result<Backend, JoinError> {
        let left = self.registry.leave(service, backend)?;
        prober.set_targets(self.registry.probe_targets());
        self.publish()?;
        tracing::info!(service = %service, backend = %backend, address = %left.address, "node left");
        Ok(left)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::control::Health;

    fn config(extra: &str, backends: &[(&str, &str)]) -> Config {
        let mut t = format!(
            "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n{extra}\n\
             [service.health]\nkind = \"tcp\"\n"
        );
        for (name, addr) in backends {
            t.push_str(&format!(
                "[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            ));
        }
        Config::parse(&t, None).unwrap()
    }

    // PROXY protocol out.
    #[test]
    fn with_health_send_proxy_a_node_joins_only_if_the_service_has_a_version() {
        let text = |service_line: &str| {
            format!(
                "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n{service_line}\n\
                 [service.health]\nkind = \"tcp\"\nsend_proxy = true\n\
                 [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1001\"\nsend_proxy = \"v1\"\n"
            )
        };
        let mut r = Registry::new(&Config::parse(&text(""), None).unwrap());
        let refused = r.join("s", node("n", "127.0.0.1:2001"));
        assert_eq!(
            refused,
            Err(JoinError::NoProxyVersion {
                service: "s".into()
            })
        );
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("set send_proxy on the service"));
        let mut r = Registry::new(&Config::parse(&text("send_proxy = \"v2\""), None).unwrap());
        assert_eq!(
            r.join("s", node("n", "127.0.0.1:2001")),
            Ok(JoinOutcome::Added)
        );
    }

    fn node(name: &str, addr: &str) -> Backend {
        Backend::new(name, addr.parse().unwrap())
    }

    fn names(r: &Registry) -> Vec<(String, bool)> {
        r.service("s")
            .unwrap()
            .backends
            .iter()
            .map(|b| (b.config.name.clone(), b.joined))
            .collect()
    }

    #[test]
    fn a_joined_node_is_a_new_unprobed_backend_and_rejoining_changes_nothing() {
        let mut r = Registry::new(&config("", &[("a", "127.0.0.1:1001")]));
        assert_eq!(
            r.join("s", node("n", "127.0.0.1:2001")),
            Ok(JoinOutcome::Added)
        );
        let n = &r.service("s").unwrap().backends[1];
        assert!(n.joined);
        assert_eq!((n.health, n.admin), (Health::Unknown, AdminState::Enabled));
        assert!(r.probe_targets().iter().any(|(k, _, _)| k.backend == "n"));

        r.set_health("s", "n", Health::Up, "ok".into()).unwrap();
        let mut again = node("n", "127.0.0.1:2001");
        again.weight = std::num::NonZeroU32::new(7).unwrap();
        assert_eq!(r.join("s", again), Ok(JoinOutcome::AlreadyJoined));
        let n = &r.service("s").unwrap().backends[1];
        assert_eq!((n.health, n.config.weight.get()), (Health::Up, 100));
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.services[0].backends.len(), 2);
    }

    #[test]
    fn conflicting_joins_are_refused_and_change_nothing() {
        let mut r = Registry::new(&config(
            "source_address = \"127.0.0.1\"",
            &[("a", "127.0.0.1:1001")],
        ));
        r.join("s", node("n", "127.0.0.1:2001")).unwrap();
        let before = names(&r);
        let refused = [
            (
                "nope",
                node("m", "127.0.0.1:3001"),
                JoinError::NoService("nope".into()),
            ),
            (
                "s",
                node("a", "127.0.0.1:3001"),
                JoinError::Configured {
                    service: "s".into(),
                    backend: "a".into(),
                },
            ),
            (
                "s",
                node("n", "127.0.0.1:3001"),
                JoinError::OtherAddress {
                    service: "s".into(),
                    backend: "n".into(),
                    address: "127.0.0.1:2001".parse().unwrap(),
                },
            ),
            (
                "s",
                node("m", "127.0.0.1:1001"),
                JoinError::AddressTaken {
                    service: "s".into(),
                    address: "127.0.0.1:1001".parse().unwrap(),
                    other: "a".into(),
                },
            ),
            (
                "s",
                node("m", "[::1]:3001"),
                JoinError::Family {
                    service: "s".into(),
                    from: "127.0.0.1".parse().unwrap(),
                    address: "[::1]:3001".parse().unwrap(),
                },
            ),
        ];
        for (service, backend, want) in refused {
            assert_eq!(r.join(service, backend), Err(want));
        }
        assert_eq!(names(&r), before);
    }

    #[test]
    fn the_maglev_table_must_stay_larger_than_the_backend_count() {
        let mut r = Registry::new(&config("maglev_table_size = 7", &[("a", "127.0.0.1:1001")]));
        for i in 0..5 {
            let added = r.join(
                "s",
                node(&format!("n{i}"), &format!("127.0.0.1:{}", 2000 + i)),
            );
            assert_eq!(added, Ok(JoinOutcome::Added));
        }
        assert!(matches!(
            r.join("s", node("n5", "127.0.0.1:2005")),
            Err(JoinError::Full { .. })
        ));
        assert_eq!(r.snapshot().unwrap().services[0].backends.len(), 6);
    }

    #[test]
    fn only_joined_nodes_may_leave() {
        let mut r = Registry::new(&config(
            "",
            &[("a", "127.0.0.1:1001"), ("b", "127.0.0.1:1002")],
        ));
        r.join("s", node("n", "127.0.0.1:2001")).unwrap();
        r.join("s", node("m", "127.0.0.1:2002")).unwrap();
        assert!(matches!(
            r.leave("s", "a"),
            Err(JoinError::NotJoined { .. })
        ));
        assert!(matches!(
            r.leave("s", "zz"),
            Err(JoinError::NoBackend { .. })
        ));
        assert!(matches!(r.leave("x", "n"), Err(JoinError::NoService(_))));
        let left = r.leave("s", "n").unwrap();
        assert_eq!(left.address, "127.0.0.1:2001".parse().unwrap());
        let order: Vec<String> = names(&r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["a", "b", "m"]);
        assert!(!r.probe_targets().iter().any(|(k, _, _)| k.backend == "n"));
    }

    #[test]
    fn a_reload_keeps_joined_nodes_unless_the_file_names_them() {
        let mut r = Registry::new(&config("", &[("a", "127.0.0.1:1001")]));
        r.join("s", node("n", "127.0.0.1:2001")).unwrap();
        r.join("s", node("m", "127.0.0.1:2002")).unwrap();
        r.join("s", node("k", "127.0.0.1:2003")).unwrap();
        r.set_health("s", "n", Health::Up, "ok".into()).unwrap();
        r.set_admin("s", "n", AdminState::Drain).unwrap();

        // The file now configures "m" (elsewhere) and takes k's address.
        let s = r.apply(&config(
            "",
            &[
                ("a", "127.0.0.1:1001"),
                ("m", "127.0.0.1:3002"),
                ("z", "127.0.0.1:2003"),
            ],
        ));
        assert_eq!(s.backends_added, ["s/z"]);
        assert_eq!(s.backends_removed, ["s/k"]);
        assert_eq!(
            names(&r),
            [
                ("a".to_string(), false),
                ("m".to_string(), false),
                ("z".to_string(), false),
                ("n".to_string(), true),
            ]
        );
        let n = &r.service("s").unwrap().backends[3];
        assert_eq!(
            (n.health, n.admin),
            (Health::Up, AdminState::Drain),
            "a kept node keeps its state"
        );
        // A configured backend cannot leave, even one that had joined.
        assert!(matches!(
            r.leave("s", "m"),
            Err(JoinError::NotJoined { .. })
        ));

        // Another health check kind: kept, probed anew.
        let t = "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n\
                 [service.health]\nkind = \"http\"\n\
                 [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1001\"\n";
        r.apply(&Config::parse(t, None).unwrap());
        let n = &r.service("s").unwrap().backends[1];
        assert_eq!((n.config.name.as_str(), n.health), ("n", Health::Unknown));
        assert_eq!(r.snapshot().unwrap().services[0].backends.len(), 2);

        // A removed service takes its joined nodes with it.
        let t = "[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:0\"]\n\
                 [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1001\"\n";
        r.apply(&Config::parse(t, None).unwrap());
        assert!(r.service("s").is_none());
    }
}
