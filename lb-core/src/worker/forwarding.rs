//! How a worker moves the bytes of its connections: the configured
//! `forwarding`, resolved once at start-up against the engine the workers
//! run on ([`Engine::forwarding`](crate::engine::Engine::forwarding)), and
//! handed to every worker in its `WorkerSetup`. Plain values, read on the
//! worker's thread.
//!
//! The worker's own pumps see only [`InlineForwarding`]: a completion-driven
//! mode ([`RingForwarding`]) carries its inline equivalent, which is what
//! the pumps run when this worker's ring cannot take the mode over (its
//! ring could not be built, or lacks an opcode the mode needs). So the
//! fallback is decided here, once, and no match on the pumps' hot path
//! names a mode they cannot run.

use crate::config::Forwarding;

/// What the worker's readiness-driven pumps (`conn::Pair`) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InlineForwarding {
    /// Per flow: copy while reads are small, splice once one read brings
    /// `conn::BULK_READ` bytes or more.
    Auto,
    /// Non-blocking `splice(2)` through a pooled pipe.
    Splice,
    /// Non-blocking recv/send through a pooled buffer.
    Copy,
}

/// What the io_uring engine's requests do (`engine::uring::ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingForwarding {
    /// `RECV` into the provided buffer ring, then `SEND`.
    Copy,
    /// `POLL_ADD`, then `SPLICE` socket → pipe → socket.
    Splice,
}

impl RingForwarding {
    /// The inline strategy that moves bytes the same way.
    #[inline]
    pub(crate) const fn inline(self) -> InlineForwarding {
        match self {
            RingForwarding::Copy => InlineForwarding::Copy,
            RingForwarding::Splice => InlineForwarding::Splice,
        }
    }
}

/// A worker's forwarding, as resolved at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerForwarding {
    /// The worker's pumps move the bytes (either engine).
    Inline(InlineForwarding),
    /// The ring moves them (io_uring only).
    Ring(RingForwarding),
}

impl WorkerForwarding {
    /// What the worker's pumps run: the inline mode, or the ring mode's
    /// inline equivalent (used only if the ring does not take the
    /// connections over).
    #[inline]
    pub(crate) const fn inline(self) -> InlineForwarding {
        match self {
            WorkerForwarding::Inline(mode) => mode,
            WorkerForwarding::Ring(mode) => mode.inline(),
        }
    }

    /// The ring's mode, if the ring is to move the bytes.
    #[inline]
    pub(crate) const fn ring(self) -> Option<RingForwarding> {
        match self {
            WorkerForwarding::Inline(_) => None,
            WorkerForwarding::Ring(mode) => Some(mode),
        }
    }

    /// The config file's name for it (for the log).
    pub(crate) fn name(self) -> &'static str {
        Forwarding::from(self).name()
    }
}

impl From<InlineForwarding> for WorkerForwarding {
    fn from(mode: InlineForwarding) -> WorkerForwarding {
        WorkerForwarding::Inline(mode)
    }
}

/// The config's spelling of a resolved forwarding (the start-up log prints
/// it, as it always has, in the config enum's words).
impl From<WorkerForwarding> for Forwarding {
    fn from(mode: WorkerForwarding) -> Forwarding {
        match mode {
            WorkerForwarding::Inline(InlineForwarding::Auto) => Forwarding::Auto,
            WorkerForwarding::Inline(InlineForwarding::Splice) => Forwarding::Splice,
            WorkerForwarding::Inline(InlineForwarding::Copy) => Forwarding::Copy,
            WorkerForwarding::Ring(RingForwarding::Splice) => Forwarding::UringSplice,
            WorkerForwarding::Ring(RingForwarding::Copy) => Forwarding::UringCopy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_mode_falls_back_to_the_inline_mode_that_moves_bytes_alike() {
        use InlineForwarding as I;
        use RingForwarding as R;
        let ring = |m| WorkerForwarding::Ring(m);
        assert_eq!(ring(R::Copy).inline(), I::Copy);
        assert_eq!(ring(R::Splice).inline(), I::Splice);
        assert_eq!(ring(R::Copy).ring(), Some(R::Copy));
        for m in [I::Auto, I::Splice, I::Copy] {
            assert_eq!(WorkerForwarding::from(m).inline(), m);
            assert_eq!(WorkerForwarding::from(m).ring(), None);
        }
    }

    #[test]
    fn a_resolved_forwarding_keeps_the_config_names() {
        use InlineForwarding as I;
        use RingForwarding as R;
        let names = [
            (WorkerForwarding::Inline(I::Auto), "auto"),
            (WorkerForwarding::Inline(I::Splice), "splice"),
            (WorkerForwarding::Inline(I::Copy), "copy"),
            (WorkerForwarding::Ring(R::Splice), "uring-splice"),
            (WorkerForwarding::Ring(R::Copy), "uring-copy"),
        ];
        for (mode, name) in names {
            assert_eq!(mode.name(), name);
        }
    }
}
