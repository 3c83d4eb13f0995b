//! `ringlb`: the command line over lb-core. Parses arguments (`cli.rs`),
//! sets up logging, loads the config and runs the server on the main
//! thread; `ringlb ctl` is a client of a running one (`ctl.rs`).

mod cli;
mod ctl;
mod generate;
mod stderr_log;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use cli::{Cli, Cmd};
use lb_core::{Config, DemoBackends, Inherited, ListenFd, Server, StartOptions};
use stderr_log::StderrLog;

/// Longest wait for the running ringlb during a takeover.
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything opens a descriptor or starts a thread: the log
    // writer's copy of stderr must not take a number systemd passed a
    // socket at (were one missing), and the environment (LISTEN_*) is only
    // changed while this is the process's one thread.
    let passed = lb_core::listen_fds();
    // Lives until main returns, on every path: dropping it writes out the
    // last records (waiting a bounded time for a stuck reader).
    let log = match init_logging() {
        Ok(log) => log,
        Err(e) => {
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "ringlb: cannot set up logging: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Cmd::Check { file, strict }) => match (file, cli.config) {
            (Some(file), Some(config)) if file != config => Err(anyhow::anyhow!(
                "check takes one file: {} or {}, not both",
                file.display(),
                config.display()
            )),
            (Some(file), _) | (None, Some(file)) => check(&file, strict),
            (None, None) => Err(anyhow::anyhow!(
                "check needs the config file: ringlb check FILE"
            )),
        },
        Some(Cmd::Demo { .. }) if cli.config.is_some() => Err(anyhow::anyhow!(
            "the demo builds its own config: run `ringlb demo` without --config \
             (or `ringlb --config FILE` to run with yours)"
        )),
        Some(Cmd::Demo { listen, admin }) => demo(listen, admin, &log),
        Some(Cmd::Generate { man, completions }) => {
            generate::write(Cli::command(), man.as_deref(), completions.as_deref())
        }
        Some(Cmd::Ctl(ctl)) => {
            // Its messages are its own (stderr, before the log's last
            // lines, which it has none of): no `ringlb:` prefix.
            let code = ctl::run(ctl, cli.config);
            drop(log);
            return code;
        }
        None => match cli.config {
            Some(config) => run(&config, cli.upgrade_socket, passed),
            None => Err(anyhow::anyhow!(
                "nothing to do: give --config FILE, or try `ringlb demo` (see --help)"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log.print(&format!("ringlb: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through [`StderrLog`]'s writer thread (see there why);
/// `RUST_LOG` overrides the default `info` level.
fn init_logging() -> anyhow::Result<StderrLog> {
    use std::io::IsTerminal;
    let log = StderrLog::start().context("starting the log writer thread")?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log.sink())
        // On a failed write the fmt layer would `eprintln!` the error, which
        // panics on a closed stderr; LogSink never fails anyway.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    std::panic::set_hook(Box::new(log_panic));
    Ok(log)
}

/// The panic hook: the panic (thread, place, message) goes to the log like
/// every other line, through its writer thread, instead of std's default
/// hook writing stderr itself (which blocks on a full pipe). What happens
/// next is the supervisor's business: lb-core catches it at the thread's
/// boundary and `main` exits non-zero.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let place = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(thread, at = %place, "panic: {message}\n{backtrace}");
    } else {
        tracing::error!(thread, at = %place, "panic: {message}");
    }
}

fn check(path: &std::path::Path, strict: bool) -> anyhow::Result<()> {
    let (mut config, warnings) = Config::from_file_with_warnings(path)?;
    // As start-up does: a backend name that does not resolve fails.
    config
        .resolve_names(None)
        .with_context(|| format!("{}: backend names", path.display()))?;
    for warning in &warnings {
        // Not eprintln!: it panics when stderr is closed.
        let _ = writeln!(std::io::stderr(), "{warning}");
    }
    if strict && !warnings.is_empty() {
        return Err(anyhow::anyhow!(
            "{}: {} refused by --strict (fix them, or check without --strict)",
            path.display(),
            count(warnings.len(), "warning", "warnings")
        ));
    }
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    // What start-up would compute under this process's open-files limit.
    let budget = lb_core::connection_budget(&config)
        .with_context(|| format!("{}: the connection budget", path.display()))?;
    // Not println!: it panics when stdout is a closed pipe. The exit status
    // says whether the config is good.
    let _ = writeln!(
        std::io::stdout(),
        "{}: ok ({}, {}{})\nconnection budget: {budget}",
        path.display(),
        count(config.services.len(), "service", "services"),
        count(backends, "backend", "backends"),
        match warnings.len() {
            0 => String::new(),
            n => format!(", {}", count(n, "warning", "warnings")),
        }
    );
    Ok(())
}

/// `1 service`, `2 services`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn run(
    path: &std::path::Path,
    upgrade_socket: Option<PathBuf>,
    passed: std::io::Result<Vec<ListenFd>>,
) -> anyhow::Result<()> {
    let (mut config, warnings) = Config::from_file_with_warnings(path)?;
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "ringlb starting");
    config
        .resolve_names(None)
        .with_context(|| format!("{}: backend names", path.display()))?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // Socket activation: systemd's sockets serve the listen addresses they
    // are bound to (matched by address), so they survive restarts.
    let activated = socket_activation(passed)?;
    let (mut inherited, takeover) = match &upgrade_socket {
        Some(sock) => match lb_core::take_over(sock, HANDOVER_TIMEOUT) {
            Ok((sockets, takeover)) => {
                tracing::info!(
                    sockets = sockets.len(),
                    from = %sock.display(),
                    "took over the listening sockets of the running ringlb"
                );
                (sockets, Some(takeover))
            }
            // Nobody serves there: a first start, or a stale socket file.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                (Vec::new(), None)
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "taking over from the ringlb at {}: {e}",
                    sock.display()
                ))
            }
        },
        None => (Vec::new(), None),
    };
    inherited.extend(activated);
    let options = StartOptions {
        handle_signals: true,
        config_path: Some(path.to_path_buf()),
        inherited,
        // SIGUSR2 runs this very command line again: argv[0] as we were
        // started (not /proc/self/exe, which names the replaced binary).
        upgrade_command: upgrade_socket
            .as_ref()
            .map(|_| std::env::args_os().collect()),
        upgrade_socket,
    };
    let server = Server::start(config, options)?;
    match takeover {
        // We accept on the sockets now: the old process may drain. Under
        // systemd it is still the main process: it tells systemd
        // `MAINPID=<us>` and `READY=1` (NotifyAccess=main would drop ours).
        Some(t) => t.release().context("telling the old ringlb to drain")?,
        // Under systemd (Type=notify): serving now. A no-op otherwise.
        None => {
            if let Err(e) = lb_core::ready() {
                tracing::warn!(error = %e, "cannot tell systemd we are ready");
            }
        }
    }
    // Err: a thread died; main exits non-zero (systemd restarts ringlb).
    server.wait()?;
    tracing::info!("ringlb stopped");
    Ok(())
}

