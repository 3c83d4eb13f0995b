//! TIME_WAIT placement, read from `/proc/net/tcp`.
//!
//! What is asserted, and why. TCP leaves a TIME_WAIT on the side of a
//! connection that sent the first FIN, and on no other. ringlb's connection
//! is two TCP connections (legs): client ↔ ringlb and ringlb ↔ backend.
//! Because ringlb preserves half-close (DESIGN.md; `half_close` tests), a
//! FIN arriving on one leg is forwarded as ringlb's own FIN on the other.
//! So, when the client closes first:
//!
//! - client leg: the client sent the first FIN, so the client holds the
//!   TIME_WAIT and ringlb's client-facing socket must hold none (it closes
//!   passively: CLOSE_WAIT → LAST_ACK → gone);
//! - backend leg: ringlb forwarded that FIN, so ringlb sent the first FIN
//!   there, and the kernel puts ringlb's backend-facing socket into
//!   TIME_WAIT the moment the backend's FIN arrives, whatever ringlb does
//!   next (closing with SO_LINGER 0 then is too late; checked by hand with a
//!   FIN-forwarding proxy). The only way for ringlb to hold no TIME_WAIT
//!   toward the backend here would be to reset that leg instead of sending
//!   a FIN, which would cut off a backend that answers after EOF (see
//!   `half_close::backend_replies_after_client_half_closes`). So we assert
//!   exactly one TIME_WAIT per connection there, which also proves the leg
//!   was closed with FINs, not an RST, and the backend saw an orderly EOF.
//!
//! When the backend closes first it is the mirror image: ringlb must hold
//! no TIME_WAIT toward the backend (it closed that leg passively) and holds
//! one per connection on its client-facing sockets.
//!
//! The filters, since on loopback both ends of every connection are in the
//! table: ringlb's client-facing sockets have *local* address = its listen
//! address (the clients' ends have it as *remote*); ringlb's backend-facing
//! sockets have *remote* address = the backend and a local address that is
//! not a client source (the backend's own ends have it as *local*). Entries
//! that existed before the test are ignored.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, Backend, Deadline, LbConfig, ReadOutcome,
    Ringlb, LOCALHOST,
};

/// Connections per test, each from its own source address.
const CONNECTIONS: usize = 20;
/// How long the kernel may take to reach the final states on loopback.
const SETTLE: Duration = Duration::from_secs(3);
/// `TCP_TIME_WAIT` in `/proc/net/tcp`'s `st` column.
const TIME_WAIT: u8 = 0x06;

/// One TIME_WAIT row of `/proc/net/tcp`: (local, remote).
type Row = (SocketAddrV4, SocketAddrV4);

/// Every IPv4 TCP socket in TIME_WAIT.
fn time_waits() -> BTreeSet<Row> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            (state == TIME_WAIT).then_some(())?;
            Some((parse_addr(fields.get(1)?)?, parse_addr(fields.get(2)?)?))
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080 (the address is the kernel's `__be32`
/// printed as a host-order integer, so its native bytes are the octets).
fn parse_addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// TIME_WAIT counts by owner, for one ringlb and one backend.
#[derive(Debug, Default, PartialEq, Eq)]
struct Holders {
    /// ringlb's client-facing sockets: local = listen address.
    ringlb_client_side: usize,
    /// The clients' sockets: remote = listen address, local = a client source.
    clients: usize,
    /// ringlb's backend-facing sockets: remote = backend, local not a client.
    ringlb_backend_side: usize,
    /// The backend's sockets: local = backend address.
    backend: usize,
}

fn holders(before: &BTreeSet<Row>, lb: SocketAddr, backend: SocketAddr) -> Holders {
    let v4 = |a: SocketAddr| match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("time_wait tests use IPv4 only"),
    };
    let (lb, backend) = (v4(lb), v4(backend));
    let sources: BTreeSet<IpAddr> = client_sources().into_iter().collect();
    let is_client = |a: &SocketAddrV4| sources.contains(&IpAddr::V4(*a.ip()));
    let mut h = Holders::default();
    for (local, remote) in time_waits().difference(before) {
        if *local == lb {
            h.ringlb_client_side += 1;
        } else if *remote == lb && is_client(local) {
            h.clients += 1;
        } else if *remote == backend && !is_client(local) {
            h.ringlb_backend_side += 1;
        } else if *local == backend {
            h.backend += 1;
        }
    }
    h
}

/// Starts a backend and a ringlb (with `start`) on ports that no TIME_WAIT
/// names yet, and returns them with the TIME_WAITs that existed then.
///
/// A listening port picked by the kernel may be one that an earlier test's
/// listener had, with TIME_WAITs of its connections still in the table; a
/// connect may then reuse such a 4-tuple (`tcp_tw_reuse` = 2 allows it on
/// loopback), and the new connection's TIME_WAIT would be the same row as
/// one in the `before` set: not counted, a false failure.
fn fresh_ports<T>(
    mut start: impl FnMut() -> (Backend, Ringlb, T),
) -> (Backend, Ringlb, T, BTreeSet<Row>) {
    let names = |row: &Row, a: SocketAddr| [row.0, row.1].map(SocketAddr::V4).contains(&a);
    for _ in 0..10 {
        let (backend, lb, extra) = start();
        let before = time_waits();
        if !before
            .iter()
            .any(|row| names(row, backend.addr()) || names(row, lb.addr()))
        {
            return (backend, lb, extra, before);
        }
    }
    panic!("no listening ports free of TIME_WAITs in 10 tries");
}

