//! Which outbound HTTP proxy, if any, a health probe goes through. Pure (the
//! environment is passed in as a function); resolved once per service by the
//! prober on the control-plane thread.
//!
//! # Rules
//!
//! - Settings: the check's `http_proxy`, `https_proxy` and `no_proxy` win;
//!   a setting missing from the config falls back to the environment
//!   (`HTTP_PROXY` then `http_proxy`, `HTTPS_PROXY` then `https_proxy`,
//!   `NO_PROXY` then `no_proxy`; an empty variable counts as unset). An empty
//!   string in the config means "no proxy" and hides the environment.
//! - Proxy URLs are `http://host:port` (`http://` and the port, default 80,
//!   may be left out; a trailing `/` is ignored). An unusable URL is dropped
//!   (probes go direct) and listed in [`ProxySettings::errors`] for the
//!   caller to log.
//! - The name probed (the check's `host`, without port, else the backend's IP)
//!   decides the loopback rule: `localhost`, `*.localhost` and loopback IPs
//!   are never proxied. The rule looks at that name only, not at the
//!   backend's address, so a check with `host = "node2.cluster.test"` on a
//!   loopback backend is proxied like any other.
//! - `no_proxy` entries (comma or space separated) match:
//!   `*` everything; an IP the backend's IP; a CIDR the backend's IP;
//!   `example.com`, `.example.com` and `*.example.com` the name
//!   `example.com` and all its subdomains; a name exactly that name (case
//!   insensitive, trailing dots ignored). A `:port` on an entry is ignored.
//!   An IP-like entry also matches the probed name when that is an IP.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::HealthCheck;

/// An outbound HTTP proxy: where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr {
    /// A name (resolved when connecting) or an IP literal (no brackets).
    pub host: String,
    pub port: u16,
}

impl ProxyAddr {
    /// Parses `http://host:port`, `host:port` or `host` (port 80).
    pub fn parse(url: &str) -> Result<ProxyAddr, String> {
        let rest = url.trim();
        let rest = match rest.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy URL {url:?}: scheme {scheme:?} is not supported (use http://host:port)"
                ))
            }
            None => rest,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(format!(
                "proxy URL {url:?}: credentials are not supported (use http://host:port)"
            ));
        }
        if authority.contains('/') || authority.is_empty() {
            return Err(format!("proxy URL {url:?}: expected http://host:port"));
        }
        let (host, port) = split_host_port(authority);
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("proxy URL {url:?}: bad port {p:?}"))?,
        };
        if host.is_empty() {
            return Err(format!("proxy URL {url:?}: no host"));
        }
        Ok(ProxyAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    /// `*`.
    Everything,
    /// An IP or a CIDR (an IP is a /32 or /128).
    Net(IpNet),
    /// A domain and its subdomains (from `.example.com` or `*.example.com`
    /// or `example.com`), lower case, no trailing dot.
    Domain(String),
}

impl Bypass {
    fn parse(entry: &str) -> Option<Bypass> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(Bypass::Everything);
        }
        if let Ok(net) = entry.parse::<IpNet>() {
            return Some(Bypass::Net(net.trunc()));
        }
        let (host, _port) = split_host_port(entry);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Bypass::Net(IpNet::from(ip)));
        }
        let domain = host
            .strip_prefix("*.")
            .or_else(|| host.strip_prefix('.'))
            .unwrap_or(host);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return None;
        }
        Some(Bypass::Domain(domain))
    }

    fn matches(&self, name: &str, ip: IpAddr) -> bool {
        match self {
            Bypass::Everything => true,
            Bypass::Net(net) => {
                net.contains(&ip) || name.parse::<IpAddr>().is_ok_and(|n| net.contains(&n))
            }
            Bypass::Domain(domain) => {
                name == domain
                    || name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
        }
    }
}

/// The proxies and exceptions for one service's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// For `kind = "http"` probes.
    http: Option<ProxyAddr>,
    /// For `kind = "https"` probes (a CONNECT tunnel).
    https: Option<ProxyAddr>,
    no_proxy: Vec<Bypass>,
    /// Proxy URLs that could not be used (dropped); the caller logs them.
    pub errors: Vec<String>,
}

impl ProxySettings {
    /// No proxy at all.
    pub fn direct() -> Self {
        ProxySettings::default()
    }

