//! The TLS-safe retry (`retry_before_response`, issue 14 §4): a backend
//! that closes or resets before its first byte, while the client sent only
//! a ClientHello, costs the client nothing; the hello goes to the next
//! backend. Real processes throughout: `openssl s_server` backends with
//! certificates from a test CA (rcgen), SIGKILLed under a loop of real,
//! verified TLS handshakes (rustls), on both engines; and a backend that
//! resets every connection, with the bytes checked end to end.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::harness::{
    self, connect_from, for_each_engine, for_each_variant, seeded_bytes, Backend, BackendConfig,
    Deadline, LbConfig, Ringlb, Variant, LOCALHOST,
};
use crate::test_ca::TestCa;

/// Kills of the victim backend per run.
const KILLS: usize = 20;
/// Parallel client loops (each one handshake after another).
const CLIENTS: usize = 4;
/// Handshakes done between a restart and the next kill.
const BETWEEN_KILLS: usize = 20;
/// Bound on the handshakes of one client loop.
const MAX_HANDSHAKES: usize = 20_000;

/// A ClientHello curl sent (SNI, TLS 1.3): lb-core's reader's capture.
const HELLO: &[u8] = include_bytes!("../../../lb-core/src/fuzz/corpus/tls_hello/curl_sni.bin");

/// A test CA and a server certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files for openssl.
struct Certs {
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn generate() -> Certs {
        let ca = TestCa::new("tls-retry");
        let (cert, key) = ca.server_pem_files("server", &["localhost"], &[LOCALHOST]);
        Certs { ca, cert, key }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.ca.rustls_client()
    }
}

/// `openssl s_server -www` on 127.0.0.1:`port`: one process, one
/// connection at a time (the others wait in its accept queue). Killed on
/// drop.
struct TlsServer {
    child: Child,
}

impl TlsServer {
    /// Starts it and waits until it listens; None if openssl is missing.
    fn start(certs: &Certs, port: u16) -> Option<TlsServer> {
        let child = Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&certs.cert)
            .arg("-key")
            .arg(&certs.key)
            .args(["-www", "-quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut server = TlsServer { child };
        let deadline = Deadline::after(Duration::from_secs(10));
        while accept_queue(port).is_none() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("openssl s_server on port {port} exited at start: {status}");
            }
            assert!(
                !deadline.passed(),
                "openssl s_server never listened on {port}"
            );
            thread::yield_now();
        }
        Some(server)
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) takes plain integers. The pid is our child's and
        // is only signalled while not reaped (`kill` and `drop` wait for
        // it once, and `Child` remembers), so it names no other process.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Its state letter in /proc (`T` once stopped).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    /// Sockets it holds: its listener, and the connection it is serving
    /// if any.
    fn sockets(&self) -> usize {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return 0;
        };
        fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    }

    /// Stops it (SIGSTOP) at a moment it serves no connection, so that
    /// every connection it holds is in its accept queue, never answered.
    /// Caught busy, it runs on until that connection is done, and is
    /// stopped again.
    fn stop_idle(&self) {
        let deadline = Deadline::after(Duration::from_secs(30));
        loop {
            self.signal(libc::SIGSTOP);
            while self.state() != Some('T') {
                assert!(!deadline.passed(), "the backend did not stop");
                thread::yield_now();
            }
            if self.sockets() == 1 {
                return;
            }
            self.signal(libc::SIGCONT);
            while self.sockets() > 1 {
                assert!(!deadline.passed(), "the backend was never idle");
                thread::yield_now();
            }
        }
    }

    /// SIGKILL, and waits for it to be gone.
    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // Not reaped yet (a reaped child answers with its saved status).
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// The accept queue of the socket listening on 127.0.0.1:`port` (the
/// `rx_queue` of its LISTEN line in /proc/net/tcp), None if none listens.
/// The kernel lists listening sockets first: the read stops at the first
/// other one (tens of thousands of TIME_WAIT lines follow a busy test).
fn accept_queue(port: u16) -> Option<u32> {
    let table = BufReader::new(File::open("/proc/net/tcp").ok()?);
    let local = format!("0100007F:{port:04X}");
    for line in table.lines().skip(1) {
        let line = line.ok()?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        if fields.get(1) == Some(&local.as_str()) {
            let queues = fields.get(4)?;
            return u32::from_str_radix(queues.split_once(':')?.1, 16).ok();
        }
    }
    None
}

/// Three ports free now on 127.0.0.1 below the ephemeral range, so that
/// no outgoing connection (ringlb's own to the other backends) takes one
/// while its server is down between a kill and its restart.
fn fixed_ports() -> [u16; 3] {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let base = low.saturating_sub(10_000).max(1024);
    let start = (std::process::id() as u16) % 5_000;
    let mut free = (0..5_000u16)
        .map(|i| base + (start + i) % 5_000)
        .filter(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok());
    let mut next = || free.next().expect("free ports below the ephemeral range");
    [next(), next(), next()]
}

