//! `RawConfig` → [`Config`]: every check of the file's content, section by
//! section, stopping at the first problem. Each check reports the key path and
//! the span of the value (or of the table a key is missing from). The only
//! I/O is reading `join_key_file` and checking that `ca_file` exists.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;
use toml::Spanned;

use super::locate::Invalid;
use super::raw::{
    DurationText, RawBackend, RawConfig, RawGlobal, RawHealth, RawMaxConnections, RawService,
    RawSize, RawWorkers, Text, TextList,
};
use super::value::{
    format_duration, is_prime, is_valid_host, is_valid_name, parse_cidr, parse_duration,
    parse_proxy_url, parse_size, parse_socket_addr,
};
use super::{
    AdminState, Backend, Balance, Config, DegradedIs, EngineKind, Forwarding, Global, HealthCheck,
    HealthKind, MaxConnections, Service, Workers, DEFAULT_MAGLEV_TABLE_SIZE,
};

/// Largest `workers` count: far above any machine this runs on, low enough
/// to catch a typo before it spawns thousands of threads.
const MAX_WORKERS: usize = 1024;
/// Largest backend weight.
const MAX_WEIGHT: i64 = 10_000;
/// Smallest and largest `pipe_size`: a page, and the kernel's default
/// `pipe-max-size`.
const MIN_PIPE_SIZE: u64 = 4 << 10;
const MAX_PIPE_SIZE: u64 = 1 << 20;
/// Largest Maglev table: 2^24 slots are ample for 100 × 10 000 backends; a
/// larger one only costs memory and build time on every change.
const MAX_MAGLEV_TABLE_SIZE: i64 = 1 << 24;

/// The parsed file and where its relative paths start from.
pub(super) struct Raw<'a> {
    pub config: RawConfig,
    /// The config file's directory: `join_key_file` and `ca_file` are
    /// relative to it (empty: the current directory).
    pub base_dir: &'a Path,
}

impl TryFrom<Raw<'_>> for Config {
    type Error = Invalid;

    fn try_from(raw: Raw<'_>) -> Result<Config, Invalid> {
        let global = match raw.config.global {
            Some(global) => convert_global(global.into_inner(), raw.base_dir)?,
            None => Global::default(),
        };
        if raw.config.service.is_empty() {
            return Err(Invalid::whole_file(
                "no [[service]] is defined (add at least one, with name, listen and a [[service.backend]])",
            ));
        }
        let mut seen = Seen::default();
        let services = raw
            .config
            .service
            .into_iter()
            .enumerate()
            .map(|(index, service)| seen.service(service, index, raw.base_dir))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config { global, services })
    }
}

/// What earlier services claimed, for the checks across services.
#[derive(Default)]
struct Seen {
    /// Service name → index of the service that has it.
    service_names: HashMap<String, usize>,
    /// Listen address → name of the service that listens on it.
    listen_owners: HashMap<SocketAddr, String>,
}

