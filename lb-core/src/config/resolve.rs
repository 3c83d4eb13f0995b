//! Backends given by host name (`address = "host:port"`): looking a name
//! up and picking the address to use. [`Config::resolve_names`] blocks on
//! the system resolver (getaddrinfo: `/etc/hosts`, then DNS); it runs on
//! the thread loading the config (start-up, `ringlb check`) and on the
//! control plane at a reload. The periodic lookups (`control/resolve.rs`,
//! control plane) share [`family_wanted`] and [`pick`].

use std::net::{SocketAddr, ToSocketAddrs};

use super::backend::BackendAddr;
use super::value::parse_host_port;
use super::{Config, ConfigError, Service};

/// The family a named backend's address must have: `source_address`'s if
/// the service sets one, else that of its last good address (`current`,
/// if resolved), so a name with both keeps its family; None: any (the
/// resolver's first).
pub(crate) fn family_wanted(service: &Service, current: Option<SocketAddr>) -> Option<bool> {
    match (service.source_address, current) {
        (Some(source), _) => Some(source.is_ipv4()),
        (None, Some(addr)) if !addr.ip().is_unspecified() => Some(addr.is_ipv4()),
        _ => None,
    }
}

/// The first usable address of the wanted family (`Some(true)`: IPv4) in
/// the resolver's order, IPv4-mapped ones as IPv4; an unspecified,
/// multicast or broadcast answer is skipped like [`BackendAddr`] refuses
/// it in the file.
pub(crate) fn pick(
    answers: impl IntoIterator<Item = SocketAddr>,
    v4: Option<bool>,
) -> Result<SocketAddr, String> {
    let mut seen = Vec::new();
    for answer in answers {
        seen.push(answer.ip().to_string());
        if let Ok(addr) = BackendAddr::try_from(answer) {
            let addr = addr.get();
            if v4.is_none_or(|v4| addr.is_ipv4() == v4) {
                return Ok(addr);
            }
        }
    }
    let family = match v4 {
        Some(true) => "usable IPv4 ",
        Some(false) => "usable IPv6 ",
        None => "usable ",
    };
    Err(format!(
        "no {family}address among the answers [{}]",
        seen.join(", ")
    ))
}

/// Looks `host` (`"name:port"`) up with the system resolver, blocking.
pub(crate) fn look_up_blocking(host: &str, v4: Option<bool>) -> Result<SocketAddr, String> {
    let (name, port) =
        parse_host_port(host).ok_or_else(|| format!("{host:?} is not \"host:port\""))?;
    let answers = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("lookup failed: {e}"))?;
    pick(answers, v4)
}

impl Config {
    /// Looks up every backend given by host name and sets its `address`
    /// (blocking on the system resolver, one name after the other). A name
    /// that does not resolve keeps the address it has in `previous` (the
    /// config in force, at a reload) when it is written the same there;
    /// else the config is refused: ringlb does not start with a backend it
    /// cannot reach. Returns one line per name that kept its last good
    /// address, for the log.
    pub fn resolve_names(&mut self, previous: Option<&Config>) -> Result<Vec<String>, ConfigError> {
        let mut kept = Vec::new();
        for service in &mut self.services {
            let before = previous.and_then(|p| p.services.iter().find(|s| s.name == service.name));
            for i in 0..service.backends.len() {
                let Some(host) = service.backends[i].host.clone() else {
                    continue;
                };
                let name = service.backends[i].name.clone();
                let last_good = before
                    .and_then(|s| s.backends.iter().find(|b| b.name == name))
                    .filter(|b| b.host.as_deref() == Some(host.as_str()))
                    .map(|b| b.address)
                    .filter(|a| !a.ip().is_unspecified());
                let v4 = family_wanted(service, last_good);
                match (look_up_blocking(&host, v4), last_good) {
                    (Ok(addr), _) => service.backends[i].address = addr,
                    (Err(why), Some(addr)) => {
                        kept.push(format!(
                            "service {:?} backend {name:?}: {host:?}: {why}; keeping its last good address {addr}",
                            service.name
                        ));
                        service.backends[i].address = addr;
                    }
                    (Err(why), None) => {
                        return Err(ConfigError {
                            file: None,
                            line: None,
                            col: None,
                            message: format!(
                                "service {:?} backend {name:?}: address {host:?} does not resolve: {why} \
                                 (fix the name in DNS or /etc/hosts, or give the backend's IP)",
                                service.name
                            ),
                        })
                    }
                }
            }
        }
        Ok(kept)
    }

    /// Whether some backend given by name has no address yet (the config
    /// was not passed through [`Config::resolve_names`]).
    pub(crate) fn has_unresolved_names(&self) -> bool {
        self.services.iter().any(|s| {
            s.backends
                .iter()
                .any(|b| b.host.is_some() && b.address.ip().is_unspecified())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn picks_the_first_usable_address_of_the_family() {
        let answers = addrs(&["[fd00::1]:80", "0.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(
            pick(answers.clone(), None),
            Ok("[fd00::1]:80".parse().unwrap())
        );
        assert_eq!(
            pick(answers.clone(), Some(true)),
            Ok("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            pick(addrs(&["[::ffff:10.0.0.9]:80"]), Some(true)),
            Ok("10.0.0.9:80".parse().unwrap())
        );
        let err = pick(addrs(&["10.0.0.1:80"]), Some(false)).unwrap_err();
        assert!(
            err.contains("no usable IPv6 address among the answers [10.0.0.1]"),
            "{err}"
        );
    }

    #[test]
    fn localhost_resolves_and_an_invalid_name_is_refused() {
        // `localhost` is in every /etc/hosts; `.invalid` never resolves
        // (RFC 6761).
        let text = "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\n\
                    [[service.backend]]\nname = \"a\"\naddress = \"localhost:8081\"\n\
                    [[service.backend]]\nname = \"b\"\naddress = \"ringlb-nowhere.invalid:8081\"\n";
        let mut config = Config::parse(text, None).unwrap();
        assert!(config.has_unresolved_names());
        let err = config.resolve_names(None).unwrap_err();
        assert!(
            err.message.contains("service \"s\" backend \"b\": address \"ringlb-nowhere.invalid:8081\" does not resolve"),
            "{err}"
        );
        // With the previous config holding a good address, it is kept.
        let mut previous = Config::parse(text, None).unwrap();
        previous.services[0].backends[1].address = "127.0.0.7:8081".parse().unwrap();
        let kept = config.resolve_names(Some(&previous)).unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(
            kept[0].contains("keeping its last good address 127.0.0.7:8081"),
            "{kept:?}"
        );
        let b = &config.services[0].backends;
        assert!(b[0].address.ip().is_loopback(), "{:?}", b[0].address);
        assert_eq!(b[0].address.port(), 8081);
        assert_eq!(b[1].address, "127.0.0.7:8081".parse().unwrap());
        assert!(!config.has_unresolved_names());
    }
}
