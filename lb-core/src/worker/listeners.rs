//! A worker's listeners and admission: accepting (or taking what the engine
//! accepted), the process's connection budget and the service's
//! `max_connections`, pausing a listener while either is spent or accepting
//! hit a resource limit, resuming it, and closing them all on drain.
//!
//! At the budget (or `max_connections`) a worker stops watching the
//! listener and clients wait in the kernel's backlog, in order; nobody is
//! accepted only to be reset. A paused listener is looked at again every
//! turn (at most 100 ms apart, `timers.rs`), so places freed on any worker
//! are used promptly. io_uring's multishot accept cannot be told to wait:
//! what it accepts until its cancel lands is held, in order, costing one
//! descriptor each. While fewer than a backlog's worth of places are free,
//! the engine accepts one connection at a time (one request in flight per
//! listener), so at most one per listener is held past the budget; the
//! budget's margin covers it.
//!
//! Runs on the worker's thread.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use socket2::Socket;

use crate::access_log::EndCause;
use crate::conn;
use crate::failpoint::failpoint;
use crate::snapshot::Snapshot;
use crate::sni_routes::SniRoutes;
use crate::stats::{ServiceStats, LOCAL_ERRORS};

use super::{Reactor, Syscalls, Token, Worker};

/// Connections accepted from one listener per readiness event before the
/// worker serves the others (the rest are picked up next turn).
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Below this many free places in the budget, an engine that accepts by
/// itself takes one connection at a time: a multishot accept drains the
/// listen backlog (up to `sys::BACKLOG`) at once, which would overshoot.
const ONE_AT_A_TIME_BELOW: usize = crate::sys::BACKLOG as usize;

/// Why a client could not be admitted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The process's connection budget is spent.
    Budget,
    /// The service is at its `max_connections`.
    Service,
}

/// A listening socket given to a worker.
pub struct Listener {
    pub service: Arc<str>,
    /// The address it is bound to (port 0 in the config resolved).
    pub addr: SocketAddr,
    pub socket: Socket,
    pub stats: Arc<ServiceStats>,
}

pub(crate) struct ListenerState {
    pub(crate) service: Arc<str>,
    pub(crate) addr: SocketAddr,
    /// None once closed (drain, or removed by a reload); the state stays for
    /// the connections it accepted.
    pub(crate) socket: Option<Socket>,
    pub(crate) stats: Arc<ServiceStats>,
    /// Index of the service in the worker's current snapshot.
    pub(crate) service_index: Option<usize>,
    /// The address routes by TLS server name (`sni`): which service a
    /// client's ClientHello picks (`sni.rs`). None: every client is the
    /// service's (one branch on accept).
    pub(crate) routes: Option<Arc<SniRoutes>>,
    /// No socket of its own: the connections that a shared address's
    /// routes gave to `service` are counted and logged here (`sni.rs`).
    pub(crate) routed: bool,
    /// Not watched now: the service is full, or accept hit a resource limit.
    pub(crate) paused: bool,
    /// Accept batch ran out with connections left: accept again next turn.
    pub(crate) more: bool,
    /// Connections the engine accepted while this listener could not take
    /// them (multishot accept cannot be told to wait: it accepts until its
    /// cancel lands). They wait here as they would in the backlog, in
    /// order, and are served first on resume. Always empty on epoll.
    pub(crate) held: VecDeque<(OwnedFd, SocketAddr)>,
}

impl ListenerState {
    pub(crate) fn new(l: Listener, service_index: Option<usize>, more: bool) -> ListenerState {
        ListenerState {
            service_index,
            routes: None,
            routed: false,
            addr: l.addr,
            service: l.service,
            socket: Some(l.socket),
            stats: l.stats,
            paused: false,
            more,
            held: VecDeque::new(),
        }
    }
}

impl ListenerState {
    /// The state of service `si` (named `service`, counting on `stats`)
    /// for the shared address `addr`: no socket; the connections routed to
    /// it by server name (`sni.rs`).
    pub(crate) fn routed(
        service: Arc<str>,
        addr: SocketAddr,
        stats: Arc<ServiceStats>,
        si: usize,
    ) -> ListenerState {
        ListenerState {
            service,
            addr,
            socket: None,
            stats,
            service_index: Some(si),
            routes: None,
            routed: true,
            paused: false,
            more: false,
            held: VecDeque::new(),
        }
    }

