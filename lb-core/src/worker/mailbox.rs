//! The worker's side of its link with the control plane: [`WorkerControl`]
//! (flags, counters, the waker and a mailbox) and the [`WorkerMessage`]s a
//! running worker accepts.
//!
//! `WorkerControl` is shared: the control plane writes flags and posts
//! messages from its thread; the worker reads them on its own, looking at
//! the mailbox once per turn and locking it only when something was posted.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex, OnceLock};

use crate::access_log::EndCause;
use crate::conn;
use crate::engine::Engine;
use crate::stats::Latencies;

use super::listeners::{Listener, ListenerState};
use super::{Reactor, Syscalls, Token, Worker};

/// Shared between a worker and the control plane.
#[derive(Default)]
pub struct WorkerControl {
    /// Stop accepting (close listeners); keep serving connections.
    pub draining: AtomicBool,
    /// A drain is announced (`drain_announce`): ringlb's health answers
    /// 503 while this worker still accepts. Read by the admin server only.
    pub announcing: AtomicBool,
    /// Exit now, closing every connection.
    pub stop: AtomicBool,
    /// Set (Release) by a draining worker once every listener is closed and
    /// the connection count published after that: from then on
    /// `connections` only goes down, so the drain may trust a zero. Before
    /// it, a zero is stale and the worker may still accept (and a stop
    /// would reset what it accepted).
    pub(crate) listeners_closed: AtomicBool,
    /// Connections this worker holds.
    pub connections: AtomicUsize,
    /// Connections accepted in all.
    pub accepted: AtomicU64,
    /// Event-loop turns in all (the watchdog checks it moves).
    pub turns: AtomicU64,
    /// Pipes currently lent to connections (leak checks, metrics).
    pub pipes_lent: AtomicUsize,
    /// Copy buffers currently lent to connections (`forwarding = "copy"`/`"auto"`).
    pub buffers_lent: AtomicUsize,
    /// The engine that runs this worker, once started.
    pub engine: OnceLock<Engine>,
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The worker's latency histograms as of its last publication (at most
    /// once a second); scrapes merge these copies.
    pub latencies: arc_swap::ArcSwapOption<Latencies>,
    /// Requests from the control plane (reload). The worker looks at
    /// `has_mail` once per turn and takes the lock only when it is set.
    mail: Mutex<Vec<WorkerMessage>>,
    has_mail: AtomicBool,
}

/// What the control plane may ask of a running worker.
pub enum WorkerMessage {
    /// Accept on a new listener (a reload added a listen address).
    AddListener(Listener),
    /// Stop accepting on an address (a reload removed it); established
    /// connections stay.
    CloseListener { service: Arc<str>, addr: SocketAddr },
}

impl std::fmt::Debug for WorkerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerControl")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl WorkerControl {
    /// Wakes the worker's event loop (after publishing, or to stop it).
    pub fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }

    /// Queues a request and wakes the worker.
    pub fn send(&self, msg: WorkerMessage) {
        self.mail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
        self.has_mail.store(true, Release);
        self.wake();
    }

    pub(crate) fn take_mail(&self) -> Vec<WorkerMessage> {
        if !self.has_mail.swap(false, Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.mail.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Called once by the engine with its way to be woken.
    pub fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(waker);
    }
}

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    pub(crate) fn on_message(&mut self, msg: WorkerMessage) {
        match msg {
            WorkerMessage::AddListener(l) => {
                if self.listeners_closed {
                    return; // draining: a new listener would only be closed
                }
                let i = self.listeners.len();
                let fd = l.socket.as_raw_fd();
                // Clients may be queued already; edge-triggered (an engine
                // that accepts by itself finds them on arming).
                let si = self.snapshot.service_index(&l.service);
                let mut state = ListenerState::new(l, si, !R::DELIVERS_ACCEPTS);
                state.refresh(&self.snapshot);
                self.listeners.push(state);
                if let Err(e) = self.reactor.add(fd, Token::listener(i)) {
                    tracing::error!(worker = self.id, error = %e, "cannot watch a new listener");
                    self.listeners[i].socket = None;
                }
            }
            WorkerMessage::CloseListener { service, addr } => {
                for (i, l) in self.listeners.iter_mut().enumerate() {
                    if l.service == service && l.addr == addr {
                        // Held ones go as the kernel resets a closed
                        // listener's backlog.
                        while let Some((fd, peer)) = l.held.pop_front() {
                            conn::prepare_reset(fd.as_raw_fd());
                            super::unadmitted(&self.access_log, l, peer, EndCause::Shutdown);
                        }
                        if let Some(s) = l.socket.take() {
                            if !l.paused {
                                self.reactor.remove(s.as_raw_fd(), Token::listener(i), true);
                            }
                        }
                        l.more = false;
                    }
                }
            }
        }
    }
}
