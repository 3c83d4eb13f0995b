//! Per-source rules (`allow`, `deny`, `max_connections_per_source`,
//! `new_connections_per_source`): a refused client is reset without any
//! backend connection and counted by reason in
//! `ringlb_service_refused_total`, while other sources are served. Clients
//! are real loopback sockets from distinct 127.0.0.x sources; with
//! `accept_proxy` the test client writes the header itself, and the
//! header's client is the source.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, read_line, read_outcome, Backend,
    Deadline, LbConfig, ReadOutcome, Ringlb,
};

/// How long a served client may take to see its backend's greeting, and a
/// refused one its reset.
const ANSWER: Duration = Duration::from_secs(5);

/// A ringlb over `backend` with the admin API (for /metrics) and `rules`
/// added to its service.
fn limited(engine: &'static str, backend: &Backend, rules: &[&str]) -> Ringlb {
    let mut config = LbConfig::over(engine, &[backend]);
    config.admin = true;
    config
        .service()
        .extra
        .extend(rules.iter().map(|r| (*r).to_owned()));
    Ringlb::start(&config)
}

/// A client from `src` that must be served: its backend's greeting.
fn served(engine: &str, src: IpAddr, lb: SocketAddr) -> TcpStream {
    let mut s =
        connect_from(src, lb).unwrap_or_else(|e| panic!("[{engine}] connect from {src}: {e}"));
    s.set_read_timeout(Some(ANSWER)).expect("timeout");
    let greeting = read_line(&mut s)
        .unwrap_or_else(|e| panic!("[{engine}] client from {src} not served: {e}"));
    assert_eq!(greeting, "b1");
    s
}

/// What a client from `src` sees first (after writing `first`, if any).
fn first_answer(src: IpAddr, lb: SocketAddr, first: &[u8]) -> ReadOutcome {
    let mut s = match connect_from(src, lb) {
        Ok(s) => s,
        // Reset by ringlb before the connect call even returned.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return ReadOutcome::Reset,
        Err(e) => panic!("connect from {src} to {lb}: {e}"),
    };
    s.set_read_timeout(Some(ANSWER)).expect("timeout");
    if !first.is_empty() && s.write_all(first).is_err() {
        return ReadOutcome::Reset;
    }
    read_outcome(&mut s, &mut [0u8; 64])
}

/// `ringlb_service_refused_total{service="web",reason=…}`.
fn refused(lb: &Ringlb, reason: &str) -> u64 {
    lb.metrics()
        .sample(&format!(
            "ringlb_service_refused_total{{service=\"web\",reason=\"{reason}\"}}"
        ))
        .unwrap_or_else(|| panic!("no ringlb_service_refused_total for {reason}"))
}

