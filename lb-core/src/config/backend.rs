//! The values that describe a backend, as types that can only hold a valid
//! one: [`BackendName`], [`BackendAddr`], [`Weight`]. The config file
//! (`validate`) and the admin API (the join endpoint, the weight endpoint)
//! parse through them, so the two accept exactly the same backends and
//! refuse the others in the same words. Pure; runs on whichever thread
//! parses (start-up, or the control plane on a reload or an admin request).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use super::value::{is_valid_name, parse_socket_addr, truncated};

/// Largest backend weight (the smallest is 1).
pub(crate) const MAX_WEIGHT: u32 = 10_000;
/// Longest backend name, in bytes (names are ASCII).
pub(crate) const MAX_NAME_LEN: usize = 64;

/// Why a backend value was refused. The texts say what was wrong and what
/// is expected; the caller adds where (a key path, or nothing in an HTTP
/// answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidBackend {
    /// The name, at most 80 characters of it.
    #[error(
        "{0:?} is not a valid name (expected 1 to {MAX_NAME_LEN} letters, digits, '_', '.' or '-')"
    )]
    Name(String),
    /// The address is not `IP:port` or `[IPv6]:port`; what the syntax
    /// check said.
    #[error("{0}")]
    AddressSyntax(String),
    /// A socket address no backend can have.
    #[error("{address}: {why} (expected the backend's own IP and port)")]
    Unusable {
        /// As written (before IPv4-mapped addresses are normalised).
        address: SocketAddr,
        why: &'static str,
    },
    /// The weight, as given.
    #[error("{0} is not a valid weight (expected an integer from 1 to {MAX_WEIGHT})")]
    Weight(i64),
}

/// A backend's name: 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 _ . -`. Names
/// identify a backend in Maglev, metrics labels, admin URLs and logs, so
/// they stay short and plain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BackendName(String);

impl BackendName {
    /// Checks a name as written.
    pub(crate) fn parse(text: &str) -> Result<BackendName, InvalidBackend> {
        if text.len() > MAX_NAME_LEN || !is_valid_name(text) {
            return Err(InvalidBackend::Name(truncated(text)));
        }
        Ok(BackendName(text.to_owned()))
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

/// An address a backend can be connected to: `IP:port` or `[IPv6]:port`,
/// no host name, not port 0, not an unspecified, multicast or broadcast
/// address. An IPv4-mapped IPv6 address (`[::ffff:10.0.0.1]:80`) is held
/// as the IPv4 address it maps (`10.0.0.1:80`): the same backend either
/// way, so one backend cannot be listed twice under two spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BackendAddr(SocketAddr);

impl BackendAddr {
    /// Parses and checks an address as written.
    pub(crate) fn parse(text: &str) -> Result<BackendAddr, InvalidBackend> {
        let address = parse_socket_addr(text).map_err(InvalidBackend::AddressSyntax)?;
        BackendAddr::try_from(address)
    }

    pub(crate) fn get(self) -> SocketAddr {
        self.0
    }
}

impl TryFrom<SocketAddr> for BackendAddr {
    type Error = InvalidBackend;

    fn try_from(address: SocketAddr) -> Result<BackendAddr, InvalidBackend> {
        let canonical = SocketAddr::new(address.ip().to_canonical(), address.port());
        let ip = canonical.ip();
        let why = if canonical.port() == 0 {
            "port 0 cannot be connected to"
        } else if ip.is_unspecified() {
            "an unspecified address (0.0.0.0 or ::) cannot be connected to"
        } else if ip.is_multicast() {
            "a multicast address cannot be connected to"
        } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
            "the broadcast address cannot be connected to"
        } else {
            // An IPv6 address keeps its flow label and scope id.
            let held = if address.ip() == ip {
                address
            } else {
                canonical
            };
            return Ok(BackendAddr(held));
        };
        Err(InvalidBackend::Unusable { address, why })
    }
}

/// A backend's weight: 1 to [`MAX_WEIGHT`], its share of the Maglev table
/// and of the weighted policies relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Weight(NonZeroU32);

impl Weight {
    /// The weight of a backend that does not say (100, so that there is
    /// room on both sides).
    pub(crate) const DEFAULT: Weight = match NonZeroU32::new(100) {
        Some(w) => Weight(w),
        None => Weight(NonZeroU32::MIN),
    };

    pub(crate) fn get(self) -> NonZeroU32 {
        self.0
    }
}

impl TryFrom<i64> for Weight {
    type Error = InvalidBackend;

