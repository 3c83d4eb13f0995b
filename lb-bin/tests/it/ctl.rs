//! `ringlb ctl` against a real ringlb with its admin API on: `status` (the
//! table and `--json`), drain/enable/weight change what
//! `GET /api/v1/services` shows, join and leave, `reload` waits for the
//! outcome (0 applied; 1 with the reason when refused: bad TOML, a listen
//! address another socket holds), and a closed port or an admin API that
//! is off exit 2 with what to do. And `ringlb demo` with 8080 taken picks
//! another port, says so, and serves its status page.
//!
//! One engine is enough: this is the control plane's client, not the data
//! path.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    self, ringlb_command, run_to_exit, Backend, Deadline, Finished, LbConfig, Ringlb, TempDir,
    CLIENT_CONNECT_TIMEOUT, IO_TIMEOUT, LOCALHOST, READY_TIMEOUT,
};

const TOKEN: &str = "ctl-test-token-0123456789";
const JOIN_KEY: &str = "ctl-test-join-key-0123456789";

/// ringlb with the admin API on, a token and a join key, over two named
/// backends `b1`, `b2` of service `web`.
fn start(backends: &[&Backend]) -> (Ringlb, LbConfig) {
    let mut config = LbConfig::over(harness::engines()[0], backends);
    config.admin = true;
    config.workers = 1;
    config.global_extra.extend([
        format!("admin_token = {TOKEN:?}"),
        format!("join_key = {JOIN_KEY:?}"),
    ]);
    (Ringlb::start(&config), config)
}

/// `ringlb ctl --admin ADDR [--token-file F] ARGS…`, to completion.
fn ctl(admin: SocketAddr, token: Option<&TempDir>, args: &[&str]) -> Finished {
    let admin = admin.to_string();
    let mut all: Vec<&OsStr> = vec![OsStr::new("ctl"), OsStr::new("--admin"), OsStr::new(&admin)];
    let token_file = token.map(|dir| dir.write("token", &format!("{TOKEN}\n")));
    if let Some(file) = &token_file {
        all.push(OsStr::new("--token-file"));
        all.push(file.as_os_str());
    }
    all.extend(args.iter().map(OsStr::new));
    run_to_exit(&all)
}

fn code(finished: &Finished) -> Option<i32> {
    finished.status.code()
}

/// `GET /api/v1/services`, read with a plain socket (not with ctl).
fn services(admin: SocketAddr) -> Value {
    let mut s = TcpStream::connect_timeout(&admin, CLIENT_CONNECT_TIMEOUT).expect("connect admin");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"GET /api/v1/services HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).expect("JSON")
}

/// The backend `name` of service `web` in a services document.
fn backend(doc: &Value, name: &str) -> Value {
    doc["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {doc}"))
        .clone()
}

#[test]
fn ctl_status_prints_a_table_and_the_json() {
    let b1 = Backend::named("b1");
    let b2 = Backend::named("b2");
    let (lb, _) = start(&[&b1, &b2]);
    let admin = lb.admin_addr();

    let table = ctl(admin, None, &["status"]);
    assert_eq!(code(&table), Some(0), "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("service web: listen ") && lines[0].contains("2 of 2 backends usable"),
        "{}",
        table.stdout
    );
    let header = lines
        .iter()
        .find(|l| l.starts_with("SERVICE"))
        .unwrap_or_else(|| panic!("no header:\n{}", table.stdout));
    for column in [
        "BACKEND", "ADDRESS", "STATE", "HEALTH", "WEIGHT", "ACTIVE", "IN/OUT", "REASON",
    ] {
        assert!(header.contains(column), "{header}");
    }
    for b in [&b1, &b2] {
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(b.name()))
            .unwrap_or_else(|| panic!("no row for {}:\n{}", b.name(), table.stdout));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], "web", "{row}");
        assert_eq!(cells[2], b.addr().to_string(), "{row}");
        assert_eq!(cells[3], "HEALTHY", "{row}");
        assert_eq!(cells[5], "100", "{row}");
    }

    let json = ctl(admin, None, &["status", "--json"]);
    assert_eq!(code(&json), Some(0), "{}", json.stderr);
    let doc: Value = serde_json::from_str(&json.stdout).expect("--json prints JSON");
    let names: Vec<&str> = doc["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, ["b1", "b2"], "{doc}");
}

