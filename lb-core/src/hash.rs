//! The stable hashes behind backend choice: the client-IP key that Maglev
//! indexes with, and the two hashes of a backend's name that place it in the
//! Maglev table. Pure functions, called on worker threads (per accepted
//! connection) and on the control thread (table builds).
//!
//! These functions are a contract, not an implementation detail: several
//! ringlb instances (and versions) must send a client to the same backend, so
//! the output for a given input never changes. The golden vectors in the tests
//! pin it; changing them is a breaking change. `ahash` and std's
//! `DefaultHasher` are unsuitable (random keys, unstable across versions/CPUs).
//!
//! # Specification
//!
//! All hashes are SipHash-1-3 (Aumasson & Bernstein; 1 compression round,
//! 3 finalisation rounds) of a byte message under a 128-bit key given as two
//! `u64` halves `(k0, k1)` (the 16-byte key is `k0` then `k1`, each little
//! endian), returning the 64-bit result as a `u64`.
//!
//! `client_key(ip, prefix_v4, prefix_v6)`:
//! 1. If `ip` is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), replace it
//!    with the IPv4 address `a.b.c.d` (a dual-stack listener reports IPv4
//!    clients that way). IPv4-compatible (`::a.b.c.d`) addresses are not
//!    converted.
//! 2. Clamp the prefix: `p4 = min(prefix_v4, 32)`, `p6 = min(prefix_v6, 128)`.
//! 3. Keep the first `p4` (IPv4) or `p6` (IPv6) bits of the address in network
//!    byte order and zero the rest.
//! 4. Message: IPv4 → 5 bytes `[4, a0, a1, a2, a3]`; IPv6 → 17 bytes
//!    `[6, a0, …, a15]` (the tag byte keeps the two families apart).
//! 5. Key `(CLIENT_K0, CLIENT_K1)`.
//!
//! `name_hashes(name)` returns `(h1, h2)`, SipHash-1-3 of the name's UTF-8
//! bytes (no tag, no terminator) under `(OFFSET_K0, OFFSET_K1)` for `h1` and
//! `(SKIP_K0, SKIP_K1)` for `h2`. Maglev uses `h1` for a backend's offset and
//! `h2` for its skip.
//!
//! The keys are ASCII strings read as big-endian `u64`s, chosen to be
//! memorable and documented, not secret: the hash has to agree between
//! machines, so it cannot be keyed per process. (A client could pick source
//! addresses that collide into one backend; bounded load is the answer to
//! that, not a secret key.)

use std::net::IpAddr;

use siphasher::sip::SipHasher13;

/// Client-key hash key, first half: `"ringlb:c"`.
pub(crate) const CLIENT_K0: u64 = 0x7269_6e67_6c62_3a63;
/// Client-key hash key, second half: `"lientip1"`.
pub(crate) const CLIENT_K1: u64 = 0x6c69_656e_7469_7031;
/// Maglev offset hash key, first half: `"ringlb:m"`.
pub(crate) const OFFSET_K0: u64 = 0x7269_6e67_6c62_3a6d;
/// Maglev offset hash key, second half: `"agoffse1"`.
pub(crate) const OFFSET_K1: u64 = 0x6167_6f66_6673_6531;
/// Maglev skip hash key, first half: `"ringlb:m"`.
pub(crate) const SKIP_K0: u64 = 0x7269_6e67_6c62_3a6d;
/// Maglev skip hash key, second half: `"agskip01"`.
pub(crate) const SKIP_K1: u64 = 0x6167_736b_6970_3031;

/// Tag byte in front of a masked IPv4 address.
const TAG_V4: u8 = 4;
/// Tag byte in front of a masked IPv6 address.
const TAG_V6: u8 = 6;

/// The stable hash of a client address, masked to a prefix (see the module
/// documentation for the exact definition). Clients in the same /`prefix_v4`
/// (IPv4) or /`prefix_v6` (IPv6) network get the same key.
pub fn client_key(ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> u64 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    let hasher = SipHasher13::new_with_keys(CLIENT_K0, CLIENT_K1);
    match ip {
        IpAddr::V4(v4) => {
            let masked = u32::from(v4) & prefix_mask_v4(prefix_v4);
            let mut msg = [0u8; 5];
            msg[0] = TAG_V4;
            msg[1..].copy_from_slice(&masked.to_be_bytes());
            hasher.hash(&msg)
        }
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & prefix_mask_v6(prefix_v6);
            let mut msg = [0u8; 17];
            msg[0] = TAG_V6;
            msg[1..].copy_from_slice(&masked.to_be_bytes());
            hasher.hash(&msg)
        }
    }
}

