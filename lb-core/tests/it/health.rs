//! Health checks against real servers on 127.0.0.1: one probe per kind of
//! answer (HTTP, HTTPS, through a proxy), and the Prober's detection times,
//! passive failures and reloads. Everything runs on the current-thread
//! runtime, as on the control plane; waits are bounded by deadlines.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use lb_core::{probe, ProxySettings, Reason, TlsProbeConfig};
use lb_core::{DegradedIs, HealthCheck, HealthKind, DEFAULT_HEALTH_PATH};

use crate::support::health_servers as servers;
use servers::{Answer, Backend};

/// Probe timeout of the tests that expect a timeout: short, but far above
/// loopback latency.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Probe timeout of the tests that expect an answer: a probe that should pass
/// must not fail because a loaded CI machine stalled the test (a TLS handshake
/// in a debug build, 30 tests sharing 2 CPUs) past the short one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How much later than its timeout a timed-out probe may return: the
/// scheduling delay a loaded 2-CPU machine may add (a probe that ignored
/// its timeout would not return at all against these servers).
const STALL_SLACK: Duration = Duration::from_secs(2);

fn check(kind: HealthKind) -> HealthCheck {
    HealthCheck {
        kind,
        path: DEFAULT_HEALTH_PATH.to_owned(),
        host: None,
        interval: Duration::from_secs(1),
        fast_interval: Duration::from_millis(500),
        timeout: ANSWER_TIMEOUT,
        rise: NonZeroU32::new(2).expect("non-zero"),
        fall: NonZeroU32::new(2).expect("non-zero"),
        jitter: 0.1,
        degraded: DegradedIs::Unhealthy,
        ca_file: None,
        sni: None,
        insecure_skip_verify: false,
        http_proxy: None,
        https_proxy: None,
        no_proxy: None,
        max_body: 64 * 1024,
        port: None,
        address: None,
        send_proxy: None,
    }
}

/// `check(kind)` with the short timeout, for the tests that expect one.
fn check_timing_out(kind: HealthKind) -> HealthCheck {
    HealthCheck {
        timeout: TIMEOUT,
        ..check(kind)
    }
}

async fn probe_http(check: &HealthCheck, addr: SocketAddr) -> Result<(), Reason> {
    probe(check, addr, None, &ProxySettings::direct()).await
}

mod http {
    use super::*;
    use servers::{closed_port, Silent};
    use tokio::time::Instant;

    async fn answer_gives(answer: Answer, expected: Result<(), Reason>) {
        let backend = Backend::http(answer).await;
        let result = probe_http(&check(HealthKind::Http), backend.addr).await;
        assert_eq!(result, expected, "answer {answer:?}");
    }

    #[tokio::test]
    async fn healthy_router_json_is_ok() {
        answer_gives(Answer::Healthy, Ok(())).await;
    }

    #[tokio::test]
    async fn degraded_router_is_unhealthy_by_default() {
        answer_gives(
            Answer::DegradedRouter,
            Err(Reason::RouterState("DEGRADED".into())),
        )
        .await;
    }

    #[tokio::test]
    async fn degraded_router_is_ok_when_degraded_counts_as_healthy() {
        let backend = Backend::http(Answer::DegradedRouter).await;
        let mut check = check(HealthKind::Http);
        check.degraded = DegradedIs::Healthy;
        assert_eq!(probe_http(&check, backend.addr).await, Ok(()));
    }

    #[tokio::test]
    async fn one_unhealthy_service_is_unhealthy() {
        answer_gives(
            Answer::UnhealthyService,
            Err(Reason::ServiceState {
                id: "jfsvc@123".into(),
                state: "UNHEALTHY".into(),
            }),
        )
        .await;
    }

    #[tokio::test]
    async fn status_503_is_unhealthy() {
        answer_gives(Answer::Unavailable, Err(Reason::Status(503))).await;
    }

