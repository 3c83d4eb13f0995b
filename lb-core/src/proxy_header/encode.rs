//! Writing a PROXY header (v1 text, v2 binary) for a client connection
//! (`send_proxy`) or a health probe, into a small fixed buffer: pure, no
//! allocation; a worker thread calls it once per backend connection when
//! its backend asks for the header, the control plane's probes once per
//! probe.
//!
//! Follows HAProxy's `doc/proxy-protocol.txt`:
//! - An IPv4-mapped IPv6 address (a client of a dual-stack `[::]`
//!   listener) is written as the IPv4 address it is.
//! - Source and destination of different families after that cannot be
//!   written as one line or one address block: v1 sends `PROXY UNKNOWN\r\n`
//!   ("only when it is not possible to correctly fill the PROXY line"), v2
//!   the `PROXY` command with family and protocol `UNSPEC` and no address
//!   ("when dealing with unsupported protocol families"); the receiver then
//!   uses the connection's own addresses. (Sockets never give this; a
//!   header ringlb accepted could.)
//! - Health probes: v2 sends the `LOCAL` command (family `UNSPEC`, no
//!   address: "the connection was established on purpose by the proxy");
//!   v1 has no such command and the specification recommends against
//!   `UNKNOWN` for health checks ("some receivers may reject them"), so a
//!   v1 probe sends a real line built from the probe socket's own
//!   getsockname()/getpeername() pair, as it says to.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use super::ProxyVersion;

/// The v2 signature: the first 12 bytes of every v2 header.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2 (high nibble) with the `LOCAL` command.
const V2_LOCAL: u8 = 0x20;
/// Version 2 (high nibble) with the `PROXY` command.
const V2_PROXY: u8 = 0x21;
/// Family `UNSPEC`, protocol `UNSPEC`.
const V2_UNSPEC: u8 = 0x00;
/// TCP over IPv4.
const V2_TCP4: u8 = 0x11;
/// TCP over IPv6.
const V2_TCP6: u8 = 0x21;

/// The longest header written: a v1 `TCP6` line of two full-length IPv6
/// addresses is 104 bytes, a v2 IPv6 header 16 + 36 = 52; the
/// specification's worst v1 case (107) is an `UNKNOWN` line with
/// addresses, which is never written.
pub(crate) const MAX_HEADER: usize = 108;

/// One encoded header, on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Header {
    /// The bytes; only `len` of them are the header.
    buf: [u8; MAX_HEADER],
    /// Bytes of `buf` in use.
    len: usize,
}

impl Header {
    /// The header's bytes, to be written before anything else.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn empty() -> Header {
        Header {
            buf: [0; MAX_HEADER],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        // Every caller writes at most MAX_HEADER bytes (tested below); an
        // overflow would truncate the header rather than panic.
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Header({:?})",
            self.as_bytes().escape_ascii().to_string()
        )
    }
}

