//! Starting and stopping a whole ringlb: listeners, the control-plane
//! thread, and one pinned worker thread per core. Runs on the caller's
//! thread (the binary's main thread, the demo, or a test).
//!
//! Start-up order: raise RLIMIT_NOFILE and work out the connection budget
//! from it (`budget.rs`; refused when the limit cannot hold it); bind
//! every listener (so address
//! errors surface before anything runs; a port of 0 is bound once and the
//! kernel's choice shared by all workers); start the control plane, which
//! runs the first health round (bounded by the check timeout) and publishes
//! the first snapshot; then start the workers and log `listening` per
//! address.
//!
//! Every thread is started through the [`Supervisor`]: a panic is caught at
//! the thread's boundary and reported, and [`Server::wait`] (the main
//! thread) returns [`Error::ThreadDied`] at once, for the binary to exit
//! non-zero. `wait` also pings systemd's watchdog while every thread's
//! heartbeat moves ([`watchdog_verdict`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::access_log::{self, AccessLogHandle};
use crate::admin::{self, AdminContext};
use crate::budget::{self, FdBudget};
use crate::config::{AdminState, Config, Forwarding, Workers};
use crate::control::command::{self, Command};
use crate::control::{
    AdminTask, ControlPlane, ControlSetup, ListenerCopies, Registry, RegistryError, ReloadError,
    ReloadSummary,
};
use crate::engine::{self, EngineChoice};
use crate::handover::{take_admin_listener, Inherited, UpgradeSocket};
use crate::snapshot::SnapshotCell;
use crate::stats::ConnectionBudget;
use crate::supervisor::{watchdog_verdict, End, Ended, Heartbeat, Supervisor, Verdict};
use crate::worker::{Listener, PassiveFailure, WorkerControl, WorkerSetup};
use crate::{notify, sys, Error, Result};

/// Passive-failure reports that may wait for the control plane.
const FAILURE_QUEUE: usize = 4096;
/// The control-plane thread's name (logs, `ThreadDied`, the watchdog).
const CONTROL_THREAD: &str = "ringlb-control";
/// Shortest time a heartbeat may stand still before the watchdog calls its
/// thread stuck: several beats of the slowest one (an idle worker turns
/// every 100 ms, the control plane beats every 250 ms).
const STUCK_FLOOR: Duration = Duration::from_secs(1);
/// How long shutdown waits for the access log's writer to write what the
/// workers queued.
const ACCESS_LOG_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long start-up waits for a control plane that died before its first
/// table to report why.
const DEATH_REPORT_WAIT: Duration = Duration::from_secs(1);

