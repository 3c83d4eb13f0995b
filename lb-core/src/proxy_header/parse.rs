//! Reading a PROXY header (v1 or v2) from the first bytes a trusted peer
//! sent: complete, incomplete (read more), or refused with a reason.
//!
//! Pure: takes the bytes seen so far (a worker peeks them from the client
//! socket without consuming them) and returns a verdict; no I/O, no
//! allocation. Runs on a worker thread (`worker/preamble.rs`).
//!
//! Strict, per HAProxy's `doc/proxy-protocol.txt`:
//! - v1: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`, exactly one
//!   space between fields, IPv4 as four decimal numbers without leading
//!   zeros, IPv6 as hex groups and colons only (no dotted tail, no zone),
//!   ports decimal 0..=65535 without leading zeros, the family matching the
//!   addresses. `PROXY UNKNOWN` with anything up to the CRLF is accepted
//!   and carries no address. At most [`V1_MAX`] bytes including the CRLF;
//!   a lone CR or LF, or a byte outside printable ASCII, is malformed.
//! - v2: the 12-byte signature, version 2, command LOCAL or PROXY; the
//!   family byte's nibbles must be known (family ≤ 3, protocol ≤ 2) or the
//!   header is refused. TCP over IPv4/IPv6 carry the addresses; the other
//!   valid combinations (UNSPEC, UDP, UNIX) are what the spec lets a
//!   receiver fall back on: accepted as UNSPEC, without an address (the
//!   connection is served with the peer's own). LOCAL never carries one.
//!   The length field is honoured whatever the command (TLVs and unknown
//!   address blocks are skipped, never interpreted), up to [`V2_MAX`].
//! - IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) come out as IPv4, so a
//!   client hashes the same whichever way a balancer in front wrote it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 line, CRLF included (the spec's worst case,
/// `PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub(crate) const V1_MAX: usize = 107;

/// The longest v2 header ringlb reads: the 16-byte preamble and at most
/// 2048 bytes of addresses and TLVs. The protocol allows 16 + 65535, but
/// what real balancers send is far smaller: the largest address block is
/// 216 bytes (UNIX), and the registered TLVs (ALPN, authority ≤ 255,
/// unique id ≤ 128, SSL version/CN/cipher/algorithms, CRC32C, NETNS, the
/// cloud vendors' endpoint ids) fit in well under 1 KiB together. Only a
/// client-certificate TLV would not fit; it is refused as oversized. The
/// cap bounds what a worker peeks (its scratch buffer) and what a slow
/// peer can make it re-read.
pub(crate) const V2_MAX: usize = 16 + 2048;

/// The most bytes a header can take: a peek of this many always decides.
pub(crate) const MAX_HEADER: usize = V2_MAX;

/// The v2 signature: CR LF CR LF NUL CR LF "QUIT" LF.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole, valid header of `len` bytes (the connection's data starts
    /// after it). `source`: (client, destination) as the header gives
    /// them; None for v2 LOCAL, v1 UNKNOWN and the v2 families read as
    /// UNSPEC (serve with the peer's own address).
    Complete {
        len: usize,
        source: Option<(SocketAddr, SocketAddr)>,
    },
    /// A valid beginning: more bytes are needed. Only for inputs shorter
    /// than the longest header they could become.
    Incomplete,
    /// Not a header ringlb takes.
    Refused(Refusal),
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not the protocol's syntax (no signature, bad field, bad address).
    Malformed,
    /// Longer than [`V1_MAX`] / [`V2_MAX`].
    Oversized,
    /// A v2 header whose version is not 2.
    Version,
    /// A v2 command other than LOCAL and PROXY.
    Command,
    /// A v2 address family or transport protocol the spec does not define.
    Family,
}

impl Refusal {
    /// Every reason, for counters indexed by it.
    pub(crate) const ALL: [Refusal; 5] = [
        Refusal::Malformed,
        Refusal::Oversized,
        Refusal::Version,
        Refusal::Command,
        Refusal::Family,
    ];

    /// The short label of metrics and logs.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Oversized => "oversized",
            Refusal::Version => "version",
            Refusal::Command => "command",
            Refusal::Family => "family",
        }
    }
}

