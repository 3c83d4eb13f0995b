//! Tests of completion-driven forwarding: a real ring and real sockets on
//! loopback, the test's thread playing the engine and the worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::flow::FlowOps;
use super::*;
use crate::conn::prepare_reset;
use crate::engine::uring::user_data::Request;
use crate::pipe::Pipe;
use crate::sys;
use crate::test_sockets::tcp_pair;
use io_uring::types::{SubmitArgs, Timespec};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A ring and its ops, driven by the test's thread as the engine
/// would (the sq field first: the ring closes before the buffers go).
struct Rig {
    sq: Sq,
    ops: Ops,
}

impl Rig {
    fn new(forwarding: RingForwarding, pipe_size: usize) -> Rig {
        let ring = super::super::build().unwrap();
        let ops = Ops::new(forwarding, &ring.ring.submitter(), pipe_size, 4).unwrap();
        Rig {
            sq: Sq::new(ring),
            ops,
        }
    }

    /// One turn: submit, wait up to 10 ms, hand completions over.
    fn turn(&mut self) -> Vec<Report> {
        self.sq.flush_backlog();
        let ts = Timespec::from(Duration::from_millis(10));
        let args = SubmitArgs::new().timespec(&ts);
        let _ = self.sq.ring.submitter().submit_with_args(1, &args);
        let cqes: Vec<cqueue::Entry> = self.sq.ring.completion().collect();
        let mut reports = Vec::new();
        for cqe in cqes {
            if let Some(Request::Flow(req)) = UserData::from_raw(cqe.user_data()).request() {
                reports.extend(
                    self.ops
                        .complete(&mut self.sq, req, cqe.result(), cqe.flags()),
                );
            }
        }
        self.ops.turn(&mut self.sq);
        reports
    }
}

/// A connection through the rig: the worker's part, played by the
/// test (sockets, byte counts, ending it as the worker would).
struct Link {
    client: TcpStream,
    backend: TcpStream,
    inside: Option<(TcpStream, TcpStream)>,
    handle: u64,
    up: u64,
    down: u64,
    outcome: Option<Outcome>,
}

impl Link {
    fn new(rig: &mut Rig, token: u64) -> Link {
        let (client, c_in) = tcp_pair();
        let (backend, b_in) = tcp_pair();
        let handle = rig
            .ops
            .start(&mut rig.sq, token, c_in.as_raw_fd(), b_in.as_raw_fd());
        Link {
            client,
            backend,
            inside: Some((c_in, b_in)),
            handle,
            up: 0,
            down: 0,
            outcome: None,
        }
    }

    /// What the worker does at the end: stop the flows, then close
    /// (with RST on the sides named).
    fn end(&mut self, rig: &mut Rig, reset_client: bool, reset_backend: bool) {
        let (c, b) = self.inside.take().expect("ended twice");
        if reset_client {
            prepare_reset(c.as_raw_fd());
        }
        if reset_backend {
            prepare_reset(b.as_raw_fd());
        }
        rig.ops.stop(&mut rig.sq, self.handle, [c.into(), b.into()]);
    }
}

/// Turns until `done`, applying reports to `links` (token = index).
fn drive(rig: &mut Rig, links: &mut [Link], mut done: impl FnMut(&Rig, &[Link]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(rig, links) {
        assert!(
            Instant::now() < deadline,
            "the rig did not get there: lent {:?}, in flight {}, starved {}, up {:?}, down {:?}, pending {:?}",
            rig.ops.lent(),
            rig.ops.in_flight(),
            rig.ops.starved.len(),
            links.iter().map(|l| l.up).collect::<Vec<_>>(),
            links.iter().map(|l| l.down).collect::<Vec<_>>(),
            rig.ops
                .conns
                .iter()
                .map(|c| c.flows.each_ref().map(|f| f.pending))
                .collect::<Vec<_>>(),
        );
        for r in rig.turn() {
            let link = &mut links[r.token as usize];
            link.up += r.up;
            link.down += r.down;
            match r.outcome {
                Outcome::Open { .. } => {}
                Outcome::Finished => link.end(rig, false, false),
                Outcome::Aborted {
                    reset_client,
                    reset_backend,
                } => link.end(rig, reset_client, reset_backend),
            }
            if !matches!(r.outcome, Outcome::Open { .. }) {
                link.outcome = Some(r.outcome);
            }
        }
    }
}

const MODES: [RingForwarding; 2] = [RingForwarding::Copy, RingForwarding::Splice];

fn payload(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(seed) ^ (i >> 9)) as u8)
        .collect()
}

