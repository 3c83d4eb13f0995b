//! SNI routes: for each listen address whose services route by the TLS
//! server name (`sni`, `sni_default`), which service a name picks. Built by
//! the control plane with every snapshot (so a reload changes the routes
//! of an address at once, with its services) and read by the workers when
//! a client's ClientHello is whole (`worker/sni.rs`). Pure: no I/O.
//!
//! Matching (names are lower-case on both sides: the config lower-cases
//! `sni`, `tls_hello` the ClientHello's name): an exact name wins; else a
//! wildcard `*.example.com` matches a name with exactly one more label
//! (`a.example.com`, not `a.b.example.com` nor `example.com`: the rule of
//! TLS certificates, RFC 6125 §6.4.3, so a route never takes a name the
//! backend's certificate could not cover); else the address's
//! `sni_default` service; else none (the client is refused).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Service;

/// The routes of one listen address.
#[derive(Debug)]
pub(crate) struct SniRoutes {
    /// The address as configured; port 0 (never shared) stands for
    /// whatever its owner's listener bound.
    pub(crate) addr: SocketAddr,
    /// The service (by index in the snapshot, which is config order)
    /// whose listener accepts on the address: the first listing it.
    pub(crate) owner: usize,
    /// Exact names → service.
    exact: HashMap<Box<str>, usize>,
    /// `*.example.com` as `example.com` → service.
    wildcard: HashMap<Box<str>, usize>,
    /// The `sni_default` service.
    default: Option<usize>,
    /// How long a client may take to send its whole ClientHello: the
    /// longest `sni_timeout` of the address's services (the service is
    /// not known until the hello is read).
    pub(crate) timeout: Duration,
}

impl SniRoutes {
    /// The routes of every address some service routes by name on, from
    /// the services in snapshot order (a validated config: the services
    /// sharing an address all route by name, a name and the default are
    /// each on one service).
    pub(crate) fn build<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<SniRoutes> {
        let mut out: Vec<SniRoutes> = Vec::new();
        for (si, service) in services.into_iter().enumerate() {
            let Some(sni) = &service.sni else { continue };
            for &addr in &service.listen {
                let at = out
                    .iter()
                    .position(|r| addr.port() != 0 && r.addr == addr)
                    .unwrap_or_else(|| {
                        out.push(SniRoutes {
                            addr,
                            owner: si,
                            exact: HashMap::new(),
                            wildcard: HashMap::new(),
                            default: None,
                            timeout: Duration::ZERO,
                        });
                        out.len() - 1
                    });
                let routes = &mut out[at];
                for name in &sni.names {
                    match name.strip_prefix("*.") {
                        Some(domain) => routes.wildcard.entry(domain.into()).or_insert(si),
                        None => routes.exact.entry(name.as_str().into()).or_insert(si),
                    };
                }
                if sni.default && routes.default.is_none() {
                    routes.default = Some(si);
                }
                routes.timeout = routes.timeout.max(sni.timeout);
            }
        }
        out
    }

    /// Whether these are the routes of the listener of service `owner`
    /// bound at `bound`.
    pub(crate) fn of_listener(&self, owner: usize, bound: SocketAddr) -> bool {
        self.owner == owner
            && (self.addr == bound || (self.addr.port() == 0 && self.addr.ip() == bound.ip()))
    }

