//! ringlb's integration suite: one test binary, a module per area
//! (STYLE.md rule 8). Every test starts the real `ringlb` binary on
//! loopback, puts thread-based test backends behind it, and plays clients
//! from distinct loopback sources (127.0.0.2 …) with real sockets.
//!
//! Runs on the test harness's threads; each test spawns its own ringlb
//! processes and backends and stops them on drop. Every wait has a
//! deadline; nothing sleeps to synchronise.
//!
//! `harness` holds the shared machinery; every other module is one area of
//! the contract in DESIGN.md.

// A test binary has no public surface: its helpers are `pub` for the
// sibling modules, which `unreachable_pub` would flag one by one.
#![allow(unreachable_pub)]
// Tests opt out of the workspace's `unwrap_used` warning: a failed unwrap
// here is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

mod harness;
mod netns;

mod access_log;
mod backend_address;
mod config;
mod contrib;
mod ctl;
mod docs;
mod failover;
mod faults;
mod ha;
mod half_close;
mod idle;
mod integrity;
mod ipv6;
mod lifecycle;
mod limits;
mod logging;
mod memory;
mod metrics;
mod netfaults;
mod overload;
mod policies;
mod proxy_in;
mod proxy_out;
mod reload;
mod reset;
mod slow_start;
mod sni;
mod source_limits;
mod status_history;
mod stickiness;
mod systemd;
mod test_ca;
mod threads;
mod time_wait;
mod tls_retry;
mod upgrade;
