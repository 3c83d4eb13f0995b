//! The control plane's event loop: the thread's runtime, the first health
//! round, then one event at a time — probe results, passive failures from
//! the workers, [`Command`]s (admin API, `ServerHandle`), signals, binary
//! upgrades — and at the end the drain. Reload lives here too: it re-reads
//! the file, binds new listen addresses, applies the registry and hands
//! listeners to the workers. Runs on the control-plane thread, which
//! `server.rs` spawns at start-up; nothing here is touched from elsewhere.
//! Every task it starts (the admin server, the probes, its heartbeat) goes
//! through the [`Supervisor`], so a panic in one ends ringlb instead of
//! vanishing into tokio.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::history;
use super::resolve::{self, Resolver};
use super::status::{status_line, ControlCounters, StatusView};
use super::{Command, Health, ListenerCopies, Registry, RegistryError, ReloadSummary};
use crate::access_log::AccessLogHandle;
use crate::budget::{self, BudgetError};
use crate::config::{Config, ConfigError};
use crate::failpoint::failpoint;
use crate::handover;
use crate::health::{BackendKey, ProbeReport, Prober};
use crate::snapshot::SnapshotCell;
use crate::stats::ConnectionBudget;
use crate::supervisor::{Supervisor, ThreadResult};
use crate::sys;
use crate::worker::{Listener, PassiveFailure, WorkerControl, WorkerMessage};

mod drain;

/// Longest a binary-upgrade exchange may stall before it is abandoned.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra wait for the first health round beyond the longest check timeout.
const FIRST_ROUND_MARGIN: Duration = Duration::from_millis(250);
/// How often the runtime bumps its heartbeat (the watchdog's evidence that
/// the control plane still turns).
const HEARTBEAT: Duration = Duration::from_millis(250);
/// How often the `STATUS=` line is refreshed (sent only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The admin server as a task for the control plane's runtime. Boxed, so
/// that the control plane need not know the admin module (which sends it
/// commands).
pub(crate) type AdminTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What start-up hands the control plane (see `server.rs`).
pub(crate) struct ControlSetup {
    /// Starts this thread's tasks, catching and reporting their panics.
    pub(crate) supervisor: Supervisor,
    /// Bumped every [`HEARTBEAT`] while the runtime turns; read by the
    /// watchdog on the main thread.
    pub(crate) heartbeat: Arc<AtomicU64>,
    /// Built from the config; its first snapshot is already published.
    pub(crate) registry: Registry,
    /// A copy of every listening socket, for binary upgrades (shared with
    /// the main thread, which stops them if a thread dies).
    pub(crate) handover: ListenerCopies,
    /// A copy of the admin API's listener (and its address), for binary
    /// upgrades; None with `admin = "off"`.
    pub(crate) admin_handover: Option<(SocketAddr, socket2::Socket)>,
    /// Where a new ringlb asks for the sockets, if upgrades are served.
    pub(crate) upgrade: Option<std::os::unix::net::UnixListener>,
    /// What SIGUSR2 runs to start a new ringlb (see `StartOptions`).
    pub(crate) upgrade_command: Option<Vec<std::ffi::OsString>>,
    /// The config in force, and where it came from (for reloads).
    pub(crate) config: Config,
    pub(crate) config_path: Option<PathBuf>,
    /// Every listen address: (service, as configured, as bound).
    pub(crate) listeners: Vec<(String, SocketAddr, SocketAddr)>,
    /// Where snapshots are published for the workers.
    pub(crate) cell: Arc<SnapshotCell>,
    /// One per worker: its counters, flags and wake-up.
    pub(crate) workers: Vec<Arc<WorkerControl>>,
    /// The process's connection budget (a reload may change it).
    pub(crate) budget: Arc<ConnectionBudget>,
    /// The workers' failed connects.
    pub(crate) failures: mpsc::Receiver<PassiveFailure>,
    /// Admin API and `ServerHandle` requests.
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    /// Handle SIGTERM/SIGINT/SIGHUP (the binary does; tests may not).
    pub(crate) handle_signals: bool,
    /// The access log, reopened on SIGUSR1 (None: off).
    pub(crate) access_log: Option<AccessLogHandle>,
    /// The admin server (its listener bound at start), spawned on this
    /// runtime once the first snapshot is out.
    pub(crate) admin: Option<AdminTask>,
}

