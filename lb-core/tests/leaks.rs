//! Leak check of the engines and forwarding strategies (on io_uring the
//! completion-driven `uring-splice` and `uring-copy` too): after 1 000
//! connections through ringlb have closed (clients closing first, backends
//! closing first, and a batch aborted by RST), the process holds exactly
//! the descriptors it held before, no pipe or buffer is lent, and no socket
//! of ringlb's is left open in the kernel (an io_uring request that
//! outlives its fd keeps the socket alive without a descriptor, so counting
//! fds alone would miss it).
//!
//! A test binary of its own with a single test: fd counts and the
//! kernel's socket table are process-wide, so nothing may run beside it
//! (a test of the `it` suite on another thread would open and close fds
//! and sockets under the counts). It shares only the wait helper with
//! `it`.

// A test binary has no public surface: its helpers are `pub` for the
// sibling modules, which `unreachable_pub` would flag one by one.
#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use lb_core::Config;
use lb_core::{Server, StartOptions};

#[path = "it/support/wait.rs"]
#[allow(dead_code)] // the suite's other waits
mod wait;
use wait::wait_for_state;

const CONNECTIONS: usize = 1_000;
const CLIENT_THREADS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What each open fd is (for failure messages).
fn fd_targets() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| {
            let p = p.display().to_string();
            // For sockets, say which (local, remote, state) from the table.
            let inode = p.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'));
            let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default()
                + &std::fs::read_to_string("/proc/self/net/tcp6").unwrap_or_default()
                + &std::fs::read_to_string("/proc/self/net/unix").unwrap_or_default();
            match inode.and_then(|i| table.lines().find(|l| l.split_whitespace().any(|w| w == i))) {
                Some(line) => format!(
                    "{p} {}",
                    line.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                None => p,
            }
        })
        .collect()
}

/// A backend whose behaviour each client picks with its first byte:
/// `A` echo until EOF, then close; `B` say "bye" and close at once;
/// `C` say "ok", then read until the client's reset (or EOF), then close.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Runs until the process exits.
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).is_err() {
                    return;
                }
                match first[0] {
                    b'A' => {
                        let mut r = s.try_clone().unwrap();
                        let _ = std::io::copy(&mut r, &mut s);
                    }
                    b'B' => {
                        let _ = s.write_all(b"bye");
                    }
                    b'C' => {
                        let _ = s.write_all(b"ok");
                        let mut sink = [0u8; 64];
                        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                    }
                    _ => {}
                }
            });
        }
    });
    addr
}

fn config(engine: &str, forwarding: &str, backend: SocketAddr) -> Config {
    let text = format!(
        "[global]\nworkers = 2\nengine = \"{engine}\"\nforwarding = \"{forwarding}\"\n\
         admin = \"off\"\npipe_pool = 0\n\n\
         [[service]]\nname = \"leaks\"\nlisten = [\"127.0.0.1:0\"]\n\n\
         [service.health]\nkind = \"none\"\n\n\
         [[service.backend]]\nname = \"b1\"\naddress = \"{backend}\"\n"
    );
    Config::parse(&text, None).unwrap()
}

/// One client conversation of the kind `i % 3` picks.
fn converse(addr: SocketAddr, i: usize) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    match i % 3 {
        // The client closes first (half-close, then the echo ends).
        0 => {
            let msg = format!("A request {i}");
            c.write_all(msg.as_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(&got[..], &msg.as_bytes()[1..], "connection {i}");
        }
        // The backend closes first.
        1 => {
            c.write_all(b"B").unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"bye", "connection {i}");
        }
        // The client aborts: RST once the backend answered.
        _ => {
            c.write_all(b"C").unwrap();
            let mut ok = [0u8; 2];
            c.read_exact(&mut ok).unwrap();
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
}

/// Sockets of ringlb's still known to the kernel, TIME_WAIT aside: its
/// client side (local port `listen`) and its backend side (remote port
/// `backend`).
fn ringlb_sockets(listen: u16, backend: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (port(f[1]), port(f[2]), f[3]);
            // 06 TIME_WAIT (no file behind it), 0A LISTEN.
            state != "06" && state != "0A" && (local == listen || remote == backend)
        })
        .map(str::to_owned)
        .collect()
}

fn check_engine(engine: &str, forwarding: &str, backend_addr: SocketAddr) {
    let before_start = open_fds();
    let config = config(engine, forwarding, backend_addr);
    let server = Server::start(config, StartOptions::default()).unwrap();
    assert_eq!(
        server.engine().engine.name(),
        engine,
        "{}",
        server.engine().reason
    );
    let addr = server.listening()[0].1;
    let controls = server.worker_controls().to_vec();
    let baseline = open_fds();

    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= CONNECTIONS {
                    return;
                }
                converse(addr, i);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }

    let accepted: u64 = controls.iter().map(|c| c.accepted.load(Relaxed)).sum();
    assert_eq!(
        accepted, CONNECTIONS as u64,
        "{engine}/{forwarding}: connections accepted"
    );
    wait_for_state(
        &format!("{engine}/{forwarding}: every connection, pipe and fd to be released"),
        Duration::from_secs(20),
        || {
            let conns: usize = controls.iter().map(|c| c.connections.load(Relaxed)).sum();
            let pipes: usize = controls
                .iter()
                .map(|c| c.pipes_lent.load(Relaxed) + c.buffers_lent.load(Relaxed))
                .sum();
            let fds = open_fds();
            let sockets = ringlb_sockets(addr.port(), backend_addr.port());
            (conns != 0 || pipes != 0 || fds != baseline || !sockets.is_empty()).then(|| {
                format!(
                    "connections {conns}, pipes/buffers lent {pipes}, fds {fds} (baseline {baseline}), \
                     sockets left {sockets:#?}"
                )
            })
        },
    );

    // The controls hold the workers' wake-up eventfds.
    drop(controls);
    drop(server);
    wait_for_state(
        &format!("{engine}/{forwarding}: the stopped server to close everything"),
        Duration::from_secs(10),
        || {
            let fds = open_fds();
            (fds != before_start)
                .then(|| format!("fds {fds}, before start {before_start}: {:?}", fd_targets()))
        },
    );
}

#[test]
fn a_thousand_closed_connections_leave_no_fd_pipe_or_socket_behind() {
    let backend_addr = backend();
    // tokio makes a process-wide socketpair for signals with its first
    // runtime (the control plane's) and keeps it until exit: make it now,
    // so it is part of every baseline.
    drop(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let engines: &[&str] = match lb_core::uring_self_test() {
        Ok(_) => &["uring", "epoll"],
        Err(why) => {
            println!("uring: SKIPPED: {why}");
            &["epoll"]
        }
    };
    for engine in engines {
        // The completion-driven modes exist on io_uring only; there they
        // hold requests (and the buffers or pipes those use) past the
        // close of a connection's fds, until their cancels land.
        let modes: &[&str] = match *engine {
            "uring" => &["splice", "copy", "uring-splice", "uring-copy"],
            _ => &["splice", "copy"],
        };
        for forwarding in modes {
            check_engine(engine, forwarding, backend_addr);
        }
    }
}
