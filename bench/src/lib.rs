//! Load-harness helpers for scripts/bench.sh.