#[test]
fn the_21st_connection_from_one_address_is_refused_while_another_is_served() {
    let _shared = harness::shared();
    for_each_engine("source_limits::connections", |engine| {
        let backend = Backend::named("b1");
        let lb = limited(engine, &backend, &["max_connections_per_source = 20"]);
        let sources = client_sources();
        let (one, other) = (sources[0], sources[1]);
        let mut held: Vec<TcpStream> = (0..20).map(|_| served(engine, one, lb.addr())).collect();
        let answer = first_answer(one, lb.addr(), b"");
        assert_eq!(
            answer,
            ReadOutcome::Reset,
            "[{engine}] the 21st connection from {one} (limit 20) must be reset"
        );
        let _other = served(engine, other, lb.addr());
        assert_eq!(
            backend.accepted(),
            21,
            "[{engine}] a refused client reached the backend"
        );
        assert_eq!(refused(&lb, "per_source_connections"), 1);

        // One closes: the source gets its place back once ringlb saw the
        // close (asynchronously: retried until a deadline).
        drop(held.pop());
        let deadline = Deadline::after(ANSWER);
        let mut tries = 0;
        loop {
            tries += 1;
            // A refused try may be reset before connect() even returns.
            if let Ok(mut s) = connect_from(one, lb.addr()) {
                s.set_read_timeout(Some(ANSWER)).expect("timeout");
                if read_line(&mut s).is_ok() {
                    held.push(s);
                    break;
                }
            }
            assert!(
                !deadline.passed() && tries < 200,
                "[{engine}] a closed connection never gave its source's place back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first refusal, then each try before the place came back.
        assert_eq!(refused(&lb, "per_source_connections"), tries);
        assert_eq!(first_answer(one, lb.addr(), b""), ReadOutcome::Reset);
    });
}

#[test]
fn a_denied_cidr_never_reaches_a_backend() {
    let _shared = harness::shared();
    for_each_engine("source_limits::deny", |engine| {
        let backend = Backend::named("b1");
        // 127.0.0.2 is denied although allowed; 127.0.0.9 is outside allow.
        let lb = limited(
            engine,
            &backend,
            &["allow = [\"127.0.0.0/29\"]", "deny = [\"127.0.0.2\"]"],
        );
        let sources = client_sources();
        let (denied, allowed, outside) = (sources[0], sources[1], sources[7]);
        assert_eq!(outside, IpAddr::from([127, 0, 0, 9]));
        for round in 0..5 {
            for src in [denied, outside] {
                let answer = first_answer(src, lb.addr(), b"hello\n");
                assert_eq!(
                    answer,
                    ReadOutcome::Reset,
                    "[{engine}] round {round}: a client from {src} must be reset"
                );
            }
        }
        assert_eq!(
            backend.accepted(),
            0,
            "[{engine}] a denied client reached the backend"
        );
        let _ok = served(engine, allowed, lb.addr());
        assert_eq!(backend.accepted(), 1);
        assert_eq!(refused(&lb, "denied"), 10);
        assert_eq!(refused(&lb, "per_source_connections"), 0);
        assert_eq!(refused(&lb, "per_source_rate"), 0);
    });
}

#[test]
fn the_rate_limit_holds_within_10_percent_over_5_s() {
    // Timing matters: never beside the throughput-heavy test.
    let _shared = harness::shared();
    const RATE: u64 = 40;
    const RUN: Duration = Duration::from_secs(5);
    // Paced at one attempt per ms (25 × the limit): fast enough to test
    // it, without flooding a shared machine.
    const PACE: Duration = Duration::from_millis(1);
    const MAX_TRIES: usize = 10_000;
    for_each_engine("source_limits::rate", |engine| {
        let backend = Backend::named("b1");
        let lb = limited(
            engine,
            &backend,
            &[&format!("new_connections_per_source = \"{RATE}/s\"")],
        );
        let sources = client_sources();
        let (one, other) = (sources[0], sources[1]);
        let (mut ok, mut reset, mut tries) = (0u64, 0u64, 0usize);
        let start = Instant::now();
        while start.elapsed() < RUN && tries < MAX_TRIES {
            let due = start + PACE * tries as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            tries += 1;
            match first_answer(one, lb.addr(), b"") {
                ReadOutcome::Data(_) => ok += 1,
                ReadOutcome::Reset => reset += 1,
                other => panic!("[{engine}] attempt {tries}: neither served nor reset: {other:?}"),
            }
        }
        let elapsed = start.elapsed();
        // Burst N, then N per second.
        let expected = RATE as f64 * (1.0 + elapsed.as_secs_f64());
        let error = (ok as f64 - expected).abs() / expected;
        println!(
            "[{engine}] rate {RATE}/s over {elapsed:?}: {ok} served, {reset} reset in {tries} \
             attempts; expected {expected:.0} (burst + rate × time), off by {:.1} %",
            error * 100.0
        );
        assert!(
            reset > ok,
            "[{engine}] the client must try much faster than the limit to test it ({tries} tries)"
        );
        assert!(
            error <= 0.10,
            "[{engine}] {ok} served in {elapsed:?} at {RATE}/s: more than 10 % from {expected:.0}"
        );
        let _other = served(engine, other, lb.addr());
        assert_eq!(
            backend.wait_accepted(ok as usize + 1, ANSWER),
            ok as usize + 1
        );
        assert_eq!(refused(&lb, "per_source_rate"), reset);
    });
}

#[test]
fn with_accept_proxy_the_headers_client_is_the_source() {
    let _shared = harness::shared();
    for_each_engine("source_limits::accept_proxy", |engine| {
        let backend = Backend::named("b1");
        let lb = limited(
            engine,
            &backend,
            &[
                "accept_proxy = true",
                "proxy_trusted = [\"127.0.0.0/8\"]",
                "deny = [\"192.0.2.0/24\"]",
                "max_connections_per_source = 2",
            ],
        );
        // Every connection comes from the one balancer address; only the
        // header tells the clients apart.
        let balancer = client_sources()[0];
        let header =
            |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 80\r\n").into_bytes();
        let through = |client: &str| {
            let mut s = connect_from(balancer, lb.addr()).expect("connect");
            s.set_read_timeout(Some(ANSWER)).expect("timeout");
            s.write_all(&header(client)).expect("header");
            s
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = through("198.51.100.7");
            let greeting = read_line(&mut s)
                .unwrap_or_else(|e| panic!("[{engine}] header client within its limit: {e}"));
            assert_eq!(greeting, "b1");
            held.push(s);
        }
        assert_eq!(
            first_answer(balancer, lb.addr(), &header("198.51.100.7")),
            ReadOutcome::Reset,
            "[{engine}] the header's client is at its limit"
        );
        assert_eq!(
            first_answer(balancer, lb.addr(), &header("192.0.2.5")),
            ReadOutcome::Reset,
            "[{engine}] the header's client is denied"
        );
        let mut s = through("198.51.100.8");
        assert_eq!(read_line(&mut s).expect("another header client"), "b1");
        assert_eq!(backend.accepted(), 3);
        assert_eq!(refused(&lb, "per_source_connections"), 1);
        assert_eq!(refused(&lb, "denied"), 1);
    });
}

#[test]
fn a_reload_keeps_the_counts_of_open_connections() {
    let _shared = harness::shared();
    const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
    for_each_engine("source_limits::reload", |engine| {
        let backend = Backend::named("b1");
        let mut config = LbConfig::over(engine, &[&backend]);
        config.admin = true;
        config
            .service()
            .extra
            .push("max_connections_per_source = 2".to_owned());
        let mut lb = Ringlb::start(&config);
        let one = client_sources()[0];
        let mut held: Vec<TcpStream> = (0..2).map(|_| served(engine, one, lb.addr())).collect();
        assert_eq!(first_answer(one, lb.addr(), b""), ReadOutcome::Reset);

        let reload = |lb: &mut Ringlb, config: &LbConfig, what: &str| {
            lb.rewrite_config(&config.to_toml());
            lb.signal(libc::SIGHUP);
            assert!(
                lb.wait_for_log("config reloaded", RELOAD_TIMEOUT).is_some(),
                "[{engine}] no `config reloaded` after SIGHUP ({what})\n{}",
                lb.report()
            );
        };
        // An unrelated change: the two open connections still count.
        config.service().idle_timeout = "14m".to_owned();
        reload(&mut lb, &config, "idle_timeout");
        assert_eq!(
            first_answer(one, lb.addr(), b""),
            ReadOutcome::Reset,
            "[{engine}] a reload forgot the source's open connections"
        );
        // A higher limit keeps the counts too: one more, not three more.
        config.service().extra = vec!["max_connections_per_source = 3".to_owned()];
        reload(&mut lb, &config, "limit 3");
        held.push(served(engine, one, lb.addr()));
        assert_eq!(
            first_answer(one, lb.addr(), b""),
            ReadOutcome::Reset,
            "[{engine}] at 3 of 3 after the reload"
        );
        assert_eq!(backend.accepted(), 3);
        assert_eq!(refused(&lb, "per_source_connections"), 3);
    });
}

#[test]
fn hash_prefix_v4_makes_one_network_one_source() {
    let _shared = harness::shared();
    for_each_engine("source_limits::prefix", |engine| {
        let backend = Backend::named("b1");
        let lb = limited(
            engine,
            &backend,
            &["hash_prefix_v4 = 24", "max_connections_per_source = 1"],
        );
        let sources = client_sources();
        let _first = served(engine, sources[0], lb.addr());
        assert_eq!(
            first_answer(sources[1], lb.addr(), b""),
            ReadOutcome::Reset,
            "[{engine}] {} is in the same /24 as {}: one source",
            sources[1],
            sources[0]
        );
        assert_eq!(backend.accepted(), 1);
        assert_eq!(refused(&lb, "per_source_connections"), 1);
    });
}
