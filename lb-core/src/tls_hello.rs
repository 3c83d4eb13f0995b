//! Reading a TLS ClientHello from the first bytes a client sent: where it
//! ends (the TLS records that carry it) and the server name it asks for
//! (SNI, RFC 6066), or that more bytes are needed, or why it is refused.
//! SNI routing picks a service by the name; the TLS-safe retry replays
//! exactly these bytes to another backend.
//!
//! Pure: takes the bytes seen so far (a worker peeks them from the client
//! socket without consuming them) and returns a verdict; no I/O, no
//! allocation (the name is copied into a fixed 255-byte value, since a
//! record boundary may split it). Runs on a worker thread.
//!
//! What is read, per RFC 8446 §4.1.2 and RFC 5246 §6.2/§7.4.1.2:
//! - TLS records of type handshake (22), record version 3.x (x ≤ 4),
//!   length 1..=2^14, as many as the ClientHello message spans (a message
//!   may be split over records, and a record over TCP segments). A first
//!   byte other than 22, or a major version other than 3, is not TLS
//!   (HTTP, SSH, an SSLv2-style hello); any other record type before the
//!   message ends is malformed.
//! - One handshake message of type client_hello (1): legacy version,
//!   random, session id (≤ 32), cipher suites (even length, ≥ 2),
//!   compression methods (≥ 1), and extensions (absent in old clients, or
//!   filling the message exactly). Every length must agree with the one
//!   around it.
//! - The server_name extension (type 0), at most once: a list of entries
//!   of which the first `host_name` (type 0) is the name; it must be 1..=255
//!   bytes of letters, digits, `-`, `_` and `.`, not starting or ending
//!   with a dot. It is returned lower-cased (names match case-insensitively).
//!
//! Bytes after the message in the record that ends it are part of the
//! hello's length (a client has nothing else to send before the server's
//! answer; replaying them is harmless). The whole span is capped at
//! [`MAX_HELLO`]: a longer one is refused as oversized, judged from the
//! declared lengths alone, so a verdict never depends on how many bytes
//! happened to arrive: once given it stands on every longer input, and
//! `Incomplete` is only ever said of an input shorter than the cap.

/// The most bytes a ClientHello's records may span (record headers
/// included). Real ones are 250 bytes to 2 KiB; large post-quantum key
/// shares bring them near 1.8 KiB, many session tickets or pre-shared keys
/// a few KiB. The cap bounds what a worker peeks into its scratch buffer
/// and what the client's socket holds while a retry may still need it.
pub(crate) const MAX_HELLO: usize = 16 * 1024;

/// A TLS record's header: type, version (2), length (2).
const RECORD_HEADER: usize = 5;

/// Longest record payload a sender may send in plaintext (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

/// Content type of handshake records.
const HANDSHAKE: u8 = 22;

/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;

/// Extension type of server_name.
const SERVER_NAME: u16 = 0;

/// Longest DNS name (RFC 1035), the longest server name taken.
const MAX_NAME: usize = 255;

/// What the first bytes of a connection are.
// Large on purpose: the name is held inline so a worker never allocates
// for it; a Scan lives on the stack for the length of one call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A whole ClientHello in records spanning `len` bytes (the client's
    /// first flight; what follows is not part of it), asking for
    /// `server_name` if it sent one.
    Complete {
        len: usize,
        server_name: Option<ServerName>,
    },
    /// A valid beginning: more bytes are needed. Only for inputs shorter
    /// than [`MAX_HELLO`].
    Incomplete,
    /// Not a ClientHello ringlb reads.
    Refused(Refusal),
}

/// Why the first bytes are not a ClientHello ringlb reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not TLS at all: the first record is not a TLS 1.x handshake record.
    NotTls,
    /// TLS records, but not a well-formed ClientHello (a length that does
    /// not agree, another message or record type, a bad server name).
    Malformed,
    /// Spans more than [`MAX_HELLO`] bytes.
    Oversized,
}

impl Refusal {
    /// The reason's label in metrics and logs.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::NotTls => "not_tls",
            Refusal::Malformed => "malformed",
            Refusal::Oversized => "oversized",
        }
    }
}

