//! The periodic lookups of backends given by host name: every
//! `resolve_interval` the control plane starts one round (a task looking
//! every name up with tokio's resolver, which runs getaddrinfo on the
//! blocking pool, never on a worker), and applies its answers when they
//! come back: a changed address becomes a new config, published like a
//! reload (the Maglev identity is the name, so the table stays; established
//! connections are untouched). A failed lookup keeps the last good address
//! and is logged once per change of its reason. Runs on the control-plane
//! thread (the lookups on tokio's blocking pool).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ControlPlane;
use crate::config::{family_wanted, pick, Config};
use crate::health::Prober;
use crate::supervisor::Supervisor;

/// One name to look up.
struct Lookup {
    service: String,
    backend: String,
    /// `"host:port"` as written.
    host: String,
    /// From [`family_wanted`]: `Some(true)` IPv4 only.
    v4: Option<bool>,
}

/// One lookup's outcome.
pub(super) struct Looked {
    service: String,
    backend: String,
    host: String,
    result: Result<SocketAddr, String>,
}

/// The control plane's side of the periodic lookups.
pub(super) struct Resolver {
    /// Where a round's task sends its answers, and where they arrive.
    tx: mpsc::UnboundedSender<Vec<Looked>>,
    rx: mpsc::UnboundedReceiver<Vec<Looked>>,
    /// A round is under way: no second one until it answered, so a slow
    /// resolver does not pile rounds up.
    in_flight: bool,
    /// The last failure logged per (service, backend): a failure is logged
    /// when its reason changes, not at every round.
    failing: HashMap<(String, String), String>,
    /// Address changes found by [`Resolver::apply`], logged by
    /// [`Resolver::log_moves`] once they are published (so the line is
    /// true when it is read).
    moves: Vec<Move>,
}

/// A named backend's address change, for the log.
struct Move {
    service: String,
    backend: String,
    host: String,
    from: SocketAddr,
    to: SocketAddr,
}

impl Resolver {
    pub(super) fn new() -> Resolver {
        let (tx, rx) = mpsc::unbounded_channel();
        Resolver {
            tx,
            rx,
            in_flight: false,
            failing: HashMap::new(),
            moves: Vec::new(),
        }
    }

    /// Starts a round over the named backends of `config`, unless one is
    /// under way or there is none. Each lookup may take at most `limit`
    /// (then it counts as failed).
    pub(super) fn start_round(
        &mut self,
        config: &Config,
        supervisor: &Supervisor,
        limit: Duration,
    ) {
        if self.in_flight {
            return;
        }
        let lookups: Vec<Lookup> = config
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().filter_map(move |b| {
                    Some(Lookup {
                        service: s.name.clone(),
                        backend: b.name.clone(),
                        host: b.host.clone()?,
                        v4: family_wanted(s, Some(b.address)),
                    })
                })
            })
            .collect();
        if lookups.is_empty() {
            return;
        }
        self.in_flight = true;
        let tx = self.tx.clone();
        supervisor.spawn_task("backend name lookups", async move {
            let mut out = Vec::with_capacity(lookups.len());
            for l in lookups {
                let result =
                    match tokio::time::timeout(limit, tokio::net::lookup_host(&l.host)).await {
                        Ok(Ok(answers)) => pick(answers, l.v4),
                        Ok(Err(e)) => Err(format!("lookup failed: {e}")),
                        Err(_) => Err(format!("no answer within {limit:?}")),
                    };
                out.push(Looked {
                    service: l.service,
                    backend: l.backend,
                    host: l.host,
                    result,
                });
            }
            let _ = tx.send(out);
        });
    }

    /// The next round's answers.
    pub(super) async fn recv(&mut self) -> Option<Vec<Looked>> {
        let looked = self.rx.recv().await;
        self.in_flight = false;
        looked
    }

    /// Logs what changed and returns `config` with the new addresses if
    /// any backend's changed (None: nothing to publish). Answers about a
    /// backend no longer in `config`, or written differently since (a
    /// reload came in between), are dropped.
    pub(super) fn apply(&mut self, config: &Config, looked: Vec<Looked>) -> Option<Config> {
        let mut new: Option<Config> = None;
        for l in looked {
            let key = (l.service.clone(), l.backend.clone());
            let current = config
                .services
                .iter()
                .find(|s| s.name == l.service)
                .and_then(|s| s.backends.iter().find(|b| b.name == l.backend))
                .filter(|b| b.host.as_deref() == Some(l.host.as_str()));
            let Some(current) = current else {
                self.failing.remove(&key);
                continue;
            };
            match l.result {
                Err(why) => {
                    if self.failing.get(&key) != Some(&why) {
                        tracing::warn!(
                            service = %l.service, backend = %l.backend, host = %l.host,
                            keeping = %current.address, reason = %why,
                            "backend name lookup failed; keeping the last good address"
                        );
                        self.failing.insert(key, why);
                    }
                }
                Ok(addr) => {
                    if self.failing.remove(&key).is_some() {
                        tracing::info!(
                            service = %l.service, backend = %l.backend, host = %l.host,
                            address = %addr, "backend name resolves again"
                        );
                    }
                    if addr != current.address {
                        self.moves.push(Move {
                            service: l.service.clone(),
                            backend: l.backend.clone(),
                            host: l.host.clone(),
                            from: current.address,
                            to: addr,
                        });
                        let target = new.get_or_insert_with(|| config.clone());
                        if let Some(b) = target
                            .services
                            .iter_mut()
                            .find(|s| s.name == l.service)
                            .and_then(|s| s.backends.iter_mut().find(|b| b.name == l.backend))
                        {
                            b.address = addr;
                        }
                    }
                }
            }
        }
        new
    }

    /// Logs the address changes of the last [`Resolver::apply`], once
    /// published.
    pub(super) fn log_moves(&mut self) {
        for m in self.moves.drain(..) {
            tracing::info!(
                service = %m.service, backend = %m.backend, host = %m.host,
                from = %m.from, to = %m.to,
                "backend address changed; new connections go to the new one"
            );
        }
    }
}

impl ControlPlane {
    /// Puts in force `new`, the config in force with some named backends'
    /// addresses changed by a lookup: like a reload, a new snapshot
    /// (established connections untouched; the names, hence the Maglev
    /// table, stay), and the probes go to the new addresses.
    pub(super) fn apply_resolved(&mut self, prober: &mut Prober, new: Config) {
        self.registry.apply(&new);
        self.config = new;
        if let Err(e) = self.publish() {
            tracing::error!(error = %e, "cannot publish the backend table");
        }
        prober.set_targets(self.registry.probe_targets());
        self.resolver.log_moves();
    }
}

/// Ticks every `every`, the first after one `every` (start-up resolved
/// the names just before); a late tick is not made up for.
pub(super) fn ticks(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