/// Judges the bytes a connection started with (all of them so far, or the
/// first [`MAX_HEADER`]).
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.is_empty() {
        return Parsed::Incomplete;
    }
    if bytes[0] == V2_SIGNATURE[0] {
        parse_v2(bytes)
    } else if bytes[0] == b'P' {
        parse_v1(bytes)
    } else {
        Parsed::Refused(Refusal::Malformed)
    }
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    let sig = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..sig] != V2_SIGNATURE[..sig] {
        return Parsed::Refused(Refusal::Malformed);
    }
    if bytes.len() < 16 {
        // Judge the version/command and family bytes as soon as they come.
        if let Some(&ver_cmd) = bytes.get(12) {
            if let Err(r) = version_command(ver_cmd) {
                return Parsed::Refused(r);
            }
        }
        if let Some(&fam) = bytes.get(13) {
            if let Err(r) = family(fam) {
                return Parsed::Refused(r);
            }
        }
        return Parsed::Incomplete;
    }
    let local = match version_command(bytes[12]) {
        Ok(local) => local,
        Err(r) => return Parsed::Refused(r),
    };
    let fam = match family(bytes[13]) {
        Ok(fam) => fam,
        Err(r) => return Parsed::Refused(r),
    };
    let len = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if len > V2_MAX {
        return Parsed::Refused(Refusal::Oversized);
    }
    let need = match fam {
        Family::Tcp4 => 12,
        Family::Tcp6 => 36,
        Family::Unspec => 0,
    };
    // Even LOCAL must present a block long enough for its family (the
    // spec tells receivers to ignore it, not to accept a short one).
    if len - 16 < need {
        return Parsed::Refused(Refusal::Malformed);
    }
    if bytes.len() < len {
        return Parsed::Incomplete;
    }
    let block = &bytes[16..len];
    let source = match (local, fam) {
        (true, _) | (false, Family::Unspec) => None,
        (false, Family::Tcp4) => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (false, Family::Tcp6) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                unmap(IpAddr::V6(Ipv6Addr::from(octets)))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
    };
    Parsed::Complete { len, source }
}

/// What a v2 header's family byte asks for, as ringlb reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// TCP over IPv4 (`\x11`): 12 address bytes.
    Tcp4,
    /// TCP over IPv6 (`\x21`): 36 address bytes.
    Tcp6,
    /// Everything else the spec defines (UNSPEC, UDP, UNIX, and a known
    /// family with UNSPEC protocol or the other way round): no address.
    Unspec,
}

/// The 13th byte: true for LOCAL, false for PROXY.
fn version_command(b: u8) -> Result<bool, Refusal> {
    if b >> 4 != 2 {
        return Err(Refusal::Version);
    }
    match b & 0x0f {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err(Refusal::Command),
    }
}

/// The 14th byte: family (high nibble, 0..=3) and protocol (low, 0..=2).
fn family(b: u8) -> Result<Family, Refusal> {
    let (fam, proto) = (b >> 4, b & 0x0f);
    if fam > 3 || proto > 2 {
        return Err(Refusal::Family);
    }
    Ok(match (fam, proto) {
        (1, 1) => Family::Tcp4,
        (2, 1) => Family::Tcp6,
        _ => Family::Unspec,
    })
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    const PREFIX: &[u8] = b"PROXY ";
    let start = bytes.len().min(PREFIX.len());
    if bytes[..start] != PREFIX[..start] {
        return Parsed::Refused(Refusal::Malformed);
    }
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Parsed::Refused(Refusal::Malformed),
                None => {}
            },
            b' '..=b'~' => {}
            // A lone LF, a control byte, or anything past ASCII.
            _ => return Parsed::Refused(Refusal::Malformed),
        }
    }
    let Some(end) = end else {
        return if bytes.len() >= V1_MAX {
            Parsed::Refused(Refusal::Oversized)
        } else {
            Parsed::Incomplete
        };
    };
    let line = &window[PREFIX.len().min(end)..end];
    if end < PREFIX.len() {
        return Parsed::Refused(Refusal::Malformed);
    }
    let len = end + 2;
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Parsed::Complete { len, source: None };
    }
    match v1_addresses(line) {
        Some(source) => Parsed::Complete {
            len,
            source: Some(source),
        },
        None => Parsed::Refused(Refusal::Malformed),
    }
}

/// `TCP4 <src> <dst> <sport> <dport>` (or TCP6), strictly.
fn v1_addresses(line: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut fields = text.split(' ');
    let proto = fields.next()?;
    let (src, dst) = (fields.next()?, fields.next()?);
    let (sport, dport) = (fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let (src, dst) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse::<Ipv4Addr>().ok()?),
            IpAddr::V4(dst.parse::<Ipv4Addr>().ok()?),
        ),
        "TCP6" => (v1_ipv6(src)?, v1_ipv6(dst)?),
        _ => return None,
    };
    Some((
        SocketAddr::new(src, v1_port(sport)?),
        SocketAddr::new(dst, v1_port(dport)?),
    ))
}