/// The listening sockets systemd passed (`LISTEN_FDS`), if any, as
/// [`lb_core::listen_fds`] took them.
fn socket_activation(passed: std::io::Result<Vec<ListenFd>>) -> anyhow::Result<Vec<Inherited>> {
    let fds = passed.context("reading the sockets systemd passed (LISTEN_FDS)")?;
    let mut out = Vec::new();
    for fd in fds {
        match fd.local {
            Some(addr) => out.push(Inherited {
                service: None,
                admin: false,
                addr,
                socket: fd.fd.into(),
            }),
            None => {
                tracing::warn!(name = ?fd.name, "systemd passed a socket that is not TCP/IP: ignored")
            }
        }
    }
    if !out.is_empty() {
        tracing::info!(
            sockets = out.len(),
            "socket activation: using the sockets systemd passed"
        );
    }
    Ok(out)
}

/// Where the demo listens when not told: the addresses the README shows.
const DEMO_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
const DEMO_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// A listening socket for the demo: at `asked` if given (a busy address
/// then fails), else at `default`, else (taken) at a free port on the same
/// IP. The socket is handed to the server as it is, so no other process
/// can take the port in between. Returns it with a note when it is not
/// where the README says.
fn demo_listener(
    asked: Option<SocketAddr>,
    default: SocketAddr,
    what: &str,
) -> anyhow::Result<(std::net::TcpListener, Option<String>)> {
    if let Some(addr) = asked {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("the demo's {what} cannot listen on {addr}"))?;
        return Ok((listener, None));
    }
    match std::net::TcpListener::bind(default) {
        Ok(listener) => Ok((listener, None)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = std::net::TcpListener::bind(SocketAddr::new(default.ip(), 0))
                .with_context(|| format!("the demo's {what} cannot listen on {}", default.ip()))?;
            let port = listener.local_addr()?.port();
            Ok((
                listener,
                Some(format!(
                    "{default} is taken (another program listens there): the {what} uses port {port} instead"
                )),
            ))
        }
        Err(e) => Err(e).with_context(|| format!("the demo's {what} cannot listen on {default}")),
    }
}

fn demo(
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    log: &StderrLog,
) -> anyhow::Result<()> {
    let (balancer, balancer_note) = demo_listener(listen, DEMO_LISTEN, "balancer")?;
    let (admin_listener, admin_note) = demo_listener(admin, DEMO_ADMIN, "admin API")?;
    let listen = balancer.local_addr()?;
    let admin = admin_listener.local_addr()?;
    let backends =
        DemoBackends::start(&["node1", "node2"], 0).context("starting the demo backends")?;
    let toml = backends.config_toml(listen, Some(admin));
    let config = Config::parse(&toml, None).context("building the demo config")?;
    // The demo's config is built in memory: SIGHUP has no file to re-read.
    let options = StartOptions {
        handle_signals: true,
        inherited: vec![
            Inherited {
                service: Some("demo".to_owned()),
                admin: false,
                addr: listen,
                socket: socket2::Socket::from(balancer),
            },
            Inherited {
                service: None,
                admin: true,
                addr: admin,
                socket: socket2::Socket::from(admin_listener),
            },
        ],
        ..StartOptions::default()
    };
    let server = Server::start(config, options)?;
    let mut banner = format!("\nringlb demo is running: balancer on {listen}, backends:\n");
    for (name, addr) in &backends.addrs {
        banner += &format!("  {name} on {addr}\n");
    }
    banner += &format!(
        "\nStatus page: http://{admin}/       (every backend, with Drain/Enable buttons)\n\
         Metrics:     http://{admin}/metrics\n"
    );
    for note in [balancer_note, admin_note].into_iter().flatten() {
        banner += &format!("Note: {note}\n");
    }
    banner += &format!(
        "\nTry:\n\
         \x20 curl http://{listen}/                       # always the same node for your address\n\
         \x20 curl --interface 127.0.0.2 http://{listen}/ # another client address, maybe another node\n\
         \x20 ringlb ctl --admin {admin} status          # the backends from the command line\n\
         \x20 ringlb ctl --admin {admin} drain node1     # new clients go elsewhere; watch the status page\n\
         \x20 wrk -t1 -c64 -d10s http://{listen}/          # load\n\
         Ctrl-C stops it.\n\n"
    );
    // Through the log's writer thread, in order with the log lines.
    log.print(&banner);
    server.wait()?;
    drop(backends);
    tracing::info!("demo stopped");
    Ok(())
}
