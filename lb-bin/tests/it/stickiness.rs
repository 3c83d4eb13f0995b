//! Stickiness: Maglev on the client IP sends a client to the same backend on
//! every connection, from every worker, and every ringlb instance with the
//! same backend set agrees (the table depends on backend names, never on
//! their order in the config).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, read_line, Backend, BackendConfig,
    LbConfig, Ringlb,
};

const CONNECTIONS_PER_CLIENT: usize = 5;

/// Which backend answers a new connection from `src`.
fn backend_for(src: IpAddr, lb: SocketAddr) -> String {
    let mut s = connect_from(src, lb).unwrap_or_else(|e| panic!("connect from {src} to {lb}: {e}"));
    read_line(&mut s).unwrap_or_else(|e| panic!("greeting for {src} via {lb}: {e}"))
}

#[test]
fn each_client_ip_always_reaches_the_same_backend() {
    let _shared = harness::shared();
    for_each_engine("stickiness::same_backend", |engine| {
        let backends = [
            Backend::named("b1"),
            Backend::named("b2"),
            Backend::named("b3"),
        ];
        let lb = Ringlb::start(&LbConfig::over(engine, &backends.each_ref()));

        let mut home: BTreeMap<IpAddr, String> = BTreeMap::new();
        for src in client_sources() {
            // Each connection has a fresh source port, so the kernel's
            // SO_REUSEPORT hash spreads them over both workers.
            let seen: Vec<String> = (0..CONNECTIONS_PER_CLIENT)
                .map(|_| backend_for(src, lb.addr()))
                .collect();
            assert!(
                seen.iter().all(|name| *name == seen[0]),
                "[{engine}] client {src} moved between backends: {seen:?}"
            );
            home.insert(src, seen[0].clone());
        }

        let used: BTreeSet<&String> = home.values().collect();
        assert_eq!(
            used.len(),
            3,
            "[{engine}] {} clients landed on only {used:?} of 3 backends",
            home.len()
        );
        let total: usize = backends.iter().map(Backend::accepted).sum();
        assert_eq!(
            total,
            client_sources().len() * CONNECTIONS_PER_CLIENT,
            "[{engine}] backend connections != client connections"
        );
    });
}

#[test]
fn two_instances_with_reordered_backends_agree_on_every_client() {
    let _shared = harness::shared();
    for_each_engine("stickiness::instances_agree", |engine| {
        let b1 = Backend::named("b1");
        let b2 = Backend::named("b2");
        let b3 = Backend::named("b3");
        let lb_a = Ringlb::start(&LbConfig::over(engine, &[&b1, &b2, &b3]));
        let reordered: Vec<BackendConfig> = [&b3, &b1, &b2].map(|b| b.into()).into();
        let lb_b = Ringlb::start(&LbConfig::single(engine, reordered));
        assert_ne!(lb_a.addr(), lb_b.addr());

        let mut used = BTreeSet::new();
        let mut disagreements = Vec::new();
        for src in client_sources() {
            let via_a = backend_for(src, lb_a.addr());
            let via_b = backend_for(src, lb_b.addr());
            if via_a != via_b {
                disagreements.push(format!("{src}: {via_a} via A, {via_b} via B"));
            }
            used.insert(via_a);
        }
        assert!(
            disagreements.is_empty(),
            "[{engine}] two instances with the same backends (listed b1,b2,b3 and b3,b1,b2) \
             sent clients to different backends:\n{}",
            disagreements.join("\n")
        );
        assert_eq!(used.len(), 3, "[{engine}] clients reached only {used:?}");
    });
}
