//! SNI routing: on a listen address whose services route by the TLS
//! server name (`sni`, `sni_default`; the address's [`SniRoutes`] come with
//! the snapshot), the client's ClientHello picks the service before a
//! backend is chosen. Runs on the worker's thread.
//!
//! The hello is peeked, never consumed: the client's first bytes are
//! judged in the worker's one scratch buffer (never a per-connection
//! buffer) by the pure reader (`tls_hello::scan`) on every readiness edge
//! (edge-triggered on both engines: a hello split over many segments is
//! re-judged as each arrives), and stay in the client's socket, so the
//! forwarding sends them to the backend first, untouched, after the
//! connect. With `accept_proxy`, the PROXY header is read first
//! (`preamble.rs`) and the hello after it.
//!
//! A first flight that is not TLS, malformed, over 16 KiB, not whole by
//! the address's `sni_timeout` (the timer is in `timers.rs`), a client
//! that leaves first, a name no service takes (with no `sni_default`), or
//! a picked service at its `max_connections`: the client is reset, no
//! backend was asked, counted by reason in `ringlb_sni_refused_total` on
//! the service that owns the listener (the first listing the address).
//!
//! Once picked, the connection is the service's: it moves to a listener
//! state of that service for the address (no socket of its own; made on
//! first use, one per service and shared address), so its place, counts,
//! log record and every later choice (per-source rules, stickiness within
//! the service, connects) are the picked service's.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::access_log::EndCause;
use crate::stats::SniRefused;
use crate::sys;
use crate::tls_hello::{scan, Scan, MAX_HELLO};

use super::listeners::ListenerState;
use super::{Conn, Phase, Reactor, Syscalls, Worker};

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    /// An admitted client of listener `li`, whose address routes by
    /// server name: its slot, then its ClientHello awaited.
    pub(crate) fn open_hello(&mut self, li: usize, client: OwnedFd, peer: SocketAddr) {
        let Some(routes) = &self.listeners[li].routes else {
            return;
        };
        let deadline = self.now + routes.timeout;
        let client_fd = client.as_raw_fd();
        let phase = Phase::Hello { deadline };
        let slot = self
            .slab
            .insert(Conn::new(client, peer, li, phase, self.now, deadline, None));
        let token = self.slab.token(slot, false);
        if self.reactor.add(client_fd, token).is_err() {
            self.abort(slot, EndCause::LocalError);
            return;
        }
        self.arm_timer(deadline, slot);
        // The hello usually came with the connection: judge it now rather
        // than a turn later.
        self.read_hello(slot);
    }

    /// The PROXY header of a client on an address that routes by name is
    /// taken: its ClientHello is awaited from now on.
    pub(crate) fn await_hello(&mut self, slot: usize) {
        let Some(conn) = self.slab.get(slot) else {
            return;
        };
        let Some(routes) = &self.listeners[conn.listener].routes else {
            self.refuse_hello(slot, SniRefused::UnknownName);
            return;
        };
        let deadline = self.now + routes.timeout;
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        conn.phase = Phase::Hello { deadline };
        conn.timer_at = deadline;
        self.arm_timer(deadline, slot);
        self.read_hello(slot);
    }

    /// The client of a connection awaiting its ClientHello may have sent
    /// more: judge what it sent so far.
    pub(crate) fn read_hello(&mut self, slot: usize) {
        let Some(conn) = self.slab.get(slot) else {
            return;
        };
        let (fd, read_closed) = (conn.client.as_raw_fd(), conn.client_ready.read_closed);
        if self.scratch.len() < MAX_HELLO {
            self.scratch.resize(MAX_HELLO, 0);
        }
        let seen = loop {
            match self.sys.peek(fd, &mut self.scratch[..MAX_HELLO]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Nothing yet: the next segment raises an edge.
                Err(e) if sys::would_block(&e) => return,
                Err(_) => {
                    self.refuse_hello(slot, SniRefused::Closed);
                    return;
                }
            }
        };
        if seen == 0 {
            self.refuse_hello(slot, SniRefused::Closed);
            return;
        }
        match scan(&self.scratch[..seen]) {
            Scan::Incomplete => {
                // A FIN (or hang-up) was reported: everything before it is
                // in `seen`, and it is not a whole hello.
                if read_closed {
                    self.refuse_hello(slot, SniRefused::Closed);
                }
            }
            Scan::Refused(reason) => self.refuse_hello(slot, SniRefused::Hello(reason)),
            Scan::Complete { server_name, .. } => {
                let li = self.slab.get(slot).map_or(usize::MAX, |c| c.listener);
                let picked = self
                    .listeners
                    .get(li)
                    .and_then(|l| l.routes.as_ref())
                    .and_then(|r| r.route(server_name.as_ref().map(|n| n.as_str())));
                match picked {
                    Some(si) => self.route_to(slot, si),
                    None => self.refuse_hello(slot, SniRefused::UnknownName),
                }
            }
        }
    }

    /// The hello picked service `si`: the connection becomes the
    /// service's (its place under its `max_connections`, its counts and
    /// log), and goes on to choose a backend. Its bytes are all still in
    /// the client's socket: the pumps look for them.
    fn route_to(&mut self, slot: usize, si: usize) {
        let Some(conn) = self.slab.get(slot) else {
            return;
        };
        let from = conn.listener;
        let Some(max) = self
            .snapshot
            .services
            .get(si)
            .map(|s| s.settings.max_connections)
        else {
            self.refuse_hello(slot, SniRefused::UnknownName);
            return;
        };
        let to = self.routed_listener(from, si);
        let stats = &self.listeners[to].stats;
        // The place taken on accept (the owner's, under no limit) becomes
        // one under the picked service's limit.
        self.listeners[from].stats.release();
        if !stats.try_reserve(max) {
            self.listeners[from].stats.try_reserve(None);
            self.refuse_hello(slot, SniRefused::Full);
            return;
        }
        stats.accepted.fetch_add(1, Relaxed);
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        conn.listener = to;
        conn.client_ready.readable = true;
        self.choose_backend(slot);
    }

    /// The listener state of service `si` for the address of listener
    /// `li`: `li` itself when it is the service's, else one without a
    /// socket, made on first use (bounded by services × shared addresses;
    /// a service removed and added again by reloads gets a fresh one, as
    /// its counters are fresh).
    fn routed_listener(&mut self, li: usize, si: usize) -> usize {
        let service = &self.snapshot.services[si];
        let addr = self.listeners[li].addr;
        let same = |l: &ListenerState| {
            l.addr == addr && l.service_index == Some(si) && Arc::ptr_eq(&l.stats, &service.stats)
        };
        if same(&self.listeners[li]) {
            return li;
        }
        if let Some(i) = self.listeners.iter().position(|l| l.routed && same(l)) {
            return i;
        }
        let state = ListenerState::routed(service.name.clone(), addr, service.stats.clone(), si);
        self.listeners.push(state);
        self.listeners.len() - 1
    }

    /// Ends a connection awaiting its ClientHello for `reason`, counted on
    /// the listener's service, with a reset to the client; no backend was
    /// asked.
    pub(crate) fn refuse_hello(&mut self, slot: usize, reason: SniRefused) {
        if let Some(conn) = self.slab.get(slot) {
            let stats = &self.listeners[conn.listener].stats;
            stats.count_sni_refused(reason);
            stats.accepted.fetch_add(1, Relaxed);
        }
        self.abort(slot, EndCause::SniRefused);
    }
}
