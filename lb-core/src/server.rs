//! Starting and stopping a whole ringlb: listeners, the control-plane
//! thread, and one pinned worker thread per core. Runs on the caller's
//! thread (the binary's main thread, the demo, or a test).
//!
//! Start-up order: raise RLIMIT_NOFILE; bind every listener (so address
//! errors surface before anything runs; a port of 0 is bound once and the
//! kernel's choice shared by all workers); start the control plane, which
//! runs the first health round (bounded by the check timeout) and publishes
//! the first snapshot; then start the workers and log `listening` per
//! address.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::{AdminState, Config, Forwarding, Workers};
use crate::control::{Registry, RegistryError};
use crate::engine::{self, EngineChoice};
use crate::snapshot::SnapshotCell;
use crate::worker::{Listener, PassiveFailure, WorkerControl, WorkerSetup};
use crate::{sys, Error, Result};

/// Listen backlog of every listener.
const BACKLOG: i32 = 4096;
/// Passive-failure reports that may wait for the control plane.
const FAILURE_QUEUE: usize = 4096;

/// Requests to the control plane.
#[derive(Debug)]
pub enum Command {
    /// Set a backend's admin state.
    Admin {
        service: String,
        backend: String,
        state: AdminState,
        reply: oneshot::Sender<Result<(), RegistryError>>,
    },
    /// Stop accepting, wait for connections up to the shutdown timeout, stop.
    Shutdown,
}

/// A way to talk to a running server from any thread.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl ServerHandle {
    /// Starts a graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// Sets a backend's admin state (drain / disable / enable) and waits
    /// until the new snapshot is published.
    pub fn set_admin(
        &self,
        service: &str,
        backend: &str,
        state: AdminState,
    ) -> Result<(), RegistryError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Admin {
            service: service.into(),
            backend: backend.into(),
            state,
            reply,
        };
        if self.commands.send(cmd).is_err() {
            return Err(RegistryError::NoService(service.into()));
        }
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(RegistryError::NoService(service.into())))
    }
}

/// Options that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Handle SIGTERM/SIGINT (graceful shutdown) in the control plane.
    /// The binary sets it; tests and the demo may not.
    pub handle_signals: bool,
}

/// A running ringlb.
#[derive(Debug)]
pub struct Server {
    handle: ServerHandle,
    listening: Vec<(String, SocketAddr)>,
    engine: EngineChoice,
    control_thread: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    worker_controls: Vec<Arc<WorkerControl>>,
}

