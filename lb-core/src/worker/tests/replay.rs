//! The replayable phase (`retry_before_response`, `replay.rs`) fed events
//! the way an engine feeds them: a backend closing or resetting before its
//! first byte, clients sending a hello in pieces, more than a hello, or
//! no TLS at all, backends answering first, and the setting off.

use std::io::Write;

use super::*;

/// A ClientHello curl sent (SNI, TLS 1.3), captured for the reader's tests.
const HELLO: &[u8] = include_bytes!("../../fuzz/corpus/tls_hello/curl_sni.bin");

/// A backend's readable edge (bytes or a close arrived).
const READABLE: Readiness = Readiness {
    readable: true,
    writable: true,
    read_closed: false,
};

/// Everything the far end `far` can read now, without waiting.
fn drain(far: &mut UnixStream) -> Vec<u8> {
    far.set_nonblocking(true).expect("non-blocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match far.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
            Err(e) => panic!("reading a far end: {e}"),
        }
    }
}

/// What the worker's end of client `slot` still holds (a peek).
fn held_by_client<const A: bool>(r: &Rig<A>, slot: usize) -> Vec<u8> {
    let conn = r.worker.slab.get(slot).expect("a connection in the slot");
    let mut buf = vec![0u8; 64 * 1024];
    match crate::sys::peek(conn.client.as_raw_fd(), &mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
        Err(e) => panic!("peeking the client: {e}"),
    }
}

fn phase_of<const A: bool>(r: &Rig<A>, slot: usize) -> &'static str {
    match r.worker.slab.get(slot).map(|c| &c.phase) {
        Some(Phase::Preamble { .. }) => "preamble",
        Some(Phase::Hello { .. }) => "hello",
        Some(Phase::Connecting { .. }) => "connecting",
        Some(Phase::Replayable(_)) => "replayable",
        Some(Phase::Established { .. }) => "established",
        None => "gone",
    }
}

/// The backend socket of the connection in `slot` reports `event`.
fn backend_event<const A: bool>(r: &mut Rig<A>, slot: usize, event: Readiness) {
    let token = r.backend_leg(slot);
    r.worker.on_event(token, event);
}

/// Client from `ip` that sent `first` before being accepted; its connect
/// to its first candidate started, and its readable edge reported (both
/// engines report what a socket holds when it is registered).
fn client_sending(r: &mut Rig<false>, ip: [u8; 4], first: &[u8]) {
    r.queue_client(ip);
    let i = r.clients.len() - 1;
    r.clients[i].write_all(first).expect("the client writes");
    r.listener_readable();
    let slot = r.worker.slab.len() - 1;
    client_edge(r, slot, false);
}

#[test]
fn a_backend_closing_or_resetting_before_answering_is_replaced_and_the_next_gets_exactly_the_hello()
{
    let mut r = rig::<false>("connect_attempts = 3", 3);
    let ip = [10, 1, 2, 3];
    let expected = r.preference(ip);
    assert_eq!(expected.len(), 3);
    client_sending(&mut r, ip, HELLO);

    // b0 connects: it gets the hello, which the client's socket keeps.
    r.connect_succeeds(0);
    assert_eq!(phase_of(&r, 0), "replayable");
    assert_eq!(drain(&mut r.worker.sys.backends[0]), HELLO);
    assert_eq!(held_by_client(&r, 0), HELLO, "held until an answer");
    // It read the hello and closed without a byte (FIN).
    r.worker.sys.backends[0] = UnixStream::pair().expect("a socket pair").0;
    backend_event(&mut r, 0, FIN);
    assert_eq!(phase_of(&r, 0), "connecting");
    assert_eq!(r.worker.sys.connects, expected[..2]);

    // b1 connects, gets the same hello, and is reset (it never read it).
    r.connect_succeeds(0);
    assert_eq!(phase_of(&r, 0), "replayable");
    assert_eq!(held_by_client(&r, 0), HELLO);
    r.worker.sys.backends[1] = UnixStream::pair().expect("a socket pair").0;
    backend_event(&mut r, 0, FIN);
    assert_eq!(r.worker.sys.connects, expected);

    // b2 answers: established there, the hello taken off the client.
    r.connect_succeeds(0);
    assert_eq!(drain(&mut r.worker.sys.backends[2]), HELLO, "byte-exact");
    r.worker.sys.backends[2]
        .write_all(b"\x16\x03\x03 server hello")
        .expect("the backend answers");
    backend_event(&mut r, 0, READABLE);
    assert_eq!(phase_of(&r, 0), "established");
    assert_eq!(drain(&mut r.clients[0]), b"\x16\x03\x03 server hello");
    assert!(held_by_client(&r, 0).is_empty(), "the hello was taken");
    assert!(drain(&mut r.worker.sys.backends[2]).is_empty(), "sent once");

    let sent: Vec<usize> = r.worker.sys.sent.iter().map(|(_, b)| b.len()).collect();
    assert_eq!(sent, [HELLO.len(); 3], "once to each backend");
    assert_eq!(
        r.failures(),
        [
            (expected[0], ConnectFailure::ClosedBeforeAnswer),
            (expected[1], ConnectFailure::Other(libc::ECONNRESET)),
        ],
        "both are the backends' failures"
    );
    assert_eq!(r.service_stat(|s| s.tls_replays.load(Relaxed)), 2);
    assert_eq!(r.service_stat(|s| s.retries.load(Relaxed)), 2);
    for (i, address) in expected.iter().enumerate() {
        let stats = r.backend_stats(*address);
        let on_it = u64::from(i == 2);
        assert_eq!(stats.active.load(Relaxed), on_it, "active, b{i}");
        assert_eq!(stats.total.load(Relaxed), on_it, "total, b{i}");
    }
    assert!(!r.client_closed(0));
}