/// A socket that counts the bytes read from it.
struct Counting {
    inner: TcpStream,
    got: usize,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.got += n;
        Ok(n)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What the client loops saw.
#[derive(Default)]
struct Tally {
    /// Verified handshakes with an answer to a request.
    done: AtomicUsize,
    /// Failures with no byte from the server: what the retry must save.
    before_answer: AtomicUsize,
    /// Failures after the server's first byte (never replayable).
    after_answer: AtomicUsize,
    /// The first failures' errors.
    errors: Mutex<Vec<String>>,
}

/// One verified TLS handshake through `lb`, a GET and its status line.
fn handshake(config: &Arc<rustls::ClientConfig>, lb: SocketAddr) -> Result<(), (usize, String)> {
    let inner = connect_from(LOCALHOST, lb).map_err(|e| (0, format!("connect: {e}")))?;
    let name = ServerName::try_from("localhost").expect("a server name");
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| (0, format!("client: {e}")))?;
    let mut tls = rustls::StreamOwned::new(conn, Counting { inner, got: 0 });
    let mut status = [0u8; 15];
    let result = (|| {
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        tls.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        tls.read_exact(&mut status)
    })();
    match result {
        Ok(()) if &status == b"HTTP/1.0 200 ok" => Ok(()),
        Ok(()) => Err((tls.sock.got, format!("answer {status:?}"))),
        Err(e) => Err((tls.sock.got, e.to_string())),
    }
}

