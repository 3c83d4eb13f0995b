//! Shared machinery of the integration suite: the `ringlb` process under
//! test ([`Ringlb`]), its config ([`LbConfig`]), test backends
//! ([`Backend`], [`Blackhole`]), clients bound to distinct loopback sources
//! ([`connect_from`]), the engine and data-plane matrices
//! ([`for_each_engine`], [`for_each_variant`]), deadline-bounded waiting
//! ([`Deadline`], [`Counter`]) and scrapes of ringlb's admin `/metrics`
//! ([`Metrics`]).
//!
//! Everything here runs on the test's own thread plus helper threads it
//! spawns (stderr reader, exit waiter, backend acceptors and per-connection
//! handlers); every helper stops when its owner is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// How long ringlb may take to log its `listening` lines.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped ringlb (or a `check` run) may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of test clients: the kernel completes the handshake with
/// ringlb's listener (or its backlog), so this only trips if nothing listens.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default read/write timeout on client and backend sockets, so that a
/// wrong balancer makes a test fail instead of hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Stack size of the many small helper threads (clients, handlers).
pub const SMALL_STACK: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// Engines

/// The engines every forwarding test runs against.
///
/// [`for_each_engine`] skips `"uring"`, with a printed reason, on kernels
/// or sandboxes that block io_uring.
pub fn engines() -> Vec<&'static str> {
    vec!["epoll", "uring"]
}

/// One cell of the data-plane matrix: an engine and a forwarding strategy
/// (`"auto"`, the default, is left out of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub engine: &'static str,
    pub forwarding: &'static str,
}

impl From<&'static str> for Variant {
    /// An engine with the default forwarding.
    fn from(engine: &'static str) -> Variant {
        Variant {
            engine,
            forwarding: "auto",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.forwarding {
            "auto" => f.write_str(self.engine),
            forwarding => write!(f, "{}/{forwarding}", self.engine),
        }
    }
}

/// The data-plane matrix: every engine with its default forwarding, plus
/// io_uring's completion-driven strategies (the ring's own RECV/SEND
/// through a provided buffer ring, and IORING_OP_SPLICE), which share no
/// code with the inline pumps and so need the same proofs.
pub fn variants() -> Vec<Variant> {
    let mut all: Vec<Variant> = engines().into_iter().map(Variant::from).collect();
    for forwarding in ["uring-copy", "uring-splice"] {
        all.push(Variant {
            engine: "uring",
            forwarding,
        });
    }
    all
}

/// Runs `test` once per engine in [`engines`], skipping (with a printed
/// reason) engines this machine cannot run.
pub fn for_each_engine(test: &str, mut body: impl FnMut(&'static str)) {
    for_each_of(test, engines().into_iter().map(Variant::from), |v| {
        body(v.engine)
    });
}

/// Runs `test` once per [`variants`] cell, skipping (with a printed
/// reason) engines this machine cannot run: for the tests of the data
/// plane itself (bytes, FINs, resets, timeouts, limits, failover).
pub fn for_each_variant(test: &str, body: impl FnMut(Variant)) {
    for_each_of(test, variants(), body);
}

fn for_each_of(
    test: &str,
    cells: impl IntoIterator<Item = Variant>,
    mut body: impl FnMut(Variant),
) {
    for variant in cells {
        if let Some(reason) = engine_unavailable(variant.engine) {
            println!("{test}: SKIPPED for {variant}: {reason}");
            continue;
        }
        println!("{test}: {variant}");
        body(variant);
    }
}

/// Why this machine cannot run `engine`, if it cannot.
fn engine_unavailable(engine: &str) -> Option<String> {
    match engine {
        "uring" => uring_unavailable(),
        _ => None,
    }
}

/// Tries `io_uring_setup(2)` the way the engine would: seccomp profiles,
/// gVisor and `kernel.io_uring_disabled` all make it fail.
///
/// Probed once, on a short-lived thread of its own: tearing a ring down
/// sends task work to the thread that created it, whose next blocking
/// socket call with a timeout then fails with EINTR.
fn uring_unavailable() -> Option<String> {
    static ANSWER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            thread::spawn(probe_uring)
                .join()
                .unwrap_or_else(|_| Some("the io_uring probe panicked".into()))
        })
        .clone()
}

fn probe_uring() -> Option<String> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes exactly one
    // struct io_uring_params through the pointer, which points to a live,
    // writable 120-byte buffer owned by this frame.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Some(format!(
            "io_uring_setup failed: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a descriptor io_uring_setup just returned to us and
    // nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    None
}

// ---------------------------------------------------------------------------
// Load isolation

