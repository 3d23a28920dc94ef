//! What a peer is counted as: its source. The per-address cap and the handshake slots count
//! peers by source rather than by exact address.
//!
//! An IPv4 address is a source of its own, and so is an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, what a dual-stack listener reports for an IPv4 client): it is the IPv4
//! address it maps, so one client cannot double its share by coming in over both families. An
//! IPv6 address is grouped with every address of its prefix
//! ([`ServerBuilder::ipv6_source_prefix`](crate::ServerBuilder::ipv6_source_prefix), a /64 by
//! default): a subscriber or a host is usually given a whole /64 (RFC 6177, and SLAAC's
//! interface identifiers fill its low 64 bits), so the addresses within one are one peer that can
//! pick a new address per connection, not many peers.

use std::net::{IpAddr, Ipv6Addr};

/// The source `address` counts as: its IPv4 address, or its IPv6 address with every bit past
/// the first `ipv6_prefix` cleared (a prefix above 128 is taken as 128).
pub(crate) fn source_of(address: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let cleared = 128 - u32::from(ipv6_prefix.min(128));
            // A shift by the full width (prefix 0) is no shift at all in Rust: nothing is kept.
            let mask = u128::MAX.checked_shl(cleared).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_prefix_length_keeps_exactly_its_bits() {
        let all_ones = IpAddr::V6(Ipv6Addr::from(u128::MAX));
        for prefix in 0..=128u8 {
            let IpAddr::V6(source) = source_of(all_ones, prefix) else {
                panic!("an IPv6 address stays IPv6");
            };
            let bits = u128::from(source);
            assert_eq!(bits.count_ones(), u32::from(prefix), "/{prefix}");
            assert_eq!(
                bits.leading_ones(),
                u32::from(prefix),
                "/{prefix}: the high bits"
            );
        }
        assert_eq!(source_of(all_ones, 0), v6("::"));
        assert_eq!(source_of(all_ones, 200), all_ones, "above 128 is 128");
    }

    #[test]
    fn addresses_of_one_prefix_are_one_source_and_the_next_prefix_another() {
        let a = v6("2001:db8:0:1::1");
        let b = v6("2001:db8:0:1:ffff:ffff:ffff:ffff");
        let c = v6("2001:db8:0:2::1");
        assert_eq!(source_of(a, 64), source_of(b, 64));
        assert_eq!(source_of(a, 64), v6("2001:db8:0:1::"));
        assert_ne!(source_of(a, 64), source_of(c, 64));
        // Every address its own.
        assert_ne!(source_of(a, 128), source_of(b, 128));
        assert_eq!(source_of(a, 128), a);
        // A /48 holds both /64s.
        assert_eq!(source_of(a, 48), source_of(c, 48));
        // The boundary bit: /63 joins 2001:db8:0:2:: and 2001:db8:0:3::, not :1 and :2.
        assert_eq!(source_of(c, 63), source_of(v6("2001:db8:0:3:1::"), 63));
        assert_ne!(source_of(a, 63), source_of(c, 63));
    }

    #[test]
    fn ipv4_and_ipv4_mapped_addresses_are_their_ipv4_address_whatever_the_prefix() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        for prefix in [0, 1, 32, 64, 96, 127, 128] {
            assert_eq!(source_of(v4, prefix), v4, "/{prefix}");
            assert_eq!(source_of(mapped, prefix), v4, "/{prefix}");
        }
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_ne!(
            source_of(other, 0),
            source_of(v4, 0),
            "IPv4 is never grouped"
        );
        // The deprecated IPv4-compatible form is an IPv6 address like any other.
        let compatible = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_compatible());
        assert_eq!(source_of(compatible, 64), v6("::"));
        assert_eq!(source_of(compatible, 128), compatible);
    }
}