    #[tokio::test]
    async fn garbage_json_is_unhealthy_with_the_parse_error() {
        let backend = Backend::http(Answer::GarbageJson).await;
        match probe_http(&check(HealthKind::Http), backend.addr).await {
            Err(Reason::BadJson(why)) => assert!(why.contains("EOF"), "{why}"),
            other => panic!("expected BadJson, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn plain_ok_is_healthy() {
        answer_gives(Answer::PlainOk, Ok(())).await;
    }

    #[tokio::test]
    async fn body_larger_than_max_body_is_refused() {
        answer_gives(
            Answer::LargeBody(100_000),
            Err(Reason::BodyTooLarge(64 * 1024)),
        )
        .await;
        answer_gives(
            Answer::LargeChunked(100_000),
            Err(Reason::BodyTooLarge(64 * 1024)),
        )
        .await;
        answer_gives(
            Answer::LargeChunked(60_000),
            Err(Reason::UnexpectedBody("x".repeat(64))),
        )
        .await;
    }

    #[tokio::test]
    async fn endless_body_times_out_at_the_timeout() {
        let backend = Backend::http(Answer::EndlessBody).await;
        let start = Instant::now();
        let result = probe_http(&check_timing_out(HealthKind::Http), backend.addr).await;
        let took = start.elapsed();
        assert_eq!(result, Err(Reason::Timeout(TIMEOUT)));
        assert!(took >= TIMEOUT && took < TIMEOUT + STALL_SLACK, "{took:?}");
        assert_eq!(
            result.map_err(|r| r.to_string()),
            Err("timed out after 500ms".into())
        );
    }

    #[tokio::test]
    async fn server_that_never_answers_times_out() {
        let silent = Silent::start().await;
        let start = Instant::now();
        assert_eq!(
            probe_http(&check_timing_out(HealthKind::Http), silent.addr).await,
            Err(Reason::Timeout(TIMEOUT))
        );
        assert!(start.elapsed() < TIMEOUT + STALL_SLACK);
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let addr = closed_port().await;
        assert_eq!(
            probe_http(&check(HealthKind::Http), addr).await,
            Err(Reason::Refused)
        );
        assert_eq!(
            probe_http(&check(HealthKind::Tcp), addr).await,
            Err(Reason::Refused)
        );
    }

    #[tokio::test]
    async fn tcp_check_only_connects() {
        let silent = Silent::start().await;
        assert_eq!(
            probe_http(&check(HealthKind::Tcp), silent.addr).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn request_carries_path_host_agent_and_close() {
        let backend = Backend::http(Answer::Healthy).await;
        assert_eq!(
            probe_http(&check(HealthKind::Http), backend.addr).await,
            Ok(())
        );
        let mut named = check(HealthKind::Http);
        named.host = Some("node1.cluster.test".into());
        named.path = "/health?verbose=1".into();
        assert_eq!(probe_http(&named, backend.addr).await, Ok(()));

        let seen = backend.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].target, DEFAULT_HEALTH_PATH);
        assert_eq!(
            seen[0].host.as_deref(),
            Some(backend.addr.to_string().as_str())
        );
        assert_eq!(seen[0].user_agent.as_deref(), Some("ringlb-health"));
        assert_eq!(seen[0].connection.as_deref(), Some("close"));
        assert_eq!(seen[1].target, "/health?verbose=1");
        assert_eq!(seen[1].host.as_deref(), Some("node1.cluster.test"));
    }

    #[tokio::test]
    async fn https_check_without_tls_settings_fails_cleanly() {
        let backend = Backend::http(Answer::Healthy).await;
        assert!(matches!(
            probe_http(&check(HealthKind::Https), backend.addr).await,
            Err(Reason::Tls(_))
        ));
    }
}

mod https {
    use super::*;
    use servers::TestCerts;

    fn https_check(certs: &TestCerts) -> HealthCheck {
        let mut check = check(HealthKind::Https);
        check.ca_file = Some(certs.ca_file.clone());
        check
    }

    async fn probe_tls(check: &HealthCheck, addr: SocketAddr) -> Result<(), Reason> {
        let tls = TlsProbeConfig::new(check).expect("TLS settings");
        probe(check, addr, Some(&tls), &ProxySettings::direct()).await
    }

    #[tokio::test]
    async fn verified_against_the_ca_by_ip() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        assert_eq!(probe_tls(&https_check(&certs), backend.addr).await, Ok(()));
    }

    #[tokio::test]
    async fn verified_against_the_ca_by_host_name() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        let mut check = https_check(&certs);
        check.host = Some("node1.cluster.test:8443".into());
        assert_eq!(probe_tls(&check, backend.addr).await, Ok(()));
        assert_eq!(
            backend.seen()[0].host.as_deref(),
            Some("node1.cluster.test:8443")
        );
    }