impl Server {
    /// Starts everything; returns once every listener accepts.
    pub fn start(config: Config, options: StartOptions) -> Result<Server> {
        match sys::raise_nofile_limit() {
            Ok((old, new)) if old != new => {
                tracing::debug!(old, new, "raised the open-files limit")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
        }
        let engine = engine::choose(config.global.engine)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let worker_count = match config.global.workers {
            Workers::Count(n) => n.get(),
            Workers::Auto => cores.len().max(1),
        };

        let mut registry = Registry::new(&config);
        // One set of listeners per worker, all bound now.
        let mut per_worker: Vec<Vec<Listener>> = (0..worker_count).map(|_| Vec::new()).collect();
        let mut listening = Vec::new();
        for svc in &config.services {
            let stats = registry
                .service_stats(&svc.name)
                .ok_or_else(|| Error::io("registry", std::io::Error::other("service missing")))?;
            for &addr in &svc.listen {
                let mut bound = addr;
                for listeners in per_worker.iter_mut() {
                    let socket = sys::reuseport_listener(bound, BACKLOG)
                        .map_err(|source| Error::Listen { addr, source })?;
                    if bound.port() == 0 {
                        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
                        bound = local.ok_or(Error::Listen {
                            addr,
                            source: std::io::Error::other("no local address"),
                        })?;
                    }
                    listeners.push(Listener {
                        service: Arc::from(svc.name.as_str()),
                        socket,
                        stats: stats.clone(),
                    });
                }
                listening.push((svc.name.clone(), bound));
            }
        }

        let first = registry
            .snapshot()
            .map_err(|e| Error::io("building the first table", std::io::Error::other(e)))?;
        let cell = Arc::new(SnapshotCell::new(first));
        let (failures_tx, failures_rx) = mpsc::channel::<PassiveFailure>(FAILURE_QUEUE);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let worker_controls: Vec<Arc<WorkerControl>> = (0..worker_count)
            .map(|_| Arc::new(WorkerControl::default()))
            .collect();

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let plane = ControlPlane {
            registry,
            cell: cell.clone(),
            workers: worker_controls.clone(),
            failures: failures_rx,
            commands: commands_rx,
            shutdown_timeout: config.global.shutdown_timeout,
            handle_signals: options.handle_signals,
        };
        let control_thread = std::thread::Builder::new()
            .name("ringlb-control".into())
            .spawn(move || plane.run(ready_tx))
            .map_err(|e| Error::io("starting the control thread", e))?;
        // The control plane says when its first table is published.
        let _ = ready_rx.recv();

        tracing::info!(engine = engine.name, reason = %engine.reason, forwarding = ?config.global.forwarding, workers = worker_count, "starting workers");
        if config.global.forwarding == Forwarding::UringSplice {
            tracing::warn!("forwarding = \"uring-splice\" is not implemented yet: splicing inline (as \"splice\")");
        }
        let mut workers = Vec::with_capacity(worker_count);
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let setup = WorkerSetup {
                id,
                listeners,
                snapshots: cell.clone(),
                failures: failures_tx.clone(),
                control: worker_controls[id].clone(),
                pipe_size: config.global.pipe_size.get(),
                pipe_pool: config.global.pipe_pool,
                forwarding: config.global.forwarding,
            };
            let core = (config.global.workers == Workers::Auto)
                .then(|| cores.get(id).copied())
                .flatten();
            let choice = engine.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ringlb-w{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    if let Err(e) = engine::run(&choice, setup) {
                        tracing::error!(worker = id, error = %e, "worker stopped");
                    }
                })
                .map_err(|e| Error::io("starting a worker thread", e))?;
            workers.push(handle);
        }
        // Wait (bounded) until every worker runs its loop, so "listening"
        // means served.
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker_controls.iter().any(|c| c.engine.get().is_none()) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        for (service, addr) in &listening {
            tracing::info!(service = %service, listen = %addr, "listening");
        }
        Ok(Server {
            handle: ServerHandle {
                commands: commands_tx,
            },
            listening,
            engine,
            control_thread: Some(control_thread),
            workers,
            worker_controls,
        })
    }

    /// (service, actual address) of every listener.
    pub fn listening(&self) -> &[(String, SocketAddr)] {
        &self.listening
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    pub fn engine(&self) -> &EngineChoice {
        &self.engine
    }

    /// Per-worker counters (connections held, pipes lent, …).
    pub fn worker_controls(&self) -> &[Arc<WorkerControl>] {
        &self.worker_controls
    }

    /// Waits until the server has shut down (after `shutdown()` or a signal).
    pub fn wait(mut self) {
        if let Some(t) = self.control_thread.take() {
            let _ = t.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.control_thread.is_some() {
            self.handle.shutdown();
            if let Some(t) = self.control_thread.take() {
                let _ = t.join();
            }
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

/// Everything the control-plane thread owns.
struct ControlPlane {
    registry: Registry,
    cell: Arc<SnapshotCell>,
    workers: Vec<Arc<WorkerControl>>,
    failures: mpsc::Receiver<PassiveFailure>,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown_timeout: Duration,
    handle_signals: bool,
}

impl ControlPlane {
    fn run(self, ready: std::sync::mpsc::Sender<()>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the control plane runtime");
                return;
            }
        };
        rt.block_on(self.serve(ready));
    }

    async fn serve(mut self, ready: std::sync::mpsc::Sender<()>) {
        let _ = ready.send(());
        let (mut sigterm, mut sigint) = if self.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::terminate()).ok(),
                signal(SignalKind::interrupt()).ok(),
            )
        } else {
            (None, None)
        };
        loop {
            tokio::select! {
                Some(f) = self.failures.recv() => self.on_failure(f),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Admin { service, backend, state, reply }) => {
                        let r = self.registry.set_admin(&service, &backend, state).and_then(|changed| {
                            if changed {
                                tracing::info!(service = %service, backend = %backend, state = ?state, "admin state changed");
                                self.publish()
                            } else {
                                Ok(())
                            }
                        });
                        let _ = reply.send(r);
                    }
                    Some(Command::Shutdown) | None => break,
                },
                Some(()) = recv_signal(&mut sigterm) => { tracing::info!("SIGTERM: draining"); break }
                Some(()) = recv_signal(&mut sigint) => { tracing::info!("SIGINT: draining"); break }
            }
        }
        self.drain().await;
    }

    fn on_failure(&mut self, f: PassiveFailure) {
        tracing::debug!(service = %f.service, backend = %f.backend, address = %f.address, reason = %f.reason, "connect failed");
    }

    fn publish(&mut self) -> Result<(), RegistryError> {
        let snap = self.registry.snapshot()?;
        self.cell.publish(snap);
        for w in &self.workers {
            w.wake();
        }
        Ok(())
    }

    /// Stop accepting, wait for connections up to the timeout, stop workers.
    async fn drain(&mut self) {
        for w in &self.workers {
            w.draining.store(true, Relaxed);
            w.wake();
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        loop {
            let open: usize = self
                .workers
                .iter()
                .map(|w| w.connections.load(Relaxed))
                .sum();
            if open == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    connections = open,
                    "shutdown timeout: closing the remaining connections"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for w in &self.workers {
            w.stop.store(true, Relaxed);
            w.wake();
        }
    }
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
