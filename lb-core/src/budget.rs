//! The connection budget: how many client connections the process can hold
//! under its open-files limit (RLIMIT_NOFILE), the way HAProxy derives its
//! automatic `maxconn`. Pure (no I/O: the caller passes the limit); used at
//! start-up on the caller's thread, by `ringlb check`, and by the control
//! plane on reload.
//!
//! The limit is split into a reserve, for every descriptor ringlb holds
//! whatever the number of clients, and what is left, divided by what one
//! client connection costs. Workers stop accepting at the budget
//! (`worker/listeners.rs`), so clients can never take the descriptors the
//! reserve keeps for backends, health probes and the admin API: a local
//! shortage is then never blamed on a backend.
//!
//! What the reserve counts (measured with `ls /proc/PID/fd` on a running
//! ringlb):
//! - stdio: 0, 1, 2;
//! - the control plane, [`CONTROL_FDS`]: the log writer's copy of stderr,
//!   its tokio runtime (epoll, eventfd), the signal pipe, /dev/null;
//! - per worker, [`WORKER_FDS`]: epoll's fd, the copy of it mio's registry
//!   keeps, the wake-up eventfd (io_uring: the ring and the eventfd);
//! - listeners: one socket per listen address per worker, and the control
//!   plane's copy of each (kept to hand over on a binary upgrade);
//! - health probes: one socket per actively probed backend (one probe in
//!   flight each; through a proxy too);
//! - the admin API: its listener, [`ADMIN_CONNECTIONS`] served at once,
//!   [`ADMIN_REFUSALS`] being refused, one accepted only to be closed, and
//!   the spare descriptor it keeps to answer at exhaustion;
//! - pipes: each worker's pool keeps up to `pipe_pool` idle pipes of two
//!   descriptors (only when the forwarding splices);
//! - upgrades: the upgrade socket and one handover connection;
//! - a margin, [`MARGIN`], for the transient ones: a reload reading its
//!   files, a DNS lookup, connections io_uring's multishot accept took
//!   after the worker paused (held until the cancel lands, see
//!   `worker/listeners.rs`).
//!
//! One client connection costs its client socket and its backend socket.
//! Pipes depend on the forwarding:
//! - `auto` (the default): a worker lends at most `pipe_pool` pipes at
//!   once (a bulk flow that finds none copies), and makes one only when
//!   none is idle, so its pipes, idle and lent, never exceed `pipe_pool`:
//!   the reserve holds them and a connection costs 2 descriptors;
//! - `splice`, `uring-splice`: every flow splices, holding a pipe while
//!   bytes are in flight in its direction: a connection costs 6 (two
//!   pipes of two descriptors on top of its sockets), and the reserve
//!   holds the pool's idle pipes besides;
//! - `copy`, `uring-copy`: no pipe at all; 2 per connection.

use std::fmt;

use crate::config::{Config, Forwarding, HealthKind, MaxConnections};

/// stdin, stdout, stderr.
const STDIO_FDS: u64 = 3;
/// What the control plane holds besides listeners, probes and the admin
/// API (measured: the log writer's stderr copy, the runtime's epoll and
/// eventfd and a second epoll, the signal socket pair and its copy,
/// /dev/null).
pub(crate) const CONTROL_FDS: u64 = 8;
/// A worker's own descriptors (epoll: the epoll fd, mio's registry copy,
/// the waker's eventfd; io_uring: the ring and the eventfd).
pub(crate) const WORKER_FDS: u64 = 3;
/// Admin connections served at once (`admin.rs`).
pub(crate) const ADMIN_CONNECTIONS: u64 = 64;
/// Admin connections being refused at once (`admin.rs`).
pub(crate) const ADMIN_REFUSALS: u64 = 16;
/// The admin listener, one connection accepted only to be closed (beyond
/// the refusals), and the spare kept for exhaustion.
const ADMIN_OWN_FDS: u64 = 3;
/// The upgrade socket and one handover connection on it.
const UPGRADE_FDS: u64 = 2;
/// Transient descriptors (see the module's comment).
pub(crate) const MARGIN: u64 = 32;

