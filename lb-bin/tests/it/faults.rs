//! Local faults (issue 11): the host running short of file descriptors or
//! of local ports is never blamed on a backend. Under a small open-files
//! limit ringlb holds at most its connection budget and lets the other
//! clients wait in the listen backlog (no reset, no backend marked down,
//! the admin API answering throughout); when local ports run out (100
//! ports, `tcp_tw_reuse=0`, with and without `source_address`), the
//! failures are counted as local errors, logged at most once a second, no
//! backend goes down, and the service recovers as ports free up.
//! `ringlb check` refuses a `max_connections` the limit cannot honour.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, ringlb_command, with_nofile, Backend,
    BackendConfig, Deadline, LbConfig, Ringlb, TempDir, SMALL_STACK,
};
use crate::netns::Netns;

/// The open-files limit ringlb runs under: a budget of a few dozen.
const NOFILE: u64 = 220;
/// Idle clients connecting at once: several budgets' worth.
const CLIENTS: usize = 150;
/// ringlb's own health endpoint on the admin API.
const HEALTH_PATH: &str = "/router/api/v1/system/health";
/// Answers of the admin API must come within this.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A place freed on the budget is used by a waiting client within this.
const RECOVERY: Duration = Duration::from_secs(1);
/// How long each round waits for the clients it expects to be served.
const ROUND_DEADLINE: Duration = Duration::from_secs(15);
/// How long the clients beyond the budget are watched for a (wrong)
/// answer, while the health endpoint and the backends' states are polled.
const WAIT_WATCH: Duration = Duration::from_millis(500);

/// TCP health checks every 200 ms; two failures take a backend down.
const TCP_HEALTH: &str = "kind = \"tcp\"\ninterval = \"200ms\"\nfast_interval = \"100ms\"\n\
                          timeout = \"200ms\"\nrise = 1\nfall = 2";

/// A client of the test and what it read so far.
struct Client {
    stream: Option<TcpStream>,
    read: Vec<u8>,
    served: Option<Instant>,
}

/// Reads what each waiting client has; panics on a reset or an EOF (the
/// clients are idle: ringlb must never close them). Returns how many were
/// served by this call.
fn poll_clients(clients: &mut [Client], lb: &Ringlb, tag: &str) -> usize {
    let mut newly = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let Some(s) = &mut c.stream else { continue };
        if c.served.is_some() {
            continue;
        }
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "[{tag}] client {i} was closed by ringlb (EOF) instead of waiting\n{}",
                lb.report()
            ),
            Ok(n) => {
                c.read.extend_from_slice(&buf[..n]);
                if c.read.ends_with(b"\n") {
                    let greeting = String::from_utf8_lossy(&c.read).into_owned();
                    assert!(
                        greeting == "b1\n" || greeting == "b2\n",
                        "[{tag}] client {i} read {greeting:?}"
                    );
                    c.served = Some(Instant::now());
                    newly += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!(
                "[{tag}] client {i} failed instead of waiting (a reset is an accept-then-reset \
                 or a connection given up for a local shortage): {e}\n{}",
                lb.report()
            ),
        }
    }
    newly
}

/// ringlb's health endpoint answers 200 and no backend is down (by the
/// metrics and by the log).
fn assert_healthy(lb: &Ringlb, tag: &str) {
    let status = lb.admin_get(HEALTH_PATH, ADMIN_TIMEOUT);
    assert!(
        matches!(&status, Ok(line) if line.starts_with("HTTP/1.1 200")),
        "[{tag}] the admin health endpoint answered {status:?}\n{}",
        lb.report()
    );
    let healthy = lb.metrics().total("ringlb_backend_healthy");
    assert_eq!(
        healthy,
        2,
        "[{tag}] a backend was reported down for a local shortage\n{}",
        lb.report()
    );
    assert!(
        !lb.stderr().contains("backend is down"),
        "[{tag}] a backend was logged down\n{}",
        lb.report()
    );
}

