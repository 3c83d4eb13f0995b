//! Zero-downtime binary upgrade: a second ringlb started with the same
//! `--upgrade-socket` takes the listening sockets over while a client loop
//! keeps connecting (no connection may fail), and the old process drains a
//! long transfer to its end and exits 0.

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::{
    self, client_sources, connect_from, read_line, ringlb_command, Backend, Deadline, LbConfig,
    TempDir,
};

const READY: Duration = Duration::from_secs(10);

/// A ringlb process started with --upgrade-socket; its stderr lines arrive
/// on a channel.
struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Arc<std::sync::Mutex<String>>,
}

impl Proc {
    fn start(config: &std::path::Path, sock: &std::path::Path) -> Proc {
        let mut child = ringlb_command()
            .arg("--config")
            .arg(config)
            .arg("--upgrade-socket")
            .arg(sock)
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

    fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let d = Deadline::after(timeout);
        loop {
            match self.lines.recv_timeout(d.remaining()) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let d = Deadline::after(timeout);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if d.passed() {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_new_process_takes_over_the_sockets_while_the_old_one_drains() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let b2 = Backend::named("b2");
    let dir = TempDir::new("upgrade");
    let mut config = LbConfig::over("epoll", &[&b1, &b2]);
    // A fixed port is needed so both processes serve one address: take a
    // free one from the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.service().listen = vec![format!("127.0.0.1:{port}")];
    let path = dir.write("ringlb.toml", &config.to_toml());
    let sock = dir.path().join("upgrade.sock");
    let mut old = Proc::start(&path, &sock);
    let line = old
        .wait_log("listening", READY)
        .unwrap_or_else(|| panic!("old never listened\n{}", old.log()));
    let addr: std::net::SocketAddr = harness::parse_listening(&line).unwrap().1.parse().unwrap();

    // An established connection through the old process that outlives the switch.
    let src = client_sources()[0];
    let mut long = connect_from(src, addr).unwrap();
    let name = read_line(&mut long).unwrap();

    // Clients keep connecting during the whole upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let (attempts, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, attempts, failures) = (stop.clone(), attempts.clone(), failures.clone());
        thread::spawn(move || {
            let d = Deadline::after(Duration::from_secs(30));
            let sources = client_sources();
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && !d.passed() {
                attempts.fetch_add(1, Ordering::SeqCst);
                let src = sources[i % sources.len()];
                if let Err(e) = connect_from(src, addr).and_then(|mut s| read_line(&mut s)) {
                    failures.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{src}: {e}"));
                }
                i += 1;
            }
            errors
        })
    };
    // Let the loop run against the old process first.
    let d = Deadline::after(Duration::from_secs(5));
    while attempts.load(Ordering::SeqCst) < 50 && !d.passed() {
        thread::yield_now();
    }

    let new = Proc::start(&path, &sock);
    assert!(
        new.wait_log("took over the listening sockets", READY)
            .is_some(),
        "new process did not take over\n--- new ---\n{}\n--- old ---\n{}",
        new.log(),
        old.log()
    );
    assert!(
        old.wait_log("took over the listening sockets: draining", READY)
            .is_some(),
        "{}",
        old.log()
    );
    let before = attempts.load(Ordering::SeqCst);
    let d = Deadline::after(Duration::from_secs(5));
    while attempts.load(Ordering::SeqCst) < before + 50 && !d.passed() {
        thread::yield_now();
    }

    // The old process still carries the established connection…
    long.write_all(b"after the switch\n").unwrap();
    assert_eq!(read_line(&mut long).unwrap(), "after the switch");
    assert!(
        old.wait_exit(Duration::from_millis(200)).is_none(),
        "old exited while a connection was open"
    );
    // …and exits 0 once it ends.
    long.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = long.read_to_end(&mut rest);
    let status = old.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "old process: {status:?}\n{}",
        old.log()
    );

    stop.store(true, Ordering::SeqCst);
    let errors = load.join().unwrap();
    let (a, f) = (
        attempts.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    );
    assert_eq!(
        f,
        0,
        "{f} of {a} connections failed during the upgrade: {:?}\n--- old ---\n{}\n--- new ---\n{}",
        &errors[..errors.len().min(5)],
        old.log(),
        new.log()
    );
    // Stickiness survives the upgrade.
    let mut again = connect_from(src, addr).unwrap();
    assert_eq!(read_line(&mut again).unwrap(), name);
}

#[test]
fn socket_activation_serves_the_passed_socket_and_its_queued_clients() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
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
    // SAFETY: between fork and exec only async-signal-safe dup2 runs; it
    // puts the listener at fd 3 (clearing close-on-exec), as systemd does.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