/// What a flow and a connection's slot cost: the in-flight state is one
/// enum (nothing, a buffer, or a pipe), and the pending request is named
/// by its operation alone (the slot and sequence give the rest of its user
/// data). Before, 80 and 192 bytes.
#[test]
fn a_flow_and_a_slot_stay_small() {
    use std::mem::size_of;
    assert!(size_of::<Held>() <= 24, "{}", size_of::<Held>());
    assert!(size_of::<Pipe>() <= 16, "{}", size_of::<Pipe>());
    assert!(size_of::<InFlight>() <= 32, "{}", size_of::<InFlight>());
    assert!(size_of::<FlowOps>() <= 40, "{}", size_of::<FlowOps>());
    assert!(size_of::<OpsConn>() <= 112, "{}", size_of::<OpsConn>());
}

#[test]
fn a_mebibyte_echoes_both_ways_with_half_close_in_each_mode() {
    for mode in MODES {
        let mut rig = Rig::new(mode, 64 << 10);
        let mut links = [Link::new(&mut rig, 0)];
        let sent = payload(7, 1 << 20);
        // The backend echoes until the client's FIN, then sends its own.
        let mut backend = links[0].backend.try_clone().unwrap();
        let echo = std::thread::spawn(move || {
            let mut r = backend.try_clone().unwrap();
            let n = std::io::copy(&mut r, &mut backend).unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            n
        });
        let mut client = links[0].client.try_clone().unwrap();
        let to_send = sent.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&to_send).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        });
        let mut client = links[0].client.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        drive(&mut rig, &mut links, |_, l| l[0].outcome.is_some());
        writer.join().unwrap();
        assert_eq!(echo.join().unwrap(), 1 << 20, "{mode:?}: the backend got");
        let got = reader.join().unwrap();
        assert!(got == sent, "{mode:?}: echo differs ({} bytes)", got.len());
        assert_eq!(links[0].outcome, Some(Outcome::Finished), "{mode:?}");
        assert_eq!((links[0].up, links[0].down), (1 << 20, 1 << 20), "{mode:?}");
        assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}: pipes, buffers lent");
        assert_eq!(rig.ops.in_flight(), 0, "{mode:?}");
    }
}

/// Half-close the other way round: the backend answers and closes
/// first, the client keeps sending afterwards.
#[test]
fn the_backend_closing_first_leaves_the_other_direction_open() {
    for mode in MODES {
        let mut rig = Rig::new(mode, 64 << 10);
        let mut links = [Link::new(&mut rig, 0)];
        links[0].backend.write_all(b"hello, then FIN").unwrap();
        links[0].backend.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let mut client = links[0].client.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            client.read_to_end(&mut got).unwrap();
            got
        });
        // Until the client has the bytes and the FIN.
        drive(&mut rig, &mut links, |_, _| reader.is_finished());
        assert_eq!(reader.join().unwrap(), b"hello, then FIN", "{mode:?}");
        assert_eq!(links[0].down, 15);
        // The client still talks to the backend after the FIN.
        links[0].client.write_all(b"late words").unwrap();
        links[0].client.shutdown(Shutdown::Write).unwrap();
        drive(&mut rig, &mut links, |_, l| l[0].outcome.is_some());
        let mut late = Vec::new();
        links[0].backend.read_to_end(&mut late).unwrap();
        assert_eq!(late, b"late words", "{mode:?}");
        assert_eq!(links[0].outcome, Some(Outcome::Finished), "{mode:?}");
        assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}");
    }
}