/// Held exclusively by the throughput-heavy test and shared by all others,
/// so timing-sensitive tests never run beside hundreds of busy connections
/// on a 2-core machine.
static LOAD: RwLock<()> = RwLock::new(());

/// For the test that saturates the machine: runs alone.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    LOAD.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// For every other test: runs beside its peers, never beside the heavy one.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Deadlines and counters

/// A point in time a wait must not pass.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now() + timeout)
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// A count that threads bump and tests wait on (no polling).
#[derive(Debug, Default)]
pub struct Counter {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Counter {
    pub fn increment(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count += 1;
        self.changed.notify_all();
    }

    pub fn get(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the count is at least `target` or `timeout` passes;
    /// returns the count at that moment.
    pub fn wait_for(&self, target: usize, timeout: Duration) -> usize {
        let guard = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |count| *count < target)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

// ---------------------------------------------------------------------------
// Temporary directories

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ringlb-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Config

/// A ringlb config the tests build in code and render as TOML.
#[derive(Debug, Clone)]
pub struct LbConfig {
    pub workers: u32,
    pub engine: String,
    /// `forwarding` in `[global]`; "auto" (the default) is not written.
    pub forwarding: String,
    /// The admin API on 127.0.0.1:0 (its port is read from the log), for
    /// tests that scrape `/metrics`; off otherwise.
    pub admin: bool,
    /// More `[global]` lines, as written (`pipe_pool = 4`, …).
    pub global_extra: Vec<String>,
    /// Start ringlb with this open-files limit (soft and hard), set in the
    /// child before it runs; None: inherited.
    pub nofile: Option<u64>,
    pub services: Vec<ServiceConfig>,
}

/// One `[[service]]`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    /// Listen addresses as written in the config (port 0 = any).
    pub listen: Vec<String>,
    pub balance: String,
    pub connect_timeout: String,
    pub idle_timeout: String,
    pub max_connections: Option<u32>,
    pub connect_attempts: u32,
    /// More service lines, as written (`tcp_user_timeout = "2s"`, …).
    pub extra: Vec<String>,
    /// The `[service.health]` table's lines (default `kind = "none"`).
    pub health: String,
    pub backends: Vec<BackendConfig>,
}

/// One `[[service.backend]]`.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Written as `address` instead of `address` when set: a backend given
    /// by host name (`"name:port"`).
    pub host: Option<String>,
    pub weight: u32,
    /// More backend lines, as written (`send_proxy = "v1"`, …).
    pub extra: Vec<String>,
}

impl BackendConfig {
    pub fn new(name: &str, address: SocketAddr) -> BackendConfig {
        BackendConfig {
            name: name.to_owned(),
            address,
            host: None,
            weight: 100,
            extra: Vec::new(),
        }
    }
}

impl From<&Backend> for BackendConfig {
    fn from(backend: &Backend) -> BackendConfig {
        BackendConfig::new(backend.name(), backend.addr())
    }
}

impl LbConfig {
    /// Two workers, admin off, one service `web` on 127.0.0.1:0, Maglev,
    /// no active health checks, the given backends in the given order.
    pub fn single(variant: impl Into<Variant>, backends: Vec<BackendConfig>) -> LbConfig {
        let variant = variant.into();
        LbConfig {
            workers: 2,
            engine: variant.engine.to_owned(),
            forwarding: variant.forwarding.to_owned(),
            admin: false,
            global_extra: Vec::new(),
            nofile: None,
            services: vec![ServiceConfig {
                name: "web".to_owned(),
                listen: vec!["127.0.0.1:0".to_owned()],
                balance: "maglev".to_owned(),
                connect_timeout: "500ms".to_owned(),
                idle_timeout: "15m".to_owned(),
                max_connections: None,
                connect_attempts: 3,
                extra: Vec::new(),
                health: "kind = \"none\"".to_owned(),
                backends,
            }],
        }
    }

    /// [`LbConfig::single`] over running test backends.
    pub fn over(variant: impl Into<Variant>, backends: &[&Backend]) -> LbConfig {
        LbConfig::single(variant, backends.iter().map(|b| (*b).into()).collect())
    }