/// A server name from a ClientHello: 1..=255 bytes of lower-case letters,
/// digits, `-`, `_` and `.`, held inline (no allocation on the worker).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerName {
    len: u8,
    bytes: [u8; MAX_NAME],
}

impl ServerName {
    /// The name (always ASCII).
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (`push` refuses the others).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    fn empty() -> ServerName {
        ServerName {
            len: 0,
            bytes: [0; MAX_NAME],
        }
    }

    /// Appends one byte of the name, lower-cased; false if it is not a
    /// name byte or the name is full.
    fn push(&mut self, byte: u8) -> bool {
        let ok = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.');
        let at = usize::from(self.len);
        if !ok || at == MAX_NAME {
            return false;
        }
        self.bytes[at] = byte.to_ascii_lowercase();
        self.len += 1;
        true
    }
}

impl std::fmt::Debug for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Judges the first bytes a client sent.
pub(crate) fn scan(data: &[u8]) -> Scan {
    let mut reader = Reader {
        data,
        pos: 0,
        record_end: 0,
    };
    match client_hello(&mut reader) {
        Ok(server_name) => {
            // The record that ends the message must be whole too.
            if data.len() < reader.record_end {
                Scan::Incomplete
            } else {
                Scan::Complete {
                    len: reader.record_end,
                    server_name,
                }
            }
        }
        Err(Stop::More) => Scan::Incomplete,
        Err(Stop::Refused(reason)) => Scan::Refused(reason),
    }
}

/// Why reading stopped short of a verdict of `Complete`.
enum Stop {
    /// The input ends before the message does.
    More,
    Refused(Refusal),
}

use Stop::{More, Refused};

const MALFORMED: Stop = Refused(Refusal::Malformed);

/// Reads the handshake bytes carried by consecutive handshake records as
/// one stream, checking each record header as it is crossed.
struct Reader<'a> {
    data: &'a [u8],
    /// Next byte to read (an offset in `data`).
    pos: usize,
    /// End of the current record's payload (0 before the first record).
    record_end: usize,
}

