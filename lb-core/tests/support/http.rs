//! Shared by the admin and join tests: echo backends on 127.0.0.1:0,
//! clients from chosen loopback source addresses, and a small HTTP/1.1
//! response reader (the requests say `Connection: close`). Deadline-based
//! waits only.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A backend that says its name on connect, then echoes. A TCP health
/// probe connects and closes: it passes while the listener is up.
pub fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 16 << 10];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

/// Connects from a chosen loopback source address.
pub fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(source, 0).into())
        .expect("bind source");
    s.connect_timeout(&to.into(), DEADLINE).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Reads until EOF. A reset after the answer (the server closed with part
/// of an oversized request unread) ends the read too.
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !buf.is_empty() => {
                return buf
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..split]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

pub fn echo_round_trip(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(payload).expect("send through ringlb");
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).expect("echo through ringlb");
    assert_eq!(back, payload);
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects from `source` to a backend that greets with its name and a
/// newline (as [`echo_backend`] does); returns the stream and the name.
pub fn greeted_client(source: IpAddr, to: SocketAddr) -> (TcpStream, String) {
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