/// Two independent stable hashes of a backend's configured name: Maglev's
/// offset (`.0`) and skip (`.1`) seeds. See the module documentation.
pub(crate) fn name_hashes(name: &str) -> (u64, u64) {
    let bytes = name.as_bytes();
    (
        SipHasher13::new_with_keys(OFFSET_K0, OFFSET_K1).hash(bytes),
        SipHasher13::new_with_keys(SKIP_K0, SKIP_K1).hash(bytes),
    )
}

/// Network-order mask keeping the first `prefix` bits (clamped to 32).
fn prefix_mask_v4(prefix: u8) -> u32 {
    // `checked_shl` is None for a shift of 32, i.e. prefix 0: keep nothing.
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// Network-order mask keeping the first `prefix` bits (clamped to 128).
fn prefix_mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    /// A from-the-paper SipHash-1-3, independent of the `siphasher` crate,
    /// proving that the module documentation is the whole definition.
    fn reference_siphash13(k0: u64, k1: u64, msg: &[u8]) -> u64 {
        fn round(v: &mut [u64; 4]) {
            v[0] = v[0].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(13);
            v[1] ^= v[0];
            v[0] = v[0].rotate_left(32);
            v[2] = v[2].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(16);
            v[3] ^= v[2];
            v[0] = v[0].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(21);
            v[3] ^= v[0];
            v[2] = v[2].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(17);
            v[1] ^= v[2];
            v[2] = v[2].rotate_left(32);
        }
        let mut v = [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ];
        let mut blocks = msg.chunks_exact(8);
        for block in blocks.by_ref() {
            let m = u64::from_le_bytes(block.try_into().expect("8-byte block"));
            v[3] ^= m;
            round(&mut v);
            v[0] ^= m;
        }
        let mut last = [0u8; 8];
        let tail = blocks.remainder();
        last[..tail.len()].copy_from_slice(tail);
        last[7] = msg.len() as u8;
        let m = u64::from_le_bytes(last);
        v[3] ^= m;
        round(&mut v);
        v[0] ^= m;
        v[2] ^= 0xff;
        for _ in 0..3 {
            round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    /// The pinned outputs. These values are the function: they must never
    /// change, or ringlb instances of different versions disagree on where a
    /// client goes.
    const GOLDEN: &[(&str, u8, u8, u64)] = &[
        ("192.0.2.1", 32, 128, 0x1724_57ff_774c_eacd),
        ("192.0.2.1", 24, 64, 0x650a_c221_0ccf_fffe),
        ("192.0.2.254", 24, 64, 0x650a_c221_0ccf_fffe),
        ("10.0.0.1", 0, 0, 0x6be5_e9a4_bc2b_d259),
        ("::ffff:192.0.2.1", 32, 128, 0x1724_57ff_774c_eacd),
        ("2001:db8::1", 128, 128, 0xb9f0_097a_a8ac_6dfc),
        ("2001:db8::1", 32, 64, 0xd85b_8b99_333f_d8f6),
        ("2001:db8:0:0:ffff::9", 32, 64, 0xd85b_8b99_333f_d8f6),
        ("::1", 32, 128, 0x6454_bb22_e9fc_4dae),
    ];

    #[test]
    fn golden_vectors_pin_client_key() {
        for &(addr, p4, p6, want) in GOLDEN {
            let got = client_key(ip(addr), p4, p6);
            assert_eq!(got, want, "client_key({addr}, {p4}, {p6}) = {got:#018x}");
        }
    }

    #[test]
    fn golden_vectors_pin_name_hashes() {
        let cases: &[(&str, u64, u64)] = &[
            ("art1", 0xfb0d_2583_388f_002e, 0x482b_702b_51ac_b502),
            ("", 0xa726_b01c_78c1_ffdc, 0x2130_a179_cd87_888b),
            (
                "backend-10.0.0.11:8081",
                0x512f_235e_e390_c2f0,
                0xa02f_c4eb_12a1_575f,
            ),
        ];
        for &(name, w1, w2) in cases {
            let got = name_hashes(name);
            assert_eq!(
                got,
                (w1, w2),
                "name_hashes({name:?}) = ({:#018x}, {:#018x})",
                got.0,
                got.1
            );
        }
    }

    #[test]
    fn matches_independent_reference_siphash13() {
        let v4 = [TAG_V4, 192, 0, 2, 0];
        assert_eq!(
            client_key(ip("192.0.2.77"), 24, 0),
            reference_siphash13(CLIENT_K0, CLIENT_K1, &v4)
        );
        let mut v6 = [0u8; 17];
        v6[0] = TAG_V6;
        v6[1..].copy_from_slice(&ip6("2001:db8:1:2::").octets());
        assert_eq!(
            client_key(ip("2001:db8:1:2:3:4:5:6"), 0, 64),
            reference_siphash13(CLIENT_K0, CLIENT_K1, &v6)
        );
        for name in [
            "",
            "a",
            "art1",
            "exactly8",
            "a-name-longer-than-sixteen-bytes",
        ] {
            assert_eq!(
                name_hashes(name),
                (
                    reference_siphash13(OFFSET_K0, OFFSET_K1, name.as_bytes()),
                    reference_siphash13(SKIP_K0, SKIP_K1, name.as_bytes())
                )
            );
        }
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().expect("test address parses")
    }

    #[test]
    fn v4_mapped_v6_hashes_like_v4() {
        for p in [0, 8, 24, 32, 40] {
            assert_eq!(
                client_key(ip("::ffff:198.51.100.7"), p, 128),
                client_key(ip("198.51.100.7"), p, 128)
            );
            // The v6 prefix must not apply to a mapped v4 address.
            assert_eq!(
                client_key(ip("::ffff:198.51.100.7"), p, 0),
                client_key(ip("198.51.100.7"), p, 128)
            );
        }
        // IPv4-compatible (deprecated) addresses are genuine v6.
        assert_ne!(
            client_key(ip("::198.51.100.7"), 32, 128),
            client_key(ip("198.51.100.7"), 32, 128)
        );
    }

    #[test]
    fn prefix_groups_clients_and_separates_networks() {
        assert_eq!(
            client_key(ip("192.0.2.1"), 24, 64),
            client_key(ip("192.0.2.200"), 24, 64)
        );
        assert_ne!(
            client_key(ip("192.0.2.1"), 24, 64),
            client_key(ip("192.0.3.1"), 24, 64)
        );
        assert_ne!(
            client_key(ip("192.0.2.1"), 32, 64),
            client_key(ip("192.0.2.2"), 32, 64)
        );
        assert_eq!(
            client_key(ip("2001:db8:0:1::1"), 32, 64),
            client_key(ip("2001:db8:0:1:ffff::2"), 32, 64)
        );
        assert_ne!(
            client_key(ip("2001:db8:0:1::1"), 32, 64),
            client_key(ip("2001:db8:0:2::1"), 32, 64)
        );
    }

    #[test]
    fn oversized_prefixes_clamp_to_full_address() {
        assert_eq!(
            client_key(ip("192.0.2.9"), 33, 0),
            client_key(ip("192.0.2.9"), 32, 0)
        );
        assert_eq!(
            client_key(ip("192.0.2.9"), 255, 0),
            client_key(ip("192.0.2.9"), 32, 0)
        );
        assert_eq!(
            client_key(ip("2001:db8::9"), 0, 200),
            client_key(ip("2001:db8::9"), 0, 128)
        );
    }

    #[test]
    fn families_do_not_collide_on_equal_bytes() {
        // Prefix 0 zeroes both: only the tag and length tell them apart.
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        assert_ne!(client_key(v4, 0, 0), client_key(v6, 0, 0));
    }

    #[test]
    fn masks_are_exact() {
        assert_eq!(prefix_mask_v4(0), 0);
        assert_eq!(prefix_mask_v4(1), 0x8000_0000);
        assert_eq!(prefix_mask_v4(24), 0xffff_ff00);
        assert_eq!(prefix_mask_v4(32), u32::MAX);
        assert_eq!(prefix_mask_v6(0), 0);
        assert_eq!(prefix_mask_v6(64), u128::MAX << 64);
        assert_eq!(prefix_mask_v6(128), u128::MAX);
        assert_eq!(prefix_mask_v6(129), u128::MAX);
    }
}