#[test]
fn a_reset_from_the_backend_resets_the_client() {
    for mode in MODES {
        let mut rig = Rig::new(mode, 64 << 10);
        let mut links = [Link::new(&mut rig, 0)];
        links[0].client.write_all(b"request").unwrap();
        drive(&mut rig, &mut links, |_, l| l[0].up == 7);
        prepare_reset(links[0].backend.as_raw_fd());
        let (_, backend) = tcp_pair();
        drop(std::mem::replace(&mut links[0].backend, backend));
        drive(&mut rig, &mut links, |_, l| l[0].outcome.is_some());
        assert_eq!(
            links[0].outcome,
            Some(Outcome::Aborted {
                reset_client: true,
                reset_backend: false
            }),
            "{mode:?}"
        );
        // The client's receive holds the socket until its cancel is in.
        drive(&mut rig, &mut links, |rig, _| rig.ops.in_flight() == 0);
        assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}");
        // The client learns it by an RST, not a FIN.
        let mut buf = [0u8; 16];
        let r = links[0].client.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{mode:?}: the client read {r:?}"
        );
    }
}

/// A connection stopped while a write is stuck on a reader that does
/// not read (and a receive waits on the other side): the requests are
/// cancelled, and the buffer or pipe they used comes back (the pipe,
/// holding bytes, is closed) only when their completions are in.
#[test]
fn a_connection_stopped_with_requests_in_flight_gives_everything_back() {
    for mode in MODES {
        let mut rig = Rig::new(mode, 64 << 10);
        let mut links = [Link::new(&mut rig, 0)];
        // The client reads nothing: the backend's bytes pile up.
        let (c_in, _) = links[0].inside.as_ref().unwrap();
        socket2::SockRef::from(c_in)
            .set_send_buffer_size(16 << 10)
            .unwrap();
        socket2::SockRef::from(&links[0].client)
            .set_recv_buffer_size(16 << 10)
            .unwrap();
        let mut backend = links[0].backend.try_clone().unwrap();
        let flood = std::thread::spawn(move || {
            let chunk = vec![1u8; 1 << 16];
            while backend.write_all(&chunk).is_ok() {}
        });
        let stuck = |rig: &Rig, _: &[Link]| {
            let c = &rig.ops.conns[0];
            let writing = matches!(c.flows[DOWN].pending, Some(Op::Send | Op::PollOut));
            let (pipes, bufs) = rig.ops.lent();
            writing && pipes + bufs == 1 && c.flows[UP].pending.is_some()
        };
        drive(&mut rig, &mut links, stuck);
        // And it stays so: the reader does not read.
        let mut turns = 0;
        drive(&mut rig, &mut links, |_, _| {
            turns += 1;
            turns > 10
        });
        assert!(stuck(&rig, &links), "{mode:?}: a write should be stuck");
        assert!(links[0].down > 0, "{mode:?}");
        assert_eq!(rig.ops.in_flight(), 2, "{mode:?}: a read and a write");
        links[0].end(&mut rig, true, true);
        drive(&mut rig, &mut links, |rig, _| rig.ops.in_flight() == 0);
        assert_eq!(rig.ops.lent(), (0, 0), "{mode:?}: pipes, buffers lent");
        assert_eq!(rig.ops.free.len(), 1, "{mode:?}: the slot is free again");
        let _ = links[0].client.shutdown(Shutdown::Both);
        let _ = links[0].backend.shutdown(Shutdown::Both);
        flood.join().unwrap();
    }
}

/// The fd's target, "socket:[inode]", or None once closed.
fn fd_target(fd: RawFd) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// A connection stopped in the turn it started: its receives are
/// queued, not yet submitted, and name fd numbers. The sockets stay
/// open (so the numbers cannot go to a newly accepted socket, whose
/// bytes a stale receive would eat) until those requests are over.
#[test]
fn sockets_handed_over_on_stop_close_only_after_their_last_request() {
    for mode in MODES {
        let mut rig = Rig::new(mode, 64 << 10);
        let mut links = [Link::new(&mut rig, 0)];
        let (c_in, b_in) = links[0].inside.as_ref().unwrap();
        let fds = [c_in.as_raw_fd(), b_in.as_raw_fd()];
        let targets = fds.map(fd_target);
        links[0].end(&mut rig, false, false);
        assert_eq!(fds.map(fd_target), targets, "{mode:?}: closed too early");
        assert_eq!(rig.ops.in_flight(), 2);
        drive(&mut rig, &mut links, |rig, _| rig.ops.in_flight() == 0);
        for (fd, before) in fds.into_iter().zip(targets) {
            // Closed (or the number since reused by another test).
            assert_ne!(fd_target(fd), before, "{mode:?}: fd {fd} still open");
        }
        assert_eq!(rig.ops.lent(), (0, 0));
    }
}

