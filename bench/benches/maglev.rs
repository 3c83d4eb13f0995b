//! Micro-benchmarks for backend choice: Maglev table builds and effective
//! table rebuilds (control thread), and the per-connection work of a worker
//! (client key hash, effective lookup, failover candidates).
//!
//! Run short: `cargo bench -p bench --bench maglev -- --warm-up-time 1
//! --measurement-time 3`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_core::client_key;
use lb_core::{MaglevTable, Member};

/// The default table size (DESIGN.md).
const M: u32 = 65_537;

/// Spreads a counter over the key space, as client-key hashes are spread, so
/// lookups hit random slots rather than walking the table in order.
fn key_stream(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

fn members(names: &[String]) -> Vec<Member<'_>> {
    names
        .iter()
        .map(|name| Member { name, weight: 100 })
        .collect()
}

fn table(names: &[String]) -> MaglevTable {
    MaglevTable::build(&members(names), M).expect("valid bench table")
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build_65537");
    group.sample_size(10);
    for n in [3usize, 10, 100, 1000] {
        let names = names(n);
        let ms = members(&names);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ms, |b, ms| {
            b.iter(|| MaglevTable::build(black_box(ms), M))
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let names = names(100);
    let effective = table(&names).effective(&[true; 100]);
    let mut i = 0u64;
    c.bench_function("effective_lookup_100", |b| {
        b.iter(|| {
            i += 1;
            effective.lookup(black_box(key_stream(i)))
        })
    });
}

fn hash(c: &mut Criterion) {
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
    c.bench_function("client_key_v4", |b| {
        b.iter(|| client_key(black_box(v4), 32, 64))
    });
    c.bench_function("client_key_v6", |b| {
        b.iter(|| client_key(black_box(v6), 32, 64))
    });
}

fn rebuild(c: &mut Criterion) {
    let names = names(100);
    let table = table(&names);
    let mut usable = [true; 100];
    usable[42] = false;
    c.bench_function("effective_rebuild_100_one_down", |b| {
        b.iter(|| table.effective(black_box(&usable)))
    });
}

fn candidates(c: &mut Criterion) {
    let names = names(100);
    let table = table(&names);
    let mut usable = [true; 100];
    usable[42] = false;
    let mut i = 0u64;
    c.bench_function("candidates_100_out3", |b| {
        b.iter(|| {
            i += 1;
            let mut out = [0u32; 3];
            let n = table.candidates(black_box(key_stream(i)), &usable, &mut out);
            (n, out)
        })
    });
}

criterion_group!(benches, build, lookup, hash, rebuild, candidates);
criterion_main!(benches);