/// Client loops against `lb` until `stop`.
fn client_loops(
    certs: &Certs,
    lb: SocketAddr,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<thread::JoinHandle<()>> {
    let config = certs.client_config();
    (0..CLIENTS)
        .map(|_| {
            let (config, stop, tally) = (config.clone(), stop.clone(), tally.clone());
            thread::spawn(move || {
                let deadline = Deadline::after(Duration::from_secs(240));
                for _ in 0..MAX_HANDSHAKES {
                    if stop.load(Ordering::SeqCst) || deadline.passed() {
                        return;
                    }
                    match handshake(&config, lb) {
                        Ok(()) => {
                            tally.done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err((got, error)) => {
                            let class = if got == 0 {
                                &tally.before_answer
                            } else {
                                &tally.after_answer
                            };
                            class.fetch_add(1, Ordering::SeqCst);
                            let mut errors = tally.errors.lock().unwrap();
                            if errors.len() < 5 {
                                errors.push(format!("{error} (after {got} bytes)"));
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// What one run of the kill scenario measured.
struct Run {
    done: usize,
    before_answer: usize,
    after_answer: usize,
    replays: u64,
    errors: Vec<String>,
}

/// Three `s_server` backends behind ringlb (round-robin, `retry` as the
/// service's `retry_before_response`), the client loops running, and one
/// backend killed [`KILLS`] times: each time stopped while idle, left to
/// gather connections in its accept queue (connected by ringlb, hello
/// sent, never answered), SIGKILLed (the kernel resets them) and
/// restarted on its port. None if openssl is missing.
fn kill_run(engine: &'static str, retry: &str, certs: &Certs) -> Option<Run> {
    let ports = fixed_ports();
    let mut servers: Vec<TlsServer> = Vec::new();
    for port in ports {
        servers.push(TlsServer::start(certs, port)?);
    }
    let backends = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            BackendConfig::new(&format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], *port)))
        })
        .collect();
    let mut config = LbConfig::single(engine, backends);
    config.admin = true;
    let service = config.service();
    service.balance = "round-robin".to_owned();
    service.connect_attempts = 3;
    service
        .extra
        .push(format!("retry_before_response = {retry:?}"));
    let lb = Ringlb::start(&config);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = client_loops(certs, lb.addr(), &stop, &tally);
    let victim_port = ports[0];
    let mut victim = servers.remove(0);
    for kill in 0..KILLS {
        victim.stop_idle();
        let deadline = Deadline::after(Duration::from_secs(10));
        while accept_queue(victim_port).unwrap_or(0) < 2 {
            assert!(
                !deadline.passed(),
                "kill {kill}: no connection reached the stopped backend\n{}",
                lb.report()
            );
            thread::yield_now();
        }
        victim.kill();
        victim = TlsServer::start(certs, victim_port).expect("openssl ran before");
        // Back in rotation: some handshakes go by before the next death.
        let target = tally.done.load(Ordering::SeqCst) + BETWEEN_KILLS;
        let deadline = Deadline::after(Duration::from_secs(20));
        while tally.done.load(Ordering::SeqCst) < target {
            assert!(
                !deadline.passed(),
                "kill {kill}: the clients made no progress\n{}",
                lb.report()
            );
            thread::yield_now();
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("a client loop");
    }
    let replays = lb
        .metrics()
        .labelled("ringlb_tls_replays_total", "service", "web")
        .unwrap_or(0);
    drop(victim);
    let errors = std::mem::take(&mut *tally.errors.lock().unwrap());
    Some(Run {
        done: tally.done.load(Ordering::SeqCst),
        before_answer: tally.before_answer.load(Ordering::SeqCst),
        after_answer: tally.after_answer.load(Ordering::SeqCst),
        replays,
        errors,
    })
}

#[test]
fn a_backend_killed_under_tls_handshakes_costs_no_handshake_with_retry_and_some_without() {
    // Busy: three openssl processes, six client loops, SIGSTOP polling.
    let _alone = harness::exclusive();
    if Command::new("openssl").arg("version").output().is_err() {
        println!("a_backend_killed_under_tls_handshakes: SKIPPED: no openssl binary");
        return;
    }
    let certs = Certs::generate();
    for_each_engine("a_backend_killed_under_tls_handshakes", |engine| {
        let Some(tls) = kill_run(engine, "tls", &certs) else {
            println!("SKIPPED: openssl s_server did not start");
            return;
        };
        println!(
            "{engine} retry \"tls\": {KILLS} kills, {} handshakes, {} failed before an answer, \
             {} after, {} hellos replayed; errors: {:?}",
            tls.done, tls.before_answer, tls.after_answer, tls.replays, tls.errors
        );
        assert_eq!(
            (tls.before_answer, tls.after_answer),
            (0, 0),
            "{engine}: handshakes failed with the retry on: {:?}",
            tls.errors
        );
        assert!(tls.replays > 0, "{engine}: no hello was replayed");
        assert!(
            tls.done >= KILLS * BETWEEN_KILLS,
            "{engine}: too few handshakes to judge"
        );

        let off = kill_run(engine, "off", &certs).expect("openssl ran before");
        println!(
            "{engine} retry \"off\": {KILLS} kills, {} handshakes, {} failed before an answer, \
             {} after; errors: {:?}",
            off.done, off.before_answer, off.after_answer, off.errors
        );
        assert!(
            off.before_answer > 0,
            "{engine}: with the retry off no handshake failed: the scenario proves nothing"
        );
        assert_eq!(off.replays, 0, "{engine}: replays with the retry off");
    });
}

/// A backend that reads what it is sent, reports it, and resets.
fn resetter(got: mpsc::Sender<Vec<u8>>) -> Backend {
    Backend::resetting("resetter", got)
}

#[test]
fn a_backend_resetting_every_connection_before_answering_hands_the_client_to_the_next_byte_exact() {
    let _shared = harness::shared();
    for_each_variant("a_backend_resetting_every_connection", |engine| {
        // Alone, and behind SNI routing (the hello is peeked to pick the
        // service, then held and replayed the same way).
        for sni in [false, true] {
            resetter_hands_over(engine, sni);
        }
    });
}

fn resetter_hands_over(engine: Variant, sni: bool) {
    let (got_tx, got) = mpsc::channel();
    let bad = resetter(got_tx);
    let good = Backend::echo("good");
    let mut config = LbConfig::over(engine, &[&bad, &good]);
    config.workers = 1;
    config.admin = true;
    config.service().balance = "round-robin".to_owned();
    config.service().connect_attempts = 2;
    if sni {
        // The name in HELLO (curl's, captured).
        config.service().extra = vec!["sni = [\"art.example.com\"]".to_owned()];
    }
    let lb = Ringlb::start(&config);
    let engine = format!("{engine:?} sni={sni}");
    for i in 0..4u64 {
        let mut c = connect_from(LOCALHOST, lb.addr()).expect("connect to ringlb");
        c.write_all(HELLO).expect("send the hello");
        // The echo backend's answer (the hello back) ends the hold.
        let mut answer = vec![0u8; HELLO.len()];
        c.read_exact(&mut answer).expect("the hello echoed");
        assert_eq!(answer, HELLO, "{engine}: client {i}");
        let rest = seeded_bytes(i, 64 * 1024);
        c.write_all(&rest).expect("send the rest");
        let mut back = vec![0u8; rest.len()];
        c.read_exact(&mut back).expect("the rest echoed");
        assert!(back == rest, "{engine}: client {i}: the rest differs");
    }
    let mut resets = 0u64;
    while let Ok(bytes) = got.try_recv() {
        assert_eq!(bytes, HELLO, "{engine}: the resetter got the hello");
        resets += 1;
    }
    assert!(
        resets >= 1,
        "{engine}: round-robin never chose the resetter"
    );
    assert_eq!(good.accepted(), 4, "{engine}: every client on the echo");
    let metrics = lb.metrics();
    let replays = metrics.labelled("ringlb_tls_replays_total", "service", "web");
    assert_eq!(replays, Some(resets), "{engine}: replays counted");
}
