//! Event engines: the loops that drive a [`Worker`](crate::worker::Worker).
//! Each runs on its worker thread; [`choose`] runs once at start-up on the
//! caller's thread.
//!
//! - [`uring`]: one io_uring per worker: multishot poll readiness, multishot
//!   accept, inline `splice(2)` (or copy), or with `forwarding =
//!   "uring-copy"`/`"uring-splice"` ring requests that move the bytes
//!   themselves; one `io_uring_enter` per turn, more only while the kernel
//!   holds ready completions back.
//! - [`epoll`]: mio (epoll), edge-triggered readiness + inline `splice(2)`.
//!   Works everywhere, including where io_uring is blocked (Docker's default
//!   seccomp profile, gVisor, `kernel.io_uring_disabled`).
//!
//! `engine = "auto"` tries io_uring (a real ring and a self-test of what the
//! engine uses) and falls back to epoll on any failure, with the reason in
//! [`EngineChoice::reason`] for the one log line; `engine = "uring"` fails
//! start-up instead.

pub(crate) mod epoll;
pub(crate) mod uring;

use crate::config::EngineKind;
use crate::worker::WorkerSetup;

/// Which engine a worker actually runs, and why (logged once at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChoice {
    pub name: &'static str,
    pub reason: String,
    /// The config demanded this engine: a worker that can't set it up
    /// fails rather than falling back to epoll.
    pub strict: bool,
}

/// Resolves the configured engine kind against what this build and kernel
/// can run. `Err` only when a specific engine was demanded and can't run.
pub(crate) fn choose(kind: EngineKind) -> Result<EngineChoice, crate::Error> {
    match kind {
        EngineKind::Epoll => decide(kind, Err(uring::Unusable("not asked for".into()))),
        EngineKind::Uring | EngineKind::Auto => decide(kind, uring::self_test()),
    }
}

/// The choice for `kind` given the io_uring self-test's outcome (`Ok`:
/// the ring setup it got).
fn decide(
    kind: EngineKind,
    uring: Result<&'static str, uring::Unusable>,
) -> Result<EngineChoice, crate::Error> {
    match (kind, uring) {
        (EngineKind::Epoll, _) => Ok(EngineChoice {
            name: "epoll",
            reason: "configured".into(),
            strict: true,
        }),
        (EngineKind::Uring, Ok(mode)) => Ok(EngineChoice {
            name: "uring",
            reason: format!("configured (ring setup: {mode})"),
            strict: true,
        }),
        (EngineKind::Uring, Err(why)) => Err(crate::Error::Engine {
            engine: "uring",
            reason: format!("{why}; use engine = \"auto\" or \"epoll\""),
        }),
        (EngineKind::Auto, Ok(mode)) => Ok(EngineChoice {
            name: "uring",
            reason: format!("engine = \"auto\": io_uring works here (ring setup: {mode})"),
            strict: false,
        }),
        (EngineKind::Auto, Err(why)) => Ok(EngineChoice {
            name: "epoll",
            reason: format!("engine = \"auto\": io_uring is not usable here ({why}); using epoll"),
            strict: false,
        }),
    }
}

/// Runs one worker to completion on the current thread.
pub(crate) fn run(choice: &EngineChoice, mut setup: WorkerSetup) -> Result<(), crate::Error> {
    if choice.name != "uring" {
        // The uring-* forwardings need the ring (the server said so).
        setup.forwarding = setup.forwarding.inline();
        return epoll::run(setup);
    }
    // The ring is made here, on the thread that will submit to it
    // (IORING_SETUP_SINGLE_ISSUER).
    match uring::build() {
        Ok(ring) => uring::run(ring, setup),
        Err(why) if !choice.strict => {
            // choose() built one a moment ago, so this is a resource limit
            // (memory), not a kernel without io_uring: a worker on epoll
            // beats a worker whose listener nobody serves.
            tracing::warn!(worker = setup.id, reason = %why, "cannot set up this worker's io_uring; it runs on epoll");
            setup.forwarding = setup.forwarding.inline();
            epoll::run(setup)
        }
        Err(why) => Err(crate::Error::Engine {
            engine: "uring",
            reason: why.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn blocked() -> Result<&'static str, uring::Unusable> {
        Err(uring::Unusable(
            "io_uring_setup failed: Operation not permitted (os error 1)".into(),
        ))
    }

    #[test]
    fn auto_falls_back_to_epoll_and_says_why() {
        let c = decide(EngineKind::Auto, blocked()).unwrap();
        assert_eq!((c.name, c.strict), ("epoll", false));
        assert!(c.reason.contains("Operation not permitted"), "{}", c.reason);
        let c = decide(EngineKind::Auto, Ok("coop-taskrun")).unwrap();
        assert_eq!((c.name, c.strict), ("uring", false));
    }

    #[test]
    fn a_demanded_uring_fails_clearly_instead_of_falling_back() {
        let e = decide(EngineKind::Uring, blocked()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(
            e,
            crate::Error::Engine {
                engine: "uring",
                ..
            }
        ));
        assert!(
            text.contains("Operation not permitted") && text.contains("or \"epoll\""),
            "{text}"
        );
        assert!(decide(EngineKind::Uring, Ok("plain")).unwrap().strict);
    }

    #[test]
    fn epoll_is_taken_as_configured() {
        let c = choose(EngineKind::Epoll).unwrap();
        assert_eq!((c.name, c.strict), ("epoll", true));
    }
}
