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

mod join;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::admin::{self, AdminContext, StatusView};
use crate::config::{AdminState, Config, Forwarding, Workers};
use crate::control::command::{self, Command};
use crate::control::{Health, Registry, RegistryError, ReloadSummary};
use crate::engine::{self, EngineChoice};
use crate::handover::{self, Inherited};
use crate::health::{BackendKey, ProbeReport, Prober};
use crate::snapshot::SnapshotCell;
use crate::worker::{Listener, PassiveFailure, WorkerControl, WorkerMessage, WorkerSetup};
use crate::{sys, Error, Result};

/// Listen backlog of every listener.
const BACKLOG: i32 = 4096;
/// Longest a binary-upgrade exchange may stall before it is abandoned.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra wait for the first health round beyond the longest check timeout.
const FIRST_ROUND_MARGIN: Duration = Duration::from_millis(250);
/// Passive-failure reports that may wait for the control plane.
const FAILURE_QUEUE: usize = 4096;

/// A way to talk to a running server from any thread.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl ServerHandle {
    /// Reloads the config file (as SIGHUP does) and waits for the outcome:
    /// what changed, or why the new file was refused (then nothing changed).
    pub fn reload(&self) -> Result<ReloadSummary, String> {
        command::ask_blocking(&self.commands, |reply| Command::Reload { reply })
            .unwrap_or_else(|| Err("ringlb is shutting down".into()))
    }

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
        let cmd = |reply| Command::Admin {
            service: service.into(),
            backend: backend.into(),
            state,
            reply,
        };
        command::ask_blocking(&self.commands, cmd)
            .unwrap_or_else(|| Err(RegistryError::NoService(service.into())))
    }
}

/// Options that are not part of the config file.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Handle SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reload) in the
    /// control plane. The binary sets it; tests and the demo may not.
    pub handle_signals: bool,
    /// The file the config came from: reloads read it again.
    pub config_path: Option<PathBuf>,
    /// Listening sockets received from an older ringlb or from systemd,
    /// used instead of binding where their address matches.
    pub inherited: Vec<Inherited>,
    /// Serve binary upgrades on this Unix socket path.
    pub upgrade_socket: Option<PathBuf>,
}

/// Control-plane figures for metrics and tests.
#[derive(Debug, Default)]
pub struct ControlCounters {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

/// A running ringlb.
#[derive(Debug)]
pub struct Server {
    handle: ServerHandle,
    listening: Vec<(String, SocketAddr)>,
    /// The admin API's actual address (None: `admin = "off"`).
    admin_addr: Option<SocketAddr>,
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
        // One set of listeners per worker, all bound (or inherited) now.
        let mut inherited = options.inherited;
        let mut per_worker: Vec<Vec<Listener>> = (0..worker_count).map(|_| Vec::new()).collect();
        let mut listening = Vec::new();
        let mut listen_table = Vec::new();
        let mut handover = Vec::new();
        for svc in &config.services {
            let stats = registry
                .service_stats(&svc.name)
                .ok_or_else(|| Error::io("registry", std::io::Error::other("service missing")))?;
            for &addr in &svc.listen {
                let (bound, sockets) =
                    listener_group(&svc.name, addr, worker_count, &mut inherited)?;
                for (w, socket) in sockets.into_iter().enumerate() {
                    if let Ok(dup) = socket.try_clone() {
                        handover.push((svc.name.clone(), bound, dup));
                    }
                    per_worker[w % worker_count].push(Listener {
                        service: Arc::from(svc.name.as_str()),
                        addr: bound,
                        socket,
                        stats: stats.clone(),
                    });
                }
                listening.push((svc.name.clone(), bound));
                listen_table.push((svc.name.clone(), addr, bound));
            }
        }
        for left in inherited {
            tracing::warn!(listen = %left.addr, "an inherited socket matches no listen address of the config: closed");
        }
        let upgrade = match &options.upgrade_socket {
            Some(path) => {
                // The old process's socket file, if any, is ours now.
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
                    Error::io(format!("binding the upgrade socket {}", path.display()), e)
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| Error::io("upgrade socket", e))?;
                Some(l)
            }
            None => None,
        };

