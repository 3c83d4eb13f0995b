//! The preamble: what a client sends before a backend is chosen. Today
//! that is the PROXY header of a service with `accept_proxy = true`: a
//! balancer in front tells who the client really is, and that address is
//! what the service hashes (so stickiness follows the real client through
//! a tier of balancers) and what the connection's records name.
//!
//! A peer outside `proxy_trusted` is reset at once (it could claim any
//! address). A trusted one's first bytes are peeked into the worker's one
//! scratch buffer (never a per-connection buffer) and judged by the pure
//! parser (`proxy_header::parse`); only a whole, valid header is taken off
//! the socket (exactly its bytes: what follows stays for the backend), and
//! then the connection goes on to choose a backend as any other. A header
//! that is bad, oversized or not whole by `proxy_header_timeout` (the timer
//! is in `timers.rs`), or a peer that closes first, ends the connection with
//! a reset (the sender must notice; no backend was ever asked) and is
//! counted by reason in `ringlb_proxy_header_refused_total`.
//!
//! Readiness is edge-triggered on both engines (epoll, io_uring's multishot
//! poll): a peek consumes nothing, and every segment that arrives later
//! raises a new edge, so a header split over many segments is re-judged on
//! each. Runs on the worker's thread.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;

use crate::access_log::EndCause;
use crate::proxy_header::{parse, Parsed, MAX_HEADER};
use crate::stats::ProxyRefused;
use crate::sys;

use super::{Conn, Phase, Reactor, Syscalls, Worker};

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    /// An admitted client of service `si`, which reads PROXY headers: its
    /// slot, then its header awaited (or a reset if it may not send one).
    pub(crate) fn open_preamble(
        &mut self,
        li: usize,
        si: usize,
        client: OwnedFd,
        peer: SocketAddr,
    ) {
        let Some(proxy) = &self.snapshot.services[si].settings.accept_proxy else {
            return;
        };
        let ip = unmapped(peer.ip());
        let trusted = proxy.trusted.iter().any(|net| net.contains(&ip));
        let deadline = self.now + proxy.header_timeout;
        let client_fd = client.as_raw_fd();
        let phase = Phase::Preamble { deadline };
        let slot = self
            .slab
            .insert(Conn::new(client, peer, li, phase, self.now, deadline, None));
        if !trusted {
            self.refuse(slot, ProxyRefused::Untrusted);
            return;
        }
        let token = self.slab.token(slot, false);
        if self.reactor.add(client_fd, token).is_err() {
            self.abort(slot, EndCause::LocalError);
            return;
        }
        self.arm_timer(deadline, slot);
        // The header usually came with the connection: judge it now rather
        // than a turn later.
        self.read_preamble(slot);
    }

    /// The client of a connection in its preamble may have sent more:
    /// judge what it sent so far.
    pub(crate) fn read_preamble(&mut self, slot: usize) {
        let Some(conn) = self.slab.get(slot) else {
            return;
        };
        let (fd, read_closed) = (conn.client.as_raw_fd(), conn.client_ready.read_closed);
        if self.scratch.len() < MAX_HEADER {
            self.scratch.resize(MAX_HEADER, 0);
        }
        let seen = loop {
            match self.sys.peek(fd, &mut self.scratch[..MAX_HEADER]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Nothing yet: the next segment raises an edge.
                Err(e) if sys::would_block(&e) => return,
                Err(_) => {
                    self.refuse(slot, ProxyRefused::Closed);
                    return;
                }
            }
        };
        if seen == 0 {
            self.refuse(slot, ProxyRefused::Closed);
            return;
        }
        match parse(&self.scratch[..seen]) {
            Parsed::Incomplete => {
                // A FIN (or hang-up) was reported: everything before it is
                // in `seen`, and it is not a whole header.
                if read_closed {
                    self.refuse(slot, ProxyRefused::Closed);
                }
            }
            Parsed::Refused(reason) => self.refuse(slot, ProxyRefused::Header(reason)),
            Parsed::Complete { len, source } => {
                if !self.take(fd, len) {
                    self.refuse(slot, ProxyRefused::Closed);
                    return;
                }
                let Some(conn) = self.slab.get_mut(slot) else {
                    return;
                };
                if let Some((client, _)) = source {
                    conn.peer = client;
                }
                // Bytes may have come after the header, in the segment
                // that raised the last edge: the pumps look for them.
                conn.client_ready.readable = seen > len || conn.client_ready.readable;
                if self.listeners[conn.listener].routes.is_some() {
                    // The service is picked by the ClientHello that follows.
                    self.await_hello(slot);
                } else {
                    self.choose_backend(slot);
                }
            }
        }
    }

    /// Takes exactly `len` judged bytes off the client socket (they are
    /// there: a peek saw them): a PROXY header, or the hello a backend was
    /// sent (`replay.rs`). False if the socket failed meanwhile.
    pub(super) fn take(&mut self, fd: RawFd, len: usize) -> bool {
        let mut taken = 0;
        while taken < len {
            match self.sys.recv(fd, &mut self.scratch[..len - taken]) {
                Ok(0) => return false,
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// The preamble is done: the client's candidates (by the address it
    /// now has) and its first connect.
    pub(super) fn choose_backend(&mut self, slot: usize) {
        let Some(conn) = self.slab.get(slot) else {
            return;
        };
        let Some(si) = self.listeners[conn.listener].service_index else {
            self.abort(slot, EndCause::NoBackend);
            return;
        };
        let peer = conn.peer;
        let Ok(source) = self.admit_source(si, peer) else {
            // Refused by the per-source rules (counted): no backend.
            self.abort(slot, EndCause::SourceRefused);
            return;
        };
        let (phase, deadline) = self.connecting(si, peer);
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        conn.source = source;
        conn.phase = phase;
        conn.timer_at = deadline;
        conn.last_active = self.now;
        self.next_attempt(slot);
    }

    /// Ends a connection in its preamble for `reason`, counted, with a
    /// reset to the client; no backend was asked.
    pub(crate) fn refuse(&mut self, slot: usize, reason: ProxyRefused) {
        if let Some(conn) = self.slab.get(slot) {
            let l = &self.listeners[conn.listener];
            l.stats.count_proxy_refused(reason);
            if l.routes.is_some() {
                // Not counted on accept: no hello picked a service.
                l.stats.accepted.fetch_add(1, Relaxed);
            }
        }
        self.abort(slot, EndCause::ProxyHeader);
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d` (a dual-stack listener's IPv4 peers), so
/// `proxy_trusted = ["10.0.0.0/8"]` matches them.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
