//! Zero-downtime binary upgrade: a second ringlb started with the same
//! `--upgrade-socket` takes the listening sockets over — the services' and
//! the admin API's — while a client loop keeps connecting (no connection
//! may fail), and the old process drains a long transfer to its end and
//! exits 0. Three upgrades in a row, on both engines, with the admin API
//! on; a new process that fails (bad config, busy port) leaves the old one
//! serving and the socket ready for the next try; a socket-activated
//! ringlb upgrades the same way. (The SIGUSR2 path under systemd is in
//! `systemd.rs`.)

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, read_line, ringlb_command, run_to_exit,
    seeded_bytes, Backend, Deadline, LbConfig, TempDir,
};

const READY: Duration = Duration::from_secs(10);
/// The transfer that spans the upgrades.
const TRANSFER: usize = 256 << 20;
/// It is sent in chunks of this size: chunk k is `pool[k..k + CHUNK]`, so
/// every chunk differs and a lost, duplicated or reordered chunk shows.
const CHUNK: usize = 1 << 20;

/// A ringlb process started with --upgrade-socket; its stderr lines arrive
/// on a channel (also those of the processes it starts on SIGUSR2, which
/// inherit its stderr).
pub struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Arc<std::sync::Mutex<String>>,
}

impl Proc {
    pub fn start(config: &Path, sock: &Path) -> Proc {
        Proc::start_with_env(config, sock, &[])
    }

