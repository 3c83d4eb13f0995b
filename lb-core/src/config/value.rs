//! The value syntaxes of the config file: durations, sizes, names, socket
//! addresses, CIDRs and proxy URLs. Pure functions; on failure they return
//! what is wrong and what is expected, and the caller adds the key path and
//! the position.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

/// The longest duration accepted anywhere: one year. Longer values are
/// certainly typos, and `Instant + Duration` panics on overflow, so a bound
/// here keeps every timer arithmetic downstream safe.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a duration looks like, for messages.
pub(super) const DURATION_SYNTAX: &str =
    "expected a number followed by ms, s, m or h, e.g. \"500ms\", \"2s\", \"15m\", \"1m30s\"";

/// What a size looks like, for messages.
pub(super) const SIZE_SYNTAX: &str =
    "expected a number of bytes or a string such as \"64KiB\", \"1MiB\"";

/// What a socket address looks like, for messages.
pub(super) const SOCKET_ADDR_SYNTAX: &str = "expected \"IP:port\" or \"[IPv6]:port\"";

/// Parses `"500ms"`, `"2s"`, `"15m"`, `"1h"`, `"1m30s"`: one or more
/// `<digits><unit>` groups, units `h`, `m`, `s`, `ms`, each at most once and
/// from the largest to the smallest. No fractions ("1.5s" → use "1500ms"), no
/// bare numbers (the unit is what makes the value readable).
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let not_a_duration = || format!("{text:?} is not a duration ({DURATION_SYNTAX})");
    if text.is_empty() {
        return Err(not_a_duration());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Rank of the previous unit: each group must use a strictly smaller unit.
    let mut previous_rank = usize::MAX;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after_digits) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(not_a_duration());
        }
        if after_digits.starts_with(['.', ',']) {
            return Err(fraction_refused(text));
        }
        let unit_end = after_digits
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after_digits.len());
        let (unit, after_unit) = after_digits.split_at(unit_end);
        let (rank, unit_ms) = match unit {
            "h" => (3, 3_600_000),
            "m" => (2, 60_000),
            "s" => (1, 1_000),
            "ms" => (0, 1),
            "" => {
                return Err(format!(
                    "{text:?} is not a duration: a unit is missing ({DURATION_SYNTAX})"
                ))
            }
            other => {
                return Err(format!(
                    "{text:?} is not a duration: unknown unit {other:?} ({DURATION_SYNTAX})"
                ))
            }
        };
        if rank >= previous_rank {
            return Err(format!(
                "{text:?} is not a duration: units must go from the largest to the smallest, each once ({DURATION_SYNTAX})"
            ));
        }
        previous_rank = rank;
        let too_long = || format!("{text:?} is too long (at most 8760h, one year)");
        let count: u64 = digits.parse().map_err(|_| too_long())?;
        total_ms = count
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_long)?;
        rest = after_unit;
    }
    let duration = Duration::from_millis(total_ms);
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is too long (at most 8760h, one year)"));
    }
    Ok(duration)
}

/// The message for a fractional duration ("1.5s"): fractions are refused,
/// and when the value is a whole number of milliseconds the message
/// gives it the way to write it ("1500ms").
fn fraction_refused(text: &str) -> String {
    let exact = exact_fraction_ms(text).filter(|&ms| ms > 0);
    let instead = match exact {
        // "1500ms" reads better than "1s500ms"; "2m30s" than "150000ms".
        Some(ms) if ms < 60_000 && ms % 1_000 != 0 => format!("write \"{ms}ms\""),
        Some(ms) => format!("write {:?}", format_duration(Duration::from_millis(ms))),
        None => "use a smaller unit, as in \"1500ms\" for 1.5 s".to_owned(),
    };
    format!("{text:?} is not a duration: fractions are not accepted ({instead})")
}

/// `<digits>.<digits><unit>` in whole milliseconds, if it is one.
fn exact_fraction_ms(text: &str) -> Option<u64> {
    let (whole, rest) = text.split_once(['.', ','])?;
    let unit_at = rest.find(|c: char| !c.is_ascii_digit())?;
    let (fraction, unit) = rest.split_at(unit_at);
    let unit_ms: u64 = match unit {
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        "ms" => 1,
        _ => return None,
    };
    if whole.is_empty()
        || fraction.is_empty()
        || fraction.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = 10u64.pow(fraction.len() as u32);
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = fraction.parse().ok()?;
    let scaled = whole
        .checked_mul(scale)?
        .checked_add(fraction)?
        .checked_mul(unit_ms)?;
    (scaled % scale == 0).then_some(scaled / scale)
}

