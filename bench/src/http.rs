//! A deliberately small HTTP/1.1 client: one GET at a time on a keep-alive
//! connection, responses framed by `Content-Length` (what nginx sends for the
//! bench bodies). Chunked responses are rejected rather than half-supported.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};

/// Where to send requests: `http://IP:PORT/path`, loopback only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
}

impl Target {
    /// Parses `http://127.0.0.1:18080/path` (or `http://[::1]:port/`).
    /// Host names are not resolved and non-loopback addresses are refused:
    /// the bench only ever talks to this machine.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| format!("{url}: expected a literal IP:PORT, got {authority:?}"))?;
        if !is_loopback(addr.ip()) {
            return Err(format!(
                "{url}: refusing non-loopback address {}",
                addr.ip()
            ));
        }
        Ok(Target {
            addr,
            path: path.to_string(),
        })
    }

    /// The request bytes: a keep-alive GET.
    pub fn request(&self) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringlb-openloop\r\n\r\n",
            self.path, self.addr
        )
        .into_bytes()
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// What one response looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// False when the server said `Connection: close` (reconnect before the
    /// next request).
    pub keep_alive: bool,
    pub body_len: usize,
}

/// Reads responses off one connection, keeping any bytes past the end of a
/// response for the next one.
#[derive(Debug, Default)]
pub struct ResponseReader {
    buf: Vec<u8>,
}

/// Header block larger than this is treated as a protocol error.
const MAX_HEADER: usize = 16 * 1024;

impl ResponseReader {
    pub fn new() -> Self {
        ResponseReader {
            buf: Vec::with_capacity(4096),
        }
    }

    /// Forget buffered bytes (after a reconnect).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Reads exactly one response (headers and body) from `r`.
    pub fn read_response<R: Read>(&mut self, r: &mut R) -> io::Result<Response> {
        let mut chunk = [0u8; 16 * 1024];
        let header_end = loop {
            if let Some(i) = find_header_end(&self.buf) {
                break i;
            }
            if self.buf.len() > MAX_HEADER {
                return Err(proto("response header too large"));
            }
            let n = r.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = parse_head(&self.buf[..header_end])?;
        let total = header_end + head.content_length;
        while self.buf.len() < total {
            let n = r.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a response body",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.buf.drain(..total);
        Ok(Response {
            status: head.status,
            keep_alive: head.keep_alive,
            body_len: head.content_length,
        })
    }
}

/// Sends one request and reads its response.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    reader: &mut ResponseReader,
    request: &[u8],
) -> io::Result<Response> {
    stream.write_all(request)?;
    reader.read_response(stream)
}

struct Head {
    status: u16,
    keep_alive: bool,
    content_length: usize,
}

fn proto(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Index just past the `\r\n\r\n` ending the header block.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| proto("non-UTF-8 response header"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(proto("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| proto("bad status line"))?;
    let mut keep_alive = version != "HTTP/1.0";
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| proto("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(proto("chunked responses are not supported"));
        }
    }
    Ok(Head {
        status,
        keep_alive,
        content_length: content_length.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_loopback_urls_only() {
        let t = Target::parse("http://127.0.0.1:18080/1m").unwrap();
        assert_eq!(t.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(t.path, "/1m");
        assert_eq!(Target::parse("http://127.0.0.1:80").unwrap().path, "/");
        assert!(Target::parse("http://[::1]:80/").is_ok());
        assert!(Target::parse("http://10.0.0.1:80/").is_err());
        assert!(Target::parse("http://localhost:80/").is_err());
        assert!(Target::parse("https://127.0.0.1:80/").is_err());
    }

    #[test]
    fn reads_pipelined_responses_across_reads() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nConnection: close\r\n\r\n";
        // A reader that hands out 3 bytes at a time.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut src = Trickle(wire);
        let mut rr = ResponseReader::new();
        let a = rr.read_response(&mut src).unwrap();
        assert_eq!(
            a,
            Response {
                status: 200,
                keep_alive: true,
                body_len: 5
            }
        );
        let b = rr.read_response(&mut src).unwrap();
        assert_eq!(
            b,
            Response {
                status: 404,
                keep_alive: false,
                body_len: 0
            }
        );
        assert_eq!(
            rr.read_response(&mut src).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn rejects_chunked_and_garbage() {
        let mut rr = ResponseReader::new();
        let mut chunked: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(rr.read_response(&mut chunked).is_err());
        let mut rr = ResponseReader::new();
        let mut junk: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(rr.read_response(&mut junk).is_err());
    }
}
