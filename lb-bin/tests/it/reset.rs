//! Resets: an RST from one side is passed on to the other as an RST
//! (SO_LINGER 0), never softened into a FIN, which a peer would take for a
//! complete answer.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{
    self, client_sources, connect_from, for_each_variant, read_outcome, reset, Backend, LbConfig,
    ReadOutcome, Ringlb,
};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn backend_reset_reaches_client_as_reset() {
    let _shared = harness::shared();
    for_each_variant("reset::from_backend", |engine| {
        let (got_tx, got) = mpsc::channel();
        let backend = Backend::resetting("rst", got_tx);
        let lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));

        let mut client = connect_from(client_sources()[2], lb.addr()).expect("connect");
        client.write_all(b"hello").expect("send");
        let seen = got
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("[{engine}] backend never received the client's bytes"));
        assert_eq!(seen, b"hello");

        client.set_read_timeout(Some(WAIT)).expect("timeout");
        let outcome = read_outcome(&mut client, &mut [0u8; 64]);
        assert_eq!(
            outcome,
            ReadOutcome::Reset,
            "[{engine}] backend closed with RST; the client must see ConnectionReset \
             (Eof = ringlb turned the RST into a FIN; TimedOut = it never passed it on)"
        );
    });
}

#[test]
fn client_reset_reaches_backend_as_reset() {
    let _shared = harness::shared();
    for_each_variant("reset::from_client", |engine| {
        let (ends_tx, ends) = mpsc::channel();
        let backend = Backend::echo_reporting("observer", ends_tx);
        let lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));

        let mut client = connect_from(client_sources()[3], lb.addr()).expect("connect");
        client.write_all(b"ping").expect("send");
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).expect("echo");
        assert_eq!(&echo, b"ping", "[{engine}] path not established");
        reset(client);

        let end = ends.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("[{engine}] backend connection still open {WAIT:?} after the client's RST")
        });
        assert_eq!(
            end,
            ReadOutcome::Reset,
            "[{engine}] client closed with RST; the backend must see ConnectionReset (Eof = \
             ringlb turned the RST into a FIN)"
        );
    });
}