/// What the reserve depends on, taken from a config and the running
/// process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inputs {
    pub workers: u64,
    /// Listen addresses over all services.
    pub listen_addresses: u64,
    /// Backends probed actively (health kind other than "none").
    pub probed_backends: u64,
    pub admin: bool,
    pub pipe_pool: u64,
    /// Pipes a worker may hold (idle and lent): `pipe_pool` (`auto`,
    /// `splice`, `uring-splice`) or none (`copy`, `uring-copy`).
    pub splices: bool,
    /// Every flow may hold a pipe, beyond the pool (`splice`,
    /// `uring-splice`).
    pub pipe_per_flow: bool,
    pub max_connections: MaxConnections,
}

impl Inputs {
    /// The inputs of `config` run by `workers` workers.
    pub(crate) fn of(config: &Config, workers: usize) -> Inputs {
        let services = &config.services;
        Inputs {
            workers: workers as u64,
            // A shared address (SNI routing) is one socket.
            listen_addresses: config.listeners().len() as u64,
            probed_backends: services
                .iter()
                .filter(|s| s.health.kind != HealthKind::None)
                .map(|s| s.backends.len() as u64)
                .sum(),
            admin: config.global.admin.is_some(),
            pipe_pool: config.global.pipe_pool as u64,
            splices: !matches!(
                config.global.forwarding,
                Forwarding::Copy | Forwarding::UringCopy
            ),
            pipe_per_flow: matches!(
                config.global.forwarding,
                Forwarding::Splice | Forwarding::UringSplice
            ),
            max_connections: config.global.max_connections,
        }
    }
}

/// The descriptors kept whatever the number of clients, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    pub stdio: u64,
    pub control: u64,
    pub workers: u64,
    pub listeners: u64,
    pub probes: u64,
    pub admin: u64,
    pub pipes: u64,
    pub upgrade: u64,
    pub margin: u64,
}

impl Reserve {
    fn of(inputs: &Inputs) -> Reserve {
        let admin = if inputs.admin {
            ADMIN_OWN_FDS + ADMIN_CONNECTIONS + ADMIN_REFUSALS
        } else {
            0
        };
        let pipes = if inputs.splices {
            inputs
                .workers
                .saturating_mul(inputs.pipe_pool)
                .saturating_mul(2)
        } else {
            0
        };
        Reserve {
            stdio: STDIO_FDS,
            control: CONTROL_FDS,
            workers: inputs.workers.saturating_mul(WORKER_FDS),
            listeners: inputs
                .listen_addresses
                .saturating_mul(inputs.workers)
                .saturating_mul(2),
            probes: inputs.probed_backends,
            admin,
            pipes,
            upgrade: UPGRADE_FDS,
            margin: MARGIN,
        }
    }

    /// Each part with the name the breakdown prints.
    fn parts(&self) -> [(&'static str, u64); 9] {
        [
            ("stdio", self.stdio),
            ("control plane", self.control),
            ("workers", self.workers),
            ("listeners", self.listeners),
            ("health probes", self.probes),
            ("admin API", self.admin),
            ("idle pipes", self.pipes),
            ("upgrade", self.upgrade),
            ("margin", self.margin),
        ]
    }

    /// All of it.
    pub fn total(&self) -> u64 {
        self.parts()
            .iter()
            .fold(0u64, |a, (_, n)| a.saturating_add(*n))
    }
}

impl fmt::Display for Reserve {
    /// The breakdown: "stdio 3, control plane 8, …".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, n)) in self.parts().iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {n}")?;
        }
        Ok(())
    }
}

