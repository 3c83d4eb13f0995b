//! Idle timeout: a connection with no byte either way for `idle_timeout` is
//! closed (both sides); one with traffic in either direction stays open.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_variant, read_line, read_outcome, Backend,
    LbConfig, ReadOutcome, Ringlb, Variant, LOCALHOST,
};

const IDLE_TIMEOUT: Duration = Duration::from_millis(300);
/// An idle connection must be closed by then (timer granularity, load).
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);
/// An idle connection must not be closed before this: the timeout less a
/// small allowance for timer granularity.
const EARLIEST_CLOSE: Duration = Duration::from_millis(250);
/// Traffic: a byte every TICK for TICKS ticks (1 s, over 3 idle timeouts).
const TICK: Duration = Duration::from_millis(100);
const TICKS: u32 = 10;

fn config(engine: Variant, backend: &Backend) -> LbConfig {
    let mut config = LbConfig::over(engine, &[backend]);
    config.service().idle_timeout = "300ms".to_owned();
    config
}

#[test]
fn idle_connection_is_closed_on_both_sides() {
    let _shared = harness::shared();
    for_each_variant("idle::closed", |engine| {
        let (ends_tx, ends) = mpsc::channel();
        let backend = Backend::echo_reporting("b1", ends_tx);
        let lb = Ringlb::start(&config(engine, &backend));

        let mut client = connect_from(client_sources()[4], lb.addr()).expect("connect");
        client.write_all(b"x").expect("send");
        let mut echo = [0u8; 1];
        client.read_exact(&mut echo).expect("echo");
        let last_activity = Instant::now();

        client
            .set_read_timeout(Some(CLOSE_DEADLINE))
            .expect("timeout");
        let outcome = read_outcome(&mut client, &mut [0u8; 16]);
        let idle_for = last_activity.elapsed();
        assert!(
            matches!(outcome, ReadOutcome::Eof | ReadOutcome::Reset),
            "[{engine}] idle_timeout = {IDLE_TIMEOUT:?}: connection idle for {idle_for:.2?} \
             still open ({outcome:?})"
        );
        assert!(
            idle_for >= EARLIEST_CLOSE,
            "[{engine}] idle_timeout = {IDLE_TIMEOUT:?}, but the connection was closed after \
             only {idle_for:.2?} idle"
        );
        let backend_end = ends.recv_timeout(CLOSE_DEADLINE).unwrap_or_else(|_| {
            panic!("[{engine}] client side closed for idleness but backend side left open")
        });
        assert!(
            matches!(backend_end, ReadOutcome::Eof | ReadOutcome::Reset),
            "[{engine}] backend side ended with {backend_end:?}"
        );
    });
}

#[test]
fn connection_with_steady_traffic_survives() {
    let _shared = harness::shared();
    for_each_variant("idle::busy_survives", |engine| {
        let backend = Backend::echo("b1");
        let lb = Ringlb::start(&config(engine, &backend));
        let mut client = connect_from(client_sources()[5], lb.addr()).expect("connect");

        pace(|tick| {
            let byte = [b'a' + tick as u8];
            client.write_all(&byte).unwrap_or_else(|e| {
                panic!("[{engine}] write at tick {tick} on a busy connection: {e}")
            });
            let mut echo = [0u8; 1];
            client.read_exact(&mut echo).unwrap_or_else(|e| {
                panic!("[{engine}] echo at tick {tick} on a busy connection: {e}")
            });
            assert_eq!(echo, byte);
        });
    });
}

