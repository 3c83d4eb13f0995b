//! Load-harness helpers for scripts/bench.sh.
//!
//! - [`http`]: the minimal HTTP/1.1 keep-alive client used by the `openloop`
//!   binary (fixed-rate latency measurement).
//! - [`report`]: turns the raw per-run CSV written by `scripts/bench.sh` into
//!   the Markdown summary (medians, min..max, ratios to `direct` and to the
//!   best peer proxy). Used by the `benchreport` binary.
//!
//! Everything here is std-only and talks to loopback addresses only.

pub mod http;
pub mod report;
