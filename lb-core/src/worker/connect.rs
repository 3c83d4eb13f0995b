//! Placing a client on a backend: a connection's slot and its candidates
//! (the service's preference order for the client), one non-blocking
//! connect after another until one completes or `MAX_ATTEMPTS` distinct
//! backends failed, and each failure reported to the control plane as
//! passive health.
//!
//! A connect that fails for a local reason (EMFILE, ENFILE, ENOBUFS,
//! ENOMEM, no free local port: see `stats::LocalKind`) is the host's
//! shortage, not the backend's: it is counted in the local errors, never
//! reported as passive health, and the client is reset at once without
//! trying another backend (which would fail the same way).
//!
//! Runs on the worker's thread; the failures cross to the control plane
//! through a bounded channel that never blocks the worker.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::EndCause;
use crate::conn::{Pair, Readiness};
use crate::proxy_header::{self, ProxyVersion};
use crate::snapshot::BackendEntry;
use crate::source_limits::{SourceHold, SourceRefused};
use crate::stats::{BackendStats, LOCAL_ERRORS};

use super::replay::Attempt;
use super::{Conn, Phase, Reactor, Syscalls, Worker};

/// Most backends one client connection tries.
pub(crate) const MAX_ATTEMPTS: usize = 8;

/// A connect failure, sent to the control plane (passive health).
#[derive(Debug, Clone)]
pub(crate) struct PassiveFailure {
    pub service: Arc<str>,
    pub backend: Arc<str>,
    pub address: SocketAddr,
    pub reason: ConnectFailure,
}

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    Refused,
    Timeout,
    Unreachable,
    /// Connected, then closed or reset before its first byte (seen when a
    /// held TLS ClientHello is replayed elsewhere: `replay.rs`).
    ClosedBeforeAnswer,
    Other(i32),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Refused => f.write_str("connection refused"),
            ConnectFailure::Timeout => f.write_str("connect timed out"),
            ConnectFailure::Unreachable => f.write_str("unreachable"),
            ConnectFailure::ClosedBeforeAnswer => f.write_str("closed before answering"),
            ConnectFailure::Other(errno) => write!(f, "{}", io::Error::from_raw_os_error(*errno)),
        }
    }
}

impl ConnectFailure {
    pub(super) fn from_io(e: &io::Error) -> ConnectFailure {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
            Some(libc::ETIMEDOUT) => ConnectFailure::Timeout,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
                ConnectFailure::Unreachable
            }
            Some(n) => ConnectFailure::Other(n),
            None => ConnectFailure::Other(0),
        }
    }
}

/// The backend a connect reached, as the established phase names it.
pub(crate) struct Served {
    /// Its counters (`active` is counted on connect, the rest once the
    /// connection is established on it).
    pub stats: Arc<BackendStats>,
    /// Its name, only kept with the access log on.
    pub name: Option<Arc<str>>,
    pub address: SocketAddr,
    /// How long its connect took.
    pub connect_time: Duration,
}

/// Where workers send passive failures; never blocks (drops when full).
pub(crate) type FailureSender = tokio::sync::mpsc::Sender<PassiveFailure>;

impl<R: Reactor, S: Syscalls> Worker<R, S> {
    /// An admitted client: its slot, its candidates, its first connect;
    /// or, when the service reads PROXY headers, its preamble first.
    pub(crate) fn open(&mut self, li: usize, si: usize, client: OwnedFd, peer: SocketAddr) {
        if self.snapshot.services[si].settings.accept_proxy.is_some() {
            self.open_preamble(li, si, client, peer);
            return;
        }
        if self.listeners[li].routes.is_some() {
            self.open_hello(li, client, peer);
            return;
        }
        let source = match self.admit_source(si, peer) {
            Ok(source) => source,
            Err(_) => {
                // Refused by the per-source rules (counted): no backend
                // chosen; the end is logged and counted like any other.
                let phase = Phase::Preamble { deadline: self.now };
                let slot = self
                    .slab
                    .insert(Conn::new(client, peer, li, phase, self.now, self.now, None));
                self.abort(slot, EndCause::SourceRefused);
                return;
            }
        };
        let (phase, deadline) = self.connecting(si, peer);
        let client_fd = client.as_raw_fd();
        let slot = self.slab.insert(Conn::new(
            client, peer, li, phase, self.now, deadline, source,
        ));
        let token = self.slab.token(slot, false);
        if self.reactor.add(client_fd, token).is_err() {
            self.abort(slot, EndCause::LocalError);
            return;
        }
        self.next_attempt(slot);
    }

