//! Event engines: the loops that drive a [`Worker`](crate::worker::Worker).
//! Each runs on its worker thread.
//!
//! - [`epoll`]: mio (epoll), edge-triggered readiness + inline `splice(2)`.
//!   Works everywhere, including where io_uring is blocked (Docker's default
//!   seccomp profile, gVisor, `kernel.io_uring_disabled`).
//! - io_uring: its own issue; `engine = "auto"` will try it first and fall
//!   back to epoll on any setup error.

pub mod epoll;

use crate::config::EngineKind;
use crate::worker::WorkerSetup;

/// Which engine a worker actually runs, and why (logged once at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChoice {
    pub name: &'static str,
    pub reason: String,
}

/// Resolves the configured engine kind against what this build and kernel
/// can run. `Err` only when a specific engine was demanded and can't run.
pub fn choose(kind: EngineKind) -> Result<EngineChoice, crate::Error> {
    match kind {
        EngineKind::Epoll => Ok(EngineChoice { name: "epoll", reason: "configured".into() }),
        EngineKind::Auto => Ok(EngineChoice {
            name: "epoll",
            reason: "engine = \"auto\": the io_uring engine is not part of this build yet".into(),
        }),
        EngineKind::Uring => Err(crate::Error::Engine {
            engine: "uring",
            reason: "the io_uring engine is not part of this build yet; use engine = \"auto\" or \"epoll\"".into(),
        }),
    }
}

/// Runs one worker to completion on the current thread.
pub fn run(choice: &EngineChoice, setup: WorkerSetup) -> Result<(), crate::Error> {
    debug_assert_eq!(choice.name, "epoll");
    epoll::run(setup)
}