fn convert_global(raw: RawGlobal, base_dir: &Path) -> Result<Global, Invalid> {
    let default = Global::default();
    let workers = match &raw.workers {
        None => default.workers,
        Some(workers) => convert_workers(workers)?,
    };
    let engine = match &raw.engine {
        None => default.engine,
        Some(engine) => choice(
            engine,
            "global.engine",
            &[
                ("auto", EngineKind::Auto),
                ("uring", EngineKind::Uring),
                ("epoll", EngineKind::Epoll),
            ],
        )?,
    };
    let forwarding = match &raw.forwarding {
        None => default.forwarding,
        Some(forwarding) => choice(
            forwarding,
            "global.forwarding",
            &[
                ("auto", Forwarding::Auto),
                ("splice", Forwarding::Splice),
                ("uring-splice", Forwarding::UringSplice),
                ("copy", Forwarding::Copy),
                ("uring-copy", Forwarding::UringCopy),
            ],
        )?,
    };
    if let (Some(raw_forwarding), EngineKind::Epoll) = (&raw.forwarding, engine) {
        if forwarding.needs_uring() {
            return Err(Invalid::at(
                raw_forwarding.span(),
                "global.forwarding",
                format!(
                    "{:?} needs the io_uring engine, but engine = \"epoll\" \
                     (use {:?}, or engine = \"uring\" or \"auto\")",
                    forwarding.name(),
                    forwarding.inline().name()
                ),
            ));
        }
    }
    let admin = match &raw.admin {
        None => default.admin,
        Some(admin) if admin.get_ref() == "off" => None,
        Some(admin) => Some(admin.get_ref().parse::<SocketAddr>().map_err(|_| {
            Invalid::at(
                admin.span(),
                "global.admin",
                format!(
                    "{:?} is not valid (expected \"IP:port\", \"[IPv6]:port\" or \"off\")",
                    admin.get_ref()
                ),
            )
        })?),
    };
    let admin_allow = match &raw.admin_allow {
        None => default.admin_allow,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(Invalid::at(
                    list.span(),
                    "global.admin_allow",
                    "is empty, so no client could use the admin API \
                     (list CIDRs such as \"127.0.0.0/8\", or set admin = \"off\")",
                ));
            }
            each(list, "global.admin_allow", parse_cidr)?
        }
    };
    let admin_token = match &raw.admin_token {
        None => None,
        Some(token) => Some(convert_secret(token, "global.admin_token", "admin token")?),
    };
    let join_key = match (&raw.join_key, &raw.join_key_file) {
        (Some(_), Some(file)) => {
            return Err(Invalid::at(
                file.span(),
                "global.join_key_file",
                "join_key and join_key_file are both set (keep one)",
            ))
        }
        (Some(key), None) => {
            if key.get_ref().trim().is_empty() {
                return Err(Invalid::at(
                    key.span(),
                    "global.join_key",
                    "the join key is empty (set a secret, or remove join_key to turn joining off)",
                ));
            }
            Some(key.get_ref().clone())
        }
        (None, Some(file)) => Some(read_join_key(file, base_dir)?),
        (None, None) => None,
    };
    let shutdown_timeout = match &raw.shutdown_timeout {
        None => default.shutdown_timeout,
        Some(timeout) => convert_duration(timeout, "global.shutdown_timeout", Zero::Allowed)?,
    };
    let pipe_size = match &raw.pipe_size {
        None => default.pipe_size,
        Some(size) => convert_pipe_size(size)?,
    };
    let pipe_pool = match &raw.pipe_pool {
        None => default.pipe_pool,
        Some(count) => integer(count, "global.pipe_pool", 0, i64::MAX)?,
    };
    let max_connections = match &raw.max_connections {
        None => default.max_connections,
        Some(max) => convert_max_connections(max)?,
    };
    Ok(Global {
        workers,
        engine,
        forwarding,
        admin,
        admin_allow,
        admin_token,
        join_key,
        shutdown_timeout,
        pipe_size,
        pipe_pool,
        max_connections,
    })
}

/// `[global] max_connections`: "auto" or an integer >= 1. Whether the
/// open-files limit can honour it is a run-time question (`budget.rs`).
fn convert_max_connections(max: &Spanned<RawMaxConnections>) -> Result<MaxConnections, Invalid> {
    let count = match max.get_ref() {
        RawMaxConnections::Text(text) if text == "auto" => return Ok(MaxConnections::Auto),
        RawMaxConnections::Text(text) => Err(format!("{text:?} is not valid")),
        RawMaxConnections::Count(n) => usize::try_from(*n)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or(format!("{n} is out of range")),
    };
    count.map(MaxConnections::Count).map_err(|what| {
        Invalid::at(
            max.span(),
            "global.max_connections",
            format!("{what} (expected \"auto\" or an integer >= 1)"),
        )
    })
}

fn convert_workers(workers: &Spanned<RawWorkers>) -> Result<Workers, Invalid> {
    let count = match workers.get_ref() {
        RawWorkers::Text(text) if text == "auto" => return Ok(Workers::Auto),
        RawWorkers::Text(text) => Err(format!("{text:?} is not valid")),
        RawWorkers::Count(n) => usize::try_from(*n)
            .ok()
            .filter(|n| (1..=MAX_WORKERS).contains(n))
            .and_then(NonZeroUsize::new)
            .ok_or(format!("{n} is out of range")),
    };
    count.map(Workers::Count).map_err(|what| {
        Invalid::at(
            workers.span(),
            "global.workers",
            format!("{what} (expected \"auto\" or an integer 1..={MAX_WORKERS})"),
        )
    })
}

