//! Whole `Server`s on the io_uring engine, one worker, in front of an echo
//! backend: bytes both ways with half-close in every forwarding mode, a
//! stop with busy completion-driven flows that gives every pipe and buffer
//! back, and clients held (not refused) at `max_connections`. (The ring's
//! own mechanics are unit-tested beside it, in `engine/uring.rs`.)

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lb_core::{Config, Engine};
use lb_core::{Server, StartOptions};

use crate::support::loopback::echo_backend;
use crate::support::wait::wait_until;

fn config_with(engine: &str, backend: SocketAddr, service_extra: &str) -> Config {
    config_full(engine, "auto", backend, service_extra)
}

fn config_full(engine: &str, forwarding: &str, backend: SocketAddr, extra: &str) -> Config {
    let (global_extra, service_extra) = extra.split_once('|').unwrap_or(("", extra));
    let text = format!(
        "[global]\nworkers = 1\nengine = \"{engine}\"\nforwarding = \"{forwarding}\"\nadmin = \"off\"\n{global_extra}\n\
         [[service]]\nname = \"t\"\nlisten = [\"127.0.0.1:0\"]\n{service_extra}\n\
         [service.health]\nkind = \"none\"\n\n\
         [[service.backend]]\nname = \"b1\"\naddress = \"{backend}\"\n"
    );
    Config::parse(&text, None).unwrap()
}

#[test]
fn a_uring_worker_forwards_bytes_both_ways_with_half_close() {
    let backend = echo_backend();
    // Inline (readiness) forwarding, then the two completion-driven
    // modes, where the ring's requests move the bytes.
    for forwarding in ["auto", "uring-copy", "uring-splice"] {
        let config = config_full("uring", forwarding, backend, "");
        let server = Server::start(config, StartOptions::default()).unwrap();
        assert_eq!(server.engine().engine, Engine::IoUring);
        assert_eq!(
            server.worker_controls()[0].engine.get(),
            Some(&Engine::IoUring)
        );
        let addr = server.listening()[0].1;

        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = client.try_clone().unwrap();
        let sent = payload.clone();
        let w = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            // Half-close: the echo only ends after our FIN got through.
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(payload.len());
        client.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        assert!(
            got == payload,
            "{forwarding}: echo differs ({} bytes back)",
            got.len()
        );
        drop(client);

        let control = server.worker_controls()[0].clone();
        wait_until("the connection to close", || {
            control.connections.load(Relaxed) == 0
                && control.pipes_lent.load(Relaxed) == 0
                && control.buffers_lent.load(Relaxed) == 0
        });
        assert_eq!(control.accepted.load(Relaxed), 1, "{forwarding}");
    }
}

/// A worker with completion-driven forwarding stopped while its
/// connections are busy cancels their requests and waits for them
/// before the ring goes: nothing stays lent.
#[test]
fn a_uring_worker_stopped_with_busy_flows_gives_everything_back() {
    let backend = echo_backend();
    for forwarding in ["uring-copy", "uring-splice"] {
        // No drain: stop with the connections busy.
        let config = config_full("uring", forwarding, backend, "shutdown_timeout = \"0s\"|");
        let server = Server::start(config, StartOptions::default()).unwrap();
        let addr = server.listening()[0].1;
        let control = server.worker_controls()[0].clone();
        // Clients that send and never read: the echo backs up, and
        // every flow has a request in flight holding memory.
        let clients: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_write_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let chunk = vec![5u8; 1 << 16];
                for _ in 0..64 {
                    if c.write_all(&chunk).is_err() {
                        break;
                    }
                }
                c
            })
            .collect();
        wait_until("bytes held in flight", || {
            control.pipes_lent.load(Relaxed) + control.buffers_lent.load(Relaxed) > 0
        });
        drop(server);
        assert_eq!(control.connections.load(Relaxed), 0, "{forwarding}");
        assert_eq!(
            (
                control.pipes_lent.load(Relaxed),
                control.buffers_lent.load(Relaxed)
            ),
            (0, 0),
            "{forwarding}: pipes, buffers lent after stop"
        );
        drop(clients);
    }
}

/// One echo round trip on `c`, or the read error.
fn echo_once(c: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    c.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got)?;
    Ok(got)
}

#[test]
fn at_max_connections_accepted_clients_wait_until_a_place_frees() {
    let backend = echo_backend();
    let server = Server::start(
        config_with("uring", backend, "max_connections = 2\n"),
        StartOptions::default(),
    )
    .unwrap();
    let addr = server.listening()[0].1;
    let control = server.worker_controls()[0].clone();
    let mut first = TcpStream::connect(addr).unwrap();
    let mut second = TcpStream::connect(addr).unwrap();
    for c in [&mut first, &mut second] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(echo_once(c, b"hello").unwrap(), b"hello");
    }
    // The third: the multishot accept takes it from the kernel, but
    // the worker must hold it, unserved, while the service is full.
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let early = echo_once(&mut third, b"wait");
    assert!(
        matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the third client was answered while the service was full: {early:?}"
    );
    assert_eq!(control.accepted.load(Relaxed), 2);
    assert_eq!(control.connections.load(Relaxed), 2);

    // A place frees: the held client is served, its early bytes kept.
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = [0u8; 4];
    third.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"wait");
    assert_eq!(echo_once(&mut third, b"more").unwrap(), b"more");
    assert_eq!(control.accepted.load(Relaxed), 3);
}
