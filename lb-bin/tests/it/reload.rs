//! Live reload (SIGHUP): a good file is applied in-process while a client
//! loop keeps opening connections (none may fail), a broken one is refused
//! with its reason and the running config keeps serving, and listen
//! addresses come and go.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::{
    self, client_sources, connect_from, for_each_engine, read_line, Backend, BackendConfig,
    Deadline, LbConfig, Ringlb,
};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the background client loop runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

fn backend_for(src: IpAddr, lb: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_from(src, lb)?;
    read_line(&mut s)
}

/// Opens connections from every client source in turn until told to stop
/// (or LOAD_LIMIT); counts attempts and failures.
struct Load {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(lb: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let (st, at, fa) = (stop.clone(), attempts.clone(), failures.clone());
        let thread = thread::spawn(move || {
            let deadline = Deadline::after(LOAD_LIMIT);
            let sources = client_sources();
            let mut errors = Vec::new();
            let mut i = 0;
            while !st.load(Ordering::SeqCst) && !deadline.passed() {
                at.fetch_add(1, Ordering::SeqCst);
                let src = sources[i % sources.len()];
                if let Err(e) = backend_for(src, lb) {
                    fa.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{src}: {e}"));
                }
                i += 1;
            }
            errors
        });
        Load {
            stop,
            attempts,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (attempts, failures, first errors).
    fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self
            .thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        (
            self.attempts.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
            errors,
        )
    }
}

#[test]
fn sighup_applies_a_good_config_under_load_and_refuses_a_broken_one() {
    let _shared = harness::shared();
    for_each_engine("reload", |engine| {
        let b1 = Backend::named("b1");
        let b2 = Backend::named("b2");
        let b3 = Backend::named("b3");
        let mut lb = Ringlb::start(&LbConfig::over(engine, &[&b1, &b2]));
        let addr = lb.addr();
        let load = Load::start(addr);

        // Add b3: some clients must reach it afterwards.
        let with_b3 = LbConfig::over(engine, &[&b1, &b2, &b3]).to_toml();
        lb.rewrite_config(&with_b3);
        lb.signal(libc::SIGHUP);
        assert!(
            lb.wait_for_log("config reloaded", RELOAD_TIMEOUT).is_some(),
            "[{engine}] no `config reloaded` after SIGHUP\n{}",
            lb.report()
        );
        let reaches_b3 = |lb: SocketAddr| {
            client_sources()
                .iter()
                .any(|&s| backend_for(s, lb).is_ok_and(|n| n == "b3"))
        };
        assert!(
            reaches_b3(addr),
            "[{engine}] after adding b3, no client reaches it\n{}",
            lb.report()
        );

        // A broken file is refused, with its reason, and b3 keeps serving.
        lb.rewrite_config("[[service]]\nname = \"web\"\nlisten = [\"not an address\"]\n");
        lb.signal(libc::SIGHUP);
        let refused = lb.wait_for_log("reload refused", RELOAD_TIMEOUT);
        assert!(
            refused
                .as_deref()
                .is_some_and(|l| l.contains("not an address") || l.contains("listen")),
            "[{engine}] a broken config must be refused with its reason, got {refused:?}\n{}",
            lb.report()
        );
        assert!(
            reaches_b3(addr),
            "[{engine}] the running config must keep serving after a refused reload"
        );

        let (attempts, failures, errors) = load.finish();
        assert!(attempts > 0);
        assert_eq!(
            failures,
            0,
            "[{engine}] {failures} of {attempts} connections failed across reloads: {:?}\n{}",
            &errors[..errors.len().min(5)],
            lb.report()
        );
    });
}

#[test]
fn reload_adds_and_removes_listen_addresses_and_keeps_established_connections() {
    let _shared = harness::shared();
    for_each_engine("reload-listen", |engine| {
        let b1 = Backend::named("b1");
        let config = LbConfig::over(engine, &[&b1]);
        let mut lb = Ringlb::start(&config);
        let first = lb.addr();
        let src = client_sources()[0];
        let mut established = connect_from(src, first).unwrap();
        assert_eq!(read_line(&mut established).unwrap(), "b1");

        // A second service on a new address.
        let mut two = config.clone();
        let mut other = two.services[0].clone();
        other.name = "other".into();
        other.backends = vec![BackendConfig::from(&b1)];
        two.services.push(other);
        lb.rewrite_config(&two.to_toml());
        lb.signal(libc::SIGHUP);
        let line = lb
            .wait_for_log("listening service=other", RELOAD_TIMEOUT)
            .unwrap_or_else(|| {
                panic!(
                    "[{engine}] no listener for the new service\n{}",
                    lb.report()
                )
            });
        let new_addr: SocketAddr = harness::parse_listening(&line).unwrap().1.parse().unwrap();
        assert_eq!(backend_for(src, new_addr).unwrap(), "b1");

        // Remove the first service: its address stops accepting, the
        // established connection through it keeps flowing.
        let mut only_other = two.clone();
        only_other.services.remove(0);
        lb.rewrite_config(&only_other.to_toml());
        lb.signal(libc::SIGHUP);
        assert!(
            lb.wait_for_log("stopped listening", RELOAD_TIMEOUT)
                .is_some(),
            "{}",
            lb.report()
        );
        let deadline = Deadline::after(RELOAD_TIMEOUT);
        while backend_for(src, first).is_ok() {
            assert!(
                !deadline.passed(),
                "[{engine}] removed address still serves\n{}",
                lb.report()
            );
            thread::yield_now();
        }
        use std::io::Write;
        established.write_all(b"still here\n").unwrap();
        assert_eq!(read_line(&mut established).unwrap(), "still here");
        assert_eq!(backend_for(src, new_addr).unwrap(), "b1");
    });
}
