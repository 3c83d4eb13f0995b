//! A worker's listeners and admission: accepting (or taking what the engine
//! accepted), the service's `max_connections`, pausing a listener while its
//! service is full or accepting hit a resource limit, resuming it, and
//! closing them all on drain.
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

use crate::conn;
use crate::failpoint::failpoint;
use crate::stats::ServiceStats;

use super::{Reactor, Syscalls, Token, Worker};

/// Connections accepted from one listener per readiness event before the
/// worker serves the others (the rest are picked up next turn).
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    pub(crate) fn accept_from(&mut self, li: usize) {
        if self.accept_backoff.is_some() || self.listeners[li].paused {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let l = &self.listeners[li];
            let Some(socket) = &l.socket else { return };
            let Some(si) = l.service_index else { return };
            if !self.reserve(li, si) {
                self.pause_listener(li);
                return;
            }
            match self.sys.accept(socket.as_raw_fd()) {
                Ok((fd, peer)) => self.admit(li, si, fd, peer),
                Err(e) => {
                    self.listeners[li].stats.release();
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
            if !self.reserve(li, si) {
                self.pause_listener(li);
                return false;
            }
            let Some((fd, peer)) = self.listeners[li].held.pop_front() else {
                break;
            };
            self.admit(li, si, fd, peer);
        }
        true
    }

    /// Takes one of the service's `max_connections` places, if free.
    fn reserve(&self, li: usize, si: usize) -> bool {
        let max = self.snapshot.services[si].settings.max_connections;
        self.listeners[li].stats.try_reserve(max)
    }

    /// After accept, with a place reserved: count it and open it. The one
    /// path both engines take.
    fn admit(&mut self, li: usize, si: usize, fd: OwnedFd, peer: SocketAddr) {
        failpoint!("worker-panic-after-accepts");
        failpoint!(stall "worker-stall-after-accepts");
        self.listeners[li].stats.accepted.fetch_add(1, Relaxed);
        self.control.accepted.fetch_add(1, Relaxed);
        self.open(li, si, fd, peer);
    }

    /// Handles an accept error; true when accepting may go on at once.
    fn accept_failed(&mut self, e: &io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => false,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                tracing::warn!(worker = self.id, error = %e, "accept failed: out of resources; pausing accepts for 100ms");
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
            for (fd, _) in l.held.drain(..) {
                conn::prepare_reset(fd.as_raw_fd());
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

    /// Resumes paused listeners whose reason has passed; closes them all
    /// when draining.
    pub(crate) fn manage_listeners(&mut self) {
        if self.control.draining.load(Relaxed) {
            if !self.listeners_closed {
                self.listeners_closed = true;
                self.reset_held();
                for (i, l) in self.listeners.iter_mut().enumerate() {
                    if let Some(s) = l.socket.take() {
                        if !l.paused {
                            self.reactor.remove(s.as_raw_fd(), Token::listener(i), true);
                        }
                    }
                }
            }
            return;
        }
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
                .and_then(|si| self.snapshot.services[si].settings.max_connections);
            let full = max.is_some_and(|m| l.stats.active.load(Relaxed) >= m);
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