    /// Settings for `check`, falling back to the environment read through
    /// `env` (pass `|k| std::env::var(k).ok()` in production).
    pub fn resolve(check: &HealthCheck, env: impl Fn(&str) -> Option<String>) -> ProxySettings {
        let from_env = |upper: &str, lower: &str| {
            env(upper)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| env(lower))
        };
        let http_url = check
            .http_proxy
            .clone()
            .or_else(|| from_env("HTTP_PROXY", "http_proxy"));
        let https_url = check
            .https_proxy
            .clone()
            .or_else(|| from_env("HTTPS_PROXY", "https_proxy"));
        let no_proxy: Vec<String> = match &check.no_proxy {
            Some(list) => list.clone(),
            None => from_env("NO_PROXY", "no_proxy")
                .map(|v| v.split([',', ' ', '\t']).map(str::to_owned).collect())
                .unwrap_or_default(),
        };
        let mut errors = Vec::new();
        let mut addr = |url: Option<String>, which: &str| {
            let url = url.filter(|u| !u.trim().is_empty())?;
            ProxyAddr::parse(&url)
                .map_err(|e| errors.push(format!("{which}: {e}; probing without it")))
                .ok()
        };
        let http = addr(http_url, "http_proxy");
        let https = addr(https_url, "https_proxy");
        ProxySettings {
            http,
            https,
            no_proxy: no_proxy.iter().filter_map(|e| Bypass::parse(e)).collect(),
            errors,
        }
    }

    /// The proxy for a probe of `name` (the `host` setting without port, or
    /// the backend's IP as text) at `ip`, or None to connect directly.
    pub fn proxy_for(&self, https: bool, name: &str, ip: IpAddr) -> Option<ProxyAddr> {
        let proxy = if https {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(&name);
        if is_loopback_name(name) || self.no_proxy.iter().any(|b| b.matches(name, ip)) {
            return None;
        }
        Some(proxy.clone())
    }
}