/// Writes a duration the way the file does ("1m30s", "500ms", "0s"), for
/// messages.
pub(super) fn format_duration(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let parts = [
        (total_ms / 3_600_000, "h"),
        (total_ms / 60_000 % 60, "m"),
        (total_ms / 1_000 % 60, "s"),
        (total_ms % 1_000, "ms"),
    ];
    for (count, unit) in parts {
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
        }
    }
    out
}

/// Parses a size string: `<digits><unit>` with unit `B`, `KiB`, `MiB` or
/// `GiB`. Decimal units (KB, MB) are refused rather than guessed at.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let multiplier: u64 = match unit {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size ({SIZE_SYNTAX})")),
    };
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size ({SIZE_SYNTAX})"));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large a size"))
}

/// Service and backend names: `[A-Za-z0-9_.-]+` (a backend's also at most
/// 64 long: `BackendName`). They appear in metrics labels, URLs of the
/// admin API and logs, so they stay plain.
pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses `"IP:port"` or `"[IPv6]:port"`. Host names are refused: resolving
/// them would make loading depend on DNS.
pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => ": the port is missing",
        Ok(IpAddr::V6(_)) => {
            ": the port is missing, and IPv6 addresses go in brackets as in \"[::1]:8080\""
        }
        Err(_) if text.matches(':').count() > 1 && !text.starts_with('[') => {
            ": IPv6 addresses go in brackets, as in \"[::1]:8080\""
        }
        Err(_)
            if text
                .split_once(':')
                .is_some_and(|(host, _)| is_host_name(host)) =>
        {
            ": host names are not accepted"
        }
        Err(_) => "",
    };
    Err(format!(
        "{:?} is not a socket address{hint} ({SOCKET_ADDR_SYNTAX})",
        truncated(text)
    ))
}

/// Parses `"host:port"` where host is a name (with a letter in it, so not
/// an IP) and port is 1..=65535: a backend given by name, resolved later on
/// the control plane. None for anything else.
pub(super) fn parse_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.split_once(':')?;
    let port = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p != 0)?;
    (is_host_name(host) && host.len() <= 253).then_some((host, port))
}

/// At most 80 characters of the text, for an error message that quotes
/// it (a value may come from the network, of any length).
pub(super) fn truncated(text: &str) -> String {
    let mut out: String = text.chars().take(80).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Parses a CIDR (`"10.0.0.0/8"`, `"::1/128"`); a bare IP means a /32 or
/// /128. Host bits are cleared (`10.1.2.3/8` → `10.0.0.0/8`), which does
/// not change which addresses match.
pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{text:?} is not a CIDR (expected e.g. \"10.0.0.0/8\", \"::1/128\" or a bare IP)"
    ))
}

/// Parses a proxy URL `http://host:port` (a trailing `/` is tolerated) and
/// returns it normalised to exactly `http://host:port`, so that its users
/// split it without further checks. Credentials, paths and other schemes
/// are refused.
pub(super) fn parse_proxy_url(text: &str) -> Result<String, String> {
    let expected = "expected \"http://host:port\"";
    let Some(rest) = strip_prefix_ignore_case(text, "http://") else {
        let hint = if strip_prefix_ignore_case(text, "https://").is_some() {
            ": only http:// proxies are supported (HTTPS is tunnelled through them with CONNECT)"
        } else {
            ""
        };
        return Err(format!("{text:?} is not a proxy URL{hint} ({expected})"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(format!(
            "{text:?} is not a supported proxy URL: credentials in the URL are not supported ({expected})"
        ));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not a proxy URL: the port is missing ({expected})"
        ));
    };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        is_valid_host(host)
    };
    if !port_ok || !host_ok {
        return Err(format!("{text:?} is not a proxy URL ({expected})"));
    }
    Ok(format!("http://{authority}"))
}

