//! Configuration: the TOML file (see DESIGN.md and docs/config.md) parsed into
//! a validated [`Config`]. Runs on whichever thread loads it (start-up, or the
//! control plane on reload); pure: no sockets, no clocks, no logging.
//!
//! `RawConfig` (serde, `deny_unknown_fields`, spans kept) becomes `Config`
//! through validation; nothing past this module re-checks a value.
//!
//! Layout: `raw` (the serde mirror of the file, spans kept), `validate`
//! (`RawConfig` → `Config`, every check), `value` (duration, size, address
//! syntaxes), `locate` (byte spans → `line:col` and key paths). The public
//! types below are the contract other modules code against.

mod locate;
mod raw;
mod validate;
mod value;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ipnet::IpNet;

/// Default Maglev lookup table size: prime, and > 100 × N for up to 655
/// backends, which keeps every backend's share within 1% of its weight.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
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
    /// `forwarding = "auto" | "splice" | "uring-splice" | "copy"`; default auto.
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
    /// `pipe_size = "64KiB"` (default; bytes or "NKiB"/"NMiB"; power of two,
    /// 4 KiB ..= 1 MiB): capacity asked of each splice pipe (F_SETPIPE_SZ).
    pub pipe_size: NonZeroUsize,
    /// `pipe_pool = 256` (default): idle pipes a worker keeps for reuse.
    pub pipe_pool: usize,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// The measured default.
    Auto,
    /// Readiness + non-blocking `splice(2)` inline through a pipe.
    Splice,
    /// `IORING_OP_SPLICE` (io_uring engine only).
    UringSplice,
    /// recv/send through a buffer (copies).
    Copy,
}

/// `[[service]]`: one listening front with its backend pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique among services; `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// At least one; a listen address appears in at most one service.
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
    /// `source_address = "10.0.0.5"` (default none): local address for
    /// backend connections (bound with IP_BIND_ADDRESS_NO_PORT).
    pub source_address: Option<IpAddr>,
    /// `[service.health]`.
    pub health: HealthCheck,
    /// `[[service.backend]]`: at least one; names unique within the service.
    pub backends: Vec<Backend>,
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
    /// Unique in its service; its stable identity for Maglev.
    pub name: String,
    pub address: SocketAddr,
    /// `weight = 100` (default), 1..=10000.
    pub weight: NonZeroU32,
    /// `state = "enabled"` (default) | "drain" | "disabled": the initial
    /// admin state.
    pub state: AdminState,
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
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        if let (Some(line), Some(col)) = (self.line, self.col) {
            write!(f, "{line}:{col}:")?;
        }
        if self.file.is_some() || self.line.is_some() {
            f.write_str(" ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file. Relative paths in it
    /// (`join_key_file`, `ca_file`) are resolved against its directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            col: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse_bytes(&bytes, Some(path))
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

    /// [`Config::parse`] for bytes that may not be UTF-8.
    fn parse_bytes(bytes: &[u8], file: Option<&Path>) -> Result<Config, ConfigError> {
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
            pipe_size: NonZeroUsize::new(64 << 10).unwrap_or(NonZeroUsize::MIN),
            pipe_pool: 256,
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
            source_address: None,
            health: HealthCheck::default(),
            backends,
        }
    }
}

impl Backend {
    /// An enabled backend of weight 100 (the defaults); not validated.
    pub fn new(name: impl Into<String>, address: SocketAddr) -> Self {
        Backend {
            name: name.into(),
            address,
            weight: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            state: AdminState::Enabled,
        }
    }
}