/// "No byte either way": traffic in one direction alone keeps the
/// connection open. The client only sends (the backend answers nothing
/// until the end), then the backend's single answer must still arrive.
#[test]
fn one_way_traffic_keeps_the_connection_open() {
    let _shared = harness::shared();
    for_each_variant("idle::one_way_survives", |engine| {
        let backend = Backend::spawn("sink", LOCALHOST, |mut s| {
            let mut got = [0u8; TICKS as usize];
            if s.read_exact(&mut got).is_ok() {
                let _ = s.write_all(b"got all\n");
            }
        });
        let lb = Ringlb::start(&config(engine, &backend));
        let mut client = connect_from(client_sources()[6], lb.addr()).expect("connect");

        pace(|tick| {
            client.write_all(b"z").unwrap_or_else(|e| {
                panic!("[{engine}] write at tick {tick} on a one-way busy connection: {e}")
            });
        });
        let answer = read_line(&mut client).unwrap_or_else(|e| {
            panic!(
                "[{engine}] client sent a byte every {TICK:?} (idle_timeout {IDLE_TIMEOUT:?}) \
                 but the connection was closed: {e}"
            )
        });
        assert_eq!(answer, "got all");
    });
}

/// Runs `step` every [`TICK`], [`TICKS`] times. The sleep here shapes the
/// traffic under test (one byte per tick); it synchronises nothing.
fn pace(mut step: impl FnMut(u32)) {
    let start = Instant::now();
    for tick in 0..TICKS {
        let due = start + TICK * tick;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        step(tick);
    }
}

/// The slow download's reader: [`SLOW_READ`] bytes every [`SLOW_PACE`]
/// (200 KiB/s) for [`SLOW_FOR`], four idle timeouts of [`SLOW_IDLE`].
const SLOW_READ: usize = 4096;
const SLOW_PACE: Duration = Duration::from_millis(20);
const SLOW_FOR: Duration = Duration::from_secs(4);
const SLOW_IDLE: Duration = Duration::from_secs(1);
/// What the backend offers: far more than the reader takes meanwhile.
const SLOW_DOWNLOAD: usize = 32 << 20;

/// "No byte either way" counts the bytes the kernel still delivers: a
/// client reading a download slowly but steadily keeps it open, although
/// ringlb itself writes nothing for seconds (its socket's send buffer, a
/// MiB or more, drains at the reader's pace and wakes it only when a third
/// of it is free). Found by the long network-fault run: under 10 % loss a
/// transfer whose send buffer drained slowly was reset while bytes still
/// moved.
#[test]
fn a_slow_download_whose_bytes_keep_moving_is_not_idle() {
    let _shared = harness::shared();
    for_each_variant("idle::slow_download", |engine| {
        let backend = Backend::spawn("pusher", LOCALHOST, |mut s| {
            let chunk = [b'd'; 64 << 10];
            for _ in 0..SLOW_DOWNLOAD / chunk.len() {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let mut config = LbConfig::over(engine, &[&backend]);
        config.service().idle_timeout = format!("{}s", SLOW_IDLE.as_secs());
        let lb = Ringlb::start(&config);
        let mut client = connect_from(client_sources()[7], lb.addr()).expect("connect");
        client
            .set_read_timeout(Some(SLOW_IDLE * 2))
            .expect("timeout");
        let start = Instant::now();
        let mut got = 0;
        let mut buf = [0u8; SLOW_READ];
        let mut tick = 0;
        while start.elapsed() < SLOW_FOR {
            match client.read(&mut buf) {
                Ok(0) => panic!(
                    "[{engine}] EOF after {got} bytes of a {SLOW_DOWNLOAD}-byte download, \
                     {:.2?} in",
                    start.elapsed()
                ),
                Ok(n) => got += n,
                Err(e) => panic!(
                    "[{engine}] a download read steadily at 200 KiB/s was cut after {got} \
                     bytes, {:.2?} in (idle_timeout {SLOW_IDLE:?}): {e}",
                    start.elapsed()
                ),
            }
            // Shapes the reader (its pace is what is under test).
            tick += 1;
            thread::sleep((start + SLOW_PACE * tick).saturating_duration_since(Instant::now()));
        }
        println!(
            "[{engine}] slow download: {got} bytes read in {:.2?} at 200 KiB/s, idle_timeout \
             {SLOW_IDLE:?}, not cut",
            start.elapsed()
        );
    });
}
