//! Every balance policy forwards: with one backend, with several, and past
//! a dead one (connect failure → next distinct backend). The other areas
//! run under Maglev, the default; this one holds the rest to the same
//! basic contract.

use std::collections::BTreeMap;

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, read_line, Backend, BackendConfig,
    DeadPort, LbConfig, Ringlb,
};

const POLICIES: [&str; 4] = ["maglev", "round-robin", "least-conn", "p2c"];
const CONNECTIONS: usize = 30;

/// Opens [`CONNECTIONS`] connections from varied sources, each reading
/// its backend's greeting; returns connections per backend name, or the
/// failures.
fn spread(lb: &Ringlb) -> Result<BTreeMap<String, usize>, Vec<String>> {
    let sources = client_sources();
    let mut seen = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..CONNECTIONS {
        let src = sources[i % sources.len()];
        match connect_from(src, lb.addr()).and_then(|mut s| read_line(&mut s)) {
            Ok(name) => *seen.entry(name).or_insert(0) += 1,
            Err(e) => failures.push(format!("connection {i} from {src}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(seen)
    } else {
        Err(failures)
    }
}

fn config(engine: &'static str, policy: &str, backends: Vec<BackendConfig>) -> LbConfig {
    let mut config = LbConfig::single(engine, backends);
    config.service().balance = policy.to_owned();
    config
}

#[test]
fn every_policy_forwards_to_a_single_backend() {
    let _shared = harness::shared();
    for_each_engine("policies::single", |engine| {
        let only = Backend::named("only");
        let mut broken = Vec::new();
        for policy in POLICIES {
            let lb = Ringlb::start(&config(engine, policy, vec![(&only).into()]));
            match spread(&lb) {
                Ok(seen) if seen.get("only") == Some(&CONNECTIONS) => {}
                Ok(seen) => broken.push(format!("{policy}: {seen:?}")),
                Err(failures) => broken.push(format!(
                    "{policy}: {} of {CONNECTIONS} connections failed, first: {}",
                    failures.len(),
                    failures[0]
                )),
            }
        }
        assert!(
            broken.is_empty(),
            "[{engine}] with one live backend, every connection must reach it:\n{}",
            broken.join("\n")
        );
    });
}

#[test]
fn every_policy_uses_every_backend() {
    let _shared = harness::shared();
    for_each_engine("policies::several", |engine| {
        let backends = [
            Backend::named("b1"),
            Backend::named("b2"),
            Backend::named("b3"),
        ];
        let mut broken = Vec::new();
        for policy in POLICIES {
            let listed = backends.iter().map(BackendConfig::from).collect();
            let lb = Ringlb::start(&config(engine, policy, listed));
            match spread(&lb) {
                Ok(seen) if seen.len() == 3 => {}
                Ok(seen) => broken.push(format!("{policy}: only {seen:?}")),
                Err(failures) => broken.push(format!(
                    "{policy}: {} of {CONNECTIONS} connections failed, first: {}",
                    failures.len(),
                    failures[0]
                )),
            }
        }
        assert!(
            broken.is_empty(),
            "[{engine}] {CONNECTIONS} connections over 3 live backends must reach all three:\n{}",
            broken.join("\n")
        );
    });
}

#[test]
fn every_policy_fails_over_past_a_dead_backend() {
    let _shared = harness::shared();
    for_each_engine("policies::failover", |engine| {
        let live = Backend::named("live");
        let dead = DeadPort::new();
        let mut broken = Vec::new();
        for policy in POLICIES {
            let listed = vec![BackendConfig::new("dead", dead.addr()), (&live).into()];
            let lb = Ringlb::start(&config(engine, policy, listed));
            match spread(&lb) {
                Ok(seen) if seen.get("live") == Some(&CONNECTIONS) => {}
                Ok(seen) => broken.push(format!("{policy}: {seen:?}")),
                Err(failures) => broken.push(format!(
                    "{policy}: {} of {CONNECTIONS} connections failed, first: {}",
                    failures.len(),
                    failures[0]
                )),
            }
        }
        assert!(
            broken.is_empty(),
            "[{engine}] one backend refusing, one live: every connection must reach the live \
             one:\n{}",
            broken.join("\n")
        );
    });
}