fn convert_pipe_size(size: &Spanned<RawSize>) -> Result<NonZeroUsize, Invalid> {
    let path = "global.pipe_size";
    let bytes = convert_size(size, path)?;
    if !bytes.is_power_of_two() || !(MIN_PIPE_SIZE..=MAX_PIPE_SIZE).contains(&bytes) {
        return Err(Invalid::at(
            size.span(),
            path,
            format!("{bytes} bytes is not valid (expected a power of two from 4KiB to 1MiB, e.g. \"64KiB\")"),
        ));
    }
    usize::try_from(bytes)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| Invalid::at(size.span(), path, "does not fit this machine's memory"))
}

/// A secret sent in HTTP headers: visible ASCII, no spaces.
fn convert_secret(secret: &Text, path: &str, what: &str) -> Result<String, Invalid> {
    let text = secret.get_ref();
    if text.is_empty() {
        return Err(Invalid::at(
            secret.span(),
            path,
            format!("the {what} is empty (set a secret, or remove the key)"),
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::at(
            secret.span(),
            path,
            format!(
                "the {what} must be printable ASCII without spaces (it travels in an HTTP header)"
            ),
        ));
    }
    Ok(text.clone())
}

/// Reads `join_key_file` (relative to the config file's directory): its
/// content, trimmed, is the key.
fn read_join_key(file: &Text, base_dir: &Path) -> Result<String, Invalid> {
    let path = "global.join_key_file";
    let resolved = resolve(file, path, base_dir)?;
    let bytes = std::fs::read(&resolved).map_err(|e| {
        Invalid::at(
            file.span(),
            path,
            format!("cannot read the join key file {}: {e}", resolved.display()),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Invalid::at(
            file.span(),
            path,
            format!("the join key file {} is not UTF-8 text", resolved.display()),
        )
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(Invalid::at(
            file.span(),
            path,
            format!(
                "the join key file {} is empty (put the shared secret in it)",
                resolved.display()
            ),
        ));
    }
    Ok(key.to_owned())
}

/// A path from the file, relative to the config file's directory.
fn resolve(file: &Text, path: &str, base_dir: &Path) -> Result<PathBuf, Invalid> {
    if file.get_ref().is_empty() {
        return Err(Invalid::at(
            file.span(),
            path,
            "is empty (expected a file path)",
        ));
    }
    Ok(base_dir.join(file.get_ref()))
}

impl Seen {
    fn service(
        &mut self,
        raw: Spanned<RawService>,
        index: usize,
        base_dir: &Path,
    ) -> Result<Service, Invalid> {
        let table = raw.span();
        let raw = raw.into_inner();
        let path = format!("services[{index}]");
        let at = |key: &str| format!("{path}.{key}");
        let default = Service::new(String::new(), Vec::new(), Vec::new());

        let raw_name = required(
            &raw.name,
            &table,
            &path,
            "name",
            "a unique name such as \"web\"",
        )?;
        let name = convert_name(raw_name, &at("name"))?;
        if let Some(other) = self.service_names.get(&name) {
            return Err(Invalid::at(
                raw_name.span(),
                at("name"),
                format!("{name:?} is already the name of services[{other}] (service names must be unique)"),
            ));
        }
        self.service_names.insert(name.clone(), index);

        let listen = self.convert_listen(&raw, &table, &path, &name)?;
        let balance = match &raw.balance {
            None => default.balance,
            Some(balance) => choice(
                balance,
                &at("balance"),
                &[
                    ("maglev", Balance::Maglev),
                    ("round-robin", Balance::RoundRobin),
                    ("least-conn", Balance::LeastConn),
                    ("p2c", Balance::P2c),
                ],
            )?,
        };
        let connect_timeout = optional_duration(
            &raw.connect_timeout,
            &at("connect_timeout"),
            default.connect_timeout,
        )?;
        let idle_timeout =
            optional_duration(&raw.idle_timeout, &at("idle_timeout"), default.idle_timeout)?;
        let max_connections = match &raw.max_connections {
            None => default.max_connections,
            Some(max) => Some(positive_usize(max, &at("max_connections"))?),
        };
        let connect_attempts = match &raw.connect_attempts {
            None => default.connect_attempts,
            Some(attempts) => positive_u32(attempts, &at("connect_attempts"), i64::from(u32::MAX))?,
        };
        let hash_prefix_v4 = match &raw.hash_prefix_v4 {
            None => default.hash_prefix_v4,
            Some(prefix) => integer(prefix, &at("hash_prefix_v4"), 0, 32)?,
        };
        let hash_prefix_v6 = match &raw.hash_prefix_v6 {
            None => default.hash_prefix_v6,
            Some(prefix) => integer(prefix, &at("hash_prefix_v6"), 0, 128)?,
        };
        let bounded_load = match &raw.bounded_load {
            None => None,
            Some(factor) => {
                let c = *factor.get_ref();
                if !c.is_finite() || c <= 1.0 {
                    return Err(Invalid::at(
                        factor.span(),
                        at("bounded_load"),
                        format!("{c} is not valid (expected a number greater than 1.0, e.g. 1.25: a backend takes at most 25% more than the mean)"),
                    ));
                }
                Some(c)
            }
        };
        let source_address = match &raw.source_address {
            None => None,
            Some(source) => Some(source.get_ref().parse::<IpAddr>().map_err(|_| {
                Invalid::at(
                    source.span(),
                    at("source_address"),
                    format!(
                        "{:?} is not an IP address (expected e.g. \"10.0.0.5\" or \"fd00::5\")",
                        source.get_ref()
                    ),
                )
            })?),
        };
        let health = match &raw.health {
            None => HealthCheck::default(),
            Some(health) => convert_health(health, &at("health"), base_dir)?,
        };

        let backends = convert_backends(&raw, &table, &path, source_address)?;
        let maglev_table_size = convert_table_size(&raw, &table, &path, backends.len())?;

        Ok(Service {
            name,
            listen,
            balance,
            connect_timeout,
            idle_timeout,
            max_connections,
            connect_attempts,
            maglev_table_size,
            hash_prefix_v4,
            hash_prefix_v6,
            bounded_load,
            source_address,
            health,
            backends,
        })
    }

    fn convert_listen(
        &mut self,
        raw: &RawService,
        table: &Range<usize>,
        path: &str,
        name: &str,
    ) -> Result<Vec<SocketAddr>, Invalid> {
        let key = format!("{path}.listen");
        let list = required(
            &raw.listen,
            table,
            path,
            "listen",
            "an array of addresses such as [\"0.0.0.0:8080\"]",
        )?;
        if list.get_ref().is_empty() {
            return Err(Invalid::at(
                list.span(),
                &key,
                "is empty (expected at least one address such as \"0.0.0.0:8080\")",
            ));
        }
        let listen = each(list, &key, parse_socket_addr)?;
        for (i, (addr, item)) in listen.iter().zip(list.get_ref()).enumerate() {
            // Port 0 asks the kernel for a fresh port each time: never shared.
            if addr.port() == 0 {
                continue;
            }
            if listen
                .get(..i)
                .is_some_and(|earlier| earlier.contains(addr))
            {
                return Err(Invalid::at(
                    item.span(),
                    format!("{key}[{i}]"),
                    format!("{addr} is listed twice"),
                ));
            }
            if let Some(owner) = self.listen_owners.get(addr) {
                return Err(Invalid::at(
                    item.span(),
                    format!("{key}[{i}]"),
                    format!(
                        "{addr} is already a listen address of service {owner:?} \
                         (a listen address belongs to one service)"
                    ),
                ));
            }
        }
        for addr in &listen {
            self.listen_owners.insert(*addr, name.to_owned());
        }
        Ok(listen)
    }
}

/// `maglev_table_size`: a prime in 7..=2^24, larger than the backend count.
fn convert_table_size(
    raw: &RawService,
    table: &Range<usize>,
    path: &str,
    backend_count: usize,
) -> Result<u32, Invalid> {
    let key = format!("{path}.maglev_table_size");
    let (size, span) = match &raw.maglev_table_size {
        None => (DEFAULT_MAGLEV_TABLE_SIZE, table.clone()),
        Some(size) => {
            let n: u32 = integer(size, &key, 7, MAX_MAGLEV_TABLE_SIZE)?;
            if !is_prime(n) {
                return Err(Invalid::at(
                    size.span(),
                    &key,
                    format!("{n} is not a prime number (Maglev needs a prime table size, e.g. 65537, 131071 or 1048573)"),
                ));
            }
            (n, size.span())
        }
    };
    if usize::try_from(size).is_ok_and(|size| size <= backend_count) {
        return Err(Invalid::at(
            span,
            &key,
            format!("{size} must be larger than the number of backends ({backend_count}); use a prime above 100 times that"),
        ));
    }
    Ok(size)
}

/// The backends of a service: at least one, names and addresses unique, all
/// of `source_address`'s family when it is set.
fn convert_backends(
    raw: &RawService,
    table: &Range<usize>,
    path: &str,
    source_address: Option<IpAddr>,
) -> Result<Vec<Backend>, Invalid> {
    if raw.backend.is_empty() {
        return Err(Invalid::at(
            table.clone(),
            path,
            "no backend (add at least one [[service.backend]] with name and address)",
        ));
    }
    let mut backend_names: HashMap<String, usize> = HashMap::new();
    let mut backend_addresses: HashMap<SocketAddr, String> = HashMap::new();
    let mut backends = Vec::with_capacity(raw.backend.len());
    for (i, backend) in raw.backend.iter().enumerate() {
        let backend_path = format!("{path}.backend[{i}]");
        let backend = convert_backend(backend, &backend_path)?;
        if let Some(other) = backend_names.insert(backend.name.clone(), i) {
            let span = backend.name_span.clone();
            return Err(Invalid::at(
                span,
                format!("{backend_path}.name"),
                format!(
                    "{:?} is already the name of {path}.backend[{other}] (backend names must be unique within a service)",
                    backend.name
                ),
            ));
        }
        if let Some(other) = backend_addresses.get(&backend.address) {
            return Err(Invalid::at(
                backend.address_span.clone(),
                format!("{backend_path}.address"),
                format!(
                    "{} is already the address of backend {other:?} (each backend must have its own address)",
                    backend.address
                ),
            ));
        }
        backend_addresses.insert(backend.address, backend.name.clone());
        if let (Some(source), Some(raw_source)) = (source_address, &raw.source_address) {
            if source.is_ipv4() != backend.address.is_ipv4() {
                return Err(Invalid::at(
                    raw_source.span(),
                    format!("{path}.source_address"),
                    format!(
                        "{source} cannot reach backend {:?} at {}: the address families differ \
                         (use backends of one family, or remove source_address)",
                        backend.name, backend.address
                    ),
                ));
            }
        }
        backends.push(Backend {
            name: backend.name,
            address: backend.address,
            weight: backend.weight,
            state: backend.state,
        });
    }
    Ok(backends)
}

/// A backend as converted, with the spans the checks across backends need.
struct CheckedBackend {
    name: String,
    name_span: Range<usize>,
    address: SocketAddr,
    address_span: Range<usize>,
    weight: NonZeroU32,
    state: AdminState,
}

fn convert_backend(raw: &Spanned<RawBackend>, path: &str) -> Result<CheckedBackend, Invalid> {
    let table = raw.span();
    let raw = raw.get_ref();
    let at = |key: &str| format!("{path}.{key}");
    let raw_name = required(
        &raw.name,
        &table,
        path,
        "name",
        "a name unique in the service, such as \"app1\"",
    )?;
    let name = convert_name(raw_name, &at("name"))?;
    let raw_address = required(
        &raw.address,
        &table,
        path,
        "address",
        "\"IP:port\" or \"[IPv6]:port\"",
    )?;
    let address = parse_socket_addr(raw_address.get_ref())
        .map_err(|what| Invalid::at(raw_address.span(), at("address"), what))?;
    let unusable = if address.port() == 0 {
        Some("port 0 cannot be connected to")
    } else if address.ip().is_unspecified() {
        Some("an unspecified address (0.0.0.0 or ::) cannot be connected to")
    } else if address.ip().is_multicast() {
        Some("a multicast address cannot be connected to")
    } else {
        None
    };
    if let Some(why) = unusable {
        return Err(Invalid::at(
            raw_address.span(),
            at("address"),
            format!("{address}: {why} (expected the backend's own IP and port)"),
        ));
    }
    let default = Backend::new(String::new(), address);
    let weight = match &raw.weight {
        None => default.weight,
        Some(weight) => positive_u32(weight, &at("weight"), MAX_WEIGHT)?,
    };
    let state = match &raw.state {
        None => default.state,
        Some(state) => choice(
            state,
            &at("state"),
            &[
                ("enabled", AdminState::Enabled),
                ("drain", AdminState::Drain),
                ("disabled", AdminState::Disabled),
            ],
        )?,
    };
    Ok(CheckedBackend {
        name,
        name_span: raw_name.span(),
        address,
        address_span: raw_address.span(),
        weight,
        state,
    })
}

fn convert_health(
    raw: &Spanned<RawHealth>,
    path: &str,
    base_dir: &Path,
) -> Result<HealthCheck, Invalid> {
    let raw = raw.get_ref();
    let default = HealthCheck::default();
    let at = |key: &str| format!("{path}.{key}");

    let kind = match &raw.kind {
        None => default.kind,
        Some(kind) => choice(
            kind,
            &at("kind"),
            &[
                ("http", HealthKind::Http),
                ("https", HealthKind::Https),
                ("tcp", HealthKind::Tcp),
                ("none", HealthKind::None),
            ],
        )?,
    };
    let health_path = match &raw.path {
        None => default.path,
        Some(text) => {
            let value = text.get_ref();
            if !value.starts_with('/') {
                return Err(Invalid::at(
                    text.span(),
                    at("path"),
                    format!("{value:?} does not start with '/' (expected e.g. \"/health\")"),
                ));
            }
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Invalid::at(
                    text.span(),
                    at("path"),
                    format!("{value:?} must be printable ASCII without spaces (percent-encode other characters)"),
                ));
            }
            value.clone()
        }
    };
    let host = match &raw.host {
        None => None,
        Some(text) => {
            if !is_valid_host_header(text.get_ref()) {
                return Err(Invalid::at(
                    text.span(),
                    at("host"),
                    format!(
                        "{:?} is not a host (expected a name or IP, optionally with \":port\", e.g. \"art.example.com\")",
                        text.get_ref()
                    ),
                ));
            }
            Some(text.get_ref().clone())
        }
    };
    let interval = optional_duration(&raw.interval, &at("interval"), default.interval)?;
    let fast_interval = optional_duration(
        &raw.fast_interval,
        &at("fast_interval"),
        default.fast_interval,
    )?;
    let timeout = optional_duration(&raw.timeout, &at("timeout"), default.timeout)?;
    if timeout > interval {
        // Point at whichever of the two the file sets, the timeout first.
        let (span, key) = match (&raw.timeout, &raw.interval) {
            (Some(t), _) => (Some(t.span()), at("timeout")),
            (None, Some(i)) => (Some(i.span()), at("interval")),
            (None, None) => (None, at("timeout")),
        };
        let message = format!(
            "{key}: the timeout ({}) must not exceed the interval ({})",
            format_duration(timeout),
            format_duration(interval)
        );
        return Err(Invalid { span, message });
    }
    let rise = match &raw.rise {
        None => default.rise,
        Some(n) => positive_u32(n, &at("rise"), i64::from(u32::MAX))?,
    };
    let fall = match &raw.fall {
        None => default.fall,
        Some(n) => positive_u32(n, &at("fall"), i64::from(u32::MAX))?,
    };
    let jitter = match &raw.jitter {
        None => default.jitter,
        Some(jitter) => {
            let j = *jitter.get_ref();
            if !(0.0..=0.5).contains(&j) {
                return Err(Invalid::at(
                    jitter.span(),
                    at("jitter"),
                    format!(
                        "{j} is out of range (expected a fraction of the interval from 0.0 to 0.5)"
                    ),
                ));
            }
            j
        }
    };
    let degraded = match &raw.degraded {
        None => default.degraded,
        Some(degraded) => choice(
            degraded,
            &at("degraded"),
            &[
                ("unhealthy", DegradedIs::Unhealthy),
                ("healthy", DegradedIs::Healthy),
            ],
        )?,
    };
    let ca_file = match &raw.ca_file {
        None => None,
        Some(file) => {
            let resolved = resolve(file, &at("ca_file"), base_dir)?;
            let problem = match std::fs::metadata(&resolved) {
                Ok(meta) if meta.is_file() => None,
                Ok(_) => Some("is not a regular file".to_owned()),
                Err(e) => Some(format!("cannot be read: {e}")),
            };
            if let Some(problem) = problem {
                return Err(Invalid::at(
                    file.span(),
                    at("ca_file"),
                    format!(
                        "{} {problem} (expected a PEM CA or certificate file)",
                        resolved.display()
                    ),
                ));
            }
            Some(resolved)
        }
    };
    let sni = match &raw.sni {
        None => None,
        Some(text) => {
            if ServerName::try_from(text.get_ref().as_str()).is_err() {
                return Err(Invalid::at(
                    text.span(),
                    at("sni"),
                    format!(
                        "{:?} is not a server name (expected a DNS name or an IP address)",
                        text.get_ref()
                    ),
                ));
            }
            Some(text.get_ref().clone())
        }
    };
    let insecure_skip_verify = raw
        .insecure_skip_verify
        .as_ref()
        .map_or(default.insecure_skip_verify, |skip| *skip.get_ref());
    if let (HealthKind::Https, false, None, Some(raw_kind)) =
        (kind, insecure_skip_verify, &ca_file, &raw.kind)
    {
        return Err(Invalid::at(
            raw_kind.span(),
            at("kind"),
            "https health checks need ca_file or insecure_skip_verify = true \
             (the system's root certificates are not used)",
        ));
    }
    let http_proxy = optional_proxy(&raw.http_proxy, &at("http_proxy"))?;
    let https_proxy = optional_proxy(&raw.https_proxy, &at("https_proxy"))?;
    let no_proxy = match &raw.no_proxy {
        None => None,
        Some(list) => Some(each(list, &at("no_proxy"), |entry| {
            if is_valid_no_proxy_entry(entry) {
                Ok(entry.to_owned())
            } else {
                Err(format!(
                    "{entry:?} is not a host, domain or CIDR (expected e.g. \"localhost\", \".example.com\", \"10.0.0.0/8\" or \"*\")"
                ))
            }
        })?),
    };
    let max_body = match &raw.max_body {
        None => default.max_body,
        Some(size) => {
            let bytes = convert_size(size, &at("max_body"))?;
            usize::try_from(bytes)
                .ok()
                .filter(|&b| b > 0)
                .ok_or_else(|| {
                    Invalid::at(
                        size.span(),
                        at("max_body"),
                        format!(
                            "{bytes} bytes is not valid (expected at least 1 byte, e.g. \"64KiB\")"
                        ),
                    )
                })?
        }
    };
    Ok(HealthCheck {
        kind,
        path: health_path,
        host,
        interval,
        fast_interval,
        timeout,
        rise,
        fall,
        jitter,
        degraded,
        ca_file,
        sni,
        insecure_skip_verify,
        http_proxy,
        https_proxy,
        no_proxy,
        max_body,
    })
}

/// A Host header value: a host name or IPv4 address, or a bracketed IPv6
/// address, optionally followed by `:port`.
fn is_valid_host_header(text: &str) -> bool {
    let (host_ok, rest) = match text.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((ip, rest)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let (host, rest) = text.split_at(text.find(':').unwrap_or(text.len()));
            (is_valid_host(host), rest)
        }
    };
    let port_ok = rest.is_empty()
        || rest.strip_prefix(':').is_some_and(|port| {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok()
        });
    host_ok && port_ok
}