    pub fn start_with_env(config: &Path, sock: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Proc {
        let mut cmd = ringlb_command();
        cmd.envs(env.iter().copied())
            .arg("--config")
            .arg(config)
            .arg("--upgrade-socket")
            .arg(sock);
        Proc::spawn(cmd)
    }

    pub fn spawn(mut cmd: std::process::Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let l = log.clone();
        thread::spawn(move || {
            let mut r = std::io::BufReader::new(stderr);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
                l.lock().unwrap().push_str(&line);
                let _ = tx.send(std::mem::take(&mut line));
            }
        });
        Proc { child, lines, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let d = Deadline::after(timeout);
        loop {
            match self.lines.recv_timeout(d.remaining()) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits until the whole log so far (lines already waited for included)
    /// contains `needle`.
    pub fn wait_logged(&self, needle: &str, timeout: Duration) -> bool {
        let d = Deadline::after(timeout);
        while !self.log().contains(needle) {
            if self.lines.recv_timeout(d.remaining()).is_err() {
                return self.log().contains(needle);
            }
        }
        true
    }

    /// Waits for the `listening` line and returns the address.
    pub fn wait_listening(&self) -> SocketAddr {
        let line = self
            .wait_log("listening service=", READY)
            .unwrap_or_else(|| panic!("ringlb never listened\n{}", self.log()));
        harness::parse_listening(&line).unwrap().1.parse().unwrap()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let d = Deadline::after(timeout);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if d.passed() {
                return None;
            }
            thread::sleep(Duration::from_millis(10)); // polling an exit status, bounded by the deadline
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the kernel just gave out and took back: both processes of an
/// upgrade must be configured with the same fixed address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `config` with its service on 127.0.0.1:`port` and the admin API on
/// 127.0.0.1:`admin` (the default setup the issue describes: admin on, on
/// a fixed port), as TOML.
pub fn fixed_config(mut config: LbConfig, port: u16, admin: u16) -> String {
    config.admin = true;
    config.service().listen = vec![format!("127.0.0.1:{port}")];
    config.to_toml().replace(
        "admin = \"127.0.0.1:0\"",
        &format!("admin = \"127.0.0.1:{admin}\""),
    )
}

/// One HTTP GET of the admin API's health endpoint: its status line.
pub fn admin_health(admin: SocketAddr) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        b"GET /router/api/v1/system/health HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// Clients that keep connecting (each reads the backend's name line) until
/// stopped; bounded by a deadline.
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    pub attempts: Arc<AtomicUsize>,
    pub failures: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<Vec<String>>>,
}

impl ClientLoop {
    pub fn start(addr: SocketAddr) -> ClientLoop {
        ClientLoop::with_stall_limit(addr, harness::IO_TIMEOUT)
    }

    /// A connection that gets no answer within `stall` counts as failed
    /// (and the loop goes on), so a stranded connection fails fast.
    pub fn with_stall_limit(addr: SocketAddr, stall: Duration) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let (attempts, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (stop, attempts, failures) = (stop.clone(), attempts.clone(), failures.clone());
            thread::spawn(move || {
                let d = Deadline::after(Duration::from_secs(60));
                let sources = client_sources();
                let mut errors = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && !d.passed() {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let src = sources[i % sources.len()];
                    let answer = connect_from(src, addr).and_then(|mut s| {
                        s.set_read_timeout(Some(stall))?;
                        read_line(&mut s)
                    });
                    if let Err(e) = answer {
                        failures.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{src}: {e}"));
                    }
                    i += 1;
                }
                errors
            })
        };
        ClientLoop {
            stop,
            attempts,
            failures,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `more` further connections were made.
    pub fn wait_more(&self, more: usize) {
        let target = self.attempts.load(Ordering::SeqCst) + more;
        let d = Deadline::after(Duration::from_secs(10));
        while self.attempts.load(Ordering::SeqCst) < target && !d.passed() {
            thread::yield_now();
        }
    }

    /// Stops; (attempts, failures, the first errors).
    pub fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.thread.take().unwrap().join().unwrap();
        (
            self.attempts.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
            errors.into_iter().take(5).collect(),
        )
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A 256 MiB echo transfer through `addr` that pauses half-way until told
/// to go on, so it spans whatever happens meanwhile. `half` says when the
/// first half is sent; `finish` returns the number of bytes echoed back
/// intact, or what went wrong.
struct Transfer {
    go: std::sync::mpsc::Sender<()>,
    half: std::sync::mpsc::Receiver<()>,
    writer: thread::JoinHandle<std::io::Result<()>>,
    reader: thread::JoinHandle<Result<usize, String>>,
}

impl Transfer {
    fn start(src: std::net::IpAddr, addr: SocketAddr) -> (Transfer, String) {
        let mut s = connect_from(src, addr).unwrap();
        let name = read_line(&mut s).unwrap();
        // Long enough for three upgrades while the writer waits.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let pool = Arc::new(seeded_bytes(0x0b6_0de, CHUNK + TRANSFER / CHUNK));
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let (half_tx, half) = std::sync::mpsc::channel::<()>();
        let mut w = s.try_clone().unwrap();
        let p = pool.clone();
        let writer = thread::spawn(move || {
            for k in 0..TRANSFER / CHUNK {
                if k == TRANSFER / CHUNK / 2 {
                    let _ = half_tx.send(());
                    if go.recv_timeout(Duration::from_secs(60)).is_err() {
                        return Err(std::io::Error::other("never told to go on"));
                    }
                }
                w.write_all(&p[k..k + CHUNK])?;
            }
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut r = s;
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            let mut pos = 0usize;
            loop {
                let n = r
                    .read(&mut buf)
                    .map_err(|e| format!("read at {pos}: {e}"))?;
                if n == 0 {
                    return Ok(pos);
                }
                let mut off = 0;
                while off < n {
                    let (k, within) = ((pos + off) / CHUNK, (pos + off) % CHUNK);
                    if k >= TRANSFER / CHUNK {
                        return Err(format!("more than {TRANSFER} bytes came back"));
                    }
                    let take = (n - off).min(CHUNK - within);
                    if buf[off..off + take] != pool[k + within..k + within + take] {
                        return Err(format!(
                            "bytes differ in {}..{}",
                            pos + off,
                            pos + off + take
                        ));
                    }
                    off += take;
                }
                pos += n;
            }
        });
        (
            Transfer {
                go: go_tx,
                half,
                writer,
                reader,
            },
            name,
        )
    }

    fn finish(self) -> Result<usize, String> {
        let _ = self.go.send(());
        let wrote = self.writer.join().unwrap();
        let read = self.reader.join().unwrap();
        wrote.map_err(|e| format!("write: {e}"))?;
        read
    }
}

/// Starts a new process against `sock` and waits until it took over and the
/// old one (`old`) drains: returns it and the switch time.
pub fn upgrade(config: &Path, sock: &Path, old: &Proc) -> (Proc, Duration) {
    let t0 = Instant::now();
    let new = Proc::start(config, sock);
    let took = new.wait_log("took over the listening sockets", READY);
    assert!(
        took.is_some(),
        "new process did not take over\n--- new ---\n{}\n--- old ---\n{}",
        new.log(),
        old.log()
    );
    assert!(
        old.wait_log("took over the listening sockets: draining", READY)
            .is_some(),
        "the old process did not hand over\n--- old ---\n{}\n--- new ---\n{}",
        old.log(),
        new.log()
    );
    (new, t0.elapsed())
}

#[test]
fn three_upgrades_with_the_admin_api_on_lose_no_connection_and_no_byte() {
    let _shared = harness::shared();
    for_each_engine("three_upgrades", |engine| {
        let b1 = Backend::named("b1");
        let b2 = Backend::named("b2");
        let dir = TempDir::new("upgrade");
        let (port, admin_port) = (free_port(), free_port());
        let toml = fixed_config(LbConfig::over(engine, &[&b1, &b2]), port, admin_port);
        let path = dir.write("ringlb.toml", &toml);
        let sock = dir.path().join("upgrade.sock");
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let mut first = Proc::start(&path, &sock);
        let addr = first.wait_listening();
        assert!(
            first.wait_logged("admin API listening", READY),
            "{}",
            first.log()
        );
        // The transfer runs through the first process and outlives all
        // three upgrades; the client loop runs during all of them.
        let src = client_sources()[0];
        let (transfer, name) = Transfer::start(src, addr);
        transfer
            .half
            .recv_timeout(Duration::from_secs(30))
            .expect("the first half of the transfer went through");
        let clients = ClientLoop::start(addr);
        clients.wait_more(50);

        let mut switches = Vec::new();
        let mut draining: Vec<Proc> = Vec::new();
        let mut current = None::<Proc>;
        for round in 1..=3 {
            let old = current.as_ref().unwrap_or(&first);
            let (new, took) = upgrade(&path, &sock, old);
            switches.push(took.as_millis());
            assert!(
                new.wait_logged("admin API listening", READY),
                "upgrade {round}: the new process serves no admin API\n{}",
                new.log()
            );
            let health = admin_health(admin);
            assert!(
                health.as_deref().is_ok_and(|l| l.starts_with("HTTP/1.1 ")),
                "upgrade {round}: the admin API does not answer after the switch: {health:?}\n{}",
                new.log()
            );
            clients.wait_more(50);
            if let Some(prev) = current.replace(new) {
                draining.push(prev);
            }
        }
        // The processes of upgrades 1 and 2 held only short connections:
        // they have drained and exit 0.
        for (i, p) in draining.iter_mut().enumerate() {
            let status = p.wait_exit(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "process {} exited {status:?}\n{}",
                i + 1,
                p.log()
            );
        }
        // The first still carries the transfer…
        assert!(
            first.wait_exit(Duration::from_millis(100)).is_none(),
            "the first process exited while the transfer was open\n{}",
            first.log()
        );
        // …which now completes, byte for byte, and then the first exits 0.
        let result = transfer.finish();
        assert_eq!(
            result,
            Ok(TRANSFER),
            "the transfer across the upgrades\n{}",
            first.log()
        );
        let status = first.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "first process: {status:?}\n{}",
            first.log()
        );
        let (a, f, errors) = clients.finish();
        let last = current.unwrap();
        assert_eq!(
            f,
            0,
            "{f} of {a} connections failed during the upgrades: {errors:?}\n--- last ---\n{}",
            last.log()
        );
        // Stickiness survives the upgrades.
        let mut again = connect_from(src, addr).unwrap();
        assert_eq!(read_line(&mut again).unwrap(), name);
        println!(
            "three_upgrades/{engine}: {a} connections, {f} failed, transfer {} MiB intact, switch times {switches:?} ms",
            TRANSFER >> 20
        );
    });
}

/// The upgrade socket files in `dir` (to see that no `<sock>.<pid>.new`
/// is left over and the socket itself stays).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("upgrade.sock"))
        .collect();
    out.sort();
    out
}

#[test]
fn a_failing_new_process_leaves_the_old_one_serving_and_the_next_upgrade_works() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let dir = TempDir::new("upgrade-fail");
    let (port, admin_port) = (free_port(), free_port());
    let good = fixed_config(LbConfig::over("epoll", &[&b1]), port, admin_port);
    let path = dir.write("ringlb.toml", &good);
    let sock = dir.path().join("upgrade.sock");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let mut old = Proc::start(&path, &sock);
    let addr = old.wait_listening();
    let before = files(dir.path());
    let serves = |what: &str, old: &Proc| {
        let mut s = connect_from(client_sources()[3], addr)
            .unwrap_or_else(|e| panic!("after {what}: {e}\n{}", old.log()));
        assert_eq!(read_line(&mut s).unwrap(), "b1", "after {what}");
        assert!(
            admin_health(admin).is_ok_and(|l| l.starts_with("HTTP/1.1 ")),
            "after {what}: the admin API does not answer\n{}",
            old.log()
        );
    };
    serves("start", &old);

    // A config that does not parse: the new process stops before it asks.
    let bad = dir.write("bad.toml", "[global\nworkers = ");
    let run = run_to_exit(&[
        "--config".as_ref(),
        bad.as_os_str(),
        "--upgrade-socket".as_ref(),
        sock.as_os_str(),
    ]);
    assert!(!run.status.success(), "{}", run.stderr);
    serves("a bad config", &old);
    assert_eq!(files(dir.path()), before, "files changed by a failed start");

    // A listen address that is busy: the new process takes the sockets,
    // fails to bind, and exits; the old one was never told to drain.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_toml = good.replace(
        &format!("listen = [\"127.0.0.1:{port}\"]"),
        &format!(
            "listen = [\"127.0.0.1:{port}\", \"{}\"]",
            busy.local_addr().unwrap()
        ),
    );
    assert_ne!(busy_toml, good);
    let busy_path = dir.write("busy.toml", &busy_toml);
    let run = run_to_exit(&[
        "--config".as_ref(),
        busy_path.as_os_str(),
        "--upgrade-socket".as_ref(),
        sock.as_os_str(),
    ]);
    assert!(!run.status.success(), "{}", run.stderr);
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("ringlb: "))
        .unwrap_or_else(|| panic!("no error line:\n{}", run.stderr));
    assert!(
        error.contains("cannot listen on") && error.matches("Address already in use").count() == 1,
        "the error should name the busy address and say why once: {error}"
    );
    assert!(
        old.wait_log("binary upgrade abandoned", READY).is_some(),
        "{}",
        old.log()
    );
    serves("a busy port", &old);
    assert_eq!(files(dir.path()), before, "files changed by a failed start");

    // The socket still leads to the old process: a good upgrade works.
    let (new, _) = upgrade(&path, &sock, &old);
    let status = old.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "old process: {status:?}\n{}",
        old.log()
    );
    serves("the upgrade", &new);
    assert_eq!(files(dir.path()), before, "the socket is replaced in place");
}