        let first = registry
            .snapshot()
            .map_err(|e| Error::io("building the first table", std::io::Error::other(e)))?;
        let cell = Arc::new(SnapshotCell::new(first));
        let (failures_tx, failures_rx) = mpsc::channel::<PassiveFailure>(FAILURE_QUEUE);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let worker_controls: Vec<Arc<WorkerControl>> = (0..worker_count)
            .map(|_| Arc::new(WorkerControl::default()))
            .collect();
        let admin = match config.global.admin {
            Some(addr) => {
                let listener =
                    admin::bind(addr).map_err(|source| Error::Listen { addr, source })?;
                let ctx =
                    AdminContext::new(&config.global, commands_tx.clone(), worker_controls.clone());
                Some((listener, ctx))
            }
            None => None,
        };
        let admin_addr = match &admin {
            Some((l, _)) => Some(
                l.local_addr()
                    .map_err(|e| Error::io("reading the admin address", e))?,
            ),
            None => None,
        };

        let counters = Arc::new(ControlCounters::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let plane = ControlPlane {
            registry,
            handover,
            upgrade,
            config: config.clone(),
            config_path: options.config_path.clone(),
            listeners: listen_table,
            counters: counters.clone(),
            cell: cell.clone(),
            workers: worker_controls.clone(),
            failures: failures_rx,
            commands: commands_rx,
            shutdown_timeout: config.global.shutdown_timeout,
            handle_signals: options.handle_signals,
            admin,
        };
        let control_thread = std::thread::Builder::new()
            .name("ringlb-control".into())
            .spawn(move || plane.run(ready_tx))
            .map_err(|e| Error::io("starting the control thread", e))?;
        // The control plane says when its first table is published.
        let _ = ready_rx.recv();

        let forwarding = worker_forwarding(config.global.forwarding, engine.name);
        tracing::info!(engine = engine.name, reason = %engine.reason, forwarding = ?forwarding, workers = worker_count, "starting workers");
        if forwarding != config.global.forwarding {
            tracing::warn!(
                "forwarding = {:?} needs io_uring, which this server does not run on ({}); forwarding inline as {:?}",
                config.global.forwarding.name(),
                engine.reason,
                forwarding.name()
            );
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
                forwarding,
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
            admin_addr,
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

    /// Where the admin API listens (None when `admin = "off"`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
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
    /// A copy of every listening socket, to hand to a new ringlb on upgrade
    /// (closed when draining, so the kernel stops queueing to them).
    handover: Vec<(String, SocketAddr, socket2::Socket)>,
    /// Where a new ringlb asks for the sockets.
    upgrade: Option<std::os::unix::net::UnixListener>,
    /// The config in force, and where it came from (for reloads).
    config: Config,
    config_path: Option<PathBuf>,
    /// Every listen address: (service, as configured, as bound).
    listeners: Vec<(String, SocketAddr, SocketAddr)>,
    counters: Arc<ControlCounters>,
    cell: Arc<SnapshotCell>,
    workers: Vec<Arc<WorkerControl>>,
    failures: mpsc::Receiver<PassiveFailure>,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown_timeout: Duration,
    handle_signals: bool,
    /// The admin listener, bound at start, served from `serve`.
    admin: Option<(std::net::TcpListener, AdminContext)>,
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
        // Before anything is announced, so that a signal right after
        // "listening" drains instead of killing.
        let (mut sigterm, mut sigint, mut sighup) = if self.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::terminate()).ok(),
                signal(SignalKind::interrupt()).ok(),
                signal(SignalKind::hangup()).ok(),
            )
        } else {
            (None, None, None)
        };
        // Start-up rule: every backend is probed once before the workers
        // start (bounded by the longest check timeout plus a margin), so
        // clients are neither sent to a dead node nor turned away for a
        // whole probe interval. Backends that have not answered by then stay
        // out until they do.
        let (reports_tx, mut reports) = mpsc::unbounded_channel::<ProbeReport>();
        let mut prober = Prober::new(reports_tx);
        prober.set_targets(self.registry.probe_targets());
        let longest = self
            .registry
            .services()
            .iter()
            .map(|s| s.config.health.timeout)
            .max()
            .unwrap_or_default();
        let complete = prober
            .first_round(tokio::time::Instant::now() + longest + FIRST_ROUND_MARGIN)
            .await;
        while let Ok(report) = reports.try_recv() {
            self.on_report(report);
        }
        if !complete {
            tracing::warn!("some backends did not answer their first health probe in time; they get traffic once they do");
        }
        if let Err(e) = self.publish() {
            tracing::error!(error = %e, "cannot publish the backend table");
        }
        let _ = ready.send(());
        let upgrade =
            self.upgrade
                .take()
                .and_then(|l| match tokio::net::UnixListener::from_std(l) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serve binary upgrades");
                        None
                    }
                });
        let (upgraded_tx, mut upgraded) = mpsc::unbounded_channel::<std::io::Result<()>>();
        if let Some((listener, ctx)) = self.admin.take() {
            tokio::spawn(admin::run(listener, ctx));
        }
        tokio::spawn(crate::notify::supervise_watchdog(self.workers.clone()));
        loop {
            tokio::select! {
                Some(f) = self.failures.recv() => self.on_failure(&prober, f),
                Some(report) = reports.recv() => {
                    if self.on_report(report) {
                        if let Err(e) = self.publish() {
                            tracing::error!(error = %e, "cannot publish the backend table");
                        }
                    }
                }
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
                    Some(Command::Reload { reply }) => {
                        let r = self.reload(&mut prober);
                        let _ = reply.send(r);
                    }
                    Some(Command::Weight { service, backend, weight, reply }) => {
                        let _ = reply.send(self.set_weight(&service, &backend, weight));
                    }
                    Some(Command::Status { reply }) => {
                        let _ = reply.send(StatusView::new(&self.registry));
                    }
                    Some(Command::JoinKey { reply }) => {
                        let _ = reply.send(self.config.global.join_key.clone());
                    }
                    Some(Command::Join { service, backend, reply }) => {
                        let _ = reply.send(self.join(&mut prober, &service, backend));
                    }
                    Some(Command::Leave { service, backend, reply }) => {
                        let _ = reply.send(self.leave(&mut prober, &service, &backend));
                    }
                    Some(Command::Shutdown) | None => break,
                },
                Some(stream) = accept_upgrade(&upgrade) => self.hand_over(stream, upgraded_tx.clone()),
                Some(result) = upgraded.recv() => match result {
                    Ok(()) => { tracing::info!("a new ringlb took over the listening sockets: draining"); break }
                    Err(e) => tracing::warn!(error = %e, "binary upgrade abandoned; serving on"),
                },
                Some(()) = recv_signal(&mut sighup) => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = self.reload(&mut prober);
                }
                Some(()) = recv_signal(&mut sigterm) => { tracing::info!("SIGTERM: draining"); break }
                Some(()) = recv_signal(&mut sigint) => { tracing::info!("SIGINT: draining"); break }
            }
        }
        self.drain().await;
    }

    /// Hands copies of every listening socket to a new ringlb (blocking
    /// exchange with timeouts, off the control thread); the outcome comes
    /// back on `done`.
    fn hand_over(
        &self,
        stream: tokio::net::UnixStream,
        done: mpsc::UnboundedSender<std::io::Result<()>>,
    ) {
        let sockets: Vec<(String, SocketAddr, socket2::Socket)> = self
            .handover
            .iter()
            .filter_map(|(s, a, sock)| sock.try_clone().ok().map(|c| (s.clone(), *a, c)))
            .collect();
        tracing::info!(
            sockets = sockets.len(),
            "a new ringlb asks for the listening sockets"
        );
        tokio::task::spawn_blocking(move || {
            let result = stream.into_std().and_then(|std| {
                std.set_nonblocking(false)?;
                let list: Vec<(String, SocketAddr, std::os::fd::RawFd)> = sockets
                    .iter()
                    .map(|(s, a, sock)| (s.clone(), *a, sock.as_raw_fd()))
                    .collect();
                handover::serve_takeover(std, &list, HANDOVER_TIMEOUT)
            });
            let _ = done.send(result);
        });
    }

    /// Reads the config file again and applies it. A file that does not
    /// parse or validate, or a new listen address that cannot be bound, is
    /// refused with the reason and changes nothing; established connections
    /// are never touched either way.
    fn reload(&mut self, prober: &mut Prober) -> Result<ReloadSummary, String> {
        // Under systemd: RELOADING=1 (with MONOTONIC_USEC) … READY=1.
        let _ = crate::notify::reloading();
        let result = self.try_reload(prober);
        let _ = crate::notify::ready();
        match &result {
            Ok(summary) => {
                self.counters.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(
                    services_added = ?summary.services_added,
                    services_removed = ?summary.services_removed,
                    backends_added = ?summary.backends_added,
                    backends_removed = ?summary.backends_removed,
                    "config reloaded"
                );
            }
            Err(reason) => {
                self.counters.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(reason = %reason, "reload refused; the running config keeps serving");
            }
        }
        result
    }

    fn try_reload(&mut self, prober: &mut Prober) -> Result<ReloadSummary, String> {
        let path = self
            .config_path
            .clone()
            .ok_or("this ringlb was started without a config file: nothing to reload")?;
        let new = Config::from_file(&path).map_err(|e| e.to_string())?;
        let restart_only = restart_only_changes(&self.config.global, &new.global);
        if !restart_only.is_empty() {
            tracing::warn!(settings = ?restart_only, "these [global] settings change only at restart");
        }
        // Bind the new listen addresses first: failing here changes nothing.
        let wanted: Vec<(String, SocketAddr)> = new
            .services
            .iter()
            .flat_map(|s| s.listen.iter().map(move |a| (s.name.clone(), *a)))
            .collect();
        let mut added: Vec<(String, SocketAddr, SocketAddr, Vec<socket2::Socket>)> = Vec::new();
        for (service, addr) in &wanted {
            if self
                .listeners
                .iter()
                .any(|(s, a, _)| s == service && a == addr)
            {
                continue;
            }
            let mut bound = *addr;
            let mut sockets = Vec::with_capacity(self.workers.len());
            for _ in &self.workers {
                let socket = sys::reuseport_listener(bound, BACKLOG)
                    .map_err(|e| format!("cannot listen on {addr} for service {service}: {e}"))?;
                if bound.port() == 0 {
                    bound = socket
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .unwrap_or(bound);
                }
                sockets.push(socket);
            }
            added.push((service.clone(), *addr, bound, sockets));
        }
        // Commit.
        let summary = self.registry.apply(&new);
        self.publish().map_err(|e| e.to_string())?;
        let removed: Vec<(String, SocketAddr, SocketAddr)> = self
            .listeners
            .iter()
            .filter(|(s, a, _)| !wanted.iter().any(|(ws, wa)| ws == s && wa == a))
            .cloned()
            .collect();
        for (service, _, bound) in &removed {
            for w in &self.workers {
                w.send(WorkerMessage::CloseListener {
                    service: Arc::from(service.as_str()),
                    addr: *bound,
                });
            }
            tracing::info!(service = %service, listen = %bound, "stopped listening");
        }
        self.listeners
            .retain(|(s, a, _)| wanted.iter().any(|(ws, wa)| ws == s && wa == a));
        for (service, addr, bound, sockets) in added {
            let Some(stats) = self.registry.service_stats(&service) else {
                continue;
            };
            for (w, socket) in self.workers.iter().zip(sockets) {
                if let Ok(dup) = socket.try_clone() {
                    self.handover.push((service.clone(), bound, dup));
                }
                w.send(WorkerMessage::AddListener(Listener {
                    service: Arc::from(service.as_str()),
                    addr: bound,
                    socket,
                    stats: stats.clone(),
                }));
            }
            tracing::info!(service = %service, listen = %bound, "listening");
            self.listeners.push((service, addr, bound));
        }
        prober.set_targets(self.registry.probe_targets());
        self.shutdown_timeout = new.global.shutdown_timeout;
        self.config = new;
        Ok(summary)
    }

    /// A worker could not connect: the prober counts it as a failed result
    /// and probes again at once.
    fn on_failure(&mut self, prober: &Prober, f: PassiveFailure) {
        tracing::debug!(service = %f.service, backend = %f.backend, address = %f.address, reason = %f.reason, "connect failed");
        let key = BackendKey {
            service: f.service.to_string(),
            backend: f.backend.to_string(),
        };
        prober.passive_failure(&key, f.reason.to_string());
    }

    /// Records a probe result; true if a backend's state flipped (then the
    /// caller publishes). Each flip is logged once, with its reason.
    fn on_report(&mut self, report: ProbeReport) -> bool {
        let reason = match &report.result {
            Ok(()) => "probe passed".to_string(),
            Err(r) => r.to_string(),
        };
        let key = &report.key;
        match self
            .registry
            .set_health(&key.service, &key.backend, report.state, reason.clone())
        {
            Ok(true) => {
                match report.state {
                    Health::Up => tracing::info!(backend = %key, reason = %reason, "backend is up"),
                    _ => {
                        tracing::warn!(backend = %key, state = %report.state, reason = %reason, "backend is down")
                    }
                }
                true
            }
            Ok(false) => false,
            // A report for a backend removed by a reload: nothing to do.
            Err(_) => false,
        }
    }

    /// Sets a weight and publishes; if the table cannot be built, puts the
    /// old weight back so a refused change changes nothing.
    fn set_weight(
        &mut self,
        service: &str,
        backend: &str,
        weight: NonZeroU32,
    ) -> Result<(), RegistryError> {
        let old = self.registry.set_weight(service, backend, weight)?;
        if old == weight {
            return Ok(());
        }
        match self.publish() {
            Ok(()) => {
                tracing::info!(service = %service, backend = %backend, from = old, to = weight, "weight changed");
                Ok(())
            }
            Err(e) => {
                let _ = self.registry.set_weight(service, backend, old);
                Err(e)
            }
        }
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
        // Our copies of the listening sockets would keep them open (and the
        // kernel queueing to them) after the workers close theirs.
        self.handover.clear();
        if let Err(e) = crate::notify::stopping() {
            tracing::warn!(error = %e, "cannot tell systemd we are stopping");
        }
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

/// The listening sockets of one address for `workers` workers: the
/// inherited ones that match (each worker gets one; with fewer sockets than
/// workers they are shared through dups, with more some workers get two),
/// else fresh `SO_REUSEPORT` sockets. A port of 0 is resolved by the first
/// bind and shared. Returns the bound address and one socket per worker (or
/// more).
fn listener_group(
    service: &str,
    addr: SocketAddr,
    workers: usize,
    inherited: &mut Vec<Inherited>,
) -> Result<(SocketAddr, Vec<socket2::Socket>)> {
    let matches = |i: &Inherited| {
        i.service.as_deref().is_none_or(|s| s == service)
            && (i.addr == addr || (addr.port() == 0 && i.addr.ip() == addr.ip()))
    };
    let mut mine = Vec::new();
    let mut i = 0;
    while i < inherited.len() {
        if matches(&inherited[i]) {
            mine.push(inherited.swap_remove(i).socket);
        } else {
            i += 1;
        }
    }
    if !mine.is_empty() {
        let bound = mine[0]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
        for s in &mine {
            s.set_nonblocking(true)
                .map_err(|source| Error::Listen { addr, source })?;
        }
        let k = mine.len();
        for w in k..workers {
            let dup = mine[w % k]
                .try_clone()
                .map_err(|source| Error::Listen { addr, source })?;
            mine.push(dup);
        }
        tracing::info!(service = %service, listen = %bound, sockets = k, "using inherited listening sockets");
        return Ok((bound, mine));
    }
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = sys::reuseport_listener(bound, BACKLOG)
            .map_err(|source| Error::Listen { addr, source })?;
        if bound.port() == 0 {
            let local = socket.local_addr().ok().and_then(|a| a.as_socket());
            bound = local.ok_or(Error::Listen {
                addr,
                source: std::io::Error::other("no local address"),
            })?;
        }
        sockets.push(socket);
    }
    Ok((bound, sockets))
}

