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
//! start-up instead. The chosen [`Engine`] then resolves the configured
//! forwarding for every worker, once ([`Engine::forwarding`]).

pub(crate) mod epoll;
pub(crate) mod uring;

use std::fmt;

use crate::config::{EngineKind, Forwarding};
use crate::worker::{InlineForwarding, RingForwarding, WorkerForwarding, WorkerSetup};

pub use uring::RingMode;

/// An event engine a worker can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// mio (epoll): works everywhere.
    Epoll,
    /// One io_uring per worker.
    IoUring,
}

impl Engine {
    /// The name users see: the config file's spelling (`engine = "uring"`),
    /// the log's `engine` field, the `engine` label of
    /// `ringlb_worker_info`.
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Epoll => "epoll",
            Engine::IoUring => "uring",
        }
    }

    /// The forwarding workers on this engine run for the `configured`
    /// one, resolved once at start-up: as configured, except that the
    /// completion-driven modes need io_uring and become their inline
    /// equivalent elsewhere (`engine = "auto"` fell back to epoll; the
    /// config check refuses them with an explicit `engine = "epoll"`).
    pub(crate) const fn forwarding(self, configured: Forwarding) -> WorkerForwarding {
        use InlineForwarding as Inline;
        let ring = match configured {
            Forwarding::Auto => return WorkerForwarding::Inline(Inline::Auto),
            Forwarding::Splice => return WorkerForwarding::Inline(Inline::Splice),
            Forwarding::Copy => return WorkerForwarding::Inline(Inline::Copy),
            Forwarding::UringSplice => RingForwarding::Splice,
            Forwarding::UringCopy => RingForwarding::Copy,
        };
        match self {
            Engine::IoUring => WorkerForwarding::Ring(ring),
            Engine::Epoll => WorkerForwarding::Inline(ring.inline()),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which engine a worker actually runs, and why (logged once at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChoice {
    pub engine: Engine,
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
    uring: Result<RingMode, uring::Unusable>,
) -> Result<EngineChoice, crate::Error> {
    match (kind, uring) {
        (EngineKind::Epoll, _) => Ok(EngineChoice {
            engine: Engine::Epoll,
            reason: "configured".into(),
            strict: true,
        }),
        (EngineKind::Uring, Ok(mode)) => Ok(EngineChoice {
            engine: Engine::IoUring,
            reason: format!("configured (ring setup: {mode})"),
            strict: true,
        }),
        (EngineKind::Uring, Err(why)) => Err(crate::Error::Engine {
            engine: Engine::IoUring,
            reason: format!("{why}; use engine = \"auto\" or \"epoll\""),
        }),
        (EngineKind::Auto, Ok(mode)) => Ok(EngineChoice {
            engine: Engine::IoUring,
            reason: format!("engine = \"auto\": io_uring works here (ring setup: {mode})"),
            strict: false,
        }),
        (EngineKind::Auto, Err(why)) => Ok(EngineChoice {
            engine: Engine::Epoll,
            reason: format!("engine = \"auto\": io_uring is not usable here ({why}); using epoll"),
            strict: false,
        }),
    }
}

/// Runs one worker to completion on the current thread. A worker on epoll
/// given a ring forwarding runs its inline equivalent
/// ([`WorkerForwarding::inline`]).
pub(crate) fn run(choice: &EngineChoice, setup: WorkerSetup) -> Result<(), crate::Error> {
    if choice.engine != Engine::IoUring {
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
            epoll::run(setup)
        }
        Err(why) => Err(crate::Error::Engine {
            engine: Engine::IoUring,
            reason: why.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn blocked() -> Result<RingMode, uring::Unusable> {
        Err(uring::Unusable(
            "io_uring_setup failed: Operation not permitted (os error 1)".into(),
        ))
    }

    #[test]
    fn auto_falls_back_to_epoll_and_says_why() {
        let c = decide(EngineKind::Auto, blocked()).unwrap();
        assert_eq!((c.engine, c.strict), (Engine::Epoll, false));
        assert!(c.reason.contains("Operation not permitted"), "{}", c.reason);
        let c = decide(EngineKind::Auto, Ok(RingMode::CoopTaskrun)).unwrap();
        assert_eq!((c.engine, c.strict), (Engine::IoUring, false));
    }

    #[test]
    fn a_demanded_uring_fails_clearly_instead_of_falling_back() {
        let e = decide(EngineKind::Uring, blocked()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(
            e,
            crate::Error::Engine {
                engine: Engine::IoUring,
                ..
            }
        ));
        assert!(
            text.contains("Operation not permitted") && text.contains("or \"epoll\""),
            "{text}"
        );
        assert!(
            decide(EngineKind::Uring, Ok(RingMode::Plain))
                .unwrap()
                .strict
        );
    }

    #[test]
    fn workers_off_io_uring_forward_inline_as_the_uring_modes_equivalent() {
        use Forwarding::*;
        use InlineForwarding as I;
        use RingForwarding as R;
        let inline = WorkerForwarding::Inline;
        // engine = "auto" fell back to epoll: the inline equivalent.
        let epoll = |f| Engine::Epoll.forwarding(f);
        assert_eq!(epoll(UringCopy), inline(I::Copy));
        assert_eq!(epoll(UringSplice), inline(I::Splice));
        assert_eq!(epoll(Auto), inline(I::Auto));
        assert_eq!(epoll(Splice), inline(I::Splice));
        assert_eq!(epoll(Copy), inline(I::Copy));
        // On io_uring, as configured.
        let uring = |f| Engine::IoUring.forwarding(f);
        assert_eq!(uring(UringCopy), WorkerForwarding::Ring(R::Copy));
        assert_eq!(uring(UringSplice), WorkerForwarding::Ring(R::Splice));
        assert_eq!(uring(Auto), inline(I::Auto));
        // And the log still names it in the config's words.
        for f in [Auto, Splice, Copy, UringSplice, UringCopy] {
            assert_eq!(Forwarding::from(uring(f)), f);
        }
    }

    /// The engine's name is the config's spelling: `engine = "<name>"`
    /// demands that engine.
    #[test]
    fn engines_are_named_as_the_config_spells_them() {
        for (engine, kind) in [
            (Engine::Epoll, EngineKind::Epoll),
            (Engine::IoUring, EngineKind::Uring),
        ] {
            let text = format!(
                "[global]\nengine = \"{engine}\"\n\n[[service]]\nname = \"web\"\n\
                 listen = [\"127.0.0.1:0\"]\n\n[service.health]\nkind = \"none\"\n\n\
                 [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
            );
            let config = crate::Config::parse(&text, None).unwrap();
            assert_eq!(config.global.engine, kind, "{engine}");
            assert_eq!(engine.name(), engine.to_string());
        }
        let e = crate::Error::Engine {
            engine: Engine::IoUring,
            reason: "blocked".into(),
        };
        assert_eq!(e.to_string(), "engine uring is not available: blocked");
    }

    #[test]
    fn epoll_is_taken_as_configured() {
        let c = choose(EngineKind::Epoll).unwrap();
        assert_eq!((c.engine, c.strict), (Engine::Epoll, true));
    }
}
