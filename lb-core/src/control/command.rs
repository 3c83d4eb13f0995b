//! The control plane's messages: [`Command`], and the two ways to send one
//! and wait for its reply — [`ask`] from a task (the admin server, with a
//! deadline) and [`ask_blocking`] from a plain thread (`ServerHandle`).
//! The commands are applied on the control-plane thread, one at a time
//! between its other events (`control/plane.rs`); the senders run wherever
//! their caller does.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::status::StatusView;
use super::{JoinError, JoinOutcome, RegistryError, ReloadError, ReloadSummary};
use crate::config::{AdminState, Backend};

/// Requests to the control plane.
#[derive(Debug)]
pub(crate) enum Command {
    /// Set a backend's admin state.
    Admin {
        service: String,
        backend: String,
        state: AdminState,
        reply: oneshot::Sender<Result<(), RegistryError>>,
    },
    /// Read the config file again and apply it (as SIGHUP does).
    Reload {
        reply: oneshot::Sender<Result<ReloadSummary, ReloadError>>,
    },
    /// Set a backend's weight (rebuilds its service's Maglev table).
    Weight {
        service: String,
        backend: String,
        weight: NonZeroU32,
        reply: oneshot::Sender<Result<(), RegistryError>>,
    },
    /// The registry's state now, for the admin API's reads; `history`:
    /// with each backend's samples and transitions (the JSON documents and
    /// the status page), not for /metrics and the health answer, which do
    /// not show them (300 samples a backend copied for nothing).
    Status {
        history: bool,
        reply: oneshot::Sender<StatusView>,
    },
    /// The join key in force (it follows reloads); None: joining is off.
    JoinKey {
        reply: oneshot::Sender<Option<String>>,
    },
    /// Add a node that announced itself with the join key (see
    /// `control/join.rs`).
    Join {
        service: String,
        backend: Backend,
        reply: oneshot::Sender<Result<JoinOutcome, JoinError>>,
    },
    /// Remove a joined node; the reply is its settings.
    Leave {
        service: String,
        backend: String,
        reply: oneshot::Sender<Result<Backend, JoinError>>,
    },
    /// Stop accepting, wait for connections up to the shutdown timeout, stop.
    Shutdown,
}

/// Sends the command `command` builds around a fresh reply channel and
/// waits up to `deadline` for the reply. None: the control plane has
/// stopped, dropped the reply, or did not answer in time.
pub(crate) async fn ask<T>(
    commands: &mpsc::UnboundedSender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
    deadline: Duration,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    commands.send(command(reply)).ok()?;
    tokio::time::timeout(deadline, answer).await.ok()?.ok()
}

/// As [`ask`], blocking the calling thread until the reply comes (no
/// deadline: the control plane answers every command it takes). Must not be
/// called on the control plane's runtime. None: the control plane has
/// stopped.
pub(crate) fn ask_blocking<T>(
    commands: &mpsc::UnboundedSender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    commands.send(command(reply)).ok()?;
    answer.blocking_recv().ok()
}
