//! Load-harness helpers for scripts/bench.sh.
//!
//! - [`http`]: the minimal HTTP/1.1 keep-alive client used by the `openloop`
//!   binary (fixed-rate latency measurement).
//! - [`report`]: turns the raw per-run CSV written by `scripts/bench.sh` into
//!   the Markdown summary (medians, min..max, ratios to `direct` and to the
//!   best peer proxy). Used by the `benchreport` binary.
//! - [`chart`]: the same cells as SVG bar charts (CPU per unit, throughput;
//!   median bars, min..max whiskers), written by `benchreport --svg DIR`.
//!
//! Everything here is std-only and talks to loopback addresses only.

pub mod chart;
pub mod http;
pub mod report;