/// The connection budget of a process and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    /// The open-files limit it was computed from.
    pub nofile: u64,
    pub reserve: Reserve,
    /// Descriptors one client connection may hold.
    pub per_connection: u64,
    /// Most client connections the limit can hold.
    pub most: u64,
    /// The budget in force: `most` with "auto", else the number configured.
    pub connections: usize,
    /// `max_connections` was "auto".
    pub auto: bool,
}

impl fmt::Display for FdBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let asked = if self.auto {
            "auto".to_string()
        } else {
            self.connections.to_string()
        };
        write!(
            f,
            "{} client connections (max_connections = {asked}); the open-files limit {} \
             holds at most {}: ({} - {} fds reserved [{}]) / {} fds per connection",
            self.connections,
            self.nofile,
            self.most,
            self.nofile,
            self.reserve.total(),
            self.reserve,
            self.per_connection
        )
    }
}

/// Why the open-files limit cannot give what the config asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BudgetError {
    /// The number configured; None: "auto".
    pub asked: Option<usize>,
    pub nofile: u64,
    pub reserve: Reserve,
    pub per_connection: u64,
    /// Most client connections the limit can hold (0 when the reserve
    /// alone does not fit).
    pub most: u64,
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (limit, reserved) = (self.nofile, self.reserve.total());
        match self.asked {
            Some(asked) => write!(
                f,
                "global.max_connections = {asked} cannot be honoured: under the open-files \
                 limit of {limit}, {reserved} fds are reserved ({}) and each client \
                 connection costs {} fds, so at most {} fit; lower max_connections to {} or \
                 less (or \"auto\"), or raise the limit (ulimit -n, systemd LimitNOFILE=)",
                self.reserve, self.per_connection, self.most, self.most
            ),
            None => write!(
                f,
                "the open-files limit of {limit} leaves no room for client connections: \
                 {reserved} fds are reserved ({}) and each connection costs {} fds; raise \
                 the limit (ulimit -n, systemd LimitNOFILE=) or reserve less (fewer \
                 workers, a smaller pipe_pool, forwarding = \"copy\")",
                self.reserve, self.per_connection
            ),
        }
    }
}