    /// The first (usually only) service.
    pub fn service(&mut self) -> &mut ServiceConfig {
        &mut self.services[0]
    }

    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[global]");
        let _ = writeln!(t, "workers = {}", self.workers);
        let _ = writeln!(t, "engine = {:?}", self.engine);
        if self.forwarding != "auto" {
            let _ = writeln!(t, "forwarding = {:?}", self.forwarding);
        }
        let admin = if self.admin { "127.0.0.1:0" } else { "off" };
        let _ = writeln!(t, "admin = {admin:?}");
        for line in &self.global_extra {
            let _ = writeln!(t, "{line}");
        }
        for s in &self.services {
            let _ = writeln!(t, "\n[[service]]");
            let _ = writeln!(t, "name = {:?}", s.name);
            let _ = writeln!(t, "listen = {:?}", s.listen);
            let _ = writeln!(t, "balance = {:?}", s.balance);
            let _ = writeln!(t, "connect_timeout = {:?}", s.connect_timeout);
            let _ = writeln!(t, "idle_timeout = {:?}", s.idle_timeout);
            if let Some(max) = s.max_connections {
                let _ = writeln!(t, "max_connections = {max}");
            }
            let _ = writeln!(t, "connect_attempts = {}", s.connect_attempts);
            for line in &s.extra {
                let _ = writeln!(t, "{line}");
            }
            let _ = writeln!(t, "\n[service.health]\n{}", s.health);
            for b in &s.backends {
                let _ = writeln!(t, "\n[[service.backend]]");
                let _ = writeln!(t, "name = {:?}", b.name);
                match &b.host {
                    Some(host) => {
                        let _ = writeln!(t, "address = {host:?}");
                    }
                    None => {
                        let _ = writeln!(t, "address = \"{}\"", b.address);
                    }
                }
                let _ = writeln!(t, "weight = {}", b.weight);
                for line in &b.extra {
                    let _ = writeln!(t, "{line}");
                }
            }
        }
        t
    }
}

// ---------------------------------------------------------------------------
// The ringlb process

/// A running `ringlb --config FILE`: started by [`Ringlb::start`], which
/// returns once every listen address has been logged as listening; stopped
/// on drop (SIGTERM, then SIGKILL), printing its stderr if the test failed.
pub struct Ringlb {
    /// The child's pid, for signals (the exit waiter thread owns the Child).
    pid: libc::pid_t,
    /// Delivers the exit status once the process has been reaped.
    exit: Receiver<ExitStatus>,
    /// Set once the exit status has been received.
    exited: Option<ExitStatus>,
    /// Every stderr line so far, for failure messages.
    stderr: Arc<Mutex<String>>,
    /// Each stderr line as it arrives, to find the `listening` lines.
    lines: Receiver<String>,
    /// (service, actual bound address) from the `listening` lines.
    listening: Vec<(String, SocketAddr)>,
    /// The admin API's bound address, if the config turned it on.
    admin: Option<SocketAddr>,
    /// The read end of stderr once the reader stopped reading it
    /// ([`StderrOnceReady::Hold`]): kept open until ringlb has exited.
    _held_stderr: Arc<Mutex<Option<Box<dyn Read + Send>>>>,
    /// The config file's directory; removed on drop.
    _dir: TempDir,
    /// The config text, for failure messages.
    config: String,
}

impl Ringlb {
    /// Starts ringlb with `config` and waits (up to [`READY_TIMEOUT`]) for a
    /// `listening` line per configured listen address.
    pub fn start(config: &LbConfig) -> Ringlb {
        Ringlb::start_with_env(config, &[])
    }

    /// [`Ringlb::start`] with extra environment variables.
    pub fn start_with_env(config: &LbConfig, env: &[(&str, &std::ffi::OsStr)]) -> Ringlb {
        Ringlb::start_with_stderr(config, env, StderrOnceReady::Read)
    }

    /// [`Ringlb::start_with_env`], then `once_ready` to ringlb's stderr
    /// right after the last line the start waits for (logging tests).
    pub fn start_with_stderr(
        config: &LbConfig,
        env: &[(&str, &std::ffi::OsStr)],
        once_ready: StderrOnceReady,
    ) -> Ringlb {
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for s in &config.services {
            *expected.entry(s.name.clone()).or_default() += s.listen.len();
        }
        let ready_lines = expected.values().sum::<usize>() + usize::from(config.admin);
        let mut lb = Ringlb::spawn(
            &config.to_toml(),
            env,
            config.nofile,
            (ready_lines, once_ready),
        );
        lb.wait_ready(&expected, config.admin);
        if config.forwarding != "auto" {
            lb.expect_forwarding(&config.forwarding);
        }
        lb
    }

    /// The workers forward as configured, not a fallback: the start line
    /// names the strategy (`uring-copy` logs as `UringCopy`) and no worker
    /// said it forwards inline instead.
    fn expect_forwarding(&self, forwarding: &str) {
        let logged: String = forwarding
            .split('-')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect();
        let stderr = self.stderr();
        assert!(
            stderr.contains(&format!("forwarding={logged}")) && !stderr.contains("forwards inline"),
            "ringlb does not forward with {forwarding:?}:\n{stderr}"
        );
    }

