//! `[service.health]`: the probe's kind, request, timing, verdict, TLS and
//! proxy settings. Runs on the thread loading the config; its only I/O is
//! checking that `ca_file` exists.

use std::net::IpAddr;
use std::path::Path;

use rustls_pki_types::ServerName;
use toml::Spanned;

use super::{choice, convert_size, each, optional_duration, positive_u32, resolve, Invalid};
use crate::config::raw::{RawHealth, Text};
use crate::config::value::{format_duration, is_valid_host, parse_proxy_url};
use crate::config::{DegradedIs, HealthCheck, HealthKind};

pub(super) fn convert_health(
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
    let port = match &raw.port {
        None => None,
        Some(port) => Some(super::integer::<u16>(port, &at("port"), 1, 65535)?),
    };
    let address = match &raw.address {
        None => None,
        Some(text) => Some(text.get_ref().parse::<IpAddr>().map_err(|_| {
            Invalid::at(
                text.span(),
                at("address"),
                format!(
                    "{:?} is not an IP address (expected e.g. \"10.0.0.5\" or \"fd00::5\"; \
                     set `port` alone to probe each backend's own IP)",
                    text.get_ref()
                ),
            )
        })?),
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
        port,
        address,
        // `send_proxy = true` needs the backends' versions: resolved by
        // `service::convert_send_proxy`.
        send_proxy: None,
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