#[test]
fn at_the_fd_limit_clients_wait_for_the_budget_and_no_backend_is_blamed() {
    let _shared = harness::shared();
    for_each_engine("faults::fd_budget", |engine| {
        let b1 = Backend::named("b1");
        let b2 = Backend::named("b2");
        let mut config = LbConfig::over(engine, &[&b1, &b2]);
        config.workers = 1;
        config.admin = true;
        config.nofile = Some(NOFILE);
        config.global_extra = vec!["pipe_pool = 4".to_owned()];
        config.service().health = TCP_HEALTH.to_owned();
        let lb = Ringlb::start(&config);
        let tag = engine;
        // A ringlb without a budget (the code before it) is expected to
        // serve every client at once.
        let budget = match lb.metrics().value("ringlb_connections_budget") {
            Some(b) => {
                let b = b as usize;
                assert!(
                    (8..CLIENTS / 2).contains(&b),
                    "[{tag}] budget {b} under nofile {NOFILE}\n{}",
                    lb.report()
                );
                b
            }
            None => CLIENTS,
        };
        println!("[{tag}] nofile {NOFILE}: budget {budget} connections");

        let sources = client_sources();
        let mut clients: Vec<Client> = (0..CLIENTS)
            .map(|i| {
                let s = connect_from(sources[i % sources.len()], lb.addr()).unwrap_or_else(|e| {
                    panic!("[{tag}] client {i} cannot connect: {e}\n{}", lb.report())
                });
                s.set_nonblocking(true).expect("non-blocking");
                Client {
                    stream: Some(s),
                    read: Vec::new(),
                    served: None,
                }
            })
            .collect();

        let mut served_total = 0;
        let mut rounds = 0;
        let mut worst_recovery = Duration::ZERO;
        let mut freed_at: Option<Instant> = None;
        while served_total < CLIENTS {
            rounds += 1;
            let expected = budget.min(CLIENTS - served_total);
            let deadline = Deadline::after(ROUND_DEADLINE);
            let mut this_round = 0;
            let mut last_check = Instant::now() - Duration::from_secs(1);
            while this_round < expected {
                this_round += poll_clients(&mut clients, &lb, tag);
                if last_check.elapsed() >= Duration::from_millis(100) {
                    assert_healthy(&lb, tag);
                    last_check = Instant::now();
                }
                assert!(
                    !deadline.passed(),
                    "[{tag}] round {rounds}: {this_round} of {expected} clients served within \
                     {ROUND_DEADLINE:?} (budget {budget}, {served_total} served before)\n{}",
                    lb.report()
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Some(freed) = freed_at {
                let first = clients
                    .iter()
                    .filter_map(|c| c.served.filter(|t| *t >= freed))
                    .min()
                    .expect("a client served this round");
                worst_recovery = worst_recovery.max(first - freed);
            }
            served_total += this_round;
            // The others wait: unanswered, not reset, while the admin API
            // answers and both backends stay up.
            let watch = Deadline::after(WAIT_WATCH);
            while !watch.passed() {
                let extra = poll_clients(&mut clients, &lb, tag);
                assert_eq!(
                    extra,
                    0,
                    "[{tag}] round {rounds}: a client beyond the budget ({budget}) was served \
                     while {budget} were held\n{}",
                    lb.report()
                );
                assert_healthy(&lb, tag);
            }
            let m = lb.metrics();
            if served_total < CLIENTS {
                assert_eq!(
                    m.value("ringlb_connections_active"),
                    Some(budget as u64),
                    "[{tag}] round {rounds}"
                );
            }
            // Close this round's clients: the waiting ones take their places.
            for c in clients.iter_mut().filter(|c| c.served.is_some()) {
                c.stream = None;
            }
            freed_at = Some(Instant::now());
        }
        let m = lb.metrics();
        assert!(
            m.value("ringlb_connections_budget_full_total").unwrap_or(0) >= 1,
            "[{tag}] the workers never paused at the budget"
        );
        assert_eq!(
            m.labelled("ringlb_local_errors_total", "kind", "emfile"),
            Some(0),
            "[{tag}] ringlb ran out of descriptors despite its budget\n{}",
            lb.report()
        );
        assert!(
            worst_recovery < RECOVERY,
            "[{tag}] waiting clients were served {worst_recovery:?} after places freed"
        );
        println!(
            "[{tag}] {CLIENTS} clients: {CLIENTS} served, 0 reset, in {rounds} rounds; \
             worst recovery after places freed: {} ms",
            worst_recovery.as_millis()
        );
        drop(lb);
        drop((b1, b2));
    });
}

/// `ringlb check` under the open-files limit `nofile`.
fn check_under(nofile: u64, config: &str) -> (bool, String) {
    let dir = TempDir::new("faults-check");
    let path = dir.write("ringlb.toml", config);
    let mut cmd: Command = ringlb_command();
    with_nofile(&mut cmd, nofile);
    let out = cmd
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run ringlb check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_refuses_a_max_connections_the_fd_limit_cannot_honour() {
    let _shared = harness::shared();
    let config = |max: &str| {
        format!(
            "[global]\nworkers = 1\npipe_pool = 4\nadmin = \"127.0.0.1:0\"\n\
             max_connections = {max}\n\n[[service]]\nname = \"web\"\n\
             listen = [\"127.0.0.1:0\"]\n[service.health]\nkind = \"tcp\"\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"127.0.0.1:9\"\n\
             [[service.backend]]\nname = \"b2\"\naddress = \"127.0.0.1:10\"\n"
        )
    };
    let (ok, text) = check_under(NOFILE, &config("100000"));
    assert!(
        !ok,
        "check accepted max_connections = 100000 under nofile {NOFILE}:\n{text}"
    );
    for part in [
        "max_connections = 100000 cannot be honoured",
        "open-files limit of 220",
        "fds are reserved",
        "costs 2 fds",
        "at most 38 fit",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    println!("check under nofile {NOFILE}: {}", text.trim());
    let (ok, text) = check_under(NOFILE, &config("30"));
    assert!(
        ok,
        "check refused max_connections = 30 under nofile {NOFILE}:\n{text}"
    );
    assert!(
        text.contains("connection budget: 30 client connections (max_connections = 30)"),
        "{text}"
    );
    let (ok, text) = check_under(NOFILE, &config("\"auto\""));
    assert!(
        ok && text.contains("connection budget: 38 client connections"),
        "{text}"
    );
    let (ok, text) = check_under(20_000, &config("\"auto\""));
    assert!(ok, "{text}");
    println!("check under nofile 20000: {}", text.trim());
}

// ---------------------------------------------------------------------------
// Ephemeral ports

/// Local ports of ringlb's namespace: 100, as issue 12 asks.
const PORT_RANGE: (u16, u16) = (40_000, 40_099);
/// Clients held at most while using the ports up: a port serves each of
/// the two backends once, so about twice the range fits.
const PORT_CLIENTS_MAX: usize = 600;
/// Once connects fail for want of a port: a client every [`SHORT_PACE`]
/// for [`SHORT_WINDOW`], so the shortage lasts a few seconds of logging.
const SHORT_WINDOW: Duration = Duration::from_millis(3_000);
const SHORT_PACE: Duration = Duration::from_millis(25);
/// Clients served again once the backends closed the held connections.
const RECOVERED_CLIENTS: usize = 20;
/// The first of them must be served within this of the ports freeing.
const PORT_RECOVERY: Duration = Duration::from_secs(2);

/// Connects from 127.0.0.1 on a port of our own (outside the namespace's
/// ephemeral range, which ringlb is meant to use up).
fn client_on_port(port: u16, dst: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// A client on a port of our own, greeted ("b1\n" or "b2\n": Ok) or reset
/// for want of a local port on ringlb's side (Err).
fn greeted_on_port(port: u16, lb: &Ringlb, tag: &str) -> Result<TcpStream, ()> {
    let mut s = match client_on_port(port, lb.addr()) {
        Ok(s) => s,
        // A reset may come before the connect returns (ringlb accepted,
        // found no local port to reach a backend from, and reset it).
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(()),
        Err(e) => panic!("[{tag}] client on port {port}: {e}\n{}", lb.report()),
    };
    let mut line = [0u8; 3];
    match s.read_exact(&mut line) {
        Ok(()) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(()),
        Err(e) => panic!(
            "[{tag}] client on port {port} neither greeted nor reset: {e}\n{}",
            lb.report()
        ),
    }
}

/// A backend on 127.0.0.1 that greets with its name and holds each
/// connection (reading what comes) until [`Holder::close_all`], then
/// closes first: the TIME_WAIT stays on its side, so ringlb's port is free
/// again at once even with `tcp_tw_reuse=0`. Its acceptor polls a
/// non-blocking listener, so stopping it needs no connect (there may be no
/// local port left for one).
struct Holder {
    name: &'static str,
    addr: SocketAddr,
    /// Set: the acceptor returns.
    stop: Arc<AtomicBool>,
    /// Set: every held connection is closed (FIN) by the backend.
    close: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Holder {
    fn start(name: &'static str) -> Holder {
        let listener = harness::listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("holder addr");
        let stop = Arc::new(AtomicBool::new(false));
        let close = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (stop, close) = (Arc::clone(&stop), Arc::clone(&close));
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((s, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let close = Arc::clone(&close);
                    let _ = thread::Builder::new()
                        .stack_size(SMALL_STACK)
                        .spawn(move || hold(s, name, &close));
                }
            })
        };
        Holder {
            name,
            addr,
            stop,
            close,
            acceptor: Some(acceptor),
        }
    }

    fn close_all(&self) {
        self.close.store(true, Ordering::SeqCst);
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.close.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// One connection of a [`Holder`]: greets, reads until the peer ends or
/// `close` is set (checked every 20 ms), then closes.
fn hold(mut s: TcpStream, name: &str, close: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    if s.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 256];
    while !close.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Sockets of the calling thread's namespace in TIME_WAIT on a local port
/// in [`PORT_RANGE`].
fn time_wait_in_range() -> usize {
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            f.get(3) == Some(&"06")
                && port.is_some_and(|p| (PORT_RANGE.0..=PORT_RANGE.1).contains(&p))
        })
        .count()
}

#[test]
fn out_of_local_ports_no_backend_goes_down_and_the_service_recovers() {
    let _shared = harness::shared();
    for_each_engine("faults::local_ports", |engine| {
        for source in [None, Some("127.0.0.2")] {
            // A fresh namespace per run: no TIME_WAIT of the one before.
            let name = format!(
                "ringlb-faults-{}-{engine}-{}",
                std::process::id(),
                if source.is_some() { "src" } else { "any" }
            );
            let range = format!(
                "net.ipv4.ip_local_port_range={} {}",
                PORT_RANGE.0, PORT_RANGE.1
            );
            let sysctls = [range, "net.ipv4.tcp_tw_reuse=0".to_owned()];
            match Netns::make(&name, &sysctls) {
                Ok(ns) => ns.run(|| local_ports(engine, source)),
                Err(why) => crate::netns::skipped("faults::local_ports", &why),
            }
        }
    });
}

fn local_ports(engine: &'static str, source: Option<&str>) {
    let tag = format!("{engine}, source_address {}", source.unwrap_or("unset"));
    let tag = tag.as_str();
    let holders = [Holder::start("b1"), Holder::start("b2")];
    let mut config = LbConfig::single(
        engine,
        holders
            .iter()
            .map(|h| BackendConfig::new(h.name, h.addr))
            .collect(),
    );
    config.workers = 1;
    config.admin = true;
    config.service().health = TCP_HEALTH.to_owned();
    config.service().connect_attempts = 2;
    // Every client comes from 127.0.0.1: maglev would send all to one
    // backend; round-robin uses both destinations.
    config.service().balance = "round-robin".to_owned();
    if let Some(source) = source {
        config
            .service()
            .extra
            .push(format!("source_address = \"{source}\""));
    }
    // Declared after the holders: dropped (killed) before them.
    let lb = Ringlb::start(&config);
    let started = Instant::now();
    let mut port = 50_000u16;
    let mut next_port = || {
        port += 1;
        port
    };
    // Hold clients until connects from ringlb fail for want of a port.
    let mut held = Vec::new();
    let mut reset = 0;
    while reset < 5 && held.len() < PORT_CLIENTS_MAX {
        match greeted_on_port(next_port(), &lb, tag) {
            Ok(s) => held.push(s),
            Err(()) => reset += 1,
        }
    }
    let most_held = held.len();
    assert!(
        reset > 0,
        "[{tag}] {PORT_CLIENTS_MAX} clients all served: the ports were not used up\n{}",
        lb.report()
    );
    if source.is_some() {
        // IP_BIND_ADDRESS_NO_PORT: a port is taken per destination, not
        // per bind, so more connections than ports fit.
        assert!(
            most_held > usize::from(PORT_RANGE.1 - PORT_RANGE.0 + 1),
            "[{tag}] {most_held} connections held from 100 ports: ports are not shared \
             between the two backends (bind without IP_BIND_ADDRESS_NO_PORT?)\n{}",
            lb.report()
        );
    }
    // The shortage goes on for a while: new clients are reset, the health
    // checks run into it too, no backend goes down.
    let window = Deadline::after(SHORT_WINDOW);
    let (mut refused, mut tried) = (0, 0);
    let mut last_check = Instant::now() - Duration::from_secs(1);
    while !window.passed() {
        tried += 1;
        match greeted_on_port(next_port(), &lb, tag) {
            Ok(s) => held.push(s),
            Err(()) => refused += 1,
        }
        if last_check.elapsed() >= Duration::from_millis(250) {
            assert_healthy(&lb, tag);
            last_check = Instant::now();
        }
        std::thread::sleep(SHORT_PACE);
    }
    assert_healthy(&lb, tag);
    let m = lb.metrics();
    let kinds = ["eaddrnotavail", "eaddrinuse"];
    let counted: Vec<u64> = kinds
        .iter()
        .map(|k| {
            m.labelled("ringlb_local_errors_total", "kind", k)
                .unwrap_or(0)
        })
        .collect();
    let local: u64 = counted.iter().sum();
    let failures = m.total("ringlb_backend_connect_failures_total");
    assert_eq!(
        failures,
        0,
        "[{tag}] a local shortage was counted as backend connect failures\n{}",
        lb.report()
    );
    assert!(
        local >= (reset + refused) as u64,
        "[{tag}] {} clients refused for want of a port, {local} local errors counted\n{}",
        reset + refused,
        lb.report()
    );
    // Logged at most once a second per kind over the run.
    let elapsed = started.elapsed();
    let log = lb.stderr();
    let mut logged = Vec::new();
    for kind in kinds {
        let lines = log
            .lines()
            .filter(|l| l.contains("local error") && l.contains(kind))
            .count();
        let bound = elapsed.as_secs() as usize + 1;
        assert!(
            lines <= bound,
            "[{tag}] {lines} log lines of {kind} in {elapsed:?} (at most one a second)\n{log}"
        );
        logged.push(lines);
    }
    assert!(
        logged.iter().sum::<usize>() >= 1,
        "[{tag}] the shortage was never logged\n{log}"
    );
    let in_time_wait = time_wait_in_range();
    // The backends close the held connections first: ringlb's ports are
    // free again without a TIME_WAIT on its side; the service recovers.
    for h in &holders {
        h.close_all();
    }
    let closing = Deadline::after(Duration::from_secs(5));
    for (i, mut s) in held.into_iter().enumerate() {
        s.set_read_timeout(Some(closing.remaining().max(Duration::from_millis(1))))
            .expect("read timeout");
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(
            r.is_ok(),
            "[{tag}] held client {i}: {r:?} instead of the backend's FIN\n{}",
            lb.report()
        );
    }
    let freed = Instant::now();
    let deadline = Deadline::after(PORT_RECOVERY);
    let mut served = Vec::new();
    let mut first = None;
    while served.len() < RECOVERED_CLIENTS {
        match greeted_on_port(next_port(), &lb, tag) {
            Ok(s) => {
                first.get_or_insert_with(|| freed.elapsed());
                served.push(s);
            }
            Err(()) => {
                assert!(
                    !deadline.passed(),
                    "[{tag}] {} of {RECOVERED_CLIENTS} clients served {PORT_RECOVERY:?} after \
                     the ports were freed\n{}",
                    served.len(),
                    lb.report()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert_healthy(&lb, tag);
    println!(
        "[{tag}] ports {}-{} (tw_reuse=0): {most_held} clients held (2 backends), then \
         {} refused for want of a port ({tried} tried in {} ms of shortage); local errors \
         {counted:?} ({kinds:?}), logged {logged:?} lines in {} ms; 0 backend failures, none \
         down; {in_time_wait} ports in TIME_WAIT (health probes); served again {} ms after \
         the backends closed, {RECOVERED_CLIENTS} clients",
        PORT_RANGE.0,
        PORT_RANGE.1,
        reset + refused,
        SHORT_WINDOW.as_millis(),
        elapsed.as_millis(),
        first.unwrap_or_default().as_millis()
    );
}
