//! Opens N idle TCP connections to a loopback address and holds them.
//!
//! ```text
//! idleconns --addr 127.0.0.1:18080 --count 8000 --ready-file R --stop-file S \
//!           [--max-secs 120] [--connect-timeout 3]
//! ```
//! Connects sequentially (bounded by `--connect-timeout` each), then writes
//! `opened=… failed=… open_ms=…` to the ready file. It holds the connections,
//! sending nothing, until the stop file appears or `--max-secs` passes, then
//! checks each connection without blocking (still open, or closed/reset by
//! the peer), prints `IDLECONNS target=… opened=… failed=… alive=… closed=…
//! open_ms=… held_s=…` on stdout and exits, closing them all.
//!
//! Each connection is one fd here: the caller must have raised `ulimit -n`.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: idleconns --addr IP:PORT --count N --ready-file PATH --stop-file PATH \
[--max-secs S] [--connect-timeout S]";

struct Args {
    addr: SocketAddr,
    count: usize,
    ready: PathBuf,
    stop: PathBuf,
    max_secs: f64,
    connect_timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let (mut addr, mut count, mut ready, mut stop) = (None, None, None, None);
    let mut max_secs = 120.0;
    let mut connect_timeout = 3.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let secs = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| (0.01..=3600.0).contains(x))
                .ok_or_else(|| format!("{flag}: expected 0.01..=3600 seconds, got {v}"))
        };
        match flag.as_str() {
            "--addr" => {
                let a: SocketAddr = value
                    .parse()
                    .map_err(|_| format!("--addr: expected IP:PORT, got {value}"))?;
                let lo = match a.ip() {
                    IpAddr::V4(v) => v.is_loopback(),
                    IpAddr::V6(v) => v.is_loopback(),
                };
                if !lo {
                    return Err(format!("--addr: refusing non-loopback address {a}"));
                }
                addr = Some(a);
            }
            "--count" => {
                count = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or_else(|| format!("--count: 1..=100000, got {value}"))?,
                )
            }
            "--ready-file" => ready = Some(PathBuf::from(value)),
            "--stop-file" => stop = Some(PathBuf::from(value)),
            "--max-secs" => max_secs = secs(&value)?,
            "--connect-timeout" => connect_timeout = secs(&value)?,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let need = |what: &str| format!("{what} is required\n{USAGE}");
    Ok(Args {
        addr: addr.ok_or_else(|| need("--addr"))?,
        count: count.ok_or_else(|| need("--count"))?,
        ready: ready.ok_or_else(|| need("--ready-file"))?,
        stop: stop.ok_or_else(|| need("--stop-file"))?,
        max_secs,
        connect_timeout: Duration::from_secs_f64(connect_timeout),
    })
}

/// True while the peer has neither closed nor reset the connection.
fn still_open(mut s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => false,
        Ok(_) => true, // unexpected data, but the connection is up
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("idleconns: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.max_secs);
    let mut conns = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    let mut first_error = None;
    for _ in 0..args.count {
        if Instant::now() >= deadline {
            failed += 1;
            continue;
        }
        match TcpStream::connect_timeout(&args.addr, args.connect_timeout) {
            Ok(s) => conns.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
                if e.raw_os_error() == Some(libc::EMFILE) {
                    // Out of fds: more attempts cannot succeed.
                    failed = args.count - conns.len();
                    break;
                }
            }
        }
    }
    let open_ms = start.elapsed().as_millis();
    if let Some(e) = &first_error {
        eprintln!("idleconns: {failed} connections failed, first error: {e}");
    }
    let opened = conns.len();
    if let Err(e) = std::fs::write(
        &args.ready,
        format!("opened={opened} failed={failed} open_ms={open_ms}\n"),
    ) {
        eprintln!("idleconns: writing {}: {e}", args.ready.display());
        return ExitCode::from(1);
    }
    let held_from = Instant::now();
    while !args.stop.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let held_s = held_from.elapsed().as_secs_f64();
    let alive = conns.iter().filter(|s| still_open(s)).count();
    println!(
        "IDLECONNS target={} opened={opened} failed={failed} alive={alive} closed={} \
open_ms={open_ms} held_s={held_s:.1}",
        args.count,
        opened - alive
    );
    ExitCode::SUCCESS
}