/// Waits (up to [`SETTLE`]) until `done` holds, then returns the counts.
fn settled(
    before: &BTreeSet<Row>,
    lb: SocketAddr,
    backend: SocketAddr,
    done: impl Fn(&Holders) -> bool,
) -> Holders {
    let deadline = Deadline::after(SETTLE);
    loop {
        let h = holders(before, lb, backend);
        if done(&h) || deadline.passed() {
            return h;
        }
        // Polling the kernel's table: there is no event to wait on.
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_closes_first_ringlb_holds_no_time_wait_toward_the_client() {
    let _shared = harness::shared();
    for_each_engine("time_wait::client_first", |engine| {
        let (backend, lb, ends, before) = fresh_ports(|| {
            let (ends_tx, ends) = mpsc::channel();
            let backend = Backend::echo_reporting("b1", ends_tx);
            let lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));
            (backend, lb, ends)
        });

        for src in client_sources().into_iter().take(CONNECTIONS) {
            let mut client = connect_from(src, lb.addr()).expect("connect");
            client.write_all(b"request").expect("send");
            // The client closes first...
            client.shutdown(Shutdown::Write).expect("shutdown(Write)");
            // ...and the exchange completes: the echo, then ringlb's FIN.
            let mut echo = Vec::new();
            client.read_to_end(&mut echo).expect("echo then EOF");
            assert_eq!(echo, b"request");
        }
        for i in 0..CONNECTIONS {
            let end = ends.recv_timeout(SETTLE).unwrap_or_else(|_| {
                panic!("[{engine}] backend connection {i} not closed after the exchange")
            });
            assert_eq!(
                end,
                ReadOutcome::Eof,
                "[{engine}] backend saw {end:?}, not an orderly EOF"
            );
        }

        let h = settled(&before, lb.addr(), backend.addr(), |h| {
            h.clients >= CONNECTIONS && h.ringlb_backend_side >= CONNECTIONS
        });
        assert_eq!(
            h.clients, CONNECTIONS,
            "[{engine}] test self-check: each client closed first and must hold the client \
             leg's TIME_WAIT ({h:?})"
        );
        assert_eq!(
            h.ringlb_client_side, 0,
            "[{engine}] ringlb holds TIME_WAIT on client-facing sockets although every client \
             closed first: it sent its FIN to the client before taking the client's ({h:?})"
        );
        assert_eq!(
            h.ringlb_backend_side, CONNECTIONS,
            "[{engine}] ringlb forwarded each client's FIN, so TCP leaves exactly one TIME_WAIT \
             per connection on its backend-facing side; fewer means the backend leg was reset, \
             more means extra backend connections ({h:?})"
        );
        assert_eq!(
            h.backend, 0,
            "[{engine}] the backend closed passively ({h:?})"
        );
    });
}

#[test]
fn backend_closes_first_ringlb_holds_no_time_wait_toward_the_backend() {
    let _shared = harness::shared();
    for_each_engine("time_wait::backend_first", |engine| {
        let (backend, lb, (), before) = fresh_ports(|| {
            let backend = Backend::spawn("b1", LOCALHOST, |mut s| {
                // Answer and close first; drop sends the FIN.
                let _ = s.write_all(b"bye\n");
            });
            let lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));
            (backend, lb, ())
        });

        for src in client_sources().into_iter().take(CONNECTIONS) {
            let mut client = connect_from(src, lb.addr()).expect("connect");
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).expect("answer then EOF");
            assert_eq!(answer, b"bye\n");
            // The client closes after the backend's FIN reached it.
        }

        let h = settled(&before, lb.addr(), backend.addr(), |h| {
            h.backend >= CONNECTIONS && h.ringlb_client_side >= CONNECTIONS
        });
        assert_eq!(
            h.backend, CONNECTIONS,
            "[{engine}] test self-check: the backend closed first and must hold the backend \
             leg's TIME_WAIT ({h:?})"
        );
        assert_eq!(
            h.ringlb_backend_side, 0,
            "[{engine}] ringlb holds TIME_WAIT on backend-facing sockets although the backend \
             closed first: it sent its FIN to the backend before taking the backend's ({h:?})"
        );
        assert_eq!(
            h.ringlb_client_side, CONNECTIONS,
            "[{engine}] ringlb forwarded each backend FIN, so TCP leaves exactly one TIME_WAIT \
             per connection on its client-facing side; fewer means the client leg was reset \
             ({h:?})"
        );
        assert_eq!(
            h.clients, 0,
            "[{engine}] the clients closed passively ({h:?})"
        );
    });
}