    /// The per-source rules of service `si` (`allow`, `deny`, the
    /// per-source limits) for a client from `peer`, its final address:
    /// what its connection holds while open, or why it is refused (then
    /// counted). With no rule set, one branch.
    pub(super) fn admit_source(
        &self,
        si: usize,
        peer: SocketAddr,
    ) -> Result<Option<SourceHold>, SourceRefused> {
        let service = &self.snapshot.services[si];
        let Some(policy) = &service.settings.sources else {
            return Ok(None);
        };
        policy.admit(peer.ip(), self.now).inspect_err(|reason| {
            service.stats.count_source_refused(*reason);
        })
    }

    /// The connecting phase of a client of service `si` from `peer`: its
    /// candidates, none tried yet; and its first deadline.
    pub(super) fn connecting(&mut self, si: usize, peer: SocketAddr) -> (Phase, Instant) {
        let service = &self.snapshot.services[si];
        let attempts = service.settings.connect_attempts.clamp(1, MAX_ATTEMPTS);
        let mut candidates = [0u32; MAX_ATTEMPTS];
        let count = service.candidates(peer.ip(), &mut self.picks[si], &mut candidates[..attempts]);
        let deadline = self.now + service.settings.connect_timeout;
        let phase = Phase::Connecting {
            backend_index: u32::MAX,
            target: None,
            candidates,
            count: count as u8,
            tried: 0,
            attempts: 0,
            generation: self.snapshot.generation,
            deadline,
            started: self.now,
        };
        (phase, deadline)
    }

    /// Starts a connect to the next untried candidate, or gives up with a
    /// reset to the client.
    pub(crate) fn next_attempt(&mut self, slot: usize) {
        loop {
            let Some(conn) = self.slab.get_mut(slot) else {
                return;
            };
            let Some(si) = self.listeners[conn.listener].service_index else {
                self.abort(slot, EndCause::NoBackend);
                return;
            };
            let svc = &self.snapshot.services[si];
            let Phase::Connecting {
                candidates,
                count,
                tried,
                attempts,
                generation,
                deadline,
                backend_index,
                target,
                started,
            } = &mut conn.phase
            else {
                return;
            };
            if *generation != self.snapshot.generation {
                // The table changed while we were trying (rare): recompute
                // in the new table, skipping the backend that just failed.
                let attempts = svc.settings.connect_attempts.clamp(1, MAX_ATTEMPTS);
                let left = usize::from(*count).saturating_sub(usize::from(*tried));
                let mut fresh = [0u32; MAX_ATTEMPTS];
                let got =
                    svc.candidates(conn.peer.ip(), &mut self.picks[si], &mut fresh[..attempts]);
                let failed = *target;
                let mut n = 0;
                for i in 0..got {
                    if Some(svc.backends[fresh[i] as usize].address) != failed && n < left {
                        fresh[n] = fresh[i];
                        n += 1;
                    }
                }
                *candidates = fresh;
                *count = n as u8;
                *tried = 0;
                *generation = self.snapshot.generation;
            }
            if *tried >= *count {
                svc.stats.no_backend.fetch_add(1, Relaxed);
                // No backend left: the client learns it by a reset.
                let cause = if *attempts == 0 {
                    EndCause::NoBackend
                } else {
                    EndCause::ConnectFailed
                };
                self.abort(slot, cause);
                return;
            }
            let b = candidates[usize::from(*tried)];
            *tried += 1;
            *attempts = attempts.saturating_add(1);
            if *tried > 1 {
                svc.stats.retries.fetch_add(1, Relaxed);
            }
            *backend_index = b;
            *started = self.now;
            *deadline = self.now + svc.settings.connect_timeout;
            let deadline = *deadline;
            let entry = &svc.backends[b as usize];
            *target = Some(entry.address);
            match self.sys.start_connect(
                entry.address,
                svc.settings.source_address,
                &svc.settings.liveness,
            ) {
                Ok(sock) => {
                    let fd = sock.as_raw_fd();
                    conn.backend = Some(sock);
                    conn.backend_ready = Readiness::default();
                    conn.timer_at = deadline;
                    let token = self.slab.token(slot, true);
                    if self.reactor.add(fd, token).is_err() {
                        self.abort(slot, EndCause::LocalError);
                        return;
                    }
                    self.arm_timer(deadline, slot);
                    return;
                }
                Err(e) => {
                    conn.backend = None;
                    let address = entry.address;
                    if self.local_failure(&e, address) {
                        self.abort(slot, EndCause::LocalError);
                        return;
                    }
                    self.report_failure(si, address, ConnectFailure::from_io(&e));
                }
            }
        }
    }