/// A host name or IPv4 address as it may appear in a URL or a Host header:
/// letters, digits, '-', '.', '_' and nothing else.
pub(super) fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// A host name, not an IP address: a host with a letter in it.
pub(super) fn is_host_name(host: &str) -> bool {
    is_valid_host(host) && host.bytes().any(|b| b.is_ascii_alphabetic())
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        text.get(prefix.len()..)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit_and_combined() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2_000)));
        assert_eq!(parse_duration("15m"), Ok(ms(900_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    }

    #[test]
    fn durations_format_back_to_their_syntax() {
        for text in ["0s", "500ms", "2s", "15m", "1h", "1m30s", "1h2m3s4ms"] {
            assert_eq!(
                parse_duration(text).map(format_duration),
                Ok(text.to_owned())
            );
        }
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in [
            "", "2", "s", "1.5s", "2 s", " 2s", "2sec", "30s1m", "1s1s", "-1s", "2S", "1m30",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        let too_long = parse_duration("8761h").unwrap_err();
        assert!(too_long.contains("too long"), "{too_long}");
        let overflow = parse_duration("99999999999999999999999h").unwrap_err();
        assert!(overflow.contains("too long"), "{overflow}");
        let unit = parse_duration("5d").unwrap_err();
        assert!(unit.contains("unknown unit \"d\""), "{unit}");
    }

    #[test]
    fn fractions_are_refused_with_the_way_to_write_them() {
        for (bad, instead) in [
            ("1.5s", "write \"1500ms\""),
            ("0.25s", "write \"250ms\""),
            ("2.5m", "write \"2m30s\""),
            ("1,5s", "write \"1500ms\""),
            ("0.5h", "write \"30m\""),
            ("1.0001s", "use a smaller unit"),
            ("1m1.5s", "use a smaller unit"),
        ] {
            let message = parse_duration(bad).unwrap_err();
            assert!(
                message.contains("fractions are not accepted") && message.contains(instead),
                "{bad}: {message}"
            );
            assert!(!message.contains("unit is missing"), "{bad}: {message}");
        }
    }

    #[test]
    fn sizes_in_bytes_and_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["", "KiB", "64KB", "64 KiB", "1.5MiB", "-1", "64kib"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn names_are_plain() {
        assert!(is_valid_name("art-1_a.b"));
        for bad in ["", "a b", "é", "a/b", "a:b"] {
            assert!(!is_valid_name(bad), "{bad:?} was accepted");
        }
    }

    #[test]
    fn socket_addresses_with_hints() {
        assert!(parse_socket_addr("10.0.0.1:80").is_ok());
        assert!(parse_socket_addr("[::1]:80").is_ok());
        assert!(parse_socket_addr("10.0.0.1")
            .unwrap_err()
            .contains("port is missing"));
        assert!(parse_socket_addr("::1:80")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_socket_addr("fe80::x:1")
            .unwrap_err()
            .contains("brackets"));
        assert_eq!(
            parse_socket_addr("localhost:80"),
            Err(
                "\"localhost:80\" is not a socket address: host names are not accepted \
                 (expected \"IP:port\" or \"[IPv6]:port\")"
                    .to_owned()
            )
        );
        for no_hint in ["10.0.0.1:http", "10.0.0.1:70000", "[::1]:x", "x"] {
            assert_eq!(
                parse_socket_addr(no_hint),
                Err(format!(
                    "{no_hint:?} is not a socket address (expected \"IP:port\" or \"[IPv6]:port\")"
                ))
            );
        }
        let long = parse_socket_addr(&"1".repeat(1000)).unwrap_err();
        assert!(long.len() < 200, "the text is quoted whole: {long}");
    }

    #[test]
    fn cidrs_and_bare_ips() {
        assert_eq!(parse_cidr("10.1.2.3/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr("10.1.2.3"), Ok("10.1.2.3/32".parse().unwrap()));
        assert_eq!(parse_cidr("::1"), Ok("::1/128".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("ten").is_err());
    }

    #[test]
    fn proxy_urls_are_normalised() {
        assert_eq!(
            parse_proxy_url("http://proxy.corp:3128/"),
            Ok("http://proxy.corp:3128".to_owned())
        );
        assert_eq!(
            parse_proxy_url("HTTP://[::1]:3128"),
            Ok("http://[::1]:3128".to_owned())
        );
        assert!(parse_proxy_url("https://p:1")
            .unwrap_err()
            .contains("only http://"));
        assert!(parse_proxy_url("http://u:p@p:1")
            .unwrap_err()
            .contains("credentials"));
        for bad in [
            "proxy:3128",
            "http://proxy",
            "http://proxy:0",
            "http://proxy:99999",
            "http://:3128",
            "http://pro xy:3128",
            "http://proxy:3128/path",
            "http://[zz]:1",
            "é",
        ] {
            assert!(parse_proxy_url(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