    /// `once_ready`: after this many ready lines (`listening`, admin API
    /// listening), do this to stderr.
    fn spawn(
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
        nofile: Option<u64>,
        once_ready: (usize, StderrOnceReady),
    ) -> Ringlb {
        let dir = TempDir::new("lb");
        let path = dir.write("ringlb.toml", config);
        let mut cmd = ringlb_command();
        if let Some(limit) = nofile {
            with_nofile(&mut cmd, limit);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringlb");
        let pid = child.id() as libc::pid_t;
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (line_tx, lines) = mpsc::channel();
        let held_stderr = Arc::new(Mutex::new(None));
        let (ready_lines, then) = once_ready;
        let cut = (then != StderrOnceReady::Read).then(|| ReadyCut {
            ready_lines,
            then,
            held: Arc::clone(&held_stderr),
        });
        spawn_line_reader(stderr_pipe, Arc::clone(&stderr), Some(line_tx), cut);
        let exit = spawn_exit_waiter(child);
        Ringlb {
            pid,
            exit,
            exited: None,
            stderr,
            lines,
            listening: Vec::new(),
            admin: None,
            _held_stderr: held_stderr,
            _dir: dir,
            config: config.to_owned(),
        }
    }

    /// Waits for the `listening` lines of `expected` and, with `admin`, for
    /// the admin API's.
    fn wait_ready(&mut self, expected: &BTreeMap<String, usize>, admin: bool) {
        let deadline = Deadline::after(READY_TIMEOUT);
        let mut seen: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
        let ready = |seen: &BTreeMap<String, BTreeSet<SocketAddr>>, admin_seen: bool| {
            expected
                .iter()
                .all(|(svc, n)| seen.get(svc).map_or(0, BTreeSet::len) >= *n)
                && (admin_seen || !admin)
        };
        while !ready(&seen, self.admin.is_some()) {
            match self.lines.recv_timeout(deadline.remaining()) {
                Ok(line) => {
                    if let Some(addr) = parse_admin_listening(&line) {
                        self.admin = Some(addr.parse().unwrap_or_else(|e| {
                            panic!("bad admin address in `{line}`: {e}\n{}", self.report())
                        }));
                    }
                    if let Some((service, addr)) = parse_listening(&line) {
                        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| {
                            panic!("bad address in `{line}`: {e}\n{}", self.report())
                        });
                        assert_ne!(
                            addr.port(),
                            0,
                            "ringlb logged port 0 instead of the bound port: `{line}`\n{}",
                            self.report()
                        );
                        seen.entry(service).or_default().insert(addr);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "ringlb did not log `listening` for every listen address{} within {:?} \
                     (expected {expected:?}, saw {seen:?}, admin {:?})\n{}",
                    if admin { " and the admin API" } else { "" },
                    READY_TIMEOUT,
                    self.admin,
                    self.report()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(EXIT_TIMEOUT);
                    panic!(
                        "ringlb closed stderr before listening (exit: {status:?})\n{}",
                        self.report()
                    )
                }
            }
        }
        for (service, addrs) in &seen {
            let want = expected.get(service).copied().unwrap_or(0);
            assert_eq!(
                addrs.len(),
                want,
                "service {service}: {want} listen addresses configured but {} bound \
                 ({addrs:?}); port 0 must resolve to one port shared by all workers\n{}",
                addrs.len(),
                self.report()
            );
        }
        self.listening = seen
            .into_iter()
            .flat_map(|(svc, addrs)| addrs.into_iter().map(move |a| (svc.clone(), a)))
            .collect();
    }

    /// The only listen address of the only service.
    pub fn addr(&self) -> SocketAddr {
        assert_eq!(self.listening.len(), 1, "addr() needs exactly one listener");
        self.listening[0].1
    }

    /// Every bound address of `service`.
    pub fn addrs(&self, service: &str) -> Vec<SocketAddr> {
        self.listening
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, a)| *a)
            .collect()
    }

    /// The process id, for reading /proc/PID.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The admin API's address; the config must have turned it on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .expect("admin_addr() needs LbConfig::admin = true")
    }

    /// Scrapes `/metrics` from the admin API (which the config must have
    /// turned on).
    pub fn metrics(&self) -> Metrics {
        let mut s = TcpStream::connect_timeout(&self.admin_addr(), CLIENT_CONNECT_TIMEOUT)
            .expect("connect to the admin API");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n")
            .expect("send the metrics request");
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("reading /metrics: {e}\n{}", self.report()));
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("/metrics answer without a head: {answer:?}"));
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "/metrics answered {head:?}\n{}",
            self.report()
        );
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "/metrics answer is chunked; this reader expects a plain body: {head:?}"
        );
        Metrics {
            text: body.to_owned(),
        }
    }

    /// `POST path` (no body) to the admin API, which the config must have
    /// turned on; the answer's status line. `timeout` bounds each read and
    /// write, so a control plane that stopped answering fails the caller.
    pub fn admin_post(&self, path: &str, timeout: Duration) -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.admin_addr(), CLIENT_CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: ringlb\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    }

    /// `GET path` from the admin API (which the config must have turned
    /// on): the status line; `timeout` bounds the connect, each read and
    /// each write.
    pub fn admin_get(&self, path: &str, timeout: Duration) -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.admin_addr(), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    }

    /// Everything ringlb wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Config and stderr, for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "--- ringlb config ---\n{}--- ringlb stderr ---\n{}---",
            self.config,
            self.stderr()
        )
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.signal(signal);
        }
        self.wait_exit(timeout)
    }

    /// Replaces the config file ringlb was started with (for reloads).
    pub fn rewrite_config(&mut self, config: &str) {
        self._dir.write("ringlb.toml", config);
        self.config = config.to_owned();
    }

    /// Waits up to `timeout` for a new stderr line containing `needle`;
    /// returns it, or None at the deadline.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Deadline::after(timeout);
        loop {
            match self.lines.recv_timeout(deadline.remaining()) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) takes plain integers. The pid is our child's and
        // has not been reaped yet (exit status not received), so it cannot
        // name another process.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Waits up to `timeout` for ringlb to exit by itself; its status, or
    /// None at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.exit.recv_timeout(timeout).ok();
        }
        self.exited
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        if self.exited.is_none() && self.signal_and_wait(libc::SIGTERM, EXIT_TIMEOUT).is_none() {
            eprintln!("ringlb (pid {}) ignored SIGTERM; sending SIGKILL", self.pid);
            let _ = self.signal_and_wait(libc::SIGKILL, EXIT_TIMEOUT);
        }
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

