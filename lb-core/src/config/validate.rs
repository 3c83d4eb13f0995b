//! `RawConfig` → [`Config`]: every check of the file's content, section by
//! section, stopping at the first problem. Each check reports the key path and
//! the span of the value (or of the table a key is missing from). The only
//! I/O is reading `join_key_file` and checking that `ca_file` exists.
//!
//! This file holds the entry point and the checks every section shares
//! (required keys, choices, integers, durations, sizes, lists); the sections
//! are in `global` (`[global]`), `service` (`[[service]]` and its backends)
//! and `health` (`[service.health]`).

mod global;
mod health;
mod proxy_in;
mod service;
mod sni;
mod sources;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::locate::Invalid;
use super::raw::{DurationText, RawConfig, RawSize, Text, TextList};
use super::value::{parse_duration, parse_size};
use super::{Config, Global};

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
            Some(global) => global::convert_global(global.into_inner(), raw.base_dir)?,
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
    /// Listen address → the services on it (one, or several routing by
    /// server name).
    listen_owners: HashMap<SocketAddr, sni::Share>,
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
