//! The control plane: one thread, a current-thread tokio runtime, owning
//! the config in force, the registry of services and backends, the prober
//! and the publishing of snapshots. Workers only ever see the snapshots it
//! publishes; everyone else talks to it with [`Command`]s.
//!
//! - `command.rs`: the messages, and sending one to await its reply.
//! - `plane.rs`: the thread's event loop, reload and drain.
//! - `listeners.rs`: its copy of every listening socket (upgrades, drain,
//!   a thread's death).
//! - `registry.rs`: services, backends and their live state; building a
//!   snapshot from them.
//! - `status.rs`: the registry at one instant, for the admin API.
//! - `history.rs`: each backend's recent past for the status page (a ring
//!   of one-second traffic samples, the last health transitions).
//! - `resolve.rs`: the periodic lookups of backends given by host name.
//! - `join.rs`: nodes that join and leave at run time (the registry's and
//!   the event loop's side; the HTTP side is `admin/join.rs`).

pub(crate) mod command;
pub(crate) mod history;
mod join;
mod listeners;
mod plane;
mod registry;
mod resolve;
pub(crate) mod status;

pub(crate) use command::Command;
pub(crate) use join::{JoinError, JoinOutcome};
pub(crate) use listeners::ListenerCopies;
pub(crate) use plane::ReloadError;
pub(crate) use plane::{AdminTask, ControlPlane, ControlSetup};
pub use registry::Registry;
pub(crate) use registry::{BackendRecord, Health, RegistryError, ReloadSummary};