    /// True when a connect to `address` failed for a local reason (then it
    /// is counted and logged as such, and must not reach passive health).
    pub(super) fn local_failure(&self, e: &io::Error, address: SocketAddr) -> bool {
        LOCAL_ERRORS
            .record(e, &format_args!("connecting to backend {address}"))
            .is_some()
    }

    /// Counts a failed connect and tells the control plane (never blocks).
    pub(crate) fn report_failure(&self, si: usize, address: SocketAddr, reason: ConnectFailure) {
        let svc = &self.snapshot.services[si];
        let Some(entry) = svc.backends.iter().find(|b| b.address == address) else {
            return;
        };
        match reason {
            ConnectFailure::Refused => entry.stats.connect_refused.fetch_add(1, Relaxed),
            ConnectFailure::Timeout => entry.stats.connect_timeout.fetch_add(1, Relaxed),
            _ => entry.stats.connect_other.fetch_add(1, Relaxed),
        };
        let _ = self.failures.try_send(PassiveFailure {
            service: svc.name.clone(),
            backend: entry.name.clone(),
            address: entry.address,
            reason,
        });
    }

    /// Drops the backend socket of a failed attempt.
    pub(crate) fn drop_backend(&mut self, slot: usize) {
        let token = self.slab.token(slot, true);
        if let Some(conn) = self.slab.get_mut(slot) {
            if let Some(b) = conn.backend.take() {
                self.reactor.remove(b.as_raw_fd(), token, true);
            }
        }
    }

    /// Writes the PROXY header on the just connected backend socket `fd`.
    /// False when it could not be: the connection went on to the next
    /// backend, or was closed.
    fn send_proxy_header(
        &mut self,
        slot: usize,
        si: usize,
        fd: RawFd,
        version: ProxyVersion,
    ) -> bool {
        let Some(conn) = self.slab.get_mut(slot) else {
            return false;
        };
        let Phase::Connecting {
            target: Some(address),
            ..
        } = conn.phase
        else {
            return false;
        };
        let Ok(local) = self.sys.local_addr(&conn.client) else {
            // The client's socket, not the backend, failed.
            self.abort(slot, EndCause::ClientReset);
            return false;
        };
        let header = proxy_header::relayed_header(version, conn.peer, local);
        // A fresh socket's send buffer is empty: all of it or nothing.
        let e = match self.sys.send_header(fd, header.as_bytes()) {
            Ok(n) if n == header.as_bytes().len() => return true,
            Ok(_) => io::Error::from_raw_os_error(libc::EAGAIN),
            Err(e) => e,
        };
        // A connect failure of this backend: an error the network gave
        // (EPIPE, ECONNRESET: the backend closed at once) counts for its
        // passive health, a local shortage does not.
        self.drop_backend(slot);
        if self.local_failure(&e, address) {
            self.abort(slot, EndCause::LocalError);
            return false;
        }
        self.report_failure(si, address, ConnectFailure::from_io(&e));
        self.next_attempt(slot);
        false
    }

