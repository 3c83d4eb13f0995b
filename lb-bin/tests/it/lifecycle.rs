//! Process lifecycle: SIGTERM and SIGINT stop a running ringlb with exit 0.

use std::time::Duration;

use crate::harness::{self, for_each_engine, Backend, LbConfig, Ringlb};

/// With no connection open, stopping must not wait for any drain.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

#[test]
fn sigterm_and_sigint_stop_ringlb_with_exit_zero() {
    let _shared = harness::shared();
    for_each_engine("lifecycle", |engine| {
        let backend = Backend::echo("b1");
        for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
            let mut lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));
            let status = lb.signal_and_wait(signal, STOP_DEADLINE);
            assert!(
                status.is_some_and(|s| s.success()),
                "[{engine}] after {name}: exit {status:?} within {STOP_DEADLINE:?}, expected \
                 exit 0\n{}",
                lb.report()
            );
        }
    });
}
