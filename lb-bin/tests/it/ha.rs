//! ringlb's side of a tier behind keepalived or BGP ECMP (issue 15,
//! docs/ha.md): the health answers 503 for `drain_announce` before the
//! listeners close; `freebind = true` listens on an address the host does
//! not have yet; every instance exports fingerprints of its backend set and
//! of its effective table, equal across instances that agree.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::harness::{
    self, connect_from, read_line, Backend, BackendConfig, Deadline, LbConfig, Ringlb, LOCALHOST,
};
use crate::netns::Netns;

const HEALTH: &str = "/router/api/v1/system/health";
/// Bounds every admin request and every wait on a state change.
const WAIT: Duration = Duration::from_secs(10);

/// The status line of ringlb's health answer, or the error.
fn health(lb: &Ringlb) -> String {
    match lb.admin_get(HEALTH, Duration::from_secs(2)) {
        Ok(line) => line,
        Err(e) => format!("error: {e}"),
    }
}

/// A new connection through `lb` from 127.0.0.1: the backend's greeting.
fn greeting(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_from(LOCALHOST, addr)?;
    read_line(&mut s)
}

#[test]
fn health_answers_503_during_drain_announce_while_the_listeners_still_accept() {
    let _shared = harness::shared();
    let b1 = Backend::named("b1");
    let mut config = LbConfig::over("epoll", &[&b1]);
    config.admin = true;
    config.global_extra.extend([
        "drain_announce = \"3s\"".to_owned(),
        "shutdown_timeout = \"5s\"".to_owned(),
    ]);
    let mut lb = Ringlb::start(&config);
    let addr = lb.addr();
    assert!(
        health(&lb).starts_with("HTTP/1.1 200"),
        "healthy before the drain: {}\n{}",
        health(&lb),
        lb.report()
    );

    lb.signal(libc::SIGTERM);
    let deadline = Deadline::after(WAIT);
    let mut last = health(&lb);
    while !last.starts_with("HTTP/1.1 503") && !deadline.passed() {
        std::thread::sleep(Duration::from_millis(20));
        last = health(&lb);
    }
    assert!(
        last.starts_with("HTTP/1.1 503"),
        "the health must answer 503 once SIGTERM began the drain; last answer {last:?}\n{}",
        lb.report()
    );
    // The announce: the health says 503, yet new clients are still served
    // (keepalived/BIRD have drain_announce to send them elsewhere).
    let served = greeting(addr);
    assert!(
        matches!(&served, Ok(name) if name == "b1"),
        "a new connection during drain_announce must still be served; got {served:?}\n{}",
        lb.report()
    );
    let status = lb.wait_exit(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "ringlb must exit 0 after the announce and the drain: {status:?}\n{}",
        lb.report()
    );
    assert!(
        greeting(addr).is_err(),
        "the listeners are closed after the drain"
    );
}

#[test]
fn freebind_listens_on_an_address_that_arrives_later() {
    let _shared = harness::shared();
    let name = format!("rlb-fb-{}", std::process::id());
    let ns = match Netns::make(&name, &[]) {
        Ok(ns) => ns,
        Err(why) => return crate::netns::skipped("ha::freebind", &why),
    };
    let vip = Ipv4Addr::new(10, 251, 0, 1);
    ns.run(|| {
        let b1 = Backend::named("b1");
        let mut config = LbConfig::over("epoll", &[&b1]);
        config.service().listen = vec![format!("{vip}:8080")];

        // Without freebind the start fails: the address is not here.
        let dir = harness::TempDir::new("freebind");
        let plain = dir.write("ringlb.toml", &config.to_toml());
        let refused = harness::run_to_exit(&["--config".as_ref(), plain.as_os_str()]);
        assert!(
            !refused.status.success() && refused.stderr.contains(&vip.to_string()),
            "without freebind a listen address not on the host must fail the start: {:?}\n{}",
            refused.status,
            refused.stderr
        );

        config.service().extra.push("freebind = true".to_owned());
        let mut lb = Ringlb::start(&config);
        let addr = SocketAddr::new(IpAddr::V4(vip), 8080);
        assert_eq!(lb.addr(), addr);
        // The floating address arrives (as keepalived would add it).
        ns.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"])
            .unwrap();
        let served = greeting(addr);
        assert!(
            matches!(&served, Ok(name) if name == "b1"),
            "once the address is here the listener (bound before) serves it: {served:?}\n{}",
            lb.report()
        );

        // A reload binds a new listen address with freebind too.
        let later = Ipv4Addr::new(10, 251, 0, 2);
        config.service().listen.push(format!("{later}:8081"));
        lb.rewrite_config(&config.to_toml());
        lb.signal(libc::SIGHUP);
        let line = lb.wait_for_log(&format!("listen={later}:8081"), WAIT);
        assert!(
            line.is_some(),
            "a reload adding an address not on the host must bind it (freebind)\n{}",
            lb.report()
        );
        ns.ip(&["addr", "add", &format!("{later}/32"), "dev", "lo"])
            .unwrap();
        let served = greeting(SocketAddr::new(IpAddr::V4(later), 8081));
        assert!(
            matches!(&served, Ok(name) if name == "b1"),
            "the address added by the reload serves once it arrives: {served:?}\n{}",
            lb.report()
        );
    });
}

/// `family{service="web",fingerprint="…"} 1`: the fingerprint.
fn fingerprint(lb: &Ringlb, family: &str) -> String {
    let metrics = lb.metrics();
    let prefix = format!("{family}{{service=\"web\",fingerprint=\"");
    metrics
        .text()
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (value, tail) = rest.split_once('"')?;
            (tail == "} 1").then(|| value.to_owned())
        })
        .unwrap_or_else(|| panic!("no {family} for web in /metrics\n{}", metrics.text()))
}

#[test]
fn instances_with_the_same_backends_export_equal_fingerprints_and_a_drain_on_one_tells() {
    let _shared = harness::shared();
    let backends = [
        Backend::named("b1"),
        Backend::named("b2"),
        Backend::named("b3"),
    ];
    let mut one = LbConfig::over("epoll", &backends.each_ref());
    one.admin = true;
    // The second instance lists them in another order: the fingerprints
    // (like the Maglev table) do not depend on it.
    let mut other = one.clone();
    other.service().backends.reverse();
    let a = Ringlb::start(&one);
    let b = Ringlb::start(&other);
    let (set_a, table_a) = (
        fingerprint(&a, "ringlb_backends_fingerprint"),
        fingerprint(&a, "ringlb_table_fingerprint"),
    );
    assert_eq!(set_a.len(), 16, "16 hex digits: {set_a}");
    assert_eq!(set_a, fingerprint(&b, "ringlb_backends_fingerprint"));
    assert_eq!(table_a, fingerprint(&b, "ringlb_table_fingerprint"));

    // A drain sent to one instance only: same set, another table.
    let status = b
        .admin_post("/api/v1/services/web/backends/b2/drain", WAIT)
        .unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "{status}\n{}",
        b.report()
    );
    assert_eq!(set_a, fingerprint(&b, "ringlb_backends_fingerprint"));
    assert_ne!(table_a, fingerprint(&b, "ringlb_table_fingerprint"));

    // A backend only one instance has: both fingerprints differ.
    let b4 = Backend::named("b4");
    let mut bigger = one.clone();
    bigger
        .service()
        .backends
        .push(BackendConfig::new("b4", b4.addr()));
    let c = Ringlb::start(&bigger);
    assert_ne!(set_a, fingerprint(&c, "ringlb_backends_fingerprint"));
    assert_ne!(table_a, fingerprint(&c, "ringlb_table_fingerprint"));
}
