//! Byte integrity under concurrency: many connections through ringlb at
//! once, each carrying its own seeded random stream to an echo backend and
//! back; every byte must come back, in order, exactly once.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::{
    self, client_sources, connect_from, for_each_variant, seeded_bytes, Backend, LbConfig, Ringlb,
};

const CONNECTIONS: usize = 200;
const BYTES_PER_CONNECTION: usize = 2 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// Seeded random bytes; connection `i` sends the window starting at
/// `i * WINDOW_STRIDE`, so every connection's stream is distinct and none
/// repeats within itself (generating 400 MiB afresh would cost more than
/// the forwarding under test in a debug build).
const POOL_BYTES: usize = 2 * BYTES_PER_CONNECTION;
const WINDOW_STRIDE: usize = 10_007;
const _: () = assert!((CONNECTIONS - 1) * WINDOW_STRIDE + BYTES_PER_CONNECTION <= POOL_BYTES);
/// Per-read/write stall allowed while the machine is saturated.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn every_byte_comes_back_intact_over_200_concurrent_connections() {
    // 400 MiB each way through four loopback hops saturates two cores:
    // nothing else may run beside it.
    let _alone = harness::exclusive();
    for_each_variant("integrity", |engine| {
        let b1 = Backend::echo("b1");
        let b2 = Backend::echo("b2");
        let lb = Ringlb::start(&LbConfig::over(engine, &[&b1, &b2]));
        let addr = lb.addr();
        let sources = client_sources();
        let pool = Arc::new(seeded_bytes(0x5eed, POOL_BYTES));
        let started = Instant::now();

        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let src = sources[i % sources.len()];
                let pool = Arc::clone(&pool);
                thread::Builder::new()
                    .name(format!("client-{i}"))
                    .stack_size(harness::SMALL_STACK)
                    .spawn(move || round_trip(i, pool, src, addr))
                    .expect("spawn client")
            })
            .collect();
        let failures: Vec<String> = clients
            .into_iter()
            .enumerate()
            .filter_map(|(i, client)| match client.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("connection {i}: {e}")),
                Err(_) => Some(format!("connection {i}: client thread panicked")),
            })
            .collect();
        let elapsed = started.elapsed();

        assert!(
            failures.is_empty(),
            "[{engine}] {} of {CONNECTIONS} connections lost, reordered or corrupted data:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Both backends are up, so every client connection is exactly one
        // backend connection: no retries, no duplicates.
        assert_eq!(
            b1.accepted() + b2.accepted(),
            CONNECTIONS,
            "[{engine}] backend connections (b1 {}, b2 {}) != client connections",
            b1.accepted(),
            b2.accepted()
        );
        // 49 client IPs hashed over two backends: both must get some.
        assert!(
            b1.accepted() > 0 && b2.accepted() > 0,
            "[{engine}] one backend got every client (b1 {}, b2 {})",
            b1.accepted(),
            b2.accepted()
        );
        println!(
            "integrity [{engine}]: {CONNECTIONS} × {} MiB echoed in {elapsed:.2?}",
            BYTES_PER_CONNECTION >> 20
        );
    });
}

/// Sends this connection's window of `pool` from one thread while
/// reading the echo on this one; compares length and SHA-256 of both
/// streams.
fn round_trip(index: usize, pool: Arc<Vec<u8>>, src: IpAddr, lb: SocketAddr) -> Result<(), String> {
    let mut reader = connect_from(src, lb).map_err(|e| format!("connect from {src}: {e}"))?;
    for timeout in [
        reader.set_read_timeout(Some(STALL_TIMEOUT)),
        reader.set_write_timeout(Some(STALL_TIMEOUT)),
    ] {
        timeout.map_err(|e| e.to_string())?;
    }
    let mut writer = reader.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::Builder::new()
        .stack_size(harness::SMALL_STACK)
        .spawn(move || -> Result<[u8; 32], String> {
            let data = window(&pool, index);
            let mut sent = Sha256::new();
            for (i, chunk) in data.chunks(CHUNK).enumerate() {
                sent.update(chunk);
                writer
                    .write_all(chunk)
                    .map_err(|e| format!("write after {} bytes: {e}", i * CHUNK))?;
            }
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown(Write): {e}"))?;
            Ok(sent.finalize().into())
        })
        .map_err(|e| e.to_string())?;

    let mut received = Sha256::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; CHUNK];
    let read_result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                received.update(&buf[..n]);
                total += n;
                if total > BYTES_PER_CONNECTION {
                    break Err(format!(
                        "received {total} bytes, more than the {BYTES_PER_CONNECTION} sent"
                    ));
                }
            }
            Err(e) => {
                break Err(format!(
                    "read after {total} of {BYTES_PER_CONNECTION} bytes: {e}"
                ))
            }
        }
    };
    if read_result.is_err() {
        // Unblock the sender rather than wait out its write timeout.
        let _ = reader.shutdown(Shutdown::Both);
    }
    let sent = sender.join().map_err(|_| "sender panicked".to_owned())??;
    read_result?;
    if total != BYTES_PER_CONNECTION {
        return Err(format!("EOF after {total} of {BYTES_PER_CONNECTION} bytes"));
    }
    let received: [u8; 32] = received.finalize().into();
    if received != sent {
        return Err("all bytes came back but SHA-256 differs: reordered or corrupted".to_owned());
    }
    Ok(())
}

/// Connection `index`'s stream: its own window of the pool.
fn window(pool: &[u8], index: usize) -> &[u8] {
    let start = index * WINDOW_STRIDE;
    &pool[start..start + BYTES_PER_CONNECTION]
}
