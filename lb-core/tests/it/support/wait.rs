//! Waiting on a condition with a deadline (STYLE.md rule 8: never a fixed
//! sleep to synchronise). The one definition for every test of lb-core's
//! integration suite, and for the `leaks` binary, which runs alone.

use std::time::{Duration, Instant};

/// How long a test waits for anything that should happen at once on an
/// idle machine: far more than loopback needs, enough for a loaded CI box.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);

/// Waits up to [`DEADLINE`] for `cond`; fails the test with `what`.
pub(crate) fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_within(what, DEADLINE, cond);
}

/// Waits up to `timeout` for `cond`; fails the test with `what`.
pub(crate) fn wait_within(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_state(what, timeout, || (!cond()).then(String::new));
}

/// Waits up to `timeout` until `pending` says nothing is left (`None`);
/// at the deadline fails the test with `what` and the last state it
/// described.
pub(crate) fn wait_for_state(
    what: &str,
    timeout: Duration,
    mut pending: impl FnMut() -> Option<String>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let Some(state) = pending() else { return };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}{state}",
            if state.is_empty() { "" } else { ": " }
        );
        std::thread::sleep(POLL);
    }
}