    #[tokio::test]
    async fn answer_is_judged_through_tls() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Unavailable, &certs).await;
        assert_eq!(
            probe_tls(&https_check(&certs), backend.addr).await,
            Err(Reason::Status(503))
        );
    }

    #[tokio::test]
    async fn the_servers_own_certificate_is_pinned() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        let mut check = https_check(&certs);
        check.ca_file = Some(certs.server_cert_file.clone());
        assert_eq!(probe_tls(&check, backend.addr).await, Ok(()));
    }

    #[tokio::test]
    async fn wrong_ca_is_a_tls_failure() {
        let certs = TestCerts::generate();
        let other = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        match probe_tls(&https_check(&other), backend.addr).await {
            Err(Reason::Tls(why)) => assert!(why.contains("UnknownIssuer"), "{why}"),
            other => panic!("expected a TLS failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn insecure_skip_verify_accepts_an_unknown_certificate() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        let mut check = check(HealthKind::Https);
        check.insecure_skip_verify = true;
        assert_eq!(probe_tls(&check, backend.addr).await, Ok(()));
    }

    #[tokio::test]
    async fn sni_mismatch_is_a_tls_failure() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        let mut check = https_check(&certs);
        check.sni = Some("node9.cluster.test".into());
        match probe_tls(&check, backend.addr).await {
            Err(Reason::Tls(why)) => assert!(why.contains("not valid for name"), "{why}"),
            other => panic!("expected a TLS failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tls_to_a_plain_http_server_is_a_tls_failure() {
        let certs = TestCerts::generate();
        let backend = Backend::http(Answer::Healthy).await;
        assert!(matches!(
            probe_tls(&https_check(&certs), backend.addr).await,
            Err(Reason::Tls(_))
        ));
    }
}

mod proxy {
    use super::*;
    use servers::{closed_port, Proxy, TestCerts};

    /// A host name that is not loopback, so that the proxy applies.
    const NODE: &str = "node1.cluster.test";

    fn via(proxy: &Proxy, kind: HealthKind) -> HealthCheck {
        let mut check = check(kind);
        check.host = Some(NODE.into());
        check.http_proxy = Some(proxy.url());
        check.https_proxy = Some(proxy.url());
        check.no_proxy = Some(vec![]);
        check
    }

    fn settings(check: &HealthCheck) -> ProxySettings {
        ProxySettings::resolve(check, |_| None)
    }

    /// A backend that requires a PROXY header of `len` bytes first: keeps
    /// it, then answers `200 OK` to the request that follows.
    async fn header_first(len: usize) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut header = vec![0u8; len];
            s.read_exact(&mut header).await.unwrap();
            let _ = tx.send(header);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
                .await;
        });
        (addr, rx)
    }

    // PROXY protocol out.
    #[tokio::test]
    async fn with_send_proxy_plain_http_tunnels_and_the_header_reaches_the_backend() {
        let v2_local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
        let v1_unknown = b"PROXY UNKNOWN\r\n".to_vec();
        for (version, want) in [
            (lb_core::ProxyVersion::V2, v2_local),
            (lb_core::ProxyVersion::V1, v1_unknown),
        ] {
            let (backend, header) = header_first(want.len()).await;
            let proxy = Proxy::start(backend).await;
            let mut check = via(&proxy, HealthKind::Http);
            check.send_proxy = Some(version);
            assert_eq!(
                probe(&check, backend, None, &settings(&check)).await,
                Ok(()),
                "{version:?}"
            );
            // The header must reach the backend, not the proxy: a tunnel.
            assert_eq!(proxy.lines(), vec![format!("CONNECT {backend} HTTP/1.1")]);
            // Through a tunnel the probe's own addresses are not the
            // backend's view: v1 says UNKNOWN.
            assert_eq!(header.await.unwrap(), want, "{version:?}");
        }
    }

    #[tokio::test]
    async fn http_goes_through_the_proxy_in_absolute_form() {
        let backend = Backend::http(Answer::Healthy).await;
        let proxy = Proxy::start(backend.addr).await;
        let check = via(&proxy, HealthKind::Http);
        assert_eq!(
            probe(&check, backend.addr, None, &settings(&check)).await,
            Ok(())
        );
        assert_eq!(proxy.count(), 1);
        assert_eq!(
            proxy.lines(),
            vec![format!(
                "GET http://{}{DEFAULT_HEALTH_PATH} HTTP/1.1",
                backend.addr
            )]
        );
        assert_eq!(backend.seen().len(), 1);
    }

    #[tokio::test]
    async fn proxied_answers_are_judged_too() {
        let backend = Backend::http(Answer::Unavailable).await;
        let proxy = Proxy::start(backend.addr).await;
        let check = via(&proxy, HealthKind::Http);
        assert_eq!(
            probe(&check, backend.addr, None, &settings(&check)).await,
            Err(Reason::Status(503))
        );
        assert_eq!(proxy.count(), 1);
    }

    #[tokio::test]
    async fn no_proxy_matching_the_host_goes_direct() {
        let backend = Backend::http(Answer::Healthy).await;
        let proxy = Proxy::start(backend.addr).await;
        for entry in [NODE, ".cluster.test", "127.0.0.0/8", "*"] {
            let mut check = via(&proxy, HealthKind::Http);
            check.no_proxy = Some(vec!["other.test".into(), entry.into()]);
            assert_eq!(
                probe(&check, backend.addr, None, &settings(&check)).await,
                Ok(())
            );
        }
        assert_eq!(proxy.count(), 0);
        assert_eq!(backend.seen().len(), 4);
    }

    #[tokio::test]
    async fn loopback_names_are_never_proxied() {
        let backend = Backend::http(Answer::Healthy).await;
        let proxy = Proxy::start(backend.addr).await;
        for host in [None, Some("localhost"), Some("127.0.0.1:80")] {
            let mut check = via(&proxy, HealthKind::Http);
            check.host = host.map(str::to_owned);
            assert_eq!(
                probe(&check, backend.addr, None, &settings(&check)).await,
                Ok(())
            );
        }
        assert_eq!(proxy.count(), 0);
    }

    #[tokio::test]
    async fn https_goes_through_a_connect_tunnel() {
        let certs = TestCerts::generate();
        let backend = Backend::https(Answer::Healthy, &certs).await;
        let proxy = Proxy::start(backend.addr).await;
        let mut check = via(&proxy, HealthKind::Https);
        check.ca_file = Some(certs.ca_file.clone());
        let tls = TlsProbeConfig::new(&check).expect("TLS settings");
        assert_eq!(
            probe(&check, backend.addr, Some(&tls), &settings(&check)).await,
            Ok(())
        );
        assert_eq!(
            proxy.lines(),
            vec![format!("CONNECT {} HTTP/1.1", backend.addr)]
        );
        assert_eq!(backend.seen()[0].host.as_deref(), Some(NODE));
    }

    #[tokio::test]
    async fn unreachable_proxy_is_a_proxy_failure() {
        let backend = Backend::http(Answer::Healthy).await;
        let mut check = check(HealthKind::Http);
        check.host = Some(NODE.into());
        check.http_proxy = Some(format!("http://{}", closed_port().await));
        match probe(&check, backend.addr, None, &settings(&check)).await {
            Err(Reason::Proxy(why)) => assert!(why.contains("cannot connect"), "{why}"),
            other => panic!("expected a proxy failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn proxy_that_never_answers_connect_times_out() {
        let certs = TestCerts::generate();
        let silent = servers::Silent::start().await;
        let mut check = check_timing_out(HealthKind::Https);
        check.host = Some(NODE.into());
        check.https_proxy = Some(format!("http://{}", silent.addr));
        check.ca_file = Some(certs.ca_file.clone());
        let tls = TlsProbeConfig::new(&check).expect("TLS settings");
        let backend = closed_port().await;
        assert_eq!(
            probe(&check, backend, Some(&tls), &settings(&check)).await,
            Err(Reason::Timeout(TIMEOUT))
        );
    }
}

mod prober {
    use super::*;
    use lb_core::{BackendKey, Health as State, ProbeReport, Prober};
    use servers::closed_port;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// Slack on top of the computed bounds, for a loaded 2-core machine.
    const MARGIN: Duration = Duration::from_secs(1);

    fn key(name: &str) -> BackendKey {
        BackendKey {
            service: "artifactory".into(),
            backend: name.into(),
        }
    }

    fn fast_check() -> HealthCheck {
        let mut check = check(HealthKind::Http);
        check.interval = Duration::from_millis(200);
        check.fast_interval = Duration::from_millis(100);
        // Every backend of these tests answers at once (or refuses): the
        // timeout only bounds a stall of the test machine, which must not
        // turn a pass into a failure.
        check.timeout = Duration::from_secs(2);
        check
    }

    /// Waits until a report satisfies `wanted`, failing after `within`.
    async fn report_where(
        reports: &mut mpsc::UnboundedReceiver<ProbeReport>,
        within: Duration,
        what: &str,
        wanted: impl Fn(&ProbeReport) -> bool,
    ) -> ProbeReport {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(report)) if wanted(&report) => return report,
                Ok(Some(report)) => seen.push(report),
                Ok(None) => panic!("report channel closed while waiting for {what}"),
                Err(_) => panic!("no report {what} within {within:?}; saw {seen:#?}"),
            }
        }
    }

    #[tokio::test]
    async fn detects_down_and_up_within_interval_times_threshold() {
        let backend = Backend::http(Answer::Healthy).await;
        let check = fast_check();
        // The backend answers at once, so a flip takes at most the wait for
        // the next probe (interval) and the fast re-probes after it.
        let down_bound = check.interval * check.fall.get() + MARGIN;
        let up_bound = check.interval * check.rise.get() + MARGIN;
        let (events, mut reports) = mpsc::unbounded_channel();
        let mut prober = Prober::new(events);
        prober.set_targets(vec![(key("art1"), backend.addr, Arc::new(check))]);

        let first = report_where(&mut reports, Duration::from_secs(5), "first", |_| true).await;
        assert!(
            first.flipped && first.healthy && first.state == State::Up,
            "{first:?}"
        );

        let mut downs = Vec::new();
        let mut ups = Vec::new();
        for _ in 0..3 {
            backend.set(Answer::Unavailable);
            let start = Instant::now();
            let down = report_where(&mut reports, down_bound, "flipping down", |r| r.flipped).await;
            downs.push(start.elapsed());
            assert_eq!(down.state, State::Down);
            assert!(!down.healthy);
            assert_eq!(down.result, Err(Reason::Status(503)));
            assert_eq!(down.key, key("art1"));

            backend.set(Answer::Healthy);
            let start = Instant::now();
            let up = report_where(&mut reports, up_bound, "flipping up", |r| r.flipped).await;
            ups.push(start.elapsed());
            assert_eq!(up.state, State::Up);
            assert!(up.healthy && up.result.is_ok());
        }
        eprintln!(
            "detection (interval 200ms, fast 100ms, rise=fall=2, jitter 0.1): \
             down {downs:?} (bound {down_bound:?}), up {ups:?} (bound {up_bound:?})"
        );
    }

    #[tokio::test]
    async fn passive_failures_count_and_trigger_an_immediate_probe() {
        let backend = Backend::http(Answer::Healthy).await;
        let mut check = fast_check();
        // Far longer than the test: every probe after the first is a
        // re-probe or a fast one.
        check.interval = Duration::from_secs(30);
        let (events, mut reports) = mpsc::unbounded_channel();
        let mut prober = Prober::new(events);
        prober.set_targets(vec![(key("art1"), backend.addr, Arc::new(check))]);
        report_where(&mut reports, Duration::from_secs(5), "first", |_| true).await;

        // One passive failure: counted, then re-probed at once.
        prober.passive_failure(&key("art1"), "connect: refused".into());
        let passive = report_where(&mut reports, MARGIN, "passive", |_| true).await;
        assert_eq!(
            passive.result,
            Err(Reason::Passive("connect: refused".into()))
        );
        assert!(!passive.flipped && passive.state == State::Up);
        let reprobe = report_where(&mut reports, MARGIN * 2, "re-probe", |_| true).await;
        assert!(reprobe.result.is_ok() && !reprobe.flipped, "{reprobe:?}");
        assert_eq!(backend.seen().len(), 2);

        // fall (2) failures in a burst take it down before the re-probe.
        prober.passive_failure(&key("art1"), "a".into());
        prober.passive_failure(&key("art1"), "b".into());
        let down = report_where(&mut reports, MARGIN, "flip down", |r| r.flipped).await;
        assert_eq!(down.result, Err(Reason::Passive("b".into())));
        assert_eq!(down.state, State::Down);
        // The backend really is fine: rise (2) probes at fast_interval
        // bring it back, long before the 30 s interval.
        let up = report_where(&mut reports, Duration::from_secs(5), "flip up", |r| {
            r.flipped
        })
        .await;
        assert_eq!(up.state, State::Up);

        // Unknown keys are ignored.
        prober.passive_failure(&key("nobody"), "x".into());
    }

    #[tokio::test]
    async fn reload_keeps_state_and_applies_new_settings() {
        let backend = Backend::http(Answer::Healthy).await;
        let mut check = fast_check();
        check.interval = Duration::from_secs(30);
        let (events, mut reports) = mpsc::unbounded_channel();
        let mut prober = Prober::new(events);
        prober.set_targets(vec![(key("art1"), backend.addr, Arc::new(check.clone()))]);
        report_where(&mut reports, Duration::from_secs(5), "first", |_| true).await;

        // Same settings in a new Arc: nothing happens, state kept.
        prober.set_targets(vec![(key("art1"), backend.addr, Arc::new(check.clone()))]);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), reports.recv())
                .await
                .is_err()
        );
        assert_eq!(prober.state(&key("art1")), Some(State::Up));

        // Changed settings: probed at once with them, state kept (no flip).
        let mut changed = check.clone();
        changed.path = "/other".into();
        changed.fall = NonZeroU32::MIN;
        prober.set_targets(vec![(key("art1"), backend.addr, Arc::new(changed.clone()))]);
        let report = report_where(&mut reports, MARGIN, "re-probe", |_| true).await;
        assert!(report.result.is_ok() && !report.flipped && report.state == State::Up);
        assert_eq!(
            backend.seen().last().map(|s| s.target.clone()),
            Some("/other".into())
        );
        // fall = 1 now applies: one failure flips.
        prober.passive_failure(&key("art1"), "gone".into());
        let down = report_where(&mut reports, MARGIN, "flip", |_| true).await;
        assert!(down.flipped && down.state == State::Down, "{down:?}");

        // A new address is a new backend: Unknown, then its first result.
        let other = closed_port().await;
        prober.set_targets(vec![(key("art1"), other, Arc::new(changed.clone()))]);
        assert_eq!(prober.state(&key("art1")), Some(State::Unknown));
        let fresh = report_where(&mut reports, Duration::from_secs(5), "fresh", |r| {
            r.result == Err(Reason::Refused)
        })
        .await;
        assert!(fresh.flipped && fresh.state == State::Down);

        // Removed: no longer a target.
        prober.set_targets(vec![]);
        assert_eq!(prober.state(&key("art1")), None);
    }

    #[tokio::test]
    async fn unprobed_backends_are_reported_up_once() {
        let (events, mut reports) = mpsc::unbounded_channel();
        let mut prober = Prober::new(events);
        let none = Arc::new(check(HealthKind::None));
        let addr = closed_port().await;
        prober.set_targets(vec![(key("art1"), addr, none.clone())]);
        let report = reports.try_recv().expect("synthetic report");
        assert_eq!(
            report,
            ProbeReport {
                key: key("art1"),
                healthy: true,
                flipped: true,
                result: Ok(()),
                state: State::Up
            }
        );
        prober.set_targets(vec![(key("art1"), addr, none)]);
        assert!(reports.try_recv().is_err(), "reported twice");
        assert_eq!(prober.state(&key("art1")), Some(State::Up));
        assert!(prober.first_round(Instant::now()).await);
    }

    #[tokio::test]
    async fn first_round_resolves_once_every_backend_has_answered() {
        let up = Backend::http(Answer::Healthy).await;
        let down = closed_port().await;
        let silent = servers::Silent::start().await;
        let (events, _reports) = mpsc::unbounded_channel();
        let mut prober = Prober::new(events);
        let check = Arc::new(fast_check());
        prober.set_targets(vec![
            (key("up"), up.addr, check.clone()),
            (key("down"), down, check.clone()),
        ]);
        assert_eq!(prober.state(&key("up")), Some(State::Unknown));
        let start = Instant::now();
        assert!(prober.first_round(start + Duration::from_secs(10)).await);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(prober.state(&key("up")), Some(State::Up));
        assert_eq!(prober.state(&key("down")), Some(State::Down));

        // A backend that never answers holds the round until its timeout;
        // a deadline before that gives up.
        let mut slow = fast_check();
        slow.timeout = Duration::from_secs(2);
        slow.interval = Duration::from_secs(2);
        prober.set_targets(vec![(key("silent"), silent.addr, Arc::new(slow))]);
        assert!(
            !prober
                .first_round(Instant::now() + Duration::from_millis(200))
                .await
        );
        assert!(
            prober
                .first_round(Instant::now() + Duration::from_secs(6))
                .await
        );
        assert_eq!(prober.state(&key("silent")), Some(State::Down));
    }
}