#[test]
fn a_hello_in_pieces_and_a_short_send_reach_the_backend_whole_and_in_order() {
    let mut r = rig::<false>("connect_attempts = 2", 2);
    let ip = [10, 1, 2, 4];
    let expected = r.preference(ip);
    let (head, tail) = HELLO.split_at(100);
    client_sending(&mut r, ip, head);
    // The backend's send buffer takes 7 bytes, then is full.
    r.worker.sys.send_limits = VecDeque::from([7, 0]);
    r.connect_succeeds(0);
    assert_eq!(drain(&mut r.worker.sys.backends[0]), &head[..7]);
    // Writable again: the rest of what was seen.
    backend_event(&mut r, 0, CONNECTED);
    assert_eq!(drain(&mut r.worker.sys.backends[0]), &head[7..]);
    r.clients[0].write_all(tail).expect("the client writes");
    client_edge(&mut r, 0, false);
    assert_eq!(drain(&mut r.worker.sys.backends[0]), tail);
    assert_eq!(held_by_client(&r, 0), HELLO);

    // Reset after all that: the second backend gets it in one piece.
    r.worker.sys.backends[0] = UnixStream::pair().expect("a socket pair").0;
    backend_event(&mut r, 0, FIN);
    r.connect_succeeds(0);
    assert_eq!(r.worker.sys.connects, expected);
    assert_eq!(drain(&mut r.worker.sys.backends[1]), HELLO);
    assert_eq!(r.service_stat(|s| s.tls_replays.load(Relaxed)), 1);
}

#[test]
fn more_than_a_hello_plain_text_or_a_fin_is_forwarded_at_once_and_never_held() {
    let early: Vec<u8> = [HELLO, b"\x17\x03\x03 early data"].concat();
    let cases: [(&str, &[u8], bool); 4] = [
        ("hello and early data", &early, false),
        ("plain text", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false),
        (
            "a malformed hello",
            b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
            false,
        ),
        ("a hello and a FIN", HELLO, true),
    ];
    for (what, first, fin) in cases {
        let mut r = rig::<false>("connect_attempts = 3", 3);
        client_sending(&mut r, [10, 1, 2, 5], first);
        if fin {
            r.clients[0]
                .shutdown(std::net::Shutdown::Write)
                .expect("the client's FIN");
            client_edge(&mut r, 0, true);
        }
        let peeks = r.worker.sys.peeks;
        r.connect_succeeds(0);
        assert_eq!(phase_of(&r, 0), "established", "{what}");
        assert_eq!(r.worker.sys.peeks - peeks, 1, "{what}: one peek");
        assert!(r.worker.sys.sent.is_empty(), "{what}: no copy");
        assert_eq!(
            drain(&mut r.worker.sys.backends[0]),
            first,
            "{what}: the pumps forwarded it"
        );
        assert_eq!(r.worker.sys.connects.len(), 1, "{what}");
    }
}

#[test]
fn a_backend_speaking_first_ends_the_wait_and_a_silent_one_meets_the_idle_timeout() {
    let mut r = rig::<false>("connect_attempts = 2\nidle_timeout = \"10s\"", 2);
    client_sending(&mut r, [10, 1, 2, 6], b"");
    r.connect_succeeds(0);
    assert_eq!(phase_of(&r, 0), "replayable");
    r.worker.sys.backends[0]
        .write_all(b"SSH-2.0-x\r\n")
        .expect("the backend greets");
    backend_event(&mut r, 0, READABLE);
    assert_eq!(phase_of(&r, 0), "established");
    assert_eq!(drain(&mut r.clients[0]), b"SSH-2.0-x\r\n");

    // A client with a hello, a backend that accepts and never answers.
    client_sending(&mut r, [10, 1, 2, 7], HELLO);
    r.connect_succeeds(1);
    assert_eq!(phase_of(&r, 1), "replayable");
    let address = *r.worker.sys.connects.last().expect("a connect");
    assert_eq!(r.backend_stats(address).active.load(Relaxed), 1);
    r.after(Duration::from_millis(9_999));
    assert_eq!(phase_of(&r, 1), "replayable");
    r.after(Duration::from_millis(2));
    assert_eq!(phase_of(&r, 1), "gone", "the idle timeout ended it");
    assert!(r.client_closed(1));
    assert_eq!(r.backend_stats(address).active.load(Relaxed), 0);
    assert_eq!(r.worker.sys.connects.len(), 2, "no retry for silence");
}

#[test]
fn with_no_candidate_left_or_retry_off_the_client_sees_the_close_as_before() {
    for settings in [
        "connect_attempts = 1",
        "connect_attempts = 3\nretry_before_response = \"off\"",
    ] {
        let mut r = rig::<false>(settings, 3);
        client_sending(&mut r, [10, 1, 2, 8], HELLO);
        r.connect_succeeds(0);
        assert_eq!(drain(&mut r.worker.sys.backends[0]), HELLO, "{settings}");
        r.worker.sys.backends[0] = UnixStream::pair().expect("a socket pair").0;
        backend_event(&mut r, 0, FIN);
        assert_eq!(r.worker.sys.connects.len(), 1, "{settings}: no retry");
        assert!(r.client_closed(0), "{settings}: the client saw the close");
        assert!(r.failures().is_empty(), "{settings}: nothing reported");
        assert_eq!(r.service_stat(|s| s.tls_replays.load(Relaxed)), 0);
        let off = settings.contains("off");
        assert_eq!(r.worker.sys.sent.is_empty(), off, "{settings}: copies");
    }
}