/// One scrape of ringlb's `/metrics` (Prometheus text format).
#[derive(Debug, Clone)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// The whole exposition, as scraped.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of the unlabelled sample `name`, if /metrics has one.
    pub fn value(&self, name: &str) -> Option<u64> {
        self.text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.trim().parse().ok()
        })
    }

    /// The value of `family{label="value"}`, if /metrics has it.
    pub fn labelled(&self, family: &str, label: &str, value: &str) -> Option<u64> {
        let prefix = format!("{family}{{{label}=\"{value}\"}} ");
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// The value of the sample written exactly `selector` (name and label
    /// set as ringlb writes them, e.g. `f{service="web",backend="a"}`).
    pub fn sample(&self, selector: &str) -> Option<u64> {
        self.text.lines().find_map(|line| {
            let rest = line.strip_prefix(selector)?.strip_prefix(' ')?;
            rest.trim().parse().ok()
        })
    }

    /// The value of `family{…,backend="name"}` (the first such sample).
    pub fn for_backend(&self, family: &str, backend: &str) -> Option<u64> {
        let label = format!("backend=\"{backend}\"");
        self.text.lines().find_map(|line| {
            let rest = line.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            labels
                .split(',')
                .any(|l| l == label)
                .then(|| value.trim().parse().ok())?
        })
    }

    /// The sum of every sample of `family` over all its label sets (e.g.
    /// the connections of all workers); panics if there is none.
    pub fn total(&self, family: &str) -> u64 {
        let samples: Vec<u64> =
            self.text
                .lines()
                .filter_map(|line| {
                    let rest = line.strip_prefix(family)?;
                    let labels_and_value = rest.strip_prefix(' ').or_else(|| {
                        rest.starts_with('{')
                            .then(|| rest.rsplit_once("} ").map(|(_, v)| v))
                            .flatten()
                    })?;
                    let value = labels_and_value.split_whitespace().next()?;
                    Some(value.parse().unwrap_or_else(|e| {
                        panic!("{family}: sample `{line}` is not an integer: {e}")
                    }))
                })
                .collect();
        assert!(
            !samples.is_empty(),
            "no sample of {family} in /metrics:\n{}",
            self.text
        );
        samples.iter().sum()
    }
}