/// An IPv4 field: Rust's parser is already strict (four decimal numbers,
/// no leading zeros, nothing else), used above as is. An IPv6 field: hex
/// groups and colons only, then Rust's parser for the rest of the rules.
fn v1_ipv6(text: &str) -> Option<IpAddr> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
        return None;
    }
    Some(unmap(IpAddr::V6(text.parse::<Ipv6Addr>().ok()?)))
}

/// A port: decimal 0..=65535, no sign, no leading zero.
fn v1_port(text: &str) -> Option<u16> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 5 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    text.parse().ok()
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address as it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

#[cfg(test)]
#[path = "parse_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    /// The v2 preamble with `ver_cmd`, `fam` and a block of `block` bytes.
    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    fn complete(len: usize, client: &str, dest: &str) -> Parsed {
        Parsed::Complete {
            len,
            source: Some((addr(client), addr(dest))),
        }
    }

    const LOCAL: Parsed = Parsed::Complete {
        len: 16,
        source: None,
    };

    #[test]
    fn the_specs_v1_example_leaves_the_request_after_it() {
        let input = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
        assert_eq!(
            parse(input),
            complete(47, "192.168.0.1:56324", "192.168.0.11:443")
        );
        assert_eq!(&input[47..51], b"GET ");
    }

    #[test]
    fn the_specs_longest_v1_lines_are_accepted() {
        let v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(v4.len(), 56);
        assert_eq!(
            parse(v4),
            complete(56, "255.255.255.255:65535", "255.255.255.255:65535")
        );
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let v6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(v6.len(), 104);
        let a = format!("[{full}]:65535");
        assert_eq!(parse(v6.as_bytes()), complete(104, &a, &a));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Complete {
                len: 15,
                source: None
            }
        );
        let worst = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX);
        assert_eq!(
            parse(worst.as_bytes()),
            Parsed::Complete {
                len: V1_MAX,
                source: None
            }
        );
    }

    #[test]
    fn v1_ipv6_compressed_and_mapped_addresses() {
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 ::1 1 0\r\n"),
            complete(32, "[2001:db8::1]:1", "[::1]:0")
        );
        // An IPv4-mapped client hashes as the IPv4 client it is.
        assert_eq!(
            parse(b"PROXY TCP6 ::ffff:a00:1 ::1 80 81\r\n"),
            complete(35, "10.0.0.1:80", "[::1]:81")
        );
    }

    #[test]
    fn v1_refusals() {
        let malformed = [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 fe80::1%1 ::1 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n",
        ];
        for input in malformed {
            assert_eq!(
                parse(input),
                Parsed::Refused(Refusal::Malformed),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b'x'; 200];
        let mut oversized = b"PROXY UNKNOWN ".to_vec();
        oversized.extend_from_slice(&long[..V1_MAX - oversized.len()]);
        assert_eq!(parse(&oversized), Parsed::Refused(Refusal::Oversized));
        // 108 bytes with the CRLF: one too many.
        oversized.truncate(V1_MAX - 1);
        oversized.extend_from_slice(b"\r\n");
        assert_eq!(oversized.len(), V1_MAX + 1);
        assert_eq!(parse(&oversized), Parsed::Refused(Refusal::Oversized));
    }

    #[test]
    fn every_prefix_of_a_v1_line_is_incomplete() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Parsed::Incomplete, "{n} bytes");
        }
        // A stray byte is refused as soon as it comes, not at the CRLF.
        assert_eq!(
            parse(b"PROXY TCP4 1\n"),
            Parsed::Refused(Refusal::Malformed)
        );
        assert_eq!(parse(b"PROXI"), Parsed::Refused(Refusal::Malformed));
    }

    #[test]
    fn v2_tcp4_and_tcp6() {
        let mut block = vec![192, 168, 0, 1, 192, 168, 0, 11];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let mut input = v2(0x21, 0x11, &block);
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            complete(28, "192.168.0.1:56324", "192.168.0.11:443")
        );

        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0, 80, 1, 187]);
        assert_eq!(
            parse(&v2(0x21, 0x21, &block)),
            complete(52, "[2001:db8::7]:80", "[::1]:443")
        );

        // Mapped IPv4 comes out as IPv4.
        let mut block = Vec::new();
        block.extend_from_slice(&Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0, 80, 0, 81]);
        assert_eq!(
            parse(&v2(0x21, 0x21, &block)),
            complete(52, "10.1.2.3:80", "[::1]:81")
        );
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0, 80];
        // PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY, PP2_TYPE_NOOP, CRC32C.
        block.extend_from_slice(&[0x01, 0, 2, b'h', b'2']);
        block.extend_from_slice(&[0x02, 0, 11]);
        block.extend_from_slice(b"example.com");
        block.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]);
        block.extend_from_slice(&[0x03, 0, 4, 1, 2, 3, 4]);
        let input = v2(0x21, 0x11, &block);
        assert_eq!(
            parse(&input),
            complete(input.len(), "10.0.0.1:8080", "10.0.0.2:80")
        );
    }

    #[test]
    fn v2_local_and_unspec_carry_no_address() {
        assert_eq!(parse(&v2(0x20, 0x00, &[])), LOCAL);
        // LOCAL with an address block (and a TLV): skipped, not used.
        let block = [127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2, 0x04, 0, 0];
        assert_eq!(
            parse(&v2(0x20, 0x11, &block)),
            Parsed::Complete {
                len: 31,
                source: None
            }
        );
        // PROXY with UNSPEC, UDP or UNIX: the spec's fall-back to UNSPEC.
        for fam in [0x00, 0x12, 0x22, 0x31, 0x32, 0x10, 0x01] {
            let block = [0u8; 216];
            let n = if fam >> 4 == 3 { 216 } else { 36 };
            assert_eq!(
                parse(&v2(0x21, fam, &block[..n])),
                Parsed::Complete {
                    len: 16 + n,
                    source: None
                },
                "family byte {fam:#04x}"
            );
        }
    }

    #[test]
    fn v2_refusals() {
        let block = [1u8; 12];
        assert_eq!(
            parse(&v2(0x11, 0x11, &block)),
            Parsed::Refused(Refusal::Version)
        );
        assert_eq!(
            parse(&v2(0x31, 0x11, &block)),
            Parsed::Refused(Refusal::Version)
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &block)),
            Parsed::Refused(Refusal::Command)
        );
        assert_eq!(
            parse(&v2(0x2f, 0x11, &block)),
            Parsed::Refused(Refusal::Command)
        );
        assert_eq!(
            parse(&v2(0x21, 0x41, &block)),
            Parsed::Refused(Refusal::Family)
        );
        assert_eq!(
            parse(&v2(0x21, 0x13, &block)),
            Parsed::Refused(Refusal::Family)
        );
        // An address block shorter than its family needs.
        assert_eq!(
            parse(&v2(0x21, 0x11, &block[..11])),
            Parsed::Refused(Refusal::Malformed)
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Parsed::Refused(Refusal::Malformed)
        );
        // A broken signature.
        let mut bad = v2(0x21, 0x11, &block);
        bad[7] = b'q';
        assert_eq!(parse(&bad), Parsed::Refused(Refusal::Malformed));
        // Over the cap, judged from the length field alone.
        let mut big = v2(0x21, 0x11, &block);
        big[14..16].copy_from_slice(&((V2_MAX - 16 + 1) as u16).to_be_bytes());
        assert_eq!(parse(&big[..16]), Parsed::Refused(Refusal::Oversized));
        let mut max = v2(0x21, 0x11, &vec![0; V2_MAX - 16]);
        assert!(matches!(parse(&max), Parsed::Complete { len: V2_MAX, .. }));
        max[15] = max[15].wrapping_add(1);
        max[14] = 0xff;
        assert_eq!(parse(&max), Parsed::Refused(Refusal::Oversized));
    }

    #[test]
    fn every_prefix_of_a_v2_header_is_incomplete_and_bad_bytes_are_refused_early() {
        let input = v2(
            0x21,
            0x11,
            &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0x04, 0, 1, 0],
        );
        for n in 0..input.len() {
            assert_eq!(parse(&input[..n]), Parsed::Incomplete, "{n} bytes");
        }
        let mut early = V2_SIGNATURE.to_vec();
        early.push(0x11);
        assert_eq!(parse(&early), Parsed::Refused(Refusal::Version));
        early[12] = 0x21;
        early.push(0x51);
        assert_eq!(parse(&early), Parsed::Refused(Refusal::Family));
        assert_eq!(parse(b"\r\n\r\n\x01"), Parsed::Refused(Refusal::Malformed));
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
