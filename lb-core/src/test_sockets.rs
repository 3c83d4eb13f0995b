//! Sockets for unit tests (compiled for tests only): a loopback TCP
//! connection whose inside end is set up as ringlb's own sockets are.
//! Runs on the calling test's thread.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// (outside end, inside end) of a loopback TCP connection. The inside end
/// (the accepted one) is non-blocking, as ringlb's sockets are; the
/// outside end, the test's peer, blocks, with a read timeout so that a
/// read that never gets its bytes fails the test instead of hanging it.
pub(crate) fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (inside, _) = l.accept().unwrap();
    inside.set_nonblocking(true).unwrap();
    outside
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (outside, inside)
}
