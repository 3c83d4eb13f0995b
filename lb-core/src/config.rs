//! Configuration: the TOML file (see DESIGN.md and docs/config.md) parsed into
//! a validated [`Config`]. Runs on whichever thread loads it (start-up, or the
//! control plane on reload); no sockets, no clocks, no logging. Its only I/O
//! is reading the file itself, the `join_key_file` it names, and checking
//! that its `ca_file` exists.
//!
//! `RawConfig` (serde, `deny_unknown_fields`, spans kept) becomes `Config`
//! through validation; nothing past this module re-checks a value.
//!
//! Layout: `raw` (the serde mirror of the file, spans kept), `validate`
//! (`RawConfig` → `Config`, every check; split by section), `value`
//! (duration, size, address syntaxes), `backend` (a backend's name, address
//! and weight as types, shared with the admin API so both accept the same
//! backends), `locate` (byte spans → `line:col` and key paths). The public
//! types below are the contract other modules code against.

mod backend;
#[cfg(test)]
mod fuzz;
mod locate;
mod raw;
mod resolve;
mod validate;
mod value;
mod warn;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proxy_header::ProxyVersion;

pub(crate) use backend::{BackendAddr, BackendName, Weight, MAX_WEIGHT};
pub(crate) use ipnet::IpNet;
pub(crate) use resolve::{family_wanted, pick};
pub use warn::ConfigWarning;

/// Default Maglev lookup table size: prime, and > 100 × N for up to 655
/// backends, which keeps every backend's share within 1% of its weight.
pub(crate) const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
/// Default health check path: the artifact cluster router's endpoint.
pub const DEFAULT_HEALTH_PATH: &str = "/router/api/v1/system/health";

/// A validated ringlb configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    /// At least one; names unique.
    pub services: Vec<Service>,
}

/// `[global]`: process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// `workers = "auto" | N`.
    pub workers: Workers,
    /// `engine = "auto" | "uring" | "epoll"`; default auto.
    pub engine: EngineKind,
    /// `forwarding = "auto" | "splice" | "copy" | "uring-splice" |
    /// "uring-copy"`; default auto.
    pub forwarding: Forwarding,
    /// `admin = "127.0.0.1:9090"` (default) or `admin = "off"` → None.
    pub admin: Option<SocketAddr>,
    /// `admin_allow = ["127.0.0.0/8", "::1/128"]` (default: loopback only).
    pub admin_allow: Vec<IpNet>,
    /// `admin_token = "…"`: bearer token required for admin write actions.
    pub admin_token: Option<String>,
    /// `join_key = "…"` or `join_key_file = "path"` (the file's content,
    /// trimmed, read at load time); both set is an error. None: joining off.
    pub join_key: Option<String>,
    /// `shutdown_timeout = "30s"` (default): how long SIGTERM waits for
    /// established connections before closing them.
    pub shutdown_timeout: Duration,
    /// `drain_announce = "0s"` (default): on SIGTERM, how long ringlb's own
    /// health answers 503 while the listeners still accept, before the
    /// drain closes them, so keepalived or BIRD move traffic away first
    /// (docs/ha.md). Not applied when a new ringlb took the sockets over.
    pub drain_announce: Duration,
    /// `resolve_interval = "30s"` (default, > 0): how often the control
    /// plane looks up the backends given by host name again.
    pub resolve_interval: Duration,
    /// `pipe_size = "64KiB"` (default; bytes or "NKiB"/"NMiB"; power of two,
    /// 4 KiB ..= 1 MiB): capacity asked of each splice pipe (F_SETPIPE_SZ).
    pub pipe_size: NonZeroUsize,
    /// `pipe_pool = 256` (default): idle pipes a worker keeps for reuse.
    pub pipe_pool: usize,
    /// `max_connections = "auto"` (default) or a number: client connections
    /// the whole process holds at once. "auto" is as many as the open-files
    /// limit can hold (`budget.rs`); a number the limit cannot honour is
    /// refused at check, start and reload.
    pub max_connections: MaxConnections,
    /// `access_log = "off"` (default) `| "stderr" | "/path/to/file"`: one
    /// line per connection at its end (`access_log.rs`). Changes only at
    /// restart.
    pub access_log: AccessLog,
    /// `access_log_format = "text"` (default) `| "json"`.
    pub access_log_format: AccessLogFormat,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log: no queue, no thread.
    Off,
    /// The process's stderr (the journal under systemd).
    Stderr,
    /// A file, opened for appending (created 0640), reopened on SIGUSR1.
    File(std::path::PathBuf),
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One line of space-separated `key=value`.
    Text,
    /// One JSON object per line.
    Json,
}

/// The process-wide connection budget asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConnections {
    /// As many as the open-files limit can hold after its reserve.
    Auto,
    Count(NonZeroUsize),
}

/// How many worker threads to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per online CPU, each pinned.
    Auto,
    Count(NonZeroUsize),
}

/// Which event engine drives the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring, falling back to epoll on any setup error (logged once).
    Auto,
    Uring,
    Epoll,
}

/// How bytes are moved between the two sockets of a connection.
///
/// The first three are readiness-driven: the engine (epoll or io_uring)
/// says a socket is ready and the worker moves the bytes inline with
/// non-blocking syscalls. The `Uring*` two are completion-driven: the
/// io_uring engine submits the reads and writes as ring operations
/// (`engine::uring::ops`); they need the io_uring engine, and where it is
/// not in use (`engine = "auto"` falling back to epoll) the worker runs
/// their [`inline`](Forwarding::inline) equivalent instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// The measured default: per flow, copy while reads are small, splice
    /// once one read brings 16 KiB or more.
    Auto,
    /// Readiness + non-blocking `splice(2)` inline through a pipe.
    Splice,
    /// Readiness + non-blocking recv/send inline through a buffer (copies).
    Copy,
    /// `IORING_OP_SPLICE` socket → pipe → socket, after a ring poll says
    /// the source is readable; runs on io-wq threads, capped per worker
    /// (io_uring engine only).
    UringSplice,
    /// `IORING_OP_RECV` into a buffer the kernel picks from a per-worker
    /// provided buffer ring, then `IORING_OP_SEND` of those bytes (copies;
    /// io_uring engine only).
    UringCopy,
}

impl Forwarding {
    /// Needs the io_uring engine.
    pub fn needs_uring(self) -> bool {
        matches!(self, Forwarding::UringSplice | Forwarding::UringCopy)
    }

    /// What a worker without io_uring runs instead: the inline strategy
    /// that moves bytes the same way (`uring-splice` → `splice`,
    /// `uring-copy` → `copy`); the others are themselves.
    pub fn inline(self) -> Forwarding {
        match self {
            Forwarding::UringSplice => Forwarding::Splice,
            Forwarding::UringCopy => Forwarding::Copy,
            other => other,
        }
    }

    /// The config file's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Auto => "auto",
            Forwarding::Splice => "splice",
            Forwarding::Copy => "copy",
            Forwarding::UringSplice => "uring-splice",
            Forwarding::UringCopy => "uring-copy",
        }
    }
}

/// `[[service]]`: one listening front with its backend pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique among services; `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// At least one; a listen address appears in at most one service,
    /// unless every service listing it routes by server name (`sni`).
    pub listen: Vec<SocketAddr>,
    /// `balance = "maglev"` (default) | "round-robin" | "least-conn" | "p2c".
    pub balance: Balance,
    /// `connect_timeout = "2s"` (default).
    pub connect_timeout: Duration,
    /// `idle_timeout = "15m"` (default): no byte either way for this long
    /// closes the connection (with RST to both sides).
    pub idle_timeout: Duration,
    /// `max_connections = N` (default none): beyond it ringlb stops
    /// accepting for this service (connections wait in the backlog).
    pub max_connections: Option<NonZeroUsize>,
    /// `connect_attempts = 3` (default): distinct backends tried per client
    /// connection before giving up.
    pub connect_attempts: NonZeroU32,
    /// `maglev_table_size = 65537` (default): must be prime, >= 7 and larger
    /// than the number of backends.
    pub maglev_table_size: u32,
    /// `hash_prefix_v4 = 32` (default, 0..=32) and `hash_prefix_v6 = 128`
    /// (default, 0..=128): client addresses are masked to this prefix before
    /// hashing, so clients moving within a /64 stay put.
    pub hash_prefix_v4: u8,
    pub hash_prefix_v6: u8,
    /// `bounded_load = 1.25` (default none; must be > 1.0): a home backend
    /// with more than c × mean active connections passes the client on.
    pub bounded_load: Option<f64>,
    /// `slow_start = "30s"` (default none): a backend that becomes usable
    /// again (recovered, enabled, joined) takes its clients back gradually
    /// over this window, each client once (see `ServiceTable::candidates`).
    pub slow_start: Option<Duration>,
    /// `source_address = "10.0.0.5"` (default none): local address for
    /// backend connections (bound with IP_BIND_ADDRESS_NO_PORT).
    pub source_address: Option<IpAddr>,
    /// `freebind = true` (default false): the listen addresses may be ones
    /// this host does not have (yet): IP_FREEBIND / IPV6_FREEBIND, so a
    /// standby ringlb is listening before keepalived moves a floating
    /// address to it. Off by default: a mistyped address fails the start.
    pub freebind: bool,
    /// `tcp_user_timeout` and `tcp_keepalive_*`: how soon a backend that
    /// vanished (no RST, no answer) ends its connections.
    pub liveness: TcpLiveness,
    /// `accept_proxy = true` with `proxy_trusted` and
    /// `proxy_header_timeout` (default off): clients must start with a
    /// PROXY header, whose address then stands for the client.
    pub accept_proxy: Option<AcceptProxy>,
    /// `sni`, `sni_default` and `sni_timeout` (default off): the service
    /// takes the TLS clients of its listen addresses that ask for one of
    /// these server names (`sni_default`: or for none it knows), so
    /// several services may share an address.
    pub sni: Option<SniRoute>,
    /// `allow`, `deny`, `max_connections_per_source`,
    /// `new_connections_per_source` (all off by default): who may connect
    /// and how much one source may take.
    pub sources: SourceLimits,
    /// `[service.health]`.
    pub health: HealthCheck,
    /// `[[service.backend]]`: at least one; names unique within the service.
    pub backends: Vec<Backend>,
    /// `send_proxy = "off"` (default) | `"v1"` | `"v2"`: the PROXY protocol
    /// header written to each backend before any client byte, carrying the
    /// client's address and port and the address it connected to (a
    /// backend's own `send_proxy` overrides it).
    pub send_proxy: Option<ProxyVersion>,
    /// `retry_before_response = "tls"` (default) | `"off"`: whether a
    /// client whose backend closes or resets before answering, while the
    /// client sent at most a TLS ClientHello, is moved to its next backend
    /// with that hello replayed.
    pub retry_before_response: RetryBeforeResponse,
}

