//! What the published table costs a worker per accepted connection: the
//! generation check (once per event-loop turn), and choosing the backend
//! candidates for a client; and what publishing costs the control plane.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use lb_core::Config;
use lb_core::Registry;
use lb_core::{PickState, SnapshotCell};

fn config(backends: usize, balance: &str) -> Config {
    let mut toml = format!(
        "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\nbalance = \"{balance}\"\n[service.health]\nkind = \"none\"\n"
    );
    for i in 0..backends {
        toml.push_str(&format!(
            "[[service.backend]]\nname = \"b{i}\"\naddress = \"10.0.{}.{}:8081\"\n",
            i / 250,
            i % 250 + 1
        ));
    }
    Config::parse(&toml, None).expect("bench config")
}

fn bench(c: &mut Criterion) {
    let mut registry = Registry::new(&config(100, "maglev"));
    let cell = SnapshotCell::new(registry.snapshot().expect("snapshot"));
    let snap = cell.load();
    let generation = snap.generation;
    c.bench_function("accept/generation_check", |b| {
        b.iter(|| black_box(cell.generation() == generation))
    });

    let svc = &snap.services[0];
    let mut state = PickState::new(1);
    let mut out = [0u32; 3];
    let mut i = 0u32;
    c.bench_function("accept/candidates_maglev_100_backends_x3", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0xffff)));
            black_box(svc.candidates(ip, &mut state, &mut out))
        })
    });
    let mut one = [0u32; 1];
    c.bench_function("accept/candidates_maglev_100_backends_x1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0xffff)));
            black_box(svc.candidates(ip, &mut state, &mut one))
        })
    });
    c.bench_function("publish/snapshot_100_backends_table_reused", |b| {
        b.iter(|| cell.publish(registry.snapshot().expect("snapshot")))
    });

    let mut rr = Registry::new(&config(100, "least-conn"));
    let snap = rr.snapshot().expect("snapshot");
    let svc = &snap.services[0];
    c.bench_function("accept/candidates_least_conn_100_backends_x3", |b| {
        b.iter(|| black_box(svc.candidates(IpAddr::V4(Ipv4Addr::LOCALHOST), &mut state, &mut out)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