    /// Its service and routes in `snapshot` (a new generation).
    pub(crate) fn refresh(&mut self, snapshot: &Snapshot) {
        self.service_index = snapshot.service_index(&self.service);
        if !self.routed {
            self.routes = snapshot.sni_routes(self.service_index, self.addr);
        }
    }
}

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    pub(crate) fn accept_from(&mut self, li: usize) {
        if self.accept_backoff.is_some() || self.listeners[li].paused {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let l = &self.listeners[li];
            let Some(socket) = &l.socket else { return };
            let Some(si) = l.service_index else { return };
            if let Err(full) = self.reserve(li, si) {
                self.pause_full(li, full);
                return;
            }
            match self.sys.accept(socket.as_raw_fd()) {
                Ok((fd, peer)) => self.admit(li, si, fd, peer),
                Err(e) => {
                    self.listeners[li].stats.release();
                    self.budget.release();
                    if !self.accept_failed(&e) {
                        return;
                    }
                }
            }
        }
        self.listeners[li].more = true;
    }

    /// A connection the engine accepted on listener `li` (multishot
    /// accept). Runs the same admission as the epoll path's accept: when the
    /// service is full or accepting is backed off, the connection waits in
    /// the listener's `held` queue and the listener pauses.
    pub(crate) fn on_accepted(&mut self, li: usize, fd: OwnedFd, peer: SocketAddr) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if l.socket.is_none() || l.service_index.is_none() {
            // Draining (or the service left the table): the kernel would
            // have reset it in the closed listener's backlog; do the same.
            conn::prepare_reset(fd.as_raw_fd());
            let cause = if l.socket.is_none() {
                EndCause::Shutdown
            } else {
                EndCause::NoBackend
            };
            super::unadmitted(&self.access_log, l, peer, cause);
            return;
        }
        l.held.push_back((fd, peer));
        if !l.paused && self.accept_backoff.is_none() {
            self.serve_held(li);
        }
    }

    /// The engine's accept on listener `li` failed (the worker decides
    /// whether to back off; the engine re-arms while the listener is
    /// watched).
    pub(crate) fn on_accept_error(&mut self, _li: usize, e: &io::Error) {
        self.accept_failed(e);
    }

    /// Admits held connections of listener `li` while the service has
    /// room; pauses the listener when it has none. True when none is left.
    fn serve_held(&mut self, li: usize) -> bool {
        while !self.listeners[li].held.is_empty() {
            let Some(si) = self.listeners[li].service_index else {
                return false;
            };
            if let Err(full) = self.reserve(li, si) {
                self.pause_full(li, full);
                return false;
            }
            let Some((fd, peer)) = self.listeners[li].held.pop_front() else {
                break;
            };
            self.admit(li, si, fd, peer);
        }
        true
    }

    /// Takes a place in the process's budget and one of the service's
    /// `max_connections` places, if both are free (else neither).
    fn reserve(&self, li: usize, si: usize) -> Result<(), Full> {
        if !self.budget.try_take() {
            return Err(Full::Budget);
        }
        // With routes, the service is not known yet: its limit applies
        // once the ClientHello picks it (`sni.rs`).
        let l = &self.listeners[li];
        let max = match l.routes {
            None => self.snapshot.services[si].settings.max_connections,
            Some(_) => None,
        };
        if !l.stats.try_reserve(max) {
            self.budget.release();
            return Err(Full::Service);
        }
        Ok(())
    }

    /// Pauses listener `li` for lack of room (counting a pause at the
    /// budget).
    fn pause_full(&mut self, li: usize, full: Full) {
        if full == Full::Budget && !self.listeners[li].paused {
            self.budget.count_full();
        }
        self.pause_listener(li);
    }

    /// After accept, with a place reserved: count it and open it. The one
    /// path both engines take.
    fn admit(&mut self, li: usize, si: usize, fd: OwnedFd, peer: SocketAddr) {
        failpoint!("worker-panic-after-accepts");
        failpoint!(stall "worker-stall-after-accepts");
        // With routes, counted on the service the ClientHello picks.
        if self.listeners[li].routes.is_none() {
            self.listeners[li].stats.accepted.fetch_add(1, Relaxed);
        }
        self.control.accepted.fetch_add(1, Relaxed);
        self.open(li, si, fd, peer);
    }

    /// Handles an accept error; true when accepting may go on at once.
    fn accept_failed(&mut self, e: &io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => false,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                // Counted and logged at most once a second; clients wait in
                // the backlog meanwhile.
                LOCAL_ERRORS.record(e, &"accepting a client (accepts pause for 100ms)");
                self.accept_backoff = Some(self.now + ACCEPT_BACKOFF);
                for i in 0..self.listeners.len() {
                    self.pause_listener(i);
                }
                false
            }
            // The client went away before we accepted, or a signal: try
            // the next one.
            _ => true,
        }
    }

    /// Resets and drops every held connection (drain, stop).
    pub(crate) fn reset_held(&mut self) {
        for l in &mut self.listeners {
            while let Some((fd, peer)) = l.held.pop_front() {
                conn::prepare_reset(fd.as_raw_fd());
                super::unadmitted(&self.access_log, l, peer, EndCause::Shutdown);
            }
        }
    }

    fn pause_listener(&mut self, li: usize) {
        let l = &mut self.listeners[li];
        if l.paused {
            return;
        }
        l.paused = true;
        l.more = false;
        if let Some(s) = &l.socket {
            self.reactor
                .remove(s.as_raw_fd(), Token::listener(li), false);
        }
    }

    /// With an engine that accepts by itself: accepts one connection at a
    /// time while fewer than [`ONE_AT_A_TIME_BELOW`] places are free, so
    /// what it takes past the budget before this worker pauses is one
    /// connection per listener; in bulk otherwise. Re-arms the watched
    /// listeners when that changes.
    pub(crate) fn choose_accept_batch(&mut self) {
        if !R::DELIVERS_ACCEPTS {
            return;
        }
        let room = self.budget.limit().saturating_sub(self.budget.active());
        if !self
            .reactor
            .accept_one_at_a_time(room < ONE_AT_A_TIME_BELOW)
        {
            return;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let (false, Some(s)) = (l.paused, &l.socket) {
                let fd = s.as_raw_fd();
                self.reactor.remove(fd, Token::listener(i), false);
                if let Err(e) = self.reactor.add(fd, Token::listener(i)) {
                    tracing::error!(worker = self.id, error = %e, "cannot re-arm a listener");
                }
            }
        }
    }

    /// Resumes paused listeners whose reason has passed; closes them all
    /// when draining.
    ///
    /// An engine that accepts by itself (io_uring) keeps a listener open
    /// until its cancelled accept has ended, then takes what the backlog
    /// holds once with accept(2) before closing it: a listening socket
    /// wakes one of io_uring's accepts per connection, and when the woken
    /// one is being cancelled that wake-up is lost. After a binary upgrade
    /// the new process shares the socket, and a connection whose wake-up
    /// went to our cancelled accept would wait in the backlog, unserved,
    /// until the next connection woke the new process.
    pub(crate) fn manage_listeners(&mut self) {
        if self.control.draining.load(Relaxed) {
            if !self.listeners_closed {
                self.listeners_closed = true;
                self.reset_held();
                for i in 0..self.listeners.len() {
                    let l = &mut self.listeners[i];
                    let Some(fd) = l.socket.as_ref().map(|s| s.as_raw_fd()) else {
                        continue;
                    };
                    if !l.paused {
                        self.reactor
                            .remove(fd, Token::listener(i), !R::DELIVERS_ACCEPTS);
                    }
                    if !R::DELIVERS_ACCEPTS {
                        self.listeners[i].socket = None;
                    }
                }
            }
            for i in 0..self.listeners.len() {
                if self.listeners[i].socket.is_some() && !self.reactor.accepting(i) {
                    // The last sweep; `paused` listeners leave their backlog
                    // to the kernel, as before.
                    self.accept_from(i);
                    self.listeners[i].socket = None;
                }
            }
            return;
        }
        self.choose_accept_batch();
        if let Some(until) = self.accept_backoff {
            if self.now < until {
                return;
            }
            self.accept_backoff = None;
        }
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            if !l.paused {
                continue;
            }
            let max = l
                .service_index
                .filter(|_| l.routes.is_none())
                .and_then(|si| self.snapshot.services[si].settings.max_connections);
            let full =
                self.budget.is_spent() || max.is_some_and(|m| l.stats.active.load(Relaxed) >= m);
            if full || !self.serve_held(i) {
                continue;
            }
            let l = &self.listeners[i];
            if let Some(s) = &l.socket {
                if self.reactor.add(s.as_raw_fd(), Token::listener(i)).is_ok() {
                    self.listeners[i].paused = false;
                    // Edge-triggered: connections queued while paused raise
                    // no new edge, so look now (an engine that accepts by
                    // itself finds them when its accept is re-armed).
                    self.listeners[i].more = !R::DELIVERS_ACCEPTS;
                }
            }
        }
    }
}
