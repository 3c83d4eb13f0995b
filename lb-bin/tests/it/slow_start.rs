//! Slow start (issue 14 §3): with `slow_start = "2s"`, a backend enabled
//! again through the admin API takes its Maglev clients back gradually over
//! the window, not all at once; each client moves home exactly once and the
//! clients of the other backends never move.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, read_line, Backend, Deadline, LbConfig,
    Ringlb,
};

/// The configured window.
const WINDOW: Duration = Duration::from_secs(2);
/// Time between two samples of every client.
const STEP: Duration = Duration::from_millis(200);
/// Beyond the window, for a loaded machine: every home client must be back
/// by `WINDOW + SLACK` after the enable.
const SLACK: Duration = Duration::from_millis(1500);
/// Admin answers and the disable taking effect.
const ADMIN: Duration = Duration::from_secs(5);

/// Which backend answers a new connection from `src`.
fn backend_for(src: IpAddr, lb: SocketAddr) -> String {
    let mut s = connect_from(src, lb).unwrap_or_else(|e| panic!("connect from {src} to {lb}: {e}"));
    read_line(&mut s).unwrap_or_else(|e| panic!("greeting for {src} via {lb}: {e}"))
}

/// Every client's backend, now.
fn sample(lb: &Ringlb) -> BTreeMap<IpAddr, String> {
    client_sources()
        .into_iter()
        .map(|src| (src, backend_for(src, lb.addr())))
        .collect()
}

fn admin(lb: &Ringlb, backend: &str, action: &str) {
    let path = format!("/api/v1/services/web/backends/{backend}/{action}");
    let status = lb
        .admin_post(&path, ADMIN)
        .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", lb.report()));
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "POST {path} answered {status:?}\n{}",
        lb.report()
    );
}

#[test]
fn a_reenabled_backend_takes_its_clients_back_gradually_each_once() {
    let _shared = harness::shared();
    for_each_engine("slow_start::gradual", |engine| {
        let backends = [
            Backend::named("b1"),
            Backend::named("b2"),
            Backend::named("b3"),
        ];
        let mut config = LbConfig::over(engine, &backends.each_ref());
        config.admin = true;
        config
            .service()
            .extra
            .push("slow_start = \"2s\"".to_owned());
        let lb = Ringlb::start(&config);

        // The recovering node: the one home to the most clients.
        let home = sample(&lb);
        let node = ["b1", "b2", "b3"]
            .into_iter()
            .max_by_key(|b| home.values().filter(|h| h == b).count())
            .unwrap_or("b1");
        let its: Vec<IpAddr> = home
            .iter()
            .filter(|(_, h)| *h == node)
            .map(|(src, _)| *src)
            .collect();
        assert!(
            its.len() >= 8,
            "[{engine}] {node} is home to only {} of {} clients",
            its.len(),
            home.len()
        );

        // Disabled: wait until its clients are elsewhere.
        admin(&lb, node, "disable");
        let deadline = Deadline::after(ADMIN);
        let down = loop {
            let now = sample(&lb);
            if its.iter().all(|src| now[src] != node) {
                break now;
            }
            assert!(
                !deadline.passed(),
                "[{engine}] {node} still gets clients {ADMIN:?} after its disable\n{}",
                lb.report()
            );
        };
        for (src, at) in &down {
            if home[src] != node {
                assert_eq!(at, &home[src], "[{engine}] disabling {node} moved {src}");
            }
        }

        // Enabled: sample every STEP until all are back (or the deadline).
        admin(&lb, node, "enable");
        let enabled = Instant::now();
        let mut last = down.clone();
        let mut moves: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut curve: Vec<(Duration, usize)> = Vec::new();
        for step in 0u32.. {
            let tick = enabled + STEP * step;
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
            let taken = enabled.elapsed();
            let now = sample(&lb);
            for (src, at) in &now {
                if home[src] != node {
                    assert_eq!(at, &home[src], "[{engine}] {src} of another backend moved");
                    continue;
                }
                assert!(
                    *at == down[src] || at == node,
                    "[{engine}] {src} went to {at}: neither home ({node}) nor where it was ({})",
                    down[src]
                );
                if *at != last[src] {
                    *moves.entry(*src).or_default() += 1;
                    last.insert(*src, at.clone());
                }
            }
            let back = its.iter().filter(|src| now[src] == node).count();
            curve.push((taken, back));
            if back == its.len() && taken >= WINDOW {
                break;
            }
            assert!(
                taken < WINDOW + SLACK,
                "[{engine}] only {back} of {} clients back on {node} {taken:?} after the enable \
                 (slow start {WINDOW:?}); curve {curve:?}\n{}",
                its.len(),
                lb.report()
            );
        }
        let shown: Vec<String> = curve
            .iter()
            .map(|(t, back)| format!("{}ms:{back}", t.as_millis()))
            .collect();
        println!(
            "[{engine}] {node}'s {} home clients back after the enable: {}",
            its.len(),
            shown.join(" ")
        );
        assert!(
            moves.values().all(|&m| m <= 1),
            "[{engine}] a client switched more than once: {moves:?}"
        );
        assert!(
            curve.windows(2).all(|w| w[0].1 <= w[1].1),
            "[{engine}] the share back home shrank: {shown:?}"
        );
        let (first_at, first) = curve[0];
        assert!(
            first_at >= WINDOW / 2 || first * 2 <= its.len(),
            "[{engine}] {first} of {} back at once ({first_at:?}): no slow start; {shown:?}",
            its.len()
        );
        let mut steps: Vec<usize> = curve.iter().map(|(_, back)| *back).collect();
        steps.dedup();
        assert!(
            steps.len() >= 3,
            "[{engine}] the clients came back in fewer than 3 steps: {shown:?}"
        );
    });
}
