//! Connection limits: at `max_connections` ringlb stops accepting for the
//! service (across all its workers); further clients wait in the kernel's
//! backlog, are neither reset nor sent to a backend, and are served as soon
//! as a slot frees.

use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{
    self, client_sources, connect_from, for_each_variant, read_line, read_outcome, Backend,
    LbConfig, ReadOutcome, Ringlb,
};

const MAX: usize = 10;
/// How long the client over the limit is watched for a (wrong) answer.
const OVER_LIMIT_WATCH: Duration = Duration::from_millis(700);
const SERVE_DEADLINE: Duration = Duration::from_secs(5);

#[test]
fn over_the_limit_clients_wait_in_the_backlog_until_a_slot_frees() {
    let _shared = harness::shared();
    for_each_variant("limits::max_connections", |engine| {
        let backend = Backend::named("b1");
        let mut config = LbConfig::over(engine, &[&backend]);
        config.service().max_connections = Some(MAX as u32);
        let lb = Ringlb::start(&config);
        let sources = client_sources();

        let mut held: Vec<TcpStream> = (0..MAX)
            .map(|i| {
                let mut s = connect_from(sources[i], lb.addr()).expect("connect");
                let greeting = read_line(&mut s)
                    .unwrap_or_else(|e| panic!("[{engine}] connection {i} within the limit: {e}"));
                assert_eq!(greeting, "b1");
                s
            })
            .collect();
        assert_eq!(backend.accepted(), MAX);

        // The 11th: the kernel completes the handshake (backlog), but
        // ringlb must not accept it, so no backend greeting, no EOF, no RST.
        let mut extra = connect_from(sources[MAX], lb.addr())
            .unwrap_or_else(|e| panic!("[{engine}] 11th connect must queue, not fail: {e}"));
        extra
            .set_read_timeout(Some(OVER_LIMIT_WATCH))
            .expect("timeout");
        let early = read_outcome(&mut extra, &mut [0u8; 64]);
        assert_eq!(
            early,
            ReadOutcome::TimedOut,
            "[{engine}] with {MAX} connections open (max_connections = {MAX}), the 11th must \
             wait unanswered; it got {early:?}"
        );
        assert_eq!(
            backend.accepted(),
            MAX,
            "[{engine}] ringlb opened a backend connection beyond max_connections"
        );

        // Free one slot: the waiting client is served.
        drop(held.remove(0));
        extra
            .set_read_timeout(Some(SERVE_DEADLINE))
            .expect("timeout");
        let greeting = read_line(&mut extra).unwrap_or_else(|e| {
            panic!(
                "[{engine}] a slot freed but the waiting client was not served within \
                 {SERVE_DEADLINE:?}: {e}"
            )
        });
        assert_eq!(greeting, "b1");
        assert_eq!(backend.wait_accepted(MAX + 1, SERVE_DEADLINE), MAX + 1);
    });
}