/// `localhost`, `*.localhost` (RFC 6761) and loopback IP literals.
fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 or a bare host.
pub(crate) fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
        return (s, None);
    }
    match s.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => (s, None),
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::config::HealthKind;

    fn check() -> HealthCheck {
        crate::health::tests::check(HealthKind::Http)
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn no_env() -> impl Fn(&str) -> Option<String> {
        env(&[])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn addr(host: &str, port: u16) -> ProxyAddr {
        ProxyAddr {
            host: host.into(),
            port,
        }
    }

    fn proxy(host: &str, port: u16) -> Option<ProxyAddr> {
        Some(addr(host, port))
    }

    const BACKEND: &str = "10.0.0.11";

    fn with_no_proxy(entries: &[&str]) -> ProxySettings {
        let mut c = check();
        c.http_proxy = Some("http://proxy.corp:3128".into());
        c.no_proxy = Some(entries.iter().map(|e| e.to_string()).collect());
        ProxySettings::resolve(&c, no_env())
    }

    #[test]
    fn parses_proxy_urls() {
        assert_eq!(
            ProxyAddr::parse("http://proxy.corp:3128"),
            Ok(addr("proxy.corp", 3128))
        );
        assert_eq!(
            ProxyAddr::parse("HTTP://proxy.corp:3128/"),
            Ok(addr("proxy.corp", 3128))
        );
        assert_eq!(ProxyAddr::parse("proxy.corp"), Ok(addr("proxy.corp", 80)));
        assert_eq!(ProxyAddr::parse("http://[::1]:8080"), Ok(addr("::1", 8080)));
        assert_eq!(
            ProxyAddr::parse("10.1.1.1:8080"),
            Ok(addr("10.1.1.1", 8080))
        );
        assert!(ProxyAddr::parse("https://proxy.corp:443").is_err());
        assert!(ProxyAddr::parse("socks5://proxy.corp:1080").is_err());
        assert!(ProxyAddr::parse("http://user:pw@proxy.corp:3128").is_err());
        assert!(ProxyAddr::parse("http://proxy.corp:99999").is_err());
        assert!(ProxyAddr::parse("http://proxy.corp:3128/path").is_err());
        assert!(ProxyAddr::parse("http://:3128").is_err());
    }

    #[test]
    fn environment_applies_when_config_is_silent() {
        let s = ProxySettings::resolve(
            &check(),
            env(&[
                ("HTTP_PROXY", "http://p1:1"),
                ("https_proxy", "http://p2:2"),
            ]),
        );
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), proxy("p1", 1));
        assert_eq!(s.proxy_for(true, BACKEND, ip(BACKEND)), proxy("p2", 2));
    }

    #[test]
    fn upper_case_variable_wins_over_lower_case_unless_empty() {
        let s = ProxySettings::resolve(
            &check(),
            env(&[
                ("HTTP_PROXY", "http://upper:1"),
                ("http_proxy", "http://lower:2"),
            ]),
        );
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), proxy("upper", 1));
        let s = ProxySettings::resolve(
            &check(),
            env(&[("HTTP_PROXY", ""), ("http_proxy", "http://lower:2")]),
        );
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), proxy("lower", 2));
    }

    #[test]
    fn config_wins_over_environment() {
        let mut c = check();
        c.http_proxy = Some("http://cfg:3128".into());
        c.https_proxy = Some(String::new());
        c.no_proxy = Some(vec![]);
        let s = ProxySettings::resolve(
            &c,
            env(&[
                ("HTTP_PROXY", "http://env:1"),
                ("HTTPS_PROXY", "http://env:2"),
                ("NO_PROXY", "*"),
            ]),
        );
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), proxy("cfg", 3128));
        assert_eq!(
            s.proxy_for(true, BACKEND, ip(BACKEND)),
            None,
            "empty config hides env"
        );
    }

    #[test]
    fn no_proxy_from_environment_is_comma_separated() {
        let s = ProxySettings::resolve(
            &check(),
            env(&[
                ("HTTP_PROXY", "http://p:1"),
                ("no_proxy", "a.test, .b.test,10.0.0.0/8"),
            ]),
        );
        assert_eq!(s.proxy_for(false, "a.test", ip("192.0.2.1")), None);
        assert_eq!(s.proxy_for(false, "x.b.test", ip("192.0.2.1")), None);
        assert_eq!(s.proxy_for(false, "c.test", ip(BACKEND)), None);
        assert_eq!(s.proxy_for(false, "c.test", ip("192.0.2.1")), proxy("p", 1));
    }

    #[test]
    fn bad_urls_are_dropped_and_reported() {
        let mut c = check();
        c.http_proxy = Some("socks5://p:1".into());
        let s = ProxySettings::resolve(&c, env(&[("HTTPS_PROXY", "http://p:notaport")]));
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), None);
        assert_eq!(s.proxy_for(true, BACKEND, ip(BACKEND)), None);
        assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
        assert!(s.errors[0].starts_with("http_proxy: "), "{:?}", s.errors);
    }

    #[test]
    fn nothing_set_means_direct() {
        let s = ProxySettings::resolve(&check(), no_env());
        assert_eq!(s, ProxySettings::direct());
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), None);
    }

    #[test]
    fn localhost_and_loopback_names_are_never_proxied() {
        let s = with_no_proxy(&[]);
        for name in [
            "localhost",
            "LOCALHOST.",
            "app.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "[::1]",
        ] {
            assert_eq!(s.proxy_for(false, name, ip(BACKEND)), None, "{name}");
        }
    }

    #[test]
    fn loopback_rule_looks_at_the_name_not_the_address() {
        let s = with_no_proxy(&[]);
        assert_eq!(
            s.proxy_for(false, "node2.cluster.test", ip("127.0.0.1")),
            proxy("proxy.corp", 3128)
        );
        assert_eq!(
            s.proxy_for(false, BACKEND, ip(BACKEND)),
            proxy("proxy.corp", 3128)
        );
    }

    #[test]
    fn exact_host_matches_only_itself_and_its_subdomains() {
        let s = with_no_proxy(&["node1.cluster.test"]);
        assert_eq!(s.proxy_for(false, "node1.cluster.test", ip(BACKEND)), None);
        assert_eq!(s.proxy_for(false, "NODE1.Cluster.Test.", ip(BACKEND)), None);
        assert_eq!(
            s.proxy_for(false, "a.node1.cluster.test", ip(BACKEND)),
            None
        );
        assert!(s
            .proxy_for(false, "node2.cluster.test", ip(BACKEND))
            .is_some());
        assert!(s
            .proxy_for(false, "xnode1.cluster.test", ip(BACKEND))
            .is_some());
    }

    #[test]
    fn domain_suffixes_with_and_without_leading_dot() {
        for entry in [
            ".cluster.test",
            "cluster.test",
            "*.cluster.test",
            "cluster.test.",
        ] {
            let s = with_no_proxy(&[entry]);
            assert_eq!(
                s.proxy_for(false, "node2.cluster.test", ip(BACKEND)),
                None,
                "{entry}"
            );
            assert_eq!(
                s.proxy_for(false, "cluster.test", ip(BACKEND)),
                None,
                "{entry}"
            );
            assert!(
                s.proxy_for(false, "othercluster.test", ip(BACKEND))
                    .is_some(),
                "{entry}"
            );
            assert!(
                s.proxy_for(false, "cluster.test.evil", ip(BACKEND))
                    .is_some(),
                "{entry}"
            );
        }
    }

    #[test]
    fn ips_and_cidrs_match_the_backend_address() {
        let s = with_no_proxy(&["10.0.0.11"]);
        assert_eq!(s.proxy_for(false, "node1.cluster.test", ip(BACKEND)), None);
        assert!(s
            .proxy_for(false, "node1.cluster.test", ip("10.0.0.12"))
            .is_some());
        let s = with_no_proxy(&["10.0.0.0/24", "2001:db8::/32"]);
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), None);
        assert_eq!(s.proxy_for(false, "n", ip("2001:db8::7")), None);
        assert!(s.proxy_for(false, "n", ip("10.0.1.1")).is_some());
        let s = with_no_proxy(&["10.0.0.11:8081", "[2001:db8::1]:443"]);
        assert_eq!(s.proxy_for(false, "n", ip(BACKEND)), None);
        assert_eq!(s.proxy_for(false, "n", ip("2001:db8::1")), None);
    }

    #[test]
    fn ip_entries_also_match_an_ip_name() {
        let s = with_no_proxy(&["192.0.2.0/24"]);
        assert_eq!(s.proxy_for(false, "192.0.2.9", ip(BACKEND)), None);
    }

    #[test]
    fn star_matches_everything() {
        let s = with_no_proxy(&["*"]);
        assert_eq!(s.proxy_for(false, "anything.example", ip(BACKEND)), None);
        assert_eq!(s.proxy_for(false, BACKEND, ip(BACKEND)), None);
    }

    #[test]
    fn splits_host_and_port() {
        assert_eq!(split_host_port("a.test:80"), ("a.test", Some("80")));
        assert_eq!(split_host_port("a.test"), ("a.test", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some("80")));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