/// The budget under the open-files limit `nofile`.
pub(crate) fn compute(nofile: u64, inputs: &Inputs) -> Result<FdBudget, BudgetError> {
    let reserve = Reserve::of(inputs);
    let per_connection = if inputs.pipe_per_flow { 6 } else { 2 };
    let most = nofile.saturating_sub(reserve.total()) / per_connection;
    let error = |asked| BudgetError {
        asked,
        nofile,
        reserve,
        per_connection,
        most,
    };
    let (connections, auto) = match inputs.max_connections {
        MaxConnections::Auto if most == 0 => return Err(error(None)),
        MaxConnections::Auto => (usize::try_from(most).unwrap_or(usize::MAX), true),
        MaxConnections::Count(n) if n.get() as u64 > most => return Err(error(Some(n.get()))),
        MaxConnections::Count(n) => (n.get(), false),
    };
    Ok(FdBudget {
        nofile,
        reserve,
        per_connection,
        most,
        connections,
        auto,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::num::NonZeroUsize;

    /// One worker, one listen address, two probed backends, admin on, a
    /// pool of 4 pipes, `forwarding = "auto"`, `max_connections = "auto"`.
    fn small() -> Inputs {
        Inputs {
            workers: 1,
            listen_addresses: 1,
            probed_backends: 2,
            admin: true,
            pipe_pool: 4,
            splices: true,
            pipe_per_flow: false,
            max_connections: MaxConnections::Auto,
        }
    }

    #[test]
    fn the_reserve_counts_every_purpose() {
        let r = Reserve::of(&small());
        assert_eq!(
            r,
            Reserve {
                stdio: 3,
                control: 8,
                workers: 3,
                listeners: 2,
                probes: 2,
                admin: 83,
                pipes: 8,
                upgrade: 2,
                margin: 32,
            }
        );
        assert_eq!(r.total(), 143);
    }

    #[test]
    fn auto_divides_what_is_left_by_the_cost_of_a_connection() {
        let b = compute(220, &small()).unwrap();
        assert_eq!((b.per_connection, b.most, b.connections), (2, 38, 38));
        assert!(b.auto);
        // Copying needs no pipes at all.
        let copy = Inputs {
            splices: false,
            ..small()
        };
        let b = compute(220, &copy).unwrap();
        assert_eq!(b.reserve.pipes, 0);
        assert_eq!((b.per_connection, b.most), (2, (220 - 135) / 2));
        // Splicing every flow: two pipes per connection on top of the pool.
        let splice = Inputs {
            pipe_per_flow: true,
            ..small()
        };
        let b = compute(220, &splice).unwrap();
        assert_eq!(b.reserve.pipes, 8);
        assert_eq!((b.per_connection, b.most), (6, (220 - 143) / 6));
    }

    #[test]
    fn it_scales_with_workers_listeners_and_the_pipe_pool() {
        let two = Inputs {
            workers: 2,
            listen_addresses: 3,
            pipe_pool: 256,
            ..small()
        };
        let r = Reserve::of(&two);
        assert_eq!((r.workers, r.listeners, r.pipes), (6, 12, 1024));
        let b = compute(20_000, &two).unwrap();
        assert_eq!(b.most, (20_000 - r.total()) / 2);
        let no_admin = Inputs {
            admin: false,
            ..small()
        };
        assert_eq!(Reserve::of(&no_admin).admin, 0);
    }

    #[test]
    fn a_number_within_the_limit_is_the_budget() {
        let asked = Inputs {
            max_connections: MaxConnections::Count(NonZeroUsize::new(10).unwrap()),
            ..small()
        };
        let b = compute(220, &asked).unwrap();
        assert_eq!((b.connections, b.most), (10, 38));
        assert!(!b.auto);
    }

    #[test]
    fn a_number_beyond_the_limit_is_refused_with_the_figures() {
        let asked = Inputs {
            max_connections: MaxConnections::Count(NonZeroUsize::new(100_000).unwrap()),
            ..small()
        };
        let e = compute(220, &asked).unwrap_err();
        assert_eq!((e.asked, e.most), (Some(100_000), 38));
        let text = e.to_string();
        for part in [
            "max_connections = 100000",
            "limit of 220",
            "143 fds are reserved",
            "admin API 83",
            "costs 2 fds",
            "at most 38 fit",
            "LimitNOFILE",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
    }

    #[test]
    fn auto_is_refused_when_the_reserve_alone_exceeds_the_limit() {
        // The default pipe pool (256 pipes per worker) needs 512 fds.
        let big_pool = Inputs {
            pipe_pool: 256,
            ..small()
        };
        let e = compute(220, &big_pool).unwrap_err();
        assert_eq!((e.asked, e.most), (None, 0));
        assert!(e.to_string().contains("leaves no room"), "{e}");
        // Exactly one connection's worth left is enough.
        let r = Reserve::of(&small()).total();
        assert_eq!(compute(r + 2, &small()).unwrap().connections, 1);
        assert!(compute(r + 1, &small()).is_err());
    }

    #[test]
    fn an_unlimited_limit_does_not_overflow() {
        let b = compute(u64::MAX, &small()).unwrap();
        assert_eq!(b.most, (u64::MAX - 143) / 2);
        let huge = Inputs {
            workers: u64::MAX,
            pipe_pool: u64::MAX,
            ..small()
        };
        assert!(compute(u64::MAX, &huge).is_err());
    }

    #[test]
    fn the_breakdown_is_printed() {
        let text = compute(220, &small()).unwrap().to_string();
        assert!(
            text.starts_with("38 client connections (max_connections = auto)"),
            "{text}"
        );
        assert!(
            text.contains("(220 - 143 fds reserved [stdio 3, control plane 8")
                && text.contains("/ 2 fds per connection"),
            "{text}"
        );
    }
}