    fn try_from(n: i64) -> Result<Weight, InvalidBackend> {
        u32::try_from(n)
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .and_then(NonZeroU32::new)
            .map(Weight)
            .ok_or(InvalidBackend::Weight(n))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn addr(text: &str) -> Result<SocketAddr, String> {
        BackendAddr::parse(text)
            .map(BackendAddr::get)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_1_to_64_plain_characters() {
        for good in ["a", "art-1_a.b", "A9", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(BackendName::parse(good).unwrap().into_string(), good);
        }
        for bad in [
            "",
            "a b",
            "é",
            "a/b",
            "a:b",
            "../x",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            assert_eq!(
                BackendName::parse(bad),
                Err(InvalidBackend::Name(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_bad_name_is_quoted_shortened_and_explained() {
        assert_eq!(
            BackendName::parse("art 3").unwrap_err().to_string(),
            "\"art 3\" is not a valid name (expected 1 to 64 letters, digits, '_', '.' or '-')"
        );
        let long = BackendName::parse(&"n".repeat(1000))
            .unwrap_err()
            .to_string();
        assert!(
            long.starts_with(&format!("\"{}…\"", "n".repeat(80))),
            "{long}"
        );
        assert!(long.len() < 200, "{long}");
    }

    #[test]
    fn addresses_are_ip_and_port() {
        assert_eq!(addr("10.0.0.1:80"), Ok("10.0.0.1:80".parse().unwrap()));
        assert_eq!(addr("[fd00::1]:80"), Ok("[fd00::1]:80".parse().unwrap()));
        assert_eq!(
            addr("10.0.0.1"),
            Err("\"10.0.0.1\" is not a socket address: the port is missing \
                 (expected \"IP:port\" or \"[IPv6]:port\")"
                .to_owned())
        );
        assert_eq!(
            addr("art.example.com:80"),
            Err(
                "\"art.example.com:80\" is not a socket address: host names are not accepted \
                 (expected \"IP:port\" or \"[IPv6]:port\")"
                    .to_owned()
            )
        );
        assert!(addr("::1:80").unwrap_err().contains("brackets"));
        assert!(addr("10.0.0.1:70000")
            .unwrap_err()
            .contains("not a socket address"));
    }

    #[test]
    fn addresses_nobody_can_connect_to_are_refused() {
        let cases = [
            ("10.0.0.1:0", "10.0.0.1:0: port 0 cannot be connected to"),
            ("0.0.0.0:80", "0.0.0.0:80: an unspecified address (0.0.0.0 or ::) cannot be connected to"),
            ("[::]:80", "[::]:80: an unspecified address (0.0.0.0 or ::) cannot be connected to"),
            ("224.0.0.1:80", "224.0.0.1:80: a multicast address cannot be connected to"),
            ("[ff02::1]:80", "[ff02::1]:80: a multicast address cannot be connected to"),
            ("255.255.255.255:80", "255.255.255.255:80: the broadcast address cannot be connected to"),
            // IPv4-mapped: judged as the IPv4 address, named as written.
            ("[::ffff:0.0.0.0]:80", "[::ffff:0.0.0.0]:80: an unspecified address (0.0.0.0 or ::) cannot be connected to"),
            ("[::ffff:224.0.0.1]:80", "[::ffff:224.0.0.1]:80: a multicast address cannot be connected to"),
            ("[::ffff:255.255.255.255]:80", "[::ffff:255.255.255.255]:80: the broadcast address cannot be connected to"),
        ];
        for (text, why) in cases {
            assert_eq!(
                addr(text),
                Err(format!("{why} (expected the backend's own IP and port)")),
                "{text}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_held_as_ipv4() {
        assert_eq!(
            addr("[::ffff:10.0.0.1]:80"),
            Ok("10.0.0.1:80".parse().unwrap())
        );
        // IPv4-compatible (::a.b.c.d, deprecated) is plain IPv6: ::1 stays ::1.
        assert_eq!(addr("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        assert_eq!(
            addr("[::10.0.0.1]:80"),
            Ok("[::10.0.0.1]:80".parse().unwrap())
        );
    }

    #[test]
    fn weights_are_1_to_10000() {
        assert_eq!(Weight::try_from(1).unwrap().get().get(), 1);
        assert_eq!(Weight::try_from(10_000).unwrap().get().get(), 10_000);
        assert_eq!(Weight::DEFAULT.get().get(), 100);
        for bad in [0, -1, 10_001, i64::from(u32::MAX) + 1, i64::MIN, i64::MAX] {
            assert_eq!(Weight::try_from(bad), Err(InvalidBackend::Weight(bad)));
        }
        assert_eq!(
            Weight::try_from(0).unwrap_err().to_string(),
            "0 is not a valid weight (expected an integer from 1 to 10000)"
        );
    }
}