/// Why a reload was refused (and the running config keeps serving), or
/// could not be asked for. The text is what the log and the admin API say.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Started from a config given in memory (the demo, tests): there is no
    /// file to read again.
    #[error("this ringlb was started without a config file: nothing to reload")]
    NoConfigFile,
    /// The file cannot be read, or is not a valid config
    /// (`file:line:col: reason`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The open-files limit cannot hold what the new file asks
    /// (`[global] max_connections`, or more listeners and probes).
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// A listen address new in the file cannot be bound.
    /// (`cause`, not `source`: the message carries it, and an error chain
    /// printer would print it a second time.)
    #[error("cannot listen on {addr} for service {service}: {cause}")]
    Listen {
        service: String,
        addr: SocketAddr,
        cause: std::io::Error,
    },
    /// The new backend tables cannot be built. (Unlike the others this one
    /// comes after the registry took the new file; the workers keep the last
    /// published tables.)
    #[error(transparent)]
    Publish(#[from] RegistryError),
    /// The control plane is shutting down: the request was not taken.
    #[error("ringlb is shutting down")]
    ShuttingDown,
}

/// Everything the control-plane thread owns.
pub(crate) struct ControlPlane {
    /// Starts this thread's tasks (see `ControlSetup`).
    supervisor: Supervisor,
    /// The runtime's heartbeat, for the watchdog.
    heartbeat: Arc<AtomicU64>,
    pub(super) registry: Registry,
    /// A copy of every listening socket, to hand to a new ringlb on upgrade
    /// (closed when draining, so the kernel stops queueing to them).
    handover: ListenerCopies,
    /// The same for the admin API's listener (closed when draining).
    admin_handover: Option<(SocketAddr, socket2::Socket)>,
    /// Where a new ringlb asks for the sockets.
    upgrade: Option<std::os::unix::net::UnixListener>,
    /// What SIGUSR2 runs to start a new ringlb.
    upgrade_command: Option<Vec<std::ffi::OsString>>,
    /// A takeover exchange is under way: a second request meanwhile is
    /// refused, so two new processes never both take the sockets.
    handing_over: bool,
    /// A new ringlb took over: it is the one systemd watches now, so the
    /// drain says nothing to systemd (no STOPPING=1, no watchdog pings).
    handed_over: bool,
    /// The config in force, and where it came from (for reloads).
    pub(super) config: Config,
    config_path: Option<PathBuf>,
    /// Every listen address: (service, as configured, as bound).
    listeners: Vec<(String, SocketAddr, SocketAddr)>,
    /// Reload outcomes.
    counters: ControlCounters,
    /// The `STATUS=` line last sent to systemd (sent again only changed).
    status_sent: String,
    cell: Arc<SnapshotCell>,
    workers: Vec<Arc<WorkerControl>>,
    /// The process's connection budget, shared with the workers.
    budget: Arc<ConnectionBudget>,
    failures: mpsc::Receiver<PassiveFailure>,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown_timeout: Duration,
    /// How long the health answers 503 before the listeners close.
    drain_announce: Duration,
    handle_signals: bool,
    /// The access log, reopened on SIGUSR1 (None: off).
    access_log: Option<AccessLogHandle>,
    /// The admin server, spawned from `serve`.
    admin: Option<AdminTask>,
    /// The periodic lookups of backends given by host name.
    pub(super) resolver: Resolver,
}

impl ControlPlane {
    pub(crate) fn new(setup: ControlSetup) -> ControlPlane {
        ControlPlane {
            supervisor: setup.supervisor,
            heartbeat: setup.heartbeat,
            registry: setup.registry,
            handover: setup.handover,
            admin_handover: setup.admin_handover,
            upgrade: setup.upgrade,
            upgrade_command: setup.upgrade_command,
            handing_over: false,
            handed_over: false,
            shutdown_timeout: setup.config.global.shutdown_timeout,
            drain_announce: setup.config.global.drain_announce,
            config: setup.config,
            config_path: setup.config_path,
            listeners: setup.listeners,
            counters: ControlCounters::default(),
            status_sent: String::new(),
            cell: setup.cell,
            workers: setup.workers,
            budget: setup.budget,
            failures: setup.failures,
            commands: setup.commands,
            handle_signals: setup.handle_signals,
            access_log: setup.access_log,
            admin: setup.admin,
            resolver: Resolver::new(),
        }
    }

    /// Runs the control plane on this thread until it has drained; `ready`
    /// is told once the first snapshot is published. `Err` when it cannot
    /// run at all.
    pub(crate) fn run(self, ready: std::sync::mpsc::Sender<()>) -> ThreadResult {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the control plane's runtime: {e}"))?;
        rt.block_on(self.serve(ready));
        Ok(())
    }