impl Reader<'_> {
    /// The next handshake byte.
    fn byte(&mut self) -> Result<u8, Stop> {
        if self.pos == self.record_end {
            self.next_record()?;
        }
        let byte = *self.data.get(self.pos).ok_or(More)?;
        self.pos += 1;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, Stop> {
        Ok(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    fn u24(&mut self) -> Result<usize, Stop> {
        let (a, b, c) = (self.byte()?, self.byte()?, self.byte()?);
        Ok(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
    }

    /// Skips `n` handshake bytes (across records).
    fn skip(&mut self, mut n: usize) -> Result<(), Stop> {
        while n > 0 {
            if self.pos == self.record_end {
                self.next_record()?;
            }
            let step = n.min(self.record_end - self.pos);
            if self.data.len() < self.pos + step {
                return Err(More);
            }
            self.pos += step;
            n -= step;
        }
        Ok(())
    }

    /// Crosses into the next record: its header judged byte by byte as far
    /// as the input goes (so "GET " is refused at its first byte).
    fn next_record(&mut self) -> Result<(), Stop> {
        let first = self.record_end == 0;
        let header = &self.data[self.pos.min(self.data.len())..];
        if let Some(&kind) = header.first() {
            if kind != HANDSHAKE {
                return Err(if first {
                    Refused(Refusal::NotTls)
                } else {
                    MALFORMED
                });
            }
        }
        if let Some(&major) = header.get(1) {
            if major != 3 {
                return Err(if first {
                    Refused(Refusal::NotTls)
                } else {
                    MALFORMED
                });
            }
        }
        if let Some(&minor) = header.get(2) {
            if minor > 4 {
                return Err(MALFORMED);
            }
        }
        let (Some(&high), Some(&low)) = (header.get(3), header.get(4)) else {
            return Err(More);
        };
        let len = usize::from(u16::from_be_bytes([high, low]));
        if len == 0 || len > MAX_RECORD {
            return Err(MALFORMED);
        }
        let end = self.pos + RECORD_HEADER + len;
        if end > MAX_HELLO {
            return Err(Refused(Refusal::Oversized));
        }
        self.pos += RECORD_HEADER;
        self.record_end = end;
        Ok(())
    }
}

/// Reads the whole ClientHello message; its server name if it has one.
fn client_hello(r: &mut Reader<'_>) -> Result<Option<ServerName>, Stop> {
    if r.byte()? != CLIENT_HELLO {
        return Err(MALFORMED);
    }
    let length = r.u24()?;
    // The message alone (4-byte header, one record header) must fit.
    if length + 4 + RECORD_HEADER > MAX_HELLO {
        return Err(Refused(Refusal::Oversized));
    }
    let mut body = Body { left: length };
    body.take(r, 2 + 32)?; // legacy_version, random
    let session_id = body.u8(r)?;
    if session_id > 32 {
        return Err(MALFORMED);
    }
    body.take(r, usize::from(session_id))?;
    let suites = body.u16(r)?;
    if suites < 2 || suites % 2 != 0 {
        return Err(MALFORMED);
    }
    body.take(r, usize::from(suites))?;
    let compressions = body.u8(r)?;
    if compressions == 0 {
        return Err(MALFORMED);
    }
    body.take(r, usize::from(compressions))?;
    if body.left == 0 {
        // A client of before extensions: no name.
        return Ok(None);
    }
    let extensions = usize::from(body.u16(r)?);
    if extensions != body.left {
        return Err(MALFORMED);
    }
    let mut name = None;
    while body.left > 0 {
        let kind = body.u16(r)?;
        let len = usize::from(body.u16(r)?);
        if len > body.left {
            return Err(MALFORMED);
        }
        if kind != SERVER_NAME {
            body.take(r, len)?;
            continue;
        }
        if name.is_some() {
            return Err(MALFORMED);
        }
        name = Some(server_name(r, &mut body, len)?);
    }
    Ok(name)
}

/// The bytes a message (or a part of it) still holds.
struct Body {
    left: usize,
}

impl Body {
    fn claim(&mut self, n: usize) -> Result<(), Stop> {
        self.left = self.left.checked_sub(n).ok_or(MALFORMED)?;
        Ok(())
    }

    fn take(&mut self, r: &mut Reader<'_>, n: usize) -> Result<(), Stop> {
        self.claim(n)?;
        r.skip(n)
    }

    fn u8(&mut self, r: &mut Reader<'_>) -> Result<u8, Stop> {
        self.claim(1)?;
        r.byte()
    }

    fn u16(&mut self, r: &mut Reader<'_>) -> Result<u16, Stop> {
        self.claim(2)?;
        r.u16()
    }
}

/// Reads a server_name extension of `len` bytes: its first host name.
fn server_name(r: &mut Reader<'_>, body: &mut Body, len: usize) -> Result<ServerName, Stop> {
    let mut ext = Body { left: len };
    let list = usize::from(ext.u16(r)?);
    if list != ext.left || list == 0 {
        return Err(MALFORMED);
    }
    let mut found: Option<ServerName> = None;
    while ext.left > 0 {
        let kind = ext.u8(r)?;
        let n = usize::from(ext.u16(r)?);
        if n > ext.left {
            return Err(MALFORMED);
        }
        if kind != 0 || found.is_some() {
            // Other name types (none are defined) and later host names
            // are skipped, as RFC 6066 lets a server do.
            ext.take(r, n)?;
            continue;
        }
        if n == 0 || n > MAX_NAME {
            return Err(MALFORMED);
        }
        let mut name = ServerName::empty();
        for _ in 0..n {
            let byte = ext.u8(r)?;
            if !name.push(byte) {
                return Err(MALFORMED);
            }
        }
        let text = name.as_str();
        if text.starts_with('.') || text.ends_with('.') {
            return Err(MALFORMED);
        }
        found = Some(name);
    }
    body.claim(len)?;
    found.ok_or(MALFORMED)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