#[test]
fn ctl_drain_enable_weight_join_and_leave_change_what_the_api_shows() {
    let b1 = Backend::named("b1");
    let b2 = Backend::named("b2");
    let (lb, _) = start(&[&b1, &b2]);
    let admin = lb.admin_addr();
    let dir = TempDir::new("ctltoken");

    // Without the token the server refuses, and ctl says how to give it.
    let refused = ctl(admin, None, &["drain", "b1"]);
    assert_eq!(code(&refused), Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("needs the admin token") && refused.stderr.contains("--token-file"),
        "{}",
        refused.stderr
    );
    assert_eq!(backend(&services(admin), "b1")["admin"], "enabled");

    // A bare backend name is looked up; SERVICE/BACKEND is taken as is.
    let drained = ctl(admin, Some(&dir), &["drain", "b1"]);
    assert_eq!(code(&drained), Some(0), "{}", drained.stderr);
    assert!(
        drained.stdout.starts_with("web/b1: DRAINING"),
        "{}",
        drained.stdout
    );
    assert_eq!(backend(&services(admin), "b1")["admin"], "drain");

    let disabled = ctl(admin, Some(&dir), &["disable", "web/b2"]);
    assert_eq!(code(&disabled), Some(0), "{}", disabled.stderr);
    assert_eq!(backend(&services(admin), "b2")["state"], "DISABLED");

    for name in ["web/b1", "b2"] {
        let enabled = ctl(admin, Some(&dir), &["enable", name]);
        assert_eq!(code(&enabled), Some(0), "{}", enabled.stderr);
    }
    let doc = services(admin);
    assert_eq!(backend(&doc, "b1")["admin"], "enabled");
    assert_eq!(backend(&doc, "b2")["admin"], "enabled");

    let weighted = ctl(admin, Some(&dir), &["weight", "b2", "7"]);
    assert_eq!(code(&weighted), Some(0), "{}", weighted.stderr);
    assert_eq!(backend(&services(admin), "b2")["weight"], 7);

    // What the server refuses is exit 1 with its reason.
    let too_heavy = ctl(admin, Some(&dir), &["weight", "b2", "10001"]);
    assert_eq!(code(&too_heavy), Some(1), "{}", too_heavy.stderr);
    assert!(too_heavy.stderr.contains("10001"), "{}", too_heavy.stderr);
    let unknown = ctl(admin, Some(&dir), &["drain", "nosuch"]);
    assert_eq!(code(&unknown), Some(1), "{}", unknown.stderr);
    assert!(
        unknown
            .stderr
            .contains("no backend named \"nosuch\" (backends: web/b1, web/b2)"),
        "{}",
        unknown.stderr
    );
    let no_service = ctl(admin, Some(&dir), &["drain", "api/b1"]);
    assert_eq!(code(&no_service), Some(1), "{}", no_service.stderr);

    // Join and leave take the join key (from a file here), not the token.
    let key = dir.write("join.key", JOIN_KEY);
    let node = Backend::named("b3");
    let node_addr = node.addr().to_string();
    let key_arg = key.to_str().expect("utf-8 path");
    let joined = ctl(
        admin,
        None,
        &[
            "--join-key-file",
            key_arg,
            "join",
            "web",
            "b3",
            &node_addr,
            "--weight",
            "5",
        ],
    );
    assert_eq!(code(&joined), Some(0), "{}", joined.stderr);
    let b3 = backend(&services(admin), "b3");
    assert_eq!(
        (b3["joined"].as_bool(), b3["weight"].as_u64()),
        (Some(true), Some(5))
    );
    let table = ctl(admin, None, &["status"]);
    assert!(table.stdout.contains("b3 (joined)"), "{}", table.stdout);
    let left = ctl(
        admin,
        None,
        &["--join-key-file", key_arg, "leave", "web", "b3"],
    );
    assert_eq!(code(&left), Some(0), "{}", left.stderr);
    let doc = services(admin);
    assert!(
        doc["services"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .all(|b| b["name"] != "b3"),
        "{doc}"
    );
    let no_key = ctl(admin, None, &["leave", "web", "b3"]);
    assert_eq!(code(&no_key), Some(2), "{}", no_key.stderr);
    assert!(
        no_key.stderr.contains("need the join key"),
        "{}",
        no_key.stderr
    );
}

#[test]
fn ctl_reload_waits_for_the_outcome_and_fails_with_the_reason() {
    let b1 = Backend::named("b1");
    let b2 = Backend::named("b2");
    let (mut lb, config) = start(&[&b1, &b2]);
    let admin = lb.admin_addr();
    // ctl finds the address and the token in a config file, as the
    // systemd unit's ExecReload does (the server's own says port 0).
    let dir = TempDir::new("ctlconf");
    let ctl_config = dir.write(
        "ringlb.toml",
        &format!("[global]\nadmin = \"{admin}\"\nadmin_token = {TOKEN:?}\n"),
    );
    let reload = |what: &str| {
        let finished = run_to_exit(&[
            OsStr::new("ctl"),
            OsStr::new("--config"),
            ctl_config.as_os_str(),
            OsStr::new("reload"),
        ]);
        eprintln!(
            "ctl reload ({what}): exit {:?}\n{}{}",
            finished.status, finished.stdout, finished.stderr
        );
        finished
    };
    let generation = || {
        services(admin)["config_generation"]
            .as_u64()
            .expect("generation")
    };
    let first = generation();

    let good = reload("the same file");
    assert_eq!(code(&good), Some(0), "{}", good.stderr);
    assert!(good.stdout.starts_with("reload applied"), "{}", good.stdout);
    assert_eq!(generation(), first + 1);

    // A file that is not TOML: refused, the reason on stderr, exit 1.
    lb.rewrite_config(&format!("{}\nbroken = [\n", config.to_toml()));
    let bad = reload("bad TOML");
    assert_eq!(code(&bad), Some(1), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("reload refused: ")
            && bad.stderr.contains("invalid TOML")
            && bad.stderr.contains("the running config keeps serving"),
        "{}",
        bad.stderr
    );
    assert_eq!(generation(), first + 1, "a refused file was applied");

    // A new listen address another socket holds: refused, exit 1.
    let holder = TcpListener::bind((LOCALHOST, 0)).expect("hold a port");
    let busy = holder.local_addr().expect("addr");
    let mut taken = config.clone();
    taken.service().listen.push(busy.to_string());
    lb.rewrite_config(&taken.to_toml());
    let refused = reload("a busy listen address");
    assert_eq!(code(&refused), Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "reload refused: cannot listen on {busy} for service web"
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(generation(), first + 1, "a refused file was applied");
    drop(holder);

    // Back to a good file: applied again.
    lb.rewrite_config(&config.to_toml());
    let again = reload("good again");
    assert_eq!(code(&again), Some(0), "{}", again.stderr);
    assert_eq!(generation(), first + 2);
}

#[test]
fn ctl_without_a_reachable_admin_api_exits_2_and_says_why() {
    // A port nothing listens on: bound, then closed.
    let closed = TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let finished = ctl(closed, None, &["status"]);
    assert_eq!(code(&finished), Some(2), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains(&format!("cannot reach the admin API at {closed}"))
            && finished.stderr.contains("is ringlb running"),
        "{}",
        finished.stderr
    );

    let dir = TempDir::new("ctloff");
    let off = dir.write("ringlb.toml", "[global]\nadmin = \"off\"\n");
    let finished = run_to_exit(&[
        OsStr::new("ctl"),
        OsStr::new("-c"),
        off.as_os_str(),
        OsStr::new("reload"),
    ]);
    assert_eq!(code(&finished), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("the admin API is off in")
            && finished.stderr.contains("admin = \"127.0.0.1:9090\""),
        "{}",
        finished.stderr
    );

    let missing = dir.path().join("nosuch.toml");
    let finished = run_to_exit(&[
        OsStr::new("ctl"),
        OsStr::new("--config"),
        missing.as_os_str(),
        OsStr::new("status"),
    ]);
    assert_eq!(code(&finished), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("cannot read") && finished.stderr.contains("--admin ADDR"),
        "{}",
        finished.stderr
    );
}

/// `ringlb demo` with 127.0.0.1:8080 and :9090 taken (by this test, or by
/// someone else) picks free ports, says which, and serves its status page
/// and the balancer there. (It used to fail when 8080 was taken, and had
/// no admin API at all.)
#[test]
fn demo_with_its_ports_taken_picks_others_and_serves_the_status_page() {
    // Held for the whole test; a port someone else holds is taken too.
    let _hold_8080 = TcpListener::bind((LOCALHOST, 8080));
    let _hold_9090 = TcpListener::bind((LOCALHOST, 9090));
    let mut child = ringlb_command()
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringlb demo");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Deadline::after(READY_TIMEOUT);
    let mut banner = String::new();
    while !banner.contains("Ctrl-C stops it.") {
        match rx.recv_timeout(deadline.remaining()) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the demo exited or printed no banner within {READY_TIMEOUT:?}:\n{banner}");
            }
        }
    }
    let field = |prefix: &str| -> String {
        let line = banner
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{banner}"));
        line.split_whitespace().next().expect("a value").to_owned()
    };
    let status_url = field("Status page: ");
    let admin: SocketAddr = status_url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("status page URL {status_url:?}"));
    let balancer: SocketAddr = field("ringlb demo is running: balancer on ")
        .trim_end_matches(',')
        .parse()
        .expect("balancer address");
    assert!(
        banner.contains(&format!("Metrics:     http://{admin}/metrics")),
        "{banner}"
    );
    assert_ne!(balancer.port(), 8080, "{banner}");
    assert_ne!(admin.port(), 9090, "{banner}");
    assert!(
        banner.contains(&format!(
            "Note: 127.0.0.1:8080 is taken (another program listens there): the balancer uses port {}",
            balancer.port()
        )) && banner.contains(&format!("the admin API uses port {}", admin.port())),
        "{banner}"
    );

    let page = http_get(admin, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<!doctype html>"), "{page}");
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("ringlb_"),
        "{metrics}"
    );
    let through = http_get(balancer, "/");
    assert!(through.starts_with("HTTP/1.1 200"), "{through}");

    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let exit = wait_child(&mut child, Duration::from_secs(20));
    assert!(exit.is_some_and(|s| s.success()), "demo exit: {exit:?}");
    let _ = reader.join();
}

