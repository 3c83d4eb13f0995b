//! `[global]`: workers, engine and forwarding, the admin listener and who
//! may use it, the admin token and the join key, shutdown and pipe sizes.
//! Runs on the thread loading the config; its only I/O is reading
//! `join_key_file`.

use std::io::Read;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;

use toml::Spanned;

use super::{choice, convert_duration, convert_size, each, integer, resolve, Invalid, Zero};
use crate::config::raw::{RawGlobal, RawMaxConnections, RawSize, RawWorkers, Text};
use crate::config::value::parse_cidr;
use crate::config::{
    AccessLog, AccessLogFormat, EngineKind, Forwarding, Global, MaxConnections, Workers,
};

/// Largest `workers` count: far above any machine this runs on, low enough
/// to catch a typo before it spawns thousands of threads.
const MAX_WORKERS: usize = 1024;
/// Smallest and largest `pipe_size`: a page, and the kernel's default
/// `pipe-max-size`.
const MIN_PIPE_SIZE: u64 = 4 << 10;
const MAX_PIPE_SIZE: u64 = 1 << 20;

pub(super) fn convert_global(raw: RawGlobal, base_dir: &Path) -> Result<Global, Invalid> {
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
            if let Some(fault) = control_character(key.get_ref()) {
                return Err(Invalid::at(
                    key.span(),
                    "global.join_key",
                    format!("the join key holds {fault}{KEY_HINT}"),
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
    let drain_announce = match &raw.drain_announce {
        None => default.drain_announce,
        Some(grace) => convert_duration(grace, "global.drain_announce", Zero::Allowed)?,
    };
    let resolve_interval = match &raw.resolve_interval {
        None => default.resolve_interval,
        Some(every) => convert_duration(every, "global.resolve_interval", Zero::Refused)?,
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
    let access_log = match &raw.access_log {
        None => default.access_log,
        Some(text) if text.get_ref() == "off" => AccessLog::Off,
        Some(text) if text.get_ref() == "stderr" => AccessLog::Stderr,
        Some(text) => AccessLog::File(resolve(text, "global.access_log", base_dir)?),
    };
    let access_log_format = match &raw.access_log_format {
        None => default.access_log_format,
        Some(format) => choice(
            format,
            "global.access_log_format",
            &[
                ("text", AccessLogFormat::Text),
                ("json", AccessLogFormat::Json),
            ],
        )?,
    };
    Ok(Global {
        access_log,
        access_log_format,
        workers,
        engine,
        forwarding,
        admin,
        admin_allow,
        admin_token,
        join_key,
        shutdown_timeout,
        drain_announce,
        resolve_interval,
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

/// Longest `join_key_file` read: a key is a line of text.
const MAX_JOIN_KEY_FILE: u64 = 4096;

/// Reads `join_key_file` (relative to the config file's directory): its
/// content, trimmed (the newline an editor adds), is the key; it must hold
/// no control character.
fn read_join_key(file: &Text, base_dir: &Path) -> Result<String, Invalid> {
    let path = "global.join_key_file";
    let resolved = resolve(file, path, base_dir)?;
    // Bounded: the path may name a device or a huge file (`/dev/zero`
    // would otherwise be read until memory runs out).
    let mut bytes = Vec::new();
    std::fs::File::open(&resolved)
        .and_then(|f| f.take(MAX_JOIN_KEY_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| {
            Invalid::at(
                file.span(),
                path,
                format!("cannot read the join key file {}: {e}", resolved.display()),
            )
        })?;
    if bytes.len() as u64 > MAX_JOIN_KEY_FILE {
        return Err(Invalid::at(
            file.span(),
            path,
            format!(
                "the join key file {} is longer than {MAX_JOIN_KEY_FILE} bytes \
                 (it should hold only the shared secret)",
                resolved.display()
            ),
        ));
    }
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
    if let Some(fault) = control_character(key) {
        return Err(Invalid::at(
            file.span(),
            path,
            format!(
                "the join key file {} holds {fault}{KEY_HINT}; \
                 write only the secret in it (a trailing newline is fine)",
                resolved.display()
            ),
        ));
    }
    Ok(key.to_owned())
}

/// Why a key with a control character is refused.
const KEY_HINT: &str = ": a join key travels in an HTTP header (X-Join-Key or \
    Authorization: Bearer), where it could never be sent";

/// Names the first control character of `key` (C0, DEL or C1; tabs and
/// newlines too, once the ends are trimmed) and where it is, without
/// quoting the secret.
fn control_character(key: &str) -> Option<String> {
    let (at, c) = key.char_indices().find(|(_, c)| c.is_control())?;
    Some(format!(
        "a control character (U+{:04X} at byte {at})",
        u32::from(c)
    ))
}