    async fn serve(mut self, ready: std::sync::mpsc::Sender<()>) {
        // Before anything is announced, so that a signal right after
        // "listening" drains instead of killing.
        let (mut sigterm, mut sigint, mut sighup, mut sigusr2) = if self.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::terminate()).ok(),
                signal(SignalKind::interrupt()).ok(),
                signal(SignalKind::hangup()).ok(),
                signal(SignalKind::user_defined2()).ok(),
            )
        } else {
            (None, None, None, None)
        };
        // SIGUSR1 reopens the access log (logrotate's postrotate). Taken
        // even with the log off, so that a logrotate run against a ringlb
        // without one does not kill it (SIGUSR1's default action).
        let mut sigusr1 = if self.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            signal(SignalKind::user_defined1()).ok()
        } else {
            None
        };
        // Start-up rule: every backend is probed once before the workers
        // start (bounded by the longest check timeout plus a margin), so
        // clients are neither sent to a dead node nor turned away for a
        // whole probe interval. Backends that have not answered by then stay
        // out until they do.
        let heartbeat = self.heartbeat.clone();
        self.supervisor
            .spawn_task("control-plane heartbeat", async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                loop {
                    tick.tick().await;
                    heartbeat.fetch_add(1, Relaxed);
                }
            });
        let (reports_tx, mut reports) = mpsc::unbounded_channel::<ProbeReport>();
        let mut prober = Prober::new(reports_tx);
        prober.supervise(self.supervisor.clone());
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
        let (upgraded_tx, mut upgraded) = mpsc::unbounded_channel::<std::io::Result<u32>>();
        // Ends when a new ringlb takes over: it serves the admin API on the
        // same socket.
        let admin_task = self
            .admin
            .take()
            .map(|admin| self.supervisor.spawn_task("admin server", admin));
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        let mut samples = history::SampleClock::new();
        let mut resolve_every = self.config.global.resolve_interval;
        let mut resolve_tick = resolve::ticks(resolve_every);
        loop {
            if self.config.global.resolve_interval != resolve_every {
                resolve_every = self.config.global.resolve_interval;
                resolve_tick = resolve::ticks(resolve_every);
            }
            tokio::select! {
                _ = status_tick.tick() => self.send_status(),
                periods = samples.tick() => self.registry.sample(periods),
                _ = resolve_tick.tick() => {
                    self.resolver.start_round(&self.config, &self.supervisor, resolve_every);
                }
                Some(looked) = self.resolver.recv() => {
                    if let Some(new) = self.resolver.apply(&self.config, looked) {
                        self.apply_resolved(&mut prober, new);
                    }
                }
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
                    Some(Command::Status { history, reply }) => {
                        let view = StatusView::new(&self.registry, &self.counters, history);
                        let _ = reply.send(view);
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
                Some(result) = upgraded.recv() => {
                    self.handing_over = false;
                    match result {
                        Ok(pid) => {
                            tracing::info!(pid, "a new ringlb took over the listening sockets: draining");
                            self.handed_over = true;
                            if let Some(t) = &admin_task {
                                t.abort();
                            }
                            // Under systemd the new process is the service
                            // now (and pings the watchdog from here on).
                            if let Err(e) = crate::notify::main_pid(pid) {
                                tracing::warn!(error = %e, pid, "cannot tell systemd the new main pid");
                            }
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "binary upgrade abandoned; serving on"),
                    }
                }
                Some(()) = recv_signal(&mut sigusr2) => self.spawn_upgrade(),
                Some(()) = recv_signal(&mut sigusr1) => match &self.access_log {
                    Some(log) => {
                        tracing::info!("SIGUSR1: reopening the access log");
                        log.reopen();
                    }
                    None => tracing::info!("SIGUSR1: the access log is off; nothing to reopen"),
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

    /// Hands copies of every listening socket (services' and the admin
    /// API's) to a new ringlb (blocking exchange with timeouts, off the
    /// control thread); the outcome (the new process's pid) comes back on
    /// `done`. One exchange at a time.
    fn hand_over(
        &mut self,
        stream: tokio::net::UnixStream,
        done: mpsc::UnboundedSender<std::io::Result<u32>>,
    ) {
        if self.handing_over {
            tracing::warn!("a second new ringlb asks for the listening sockets while one takes them over: refused");
            return;
        }
        let sockets = self.handover.duplicate();
        let admin: Option<(SocketAddr, socket2::Socket)> = self
            .admin_handover
            .as_ref()
            .and_then(|(a, sock)| sock.try_clone().ok().map(|c| (*a, c)));
        tracing::info!(
            sockets = sockets.len(),
            admin = admin.is_some(),
            "a new ringlb asks for the listening sockets"
        );
        self.handing_over = true;
        tokio::task::spawn_blocking(move || {
            let result = stream.into_std().and_then(|std| {
                std.set_nonblocking(false)?;
                let offer = handover::Offer {
                    services: sockets
                        .iter()
                        .map(|(s, a, sock)| (s.clone(), *a, sock.as_raw_fd()))
                        .collect(),
                    admin: admin.as_ref().map(|(a, sock)| (*a, sock.as_raw_fd())),
                };
                handover::serve_takeover(std, &offer, HANDOVER_TIMEOUT)
            });
            let _ = done.send(result);
        });
    }

    /// SIGUSR2: starts a new ringlb (the configured command line: our own
    /// binary and arguments) as our child, which takes the sockets over on
    /// the upgrade socket. Its outcome arrives like any takeover's; if it
    /// exits before, that is logged and we serve on.
    fn spawn_upgrade(&self) {
        let Some((program, args)) = self
            .upgrade_command
            .as_deref()
            .and_then(|c| c.split_first())
        else {
            tracing::warn!("SIGUSR2: an upgrade in place needs --upgrade-socket; ignored");
            return;
        };
        if self.handing_over {
            tracing::warn!("SIGUSR2: an upgrade is already under way; ignored");
            return;
        }
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            // systemd's watchdog request names our pid; the new process
            // takes it on when it becomes the main process.
            .env_remove("WATCHDOG_PID");
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(pid, program = %std::path::Path::new(program).display(), "SIGUSR2: started a new ringlb to take over");
                // Reaps it if it fails (and exits) while we still run; a
                // detached thread, so it never holds our own exit up.
                let spawned = std::thread::Builder::new()
                    .name("ringlb-upgrade-wait".into())
                    .spawn(move || {
                        if let Ok(status) = child.wait() {
                            tracing::warn!(pid, %status, "the new ringlb started by SIGUSR2 exited");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot watch the new ringlb; it is reaped when we exit");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, program = %std::path::Path::new(program).display(), "SIGUSR2: cannot start a new ringlb; serving on")
            }
        }
    }

    /// Reads the config file again and applies it. A file that does not
    /// parse or validate, or a new listen address that cannot be bound, is
    /// refused with the reason and changes nothing; established connections
    /// are never touched either way.
    fn reload(&mut self, prober: &mut Prober) -> Result<ReloadSummary, ReloadError> {
        failpoint!("control-panic-on-reload");
        // Under systemd: RELOADING=1 (with MONOTONIC_USEC) … READY=1.
        let _ = crate::notify::reloading();
        let result = self.try_reload(prober);
        let _ = crate::notify::ready();
        match &result {
            Ok(summary) => {
                self.counters.record_reload(None);
                tracing::info!(
                    services_added = ?summary.services_added,
                    services_removed = ?summary.services_removed,
                    backends_added = ?summary.backends_added,
                    backends_removed = ?summary.backends_removed,
                    "config reloaded"
                );
            }
            Err(reason) => {
                self.counters.record_reload(Some(reason.to_string()));
                tracing::error!(reason = %reason, "reload refused; the running config keeps serving");
            }
        }
        self.send_status();
        result
    }

    /// Refreshes systemd's `STATUS=` line if it changed.
    fn send_status(&mut self) {
        let services = self.registry.services().len();
        let line = status_line(
            self.budget.active(),
            services,
            self.counters.last_reload.as_ref(),
        );
        if line != self.status_sent && crate::notify::status(&line).unwrap_or(false) {
            self.status_sent = line;
        }
    }

    fn try_reload(&mut self, prober: &mut Prober) -> Result<ReloadSummary, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        let mut new = Config::from_file(&path)?;
        // Blocking on the resolver for the named backends (none: no
        // lookup); a name that fails keeps its last good address.
        for kept in new.resolve_names(Some(&self.config))? {
            tracing::warn!("{kept}");
        }
        let restart_only = restart_only_changes(&self.config.global, &new.global);
        if !restart_only.is_empty() {
            tracing::warn!(settings = ?restart_only, "these [global] settings change only at restart");
        }
        // The new budget, under the limit as it is: the settings that change
        // only at restart are counted as running.
        let mut running = new.clone();
        running.global.workers = self.config.global.workers;
        running.global.forwarding = self.config.global.forwarding;
        running.global.pipe_pool = self.config.global.pipe_pool;
        running.global.admin = self.config.global.admin;
        // getrlimit on this process fails only for a bad pointer.
        let nofile = sys::nofile_limit().map_or(u64::MAX, |(soft, _)| soft);
        let fds = budget::compute(nofile, &budget::Inputs::of(&running, self.workers.len()))?;
        // Bind the new listen addresses first: failing here changes nothing.
        // A shared address (SNI routing) is one listener, its first
        // service's.
        let wanted: Vec<(String, SocketAddr)> = new
            .listeners()
            .into_iter()
            .map(|(s, a)| (s.to_owned(), a))
            .collect();
        let freebind = |service: &str| new.services.iter().any(|s| s.name == service && s.freebind);
        let mut added: Vec<(String, SocketAddr, SocketAddr, Vec<socket2::Socket>)> = Vec::new();
        for (service, addr) in &wanted {
            if self
                .listeners
                .iter()
                .any(|(s, a, b)| serves(s, *a, *b, service, *addr))
            {
                continue;
            }
            let mut bound = *addr;
            let mut sockets = Vec::with_capacity(self.workers.len());
            for _ in &self.workers {
                let socket = sys::reuseport_listener(bound, sys::BACKLOG, freebind(service))
                    .map_err(|cause| ReloadError::Listen {
                        service: service.clone(),
                        addr: *addr,
                        cause,
                    })?;
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
        self.publish()?;
        let removed: Vec<(String, SocketAddr, SocketAddr)> = self
            .listeners
            .iter()
            .filter(|(s, a, b)| !wanted.iter().any(|(ws, wa)| serves(s, *a, *b, ws, *wa)))
            .cloned()
            .collect();
        for (service, _, bound) in &removed {
            // Our upgrade copy too: left open, it would keep the address
            // listening, the kernel completing handshakes into a queue
            // nobody accepts from (and in the SO_REUSEPORT group of a
            // listener bound again at the same address).
            self.handover.remove(service, *bound);
            for w in &self.workers {
                w.send(WorkerMessage::CloseListener {
                    service: Arc::from(service.as_str()),
                    addr: *bound,
                });
            }
            tracing::info!(service = %service, listen = %bound, "stopped listening");
        }
        self.listeners
            .retain(|(s, a, b)| wanted.iter().any(|(ws, wa)| serves(s, *a, *b, ws, *wa)));
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
        if fds.connections != self.budget.limit() {
            tracing::info!(budget = fds.connections, "connection budget: {fds}");
            self.budget.set_limit(fds.connections);
        }
        self.shutdown_timeout = new.global.shutdown_timeout;
        self.drain_announce = new.global.drain_announce;
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

    /// Builds a snapshot of the registry, publishes it and wakes the
    /// workers.
    pub(super) fn publish(&mut self) -> Result<(), RegistryError> {
        let snap = self.registry.snapshot()?;
        self.cell.publish(snap);
        for w in &self.workers {
            w.wake();
        }
        Ok(())
    }
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
    if old.access_log != new.access_log || old.access_log_format != new.access_log_format {
        out.push("access_log/access_log_format");
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

/// Whether the running listener of `service` configured as `configured`
/// and bound at `bound` is the one a new config asks for with
/// (`wanted_service`, `wanted`): the same text, or the port a `:0` got
/// written out. Closing and binding it again would reset the connections
/// in its accept queue.
fn serves(
    service: &str,
    configured: SocketAddr,
    bound: SocketAddr,
    wanted_service: &str,
    wanted: SocketAddr,
) -> bool {
    service == wanted_service && (configured == wanted || bound == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_errors_say_what_the_string_errors_said() {
        assert_eq!(
            ReloadError::NoConfigFile.to_string(),
            "this ringlb was started without a config file: nothing to reload"
        );
        let listen = ReloadError::Listen {
            service: "web".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 80)),
            cause: std::io::Error::other("in use"),
        };
        assert_eq!(
            listen.to_string(),
            "cannot listen on 127.0.0.1:80 for service web: in use"
        );
        // Said once: a chain printer (`{:#}`) adds no second "in use".
        assert!(std::error::Error::source(&listen).is_none());
        let refused = RegistryError::NoService("web".into());
        assert_eq!(
            ReloadError::from(refused.clone()).to_string(),
            refused.to_string()
        );
        assert_eq!(
            ReloadError::ShuttingDown.to_string(),
            "ringlb is shutting down"
        );
    }
}