/// Runs `cmd` with an open-files limit of `limit` (soft and hard), set in
/// the child between fork and exec (raising the hard limit needs root).
pub fn with_nofile(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setrlimit(2), which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// `ringlb` from this build, with a predictable environment: the default
/// log filter (no inherited RUST_LOG) and no colour codes in the log.
pub fn ringlb_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringlb"));
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd
}

/// The outcome of a ringlb run that is expected to exit by itself.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs ringlb with `args` to completion, killing it (and failing) if it
/// has not exited within [`EXIT_TIMEOUT`].
pub fn run_to_exit(args: &[&std::ffi::OsStr]) -> Finished {
    let mut child = ringlb_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringlb");
    let pid = child.id() as libc::pid_t;
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let out_reader = spawn_line_reader(
        child.stdout.take().expect("piped stdout"),
        Arc::clone(&stdout),
        None,
        None,
    );
    let err_reader = spawn_line_reader(
        child.stderr.take().expect("piped stderr"),
        Arc::clone(&stderr),
        None,
        None,
    );
    let exit = spawn_exit_waiter(child);
    let status = match exit.recv_timeout(EXIT_TIMEOUT) {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: kill(2) on our own child, not yet reaped (no status
            // received), so the pid still names it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = exit.recv_timeout(EXIT_TIMEOUT);
            panic!(
                "ringlb {args:?} did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}",
                stderr.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
    };
    // The pipes close when the process exits; the readers then finish.
    let _ = out_reader.join();
    let _ = err_reader.join();
    let take = |s: &Arc<Mutex<String>>| s.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Finished {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    }
}

/// What a test does with ringlb's stderr once ringlb is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrOnceReady {
    /// Keep reading it to the end (every test but the logging ones).
    Read,
    /// Close the read end, as `ringlb 2>&1 | head` does when head exits.
    Close,
    /// Keep the read end open but read no more: a log reader that stalls.
    /// The pipe (64 KiB) then fills up.
    Hold,
}

/// Where a line reader stops reading: after `ready_lines` lines that
/// announce readiness it does `then`, parking the pipe in `held` to hold it.
struct ReadyCut {
    ready_lines: usize,
    then: StderrOnceReady,
    held: Arc<Mutex<Option<Box<dyn Read + Send>>>>,
}

/// Reads `pipe` line by line into `sink` (and `lines`, if given) until EOF,
/// or until `cut` says to stop.
fn spawn_line_reader(
    pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    lines: Option<Sender<String>>,
    cut: Option<ReadyCut>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name("ringlb-output".into())
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            let mut ready_seen = 0;
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw).into_owned();
                        sink.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_str(&line);
                        if parse_listening(&line).is_some()
                            || parse_admin_listening(&line).is_some()
                        {
                            ready_seen += 1;
                        }
                        if let Some(tx) = &lines {
                            let _ = tx.send(line.trim_end().to_owned());
                        }
                        if let Some(cut) = cut.as_ref().filter(|c| ready_seen >= c.ready_lines) {
                            if cut.then == StderrOnceReady::Hold {
                                *cut.held.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(Box::new(reader));
                            }
                            // Close: returning drops the read end.
                            return;
                        }
                    }
                }
            }
        })
        .expect("spawn output reader")
}

/// Reaps `child` on a thread and delivers its exit status.
fn spawn_exit_waiter(mut child: Child) -> Receiver<ExitStatus> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("ringlb-wait".into())
        .stack_size(SMALL_STACK)
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        })
        .expect("spawn exit waiter");
    rx
}

/// Finds `listening service=NAME listen=ADDR` in a log line. Colour codes
/// are stripped and quotes around values tolerated: the contract is the
/// words, not the log formatter's styling.
pub fn parse_listening(line: &str) -> Option<(String, String)> {
    const KEY: &str = "listening service=";
    let clean = strip_ansi(line);
    let rest = &clean[clean.find(KEY)? + KEY.len()..];
    let (service, rest) = rest.split_once(' ')?;
    let addr = rest.strip_prefix("listen=")?.split_whitespace().next()?;
    Some((unquote(service), unquote(addr)))
}

/// Finds `admin API listening admin=ADDR` in a log line.
pub fn parse_admin_listening(line: &str) -> Option<String> {
    const KEY: &str = "admin API listening admin=";
    let clean = strip_ansi(line);
    let rest = &clean[clean.find(KEY)? + KEY.len()..];
    Some(unquote(rest.split_whitespace().next()?))
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_owned()
}

/// Removes ANSI CSI sequences (`ESC [ … final`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Backends

