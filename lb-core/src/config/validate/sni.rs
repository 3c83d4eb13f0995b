//! A service's SNI routing keys (`sni`, `sni_default`, `sni_timeout`) and
//! the rules of a listen address shared by several services: every service
//! on it routes by server name, a name is routed to one service per
//! address, and at most one service is its default. Runs on the thread
//! loading the config; no I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use super::{convert_duration, Invalid, Zero};
use crate::config::raw::RawService;
use crate::config::SniRoute;

/// A service's routing keys, with where they are in the file (the checks
/// across services point at them).
pub(super) struct SniKeys {
    pub route: SniRoute,
    /// The span of each of `route.names`, in order.
    pub spans: Vec<Range<usize>>,
    /// The span of `sni_default = true`, when set.
    pub default_span: Option<Range<usize>>,
}

/// What the services so far made of one listen address.
pub(super) struct Share {
    /// The first service that listed it (its listener's owner).
    owner: String,
    /// Every service on it so far routes by server name.
    routed: bool,
    /// Server name → the service it routes to.
    names: HashMap<String, String>,
    /// The service taking clients with no (or an unknown) name.
    default: Option<String>,
}

/// `sni`, `sni_default` and `sni_timeout` of the service at `path`; None
/// when it routes by nothing (then the other two may not be set).
pub(super) fn convert_sni(raw: &RawService, path: &str) -> Result<Option<SniKeys>, Invalid> {
    let at = |key: &str| format!("{path}.{key}");
    let default = raw.sni_default.as_ref().filter(|d| *d.get_ref());
    if raw.sni.is_none() && default.is_none() {
        if let Some(timeout) = &raw.sni_timeout {
            return Err(Invalid::at(
                timeout.span(),
                at("sni_timeout"),
                "is set but neither sni nor sni_default = true is (set the server names this service takes, or remove it)",
            ));
        }
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    let mut spans = Vec::new();
    if let Some(list) = &raw.sni {
        if list.get_ref().is_empty() && default.is_none() {
            return Err(Invalid::at(
                list.span(),
                at("sni"),
                "is empty, so no client would reach this service (list server names such as \"art.example.com\" or \"*.example.com\", or set sni_default = true)",
            ));
        }
        for (i, item) in list.get_ref().iter().enumerate() {
            let item_path = format!("{}[{i}]", at("sni"));
            let name = parse_sni_name(item.get_ref())
                .map_err(|what| Invalid::at(item.span(), &item_path, what))?;
            if names.contains(&name) {
                return Err(Invalid::at(
                    item.span(),
                    item_path,
                    format!("{name:?} is listed twice (names match case-insensitively)"),
                ));
            }
            names.push(name);
            spans.push(item.span());
        }
    }
    let timeout = match &raw.sni_timeout {
        None => SniRoute::DEFAULT_TIMEOUT,
        Some(value) => convert_duration(value, &at("sni_timeout"), Zero::Refused)?,
    };
    Ok(Some(SniKeys {
        route: SniRoute {
            names,
            default: default.is_some(),
            timeout,
        },
        spans,
        default_span: default.map(|d| d.span()),
    }))
}

/// A server name as `sni` takes it: lower-cased, 1..=253 bytes of
/// letters, digits, `-` and `_` in dot-separated non-empty labels; `*` only
/// as the whole first label of a name with at least one more.
fn parse_sni_name(text: &str) -> Result<String, String> {
    let name = text.to_ascii_lowercase();
    let bad = |why: &str| {
        Err(format!(
            "{text:?} is not a server name ({why}; expected e.g. \"art.example.com\" or \"*.example.com\")"
        ))
    };
    if name.is_empty() || name.len() > 253 {
        return bad("it must be 1 to 253 characters");
    }
    let rest = name.strip_prefix("*.").unwrap_or(&name);
    if rest.is_empty() {
        return bad("a wildcard needs a domain after `*.`");
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.contains('*') {
            return bad("`*` is only taken as the whole first label");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, `-`, `_` and `.` are allowed");
        }
    }
    Ok(name)
}

/// Service `service` (routing keys `sni`, at `path`) claims `addr` (the
/// list item at `item`, `item_path`): refused if a service on it does not
/// route by name, a name is already routed there, or a second default.
pub(super) fn claim(
    shares: &mut HashMap<SocketAddr, Share>,
    addr: SocketAddr,
    (item, item_path): (Range<usize>, String),
    service: &str,
    (sni, path): (Option<&SniKeys>, &str),
) -> Result<(), Invalid> {
    let Some(share) = shares.get_mut(&addr) else {
        let mut share = Share {
            owner: service.to_owned(),
            routed: sni.is_some(),
            names: HashMap::new(),
            default: None,
        };
        if let Some(keys) = sni {
            for name in &keys.route.names {
                share.names.insert(name.clone(), service.to_owned());
            }
            share.default = keys.route.default.then(|| service.to_owned());
        }
        shares.insert(addr, share);
        return Ok(());
    };
    let Some(keys) = sni else {
        return Err(Invalid::at(
            item,
            item_path,
            format!(
                "{addr} is already a listen address of service {:?} (services may share a listen address only when each sets sni, or sni_default = true, to be chosen by the TLS server name)",
                share.owner
            ),
        ));
    };
    if !share.routed {
        return Err(Invalid::at(
            item,
            item_path,
            format!(
                "{addr} is already a listen address of service {:?}, which has no sni (services may share a listen address only when each sets sni, or sni_default = true)",
                share.owner
            ),
        ));
    }
    for (i, (name, span)) in keys.route.names.iter().zip(&keys.spans).enumerate() {
        if let Some(other) = share.names.get(name) {
            return Err(Invalid::at(
                span.clone(),
                format!("{path}.sni[{i}]"),
                format!(
                    "{name:?} is already routed to service {other:?} on {addr} (a server name picks one service per listen address)"
                ),
            ));
        }
    }
    if let (Some(span), Some(other)) = (&keys.default_span, &share.default) {
        return Err(Invalid::at(
            span.clone(),
            format!("{path}.sni_default"),
            format!(
                "service {other:?} is already the sni_default of {addr} (one service per listen address takes the unknown names)"
            ),
        ));
    }
    for name in &keys.route.names {
        share.names.insert(name.clone(), service.to_owned());
    }
    if keys.route.default {
        share.default = Some(service.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, SniRoute};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Some(Path::new("ringlb.toml"))).map_err(|e| e.to_string())
    }

    fn service(name: &str, listen: &str, extra: &str) -> String {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = [\"{listen}\"]\n{extra}\n\n\
             [[service.backend]]\nname = \"app1\"\naddress = \"10.0.0.1:443\"\n\n"
        )
    }

    #[test]
    fn names_are_lower_cased_and_the_timeout_has_a_default() {
        let text = service(
            "art",
            "127.0.0.1:8443",
            "sni = [\"Art.Example.COM\", \"*.example.com\"]",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.services[0].sni,
            Some(SniRoute {
                names: vec!["art.example.com".into(), "*.example.com".into()],
                default: false,
                timeout: Duration::from_secs(3),
            })
        );
        let text = service(
            "art",
            "127.0.0.1:8443",
            "sni_default = true\nsni_timeout = \"500ms\"",
        );
        let sni = parse(&text).unwrap().services[0].sni.clone().unwrap();
        assert!(sni.default && sni.names.is_empty());
        assert_eq!(sni.timeout, Duration::from_millis(500));
        assert_eq!(
            parse(&service("a", "127.0.0.1:1", "")).unwrap().services[0].sni,
            None
        );
    }

    #[test]
    fn bad_names_and_lone_timeouts_are_refused_with_their_position() {
        for (extra, needle) in [
            ("sni = [\"a..b\"]", "ringlb.toml:4:8: services[0].sni[0]"),
            ("sni = [\"x.*.b\"]", "whole first label"),
            ("sni = [\"*\"]", "is not a server name"),
            ("sni = [\"*.\"]", "a wildcard needs a domain"),
            ("sni = [\"a b\"]", "only letters"),
            (
                "sni = [\"a\", \"A\"]",
                "services[0].sni[1]: \"a\" is listed twice",
            ),
            ("sni = []", "is empty"),
            (
                "sni_timeout = \"1s\"",
                "services[0].sni_timeout: is set but neither",
            ),
            ("sni = [\"a\"]\nsni_timeout = \"0s\"", "longer than zero"),
        ] {
            let err = parse(&service("web", "127.0.0.1:8443", extra)).unwrap_err();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn services_share_an_address_only_when_each_routes_by_name() {
        let art = service("art", "127.0.0.1:8443", "sni = [\"art.example.com\"]");
        let xray = service(
            "xray",
            "127.0.0.1:8443",
            "sni = [\"*.example.com\"]\nsni_default = true",
        );
        let c = parse(&format!("{art}{xray}")).unwrap();
        assert_eq!(c.services.len(), 2);

        let plain = service("plain", "127.0.0.1:8443", "");
        let err = parse(&format!("{art}{plain}")).unwrap_err();
        assert!(
            err.contains("ringlb.toml:12:11: services[1].listen[0]: 127.0.0.1:8443 is already a listen address of service \"art\" (services may share"),
            "{err}"
        );
        let err = parse(&format!("{plain}{art}")).unwrap_err();
        assert!(err.contains("which has no sni"), "{err}");

        let again = service(
            "again",
            "127.0.0.1:8443",
            "sni = [\"x.org\", \"ART.example.com\"]",
        );
        let err = parse(&format!("{art}{again}")).unwrap_err();
        assert!(
            err.contains("ringlb.toml:13:17: services[1].sni[1]: \"art.example.com\" is already routed to service \"art\" on 127.0.0.1:8443"),
            "{err}"
        );

        let other = service(
            "other",
            "127.0.0.1:8443",
            "sni = [\"b.org\"]\nsni_default = true",
        );
        let err = parse(&format!("{xray}{other}")).unwrap_err();
        assert!(
            err.contains("ringlb.toml:15:15: services[1].sni_default: service \"xray\" is already the sni_default of 127.0.0.1:8443"),
            "{err}"
        );
        // The same names on different addresses are no conflict.
        let elsewhere = service("elsewhere", "127.0.0.1:9443", "sni = [\"art.example.com\"]");
        assert!(parse(&format!("{art}{elsewhere}")).is_ok());
    }
}