/// `retry_before_response`: what ringlb may replay to another backend when
/// the one it connected to closes or resets before its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryBeforeResponse {
    /// The client sent nothing yet or only a TLS ClientHello (at most
    /// 16 KiB, held in the client's socket until the backend answers):
    /// nothing happened yet, the next backend gets the same bytes.
    #[default]
    Tls,
    /// Never: the client sees the backend's close or reset, as without
    /// the setting.
    Off,
}

/// `accept_proxy = true`: the service sits behind balancers that send a
/// PROXY header (v1 or v2) first; the address in it is the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptProxy {
    /// `proxy_trusted = ["CIDR", …]` (required, non-empty): the balancers
    /// allowed to speak for a client. Any other peer is closed at once:
    /// it could claim any address.
    pub trusted: Vec<IpNet>,
    /// `proxy_header_timeout = "3s"` (default, > 0): a trusted peer whose
    /// header is not whole by then is closed.
    pub header_timeout: Duration,
}

/// A service's per-source rules. A source is the client's address (the
/// PROXY header's with `accept_proxy`) masked to `hash_prefix_v4` /
/// `hash_prefix_v6`, the grouping Maglev hashes by, so one NAT pool or one
/// /64 counts as one source. Enforced where a backend is about to be
/// chosen; a refused client is reset without any backend connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLimits {
    /// `allow = ["CIDR", …]` (default empty = everyone): only these
    /// client addresses are served.
    pub allow: Vec<IpNet>,
    /// `deny = ["CIDR", …]` (default empty): never served; wins over
    /// `allow`.
    pub deny: Vec<IpNet>,
    /// `max_connections_per_source = N` (default none): open connections
    /// one source may hold; the next one is refused.
    pub max_connections_per_source: Option<NonZeroU32>,
    /// `new_connections_per_source = "N/s"` (default none): new connections
    /// per second one source may open, in bursts of up to N.
    pub new_connections_per_source: Option<NonZeroU32>,
}

impl SourceLimits {
    /// No rule is set: the service's clients cost nothing extra.
    pub fn is_off(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.max_connections_per_source.is_none()
            && self.new_connections_per_source.is_none()
    }
}

/// `sni = [..]`, `sni_default`, `sni_timeout`: which TLS clients of its
/// listen addresses a service takes, by the server name of their
/// ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// `sni = ["art.example.com", "*.example.com"]`: lower-cased; a
    /// leading `*.` matches exactly one more label (the certificate rule).
    /// May be empty with `default`.
    pub names: Vec<String>,
    /// `sni_default = true`: also the clients that send no server name or
    /// one no service on the address lists (one default per address).
    pub default: bool,
    /// `sni_timeout = "3s"` (default, > 0): a client whose ClientHello is
    /// not whole by then is closed. On a shared address the longest of its
    /// services' timeouts applies (the service is not known yet).
    pub timeout: Duration,
}

impl SniRoute {
    /// The default `sni_timeout` (as `proxy_header_timeout`: covers a TCP
    /// retransmit).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
}

impl AcceptProxy {
    /// The default `proxy_header_timeout` (the spec asks for at least 3 s,
    /// to cover a TCP retransmit).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
}

/// Socket options on the backend-side socket of every connection of a
/// service, so a backend host that vanishes without a reset (power loss, a
/// dropped link, a firewall that drops everything) ends its connections in
/// a bounded time instead of the kernel's ~15 minutes of retransmissions.
/// A connection with data in flight ends at most `user_timeout` after the
/// backend stopped acknowledging; an idle one at most `keepalive_idle` +
/// `keepalive_interval` × `keepalive_count` (and, with a user timeout, no
/// later than the first keepalive probe + `user_timeout`). Its client then
/// gets a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLiveness {
    /// `tcp_user_timeout = "30s"` (default; `"0s"` leaves the kernel's):
    /// sent data unacknowledged this long ends the connection
    /// (TCP_USER_TIMEOUT).
    pub user_timeout: Duration,
    /// `tcp_keepalive_idle = "60s"` (default, 1s..=32767s): silence before
    /// the first keepalive probe (TCP_KEEPIDLE).
    pub keepalive_idle: Duration,
    /// `tcp_keepalive_interval = "10s"` (default, 1s..=32767s): between
    /// unanswered probes (TCP_KEEPINTVL).
    pub keepalive_interval: Duration,
    /// `tcp_keepalive_count = 3` (default, 1..=127): unanswered probes that
    /// end the connection (TCP_KEEPCNT).
    pub keepalive_count: u32,
}

impl Default for TcpLiveness {
    fn default() -> Self {
        TcpLiveness {
            user_timeout: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_count: 3,
        }
    }
}

/// Backend selection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    Maglev,
    RoundRobin,
    LeastConn,
    P2c,
}

/// `[[service.backend]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Unique in its service; its stable identity for Maglev. Valid as a
    /// [`BackendName`] when it comes from the file or the join API.
    pub name: String,
    /// Valid as a [`BackendAddr`] (IPv4-mapped IPv6 held as IPv4) when it
    /// comes from the file or the join API.
    pub address: SocketAddr,
    /// `address = "host:port"` as written, for a backend given by host
    /// name (file only; joined nodes give IPs). Its `address` is then the
    /// unspecified IP with that port until [`Config::resolve_names`] fills
    /// in a looked-up one, and the control plane looks the name up again
    /// every `resolve_interval`. None: `address` was written as an IP.
    pub host: Option<String>,
    /// `weight = 100` (default), 1..=10000 ([`Weight`]).
    pub weight: NonZeroU32,
    /// `state = "enabled"` (default) | "drain" | "disabled": the initial
    /// admin state.
    pub state: AdminState,
    /// `send_proxy = "off" | "v1" | "v2"`: this backend's own choice; None
    /// (the key absent, and every joined node) takes the service's.
    pub send_proxy: Option<Option<ProxyVersion>>,
}

impl Backend {
    /// The PROXY header this backend gets: its own choice, else the
    /// service's `send_proxy`.
    pub fn proxy_header(&self, service_default: Option<ProxyVersion>) -> Option<ProxyVersion> {
        self.send_proxy.unwrap_or(service_default)
    }
}

/// Operator's state for a backend, independent of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Enabled,
    /// No new connections; established ones continue.
    Drain,
    /// No new connections; established ones continue (like drain, but
    /// meant as "out of service" in the status page).
    Disabled,
}

/// `[service.health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// `kind = "http"` (default) | "https" | "tcp" | "none".
    pub kind: HealthKind,
    /// `path`: default [`DEFAULT_HEALTH_PATH`]; must start with '/'.
    pub path: String,
    /// `host`: Host header (default: the backend address).
    pub host: Option<String>,
    /// `interval = "2s"` (default).
    pub interval: Duration,
    /// `fast_interval = "500ms"` (default): used while a backend's state is
    /// changing (between the first differing result and the flip).
    pub fast_interval: Duration,
    /// `timeout = "1s"` (default); must be <= interval.
    pub timeout: Duration,
    /// `rise = 2`, `fall = 3` (defaults).
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
    /// `jitter = 0.1` (default, 0.0..=0.5): fraction of the interval by
    /// which each probe is randomly shifted.
    pub jitter: f64,
    /// `degraded = "unhealthy"` (default) | "healthy".
    pub degraded: DegradedIs,
    /// `ca_file`: PEM CA or certificate to verify HTTPS backends against.
    pub ca_file: Option<PathBuf>,
    /// `sni`: server name for HTTPS (default: `host`, else the IP).
    pub sni: Option<String>,
    /// `insecure_skip_verify = false` (default).
    pub insecure_skip_verify: bool,
    /// `http_proxy`, `https_proxy` (URLs `http://host:port`) and `no_proxy`
    /// (list of hosts/domains/CIDRs). None = not set in the config (then the
    /// environment variables apply); Some(empty) for no_proxy = set to none.
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<Vec<String>>,
    /// `max_body = "64KiB"` (default): bytes of health answer read at most.
    pub max_body: usize,
    /// `port = N` (1..=65535): probe this port instead of the backend's own,
    /// for backends whose health endpoint is not on the traffic port.
    /// None: the backend's port.
    pub port: Option<u16>,
    /// `address = "IP"`: probe this IP instead of the backend's (e.g. a
    /// sidecar answering for every backend). None: the backend's IP.
    pub address: Option<IpAddr>,
    /// `send_proxy = true` (default false): every probe (TCP, HTTP, HTTPS
    /// before its handshake) first writes a PROXY header (v2 `LOCAL`, v1 a
    /// line of the probe's own addresses), for backends that require one on
    /// every connection. Holds the version: the file's `true` is validated
    /// against every backend having a `send_proxy` version, and the
    /// registry sets each backend's own when it hands the check to the
    /// prober (`Registry::probe_targets`). None: no header.
    pub send_proxy: Option<ProxyVersion>,
}

/// Kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    Http,
    Https,
    Tcp,
    /// No active probe: backends are usable unless passive health says not.
    None,
}

/// What a `DEGRADED` router or service state counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DegradedIs {
    Healthy,
    Unhealthy,
}

/// A configuration error, located in the file where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (None when parsed from a string without a name).
    pub file: Option<PathBuf>,
    /// 1-based line and column of the offending key or value, if known.
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// What is wrong and what is expected instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `file:line:col: message`, dropping the parts that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, self.file.as_deref(), self.line, self.col)?;
        f.write_str(&self.message)
    }
}

