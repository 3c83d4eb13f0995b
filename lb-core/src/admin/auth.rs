//! Who may use the admin API: the peer-address allow-list (checked before a
//! byte of the request is read), the bearer token of state-changing
//! actions, and the cross-origin check that keeps a web page in an
//! operator's browser from posting actions. Pure functions; called by the
//! admin server on the control-plane thread.

use std::net::IpAddr;

use crate::config::IpNet;

/// True if `peer` is inside one of the allowed networks. An IPv4 peer seen
/// through an IPv6 socket (`::ffff:127.0.0.1`) is matched as IPv4, so
/// `admin = "[::]:9090"` with `admin_allow = ["127.0.0.0/8"]` does what it says.
pub(crate) fn peer_allowed(allow: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    allow.iter().any(|net| net.contains(&peer))
}

/// The credentials of a request, as far as the token check goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credentials<'a> {
    /// No `Authorization` header.
    Missing,
    /// `Authorization: Bearer <token>` (scheme in any case).
    Bearer(&'a str),
    /// Some other scheme or an unreadable header.
    Malformed,
}

impl<'a> Credentials<'a> {
    /// Reads the value of the `Authorization` header (None: absent).
    pub(crate) fn from_header(value: Option<&'a [u8]>) -> Credentials<'a> {
        let Some(value) = value else {
            return Credentials::Missing;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return Credentials::Malformed;
        };
        match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Credentials::Bearer(token.trim())
            }
            _ => Credentials::Malformed,
        }
    }

    /// True if these credentials carry exactly `expected`.
    pub(crate) fn match_token(self, expected: &str) -> bool {
        match self {
            Credentials::Bearer(given) => constant_time_eq(given.as_bytes(), expected.as_bytes()),
            Credentials::Missing | Credentials::Malformed => false,
        }
    }
}

/// Compares two secrets in time that depends only on `expected`'s length,
/// never on where the first differing byte is (a timing side channel would
/// let a peer guess a token byte by byte). The join key uses it too.
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    // Fold the length difference in, then look at every byte of `expected`
    // whatever `given` holds; `black_box` keeps the optimiser from turning
    // the loop into an early-exit comparison.
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= std::hint::black_box(g ^ e);
    }
    std::hint::black_box(diff) == 0
}

/// True if a state-changing request comes from a web page of another
/// origin: its `Origin` header names another host than its `Host` header.
/// Browsers send `Origin` on every cross-origin POST/PUT (and fetch() on
/// same-origin ones); curl and scripts send none, and pass. This stops a
/// page an operator visits from draining backends through their browser
/// (a "simple" cross-origin POST needs no CORS preflight). It does not stop
/// DNS rebinding: `admin_token` does.
pub(crate) fn cross_origin(origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return false;
    };
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    match (authority, host) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host),
        // `Origin: null` (sandboxed frames, file:// pages) or no Host.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("test CIDR")).collect()
    }

    #[test]
    fn allow_list_matches_networks_and_mapped_ipv4() {
        let allow = nets(&["127.0.0.0/8", "::1/128", "10.1.0.0/16"]);
        assert!(peer_allowed(&allow, "127.0.0.1".parse().expect("ip")));
        assert!(peer_allowed(&allow, "127.9.9.9".parse().expect("ip")));
        assert!(peer_allowed(&allow, "::1".parse().expect("ip")));
        assert!(peer_allowed(&allow, "10.1.200.3".parse().expect("ip")));
        assert!(peer_allowed(
            &allow,
            "::ffff:127.0.0.1".parse().expect("ip")
        ));
        assert!(!peer_allowed(&allow, "10.2.0.1".parse().expect("ip")));
        assert!(!peer_allowed(&allow, "::2".parse().expect("ip")));
        assert!(!peer_allowed(&[], "127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(Credentials::from_header(None), Credentials::Missing);
        assert_eq!(
            Credentials::from_header(Some(b"Bearer abc")),
            Credentials::Bearer("abc")
        );
        assert_eq!(
            Credentials::from_header(Some(b"bearer   abc ")),
            Credentials::Bearer("abc")
        );
        assert_eq!(
            Credentials::from_header(Some(b"Basic YWJj")),
            Credentials::Malformed
        );
        assert_eq!(
            Credentials::from_header(Some(b"Bearer")),
            Credentials::Malformed
        );
        assert_eq!(
            Credentials::from_header(Some(b"\xff\xfe")),
            Credentials::Malformed
        );
    }

    #[test]
    fn token_match_is_exact() {
        let c = Credentials::from_header(Some(b"Bearer s3cret"));
        assert!(c.match_token("s3cret"));
        assert!(!c.match_token("s3cre"));
        assert!(!c.match_token("s3cret!"));
        assert!(!c.match_token("S3cret"));
        assert!(!Credentials::Missing.match_token("s3cret"));
        assert!(!Credentials::Malformed.match_token(""));
    }

    #[test]
    fn constant_time_eq_compares_lengths_and_bytes() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"a", b""));
        // A prefix padded with the complement must not pass either.
        assert!(!constant_time_eq(b"a", b"a\0"));
    }

    #[test]
    fn cross_origin_detection() {
        let host = Some(&b"127.0.0.1:9090"[..]);
        assert!(!cross_origin(None, host));
        assert!(!cross_origin(Some(b"http://127.0.0.1:9090"), host));
        assert!(cross_origin(Some(b"http://evil.example"), host));
        assert!(cross_origin(Some(b"http://127.0.0.1:9091"), host));
        assert!(cross_origin(Some(b"null"), host));
        assert!(cross_origin(Some(b"http://127.0.0.1:9090"), None));
        assert!(!cross_origin(
            Some(b"https://LB.example:9090"),
            Some(b"lb.example:9090")
        ));
    }
}