/// A `no_proxy` entry: `*`, a host, a `.domain` or `*.domain`, an IP or a
/// CIDR, optionally bracketed.
fn is_valid_no_proxy_entry(entry: &str) -> bool {
    !entry.is_empty()
        && entry.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'*' | b':' | b'/' | b'[' | b']')
        })
}

fn optional_proxy(raw: &Option<Text>, path: &str) -> Result<Option<String>, Invalid> {
    raw.as_ref()
        .map(|url| {
            parse_proxy_url(url.get_ref()).map_err(|what| Invalid::at(url.span(), path, what))
        })
        .transpose()
}

/// The value of a key that must be present, or an error pointing at the
/// table it is missing from.
fn required<'r, T>(
    value: &'r Option<Spanned<T>>,
    table: &Range<usize>,
    path: &str,
    key: &str,
    expected: &str,
) -> Result<&'r Spanned<T>, Invalid> {
    value.as_ref().ok_or_else(|| {
        Invalid::at(
            table.clone(),
            path,
            format!("missing key `{key}` (expected {expected})"),
        )
    })
}

fn convert_name(name: &Text, path: &str) -> Result<String, Invalid> {
    let text = name.get_ref();
    if !is_valid_name(text) {
        return Err(Invalid::at(
            name.span(),
            path,
            format!(
                "{text:?} is not a valid name (expected letters, digits, '_', '.' and '-' only)"
            ),
        ));
    }
    Ok(text.clone())
}