/// The header for a connection relayed from `source` (the client) that
/// arrived at `destination` (the address the client connected to).
pub(crate) fn relayed(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Header {
    let source = normalise(source);
    let destination = normalise(destination);
    match version {
        ProxyVersion::V1 => v1(source, destination),
        ProxyVersion::V2 => v2(V2_PROXY, source, destination),
    }
}

/// The header for a health probe; `endpoints` are the probe socket's own
/// (local, peer) addresses (see the module doc for why v1 needs them), None
/// when they are not the backend's view (a probe through a proxy's tunnel:
/// then v1 says `UNKNOWN`).
pub(crate) fn probe(version: ProxyVersion, endpoints: Option<(SocketAddr, SocketAddr)>) -> Header {
    match version {
        ProxyVersion::V1 => match endpoints {
            Some((local, peer)) => v1(normalise(local), normalise(peer)),
            None => {
                let mut h = Header::empty();
                h.push(b"PROXY UNKNOWN\r\n");
                h
            }
        },
        ProxyVersion::V2 => {
            let mut h = Header::empty();
            h.push(&V2_SIGNATURE);
            h.push(&[V2_LOCAL, V2_UNSPEC, 0, 0]);
            h
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn v1(source: SocketAddr, destination: SocketAddr) -> Header {
    let mut h = Header::empty();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => {
            h.push(b"PROXY UNKNOWN\r\n");
            return h;
        }
    };
    // `Display` of Ipv4Addr/Ipv6Addr is the canonical form the
    // specification asks for (no leading zeroes; one `::` at most).
    let mut cursor = std::io::Cursor::new(&mut h.buf[..]);
    let written = write!(
        cursor,
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    );
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    if written.is_ok() {
        h.len = len;
    } else {
        // Cannot happen (104 bytes at most); UNKNOWN is still a valid
        // header that makes the receiver use the connection's addresses.
        h = Header::empty();
        h.push(b"PROXY UNKNOWN\r\n");
    }
    h
}

fn v2(command: u8, source: SocketAddr, destination: SocketAddr) -> Header {
    let mut h = Header::empty();
    h.push(&V2_SIGNATURE);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(&[command, V2_TCP4, 0, 12]);
            h.push(&s.octets());
            h.push(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.push(&[command, V2_TCP6, 0, 36]);
            h.push(&s.octets());
            h.push(&d.octets());
        }
        _ => {
            h.push(&[command, V2_UNSPEC, 0, 0]);
            return h;
        }
    }
    h.push(&source.port().to_be_bytes());
    h.push(&destination.port().to_be_bytes());
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_specifications_example() {
        // proxy-protocol.txt, 2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".
        let h = relayed(
            ProxyVersion::V1,
            addr("192.168.0.1:56324"),
            addr("192.168.0.11:443"),
        );
        assert_eq!(
            h.as_bytes(),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_lines_fit_the_specifications_maxima() {
        // 2.1: 56 bytes for TCP4, 104 for TCP6.
        let h = relayed(
            ProxyVersion::V1,
            addr("255.255.255.255:65535"),
            addr("255.255.255.255:65535"),
        );
        assert_eq!(h.as_bytes().len(), 56);
        let full = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535";
        let h = relayed(ProxyVersion::V1, addr(full), addr(full));
        assert_eq!(h.as_bytes().len(), 104);
        assert_eq!(
            h.as_bytes(),
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe \
              ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n"
        );
    }

    #[test]
    fn v1_ipv6_is_canonical() {
        let h = relayed(
            ProxyVersion::V1,
            addr("[::1]:40000"),
            addr("[2001:db8::0:1]:443"),
        );
        assert_eq!(h.as_bytes(), b"PROXY TCP6 ::1 2001:db8::1 40000 443\r\n");
    }

    #[test]
    fn v4_mapped_addresses_are_written_as_ipv4() {
        let h = relayed(
            ProxyVersion::V1,
            addr("[::ffff:127.0.0.2]:5000"),
            addr("[::ffff:127.0.0.1]:80"),
        );
        assert_eq!(h.as_bytes(), b"PROXY TCP4 127.0.0.2 127.0.0.1 5000 80\r\n");
        let h = relayed(
            ProxyVersion::V2,
            addr("[::ffff:127.0.0.2]:5000"),
            addr("[::ffff:127.0.0.1]:80"),
        );
        assert_eq!(h.as_bytes()[13], V2_TCP4);
        assert_eq!(&h.as_bytes()[16..24], &[127, 0, 0, 2, 127, 0, 0, 1]);
    }

    #[test]
    fn v2_ipv4_layout() {
        // 2.2: signature, ver/cmd 0x21, fam 0x11, length 12 (network
        // order), src, dst, sport, dport.
        let h = relayed(
            ProxyVersion::V2,
            addr("192.168.0.1:56324"),
            addr("192.168.0.11:443"),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        want.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]); // 56324, 443
        assert_eq!(h.as_bytes(), &want[..]);
        assert_eq!(h.as_bytes().len(), 16 + 12);
    }

    #[test]
    fn v2_ipv6_layout() {
        let h = relayed(ProxyVersion::V2, addr("[::1]:1"), addr("[2001:db8::2]:2"));
        let b = h.as_bytes();
        assert_eq!(b.len(), 16 + 36);
        assert_eq!(&b[..12], &V2_SIGNATURE);
        assert_eq!(&b[12..16], &[0x21, 0x21, 0x00, 0x24]);
        let mut src = [0u8; 16];
        src[15] = 1;
        assert_eq!(&b[16..32], &src);
        assert_eq!(&b[32..34], &[0x20, 0x01]);
        assert_eq!(&b[48..52], &[0, 1, 0, 2]);
    }

    #[test]
    fn mixed_families_are_unknown_or_unspec() {
        let v4 = addr("10.0.0.1:1000");
        let v6 = addr("[2001:db8::1]:443");
        assert_eq!(
            relayed(ProxyVersion::V1, v4, v6).as_bytes(),
            b"PROXY UNKNOWN\r\n"
        );
        let h = relayed(ProxyVersion::V2, v6, v4);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(h.as_bytes(), &want[..]);
    }

    #[test]
    fn probes_send_local_or_their_own_endpoints() {
        let local = addr("127.0.0.1:40000");
        let peer = addr("127.0.0.1:8080");
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let endpoints = Some((local, peer));
        assert_eq!(probe(ProxyVersion::V2, endpoints).as_bytes(), &want[..]);
        assert_eq!(probe(ProxyVersion::V2, None).as_bytes(), &want[..]);
        assert_eq!(
            probe(ProxyVersion::V1, endpoints).as_bytes(),
            b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8080\r\n"
        );
        assert_eq!(
            probe(ProxyVersion::V1, None).as_bytes(),
            b"PROXY UNKNOWN\r\n"
        );
    }
}
