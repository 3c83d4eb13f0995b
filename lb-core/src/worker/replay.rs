//! The replayable phase (`retry_before_response = "tls"`, the default): a
//! connection whose backend connect completed but which has not answered
//! yet. While the backend has sent nothing and the client has sent nothing
//! or only a TLS ClientHello (at most [`MAX_HELLO`] bytes), nothing has
//! happened: if the backend closes or resets now (a node killed with new
//! connections in its accept queue), the client is moved to its next
//! candidate and the same bytes are sent there. The client never sees it.
//!
//! The hello is held without a byte of per-connection memory: it is copied
//! to the backend from a peek into the worker's one scratch buffer and
//! stays in the client's socket (`sent` says how much of it this backend
//! has). The backend's first byte ends the phase: those `sent` bytes are
//! taken off the client socket and the connection is established on that
//! backend (its counters count it there, once). So does anything that is
//! not a hello alone (HTTP, SSH, a malformed or oversized hello, bytes
//! after the hello such as 0-RTT early data, the client's FIN or reset):
//! the connection is established at once and the pumps forward the rest,
//! as without the setting; a plain-text request costs one peek. A backend
//! that fails while no candidate is left is established anyway: the pumps
//! pass its close or reset on to the client, as without the setting.
//!
//! A backend that fails here is reported as a passive failure (a reset of a
//! fresh connection is the backend's fault); a local error (no memory) is
//! not, and resets the client. The idle timeout bounds the phase (a
//! backend that accepts and never answers), as for an established
//! connection (`timers.rs`). Runs on the worker's thread.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::access_log::EndCause;
use crate::stats::BackendStats;
use crate::sys;
use crate::tls_hello::{scan, Scan, MAX_HELLO};

use super::connect::{ConnectFailure, Served};
use super::{Phase, Reactor, Syscalls, Worker, MAX_ATTEMPTS};

/// Where a connection stands in its candidates: the fields of
/// `Phase::Connecting` that outlive a completed connect, so that a backend
/// failing before its first byte hands the connection to the next one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    /// The backend connected to, by index in the snapshot of `generation`
    /// and by address.
    pub backend_index: u32,
    pub target: Option<SocketAddr>,
    /// The client's candidates and how many were tried.
    pub candidates: [u32; MAX_ATTEMPTS],
    pub count: u8,
    pub tried: u8,
    /// Connects started in all (the access log's attempts).
    pub attempts: u8,
    pub generation: u64,
}

impl Attempt {
    /// The connecting phase that goes on from here (`next_attempt` sets
    /// its deadline and start).
    fn connecting(self, now: Instant) -> Phase {
        Phase::Connecting {
            backend_index: self.backend_index,
            target: self.target,
            candidates: self.candidates,
            count: self.count,
            tried: self.tried,
            attempts: self.attempts,
            generation: self.generation,
            deadline: now,
            started: now,
        }
    }
}

/// A connection in the replayable phase.
pub(crate) struct Held {
    /// Its candidates, for the next connect if this backend fails.
    attempt: Attempt,
    /// The backend it is on, as the established phase will name it.
    served: Served,
    /// Bytes at the head of the client's socket that this backend was
    /// sent (still in the socket until the backend answers).
    sent: usize,
    /// Bytes the last peek saw (more than `sent`: a send was short and the
    /// rest goes when the backend is writable again).
    seen: usize,
}

impl Held {
    /// The access log's attempts of a connection that ends here.
    pub(super) fn attempts(&self) -> u8 {
        self.attempt.attempts
    }

    /// Its backend's counters (its `active` count is taken on connect).
    pub(super) fn stats(&self) -> &Arc<BackendStats> {
        &self.served.stats
    }
}

