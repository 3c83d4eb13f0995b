//! lb-core's integration suite: one test binary, a module per area
//! (STYLE.md rule 8). The tests start whole `Server`s (or the health
//! prober) in this process, on loopback, with thread-based backends, and
//! play clients from distinct loopback sources (127.0.0.2 …) with real
//! sockets. Every wait has a deadline; nothing sleeps to synchronise.
//!
//! `support` holds the shared helpers; every other module is one area.
//! The fd-leak check is not here: it counts the whole process's fds and
//! sockets, so it runs alone in its own binary (`tests/leaks.rs`).

// A test binary has no public surface: its helpers are `pub` for the
// sibling modules, which `unreachable_pub` would flag one by one.
#![allow(unreachable_pub)]
// Tests opt out of the workspace's `unwrap_used` warning: a failed unwrap
// here is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

mod support;

mod admin;
mod cluster;
mod health;
mod hostile;
mod join;
mod uring;