/// One of a fixed set of strings.
fn choice<T: Copy>(text: &Text, path: &str, choices: &[(&str, T)]) -> Result<T, Invalid> {
    if let Some((_, value)) = choices.iter().find(|(name, _)| name == text.get_ref()) {
        return Ok(*value);
    }
    let allowed: Vec<String> = choices
        .iter()
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    Err(Invalid::at(
        text.span(),
        path,
        format!(
            "{:?} is not valid (expected one of {})",
            text.get_ref(),
            allowed.join(", ")
        ),
    ))
}

/// An integer in `min..=max`, converted to the field's type.
fn integer<T: TryFrom<i64>>(
    value: &Spanned<i64>,
    path: &str,
    min: i64,
    max: i64,
) -> Result<T, Invalid> {
    let n = *value.get_ref();
    if (min..=max).contains(&n) {
        if let Ok(converted) = T::try_from(n) {
            return Ok(converted);
        }
    }
    Err(out_of_range(value, path, min, max))
}

/// An integer in `1..=max` for a `NonZeroU32` field.
fn positive_u32(value: &Spanned<i64>, path: &str, max: i64) -> Result<NonZeroU32, Invalid> {
    NonZeroU32::new(integer(value, path, 1, max)?).ok_or_else(|| out_of_range(value, path, 1, max))
}

