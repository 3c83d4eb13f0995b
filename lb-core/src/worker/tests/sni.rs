//! The worker's SNI phase over socket pairs (`worker/sni.rs`): a real
//! ClientHello (written by rustls) judged on every edge, never consumed,
//! the service's backend chosen only once it is whole; refusals by reason.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::{client_edge, rig, Rig};
use crate::access_log::EndCause;
use crate::stats::SniRefused;
use crate::tls_hello::Refusal;

const SNI: &str = "sni = [\"art.example.com\", \"*.example.com\"]\nsni_timeout = \"500ms\"\n\
                   connect_attempts = 1";

/// A ClientHello for `name` as rustls writes it.
fn hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("a name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("a client");
    let mut bytes = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut bytes).expect("the hello");
    }
    bytes
}

fn refused<const A: bool>(r: &Rig<A>, reason: SniRefused) -> u64 {
    r.service_stat(|s| s.sni_refused(reason))
}

#[test]
fn a_hello_split_byte_by_byte_is_judged_on_each_edge_and_left_for_the_backend() {
    let mut r = rig::<false>(SNI, 4);
    let peer = [10, 0, 0, 5];
    r.queue_client(peer);
    r.listener_readable();
    let bytes = hello("ci.EXAMPLE.com");
    for (i, b) in bytes.iter().enumerate() {
        r.clients[0].write_all(&[*b]).unwrap();
        client_edge(&mut r, 0, false);
        if i + 1 < bytes.len() {
            assert!(r.worker.sys.connects.is_empty(), "connected at byte {i}");
            assert!(!r.client_closed(0));
        }
    }
    assert!(r.worker.sys.peeks >= bytes.len(), "one judgement per edge");
    assert_eq!(r.worker.sys.connects, vec![r.preference(peer)[0]]);
    let conn = r.worker.slab.get(0).expect("the connection");
    assert!(conn.client_ready.readable, "the pumps look for the hello");
    // Nothing was taken: the whole hello waits for the backend.
    let mut left = vec![0u8; bytes.len() + 16];
    let n = crate::sys::peek(conn.client.as_raw_fd(), &mut left).unwrap();
    assert_eq!(&left[..n], &bytes[..]);
    assert_eq!(r.service_stat(|s| s.accepted.load(Relaxed)), 1);
    for reason in SniRefused::all() {
        assert_eq!(refused(&r, reason), 0, "{reason:?}");
    }
}

#[test]
fn bad_unknown_late_and_abandoned_hellos_are_refused_by_reason_and_reach_no_backend() {
    let mut r = rig::<true>(SNI, 4);
    // 0: plain HTTP; 1: a record declaring a 64 KiB hello; 2: another
    // name; 3: a.b.example.com (a wildcard takes one label); 4: half a
    // hello, then FIN; 5: half a hello, then silence.
    let art = hello("art.example.com");
    for i in 0..6u8 {
        let (fd, addr) = r.client([10, 0, 0, 10 + i]);
        match i {
            0 => r.clients[0].write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap(),
            1 => r.clients[1]
                .write_all(&[22, 3, 1, 0x40, 0, 1, 0, 0xff, 0xff])
                .unwrap(),
            2 => r.clients[2].write_all(&hello("other.org")).unwrap(),
            3 => r.clients[3].write_all(&hello("a.b.example.com")).unwrap(),
            4 | 5 => r.clients[usize::from(i)]
                .write_all(&art[..art.len() / 2])
                .unwrap(),
            _ => unreachable!(),
        }
        if i == 4 {
            r.clients[4].shutdown(std::net::Shutdown::Write).unwrap();
        }
        r.worker.on_accepted(0, fd, addr);
    }
    client_edge(&mut r, 4, true);
    for i in 0..5 {
        assert!(r.client_closed(i), "client {i} still open");
    }
    assert!(!r.client_closed(5), "a slow hello is given its time");
    assert_eq!(refused(&r, SniRefused::Hello(Refusal::NotTls)), 1);
    assert_eq!(refused(&r, SniRefused::Hello(Refusal::Oversized)), 1);
    assert_eq!(refused(&r, SniRefused::UnknownName), 2);
    assert_eq!(refused(&r, SniRefused::Closed), 1);
    r.after(Duration::from_millis(499));
    assert!(!r.client_closed(5));
    r.after(Duration::from_millis(1));
    assert!(r.client_closed(5));
    assert_eq!(refused(&r, SniRefused::Timeout), 1);
    assert!(
        r.worker.sys.connects.is_empty(),
        "a refused client reached a backend"
    );
    assert_eq!(r.worker.slab.len(), 0);
    assert_eq!(r.service_stat(|s| s.active.load(Relaxed) as u64), 0);
    assert_eq!(r.service_stat(|s| s.ends.refused(EndCause::SniRefused)), 6);
    assert_eq!(r.service_stat(|s| s.accepted.load(Relaxed)), 6);
}

#[test]
fn the_picked_service_at_its_limit_refuses_and_gives_its_place_back() {
    let mut r = rig::<false>(&format!("{SNI}\nmax_connections = 1"), 4);
    let bytes = hello("art.example.com");
    for i in 0..2u8 {
        r.queue_client([10, 0, 0, 20 + i]);
        r.listener_readable();
        r.clients[usize::from(i)].write_all(&bytes).unwrap();
        client_edge(&mut r, usize::from(i), false);
    }
    assert!(!r.client_closed(0));
    assert!(r.client_closed(1), "past max_connections");
    assert_eq!(refused(&r, SniRefused::Full), 1);
    assert_eq!(r.worker.sys.connects.len(), 1);
    assert_eq!(r.service_stat(|s| s.active.load(Relaxed) as u64), 1);
}