/// A test backend on loopback: a listener whose accept thread hands each
/// connection to `handler` on its own thread and counts it. Stops accepting
/// on drop; handlers end when their peer (ringlb) closes.
pub struct Backend {
    name: String,
    addr: SocketAddr,
    /// Connections accepted so far (ringlb's backend-side connections).
    accepted: Arc<Counter>,
    /// Tells the accept thread to stop at its next wake-up.
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// A backend on `ip`:0 running `handler` per connection.
    pub fn spawn<F>(name: &str, ip: IpAddr, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::spawn_at(name, SocketAddr::new(ip, 0), handler)
    }

    /// A backend on `addr` running `handler` per connection.
    pub fn spawn_at<F>(name: &str, addr: SocketAddr, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = listen(addr);
        let addr = listener.local_addr().expect("backend addr");
        let accepted = Arc::new(Counter::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let acceptor = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            thread::Builder::new()
                .name(format!("backend-{name}"))
                .stack_size(SMALL_STACK)
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = conn else { continue };
                        accepted.increment();
                        let _ = stream.set_read_timeout(Some(IO_TIMEOUT * 3));
                        let _ = stream.set_write_timeout(Some(IO_TIMEOUT * 3));
                        let handler = Arc::clone(&handler);
                        let _ = thread::Builder::new()
                            .stack_size(SMALL_STACK)
                            .spawn(move || handler(stream));
                    }
                })
                .expect("spawn backend acceptor")
        };
        Backend {
            name: name.to_owned(),
            addr,
            accepted,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Echoes everything; on EOF finishes sending, then shuts down its
    /// write side.
    pub fn echo(name: &str) -> Backend {
        Backend::spawn(name, LOCALHOST, |mut s| {
            let _ = echo_until_eof(&mut s);
        })
    }

    /// Writes its name and "\n" on accept, then echoes like [`Backend::echo`].
    pub fn named(name: &str) -> Backend {
        Backend::named_on(name, LOCALHOST)
    }

    pub fn named_on(name: &str, ip: IpAddr) -> Backend {
        Backend::named_at(name, SocketAddr::new(ip, 0))
    }

    /// [`Backend::named`] on `addr`.
    pub fn named_at(name: &str, addr: SocketAddr) -> Backend {
        let greeting = format!("{name}\n");
        Backend::spawn_at(name, addr, move |mut s| {
            if s.write_all(greeting.as_bytes()).is_ok() {
                let _ = echo_until_eof(&mut s);
            }
        })
    }

    /// Echoes, and reports on `ends` how its connection ended: the outcome
    /// of the read that stopped the echo loop ([`ReadOutcome::Eof`],
    /// [`ReadOutcome::Reset`], …).
    pub fn echo_reporting(name: &str, ends: Sender<ReadOutcome>) -> Backend {
        Backend::spawn(name, LOCALHOST, move |mut s| {
            let end = echo_until_eof(&mut s);
            let _ = ends.send(end);
        })
    }

    /// Reads until it has seen some bytes, reports them on `got`, then
    /// closes with SO_LINGER 0, which sends an RST instead of a FIN.
    pub fn resetting(name: &str, got: Sender<Vec<u8>>) -> Backend {
        Backend::spawn(name, LOCALHOST, move |mut s| {
            let mut buf = [0u8; 1024];
            if let Ok(n) = s.read(&mut buf) {
                let _ = got.send(buf[..n].to_vec());
                reset(s);
            }
        })
    }

    /// Reads the request until the client half-closes (EOF), reports it on
    /// `requests`, then sends `reply` and closes (FIN).
    pub fn reply_after_eof(name: &str, reply: Arc<Vec<u8>>, requests: Sender<Vec<u8>>) -> Backend {
        Backend::spawn(name, LOCALHOST, move |mut s| {
            let mut request = Vec::new();
            if s.read_to_end(&mut request).is_ok() {
                let _ = requests.send(request);
                let _ = s.write_all(&reply);
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.get()
    }

    /// Waits until `n` connections have been accepted; returns the count.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> usize {
        self.accepted.wait_for(n, timeout)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Accept queue of test backends. std's listeners queue 128; a burst of
/// ringlb connects beyond that drops SYNs, ringlb's connect times out and
/// (rightly) fails over, which would blur what a test asserts. 4096 is
/// Linux's default `somaxconn` (the kernel caps the queue at it).
const BACKEND_BACKLOG: i32 = 4096;

/// A listener on `addr` with a [`BACKEND_BACKLOG`] accept queue.
pub fn listen(addr: SocketAddr) -> TcpListener {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .expect("backend socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind backend");
    socket.listen(BACKEND_BACKLOG).expect("listen");
    socket.into()
}

/// Echoes until EOF or error; on EOF shuts down the write side. Returns
/// how reading ended.
pub fn echo_until_eof(s: &mut TcpStream) -> ReadOutcome {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match read_outcome(s, &mut buf) {
            ReadOutcome::Data(n) => {
                if let Err(e) = s.write_all(&buf[..n]) {
                    return ReadOutcome::Failed(e.kind());
                }
            }
            ReadOutcome::Eof => {
                let _ = s.shutdown(Shutdown::Write);
                return ReadOutcome::Eof;
            }
            other => return other,
        }
    }
}

/// Closes `s` with SO_LINGER 0: the kernel sends an RST, not a FIN.
pub fn reset(s: TcpStream) {
    SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
    drop(s);
}

/// An address where nothing listens, so a connect there is refused (RST).
/// The port stays bound (never listening, no SO_REUSEADDR) while this
/// lives, so the kernel cannot hand it to a backend that another test (or
/// another suite on the machine) starts meanwhile.
pub struct DeadPort {
    addr: SocketAddr,
    /// Holds the port.
    _reservation: Socket,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        socket
            .bind(&SocketAddr::new(LOCALHOST, 0).into())
            .expect("bind");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet addr");
        DeadPort {
            addr,
            _reservation: socket,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A backend that never completes a handshake: a listener with backlog 0
/// whose one queue slot is taken by a connection nobody accepts, so the
/// kernel drops further SYNs and connects there time out (a blackholed
/// host, on loopback).
pub struct Blackhole {
    addr: SocketAddr,
    /// Kept open so the listener keeps dropping SYNs.
    _listener: Socket,
    /// The connection that fills the accept queue.
    _filler: TcpStream,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener =
            Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        listener
            .bind(&SocketAddr::new(LOCALHOST, 0).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet addr");
        let filler = TcpStream::connect_timeout(&addr, CLIENT_CONNECT_TIMEOUT).expect("filler");
        // Self-check: the queue is full, so a connect must now time out.
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        assert!(
            probe.is_err(),
            "test setup: a backlog-0 listener with a queued connection still completed a \
             handshake; this kernel does not drop SYNs on a full accept queue"
        );
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

// ---------------------------------------------------------------------------
// Clients

/// The loopback sources that play distinct clients: 127.0.0.2 ..= 127.0.0.50.
pub fn client_sources() -> Vec<IpAddr> {
    (2..=50)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Connects to `dst` from `src` (any port), with [`IO_TIMEOUT`] read and
/// write timeouts. std cannot bind before connecting; socket2 can.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), CLIENT_CONNECT_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Reads an HTTP request head up to its blank line (at most 8 KiB), byte
/// by byte so nothing after it is consumed. False if the peer closed or
/// failed first.
pub fn read_request_head(s: &mut impl Read) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Reads one `\n`-terminated line (at most 256 bytes), without the `\n`.
pub fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        match s.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&line)),
                ))
            }
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(byte[0]),
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
}

/// What one `read` on a socket saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes.
    Data(usize),
    /// A FIN: orderly end of the peer's sending.
    Eof,
    /// An RST.
    Reset,
    /// Nothing before the socket's read timeout.
    TimedOut,
    /// Some other error.
    Failed(io::ErrorKind),
}

pub fn read_outcome(s: &mut TcpStream, buf: &mut [u8]) -> ReadOutcome {
    match s.read(buf) {
        Ok(0) => ReadOutcome::Eof,
        Ok(n) => ReadOutcome::Data(n),
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionReset => ReadOutcome::Reset,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadOutcome::TimedOut,
            kind => ReadOutcome::Failed(kind),
        },
    }
}

/// `len` bytes from a PRNG seeded with `seed`.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_are_found_with_or_without_styling() {
        assert_eq!(
            parse_listening(
                "2025-01-01T00:00:00Z  INFO ringlb: listening service=web listen=127.0.0.1:4000"
            ),
            Some(("web".into(), "127.0.0.1:4000".into()))
        );
        assert_eq!(
            parse_listening(
                "\u{1b}[32m INFO\u{1b}[0m listening service=\"api\" listen=[::1]:9 workers=2"
            ),
            Some(("api".into(), "[::1]:9".into()))
        );
        assert_eq!(parse_listening("INFO starting workers=2"), None);
        assert_eq!(
            parse_admin_listening("INFO admin API listening admin=127.0.0.1:41017 token=false"),
            Some("127.0.0.1:41017".into())
        );
        assert_eq!(parse_admin_listening("INFO listening service=web"), None);
    }
}
