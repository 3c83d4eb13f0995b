//! `[[service]]` and its `[[service.backend]]`s: names and listen
//! addresses unique across services, the balancing settings, the Maglev
//! table size, and the backends (their name, address and weight parsed
//! through the types of `config::backend`, the same as the join API's).
//! Runs on the thread loading the config; no I/O.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::sni::SniKeys;
use super::{
    choice, convert_duration, each, integer, optional_duration, positive_u32, positive_usize,
    required, Invalid, Seen, Zero,
};
use crate::config::backend::{BackendAddr, BackendName, Weight};
use crate::config::raw::{DurationText, RawBackend, RawService, Text};
use crate::config::value::{
    is_host_name, is_valid_name, parse_host_port, parse_socket_addr, truncated,
};
use crate::config::{
    AdminState, Backend, Balance, HealthCheck, RetryBeforeResponse, Service, TcpLiveness,
    DEFAULT_MAGLEV_TABLE_SIZE,
};
use crate::maglev::{is_prime, MIN_TABLE_SIZE};
use crate::proxy_header::ProxyVersion;

/// Largest Maglev table: 2^24 slots are ample for 100 × 10 000 backends; a
/// larger one only costs memory and build time on every change.
const MAX_MAGLEV_TABLE_SIZE: i64 = 1 << 24;

impl Seen {
    pub(super) fn service(
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

        let sni = super::sni::convert_sni(&raw, &path)?;
        let listen = self.convert_listen(&raw, &table, (&path, &name), sni.as_ref())?;
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
        let slow_start = match &raw.slow_start {
            None => None,
            Some(window) => Some(convert_duration(window, &at("slow_start"), Zero::Refused)?),
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
        let freebind = raw.freebind.as_ref().is_some_and(|f| *f.get_ref());
        let liveness = convert_liveness(&raw, &path)?;
        let accept_proxy = super::proxy_in::convert_accept_proxy(&raw, &table, &path)?;
        let sources = super::sources::convert_sources(&raw, &path)?;
        let health = match &raw.health {
            None => HealthCheck::default(),
            Some(health) => super::health::convert_health(health, &at("health"), base_dir)?,
        };

        let backends = convert_backends(&raw, &table, &path, source_address)?;
        let maglev_table_size = convert_table_size(&raw, &table, &path, backends.len())?;
        // PROXY protocol out.
        let (send_proxy, health) = convert_send_proxy(&raw, &path, &backends, health)?;
        let retry_before_response = match &raw.retry_before_response {
            None => default.retry_before_response,
            Some(value) => choice(
                value,
                &at("retry_before_response"),
                &[
                    ("tls", RetryBeforeResponse::Tls),
                    ("off", RetryBeforeResponse::Off),
                ],
            )?,
        };

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
            slow_start,
            source_address,
            freebind,
            liveness,
            accept_proxy,
            sni: sni.map(|keys| keys.route),
            sources,
            health,
            backends,
            send_proxy,
            retry_before_response,
        })
    }

    fn convert_listen(
        &mut self,
        raw: &RawService,
        table: &Range<usize>,
        (path, name): (&str, &str),
        sni: Option<&SniKeys>,
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
            super::sni::claim(
                &mut self.listen_owners,
                *addr,
                (item.span(), format!("{key}[{i}]")),
                name,
                (sni, path),
            )?;
        }
        Ok(listen)
    }
}

/// `maglev_table_size`: a prime in [`MIN_TABLE_SIZE`]..=2^24 (7..=2^24),
/// larger than the backend count.
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
            let n: u32 = integer(size, &key, i64::from(MIN_TABLE_SIZE), MAX_MAGLEV_TABLE_SIZE)?;
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
        // A name's address is known only once resolved: two names may
        // well resolve to one node, and its family is picked to match.
        let named = backend.host.is_some();
        if let Some(other) = backend_addresses.get(&backend.address).filter(|_| !named) {
            return Err(Invalid::at(
                backend.address_span.clone(),
                format!("{backend_path}.address"),
                format!(
                    "{} is already the address of backend {other:?} (each backend must have its own address)",
                    backend.address
                ),
            ));
        }
        if !named {
            backend_addresses.insert(backend.address, backend.name.clone());
        }
        if let (Some(source), Some(raw_source), false) =
            (source_address, &raw.source_address, named)
        {
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
            host: backend.host,
            weight: backend.weight,
            state: backend.state,
            send_proxy: backend.send_proxy,
        });
    }
    Ok(backends)
}

