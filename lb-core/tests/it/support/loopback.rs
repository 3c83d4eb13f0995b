//! Both ends of a test's traffic on loopback: echo backends on
//! 127.0.0.1:0 (a thread per connection, running until the process exits)
//! and clients from chosen loopback source addresses (127.0.0.2, … play
//! distinct clients).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::wait::DEADLINE;

/// A backend that echoes every connection until the client's FIN, then
/// sends its own.
pub(crate) fn echo_backend() -> SocketAddr {
    backend(echo)
}

/// A backend that says its name and a newline on connect, then echoes
/// (as [`echo_backend`]). A TCP health probe connects and closes: it
/// passes while the listener is up.
pub(crate) fn named_echo_backend(name: &'static str) -> SocketAddr {
    backend(move |mut stream| {
        if stream.write_all(format!("{name}\n").as_bytes()).is_ok() {
            echo(stream);
        }
    })
}

/// A listener on 127.0.0.1:0 that runs `serve` on its own thread for
/// every connection.
fn backend(serve: impl Fn(TcpStream) + Clone + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// Echoes until EOF (or an error), then half-closes.
fn echo(mut stream: TcpStream) {
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let _ = io::copy(&mut reader, &mut stream);
    let _ = stream.shutdown(Shutdown::Write);
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

/// Connects from a chosen loopback source address, within `timeout`, and
/// reads with that timeout.
pub(crate) fn try_connect_from(
    source: IpAddr,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&to.into(), timeout)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

/// Connects from a chosen loopback source address; fails the test if it
/// cannot.
pub(crate) fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    try_connect_from(source, to, DEADLINE)
        .unwrap_or_else(|e| panic!("connect from {source} to {to}: {e}"))
}

pub(crate) fn echo_round_trip(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(payload).expect("send through ringlb");
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).expect("echo through ringlb");
    assert_eq!(back, payload);
}

/// Connects from `source` to a backend that greets with its name and a
/// newline (as [`named_echo_backend`] does); returns the stream and the name.
pub(crate) fn greeted_client(source: IpAddr, to: SocketAddr) -> (TcpStream, String) {
    let mut s = connect_from(source, to);
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    while name.last() != Some(&b'\n') {
        match s.read(&mut byte) {
            Ok(1) => name.push(byte[0]),
            other => panic!("no backend greeting: {other:?}"),
        }
    }
    name.pop();
    (s, String::from_utf8(name).expect("name"))
}
