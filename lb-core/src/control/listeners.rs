//! The control plane's copy of every service's listening socket: handed to
//! a new ringlb on a binary upgrade, closed when a reload stops listening
//! on its address and when draining, and shut down
//! by the main thread when a thread dies (see [`ListenerCopies::stop_all`]).
//! Shared by the control-plane thread and the main thread; the lock is held
//! only to copy, add, clear or shut the list, never across I/O that waits.

use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

/// One listening socket: its service, its address, a copy of the socket.
pub(crate) type ListenerCopy = (String, SocketAddr, socket2::Socket);

/// The copies; cloning shares them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListenerCopies(Arc<Mutex<Vec<ListenerCopy>>>);

impl ListenerCopies {
    /// A poisoned lock (a thread died holding it) still gives the list:
    /// every change to it is a single push, clear or clone.
    fn list(&self) -> MutexGuard<'_, Vec<ListenerCopy>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, copy: ListenerCopy) {
        self.list().push(copy);
    }

    /// Closes the copies of `addr` of `service` (a reload stopped listening
    /// there).
    pub(crate) fn remove(&self, service: &str, addr: SocketAddr) {
        self.list()
            .retain(|(s, a, _)| !(s == service && *a == addr));
    }

    /// Fresh copies of every socket, to hand over.
    pub(crate) fn duplicate(&self) -> Vec<ListenerCopy> {
        self.list()
            .iter()
            .filter_map(|(s, a, sock)| sock.try_clone().ok().map(|c| (s.clone(), *a, c)))
            .collect()
    }

    /// Closes the copies (the workers' own sockets stay open until they
    /// close them).
    pub(crate) fn clear(&self) {
        self.list().clear();
    }

    /// Stops every listening socket at once, whoever else holds it: a
    /// `shutdown(SHUT_RD)` takes a TCP socket out of the listening state, so
    /// the kernel refuses new clients from then on (the ones still queued are
    /// reset). For a process about to exit because a thread died: closing
    /// alone is not enough, as an io_uring ring holds its own references to
    /// the sockets it accepts on until its teardown finishes, some
    /// milliseconds after the process is gone, and clients that reach them
    /// meanwhile would be accepted into a queue nobody serves, then reset.
    pub(crate) fn stop_all(&self) {
        for (_, _, socket) in self.list().iter() {
            let _ = socket.shutdown(Shutdown::Read);
        }
    }
}