/// A backend as converted, with the spans the checks across backends need.
struct CheckedBackend {
    /// Checked by [`BackendName`]; the map of names uses the text.
    name: String,
    name_span: Range<usize>,
    /// Checked (and normalised) by [`BackendAddr`]; for a host name the
    /// unspecified IP with the name's port.
    address: SocketAddr,
    /// `"host:port"` as written, for a backend given by name.
    host: Option<String>,
    address_span: Range<usize>,
    /// Checked by [`Weight`].
    weight: NonZeroU32,
    state: AdminState,
    /// `send_proxy`: None when the key is absent (the service's applies).
    send_proxy: Option<Option<ProxyVersion>>,
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
    let name = BackendName::parse(raw_name.get_ref())
        .map_err(|e| Invalid::at(raw_name.span(), at("name"), e))?;
    let raw_address = required(
        &raw.address,
        &table,
        path,
        "address",
        "\"IP:port\", \"[IPv6]:port\" or \"host:port\"",
    )?;
    let text = raw_address.get_ref();
    let (address, host) = match BackendAddr::parse(text) {
        Ok(address) => (address.get(), None),
        // A host name: the unspecified IP until the name is resolved.
        Err(_) if parse_host_port(text).is_some() => {
            let port = parse_host_port(text).map_or(0, |(_, port)| port);
            (
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                Some(text.clone()),
            )
        }
        Err(e) => {
            let message = backend_address_hint(text).unwrap_or_else(|| e.to_string());
            return Err(Invalid::at(raw_address.span(), at("address"), message));
        }
    };
    let default = Backend::new(String::new(), address);
    let weight = match &raw.weight {
        None => default.weight,
        Some(weight) => Weight::try_from(*weight.get_ref())
            .map_err(|e| Invalid::at(weight.span(), at("weight"), e))?
            .get(),
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
    let send_proxy = match &raw.send_proxy {
        None => None,
        Some(value) => Some(proxy_version(value, &at("send_proxy"))?),
    };
    Ok(CheckedBackend {
        name: name.into_string(),
        name_span: raw_name.span(),
        address,
        host,
        address_span: raw_address.span(),
        weight,
        state,
        send_proxy,
    })
}

/// A service's name: `[A-Za-z0-9_.-]+`.
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

/// The largest TCP_KEEPIDLE and TCP_KEEPINTVL Linux takes, in seconds.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// The most TCP_KEEPCNT probes Linux takes.
const MAX_KEEPALIVE_COUNT: i64 = 127;
/// The longest TCP_USER_TIMEOUT we take (a day; the kernel takes ~24 days).
const MAX_USER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `tcp_user_timeout` and `tcp_keepalive_*` of a service.
fn convert_liveness(raw: &RawService, path: &str) -> Result<TcpLiveness, Invalid> {
    let at = |key: &str| format!("{path}.{key}");
    let default = TcpLiveness::default();
    let user_timeout = match &raw.tcp_user_timeout {
        None => default.user_timeout,
        Some(value) => {
            let d = convert_duration(value, &at("tcp_user_timeout"), Zero::Allowed)?;
            if d > MAX_USER_TIMEOUT || (!d.is_zero() && d < Duration::from_millis(100)) {
                return Err(Invalid::at(
                    value.span(),
                    at("tcp_user_timeout"),
                    format!(
                        "{:?} is out of range (expected \"0s\" for the kernel's default, or 100ms..=24h, e.g. \"30s\")",
                        value.get_ref().0
                    ),
                ));
            }
            d
        }
    };
    let seconds = |value: &Option<Spanned<DurationText>>, key: &str, default: Duration| {
        let Some(value) = value else {
            return Ok(default);
        };
        let d = convert_duration(value, &at(key), Zero::Refused)?;
        if d.subsec_nanos() != 0 || d.as_secs() > MAX_KEEPALIVE_SECS {
            return Err(Invalid::at(
                value.span(),
                at(key),
                format!(
                    "{:?} is not valid (expected whole seconds, 1s..={MAX_KEEPALIVE_SECS}s, e.g. \"10s\")",
                    value.get_ref().0
                ),
            ));
        }
        Ok(d)
    };
    let keepalive_idle = seconds(
        &raw.tcp_keepalive_idle,
        "tcp_keepalive_idle",
        default.keepalive_idle,
    )?;
    let keepalive_interval = seconds(
        &raw.tcp_keepalive_interval,
        "tcp_keepalive_interval",
        default.keepalive_interval,
    )?;
    let keepalive_count = match &raw.tcp_keepalive_count {
        None => default.keepalive_count,
        Some(count) => integer(count, &at("tcp_keepalive_count"), 1, MAX_KEEPALIVE_COUNT)?,
    };
    Ok(TcpLiveness {
        user_timeout,
        keepalive_idle,
        keepalive_interval,
        keepalive_count,
    })
}

/// `send_proxy = "off" | "v1" | "v2"` (a service's or a backend's).
fn proxy_version(value: &Text, path: &str) -> Result<Option<ProxyVersion>, Invalid> {
    choice(
        value,
        path,
        &[
            ("off", None),
            ("v1", Some(ProxyVersion::V1)),
            ("v2", Some(ProxyVersion::V2)),
        ],
    )
}

/// The service's `send_proxy`, and its health check with `send_proxy =
/// true` resolved: every backend must then have a version (its own or the
/// service's), since a probe speaks the version of the backend it probes.
fn convert_send_proxy(
    raw: &RawService,
    path: &str,
    backends: &[Backend],
    mut health: HealthCheck,
) -> Result<(Option<ProxyVersion>, HealthCheck), Invalid> {
    let send_proxy = match &raw.send_proxy {
        None => None,
        Some(value) => proxy_version(value, &format!("{path}.send_proxy"))?,
    };
    let wanted = raw
        .health
        .as_ref()
        .and_then(|h| h.get_ref().send_proxy.as_ref())
        .filter(|flag| *flag.get_ref());
    if let Some(flag) = wanted {
        let mut first = None;
        for backend in backends {
            match backend.proxy_header(send_proxy) {
                Some(version) => {
                    first.get_or_insert(version);
                }
                None => {
                    return Err(Invalid::at(
                        flag.span(),
                        format!("{path}.health.send_proxy"),
                        format!(
                            "is true but backend {:?} gets no PROXY header (set send_proxy = \"v1\" or \"v2\" \
                             on the service or that backend, or remove health.send_proxy)",
                            backend.name
                        ),
                    ));
                }
            }
        }
        // The service's own version; the registry puts each backend's own
        // in the check it probes that backend with.
        health.send_proxy = send_proxy.or(first);
    }
    Ok((send_proxy, health))
}

/// What the config file (which takes host names, unlike the join API)
/// says about a backend address that is neither an IP address nor a
/// `host:port` it can resolve; None: the address check's own words do.
fn backend_address_hint(text: &str) -> Option<String> {
    const SYNTAX: &str = "expected \"IP:port\", \"[IPv6]:port\" or \"host:port\"";
    let shown = truncated(text);
    if is_host_name(text) {
        return Some(format!(
            "{shown:?} has no port: write \"{shown}:PORT\" with the port the backend serves on ({SYNTAX})"
        ));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if is_host_name(host) && !port_ok {
        return Some(format!(
            "{shown:?}: the port must be a number from 1 to 65535, not {:?} ({SYNTAX})",
            truncated(port)
        ));
    }
    None
}