/// What the backend's socket says when it reports readiness.
enum Answer {
    /// Nothing yet.
    Silent,
    /// Its first byte is there.
    Spoke,
    /// Closed (`None`) or failed before answering.
    Failed(Option<io::Error>),
}

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    /// The connect of the connection in `slot` completed with backend
    /// `served` (its `active` already counted), `attempt` in its
    /// candidates: it waits for that backend's first byte.
    pub(super) fn hold(&mut self, slot: usize, attempt: Attempt, served: Served) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        conn.phase = Phase::Replayable(Held {
            attempt,
            served,
            sent: 0,
            seen: 0,
        });
        conn.last_active = self.now;
        conn.backend_ready.writable = true;
        // The client may have sent its hello while the backend connected
        // (its edge was recorded then): judged now, not at its next edge.
        self.replay_event(slot, false);
    }

    /// A readiness report on the connection in `slot`, in the replayable
    /// phase: from the backend (`backend`) or the client.
    pub(super) fn replay_event(&mut self, slot: usize, backend: bool) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Some(backend_fd) = conn.backend.as_ref().map(|b| b.as_raw_fd()) else {
            return;
        };
        if conn.backend_ready.readable || conn.backend_ready.read_closed {
            match self.answer(backend_fd) {
                Answer::Spoke => {
                    self.settle(slot);
                    return;
                }
                Answer::Failed(error) => {
                    self.backend_failed(slot, error);
                    return;
                }
                Answer::Silent => {
                    if let Some(conn) = self.slab.get_mut(slot) {
                        conn.backend_ready.readable = false;
                    }
                }
            }
        }
        let Some(conn) = self.slab.get(slot) else {
            return;
        };
        let Phase::Replayable(held) = &conn.phase else {
            return;
        };
        let client_news = !backend && (conn.client_ready.readable || conn.client_ready.read_closed);
        let unsent = held.seen > held.sent && conn.backend_ready.writable;
        if client_news || unsent {
            self.forward_hello(slot, backend_fd);
        }
    }

    /// Whether the backend on `fd` answered, failed or is still silent:
    /// a one-byte peek (the byte stays for the pumps).
    fn answer(&mut self, fd: RawFd) -> Answer {
        let mut one = [0u8; 1];
        loop {
            return match self.sys.peek(fd, &mut one) {
                Ok(0) => Answer::Failed(None),
                Ok(_) => Answer::Spoke,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if sys::would_block(&e) => Answer::Silent,
                Err(e) => Answer::Failed(Some(e)),
            };
        }
    }

    /// Judges what the client sent so far: a hello (whole or not) alone is
    /// copied to the backend where it is not yet; anything else ends the
    /// phase.
    fn forward_hello(&mut self, slot: usize, backend_fd: RawFd) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let client_fd = conn.client.as_raw_fd();
        // One more than a hello may span: bytes after the longest hello
        // are seen.
        if self.scratch.len() <= MAX_HELLO {
            self.scratch.resize(MAX_HELLO + 1, 0);
        }
        let seen = loop {
            match self.sys.peek(client_fd, &mut self.scratch[..=MAX_HELLO]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if sys::would_block(&e) => {
                    conn.client_ready.readable = false;
                    return;
                }
                // Reset: the pumps meet the error and end it as usual.
                Err(_) => break 0,
            }
        };
        // EOF, FIN or reset: ended as without the retry (the pumps pass
        // the bytes and the FIN on, or reset the backend).
        let alone = seen > 0
            && !conn.client_ready.read_closed
            && match scan(&self.scratch[..seen]) {
                Scan::Incomplete => true,
                Scan::Complete { len, .. } => seen == len,
                Scan::Refused(_) => false,
            };
        let Phase::Replayable(held) = &mut conn.phase else {
            return;
        };
        if !alone {
            self.settle(slot);
            return;
        }
        held.seen = seen;
        while held.sent < seen && conn.backend_ready.writable {
            match self.sys.send(backend_fd, &self.scratch[held.sent..seen]) {
                Ok(n) if n > 0 => held.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(_) => conn.backend_ready.writable = false,
                Err(e) if sys::would_block(&e) => conn.backend_ready.writable = false,
                Err(e) => {
                    self.backend_failed(slot, Some(e));
                    return;
                }
            }
        }
    }

    /// Ends the phase: the bytes the backend was sent are taken off the
    /// client's socket, and the connection is established on it.
    fn settle(&mut self, slot: usize) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Phase::Replayable(held) = &conn.phase else {
            return;
        };
        let (sent, fd) = (held.sent, conn.client.as_raw_fd());
        // Whatever else the client sent (or its FIN) is the pumps' now.
        conn.client_ready.readable = true;
        if !self.take(fd, sent) {
            // The client reset: its bytes are gone with it.
            self.abort(slot, EndCause::ClientReset);
            return;
        }
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let placeholder = Phase::Preamble { deadline: self.now };
        let Phase::Replayable(held) = std::mem::replace(&mut conn.phase, placeholder) else {
            return;
        };
        self.establish(slot, held.served, held.attempt.attempts);
    }

    /// The backend closed (`error` None) or failed before its first byte:
    /// on to the client's next candidate, which gets the held bytes again,
    /// or, with none left, established as without the retry.
    fn backend_failed(&mut self, slot: usize, error: Option<io::Error>) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Some(si) = self.listeners[conn.listener].service_index else {
            self.abort(slot, EndCause::NoBackend);
            return;
        };
        let Phase::Replayable(held) = &conn.phase else {
            return;
        };
        let (address, attempt, sent) = (held.served.address, held.attempt, held.sent);
        let stats = held.served.stats.clone();
        if let Some(e) = &error {
            if self.local_failure(e, address) {
                self.abort(slot, EndCause::LocalError);
                return;
            }
        }
        let fresh = attempt.generation == self.snapshot.generation;
        if fresh && attempt.tried >= attempt.count {
            // Nobody left: the pumps pass the close or reset on.
            self.settle(slot);
            return;
        }
        stats.active.fetch_sub(1, Relaxed);
        let reason = error
            .as_ref()
            .map_or(ConnectFailure::ClosedBeforeAnswer, ConnectFailure::from_io);
        self.report_failure(si, address, reason);
        if sent > 0 {
            self.snapshot.services[si]
                .stats
                .tls_replays
                .fetch_add(1, Relaxed);
        }
        self.drop_backend(slot);
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        conn.phase = attempt.connecting(self.now);
        // The held bytes are still in the socket: the next backend's
        // connect peeks them again, with no edge to say so.
        conn.client_ready.readable = true;
        self.next_attempt(slot);
    }
}