/// The `file:line:col: ` before a located message (an error or a
/// warning), dropping the parts that are unknown.
fn write_location(
    f: &mut fmt::Formatter<'_>,
    file: Option<&Path>,
    line: Option<usize>,
    col: Option<usize>,
) -> fmt::Result {
    if let Some(file) = file {
        write!(f, "{}:", file.display())?;
    }
    if let (Some(line), Some(col)) = (line, col) {
        write!(f, "{line}:{col}:")?;
    }
    if file.is_some() || line.is_some() {
        f.write_str(" ")?;
    }
    Ok(())
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file. Relative paths in it
    /// (`join_key_file`, `ca_file`) are resolved against its directory.
    /// The file must be a regular file of at most [`MAX_CONFIG_FILE`]
    /// bytes: a FIFO, a device (`-c /dev/zero`) or a directory is refused
    /// before it is opened, and no more than the limit is ever read.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let bytes = read_config_file(path).map_err(|message| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            col: None,
            message,
        })?;
        Config::parse_bytes(&bytes, Some(path))
    }

    /// [`Config::from_file`], and the settings in it that are valid but
    /// unwise ([`ConfigWarning`]: `file:line:col: warning: …`), for
    /// `ringlb check` and the start-up log.
    pub fn from_file_with_warnings(
        path: &Path,
    ) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let bytes = read_config_file(path).map_err(|message| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            col: None,
            message,
        })?;
        let config = Config::parse_bytes(&bytes, Some(path))?;
        // parse_bytes took it as UTF-8 already.
        let text = String::from_utf8_lossy(&bytes);
        let warnings = warn::warnings(&config, &text, Some(path));
        Ok((config, warnings))
    }

    /// Parses and validates config text; `file` only names it in errors and
    /// locates relative paths (without it they are relative to the current
    /// directory).
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let source = locate::Source { text, file };
        let config: raw::RawConfig =
            toml::from_str(text).map_err(|e| source.error(source.toml_error(&e)))?;
        let base_dir = file.and_then(Path::parent).unwrap_or(Path::new(""));
        Config::try_from(validate::Raw { config, base_dir }).map_err(|e| source.error(e))
    }

    /// Looks up a service by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The listening sockets the config asks for, as (service, address):
    /// each address once, owned by the first service listing it (services
    /// that share an address route by server name, and the owner's
    /// listener accepts for all of them); port 0 is never shared.
    pub(crate) fn listeners(&self) -> Vec<(&str, SocketAddr)> {
        let mut out: Vec<(&str, SocketAddr)> = Vec::new();
        for s in &self.services {
            for &addr in &s.listen {
                if addr.port() == 0 || !out.iter().any(|(_, a)| *a == addr) {
                    out.push((&s.name, addr));
                }
            }
        }
        out
    }

    /// [`Config::parse`] for bytes that may not be UTF-8.
    pub(crate) fn parse_bytes(bytes: &[u8], file: Option<&Path>) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::parse(text, file),
            Err(e) => {
                let (line, col) = locate::line_col(bytes, e.valid_up_to());
                Err(ConfigError {
                    file: file.map(Path::to_path_buf),
                    line: Some(line),
                    col: Some(col),
                    message: "the file is not UTF-8 text (TOML files must be UTF-8)".to_owned(),
                })
            }
        }
    }
}

/// Largest config file read: a config of thousands of services is a few
/// hundred KiB; anything bigger is a wrong path (or a hostile one).
pub(crate) const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads the config file, bounded; the error says what was wrong and what
/// to do. Checks the type before opening (opening a FIFO would wait for a
/// writer) and again on the open file (the path may have been swapped in
/// between; `O_NONBLOCK` keeps that open from waiting either).
fn read_config_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let cannot = |e: std::io::Error| format!("cannot read the config file: {e}");
    check_regular(&std::fs::metadata(path).map_err(cannot)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    check_regular(&file.metadata().map_err(cannot)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(too_big(None));
    }
    Ok(bytes)
}