/// Receives submitted while the ring is empty fail with ENOBUFS even
/// on idle sockets, and a woken idle flow takes no buffer: waking one
/// flow per buffer as completions come is not enough when they stop
/// coming. Once the ring has buffers again and the worker turns, no
/// flow may stay parked, and each still forwards.
#[test]
fn idle_flows_that_found_the_ring_empty_are_not_forgotten() {
    let mut rig = Rig::new(RingForwarding::Copy, 1 << 20);
    rig.ops.keep_ring_when_stalled = true;
    // 16 busy links whose sends stick hold every buffer.
    let mut links: Vec<Link> = (0..MIN_BUFFERS)
        .map(|i| Link::new(&mut rig, i as u64))
        .collect();
    for l in &links {
        small_buffers(l);
        let mut c = l.client.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = c.write_all(&vec![9u8; 4 << 20]);
        });
    }
    drive(&mut rig, &mut links, |rig, _| {
        rig.ops.pools.available() == 0
    });
    // 200 idle links arrive now: all their receives find the ring
    // empty; more than the busy links' ends can wake one by one.
    let _ = sys::raise_nofile_limit();
    let idle = 200;
    for i in 0..idle {
        links.push(Link::new(&mut rig, (MIN_BUFFERS + i) as u64));
    }
    drive(&mut rig, &mut links, |rig, _| {
        rig.ops.starved.len() >= 2 * idle && rig.ops.in_flight() == 2 * MIN_BUFFERS
    });
    // The busy links end: their backends reset.
    for l in &mut links[..MIN_BUFFERS] {
        prepare_reset(l.backend.as_raw_fd());
        let (_, spare) = tcp_pair();
        drop(std::mem::replace(&mut l.backend, spare));
    }
    drive(&mut rig, &mut links, |_, l| {
        l[..MIN_BUFFERS].iter().all(|l| l.outcome.is_some())
    });
    // Quiet now. The engine turns without sleeping while flows are
    // parked and the ring has buffers; after that none may be left.
    drive(&mut rig, &mut links, |rig, _| !rig.ops.has_parked());
    assert_eq!(rig.ops.pools.available(), MIN_BUFFERS);
    let parked = rig
        .ops
        .conns
        .iter()
        .filter(|c| c.live && c.flows.iter().any(|f| f.starved));
    assert_eq!(
        parked.count(),
        0,
        "flows left waiting with buffers in the ring"
    );
    // And every idle link forwards.
    for l in &mut links[MIN_BUFFERS..] {
        l.client.write_all(b"ping").unwrap();
    }
    drive(&mut rig, &mut links, |_, l| {
        l[MIN_BUFFERS..].iter().all(|l| l.up == 4)
    });
}

/// More busy flows than buffers: receives that find the ring empty
/// wait (ENOBUFS) and go on when a buffer comes back; no byte lost.
/// Small socket buffers between ringlb's backend side and the backend,
/// so that a send nobody reads sticks soon.
fn small_buffers(l: &Link) {
    let (_, b_in) = l.inside.as_ref().unwrap();
    socket2::SockRef::from(b_in)
        .set_send_buffer_size(16 << 10)
        .unwrap();
    socket2::SockRef::from(&l.backend)
        .set_recv_buffer_size(16 << 10)
        .unwrap();
}

/// `n` links with small buffers whose clients each send a 3 MiB
/// stream (seeded `seed + i`), then a FIN, that no backend reads yet.
fn unread_streams(
    rig: &mut Rig,
    n: usize,
    seed: u32,
) -> (Vec<Link>, Vec<std::thread::JoinHandle<()>>) {
    let links: Vec<Link> = (0..n).map(|i| Link::new(rig, i as u64)).collect();
    links.iter().for_each(small_buffers);
    let writers = links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = l.client.try_clone().unwrap();
            std::thread::spawn(move || {
                c.write_all(&payload(seed + i as u32, 3 << 20)).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            })
        })
        .collect();
    (links, writers)
}