/// Has `cmd`'s child get `fd` as fd 3, open across exec, as systemd passes
/// a socket. When `fd` is 3 already, dup2 would change nothing (and leave
/// it close-on-exec): the flag is cleared instead.
fn pass_as_fd_3(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls run (dup2,
    // fcntl) on descriptors of the child's own copy of the table.
    unsafe {
        cmd.pre_exec(move || {
            let done = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if done == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_socket_activated_ringlb_upgrades_with_its_queued_clients() {
    use std::os::fd::AsRawFd;
    let _shared = harness::shared();
    for_each_engine("socket_activated_upgrade", |engine| {
        let b1 = Backend::named("b1");
        // "systemd": the listening socket exists before ringlb does, and
        // systemd keeps its copy.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let src = client_sources()[1];
        // A client that connects before ringlb runs waits in the queue.
        let mut early = connect_from(src, addr).unwrap();
        let dir = TempDir::new("activation-upgrade");
        let toml = fixed_config(LbConfig::over(engine, &[&b1]), addr.port(), free_port());
        let path = dir.write("ringlb.toml", &toml);
        let sock = dir.path().join("upgrade.sock");
        let fd = listener.as_raw_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        // LISTEN_PID must be ringlb's own pid: the shell exports its pid and
        // execs ringlb in its place.
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$0\" --config \"$1\" --upgrade-socket \"$2\"")
            .arg(env!("CARGO_BIN_EXE_ringlb"))
            .arg(&path)
            .arg(&sock)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        pass_as_fd_3(&mut cmd, fd);
        let mut old = Proc::spawn(cmd);
        assert_eq!(old.wait_listening(), addr);
        assert!(old.log().contains("socket activation"), "{}", old.log());
        assert_eq!(read_line(&mut early).unwrap(), "b1");
        // A connection left unanswered for 3 s is stranded (they take
        // milliseconds).
        let clients = ClientLoop::with_stall_limit(addr, Duration::from_secs(3));
        clients.wait_more(50);
        let (mut new, _) = upgrade(&path, &sock, &old);
        clients.wait_more(50);
        // The early client is still served by the old process…
        early.write_all(b"still here\n").unwrap();
        assert_eq!(read_line(&mut early).unwrap(), "still here");
        drop(early);
        // …which then exits 0.
        let status = old.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "old: {status:?}\n{}",
            old.log()
        );
        // More upgrades in a chain: each switch is a chance for a
        // connection to be stranded in the shared backlog.
        for round in 2..=12 {
            let (next, _) = upgrade(&path, &sock, &new);
            clients.wait_more(30);
            let status = new.wait_exit(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "upgrade {round}: {status:?}\n{}",
                new.log()
            );
            new = next;
        }
        let (a, f, errors) = clients.finish();
        assert_eq!(
            f,
            0,
            "{engine}: {f} of {a} failed: {errors:?}\n--- first ---\n{}\n--- last ---\n{}",
            old.log(),
            new.log()
        );
        // The new process serves the systemd socket even once ours is gone.
        drop(listener);
        let mut later = connect_from(src, addr).unwrap();
        assert_eq!(read_line(&mut later).unwrap(), "b1");
    });
}

#[test]
fn socket_activation_serves_the_passed_socket_and_its_queued_clients() {
    use std::os::fd::AsRawFd;
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    // "systemd": the listening socket exists before ringlb does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let src = client_sources()[1];
    // A client that connects before ringlb runs waits in the socket's queue.
    let mut early = connect_from(src, addr).unwrap();
    let dir = TempDir::new("activation");
    let mut config = LbConfig::over("epoll", &[&b1]);
    config.service().listen = vec![addr.to_string()];
    let path = dir.write("ringlb.toml", &config.to_toml());
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    // LISTEN_PID must be ringlb's own pid: the shell exports its pid and
    // execs ringlb in its place.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_ringlb"))
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pass_as_fd_3(&mut cmd, fd);
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    thread::spawn(move || {
        let mut r = std::io::BufReader::new(stderr);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    let d = Deadline::after(READY);
    let mut log = String::new();
    while !log.contains("listening service=web") {
        match lines.recv_timeout(d.remaining()) {
            Ok(l) => log.push_str(&l),
            Err(_) => {
                let _ = child.kill();
                panic!("ringlb did not start on the passed socket:\n{log}");
            }
        }
    }
    assert!(log.contains("socket activation"), "{log}");
    // Our copy is not needed any more, as systemd would keep its own.
    drop(listener);
    assert_eq!(
        read_line(&mut early).unwrap(),
        "b1",
        "the client queued before start is served"
    );
    let mut later = connect_from(src, addr).unwrap();
    assert_eq!(read_line(&mut later).unwrap(), "b1");
    // Closed first: with open connections SIGTERM would (rightly) drain.
    drop((early, later));
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{log}");
}

/// systemd says a socket was passed (LISTEN_FDS=1) but fd 3 is not open:
/// ringlb says so and exits 1. It once started its log writer first, whose
/// copy of stderr then took fd 3; taking that for the passed socket and
/// dropping it closed the log, so ringlb exited without a word.
#[test]
fn a_passed_socket_that_is_not_there_is_reported() {
    use std::os::unix::process::CommandExt;
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let dir = TempDir::new("activation-missing");
    let path = dir.write("ringlb.toml", &LbConfig::over("epoll", &[&b1]).to_toml());
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_ringlb"))
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only the async-signal-safe close runs,
    // on the child's own copy of the descriptor table.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(3);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let deadline = Deadline::after(READY);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if deadline.passed() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ringlb still runs {READY:?} after start without its passed socket; it logged {:?}",
                reader.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("LISTEN_FDS") && log.contains("passed fd 3 is not usable"),
        "the error must name the missing socket: {log:?}"
    );
}