    /// The entry of the backend a connect went to: by index in the table it
    /// was chosen from, by address if a new table came since.
    fn entry(
        &self,
        si: usize,
        backend_index: u32,
        target: Option<SocketAddr>,
        generation: u64,
    ) -> Option<&BackendEntry> {
        let backends = &self.snapshot.services[si].backends;
        if generation == self.snapshot.generation {
            backends.get(backend_index as usize)
        } else {
            backends.iter().find(|b| Some(b.address) == target)
        }
    }

    /// The backend socket of a connecting connection reported readiness:
    /// established, or on to the next candidate.
    pub(crate) fn connect_done(&mut self, slot: usize) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Phase::Connecting {
            backend_index,
            target,
            candidates,
            count,
            tried,
            generation,
            started,
            attempts,
            ..
        } = conn.phase
        else {
            return;
        };
        let Some(fd) = conn.backend.as_ref().map(|b| b.as_raw_fd()) else {
            return;
        };
        // A connect that completed cleanly was reported writable and nothing
        // else (a failed one: POLLERR|POLLHUP): only otherwise is SO_ERROR
        // asked for.
        let ready = conn.backend_ready;
        let error = if ready.writable && !ready.read_closed {
            None
        } else {
            self.sys.take_socket_error(fd).unwrap_or_else(Some)
        };
        let Some(si) = self.listeners[conn.listener].service_index else {
            self.abort(slot, EndCause::NoBackend);
            return;
        };
        if let Some(e) = error {
            self.drop_backend(slot);
            if let Some(addr) = target {
                if self.local_failure(&e, addr) {
                    self.abort(slot, EndCause::LocalError);
                    return;
                }
                self.report_failure(si, addr, ConnectFailure::from_io(&e));
            }
            self.next_attempt(slot);
            return;
        }
        let access_log = self.access_log.is_some();
        let Some((stats, send_proxy, name, address)) =
            self.entry(si, backend_index, target, generation).map(|e| {
                let name = access_log.then(|| e.name.clone());
                (e.stats.clone(), e.send_proxy, name, e.address)
            })
        else {
            // Removed from the table while connecting.
            self.abort(slot, EndCause::NoBackend);
            return;
        };
        if let Some(version) = send_proxy {
            // The header goes first, before any client byte (and before a
            // TLS ClientHello). Off: this branch is all it costs.
            if !self.send_proxy_header(slot, si, fd, version) {
                return;
            }
        }
        if self.slab.get(slot).is_none() {
            return;
        }
        stats.active.fetch_add(1, Relaxed);
        let served = Served {
            stats,
            name,
            address,
            connect_time: self.now.saturating_duration_since(started),
        };
        if self.snapshot.services[si].settings.retry_tls {
            // Held until the backend answers (`replay.rs`); off: this
            // branch is all it costs.
            let attempt = Attempt {
                backend_index,
                target,
                candidates,
                count,
                tried,
                attempts,
                generation,
            };
            self.hold(slot, attempt, served);
            return;
        }
        self.establish(slot, served, attempts);
    }

    /// The connection in `slot` is established on backend `served` (its
    /// `active` already counted) after `attempts` connects: counted, then
    /// forwarded by the engine or the inline pumps.
    pub(super) fn establish(&mut self, slot: usize, served: Served, attempts: u8) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let Served {
            stats,
            name,
            address,
            connect_time,
        } = served;
        stats.total.fetch_add(1, Relaxed);
        stats.connect_time.record(connect_time);
        conn.phase = Phase::Established {
            pair: Pair::default(),
            stats,
            since: self.now,
            flows: None,
            address,
            name,
            attempts,
            connect_time,
        };
        conn.last_active = self.now;
        if self.reactor.forwards() {
            self.hand_over(slot);
            return;
        }
        // Connected: writable. Readable only if the event said so (the
        // backend's poll reported every edge since the connect started,
        // and the client's since its accept).
        conn.backend_ready.writable = true;
        self.drive(slot);
    }
}
