//! The command line of `ringlb`, every subcommand and option, as one clap
//! definition. Only std and clap here, so that a build script or a
//! generator (man page, shell completions) can take it as it is; `main`
//! parses it on the main thread and dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where `ringlb ctl` and the systemd unit look for the config.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/ringlb/ringlb.toml";

/// ringlb: a sticky layer-4 TCP load balancer for Linux.
///
/// Clients are spread over the backends by Maglev consistent hashing on their
/// IP (a client keeps landing on the same backend), bytes are forwarded
/// untouched with zero-copy splice, and an out-of-band prober keeps only
/// healthy backends in rotation.
///
/// Run it with `ringlb --config FILE`; try it with `ringlb demo`; validate a
/// file with `ringlb check FILE`; operate a running one with `ringlb ctl`.
#[derive(Debug, Parser)]
#[command(name = "ringlb", version)]
#[command(after_help = "Examples:
  ringlb demo                                  # a balancer over two demo backends, with its status page
  ringlb check /etc/ringlb/ringlb.toml         # validate a config (warnings too; --strict fails on them)
  ringlb --config /etc/ringlb/ringlb.toml      # run in the foreground (SIGTERM drains and stops)
  ringlb ctl status                            # backends, state, health, connections (admin API)
  ringlb ctl drain web/app1                    # stop sending new clients to a backend
  ringlb ctl reload                            # re-read the config; non-zero exit with the reason if refused

Docs: docs/config.md (every setting), docs/admin.md (the admin API), docs/deploy.md (systemd).")]
pub(crate) struct Cli {
    /// Config file (TOML) to run with; `check` and `ctl` read it too.
    #[arg(short, long, value_name = "FILE", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Zero-downtime upgrades: serve the listening sockets (and the admin
    /// API's) to a newer ringlb on this Unix socket; and if a ringlb already
    /// serves here, take its sockets over (it then drains and exits 0).
    /// SIGUSR2 starts this same command line to take over.
    #[arg(long, value_name = "PATH")]
    pub(crate) upgrade_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Validate a config file: exit 0 if good (printing any warnings),
    /// else print `file:line:col: reason` and exit 1.
    Check {
        /// The config file (or give it with --config).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Treat warnings (risky but valid settings) as errors: exit 1.
        #[arg(long)]
        strict: bool,
    },
    /// Run a self-contained demo: two demo backends, the balancer and the
    /// admin API (status page, metrics) on loopback.
    Demo {
        /// Address the demo balancer listens on [default: 127.0.0.1:8080,
        /// or a free port if that one is taken].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Address of the admin API: status page, /metrics, JSON API
        /// [default: 127.0.0.1:9090, or a free port if that one is taken].
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Operate a running ringlb through its admin API: status, drain,
    /// enable, weight, reload, join, leave.
    ///
    /// The admin address and token come from the config file (--config,
    /// default /etc/ringlb/ringlb.toml: `[global] admin` and `admin_token`),
    /// or from --admin and --token-file. Exit status: 0 done, 1 refused or
    /// failed (the server's reason on stderr), 2 usage or connection error.
    Ctl(Ctl),
    /// Write the man pages and the bash, zsh and fish completions (for
    /// packagers: scripts/build-deb.sh).
    #[command(hide = true)]
    Generate {
        /// Directory to write ringlb.1 and ringlb-SUBCOMMAND.1 into.
        #[arg(long, value_name = "DIR")]
        man: Option<PathBuf>,
        /// Directory to write ringlb (bash), _ringlb (zsh) and ringlb.fish into.
        #[arg(long, value_name = "DIR")]
        completions: Option<PathBuf>,
    },
}

/// `ringlb ctl`: where the admin API is, and what to ask it.
#[derive(Debug, Args)]
pub(crate) struct Ctl {
    /// The admin API's address (IP:port), instead of the config's
    /// `[global] admin`.
    #[arg(long, value_name = "ADDR", global = true)]
    pub(crate) admin: Option<String>,
    /// A file holding the admin token (instead of the config's
    /// `admin_token`).
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) token_file: Option<PathBuf>,
    /// A file holding the join key, for join and leave (instead of the
    /// config's `join_key` or `join_key_file`).
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) join_key_file: Option<PathBuf>,
    /// Longest wait for an answer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) timeout: u64,
    #[command(subcommand)]
    pub(crate) action: CtlAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CtlAction {
    /// Every service and backend: state, health and its reason, weight,
    /// connections and bytes.
    Status {
        /// Print the API's JSON (`GET /api/v1/services`) as it is, for
        /// scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new clients to a backend; its connections finish.
    Drain {
        /// SERVICE/BACKEND, or BACKEND when the name is in one service only.
        backend: String,
    },
    /// Take a backend out of rotation (as drain: connections finish).
    Disable {
        /// SERVICE/BACKEND, or BACKEND when the name is in one service only.
        backend: String,
    },
    /// Put a drained or disabled backend back in rotation.
    Enable {
        /// SERVICE/BACKEND, or BACKEND when the name is in one service only.
        backend: String,
    },
    /// Set a backend's weight (1 to 10000).
    Weight {
        /// SERVICE/BACKEND, or BACKEND when the name is in one service only.
        backend: String,
        /// The new weight.
        weight: u32,
    },
    /// Re-read the config file and wait for the outcome: exit 0 when it is
    /// applied, 1 with the reason when it is refused (the running config
    /// keeps serving).
    Reload,
    /// Add a node to a service (with the join key).
    Join {
        /// The service to join.
        service: String,
        /// The node's backend name.
        name: String,
        /// The node's IP:port.
        address: String,
        /// Its weight (default 100).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Take a joined node out of a service (with the join key).
    Leave {
        /// The service.
        service: String,
        /// The joined node's backend name.
        name: String,
    },
}