/// `[global]` settings a running ringlb cannot change (threads, rings and
/// pools are sized at start).
fn restart_only_changes(
    old: &crate::config::Global,
    new: &crate::config::Global,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.workers != new.workers {
        out.push("workers");
    }
    if old.engine != new.engine {
        out.push("engine");
    }
    if old.forwarding != new.forwarding {
        out.push("forwarding");
    }
    if old.pipe_size != new.pipe_size || old.pipe_pool != new.pipe_pool {
        out.push("pipe_size/pipe_pool");
    }
    if old.admin != new.admin || old.admin_allow != new.admin_allow {
        out.push("admin/admin_allow");
    }
    out
}

async fn accept_upgrade(l: &Option<tokio::net::UnixListener>) -> Option<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.ok().map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The forwarding workers run on `engine`: the configured one, or its
/// inline equivalent when it needs io_uring and the engine is not it
/// (`engine = "auto"` fell back to epoll; the config check refuses an
/// explicit `engine = "epoll"`).
fn worker_forwarding(configured: Forwarding, engine: &str) -> Forwarding {
    if engine == "uring" {
        configured
    } else {
        configured.inline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_off_io_uring_forward_inline_as_the_uring_modes_equivalent() {
        use Forwarding::*;
        // engine = "auto" fell back to epoll: the inline equivalent.
        assert_eq!(worker_forwarding(UringCopy, "epoll"), Copy);
        assert_eq!(worker_forwarding(UringSplice, "epoll"), Splice);
        assert_eq!(worker_forwarding(Auto, "epoll"), Auto);
        // On io_uring, as configured.
        assert_eq!(worker_forwarding(UringCopy, "uring"), UringCopy);
        assert_eq!(worker_forwarding(UringSplice, "uring"), UringSplice);
    }
}
