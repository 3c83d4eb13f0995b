//! ringlb core: everything but the command line.
//!
//! Threads: the control plane (one thread, current-thread tokio runtime) owns
//! config, registry, prober and publisher; one worker thread per core owns its
//! listeners, its event loop (io_uring or epoll), its connections and pipes.
//! The only thing they share on the hot path is the published [`snapshot`].

mod access_log;
mod admin;
mod budget;
mod buffer;
mod config;
mod conn;
mod control;
mod demo;
mod engine;
mod error;
mod excerpt;
mod failpoint;
mod fingerprint;
mod handover;
mod hash;
mod health;
mod maglev;
mod metrics;
mod notify;
mod pipe;
mod policy;
mod proxy_header;
mod server;
mod snapshot;
mod sni_routes;
mod source_limits;
mod stats;
mod supervisor;
mod sys;
mod tls_hello;
mod worker;

// Hostile-input property tests (test-only).
#[cfg(test)]
mod fuzz;
// The same targets' entry points for a coverage-guided fuzzer (the `fuzz/`
// crate); lb-core's tests run them on the committed corpora.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_entry;

pub use access_log::{AccessLogHandle, EndCause, EndCounts};
pub use budget::{BudgetError, FdBudget, Reserve};
pub use error::{Error, Result};

// The public surface: what the binary, the benches and the tests use.
// Everything else is `pub(crate)` (the `unreachable_pub` lint keeps it so),
// which lets the compiler find dead code.

// Running a whole ringlb: the binary, the demo, the integration tests.
pub use config::{
    AcceptProxy, AccessLog, AccessLogFormat, AdminState, Config, ConfigWarning, DegradedIs,
    HealthCheck, HealthKind, MaxConnections, SniRoute, SourceLimits, DEFAULT_HEALTH_PATH,
};
pub use demo::DemoBackends;
pub use engine::uring::self_test as uring_self_test;
pub use engine::{Engine, EngineChoice, RingMode};
pub use handover::{take_over, Inherited};
pub use notify::{listen_fds, ready, ListenFd};
pub use proxy_header::ProxyVersion;
pub use server::{connection_budget, Server, ServerHandle, StartOptions};
pub use stats::LOG_LOSS;
pub use sys::raise_nofile_limit;
pub use worker::WorkerControl;

// The prober on its own (the health tests).
pub use health::State as Health;
pub use health::{probe, BackendKey, ProbeReport, Prober, ProxySettings, Reason, TlsProbeConfig};

// The algorithms and the published table (the criterion benches).
pub use control::Registry;
pub use hash::client_key;
pub use maglev::{MaglevTable, Member};
pub use snapshot::{PickState, SnapshotCell};

#[cfg(test)]
mod test_sockets;
