//! ringlb core: everything but the command line.
//!
//! Threads: the control plane (one thread, current-thread tokio runtime) owns
//! config, registry, prober and publisher; one worker thread per core owns its
//! listeners, its event loop (io_uring or epoll), its connections and pipes.
//! The only thing they share on the hot path is the published [`snapshot`].

pub mod admin;
pub mod buffer;
pub mod config;
pub mod conn;
pub mod control;
pub mod demo;
pub mod engine;
pub mod error;
pub mod handover;
pub mod hash;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod notify;
pub mod pipe;
pub mod policy;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod worker;

pub use error::{Error, Result};

#[cfg(test)]
mod test_sockets;