/// A way to talk to a running server from any thread.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl ServerHandle {
    /// Reloads the config file (as SIGHUP does) and waits for the outcome:
    /// what changed, or why the new file was refused (then nothing changed).
    pub fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        command::ask_blocking(&self.commands, |reply| Command::Reload { reply })
            .unwrap_or(Err(ReloadError::ShuttingDown))
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
    /// Serve binary upgrades on this Unix socket path. It is bound as
    /// `<path>.<pid>.new` and renamed over `<path>` only once this server
    /// serves, so a start that fails leaves the running ringlb's socket in
    /// place for the next try.
    pub upgrade_socket: Option<PathBuf>,
    /// The command line SIGUSR2 runs to upgrade in place (program, then
    /// arguments: the binary passes its own, which name the same
    /// `--upgrade-socket`). The new process is our child, so under
    /// systemd it stays in the unit; it takes the sockets over, and this
    /// process tells systemd `MAINPID=` once it serves. None: SIGUSR2 is
    /// ignored with a warning.
    pub upgrade_command: Option<Vec<std::ffi::OsString>>,
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
    /// How each supervised thread ended and which task died, as they do:
    /// what `wait` watches. (In a Mutex only so that a `&Server` can be
    /// shared between threads; `wait` takes it out.)
    ends: std::sync::Mutex<Receiver<End>>,
    /// The control plane's heartbeat (its runtime bumps it every 250 ms),
    /// for the watchdog.
    control_beat: Arc<AtomicU64>,
    /// The control plane's copies of the listening sockets, stopped when a
    /// thread dies.
    listeners: ListenerCopies,
    /// The access log (None: off) and its writer thread, which `wait`
    /// gives a bounded time to write what is queued once the workers are
    /// gone (it may be blocked on a stalled disk or a FIFO nobody reads).
    access_log: Option<AccessLogHandle>,
    access_log_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts everything; returns once every listener accepts. Backends
    /// given by host name are looked up first (blocking) unless the caller
    /// did ([`Config::resolve_names`]); one that does not resolve fails
    /// the start.
    pub fn start(mut config: Config, options: StartOptions) -> Result<Server> {
        if config.has_unresolved_names() {
            config.resolve_names(None)?;
        }
        match sys::raise_nofile_limit() {
            Ok((old, new)) if old != new => {
                tracing::debug!(old, new, "raised the open-files limit")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let worker_count = worker_count(config.global.workers);
        // From the limit as raised (the soft one now).
        let nofile = sys::nofile_limit()
            .map_err(|e| Error::io("reading the open-files limit", e))?
            .0;
        let fds = budget::compute(nofile, &budget::Inputs::of(&config, worker_count))?;
        tracing::info!(
            budget = fds.connections,
            nofile,
            reserved = fds.reserve.total(),
            per_connection = fds.per_connection,
            "connection budget: {fds}"
        );
        let conn_budget = Arc::new(ConnectionBudget::new(fds.connections));
        let engine = engine::choose(config.global.engine)?;

        let (supervisor, ends) = Supervisor::new();
        // Before anything serves: a log file that cannot be opened is a
        // start-up error. Its writer ends by itself once the workers are
        // gone (their queues disconnect).
        let access_log = access_log::start(
            &config.global.access_log,
            config.global.access_log_format,
            worker_count,
            &supervisor,
        )?;
        let (mut log_senders, log_handle, log_thread) = match access_log {
            Some(s) => (
                s.senders.into_iter().map(Some).collect(),
                Some(s.handle),
                Some(s.thread),
            ),
            None => (
                (0..worker_count).map(|_| None).collect::<Vec<_>>(),
                None,
                None,
            ),
        };
        let mut registry = Registry::new(&config);
        // One set of listeners per worker, all bound (or inherited) now.
        let mut inherited = options.inherited;
        // The admin API's listener first, so that a socket-activated one is
        // not mistaken for a service's.
        let admin_inherited = config
            .global
            .admin
            .and_then(|addr| take_admin_listener(addr, &mut inherited));
        let mut per_worker: Vec<Vec<Listener>> = (0..worker_count).map(|_| Vec::new()).collect();
        let mut listening = Vec::new();
        let mut listen_table = Vec::new();
        let handover = ListenerCopies::default();
        for svc in &config.services {
            let stats = registry
                .service_stats(&svc.name)
                .ok_or_else(|| Error::io("registry", std::io::Error::other("service missing")))?;
            for &addr in &svc.listen {
                // A shared address (services routing by server name) is
                // bound once, for its first service.
                if let Some(&(_, _, bound)) =
                    listen_table
                        .iter()
                        .find(|(_, a, _): &&(String, SocketAddr, SocketAddr)| {
                            addr.port() != 0 && *a == addr
                        })
                {
                    listening.push((svc.name.clone(), bound));
                    continue;
                }
                let (bound, sockets) = listener_group(svc, addr, worker_count, &mut inherited)?;
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
            if left.admin {
                tracing::info!(admin = %left.addr, "the old process's admin listener is not used by this config: closed");
            } else {
                tracing::warn!(listen = %left.addr, "an inherited socket matches no listen address of the config: closed");
            }
        }
        let mut upgrade = match &options.upgrade_socket {
            Some(path) => Some(UpgradeSocket::bind(path)?),
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
                let listener = match admin_inherited {
                    Some(socket) => admin::adopt(socket),
                    None => admin::bind(addr),
                }
                .map_err(|cause| Error::Listen { addr, cause })?;
                let ctx = AdminContext::new(
                    &config.global,
                    commands_tx.clone(),
                    worker_controls.clone(),
                    conn_budget.clone(),
                    supervisor.clone(),
                    log_handle.clone(),
                );
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

        // A copy of the admin listener, to hand over on upgrade.
        let admin_handover = match &admin {
            Some((l, _)) => {
                let dup = l
                    .try_clone()
                    .map_err(|e| Error::io("copying the admin listener for upgrades", e))?;
                admin_addr.map(|a| (a, socket2::Socket::from(dup)))
            }
            None => None,
        };
        let upgrade_listener = match &upgrade {
            Some(u) => Some(u.listener()?),
            None => None,
        };

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let control_beat = Arc::new(AtomicU64::new(0));
        let plane = ControlPlane::new(ControlSetup {
            supervisor: supervisor.clone(),
            heartbeat: control_beat.clone(),
            registry,
            handover: handover.clone(),
            admin_handover,
            upgrade: upgrade_listener,
            upgrade_command: options
                .upgrade_command
                .filter(|_| options.upgrade_socket.is_some()),
            config: config.clone(),
            config_path: options.config_path.clone(),
            listeners: listen_table,
            cell: cell.clone(),
            workers: worker_controls.clone(),
            budget: conn_budget.clone(),
            failures: failures_rx,
            commands: commands_rx,
            handle_signals: options.handle_signals,
            access_log: log_handle.clone(),
            admin: admin
                .map(|(listener, ctx)| -> AdminTask { Box::pin(admin::run(listener, ctx)) }),
        });
        let control_thread = supervisor
            .spawn_thread(CONTROL_THREAD.into(), move || plane.run(ready_tx))
            .map_err(|e| Error::io("starting the control thread", e))?;
        // The control plane says when its first table is published; if it
        // drops the sender instead, it died.
        if ready_rx.recv().is_err() {
            let reason = match ends.recv_timeout(DEATH_REPORT_WAIT) {
                Ok(end) => end.death().unwrap_or("ended").to_owned(),
                Err(_) => "ended before publishing the first table".to_owned(),
            };
            return Err(Error::ThreadDied {
                thread: CONTROL_THREAD.into(),
                reason,
            });
        }

        let forwarding = engine.engine.forwarding(config.global.forwarding);
        tracing::info!(engine = engine.engine.name(), reason = %engine.reason, forwarding = ?Forwarding::from(forwarding), workers = worker_count, "starting workers");
        if Forwarding::from(forwarding) != config.global.forwarding {
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
                budget: conn_budget.clone(),
                access_log: log_senders[id].take(),
            };
            let core = (config.global.workers == Workers::Auto)
                .then(|| cores.get(id).copied())
                .flatten();
            let choice = engine.clone();
            let control = worker_controls[id].clone();
            let handle = supervisor
                .spawn_thread(format!("ringlb-w{id}"), move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    engine::run(&choice, setup).map_err(|e| e.to_string())?;
                    // A worker's loop ends only when told to stop; any
                    // other end leaves its listeners to nobody.
                    if control.stop.load(Relaxed) {
                        Ok(())
                    } else {
                        Err("its event loop ended without being asked to stop".into())
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
        // Serving: from now on a newer ringlb finds us at the path.
        if let Some(u) = upgrade.take() {
            u.publish()?;
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
            ends: std::sync::Mutex::new(ends),
            control_beat,
            listeners: handover,
            access_log: log_handle,
            access_log_thread: log_thread,
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

    /// The access log's counters and reopen, if it is on.
    pub fn access_log(&self) -> Option<&AccessLogHandle> {
        self.access_log.as_ref()
    }

    /// Per-worker counters (connections held, pipes lent, …).
    pub fn worker_controls(&self) -> &[Arc<WorkerControl>] {
        &self.worker_controls
    }

    /// Waits until the server has shut down (after `shutdown()` or a
    /// signal): `Ok` once every thread has ended normally.
    ///
    /// Returns [`Error::ThreadDied`] as soon as any thread or control-plane
    /// task dies (a panic, or a worker loop that gave up), without waiting
    /// for the others: the caller is to exit the process, which closes
    /// every listener (clients queued on a dead worker's socket are reset
    /// instead of waiting forever) so that a fresh process can serve.
    ///
    /// Meanwhile, under systemd's watchdog (`WATCHDOG_USEC`), sends
    /// `WATCHDOG=1` every half interval while [`watchdog_verdict`] says
    /// every thread is alive and turning.
    pub fn wait(mut self) -> Result<()> {
        let ping_every = notify::watchdog_interval().map(|i| i / 2);
        let stuck_after = ping_every.map_or(STUCK_FLOOR, |p| p.max(STUCK_FLOOR));
        let start = Instant::now();
        let mut beats = vec![Heartbeat::new(
            CONTROL_THREAD,
            self.control_beat.load(Relaxed),
            start,
        )];
        for (i, w) in self.worker_controls.iter().enumerate() {
            beats.push(Heartbeat::new(
                format!("ringlb-w{i}"),
                w.turns.load(Relaxed),
                start,
            ));
        }
        let ends = self.ends.get_mut().unwrap_or_else(|p| p.into_inner());
        let ends = std::mem::replace(ends, std::sync::mpsc::channel().1);
        let mut next_ping = ping_every.map(|p| start + p);
        let mut running = beats.len();
        let mut withheld: Option<String> = None;
        let mut log_written = self.access_log_thread.is_none();
        while running > 0 {
            let end = match next_ping {
                Some(at) => match ends.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(end) => Some(end),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match ends.recv() {
                    Ok(end) => Some(end),
                    Err(_) => break,
                },
            };
            let Some(end) = end else {
                let now = Instant::now();
                self.observe(&mut beats, now);
                match watchdog_verdict(&beats, now, stuck_after) {
                    Verdict::Ping => {
                        withheld = None;
                        if let Err(e) = notify::watchdog() {
                            tracing::warn!(error = %e, "cannot ping the systemd watchdog");
                        }
                    }
                    Verdict::Withhold(why) => {
                        if withheld.as_ref() != Some(&why) {
                            tracing::error!(reason = %why, "not pinging the systemd watchdog");
                        }
                        withheld = Some(why);
                    }
                }
                next_ping = ping_every.map(|p| now + p);
                continue;
            };
            if let Some(reason) = end.death().map(str::to_owned) {
                // New clients are refused from here on, not queued on
                // sockets that live a little past the exit (io_uring).
                self.listeners.stop_all();
                // Leave the other threads as they are (the process is about
                // to exit); dropping the handles detaches them, so the drop
                // of `self` joins nothing.
                self.control_thread = None;
                self.workers.clear();
                return Err(Error::ThreadDied {
                    thread: end.name,
                    reason,
                });
            }
            if let Ended::Thread(_) = end.what {
                if end.name == access_log::WRITER_THREAD {
                    log_written = true;
                } else if let Some(beat) = beats.iter_mut().find(|b| b.name == end.name) {
                    running -= 1;
                    beat.ended(None);
                }
            }
        }
        // The workers are gone, so the access log's writer ends once it
        // has written what they queued: wait for that, bounded.
        let log_deadline = Instant::now() + ACCESS_LOG_EXIT_WAIT;
        while !log_written {
            match ends.recv_timeout(log_deadline.saturating_duration_since(Instant::now())) {
                Ok(end) if end.name == access_log::WRITER_THREAD => log_written = true,
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        "the access log's writer did not finish in time (blocked writing?); its last lines may be lost"
                    );
                    self.access_log_thread = None;
                    break;
                }
            }
        }
        if let Some(t) = self.access_log_thread.take() {
            let _ = t.join();
        }
        // Every thread has ended (or reported its end): these return at once.
        if let Some(t) = self.control_thread.take() {
            let _ = t.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(())
    }

    /// Reads every heartbeat at `now` (`beats` as `wait` built it: the
    /// control plane, then the workers in order).
    fn observe(&self, beats: &mut [Heartbeat], now: Instant) {
        if let Some((control, workers)) = beats.split_first_mut() {
            control.observe(self.control_beat.load(Relaxed), now);
            for (beat, w) in workers.iter_mut().zip(&self.worker_controls) {
                beat.observe(w.turns.load(Relaxed), now);
            }
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
            // The control plane stops the workers when it drains; if it
            // died, nobody did.
            for w in &self.worker_controls {
                w.stop.store(true, Relaxed);
                w.wake();
            }
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

/// Workers a config runs: its count, or one per core.
fn worker_count(workers: Workers) -> usize {
    match workers {
        Workers::Count(n) => n.get(),
        Workers::Auto => core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)),
    }
}

/// The connection budget `config` would get if started now: computed from
/// the hard open-files limit (start-up raises the soft one to it) and the
/// workers it would run. `ringlb check` prints it; an error is what
/// start-up would refuse with.
pub fn connection_budget(config: &Config) -> Result<FdBudget> {
    let (_, hard) =
        sys::nofile_limit().map_err(|e| Error::io("reading the open-files limit", e))?;
    let workers = worker_count(config.global.workers);
    Ok(budget::compute(hard, &budget::Inputs::of(config, workers))?)
}

/// The listening sockets of one address for `workers` workers: the
/// inherited ones that match (each worker gets one; with fewer sockets than
/// workers they are shared through dups, with more some workers get two),
/// else fresh `SO_REUSEPORT` sockets. A port of 0 is resolved by the first
/// bind and shared. Returns the bound address and one socket per worker (or
/// more).
fn listener_group(
    svc: &crate::config::Service,
    addr: SocketAddr,
    workers: usize,
    inherited: &mut Vec<Inherited>,
) -> Result<(SocketAddr, Vec<socket2::Socket>)> {
    let service = svc.name.as_str();
    let matches = |i: &Inherited| {
        !i.admin
            && i.service.as_deref().is_none_or(|s| s == service)
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
                .map_err(|cause| Error::Listen { addr, cause })?;
        }
        let k = mine.len();
        for w in k..workers {
            let dup = mine[w % k]
                .try_clone()
                .map_err(|cause| Error::Listen { addr, cause })?;
            mine.push(dup);
        }
        tracing::info!(service = %service, listen = %bound, sockets = k, "using inherited listening sockets");
        return Ok((bound, mine));
    }
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = sys::reuseport_listener(bound, sys::BACKLOG, svc.freebind)
            .map_err(|cause| Error::Listen { addr, cause })?;
        if bound.port() == 0 {
            let local = socket.local_addr().ok().and_then(|a| a.as_socket());
            bound = local.ok_or(Error::Listen {
                addr,
                cause: std::io::Error::other("no local address"),
            })?;
        }
        sockets.push(socket);
    }
    Ok((bound, sockets))
}
