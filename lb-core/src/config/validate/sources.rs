//! A service's per-source keys: `allow` and `deny` (CIDRs as `admin_allow`
//! takes them; empty lists are the default and mean "everyone" and
//! "no one"), `max_connections_per_source = N` (1..=2^30) and
//! `new_connections_per_source = "N/s"` (1..=1 000 000 per second). Runs on
//! the thread loading the config; no I/O.

use std::num::NonZeroU32;

use super::{each, positive_u32, Invalid};
use crate::config::raw::{RawService, Text};
use crate::config::value::parse_cidr;
use crate::config::SourceLimits;

/// Largest `max_connections_per_source` (the shared counters are u32).
const MAX_PER_SOURCE: i64 = 1 << 30;
/// Largest `new_connections_per_source` rate, per second.
const MAX_RATE: u32 = 1_000_000;

/// The per-source rules of the service at `path`.
pub(super) fn convert_sources(raw: &RawService, path: &str) -> Result<SourceLimits, Invalid> {
    let at = |key: &str| format!("{path}.{key}");
    let allow = match &raw.allow {
        None => Vec::new(),
        Some(list) => each(list, &at("allow"), parse_cidr)?,
    };
    let deny = match &raw.deny {
        None => Vec::new(),
        Some(list) => each(list, &at("deny"), parse_cidr)?,
    };
    let max_connections_per_source = match &raw.max_connections_per_source {
        None => None,
        Some(n) => Some(positive_u32(
            n,
            &at("max_connections_per_source"),
            MAX_PER_SOURCE,
        )?),
    };
    let new_connections_per_source = match &raw.new_connections_per_source {
        None => None,
        Some(text) => Some(rate(text, &at("new_connections_per_source"))?),
    };
    Ok(SourceLimits {
        allow,
        deny,
        max_connections_per_source,
        new_connections_per_source,
    })
}

/// `"N/s"`: N new connections per second, 1..=[`MAX_RATE`].
fn rate(text: &Text, path: &str) -> Result<NonZeroU32, Invalid> {
    let value = text.get_ref().trim();
    let invalid = || {
        Invalid::at(
            text.span(),
            path,
            format!(
                "{value:?} is not a rate (expected \"N/s\" with N from 1 to {MAX_RATE}, e.g. \"20/s\": \
                 20 new connections per second per source, in bursts of up to 20)"
            ),
        )
    };
    let Some(count) = value.strip_suffix("/s") else {
        return Err(invalid());
    };
    match count.trim().parse::<u32>() {
        Ok(n) if n <= MAX_RATE => NonZeroU32::new(n).ok_or_else(invalid),
        _ => Err(invalid()),
    }
}
