//! Failover: a connect failure (refused, timed out) moves the client to the
//! next backend in its preference order; a client's connection never fails
//! while any backend is usable, and is closed promptly when none is.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_variant, read_line, read_outcome, Backend,
    BackendConfig, Blackhole, DeadPort, LbConfig, ReadOutcome, Ringlb, Variant,
};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_ATTEMPTS: u32 = 3;
/// How long a client may wait to be told that no backend can be reached:
/// every attempt timing out, plus scheduling margin.
const GIVE_UP_BOUND: Duration = CONNECT_TIMEOUT
    .saturating_mul(CONNECT_ATTEMPTS)
    .saturating_add(Duration::from_millis(1500));

fn config(engine: Variant, backends: Vec<BackendConfig>) -> LbConfig {
    let mut config = LbConfig::single(engine, backends);
    config.service().connect_timeout = format!("{}ms", CONNECT_TIMEOUT.as_millis());
    config.service().connect_attempts = CONNECT_ATTEMPTS;
    config
}

#[test]
fn clients_of_a_dead_backend_fail_over_to_the_live_one() {
    let _shared = harness::shared();
    for_each_variant("failover::one_dead", |engine| {
        let live = Backend::named("live");
        let dead = DeadPort::new();
        let lb = Ringlb::start(&config(
            engine,
            vec![BackendConfig::new("dead", dead.addr()), (&live).into()],
        ));

        let sources = client_sources();
        let mut failures = Vec::new();
        for i in 0..100 {
            let src = sources[i % sources.len()];
            let answer = connect_from(src, lb.addr()).and_then(|mut s| read_line(&mut s));
            match answer {
                Ok(name) if name == "live" => {}
                other => failures.push(format!("connection {i} from {src}: {other:?}")),
            }
        }
        assert!(
            failures.is_empty(),
            "[{engine}] with one backend refusing, connections failed instead of failing over:\n{}",
            failures.join("\n")
        );
        assert_eq!(
            live.accepted(),
            100,
            "[{engine}] live backend connections != client connections"
        );
    });
}

/// Every backend refuses: the client's connection must end (EOF or RST)
/// quickly, not hang.
#[test]
fn all_backends_refusing_closes_the_client_promptly() {
    let _shared = harness::shared();
    for_each_variant("failover::all_refusing", |engine| {
        let (dead1, dead2) = (DeadPort::new(), DeadPort::new());
        let lb = Ringlb::start(&config(
            engine,
            vec![
                BackendConfig::new("dead1", dead1.addr()),
                BackendConfig::new("dead2", dead2.addr()),
            ],
        ));
        assert_closed_promptly(engine, lb.addr());
    });
}

/// Every backend drops SYNs: ringlb must give up after `connect_timeout`
/// per attempt and close the client, not wait for the kernel's own
/// (minutes-long) SYN retry limit.
#[test]
fn all_backends_unreachable_closes_the_client_within_the_connect_timeouts() {
    let _shared = harness::shared();
    for_each_variant("failover::all_blackholed", |engine| {
        let (h1, h2) = (Blackhole::new(), Blackhole::new());
        let lb = Ringlb::start(&config(
            engine,
            vec![
                BackendConfig::new("hole1", h1.addr()),
                BackendConfig::new("hole2", h2.addr()),
            ],
        ));
        assert_closed_promptly(engine, lb.addr());
    });
}

/// A few clients (different hash homes) each see their connection closed
/// within [`GIVE_UP_BOUND`].
fn assert_closed_promptly(engine: Variant, lb: SocketAddr) {
    for src in client_sources().into_iter().take(4) {
        let started = Instant::now();
        let outcome = match connect_from(src, lb) {
            Ok(mut client) => {
                client
                    .set_read_timeout(Some(GIVE_UP_BOUND))
                    .expect("timeout");
                read_outcome(&mut client, &mut [0u8; 64])
            }
            // ringlb may accept and reset so fast (once passive health has
            // marked every backend down) that the RST lands before the
            // non-blocking connect has reported success.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => ReadOutcome::Reset,
            Err(e) => panic!("[{engine}] client {src}: connect to ringlb failed: {e}"),
        };
        let elapsed = started.elapsed();
        assert!(
            matches!(outcome, ReadOutcome::Eof | ReadOutcome::Reset),
            "[{engine}] client {src}: no backend reachable, expected the connection closed \
             (EOF or RST) within {GIVE_UP_BOUND:?}, got {outcome:?} after {elapsed:.2?}"
        );
        assert!(
            elapsed <= GIVE_UP_BOUND,
            "[{engine}] client {src}: closed only after {elapsed:.2?} (bound {GIVE_UP_BOUND:?})"
        );
    }
}
