//! Open-loop, fixed-rate HTTP/1.1 latency client (what wrk2 does, std only).
//!
//! Request `i` is due at `t0 + i / rate`, whatever happened to earlier ones.
//! Requests are spread round-robin over `--connections` keep-alive
//! connections, one thread each, one request in flight per connection. Latency
//! is measured from the request's INTENDED send time to the end of its
//! response, so a stall shows up in every request queued behind it instead of
//! silently pausing the load (coordinated omission).
//!
//! ```text
//! openloop --url http://127.0.0.1:18080/ --rate 5000 --duration 10 \
//!          [--warmup 1] [--connections 16] [--timeout 2]
//! ```
//! Prints one machine-readable line `OPENLOOP key=value …` on stdout and a
//! human summary on stderr. Exits non-zero only on bad arguments.

use std::net::TcpStream;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use bench::http::{exchange, ResponseReader, Target};
use hdrhistogram::Histogram;

#[derive(Debug, Clone)]
struct Args {
    target: Target,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
    timeout: Duration,
}

const USAGE: &str = "usage: openloop --url http://127.0.0.1:PORT/PATH --rate REQ_PER_S \
--duration SECS [--warmup SECS] [--connections N] [--timeout SECS]";

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut rate = None;
    let mut duration = None;
    let mut warmup = 1.0;
    let mut connections = 16usize;
    let mut timeout = 2.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{flag}: not a non-negative number: {v}"))
        };
        match flag.as_str() {
            "--url" => url = Some(Target::parse(&value)?),
            "--rate" => rate = Some(num(&value)?),
            "--duration" => duration = Some(num(&value)?),
            "--warmup" => warmup = num(&value)?,
            "--timeout" => timeout = num(&value)?,
            "--connections" => {
                connections = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("--connections: 1..=1024, got {value}"))?
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let rate = rate.ok_or_else(|| format!("--rate is required\n{USAGE}"))?;
    let duration = duration.ok_or_else(|| format!("--duration is required\n{USAGE}"))?;
    if !(1.0..=1_000_000.0).contains(&rate) {
        return Err(format!("--rate must be within 1..=1000000, got {rate}"));
    }
    if !(0.1..=3600.0).contains(&duration) || warmup > 600.0 {
        return Err("--duration must be within 0.1..=3600 s, --warmup <= 600 s".to_string());
    }
    if !(0.01..=60.0).contains(&timeout) {
        return Err("--timeout must be within 0.01..=60 s".to_string());
    }
    Ok(Args {
        target: url.ok_or_else(|| format!("--url is required\n{USAGE}"))?,
        rate,
        duration,
        warmup,
        connections,
        timeout: Duration::from_secs_f64(timeout),
    })
}

/// Latencies are recorded in microseconds, 1 µs ..= 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

struct Tally {
    hist: Histogram<u64>,
    /// Requests of the measured window written to the wire.
    sent: u64,
    /// Measured-window requests that got a 2xx response.
    ok: u64,
    /// Measured-window responses with another status.
    non2xx: u64,
    /// Measured-window connect/read/write failures and timeouts.
    errors: u64,
    /// Measured-window requests never sent because the run hit its hard stop.
    unsent: u64,
}

/// Ask for precise sleeps on this thread: the default 50 µs timer slack would
/// show up as latency on every request.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // the calling thread's timer slack; no pointers are involved.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn connect(args: &Args) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&args.target.addr, args.timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(args.timeout))?;
    s.set_write_timeout(Some(args.timeout))?;
    Ok(s)
}

fn run_connection(lane: usize, args: &Args, t0: Instant) -> Tally {
    tighten_timer_slack();
    let mut tally = Tally {
        hist: new_histogram(),
        sent: 0,
        ok: 0,
        non2xx: 0,
        errors: 0,
        unsent: 0,
    };
    let request = args.target.request();
    let mut reader = ResponseReader::new();
    let total = ((args.warmup + args.duration) * args.rate).floor() as u64;
    let warm = (args.warmup * args.rate).floor() as u64;
    // Hard stop: nothing runs longer than the schedule plus a grace period.
    let hard_stop =
        t0 + Duration::from_secs_f64(args.warmup + args.duration + 2.0) + 2 * args.timeout;
    let mut conn = connect(args).ok();
    let step = args.connections as u64;
    let mut i = lane as u64;
    while i < total {
        let measured = i >= warm;
        let due = t0 + Duration::from_secs_f64(i as f64 / args.rate);
        let now = Instant::now();
        if now >= hard_stop {
            // Everything still scheduled on this lane counts as unsent.
            let left = (warm.max(i)..total)
                .filter(|j| j % step == lane as u64)
                .count() as u64;
            tally.unsent += left;
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        i += step;
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(args) {
                Ok(s) => conn.insert(s),
                Err(_) => {
                    tally.errors += u64::from(measured);
                    continue;
                }
            },
        };
        if measured {
            tally.sent += 1;
        }
        match exchange(stream, &mut reader, &request) {
            Ok(resp) => {
                let done = Instant::now();
                if measured {
                    let us = done.saturating_duration_since(due).as_micros();
                    tally
                        .hist
                        .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                    if (200..300).contains(&resp.status) {
                        tally.ok += 1;
                    } else {
                        tally.non2xx += 1;
                    }
                }
                if !resp.keep_alive {
                    conn = None;
                    reader.reset();
                }
            }
            Err(_) => {
                tally.errors += u64::from(measured);
                conn = None;
                reader.reset();
            }
        }
    }
    tally
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("openloop: {e}");
            return ExitCode::from(2);
        }
    };
    // Give every lane time to connect before the first request is due.
    let t0 = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..args.connections)
        .map(|lane| {
            let a = args.clone();
            thread::spawn(move || run_connection(lane, &a, t0))
        })
        .collect();
    let mut hist = new_histogram();
    let (mut sent, mut ok, mut non2xx, mut errors, mut unsent) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for h in handles {
        match h.join() {
            Ok(t) => {
                if let Err(e) = hist.add(&t.hist) {
                    eprintln!("openloop: merging histograms: {e:?}");
                }
                sent += t.sent;
                ok += t.ok;
                non2xx += t.non2xx;
                errors += t.errors;
                unsent += t.unsent;
            }
            Err(_) => {
                eprintln!("openloop: a connection thread panicked");
                errors += 1;
            }
        }
    }
    let q = |x: f64| hist.value_at_quantile(x);
    let achieved = ok as f64 / args.duration;
    println!(
        "OPENLOOP rate={} duration_s={} connections={} sent={sent} ok={ok} non2xx={non2xx} \
errors={errors} unsent={unsent} achieved_rps={achieved:.1} p50_us={} p90_us={} p99_us={} \
p999_us={} max_us={} mean_us={:.1}",
        args.rate,
        args.duration,
        args.connections,
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        hist.max(),
        hist.mean(),
    );
    eprintln!(
        "openloop: {achieved:.0} req/s of {} asked over {} s; latency from intended send: \
p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; errors {errors}, non-2xx {non2xx}, unsent {unsent}",
        args.rate,
        args.duration,
        q(0.50),
        q(0.99),
        q(0.999),
        hist.max()
    );
    ExitCode::SUCCESS
}
