//! Process lifecycle: SIGTERM and SIGINT stop a running ringlb with exit 0.

use std::time::Duration;

use crate::harness::{self, for_each_engine, Backend, LbConfig, Ringlb};

/// With no connection open, stopping must not wait for any drain.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Start-and-stop rounds per signal: a start-up race shows up in a few.
const ROUNDS: usize = 5;

#[test]
fn sigterm_and_sigint_stop_ringlb_with_exit_zero() {
    let _shared = harness::shared();
    for_each_engine("lifecycle", |engine| {
        let backend = Backend::echo("b1");
        for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
            for round in 0..ROUNDS {
                let mut lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));
                // Signalled right after the `listening` lines: ready means
                // ready to be stopped too.
                let status = lb.signal_and_wait(signal, STOP_DEADLINE);
                assert!(
                    status.is_some_and(|s| s.success()),
                    "[{engine}] {name} right after `listening` (round {round}): exit \
                     {status:?} within {STOP_DEADLINE:?}, expected exit 0 (a signal-killed \
                     exit means ringlb logged `listening` before installing its signal \
                     handlers)\n{}",
                    lb.report()
                );
            }
        }
    });
}
