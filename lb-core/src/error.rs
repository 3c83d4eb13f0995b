//! The crate's error type. Every variant says what went wrong and, where it
//! helps, what to do about it; the binary adds context with `anyhow`.

use std::io;
use std::net::SocketAddr;

pub(crate) use crate::config::ConfigError;

/// Errors of ringlb's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listening socket could not be opened. The OS error is part of the
    /// message and deliberately not a `source`: an error chain printed
    /// with `{:#}` would say it twice.
    #[error("cannot listen on {addr}: {cause} (is another process using it, or is the address not local?)")]
    Listen { addr: SocketAddr, cause: io::Error },
    /// The requested event engine could not be set up.
    #[error("engine {engine} is not available: {reason}")]
    Engine {
        engine: crate::engine::Engine,
        reason: String,
    },
    /// The open-files limit cannot hold the connections the config asks
    /// for (or any at all): the figures, and what to change.
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
    /// A ringlb thread or control-plane task ended when it should not have
    /// (a panic, or its loop gave up). The process exits on this rather
    /// than run without it: a dead worker's listeners would queue clients
    /// nobody accepts, a dead control plane would ignore SIGTERM.
    #[error("{thread} died: {reason}; ringlb stops rather than run without it (a service manager such as systemd with Restart=on-failure starts it again)")]
    ThreadDied { thread: String, reason: String },
    /// Any other system call failure, with what was being done.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl Error {
    /// Wraps an I/O error with what was being attempted.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Shorthand used across lb-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