/// The backends of the first `writers.len()` links read their streams
/// to the end, then close: every link (whatever else `links` holds,
/// already shut both ways) finishes, each stream arrives whole, and
/// nothing stays lent or in flight.
fn read_unread_streams(
    rig: &mut Rig,
    links: &mut [Link],
    seed: u32,
    writers: Vec<std::thread::JoinHandle<()>>,
) {
    let readers: Vec<_> = links[..writers.len()]
        .iter()
        .map(|l| {
            let mut b = l.backend.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                b.read_to_end(&mut got).unwrap();
                b.shutdown(Shutdown::Write).unwrap();
                got
            })
        })
        .collect();
    drive(rig, links, |_, l| l.iter().all(|l| l.outcome.is_some()));
    for (i, r) in readers.into_iter().enumerate() {
        assert!(
            r.join().unwrap() == payload(seed + i as u32, 3 << 20),
            "stream {i}"
        );
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(links.iter().all(|l| l.outcome == Some(Outcome::Finished)));
    assert_eq!((rig.ops.lent(), rig.ops.in_flight()), ((0, 0), 0));
}

#[test]
fn readers_that_stop_reading_do_not_hold_the_buffer_ring() {
    // 1 MiB buffers: the ring has the minimum, 16, fewer than the
    // stalled readers.
    let mut rig = Rig::new(RingForwarding::Copy, 1 << 20);
    assert_eq!(rig.ops.pools.bufs.as_ref().unwrap().entries(), MIN_BUFFERS);
    let n = MIN_BUFFERS + 8;
    let (mut links, writers) = unread_streams(&mut rig, n, 5);
    // Each stalled flow holds its bytes in a spill buffer of its own;
    // the ring is all there for other flows.
    drive(&mut rig, &mut links, |rig, _| {
        let waiting = rig.ops.conns.iter().filter(|c| {
            matches!(
                &c.flows[UP].in_flight,
                InFlight::Buffer(Held {
                    store: Store::Spilled(_),
                    ..
                })
            )
        });
        waiting.count() == n && rig.ops.pools.available() == MIN_BUFFERS
    });
    assert_eq!(rig.ops.lent(), (0, n), "one spill buffer per stalled flow");
    assert!(rig.ops.starved.is_empty());
    // A fresh link is served meanwhile, both ways.
    let mut fresh = Link::new(&mut rig, n as u64);
    fresh.client.write_all(b"ping").unwrap();
    fresh.backend.write_all(b"pong").unwrap();
    links.push(fresh);
    drive(&mut rig, &mut links, |_, l| l[n].up == 4 && l[n].down == 4);
    let mut got = [0u8; 4];
    links[n].backend.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    links[n].client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    links[n].client.shutdown(Shutdown::Write).unwrap();
    links[n].backend.shutdown(Shutdown::Write).unwrap();
    read_unread_streams(&mut rig, &mut links, 5, writers);
}

#[test]
fn flows_that_find_the_buffer_ring_empty_wait_for_a_buffer() {
    // 1 MiB buffers: the ring has the minimum, 16.
    let mut rig = Rig::new(RingForwarding::Copy, 1 << 20);
    rig.ops.keep_ring_when_stalled = true;
    assert_eq!(rig.ops.pools.bufs.as_ref().unwrap().entries(), MIN_BUFFERS);
    let n = 24;
    // Each flow's send sticks holding a buffer, until the ring is
    // empty.
    let (mut links, writers) = unread_streams(&mut rig, n, 3);
    drive(&mut rig, &mut links, |rig, _| {
        let starved = rig.ops.conns.iter().filter(|c| c.flows[UP].starved);
        rig.ops.pools.available() == 0 && starved.count() == n - MIN_BUFFERS
    });
    read_unread_streams(&mut rig, &mut links, 3, writers);
}
