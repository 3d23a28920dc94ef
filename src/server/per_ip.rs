//! The per-address cap: how many accepted connections each peer IP address may hold at once.
//!
//! A server with [`ServerBuilder::max_connections_per_ip`](crate::ServerBuilder::max_connections_per_ip)
//! keeps one count per peer [source](crate::server::source): per IPv4 address, and per IPv6
//! prefix ([`ServerBuilder::ipv6_source_prefix`](crate::ServerBuilder::ipv6_source_prefix)). The accept loop takes a [`PeerSlot`] for each accepted
//! connection; the slot travels with the connection's limiter [`Permit`](crate::server::limit::Permit) and
//! is given back when that is dropped: just after the connection's last release event, or on any
//! path where the connection never got going (a failed registration, a task dropped at runtime
//! shutdown). A count can therefore not leak while the permit cannot.
//!
//! One lock guards the table: it is taken once per accept (by the single accept task) and once
//! per release, for a hash-map update, which is far below the cost of the accept and close
//! system calls around it. Addresses whose count drops to zero are removed, so the table holds
//! at most one entry per live connection, whatever the number of addresses seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::server::source::source_of;
use crate::stats::{Count, Counters};

/// Counts the live accepted connections of each peer source against a cap.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    max: usize,
    /// The IPv6 prefix length whose addresses are one source.
    ipv6_prefix: u8,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One accepted connection's place in its source's count; given back on drop.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    limit: Arc<PerIpLimit>,
    /// The source counted.
    address: IpAddr,
}

impl PerIpLimit {
    /// A table allowing `max` live connections per source, with IPv6 addresses grouped by their
    /// first `ipv6_prefix` bits.
    pub(crate) fn new(max: usize, ipv6_prefix: u8) -> Arc<Self> {
        Arc::new(PerIpLimit {
            max,
            ipv6_prefix,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The source a peer at `address` is counted under.
    fn counted_as(&self, address: IpAddr) -> IpAddr {
        source_of(address, self.ipv6_prefix)
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The sections under the lock do not panic; recover from poison all the same.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The per-address half of the admission rule
    /// ([`Manager::admit`](crate::server::manager::Manager::admit)): counts one more connection
    /// from `address`, or, at the cap, counts a refusal in `counters` and gives `None`.
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        counters: &Counters,
    ) -> Option<PeerSlot> {
        let slot = self.try_acquire(address);
        if slot.is_none() {
            counters.count(Count::RefusedPerIp);
        }
        slot
    }

    /// Counts one more connection from `address`, unless its source is at the cap.
    pub(crate) fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<PeerSlot> {
        let address = self.counted_as(address);
        let mut counts = self.counts();
        let count = counts.entry(address).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                // Only reachable with a cap of zero, which the builder refuses; never leave an
                // empty entry behind.
                counts.remove(&address);
            }
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            limit: self.clone(),
            address,
        })
    }

    /// Live connections counted for `address`'s source.
    pub(crate) fn count(&self, address: IpAddr) -> usize {
        self.counts()
            .get(&self.counted_as(address))
            .copied()
            .unwrap_or(0)
    }

    /// Addresses with at least one live connection.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts().len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.limit.counts();
        // The entry exists: it is only removed when its count, which this slot is part of,
        // drops to zero.
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn each_address_is_capped_on_its_own_and_slots_free_on_drop() {
        let limit = PerIpLimit::new(2, 64);
        let a1 = limit.try_acquire(A).expect("first from A");
        let a2 = limit.try_acquire(A).expect("second from A");
        assert!(
            limit.try_acquire(A).is_none(),
            "third from A is over the cap"
        );
        let b1 = limit.try_acquire(B).expect("B has its own count");
        assert_eq!(limit.count(A), 2);
        assert_eq!(limit.count(B), 1);
        drop(a1);
        assert_eq!(limit.count(A), 1);
        let a3 = limit.try_acquire(A).expect("a slot freed");
        drop((a2, a3, b1));
        assert_eq!(limit.count(A), 0);
        assert_eq!(limit.addresses(), 0, "no entry is left for idle addresses");
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_the_ipv4_address() {
        // Every IPv6 address on its own: the grouping of prefixes is the next test's.
        let limit = PerIpLimit::new(1, 128);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let slot = limit.try_acquire(mapped).expect("first");
        assert_eq!(limit.count(A), 1);
        assert!(limit.try_acquire(A).is_none(), "the same client over IPv4");
        // A real IPv6 address, and the deprecated IPv4-compatible form, are addresses of their
        // own.
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let compatible = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_compatible());
        let _v6 = limit.try_acquire(v6).expect("IPv6 loopback");
        let _compatible = limit.try_acquire(compatible).expect("IPv4-compatible");
        drop(slot);
        assert!(limit.try_acquire(A).is_some());
    }

    #[test]
    fn the_addresses_of_one_ipv6_prefix_share_one_count() {
        let address = |text: &str| text.parse::<IpAddr>().unwrap();
        let limit = PerIpLimit::new(2, 64);
        let _a = limit
            .try_acquire(address("2001:db8::1"))
            .expect("first of the /64");
        let _b = limit
            .try_acquire(address("2001:db8::2"))
            .expect("second of the /64");
        assert!(
            limit.try_acquire(address("2001:db8::ffff:3")).is_none(),
            "a third address of the /64 is over the cap"
        );
        assert_eq!(limit.count(address("2001:db8::99")), 2);
        let _c = limit
            .try_acquire(address("2001:db8:0:1::1"))
            .expect("the next /64 has its own count");
        assert_eq!(limit.addresses(), 2);
        // With a /128 prefix every address counts on its own.
        let exact = PerIpLimit::new(1, 128);
        let _d = exact.try_acquire(address("2001:db8::1")).unwrap();
        let _e = exact.try_acquire(address("2001:db8::2")).unwrap();
        assert!(exact.try_acquire(address("2001:db8::2")).is_none());
        // A /0 prefix makes every IPv6 client one source; IPv4 clients stay their own.
        let one = PerIpLimit::new(1, 0);
        let _f = one.try_acquire(address("2001:db8::1")).unwrap();
        assert!(one.try_acquire(address("2001:db9::1")).is_none());
        let _g = one.try_acquire(A).expect("IPv4 is never grouped");
        let _h = one.try_acquire(B).expect("IPv4 is never grouped");
    }

    #[test]
    fn refusals_leave_no_entry() {
        let limit = PerIpLimit::new(1, 64);
        let slot = limit.try_acquire(A).unwrap();
        for _ in 0..10 {
            assert!(limit.try_acquire(A).is_none());
        }
        assert_eq!(limit.count(A), 1);
        drop(slot);
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn counts_are_exact_under_concurrency() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 2_000;
        const MAX: usize = 3;
        let limit = PerIpLimit::new(MAX, 64);
        let addresses = [A, B];
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let limit = &limit;
                scope.spawn(move || {
                    let mut held = Vec::new();
                    for round in 0..ROUNDS {
                        let address = addresses[(thread + round) % addresses.len()];
                        if let Some(slot) = limit.try_acquire(address) {
                            assert!(limit.count(address) <= MAX, "over the cap");
                            held.push(slot);
                        }
                        if round % 3 == 0 {
                            held.clear();
                        }
                    }
                });
            }
        });
        assert_eq!(limit.count(A), 0);
        assert_eq!(limit.count(B), 0);
        assert_eq!(limit.addresses(), 0);
    }
}
