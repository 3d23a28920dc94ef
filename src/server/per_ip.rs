//! The per-address cap: how many accepted connections each peer IP address may hold at once.
//!
//! A server with [`ServerBuilder::max_connections_per_ip`](crate::ServerBuilder::max_connections_per_ip)
//! keeps one count per peer address. The accept loop takes a [`PeerSlot`] for each accepted
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

use crate::stats::{Count, Counters};

/// Counts the live accepted connections of each peer address against a cap.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One accepted connection's place in its address's count; given back on drop.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    limit: Arc<PerIpLimit>,
    address: IpAddr,
}

/// The address a peer is counted under: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack listener reports for an IPv4 client) is the IPv4 address it maps, so one client
/// cannot double its share by coming in over both families.
fn counted_as(address: IpAddr) -> IpAddr {
    address.to_canonical()
}

impl PerIpLimit {
    /// A table allowing `max` live connections per address.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PerIpLimit {
            max,
            counts: Mutex::new(HashMap::new()),
        })
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

    /// Counts one more connection from `address`, unless that address is at the cap.
    pub(crate) fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<PeerSlot> {
        let address = counted_as(address);
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

    /// Live connections counted for `address` (or the IPv4 address it maps).
    pub(crate) fn count(&self, address: IpAddr) -> usize {
        self.counts()
            .get(&counted_as(address))
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
        let limit = PerIpLimit::new(2);
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
        let limit = PerIpLimit::new(1);
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
    fn refusals_leave_no_entry() {
        let limit = PerIpLimit::new(1);
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
        let limit = PerIpLimit::new(MAX);
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