    /// The service a client asking for `name` (lower-case; None: it sent
    /// no server name) goes to, if any.
    pub(crate) fn route(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.default;
        };
        if let Some(&si) = self.exact.get(name) {
            return Some(si);
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .copied()
            .or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SniRoute;

    fn service(name: &str, listen: &str, names: &[&str], default: bool, secs: u64) -> Service {
        let mut s = Service::new(name, vec![listen.parse().unwrap()], Vec::new());
        s.sni = Some(SniRoute {
            names: names.iter().map(|n| n.to_string()).collect(),
            default,
            timeout: Duration::from_secs(secs),
        });
        s
    }

    #[test]
    fn exact_names_beat_wildcards_which_take_one_label() {
        let services = [
            service("art", "127.0.0.1:443", &["art.example.com"], false, 3),
            service("any", "127.0.0.1:443", &["*.example.com"], false, 5),
        ];
        let routes = SniRoutes::build(&services);
        assert_eq!(routes.len(), 1, "one shared address");
        let r = &routes[0];
        assert_eq!(r.owner, 0);
        assert_eq!(r.timeout, Duration::from_secs(5), "the longest timeout");
        assert_eq!(r.route(Some("art.example.com")), Some(0));
        assert_eq!(r.route(Some("xray.example.com")), Some(1));
        assert_eq!(r.route(Some("a.b.example.com")), None, "one label only");
        assert_eq!(r.route(Some("example.com")), None);
        assert_eq!(r.route(Some("art.example.org")), None);
        assert_eq!(r.route(None), None, "no default: refused");
    }

    #[test]
    fn the_default_takes_no_name_and_unknown_names() {
        let services = [
            service("art", "127.0.0.1:443", &["art.example.com"], false, 3),
            service("rest", "127.0.0.1:443", &[], true, 3),
        ];
        let r = &SniRoutes::build(&services)[0];
        assert_eq!(r.route(Some("art.example.com")), Some(0));
        assert_eq!(r.route(Some("other.org")), Some(1));
        assert_eq!(r.route(None), Some(1));
    }

    #[test]
    fn names_from_the_config_and_the_hello_meet_lower_cased() {
        // Both sides lower-case: the config's parser and the hello's.
        let text = "[[service]]\nname = \"art\"\nlisten = [\"127.0.0.1:443\"]\n\
                    sni = [\"ART.Example.Com\"]\n[[service.backend]]\nname = \"a\"\n\
                    address = \"127.0.0.1:1\"\n";
        let config = crate::config::Config::parse(text, None).unwrap();
        let r = &SniRoutes::build(&config.services)[0];
        assert_eq!(r.route(Some("art.example.com")), Some(0));
    }

    #[test]
    fn addresses_and_listeners_are_told_apart() {
        let services = [
            service("a", "127.0.0.1:443", &["a.org"], false, 3),
            service("b", "127.0.0.1:8443", &["b.org"], false, 3),
            service("c", "127.0.0.1:0", &["c.org"], true, 3),
        ];
        let mut plain = Service::new("d", vec!["127.0.0.1:9000".parse().unwrap()], Vec::new());
        plain.sni = None;
        let all: Vec<&Service> = services.iter().chain([&plain]).collect();
        let routes = SniRoutes::build(all);
        assert_eq!(routes.len(), 3, "a service without sni has no routes");
        assert!(routes[0].of_listener(0, "127.0.0.1:443".parse().unwrap()));
        assert!(!routes[0].of_listener(1, "127.0.0.1:443".parse().unwrap()));
        assert!(routes[2].of_listener(2, "127.0.0.1:41234".parse().unwrap()));
        assert_eq!(routes[1].route(Some("a.org")), None);
    }

    /// A name of 1 to 4 labels from a small alphabet (so names and
    /// wildcards collide often), optionally as a wildcard.
    fn name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(prop_oneof!["a", "b", "c"], 1..4),
            any::<bool>(),
        )
            .prop_map(|(labels, wild)| {
                let name = labels.join(".");
                if wild {
                    format!("*.{name}")
                } else {
                    name
                }
            })
    }

    proptest::proptest! {
        /// The table answers as the rule reads: the first service listing
        /// the exact name, else the first listing `*.` + the name without
        /// its first label, else the default.
        #[test]
        fn routes_follow_the_rule(
            lists in proptest::collection::vec(proptest::collection::vec(name(), 0..4), 1..4),
            default in proptest::option::of(0usize..4),
            asked in proptest::option::of(proptest::collection::vec(
                proptest::prelude::prop_oneof!["a", "b", "c"], 1..5)),
        ) {
            let services: Vec<Service> = lists
                .iter()
                .enumerate()
                .map(|(i, names)| {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    service(&format!("s{i}"), "127.0.0.1:443", &names, default == Some(i), 3)
                })
                .collect();
            let routes = SniRoutes::build(&services);
            proptest::prop_assert_eq!(routes.len(), 1);
            let asked = asked.map(|labels| labels.join("."));
            let first = |wanted: &str| lists.iter().position(|l| l.iter().any(|n| n == wanted));
            let want = match &asked {
                None => None,
                Some(n) => first(n).or_else(|| {
                    n.split_once('.').and_then(|(_, parent)| first(&format!("*.{parent}")))
                }),
            }
            .or(default.filter(|&d| d < lists.len()));
            proptest::prop_assert_eq!(routes[0].route(asked.as_deref()), want);
        }
    }
}