/// One `GET path` with `Connection: close`: the whole answer.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, CLIENT_CONNECT_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    answer
}

/// Waits (polling with a deadline) for a child to exit; kills it at the
/// deadline and returns None.
fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Deadline::after(timeout);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if deadline.passed() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What `systemctl reload` runs: every `ExecReload=` line of
/// scripts/ringlb.service in order (with this build's ringlb for
/// /usr/local/bin/ringlb, a config for /etc/ringlb/ringlb.toml and the
/// server's pid for $MAINPID), stopping at the first that fails, as
/// systemd does. A refused reload must fail the job, with the reason; the
/// unit used to run `ringlb check` then `kill -HUP`, which succeeds when the
/// file checks out but cannot be applied (a busy listen address).
#[test]
fn the_units_exec_reload_fails_when_the_reload_is_refused() {
    let unit_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ringlb.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read scripts/ringlb.service");
    let commands: Vec<Vec<String>> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert!(
        !commands.is_empty(),
        "no ExecReload= in {}",
        unit_path.display()
    );

    let b1 = Backend::named("b1");
    let b2 = Backend::named("b2");
    let (mut lb, config) = start(&[&b1, &b2]);
    let admin = lb.admin_addr();
    // /etc/ringlb/ringlb.toml: the server's file, but with the admin
    // port it bound (its own says 0).
    let dir = TempDir::new("unitreload");
    let etc_config = dir.path().join("ringlb.toml");
    let install = |lb: &mut Ringlb, config: &LbConfig| {
        let text = config.to_toml();
        lb.rewrite_config(&text);
        let etc = text.replace("admin = \"127.0.0.1:0\"", &format!("admin = \"{admin}\""));
        std::fs::write(&etc_config, etc).expect("write the config");
    };
    install(&mut lb, &config);
    let systemctl_reload = |lb: &Ringlb| -> (bool, String) {
        let mut said = String::new();
        for command in &commands {
            let argv: Vec<String> = command
                .iter()
                .map(|a| match a.as_str() {
                    "/usr/local/bin/ringlb" => env!("CARGO_BIN_EXE_ringlb").to_owned(),
                    "/etc/ringlb/ringlb.toml" => etc_config.display().to_string(),
                    "$MAINPID" => lb.pid().to_string(),
                    other => other.to_owned(),
                })
                .collect();
            let output = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output()
                .expect("run an ExecReload command");
            said += &String::from_utf8_lossy(&output.stdout);
            said += &String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                return (false, said);
            }
        }
        (true, said)
    };
    let generation = || {
        services(admin)["config_generation"]
            .as_u64()
            .expect("generation")
    };
    let first = generation();

    let (ok, said) = systemctl_reload(&lb);
    assert!(ok, "a good reload failed: {said}");
    assert_eq!(generation(), first + 1, "{said}");

    let holder = TcpListener::bind((LOCALHOST, 0)).expect("hold a port");
    let busy = holder.local_addr().expect("addr");
    let mut taken = config.clone();
    taken.service().listen.push(busy.to_string());
    install(&mut lb, &taken);
    let (ok, said) = systemctl_reload(&lb);
    assert!(
        !ok,
        "systemctl reload would report success for a refused reload:\n{said}\n{}",
        lb.report()
    );
    assert!(
        said.contains(&format!("cannot listen on {busy}")),
        "the failed reload does not say why: {said}"
    );
    // Refused, not applied later by a signal either.
    assert!(
        lb.wait_for_log("reload refused", READY_TIMEOUT).is_some(),
        "{}",
        lb.report()
    );
    assert_eq!(generation(), first + 1);
}
