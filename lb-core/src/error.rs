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
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source} (is another process using it, or is the address not local?)")]
    Listen { addr: SocketAddr, source: io::Error },
    /// The requested event engine could not be set up.
    #[error("engine {engine} is not available: {reason}")]
    Engine {
        engine: &'static str,
        reason: String,
    },
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
