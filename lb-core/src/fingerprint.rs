//! Fingerprints of a service's backend set and of its effective table, so
//! that a tier of ringlb instances behind one address (VRRP, BGP ECMP;
//! docs/ha.md) can check it agrees: instances with equal fingerprints send
//! a client to the same backend. Computed on the control-plane thread each
//! time the registry builds a snapshot; read by `/metrics`
//! (`ringlb_backends_fingerprint`, `ringlb_table_fingerprint`).
//!
//! Like the client hash (`hash.rs`) these are a contract between machines
//! and versions: SipHash-1-3 under a fixed, documented key, over a
//! canonical byte message (backends sorted by name, integers little
//! endian, strings length-prefixed), never Rust's randomized hasher. The
//! tests pin the values.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::maglev::EffectiveTable;

/// Fingerprint hash key, first half: `"ringlb:f"`.
const FINGERPRINT_K0: u64 = 0x7269_6e67_6c62_3a66;
/// Fingerprint hash key, second half: `"ngrprnt1"`.
const FINGERPRINT_K1: u64 = 0x6e67_7270_726e_7431;

/// A service's two fingerprints as of the last published snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fingerprints {
    /// Over the configured set: the policy, the Maglev table size and every
    /// backend's name, address and weight. Differs when one instance has a
    /// backend (a join, a reload) or a weight the others lack.
    pub backends: u64,
    /// Over what new clients get now: for Maglev the effective table's owner
    /// of every slot; for the other policies the usable backends. Differs
    /// as well when a backend is drained, disabled or down on one instance
    /// only.
    pub table: u64,
}

/// One backend as the fingerprints see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part<'a> {
    pub name: &'a str,
    /// The address as configured (or as last resolved), e.g. `10.0.0.1:80`.
    pub address: std::net::SocketAddr,
    pub weight: u32,
    /// Takes new connections now (enabled and healthy).
    pub usable: bool,
}

/// The hex form used in the metrics' `fingerprint` label: 16 digits.
pub(crate) fn hex(value: u64) -> String {
    format!("{value:016x}")
}

fn hasher() -> SipHasher13 {
    SipHasher13::new_with_keys(FINGERPRINT_K0, FINGERPRINT_K1)
}

fn write_str(h: &mut SipHasher13, s: &str) {
    h.write(&(s.len() as u64).to_le_bytes());
    h.write(s.as_bytes());
}

/// The fingerprints of a service with `balance` (its config name, e.g.
/// `"maglev"`), `table_size` and `parts` (in any order); `effective` is the
/// Maglev effective table (slots index `parts` in the given order), None
/// for the other policies.
pub(crate) fn compute(
    balance: &str,
    table_size: u32,
    parts: &[Part<'_>],
    effective: Option<&EffectiveTable>,
) -> Fingerprints {
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[a].name.cmp(parts[b].name));
    let mut set = hasher();
    write_str(&mut set, balance);
    set.write(&table_size.to_le_bytes());
    set.write(&(parts.len() as u64).to_le_bytes());
    for &i in &order {
        let p = &parts[i];
        write_str(&mut set, p.name);
        write_str(&mut set, &p.address.to_string());
        set.write(&p.weight.to_le_bytes());
    }
    let backends = set.finish();

    // The table: the set's fingerprint, then what new clients get.
    let mut table = hasher();
    table.write(&backends.to_le_bytes());
    match effective {
        Some(eff) => {
            // Slot owners by rank in name order, so that the configuration
            // order (which may differ between instances) does not matter.
            let mut rank = vec![0u32; parts.len()];
            for (r, &i) in order.iter().enumerate() {
                rank[i] = r as u32;
            }
            let slots = eff.slots();
            table.write(&(slots.len() as u64).to_le_bytes());
            for &owner in slots {
                let r = rank.get(owner as usize).copied().unwrap_or(u32::MAX);
                table.write(&r.to_le_bytes());
            }
        }
        None => {
            for &i in &order {
                table.write(&[u8::from(parts[i].usable)]);
            }
        }
    }
    Fingerprints {
        backends,
        table: table.finish(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::maglev::{MaglevTable, Member};

    fn parts(usable: &[bool]) -> Vec<Part<'static>> {
        let names = ["b1", "b2", "b3"];
        names
            .iter()
            .zip(usable)
            .enumerate()
            .map(|(i, (name, &usable))| Part {
                name,
                address: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                weight: 100,
                usable,
            })
            .collect()
    }

    fn maglev(parts: &[Part<'_>]) -> Fingerprints {
        let members: Vec<Member<'_>> = parts
            .iter()
            .map(|p| Member {
                name: p.name,
                weight: p.weight,
            })
            .collect();
        let table = MaglevTable::build(&members, 251).unwrap();
        let usable: Vec<bool> = parts.iter().map(|p| p.usable).collect();
        compute("maglev", 251, parts, Some(&table.effective(&usable)))
    }

    #[test]
    fn fingerprints_are_pinned_values_stable_across_runs_and_machines() {
        // Golden values: another ringlb (version, machine, run) must print
        // the same for the same backends. Changing them is a breaking
        // change for mixed-version tiers.
        let f = maglev(&parts(&[true, true, true]));
        assert_eq!(hex(f.backends), "74c015531a573feb", "backends fingerprint");
        assert_eq!(hex(f.table), "94dae855bce2b787", "table fingerprint");
        assert_eq!(f, maglev(&parts(&[true, true, true])));
    }

    #[test]
    fn configuration_order_does_not_matter() {
        let p = parts(&[true, false, true]);
        let mut reversed = p.clone();
        reversed.reverse();
        assert_eq!(maglev(&p), maglev(&reversed));
        let rr = |p: &[Part<'_>]| compute("round-robin", 251, p, None);
        assert_eq!(rr(&p), rr(&reversed));
    }

    #[test]
    fn a_different_set_weight_or_address_changes_the_backends_fingerprint() {
        let base = maglev(&parts(&[true; 3]));
        let mut joined = parts(&[true; 3]);
        joined.push(Part {
            name: "b4",
            address: "10.0.0.4:80".parse().unwrap(),
            weight: 100,
            usable: true,
        });
        let mut weighted = parts(&[true; 3]);
        weighted[1].weight = 50;
        let mut moved = parts(&[true; 3]);
        moved[2].address = "10.0.0.9:80".parse().unwrap();
        for (what, other) in [
            ("a joined backend", maglev(&joined)),
            ("a weight", maglev(&weighted)),
            ("an address", maglev(&moved)),
        ] {
            assert_ne!(base.backends, other.backends, "{what}");
            assert_ne!(base.table, other.table, "{what}");
        }
        let other_size = compute("maglev", 257, &parts(&[true; 3]), None);
        assert_ne!(base.backends, other_size.backends, "the table size");
    }

    #[test]
    fn a_drained_or_down_backend_changes_only_the_table_fingerprint() {
        let base = maglev(&parts(&[true; 3]));
        let one_down = maglev(&parts(&[true, false, true]));
        assert_eq!(base.backends, one_down.backends);
        assert_ne!(base.table, one_down.table);
        let rr = |u: &[bool]| compute("round-robin", 251, &parts(u), None);
        assert_eq!(rr(&[true; 3]).backends, rr(&[true, false, true]).backends);
        assert_ne!(rr(&[true; 3]).table, rr(&[true, false, true]).table);
    }
}
