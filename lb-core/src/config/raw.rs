//! The file as written: serde structs mirroring the TOML layout, every table
//! `deny_unknown_fields`, every value kept with its span so that the
//! validation in `validate` can point at it. Nothing here is checked
//! beyond its TOML type; all keys are optional here so that a missing one is
//! reported by validation, with the table it is missing from.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A string value with its span.
pub(super) type Text = Spanned<String>;
/// An array of strings, each with its span, the array with its own.
pub(super) type TextList = Spanned<Vec<Spanned<String>>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub global: Option<Spanned<RawGlobal>>,
    #[serde(default)]
    pub service: Vec<Spanned<RawService>>,
}

/// `[global]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub workers: Option<Spanned<RawWorkers>>,
    pub engine: Option<Text>,
    pub forwarding: Option<Text>,
    pub admin: Option<Text>,
    pub admin_allow: Option<TextList>,
    pub admin_token: Option<Text>,
    pub join_key: Option<Text>,
    pub join_key_file: Option<Text>,
    pub shutdown_timeout: Option<Spanned<DurationText>>,
    pub drain_announce: Option<Spanned<DurationText>>,
    pub resolve_interval: Option<Spanned<DurationText>>,
    pub pipe_size: Option<Spanned<RawSize>>,
    pub pipe_pool: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<RawMaxConnections>>,
    pub access_log: Option<Text>,
    pub access_log_format: Option<Text>,
}

/// `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Option<Text>,
    pub listen: Option<TextList>,
    pub balance: Option<Text>,
    pub connect_timeout: Option<Spanned<DurationText>>,
    pub idle_timeout: Option<Spanned<DurationText>>,
    pub max_connections: Option<Spanned<i64>>,
    pub connect_attempts: Option<Spanned<i64>>,
    pub maglev_table_size: Option<Spanned<i64>>,
    pub hash_prefix_v4: Option<Spanned<i64>>,
    pub hash_prefix_v6: Option<Spanned<i64>>,
    pub bounded_load: Option<Spanned<f64>>,
    pub slow_start: Option<Spanned<DurationText>>,
    pub source_address: Option<Text>,
    pub freebind: Option<Spanned<bool>>,
    pub tcp_user_timeout: Option<Spanned<DurationText>>,
    pub tcp_keepalive_idle: Option<Spanned<DurationText>>,
    pub tcp_keepalive_interval: Option<Spanned<DurationText>>,
    pub tcp_keepalive_count: Option<Spanned<i64>>,
    // PROXY protocol in (validate/proxy_in.rs).
    pub accept_proxy: Option<Spanned<bool>>,
    pub proxy_trusted: Option<TextList>,
    pub proxy_header_timeout: Option<Spanned<DurationText>>,
    // SNI routing (validate/sni.rs).
    pub sni: Option<TextList>,
    pub sni_default: Option<Spanned<bool>>,
    pub sni_timeout: Option<Spanned<DurationText>>,
    // Per-source rules (validate/sources.rs).
    pub allow: Option<TextList>,
    pub deny: Option<TextList>,
    pub max_connections_per_source: Option<Spanned<i64>>,
    pub new_connections_per_source: Option<Text>,
    pub health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
    // PROXY protocol out.
    pub send_proxy: Option<Text>,
    // The TLS-safe retry (worker/replay.rs).
    pub retry_before_response: Option<Text>,
}

/// `[service.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub kind: Option<Text>,
    pub path: Option<Text>,
    pub host: Option<Text>,
    pub interval: Option<Spanned<DurationText>>,
    pub fast_interval: Option<Spanned<DurationText>>,
    pub timeout: Option<Spanned<DurationText>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub jitter: Option<Spanned<f64>>,
    pub degraded: Option<Text>,
    pub ca_file: Option<Text>,
    pub sni: Option<Text>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
    pub http_proxy: Option<Text>,
    pub https_proxy: Option<Text>,
    pub no_proxy: Option<TextList>,
    pub max_body: Option<Spanned<RawSize>>,
    // Probe target other than the backend's own address.
    pub port: Option<Spanned<i64>>,
    pub address: Option<Text>,
    // PROXY protocol out.
    pub send_proxy: Option<Spanned<bool>>,
}

/// `[[service.backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub name: Option<Text>,
    pub address: Option<Text>,
    pub weight: Option<Spanned<i64>>,
    pub state: Option<Text>,
    // PROXY protocol out.
    pub send_proxy: Option<Text>,
}

/// `workers`: `"auto"` or an integer, checked by validation.
#[derive(Debug)]
pub(super) enum RawWorkers {
    Count(i64),
    Text(String),
}

/// `[global] max_connections`: `"auto"` or an integer, checked by
/// validation.
#[derive(Debug)]
pub(super) enum RawMaxConnections {
    Count(i64),
    Text(String),
}

/// A size: an integer of bytes or a string such as `"64KiB"`.
#[derive(Debug)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// A duration string, parsed by validation. Its own type only so that a
/// value of the wrong TOML type is reported as "expected a duration".
#[derive(Debug)]
pub(super) struct DurationText(pub String);

/// Accepts a TOML integer or string, nothing else; `expecting` is what the
/// error message says was expected.
struct IntOrText {
    expecting: &'static str,
}

enum IntOrTextValue {
    Int(i64),
    Text(String),
}

impl<'de> Visitor<'de> for IntOrText {
    type Value = IntOrTextValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(IntOrTextValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        // TOML integers are i64; this only keeps a non-TOML caller honest.
        i64::try_from(v)
            .map(IntOrTextValue::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(IntOrTextValue::Text(v.to_owned()))
    }
}

impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expecting = "\"auto\" or a number of workers";
        Ok(
            match deserializer.deserialize_any(IntOrText { expecting })? {
                IntOrTextValue::Int(n) => RawWorkers::Count(n),
                IntOrTextValue::Text(s) => RawWorkers::Text(s),
            },
        )
    }
}

impl<'de> Deserialize<'de> for RawMaxConnections {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expecting = "\"auto\" or a number of connections";
        Ok(
            match deserializer.deserialize_any(IntOrText { expecting })? {
                IntOrTextValue::Int(n) => RawMaxConnections::Count(n),
                IntOrTextValue::Text(s) => RawMaxConnections::Text(s),
            },
        )
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expecting = "a size: a number of bytes or a string such as \"64KiB\"";
        Ok(
            match deserializer.deserialize_any(IntOrText { expecting })? {
                IntOrTextValue::Int(n) => RawSize::Bytes(n),
                IntOrTextValue::Text(s) => RawSize::Text(s),
            },
        )
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}