/// An integer `>= 1` for a `NonZeroUsize` field.
fn positive_usize(value: &Spanned<i64>, path: &str) -> Result<NonZeroUsize, Invalid> {
    let max = i64::MAX;
    NonZeroUsize::new(integer(value, path, 1, max)?)
        .ok_or_else(|| out_of_range(value, path, 1, max))
}

fn out_of_range(value: &Spanned<i64>, path: &str, min: i64, max: i64) -> Invalid {
    let expected = if max == i64::MAX {
        format!("an integer >= {min}")
    } else {
        format!("an integer {min}..={max}")
    };
    let n = value.get_ref();
    Invalid::at(
        value.span(),
        path,
        format!("{n} is out of range (expected {expected})"),
    )
}

/// Whether a duration of zero means something for that key.
#[derive(Clone, Copy, PartialEq)]
enum Zero {
    Allowed,
    Refused,
}

fn convert_duration(
    value: &Spanned<DurationText>,
    path: &str,
    zero: Zero,
) -> Result<Duration, Invalid> {
    let text = &value.get_ref().0;
    let duration = parse_duration(text).map_err(|what| Invalid::at(value.span(), path, what))?;
    if duration.is_zero() && zero == Zero::Refused {
        return Err(Invalid::at(
            value.span(),
            path,
            format!("{text:?} is not valid: it must be longer than zero"),
        ));
    }
    Ok(duration)
}

/// A timeout or interval (never zero), or its default.
fn optional_duration(
    value: &Option<Spanned<DurationText>>,
    path: &str,
    default: Duration,
) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(value) => convert_duration(value, path, Zero::Refused),
    }
}

fn convert_size(value: &Spanned<RawSize>, path: &str) -> Result<u64, Invalid> {
    match value.get_ref() {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| {
            Invalid::at(
                value.span(),
                path,
                format!("{n} is negative (expected a size in bytes)"),
            )
        }),
        RawSize::Text(text) => {
            parse_size(text).map_err(|what| Invalid::at(value.span(), path, what))
        }
    }
}

/// Converts every string of a list, pointing at the first bad one.
fn each<T>(
    list: &TextList,
    path: &str,
    convert: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Invalid> {
    list.get_ref()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            convert(item.get_ref())
                .map_err(|what| Invalid::at(item.span(), format!("{path}[{i}]"), what))
        })
        .collect()
}