/// Refuses anything but a regular file of at most [`MAX_CONFIG_FILE`].
fn check_regular(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;

    let kind = meta.file_type();
    let what = if kind.is_file() {
        return match meta.len() {
            len if len > MAX_CONFIG_FILE => Err(too_big(Some(len))),
            _ => Ok(()),
        };
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(format!(
        "the config path is not a regular file ({what}): point -c at the TOML config file"
    ))
}

fn too_big(len: Option<u64>) -> String {
    let size = len.map_or_else(|| "more".to_owned(), |len| format!("{len} bytes"));
    format!(
        "the config file is larger than 1 MiB ({size}; the limit is {MAX_CONFIG_FILE} bytes): \
         is -c pointing at the right file?"
    )
}

impl Default for Global {
    /// Every `[global]` key at its documented default.
    fn default() -> Self {
        Global {
            workers: Workers::Auto,
            engine: EngineKind::Auto,
            forwarding: Forwarding::Auto,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_allow: vec![
                IpNet::V4(ipnet::Ipv4Net::new_assert(
                    std::net::Ipv4Addr::new(127, 0, 0, 0),
                    8,
                )),
                IpNet::V6(ipnet::Ipv6Net::new_assert(
                    std::net::Ipv6Addr::LOCALHOST,
                    128,
                )),
            ],
            admin_token: None,
            join_key: None,
            shutdown_timeout: Duration::from_secs(30),
            drain_announce: Duration::ZERO,
            resolve_interval: Duration::from_secs(30),
            pipe_size: NonZeroUsize::new(64 << 10).unwrap_or(NonZeroUsize::MIN),
            pipe_pool: 256,
            max_connections: MaxConnections::Auto,
            access_log: AccessLog::Off,
            access_log_format: AccessLogFormat::Text,
        }
    }
}

impl Default for HealthCheck {
    /// Every `[service.health]` key at its documented default.
    fn default() -> Self {
        HealthCheck {
            kind: HealthKind::Http,
            path: DEFAULT_HEALTH_PATH.to_owned(),
            host: None,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            rise: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            fall: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            jitter: 0.1,
            degraded: DegradedIs::Unhealthy,
            ca_file: None,
            sni: None,
            insecure_skip_verify: false,
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            max_body: 64 << 10,
            port: None,
            address: None,
            send_proxy: None,
        }
    }
}

impl Service {
    /// A service with every optional key at its default, for tests and
    /// code that builds a config without a file. Not validated: the caller
    /// keeps the invariants documented on the fields.
    pub fn new(name: impl Into<String>, listen: Vec<SocketAddr>, backends: Vec<Backend>) -> Self {
        Service {
            name: name.into(),
            listen,
            balance: Balance::Maglev,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(15 * 60),
            max_connections: None,
            connect_attempts: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            hash_prefix_v4: 32,
            hash_prefix_v6: 128,
            bounded_load: None,
            slow_start: None,
            source_address: None,
            freebind: false,
            liveness: TcpLiveness::default(),
            accept_proxy: None,
            sni: None,
            sources: SourceLimits::default(),
            health: HealthCheck::default(),
            backends,
            send_proxy: None,
            retry_before_response: RetryBeforeResponse::Tls,
        }
    }
}

impl Backend {
    /// An enabled backend of weight 100 (the defaults); not validated.
    pub fn new(name: impl Into<String>, address: SocketAddr) -> Self {
        Backend {
            name: name.into(),
            address,
            host: None,
            weight: Weight::DEFAULT.get(),
            state: AdminState::Enabled,
            send_proxy: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The example of DESIGN.md, verbatim.
    const DESIGN_EXAMPLE: &str = r#"[global]
workers = "auto"            # or a number
engine = "auto"             # "uring" | "epoll"
admin = "127.0.0.1:9090"

[[service]]
name = "artifactory"
listen = ["0.0.0.0:8080", "[::]:8080"]
balance = "maglev"          # "round-robin" | "least-conn" | "p2c"
connect_timeout = "2s"
idle_timeout = "15m"

[service.health]
kind = "http"               # "https" | "tcp" | "none"
path = "/router/api/v1/system/health"
interval = "2s"
timeout = "1s"
rise = 2
fall = 3

[[service.backend]]
name = "art1"
address = "10.0.0.11:8081"
weight = 100
"#;

    /// The smallest valid file: one service, one listen address, one backend.
    const MINIMAL: &str = r#"[[service]]
name = "web"
listen = ["127.0.0.1:8080"]

[[service.backend]]
name = "app1"
address = "10.0.0.1:80"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Some(Path::new("ringlb.toml")))
    }

    #[test]
    fn the_access_log_is_off_stderr_or_a_path_from_the_config_directory() {
        let g = parse(&global_with("")).unwrap().global;
        assert_eq!(
            (g.access_log, g.access_log_format),
            (AccessLog::Off, AccessLogFormat::Text)
        );
        let g = parse(&global_with(
            "access_log = \"stderr\"\naccess_log_format = \"json\"",
        ))
        .unwrap()
        .global;
        assert_eq!(
            (g.access_log, g.access_log_format),
            (AccessLog::Stderr, AccessLogFormat::Json)
        );
        let in_dir = Config::parse(
            &global_with("access_log = \"logs/access.log\""),
            Some(Path::new("/etc/ringlb/ringlb.toml")),
        )
        .unwrap();
        assert_eq!(
            in_dir.global.access_log,
            AccessLog::File("/etc/ringlb/logs/access.log".into())
        );
        let absolute = parse(&global_with("access_log = \"/var/log/ringlb/a.log\"")).unwrap();
        assert_eq!(
            absolute.global.access_log,
            AccessLog::File("/var/log/ringlb/a.log".into())
        );
        assert_refused(
            &global_with("access_log_format = \"xml\""),
            (2, 21),
            &["global.access_log_format: \"xml\" is not valid (expected one of \"text\", \"json\")"],
        );
        assert_refused(
            &global_with("access_log = \"\""),
            (2, 14),
            &["global.access_log: is empty"],
        );
    }

    #[test]
    fn tcp_liveness_keys_are_read_defaulted_and_validated() {
        let s = &parse(&service_with("")).unwrap().services[0];
        assert_eq!(s.liveness, TcpLiveness::default());
        let text = service_with(
            "tcp_user_timeout = \"2500ms\"\ntcp_keepalive_idle = \"5s\"\n\
             tcp_keepalive_interval = \"2s\"\ntcp_keepalive_count = 4",
        );
        let s = &parse(&text).unwrap().services[0];
        assert_eq!(
            s.liveness,
            TcpLiveness {
                user_timeout: Duration::from_millis(2500),
                keepalive_idle: Duration::from_secs(5),
                keepalive_interval: Duration::from_secs(2),
                keepalive_count: 4,
            }
        );
        let off = parse(&service_with("tcp_user_timeout = \"0s\"")).unwrap();
        assert_eq!(off.services[0].liveness.user_timeout, Duration::ZERO);
        for (line, needle) in [
            ("tcp_user_timeout = \"10ms\"", "100ms..=24h"),
            ("tcp_user_timeout = \"25h\"", "100ms..=24h"),
            ("tcp_keepalive_idle = \"0s\"", "longer than zero"),
            ("tcp_keepalive_idle = \"1500ms\"", "whole seconds"),
            ("tcp_keepalive_interval = \"40000s\"", "1s..=32767s"),
            ("tcp_keepalive_count = 0", "1..=127"),
            ("tcp_keepalive_count = 200", "1..=127"),
        ] {
            let err = parse(&service_with(line)).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
            let key = line.split(' ').next().unwrap();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn per_source_rules_default_off_and_parse_with_their_errors() {
        let s = &parse(&service_with("")).unwrap().services[0];
        assert!(s.sources.is_off());
        let text = service_with(
            "allow = [\"10.0.0.0/8\", \"::1\"]\ndeny = [\"10.9.1.2/16\"]\n\
             max_connections_per_source = 20\nnew_connections_per_source = \" 50/s\"",
        );
        let s = &parse(&text).unwrap().services[0];
        assert_eq!(
            s.sources,
            SourceLimits {
                allow: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                deny: vec!["10.9.0.0/16".parse().unwrap()],
                max_connections_per_source: NonZeroU32::new(20),
                new_connections_per_source: NonZeroU32::new(50),
            }
        );
        for (line, needle) in [
            ("allow = [\"10.0.0.300/8\"]", "allow"),
            ("deny = [\"nope\"]", "deny"),
            ("max_connections_per_source = 0", "1..="),
            ("max_connections_per_source = 2000000000", "1..="),
            ("new_connections_per_source = \"50\"", "\"N/s\""),
            ("new_connections_per_source = \"0/s\"", "\"N/s\""),
            ("new_connections_per_source = \"5/m\"", "\"N/s\""),
            ("new_connections_per_source = \"2000000/s\"", "\"N/s\""),
        ] {
            let err = parse(&service_with(line)).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
            let key = line.split(' ').next().unwrap();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    // PROXY protocol out.
    #[test]
    fn send_proxy_defaults_off_and_a_backend_overrides_the_service() {
        let s = &parse(&service_with("")).unwrap().services[0];
        assert_eq!((s.send_proxy, s.health.send_proxy), (None, None));
        assert_eq!(s.backends[0].proxy_header(s.send_proxy), None);
        let text = "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\nsend_proxy = \"v2\"\n\
                    [[service.backend]]\nname = \"a\"\naddress = \"10.0.0.1:80\"\n\
                    [[service.backend]]\nname = \"b\"\naddress = \"10.0.0.2:80\"\nsend_proxy = \"v1\"\n\
                    [[service.backend]]\nname = \"c\"\naddress = \"10.0.0.3:80\"\nsend_proxy = \"off\"\n";
        let s = &parse(text).unwrap().services[0];
        assert_eq!(s.send_proxy, Some(ProxyVersion::V2));
        let resolved: Vec<_> = s
            .backends
            .iter()
            .map(|b| b.proxy_header(s.send_proxy))
            .collect();
        assert_eq!(
            resolved,
            [Some(ProxyVersion::V2), Some(ProxyVersion::V1), None]
        );
        // A joined node (Backend::new) takes the service's.
        let joined = Backend::new("d", "10.0.0.4:80".parse().unwrap());
        assert_eq!(joined.proxy_header(s.send_proxy), Some(ProxyVersion::V2));

        assert_refused(
            &service_with("send_proxy = \"v3\""),
            (4, 14),
            &[
                "services[0].send_proxy",
                "\"v3\" is not valid",
                "\"off\", \"v1\", \"v2\"",
            ],
        );
        assert_refused(&service_with("send_proxy = true"), (4, 14), &["send_proxy"]);
    }

    // The TLS-safe retry.
    #[test]
    fn retry_before_response_defaults_to_tls_and_takes_only_tls_or_off() {
        let s = &parse(&service_with("")).unwrap().services[0];
        assert_eq!(s.retry_before_response, RetryBeforeResponse::Tls);
        let s = &parse(&service_with("retry_before_response = \"off\""))
            .unwrap()
            .services[0];
        assert_eq!(s.retry_before_response, RetryBeforeResponse::Off);
        assert_refused(
            &service_with("retry_before_response = \"always\""),
            (4, 25),
            &[
                "services[0].retry_before_response",
                "\"always\" is not valid",
                "\"tls\", \"off\"",
            ],
        );
    }

    #[test]
    fn health_send_proxy_needs_a_version_for_every_backend() {
        let on = parse(
            &health_with("send_proxy = true")
                .replace("[service.health]", "send_proxy = \"v1\"\n[service.health]"),
        )
        .unwrap();
        assert_eq!(on.services[0].health.send_proxy, Some(ProxyVersion::V1));
        let off = parse(&health_with("send_proxy = false")).unwrap();
        assert_eq!(off.services[0].health.send_proxy, None);
        let err = assert_refused(
            &health_with("send_proxy = true"),
            (5, 14),
            &[
                "services[0].health.send_proxy",
                "backend \"app1\" gets no PROXY header",
            ],
        );
        assert!(
            err.message.contains("send_proxy = \"v1\" or \"v2\""),
            "{err}"
        );
        // Every backend's own version is enough without the service's.
        let text = "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\n\
                    [service.health]\nsend_proxy = true\n\
                    [[service.backend]]\nname = \"a\"\naddress = \"10.0.0.1:80\"\nsend_proxy = \"v2\"\n";
        assert_eq!(
            parse(text).unwrap().services[0].health.send_proxy,
            Some(ProxyVersion::V2)
        );
    }

    /// `[global]` on line 1, `extra` from line 2, then [`MINIMAL`].
    #[test]
    fn accept_proxy_needs_trusted_balancers_and_takes_a_timeout() {
        let s = &parse(&service_with("")).unwrap().services[0];
        assert_eq!(s.accept_proxy, None);
        let text = service_with("accept_proxy = true\nproxy_trusted = [\"10.1.2.3/24\", \"::1\"]");
        let s = &parse(&text).unwrap().services[0];
        assert_eq!(
            s.accept_proxy,
            Some(AcceptProxy {
                trusted: vec!["10.1.2.0/24".parse().unwrap(), "::1/128".parse().unwrap()],
                header_timeout: Duration::from_secs(3),
            })
        );
        let text = service_with(
            "accept_proxy = true\nproxy_trusted = [\"127.0.0.1\"]\nproxy_header_timeout = \"500ms\"",
        );
        let s = &parse(&text).unwrap().services[0];
        let on = s.accept_proxy.as_ref().unwrap();
        assert_eq!(on.header_timeout, Duration::from_millis(500));
        assert_eq!(
            parse(&service_with("accept_proxy = false"))
                .unwrap()
                .services[0]
                .accept_proxy,
            None
        );

        assert_refused(
            &service_with("accept_proxy = true"),
            (1, 1),
            &["services[0]: missing key `proxy_trusted`", "CIDRs"],
        );
        assert_refused(
            &service_with("accept_proxy = true\nproxy_trusted = []"),
            (5, 17),
            &[
                "services[0].proxy_trusted: is empty",
                "every client would be refused",
            ],
        );
        assert_refused(
            &service_with("accept_proxy = true\nproxy_trusted = [\"10.0.0.0/8\", \"10.0.0.0/33\"]"),
            (5, 32),
            &["services[0].proxy_trusted[1]: \"10.0.0.0/33\" is not a CIDR"],
        );
        assert_refused(
            &service_with(
                "accept_proxy = true\nproxy_trusted = [\"::1\"]\nproxy_header_timeout = \"0s\"",
            ),
            (6, 24),
            &["services[0].proxy_header_timeout"],
        );
        assert_refused(
            &service_with("proxy_trusted = [\"10.0.0.0/8\"]"),
            (4, 17),
            &["services[0].proxy_trusted: is set but accept_proxy is not true"],
        );
        assert_refused(
            &service_with("accept_proxy = false\nproxy_header_timeout = \"1s\""),
            (5, 24),
            &["services[0].proxy_header_timeout: is set but accept_proxy is not true"],
        );
        assert_refused(
            &service_with("accept_proxy = \"yes\""),
            (4, 16),
            &["accept_proxy"],
        );
    }

    fn global_with(extra: &str) -> String {
        format!("[global]\n{extra}\n\n{MINIMAL}")
    }

    /// [`MINIMAL`] with `extra` on line 4, inside the service table.
    fn service_with(extra: &str) -> String {
        format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\n{extra}\n\n\
             [[service.backend]]\nname = \"app1\"\naddress = \"10.0.0.1:80\"\n"
        )
    }

    /// [`MINIMAL`] with `[service.health]` on line 4 and `extra` from line 5.
    fn health_with(extra: &str) -> String {
        format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\n[service.health]\n{extra}\n\n\
             [[service.backend]]\nname = \"app1\"\naddress = \"10.0.0.1:80\"\n"
        )
    }

    /// [`MINIMAL`] with `extra` on line 8, inside the backend table.
    fn backend_with(extra: &str) -> String {
        format!("{MINIMAL}{extra}\n")
    }

    /// Asserts that `text` is refused at `line:col` with a message holding
    /// every one of `parts`.
    #[track_caller]
    fn assert_refused(text: &str, (line, col): (usize, usize), parts: &[&str]) -> ConfigError {
        let err = parse(text).expect_err("the config was accepted");
        assert_eq!((err.line, err.col), (Some(line), Some(col)), "{err}");
        for part in parts {
            assert!(err.message.contains(part), "{err} does not say {part:?}");
        }
        err
    }

    /// A fresh directory for a test's files.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-config-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn design_example_parses_to_the_expected_values() {
        let config = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(config.global, Global::default());
        assert_eq!(config.services.len(), 1);
        let service = config.service("artifactory").unwrap();
        assert_eq!(
            service.listen,
            [
                "0.0.0.0:8080".parse().unwrap(),
                "[::]:8080".parse().unwrap()
            ]
        );
        assert_eq!(service.balance, Balance::Maglev);
        assert_eq!(service.connect_timeout, Duration::from_secs(2));
        assert_eq!(service.idle_timeout, Duration::from_secs(900));
        assert_eq!(service.health.kind, HealthKind::Http);
        assert_eq!(service.health.path, DEFAULT_HEALTH_PATH);
        assert_eq!(service.health.interval, Duration::from_secs(2));
        assert_eq!(service.health.timeout, Duration::from_secs(1));
        assert_eq!(service.health.rise.get(), 2);
        assert_eq!(service.health.fall.get(), 3);
        assert_eq!(
            service.backends,
            [Backend::new("art1", "10.0.0.11:8081".parse().unwrap())]
        );
        assert_eq!(service.backends[0].weight.get(), 100);
        assert!(config.service("nope").is_none());
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let config = parse(MINIMAL).unwrap();
        let g = &config.global;
        assert_eq!(g.workers, Workers::Auto);
        assert_eq!(g.engine, EngineKind::Auto);
        assert_eq!(g.forwarding, Forwarding::Auto);
        assert_eq!(g.admin, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            g.admin_allow,
            [
                "127.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        assert_eq!(
            (g.admin_token.as_deref(), g.join_key.as_deref()),
            (None, None)
        );
        assert_eq!(g.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(g.pipe_size.get(), 65_536);
        assert_eq!(g.pipe_pool, 256);

        let s = &config.services[0];
        assert_eq!(s.name, "web");
        assert_eq!(s.listen, ["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(s.balance, Balance::Maglev);
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.idle_timeout, Duration::from_secs(15 * 60));
        assert_eq!(s.max_connections, None);
        assert_eq!(s.connect_attempts.get(), 3);
        assert_eq!(s.maglev_table_size, 65_537);
        assert_eq!((s.hash_prefix_v4, s.hash_prefix_v6), (32, 128));
        assert_eq!((s.bounded_load, s.source_address), (None, None));
        assert_eq!(s.slow_start, None);

        let h = &s.health;
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!(h.path, "/router/api/v1/system/health");
        assert_eq!(h.host, None);
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.fast_interval, Duration::from_millis(500));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!((h.rise.get(), h.fall.get()), (2, 3));
        assert_eq!(h.jitter, 0.1);
        assert_eq!(h.degraded, DegradedIs::Unhealthy);
        assert_eq!(
            (&h.ca_file, &h.sni, h.insecure_skip_verify),
            (&None, &None, false)
        );
        assert_eq!(
            (&h.http_proxy, &h.https_proxy, &h.no_proxy),
            (&None, &None, &None)
        );
        assert_eq!(h.max_body, 65_536);

        let b = &s.backends[0];
        assert_eq!(
            (b.name.as_str(), b.address),
            ("app1", "10.0.0.1:80".parse().unwrap())
        );
        assert_eq!((b.weight.get(), b.state), (100, AdminState::Enabled));

        // The helper constructors agree with the file's defaults.
        let built = Service::new(
            "web",
            s.listen.clone(),
            vec![Backend::new("app1", b.address)],
        );
        assert_eq!(&built, s);
    }

    #[test]
    fn every_key_set_parses_and_relative_paths_follow_the_config_file() {
        let dir = scratch_dir("every-key");
        std::fs::write(dir.join("join.key"), "  s3cret\n").unwrap();
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let text = r#"
[global]
workers = 4
engine = "epoll"
forwarding = "splice"
admin = "[::1]:9191"
admin_allow = ["10.1.2.3/8", "192.168.1.7"]
admin_token = "t0ken"
join_key_file = "join.key"
shutdown_timeout = "0s"
pipe_size = "1MiB"
pipe_pool = 0

[[service]]
name = "art.prod-1"
listen = ["0.0.0.0:443", "[::]:443"]
balance = "p2c"
connect_timeout = "500ms"
idle_timeout = "1h30m"
max_connections = 10000
connect_attempts = 5
maglev_table_size = 7
hash_prefix_v4 = 24
hash_prefix_v6 = 64
bounded_load = 1.25
slow_start = "30s"
source_address = "10.0.0.5"

[service.health]
kind = "https"
path = "/ping?deep=1"
host = "art.example.com:8443"
interval = "5s"
fast_interval = "1s"
timeout = "5s"
rise = 1
fall = 1
jitter = 0
degraded = "healthy"
ca_file = "tls/ca.pem"
sni = "art.example.com"
insecure_skip_verify = false
http_proxy = "http://proxy:3128/"
https_proxy = "http://10.0.0.9:3128"
no_proxy = ["localhost", ".corp", "10.0.0.0/8", "*"]
max_body = 1024

[[service.backend]]
name = "a"
address = "10.0.0.11:8081"
weight = 1
state = "drain"

[[service.backend]]
name = "b"
address = "10.0.0.12:8081"
weight = 10000
state = "disabled"
"#;
        let file = dir.join("ringlb.toml");
        std::fs::write(&file, text).unwrap();
        let config = Config::from_file(&file).unwrap();
        let g = &config.global;
        assert_eq!(g.workers, Workers::Count(NonZeroUsize::new(4).unwrap()));
        assert_eq!(
            (g.engine, g.forwarding),
            (EngineKind::Epoll, Forwarding::Splice)
        );
        assert_eq!(g.admin, Some("[::1]:9191".parse().unwrap()));
        assert_eq!(
            g.admin_allow,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.7/32".parse().unwrap()
            ]
        );
        assert_eq!(g.admin_token.as_deref(), Some("t0ken"));
        assert_eq!(g.join_key.as_deref(), Some("s3cret"));
        assert_eq!(g.shutdown_timeout, Duration::ZERO);
        assert_eq!((g.pipe_size.get(), g.pipe_pool), (1 << 20, 0));

        let s = &config.services[0];
        assert_eq!(s.name, "art.prod-1");
        assert_eq!(s.balance, Balance::P2c);
        assert_eq!(s.connect_timeout, Duration::from_millis(500));
        assert_eq!(s.idle_timeout, Duration::from_secs(5400));
        assert_eq!(s.max_connections, NonZeroUsize::new(10_000));
        assert_eq!(s.connect_attempts.get(), 5);
        assert_eq!(s.maglev_table_size, 7);
        assert_eq!((s.hash_prefix_v4, s.hash_prefix_v6), (24, 64));
        assert_eq!(s.bounded_load, Some(1.25));
        assert_eq!(s.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(s.source_address, Some("10.0.0.5".parse().unwrap()));

        let h = &s.health;
        assert_eq!(h.kind, HealthKind::Https);
        assert_eq!(h.path, "/ping?deep=1");
        assert_eq!(h.host.as_deref(), Some("art.example.com:8443"));
        assert_eq!(
            (h.interval, h.fast_interval, h.timeout),
            (
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_secs(5)
            )
        );
        assert_eq!((h.rise.get(), h.fall.get(), h.jitter), (1, 1, 0.0));
        assert_eq!(h.degraded, DegradedIs::Healthy);
        assert_eq!(h.ca_file, Some(dir.join("tls/ca.pem")));
        assert_eq!(h.sni.as_deref(), Some("art.example.com"));
        assert_eq!(h.http_proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(h.https_proxy.as_deref(), Some("http://10.0.0.9:3128"));
        assert_eq!(
            h.no_proxy,
            Some(vec![
                "localhost".into(),
                ".corp".into(),
                "10.0.0.0/8".into(),
                "*".into()
            ])
        );
        assert_eq!(h.max_body, 1024);

        let weights: Vec<_> = s
            .backends
            .iter()
            .map(|b| (b.weight.get(), b.state))
            .collect();
        assert_eq!(
            weights,
            [(1, AdminState::Drain), (10_000, AdminState::Disabled)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn display_is_file_line_col_message() {
        let err = parse(&global_with("workers = 0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ringlb.toml:2:11: global.workers: 0 is out of range (expected \"auto\" or an integer 1..=1024)"
        );
        let unnamed = Config::parse("", None).unwrap_err();
        assert_eq!(unnamed.file, None);
        assert!(
            unnamed.to_string().starts_with("no [[service]]"),
            "{unnamed}"
        );
    }

    #[test]
    fn toml_syntax_errors_are_located() {
        let err = assert_refused(
            "[[service]]\nname = \"web\nlisten = []\n",
            (2, 12),
            &["invalid TOML"],
        );
        assert!(!err.message.contains('\n'), "{err}");
        assert_refused(
            "[[service]]\nname = 1\nname = 2\n",
            (3, 1),
            &["invalid TOML", "duplicate key `name`"],
        );
    }

    #[test]
    fn a_service_table_before_its_service_is_named() {
        // Backend first, then the service: TOML said "duplicate key".
        let err = assert_refused(
            "[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.1:80\"\n\n\
             [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\"]\n",
            (1, 1),
            &[
                "[[service.backend]] comes before any [[service]]",
                "must follow the [[service]] it belongs to",
            ],
        );
        assert!(!err.message.contains("duplicate key"), "{err}");
        // No [[service]] at all: serde said "expected a sequence".
        let err = assert_refused(
            "[global]\nworkers = 1\n  [[ service.backend ]] # first\nname = \"a\"\n",
            (3, 3),
            &["[[ service.backend ]] comes before any [[service]]"],
        );
        assert!(!err.message.contains("sequence"), "{err}");
        assert_refused(
            "[service.health]\nkind = \"tcp\"\n",
            (1, 1),
            &["[service.health] comes before any [[service]]"],
        );
        // `[service]` for `[[service]]` keeps its own hint.
        assert_refused(
            "[service]\nname = \"web\"\n",
            (1, 1),
            &["write [[service]], with double brackets"],
        );
    }

    #[test]
    fn a_fractional_duration_says_how_to_write_it() {
        assert_refused(
            &service_with("connect_timeout = \"1.5s\""),
            (4, 19),
            &["fractions are not accepted (write \"1500ms\")"],
        );
    }

    #[test]
    fn unknown_keys_are_refused_in_every_table() {
        assert_refused(
            &global_with("wrokers = 4"),
            (2, 1),
            &["global: unknown key `wrokers`", "`workers`"],
        );
        assert_refused(
            &service_with("lisen = []"),
            (4, 1),
            &["services[0]: unknown key `lisen`"],
        );
        assert_refused(
            &health_with("intervall = \"1s\""),
            (5, 1),
            &["services[0].health: unknown key `intervall`"],
        );
        assert_refused(
            &backend_with("wieght = 1"),
            (8, 1),
            &["services[0].backend[0]: unknown key `wieght`"],
        );
        assert_refused(
            &format!("{MINIMAL}\n[extra]\n"),
            (9, 2),
            &["unknown key `extra`", "`global` or `service`"],
        );
        // An unknown sub-table is reported in the table that holds it.
        assert_refused(
            &global_with("[global.tuning]"),
            (2, 9),
            &["global: unknown key `tuning`"],
        );
        assert_refused(
            &format!("{MINIMAL}[[service.backend.tags]]\n"),
            (8, 19),
            &["services[0].backend[0]: unknown key `tags`"],
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        assert_refused(
            &global_with("workers = true"),
            (2, 11),
            &[
                "global.workers: invalid type: boolean",
                "\"auto\" or a number of workers",
            ],
        );
        assert_refused(
            &global_with("pipe_size = 1.5"),
            (2, 13),
            &["global.pipe_size", "a size"],
        );
        assert_refused(
            &service_with("connect_timeout = 2"),
            (4, 19),
            &["services[0].connect_timeout", "expected a duration string"],
        );
        assert_refused(
            &health_with("rise = \"2\""),
            (5, 8),
            &["services[0].health.rise", "expected an integer"],
        );
        assert_refused(
            &health_with("insecure_skip_verify = \"yes\""),
            (5, 24),
            &["expected a boolean"],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\n",
            (3, 10),
            &[
                "services[0].listen: invalid type: string",
                "expected an array",
            ],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\"]\nbackend = [{ name = \"a\", address = 80 }]\n",
            (4, 36),
            &["services[0].backend[0].address: invalid type: integer `80`, expected a string"],
        );
    }

    #[test]
    fn a_single_bracket_service_gets_a_hint() {
        assert_refused(
            "[service]\nname = \"web\"\n",
            (1, 1),
            &[
                "services: invalid type: table, expected an array",
                "[[service]]",
            ],
        );
    }

    #[test]
    fn missing_keys_point_at_their_table() {
        assert_refused(
            "[global]\n\n[[service]]\nlisten = [\"127.0.0.1:80\"]\n",
            (3, 1),
            &["services[0]: missing key `name`"],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\n",
            (1, 1),
            &["services[0]: missing key `listen`"],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\"]\n[[service.backend]]\nname = \"a\"\n",
            (4, 1),
            &["services[0].backend[0]: missing key `address`", "IP:port"],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\"]\n[[service.backend]]\naddress = \"10.0.0.1:80\"\n",
            (4, 1),
            &["services[0].backend[0]: missing key `name`"],
        );
    }

    #[test]
    fn at_least_one_service_backend_and_listen_address() {
        for text in ["", "[global]\nworkers = 2\n"] {
            let err = parse(text).unwrap_err();
            assert_eq!((err.line, err.col), (None, None));
            assert!(err.message.contains("no [[service]] is defined"), "{err}");
        }
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\"]\n",
            (1, 1),
            &["services[0]: no backend", "[[service.backend]]"],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = []\n",
            (3, 10),
            &["services[0].listen: is empty"],
        );
    }

    #[test]
    fn workers_are_auto_or_1_to_1024() {
        assert_refused(
            &global_with("workers = 1025"),
            (2, 11),
            &["1025 is out of range", "1..=1024"],
        );
        assert_refused(
            &global_with("workers = -1"),
            (2, 11),
            &["-1 is out of range"],
        );
        assert_refused(
            &global_with("workers = \"all\""),
            (2, 11),
            &["\"all\" is not valid", "\"auto\""],
        );
        let config = parse(&global_with("workers = 1024")).unwrap();
        assert_eq!(
            config.global.workers,
            Workers::Count(NonZeroUsize::new(1024).unwrap())
        );
    }

    #[test]
    fn global_max_connections_is_auto_or_a_positive_integer() {
        assert_eq!(
            parse(MINIMAL).unwrap().global.max_connections,
            MaxConnections::Auto
        );
        let config = parse(&global_with("max_connections = \"auto\"")).unwrap();
        assert_eq!(config.global.max_connections, MaxConnections::Auto);
        let config = parse(&global_with("max_connections = 5000")).unwrap();
        assert_eq!(
            config.global.max_connections,
            MaxConnections::Count(NonZeroUsize::new(5000).unwrap())
        );
        assert_refused(
            &global_with("max_connections = 0"),
            (2, 19),
            &["global.max_connections", "0 is out of range", "\"auto\""],
        );
        assert_refused(
            &global_with("max_connections = \"lots\""),
            (2, 19),
            &["\"lots\" is not valid"],
        );
        assert_refused(
            &global_with("max_connections = true"),
            (2, 19),
            &["\"auto\" or a number of connections"],
        );
    }

    #[test]
    fn enum_keys_list_their_allowed_values() {
        let cases = [
            (global_with("engine = \"io_uring\""), (2, 10), "global.engine: \"io_uring\" is not valid (expected one of \"auto\", \"uring\", \"epoll\")"),
            (global_with("forwarding = \"zero-copy\""), (2, 14), "global.forwarding: \"zero-copy\" is not valid (expected one of \"auto\", \"splice\", \"uring-splice\", \"copy\", \"uring-copy\")"),
            (service_with("balance = \"rr\""), (4, 11), "services[0].balance: \"rr\" is not valid (expected one of \"maglev\", \"round-robin\", \"least-conn\", \"p2c\")"),
            (health_with("kind = \"grpc\""), (5, 8), "services[0].health.kind: \"grpc\" is not valid (expected one of \"http\", \"https\", \"tcp\", \"none\")"),
            (health_with("degraded = \"ok\""), (5, 12), "services[0].health.degraded: \"ok\" is not valid (expected one of \"unhealthy\", \"healthy\")"),
            (backend_with("state = \"down\""), (8, 9), "services[0].backend[0].state: \"down\" is not valid (expected one of \"enabled\", \"drain\", \"disabled\")"),
        ];
        for (text, at, message) in cases {
            assert_refused(&text, at, &[message]);
        }
    }

    #[test]
    fn uring_splice_needs_the_uring_engine() {
        assert_refused(
            &global_with("engine = \"epoll\"\nforwarding = \"uring-splice\""),
            (3, 14),
            &[
                "global.forwarding: \"uring-splice\" needs the io_uring engine",
                "(use \"splice\", or engine = \"uring\" or \"auto\")",
            ],
        );
        assert!(parse(&global_with(
            "engine = \"uring\"\nforwarding = \"uring-splice\""
        ))
        .is_ok());
    }

    #[test]
    fn uring_copy_is_a_forwarding_that_needs_the_uring_engine() {
        for (engine, expected) in [("uring", EngineKind::Uring), ("auto", EngineKind::Auto)] {
            let g = parse(&global_with(&format!(
                "engine = \"{engine}\"\nforwarding = \"uring-copy\""
            )))
            .unwrap()
            .global;
            assert_eq!((g.engine, g.forwarding), (expected, Forwarding::UringCopy));
        }
        assert_refused(
            &global_with("engine = \"epoll\"\nforwarding = \"uring-copy\""),
            (3, 14),
            &[
                "global.forwarding: \"uring-copy\" needs the io_uring engine",
                "(use \"copy\", or engine = \"uring\" or \"auto\")",
            ],
        );
        // Without io_uring each runs its inline equivalent.
        assert_eq!(Forwarding::UringCopy.inline(), Forwarding::Copy);
        assert_eq!(Forwarding::UringSplice.inline(), Forwarding::Splice);
        assert_eq!(Forwarding::Auto.inline(), Forwarding::Auto);
    }

    #[test]
    fn admin_is_an_address_or_off() {
        assert_refused(
            &global_with("admin = \"localhost:9090\""),
            (2, 9),
            &["global.admin: \"localhost:9090\" is not valid", "\"off\""],
        );
        assert_refused(
            &global_with("admin = \"9090\""),
            (2, 9),
            &["\"9090\" is not valid"],
        );
        assert_eq!(
            parse(&global_with("admin = \"off\"")).unwrap().global.admin,
            None
        );
    }

    #[test]
    fn admin_allow_entries_are_cidrs() {
        assert_refused(
            &global_with("admin_allow = [\"10.0.0.0/8\", \"10.0.0.0/40\"]"),
            (2, 30),
            &["global.admin_allow[1]: \"10.0.0.0/40\" is not a CIDR"],
        );
        assert_refused(
            &global_with("admin_allow = []"),
            (2, 15),
            &["global.admin_allow: is empty", "admin = \"off\""],
        );
    }

    #[test]
    fn admin_token_is_a_printable_secret() {
        assert_refused(
            &global_with("admin_token = \"\""),
            (2, 15),
            &["global.admin_token: the admin token is empty"],
        );
        assert_refused(
            &global_with("admin_token = \"a b\""),
            (2, 15),
            &["printable ASCII without spaces"],
        );
    }

    #[test]
    fn join_key_and_join_key_file_exclude_each_other() {
        assert_refused(
            &global_with("join_key = \"k\"\njoin_key_file = \"k.txt\""),
            (3, 17),
            &["global.join_key_file: join_key and join_key_file are both set"],
        );
    }

    #[test]
    fn join_keys_must_not_be_empty() {
        assert_refused(
            &global_with("join_key = \"  \""),
            (2, 12),
            &["global.join_key: the join key is empty"],
        );
        let dir = scratch_dir("empty-key");
        std::fs::write(dir.join("key"), "\n \n").unwrap();
        let file = dir.join("ringlb.toml");
        std::fs::write(&file, global_with("join_key_file = \"key\"")).unwrap();
        let err = Config::from_file(&file).unwrap_err();
        assert_eq!((err.line, err.col), (Some(2), Some(17)));
        assert!(err.message.contains("is empty"), "{err}");
        assert_eq!(err.file.as_deref(), Some(file.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key travels in an HTTP header (`X-Join-Key`, `Authorization:
    /// Bearer`): one holding a control character could never be sent, and
    /// the old code took it silently (a NUL or a BEL in the file, a `\u0007`
    /// in the TOML string). The trailing newline an editor adds is trimmed.
    #[test]
    fn join_keys_with_control_characters_are_refused() {
        let dir = scratch_dir("control-key");
        let file = dir.join("ringlb.toml");
        std::fs::write(&file, global_with("join_key_file = \"key\"")).unwrap();
        for (content, what) in [
            (&b"s3cret\x07key\n"[..], "a BEL"),
            (b"s3cret\x00\n", "a trailing NUL"),
            (b"s3c\tret\n", "a tab inside"),
            (b"s3cret\x1b[0m\n", "an escape sequence"),
            (b"s3cret\x7f\n", "a DEL"),
            ("s3c\u{85}ret\n".as_bytes(), "a C1 control"),
        ] {
            std::fs::write(dir.join("key"), content).unwrap();
            let err = match Config::from_file(&file) {
                Ok(c) => panic!("{what} in the key file was taken: {:?}", c.global.join_key),
                Err(e) => e,
            };
            assert_eq!((err.line, err.col), (Some(2), Some(17)), "{what}: {err}");
            assert!(
                err.message.contains("control character")
                    && err.message.contains("HTTP header")
                    && !err.message.contains("s3c"),
                "{what}: {err}"
            );
        }
        for content in ["s3cret\n", "s3cret\r\n", "s3cret"] {
            std::fs::write(dir.join("key"), content).unwrap();
            let config = Config::from_file(&file).unwrap();
            assert_eq!(
                config.global.join_key.as_deref(),
                Some("s3cret"),
                "{content:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_refused(
            &global_with("join_key = \"s3cret\\u0007\""),
            (2, 12),
            &["global.join_key", "control character", "HTTP header"],
        );
    }

    /// The config file was read whole, whatever its size: refused above
    /// [`MAX_CONFIG_FILE`] (a valid config padded with comments to 2 MiB
    /// was accepted by the old code).
    #[test]
    fn a_config_file_over_the_limit_is_refused() {
        let dir = scratch_dir("huge-config");
        let file = dir.join("ringlb.toml");
        let padding = format!("# {}\n", "x".repeat(1021)).repeat(2048);
        std::fs::write(&file, format!("{MINIMAL}{padding}")).unwrap();
        let err = match Config::from_file(&file) {
            Ok(_) => panic!("a config file of 2 MiB was read and accepted"),
            Err(e) => e,
        };
        assert_eq!((err.line, err.col), (None, None), "{err}");
        assert_eq!(err.file.as_deref(), Some(file.as_path()));
        assert!(
            err.message.contains("larger than 1 MiB")
                && err
                    .message
                    .contains(&format!("({} bytes;", MINIMAL.len() + padding.len())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `-c` naming a FIFO, a device or a directory: the old code opened a
    /// FIFO and waited for a writer forever (and read `/dev/zero` until
    /// memory ran out). Refused at once, before opening it.
    #[test]
    fn a_config_path_that_is_not_a_regular_file_is_refused_at_once() {
        let dir = scratch_dir("fifo-config");
        let fifo = dir.join("ringlb.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Config::from_file(&path));
        });
        let answer = rx.recv_timeout(Duration::from_secs(5));
        if answer.is_err() {
            // Unblock the reader (a writer opens and closes), then fail.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
            let _ = std::fs::remove_dir_all(&dir);
            panic!("Config::from_file on a FIFO had no answer in 5 s");
        }
        let err = answer.unwrap().expect_err("a FIFO is not a config file");
        assert!(
            err.message.contains("not a regular file") && err.message.contains("a FIFO"),
            "{err}"
        );
        for (path, kind) in [("/dev/zero", "a character device"), ("/tmp", "a directory")] {
            let start = std::time::Instant::now();
            let err = Config::from_file(Path::new(path)).expect_err(path);
            assert!(start.elapsed() < Duration::from_secs(2), "{path} took long");
            assert!(
                err.message.contains("not a regular file") && err.message.contains(kind),
                "{path}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_join_key_file_is_named_as_resolved() {
        let dir = scratch_dir("missing-key");
        let file = dir.join("ringlb.toml");
        std::fs::write(&file, global_with("join_key_file = \"secrets/join.key\"")).unwrap();
        let err = Config::from_file(&file).unwrap_err();
        assert_eq!((err.line, err.col), (Some(2), Some(17)));
        let named = dir.join("secrets/join.key").display().to_string();
        assert!(err.message.contains(&named), "{err} does not name {named}");
        assert!(
            err.message
                .starts_with("global.join_key_file: cannot read the join key file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn service_names_are_plain_and_unique() {
        assert_refused(
            "[[service]]\nname = \"my web\"\nlisten = [\"127.0.0.1:80\"]\n",
            (2, 8),
            &[
                "services[0].name: \"my web\" is not a valid name",
                "letters, digits",
            ],
        );
        let text = format!("{MINIMAL}\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:81\"]\n");
        assert_refused(
            &text,
            (10, 8),
            &["services[1].name: \"web\" is already the name of services[0]"],
        );
    }

    #[test]
    fn backend_names_are_plain_and_unique_within_a_service() {
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\"]\n[[service.backend]]\nname = \"app/1\"\naddress = \"10.0.0.1:80\"\n",
            (5, 8),
            &["services[0].backend[0].name: \"app/1\" is not a valid name"],
        );
        let text =
            format!("{MINIMAL}\n[[service.backend]]\nname = \"app1\"\naddress = \"10.0.0.2:80\"\n");
        assert_refused(
            &text,
            (10, 8),
            &["services[0].backend[1].name: \"app1\" is already the name of services[0].backend[0]"],
        );
        // The same backend name in two services is fine.
        let two = format!("{MINIMAL}\n[[service]]\nname = \"api\"\nlisten = [\"127.0.0.1:81\"]\n[[service.backend]]\nname = \"app1\"\naddress = \"10.0.0.1:81\"\n");
        assert_eq!(parse(&two).unwrap().services.len(), 2);
    }

    #[test]
    fn listen_addresses_are_socket_addresses() {
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"0.0.0.0:80\", \"8080\"]\n",
            (3, 25),
            &["services[0].listen[1]: \"8080\" is not a socket address (expected \"IP:port\" or \"[IPv6]:port\")"],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"::1:80\"]\n",
            (3, 11),
            &["\"::1:80\" is not a socket address", "brackets"],
        );
    }

    #[test]
    fn a_listen_address_belongs_to_one_service() {
        let text =
            format!("{MINIMAL}\n[[service]]\nname = \"api\"\nlisten = [\"127.0.0.1:8080\"]\n");
        assert_refused(
            &text,
            (11, 11),
            &["services[1].listen[0]: 127.0.0.1:8080 is already a listen address of service \"web\""],
        );
        assert_refused(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n",
            (3, 27),
            &["services[0].listen[1]: 127.0.0.1:80 is listed twice"],
        );
        // Port 0 takes a fresh port each time: tests use it in several services.
        let zero = "[[service]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"x\"\naddress = \"10.0.0.1:80\"\n\
                    [[service]]\nname = \"b\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"x\"\naddress = \"10.0.0.1:80\"\n";
        assert_eq!(parse(zero).unwrap().services.len(), 2);
    }

    #[test]
    fn backend_addresses_are_connectable_and_distinct() {
        let at_8 = |address: &str| {
            format!("[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\n\n[[service.backend]]\nname = \"app1\"\naddress = {address}\n")
        };
        assert_refused(
            &at_8("\"10.0.0.1\""),
            (7, 11),
            &["services[0].backend[0].address: \"10.0.0.1\" is not a socket address: the port is missing (expected \"IP:port\" or \"[IPv6]:port\")"],
        );
        assert_refused(
            &at_8("\"10.0.0.1:0\""),
            (7, 11),
            &["port 0 cannot be connected to"],
        );
        assert_refused(&at_8("\"0.0.0.0:80\""), (7, 11), &["unspecified address"]);
        assert_refused(&at_8("\"[ff02::1]:80\""), (7, 11), &["multicast"]);
        let text =
            format!("{MINIMAL}\n[[service.backend]]\nname = \"app2\"\naddress = \"10.0.0.1:80\"\n");
        assert_refused(&text, (11, 11), &["services[0].backend[1].address: 10.0.0.1:80 is already the address of backend \"app1\""]);
    }

    #[test]
    fn maglev_table_size_is_a_prime_above_the_backend_count() {
        assert_refused(
            &service_with("maglev_table_size = 65536"),
            (4, 21),
            &["services[0].maglev_table_size: 65536 is not a prime number"],
        );
        assert_refused(
            &service_with("maglev_table_size = 5"),
            (4, 21),
            &["5 is out of range (expected an integer 7..=16777216)"],
        );
        assert_refused(
            &service_with("maglev_table_size = 4294967291"),
            (4, 21),
            &["out of range"],
        );
        let mut text = service_with("maglev_table_size = 7");
        for i in 2..=7 {
            text.push_str(&format!(
                "[[service.backend]]\nname = \"app{i}\"\naddress = \"10.0.0.{i}:80\"\n"
            ));
        }
        assert_refused(
            &text,
            (4, 21),
            &["7 must be larger than the number of backends (7)"],
        );
    }

    #[test]
    fn hash_prefixes_are_in_range() {
        assert_refused(
            &service_with("hash_prefix_v4 = 33"),
            (4, 18),
            &["services[0].hash_prefix_v4: 33 is out of range (expected an integer 0..=32)"],
        );
        assert_refused(
            &service_with("hash_prefix_v6 = 129"),
            (4, 18),
            &["services[0].hash_prefix_v6: 129 is out of range (expected an integer 0..=128)"],
        );
        let config = parse(&service_with("hash_prefix_v4 = 0\nhash_prefix_v6 = 128")).unwrap();
        assert_eq!(
            (
                config.services[0].hash_prefix_v4,
                config.services[0].hash_prefix_v6
            ),
            (0, 128)
        );
    }

    #[test]
    fn bounded_load_is_finite_and_above_one() {
        for value in ["1.0", "0.5", "nan", "inf", "-inf"] {
            assert_refused(
                &service_with(&format!("bounded_load = {value}")),
                (4, 16),
                &[
                    "services[0].bounded_load",
                    "is not valid (expected a number greater than 1.0",
                ],
            );
        }
        assert_eq!(
            parse(&service_with("bounded_load = 2")).unwrap().services[0].bounded_load,
            Some(2.0)
        );
    }

    #[test]
    fn weights_are_1_to_10000() {
        assert_refused(
            &backend_with("weight = 0"),
            (8, 10),
            &["services[0].backend[0].weight: 0 is not a valid weight (expected an integer from 1 to 10000)"],
        );
        assert_refused(
            &backend_with("weight = 10001"),
            (8, 10),
            &["10001 is not a valid weight"],
        );
    }

    #[test]
    fn counts_that_must_be_positive() {
        assert_refused(
            &service_with("connect_attempts = 0"),
            (4, 20),
            &["services[0].connect_attempts: 0 is out of range (expected an integer 1..="],
        );
        assert_refused(
            &service_with("max_connections = 0"),
            (4, 19),
            &["services[0].max_connections: 0 is out of range (expected an integer >= 1)"],
        );
        assert_refused(
            &health_with("rise = 0"),
            (5, 8),
            &["services[0].health.rise: 0 is out of range"],
        );
        assert_refused(
            &health_with("fall = -3"),
            (5, 8),
            &["services[0].health.fall: -3 is out of range"],
        );
        assert_refused(
            &global_with("pipe_pool = -1"),
            (2, 13),
            &["global.pipe_pool: -1 is out of range (expected an integer >= 0)"],
        );
    }

    #[test]
    fn durations_are_parsed_and_zero_only_where_it_means_something() {
        assert_refused(
            &service_with("idle_timeout = \"15 minutes\""),
            (4, 16),
            &[
                "services[0].idle_timeout: \"15 minutes\" is not a duration",
                "\"1m30s\"",
            ],
        );
        assert_refused(
            &service_with("connect_timeout = \"1.5s\""),
            (4, 19),
            &["\"1.5s\" is not a duration"],
        );
        assert_refused(
            &service_with("connect_timeout = \"0s\""),
            (4, 19),
            &["services[0].connect_timeout: \"0s\" is not valid: it must be longer than zero"],
        );
        assert_refused(
            &health_with("interval = \"0ms\""),
            (5, 12),
            &["services[0].health.interval", "longer than zero"],
        );
        assert_refused(
            &health_with("fast_interval = \"0s\""),
            (5, 17),
            &["longer than zero"],
        );
        assert_refused(
            &health_with("timeout = \"0s\""),
            (5, 11),
            &["longer than zero"],
        );
        assert_refused(
            &service_with("idle_timeout = \"9000h\""),
            (4, 16),
            &["\"9000h\" is too long"],
        );
        let config = parse(&global_with("shutdown_timeout = \"0s\"")).unwrap();
        assert_eq!(config.global.shutdown_timeout, Duration::ZERO);
    }

    #[test]
    fn health_timeout_is_at_most_the_interval() {
        assert_refused(
            &health_with("interval = \"1s\"\ntimeout = \"1500ms\""),
            (6, 11),
            &["services[0].health.timeout: the timeout (1s500ms) must not exceed the interval (1s)"],
        );
        // Only the interval is set: the default timeout (1s) exceeds it.
        assert_refused(
            &health_with("interval = \"500ms\""),
            (5, 12),
            &["services[0].health.interval: the timeout (1s) must not exceed the interval (500ms)"],
        );
        assert!(parse(&health_with("interval = \"1s\"\ntimeout = \"1s\"")).is_ok());
    }

    #[test]
    fn backends_may_be_given_by_host_name() {
        let text = format!(
            "{MINIMAL}\n[[service.backend]]\nname = \"app2\"\naddress = \"art1.internal:8081\"\n\
             [[service.backend]]\nname = \"app3\"\naddress = \"art1.internal:8081\"\n"
        );
        let config = parse(&text).unwrap();
        let b = &config.services[0].backends;
        assert_eq!(b[0].host, None);
        assert_eq!(b[1].host.as_deref(), Some("art1.internal:8081"));
        assert_eq!(
            b[1].address,
            "0.0.0.0:8081".parse().unwrap(),
            "unresolved until resolve_names"
        );
        assert_eq!(b[2].host, b[1].host, "one name may serve two backends");
        assert!(config.has_unresolved_names());
        let at = |address: &str| MINIMAL.replace("10.0.0.1:80", address);
        // A host name gets the config's own syntax in the message (the
        // join API, which takes no names, words it otherwise).
        for (bad, says) in [
            (
                "art1.internal:0",
                "the port must be a number from 1 to 65535, not \"0\"",
            ),
            (
                "art1.internal:http",
                "the port must be a number from 1 to 65535",
            ),
            ("art1.internal", "has no port: write \"art1.internal:PORT\""),
            ("art 1:80", "not a socket address"),
        ] {
            assert_refused(&at(bad), (7, 11), &[says]);
        }
        assert_refused(&at("art1.internal"), (7, 11), &["\"host:port\""]);
    }

    #[test]
    fn resolve_interval_is_positive() {
        assert_eq!(
            parse(MINIMAL).unwrap().global.resolve_interval,
            Duration::from_secs(30)
        );
        let g = parse(&global_with("resolve_interval = \"1s\""))
            .unwrap()
            .global;
        assert_eq!(g.resolve_interval, Duration::from_secs(1));
        assert_refused(
            &global_with("resolve_interval = \"0s\""),
            (2, 20),
            &["global.resolve_interval"],
        );
    }

    #[test]
    fn health_port_and_address_are_checked() {
        assert_refused(
            &health_with("port = 0"),
            (5, 8),
            &["services[0].health.port: 0 is out of range (expected an integer 1..=65535)"],
        );
        assert_refused(&health_with("port = 65536"), (5, 8), &["out of range"]);
        assert_refused(&health_with("port = \"8081\""), (5, 8), &["port"]);
        assert_refused(
            &health_with("port = 8081\naddress = \"art1.internal\""),
            (6, 11),
            &[
                "services[0].health.address: \"art1.internal\" is not an IP address",
                "set `port` alone",
            ],
        );
        let h = &parse(&health_with("port = 8081\naddress = \"fd00::5\""))
            .unwrap()
            .services[0]
            .health;
        assert_eq!(
            (h.port, h.address),
            (Some(8081), Some("fd00::5".parse().unwrap()))
        );
        let h = &parse(&health_with("")).unwrap().services[0].health;
        assert_eq!((h.port, h.address), (None, None));
    }

    #[test]
    fn jitter_is_0_to_half() {
        assert_refused(&health_with("jitter = 0.6"), (5, 10), &["services[0].health.jitter: 0.6 is out of range (expected a fraction of the interval from 0.0 to 0.5)"]);
        assert_refused(&health_with("jitter = -0.1"), (5, 10), &["out of range"]);
        assert_refused(&health_with("jitter = nan"), (5, 10), &["out of range"]);
        assert_eq!(
            parse(&health_with("jitter = 0.5")).unwrap().services[0]
                .health
                .jitter,
            0.5
        );
    }

    #[test]
    fn health_path_and_host_are_request_safe() {
        assert_refused(
            &health_with("path = \"health\""),
            (5, 8),
            &["services[0].health.path: \"health\" does not start with '/'"],
        );
        assert_refused(
            &health_with("path = \"/a b\""),
            (5, 8),
            &["printable ASCII without spaces"],
        );
        assert_refused(
            &health_with("host = \"a b\""),
            (5, 8),
            &["services[0].health.host: \"a b\" is not a host"],
        );
        assert_refused(
            &health_with("host = \"a:http\""),
            (5, 8),
            &["is not a host"],
        );
        for host in ["art.example.com", "10.0.0.1:8081", "[::1]:8081", "[::1]"] {
            assert!(
                parse(&health_with(&format!("host = {host:?}"))).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn ca_file_must_exist() {
        let dir = scratch_dir("ca-file");
        let file = dir.join("ringlb.toml");
        std::fs::write(&file, health_with("kind = \"https\"\nca_file = \"ca.pem\"")).unwrap();
        let err = Config::from_file(&file).unwrap_err();
        assert_eq!((err.line, err.col), (Some(6), Some(11)), "{err}");
        let named = dir.join("ca.pem").display().to_string();
        assert!(
            err.message.starts_with("services[0].health.ca_file: "),
            "{err}"
        );
        assert!(err.message.contains(&named), "{err} does not name {named}");
        std::fs::write(dir.join("ca.pem"), "pem").unwrap();
        let config = Config::from_file(&file).unwrap();
        assert_eq!(config.services[0].health.ca_file, Some(dir.join("ca.pem")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn https_checks_need_a_ca_file_or_an_explicit_opt_out() {
        assert_refused(
            &health_with("kind = \"https\""),
            (5, 8),
            &["services[0].health.kind: https health checks need ca_file or insecure_skip_verify = true"],
        );
        let config = parse(&health_with(
            "kind = \"https\"\ninsecure_skip_verify = true",
        ))
        .unwrap();
        assert!(config.services[0].health.insecure_skip_verify);
    }

    #[test]
    fn sni_is_a_server_name() {
        assert_refused(
            &health_with("sni = \"not a name\""),
            (5, 7),
            &["services[0].health.sni: \"not a name\" is not a server name"],
        );
        assert!(parse(&health_with("sni = \"10.0.0.1\"")).is_ok());
    }

    #[test]
    fn proxies_are_http_host_port_urls() {
        assert_refused(
            &health_with("http_proxy = \"proxy:3128\""),
            (5, 14),
            &["services[0].health.http_proxy: \"proxy:3128\" is not a proxy URL (expected \"http://host:port\")"],
        );
        assert_refused(
            &health_with("https_proxy = \"https://proxy:3128\""),
            (5, 15),
            &["only http:// proxies are supported"],
        );
        assert_refused(
            &health_with("no_proxy = [\"localhost\", \"a b\"]"),
            (5, 26),
            &["services[0].health.no_proxy[1]: \"a b\" is not a host, domain or CIDR"],
        );
        let config = parse(&health_with("no_proxy = []")).unwrap();
        assert_eq!(config.services[0].health.no_proxy, Some(vec![]));
    }

    #[test]
    fn pipe_size_is_a_power_of_two_from_4k_to_1m() {
        for value in ["\"3KiB\"", "\"2MiB\"", "100000", "0"] {
            assert_refused(
                &global_with(&format!("pipe_size = {value}")),
                (2, 13),
                &[
                    "global.pipe_size",
                    "is not valid (expected a power of two from 4KiB to 1MiB",
                ],
            );
        }
        assert_refused(
            &global_with("pipe_size = \"64KB\""),
            (2, 13),
            &["\"64KB\" is not a size"],
        );
        assert_refused(
            &global_with("pipe_size = -4096"),
            (2, 13),
            &["-4096 is negative"],
        );
        assert_eq!(
            parse(&global_with("pipe_size = 4096"))
                .unwrap()
                .global
                .pipe_size
                .get(),
            4096
        );
    }

    #[test]
    fn max_body_is_a_positive_size() {
        assert_refused(
            &health_with("max_body = 0"),
            (5, 12),
            &["services[0].health.max_body: 0 bytes is not valid"],
        );
        assert_eq!(
            parse(&health_with("max_body = \"1MiB\"")).unwrap().services[0]
                .health
                .max_body,
            1 << 20
        );
    }

    #[test]
    fn source_address_is_an_ip_of_the_backends_family() {
        assert_refused(
            &service_with("source_address = \"10.0.0.5:0\""),
            (4, 18),
            &["services[0].source_address: \"10.0.0.5:0\" is not an IP address"],
        );
        assert_refused(
            &service_with("source_address = \"fd00::5\""),
            (4, 18),
            &["services[0].source_address: fd00::5 cannot reach backend \"app1\" at 10.0.0.1:80"],
        );
    }

    #[test]
    fn files_must_be_utf8_and_readable() {
        let mut bytes = MINIMAL.as_bytes().to_vec();
        bytes.splice(13..13, [b'\xff']); // inside `name = "web"` on line 2
        let err = Config::parse_bytes(&bytes, Some(Path::new("x.toml"))).unwrap_err();
        assert_eq!((err.line, err.col), (Some(2), Some(2)), "{err}");
        assert!(err.message.contains("not UTF-8"), "{err}");

        let missing = Path::new("/nonexistent/ringlb.toml");
        let err = Config::from_file(missing).unwrap_err();
        assert_eq!(
            (err.line, err.col, err.file.as_deref()),
            (None, None, Some(missing))
        );
        assert!(
            err.to_string()
                .starts_with("/nonexistent/ringlb.toml: cannot read the config file:"),
            "{err}"
        );
    }

    #[test]
    fn the_examples_of_the_user_docs_parse() {
        let docs = include_str!("../../docs/config.md");
        let blocks: Vec<&str> = docs
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .collect();
        assert_eq!(blocks.len(), 2, "docs/config.md: minimal and full example");
        let dir = scratch_dir("docs");
        std::fs::write(dir.join("join.key"), "secret\n").unwrap();
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/cluster-ca.pem"), "pem").unwrap();
        for (i, block) in blocks.iter().enumerate() {
            let file = dir.join(format!("example{i}.toml"));
            std::fs::write(&file, block).unwrap();
            if let Err(err) = Config::from_file(&file) {
                panic!("docs/config.md example {i}: {err}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let depth = 100_000;
        let arrays = format!(
            "[global]\nworkers = {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let tables = format!(
            "[global]\nworkers = {}{}\n",
            "{a = ".repeat(depth),
            "}".repeat(depth)
        );
        for text in [arrays, tables] {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, Some(2), "{err}");
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        // Bytes that matter to TOML and to the validators, plus noise.
        const ALPHABET: &[u8] =
            b"[]{}=\"'.,:#\n 0123456789-+_/abcdefghijklmnopqrstuvwxyz\xff\xc3\xa9";
        let seeds = [
            DESIGN_EXAMPLE,
            MINIMAL,
            &health_with("kind = \"https\"\ninsecure_skip_verify = true\njitter = 0.2"),
        ];
        let mut rng = StdRng::seed_from_u64(0x5EED_C0F1);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..2_000 {
            let mut bytes = seeds[rng.gen_range(0..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..=4) {
                let at = rng.gen_range(0..=bytes.len());
                let byte = ALPHABET[rng.gen_range(0..ALPHABET.len())];
                match rng.gen_range(0..4) {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {
                        // Duplicate a random slice somewhere else.
                        let start = rng.gen_range(0..bytes.len());
                        let end = rng.gen_range(start..=bytes.len().min(start + 40));
                        let slice = bytes[start..end].to_vec();
                        let to = rng.gen_range(0..=bytes.len());
                        bytes.splice(to..to, slice);
                    }
                }
            }
            let outcome = std::panic::catch_unwind(|| Config::parse_bytes(&bytes, None));
            match outcome {
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(err)) => {
                    refused += 1;
                    assert!(!err.message.is_empty());
                    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
                    assert!(
                        err.line.is_none_or(|line| line <= lines),
                        "{err} is past the end"
                    );
                }
                Err(_) => panic!("panicked on {:?}", String::from_utf8_lossy(&bytes)),
            }
        }
        // The mutations both keep and break configs: the test exercises both.
        assert!(
            accepted > 50 && refused > 500,
            "accepted {accepted}, refused {refused}"
        );
    }
}
