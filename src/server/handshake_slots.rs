//! The handshake slots: how many TLS handshakes of accepted connections run at once
//! ([`ServerBuilder::max_concurrent_handshakes`](crate::ServerBuilder::max_concurrent_handshakes)),
//! how many of them one [source](crate::server::source) may hold
//! ([`ServerBuilder::max_handshakes_per_source`](crate::ServerBuilder::max_handshakes_per_source)),
//! and which one gives its slot up when the cap is full.
//!
//! A connection takes its slot when its handshake begins and holds it until the handshake is
//! over. One that has not sent a byte yet is *silent*: it may be a client about to speak, or one
//! that connected to hold a slot and will say nothing until the handshake timeout. When the cap
//! is full and a new connection needs a slot, the oldest silent one is evicted (its connection
//! ends before establishment, [`ClosureReason::HandshakeEvicted`](crate::ClosureReason::HandshakeEvicted))
//! and the new one takes its place; only if no silent one is left is the new one refused
//! ([`ClosureReason::HandshakeLimit`](crate::ClosureReason::HandshakeLimit)). A connection
//! mid-handshake is never evicted. So a flood of connections that say nothing cannot keep honest
//! handshakes out, whatever the number of its addresses, and a flood that starts handshakes and
//! stalls them holds at most one source's share per source.
//!
//! Costs: one lock when a slot is taken and one when it is given back, for a hash-map update
//! and a queue push, next to a TLS handshake's thousands of microseconds. A silent connection's
//! first byte is recorded without the lock (an atomic exchange on its entry); the entries of
//! silent slots that spoke or ended since are dropped from the queue when met, and the queue is
//! compacted when it holds more than twice the slots held, so it stays within a small multiple
//! of the cap. Plain listeners never touch the table.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::server::source::source_of;

/// A silent slot's state, in [`Silent::state`].
const SILENT: u8 = 0;
/// The connection sent its first byte: the slot is no longer evictable.
const SPOKE: u8 = 1;
/// The table took the slot back for a newer connection; the connection ends.
const EVICTED: u8 = 2;
/// The connection gave the slot back.
const RELEASED: u8 = 3;

/// Queue entries kept beyond twice the slots held before the queue is compacted: a few, so that
/// a nearly idle table does not compact on every take.
const COMPACT_SLACK: usize = 16;

/// The server's handshake slots. See the module docs.
#[derive(Debug)]
pub(crate) struct HandshakeSlots {
    max: usize,
    per_source: usize,
    ipv6_prefix: u8,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Slots held, over all sources.
    held: usize,
    /// Slots held per source; sources holding none have no entry.
    sources: HashMap<IpAddr, usize>,
    /// The slots taken silent, oldest first. Entries that are no longer silent are skipped and
    /// dropped when met.
    silent: VecDeque<Arc<Silent>>,
}

/// What a silent slot's connection and the table's queue share.
#[derive(Debug)]
struct Silent {
    state: AtomicU8,
    source: IpAddr,
    /// Woken once, when the slot is evicted.
    evicted: Notify,
}

/// One connection's handshake slot; given back on drop (unless it was evicted, which gave it
/// back already).
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    source: IpAddr,
    /// The entry in the table's queue, while the connection may be silent.
    silent: Option<Arc<Silent>>,
}

impl HandshakeSlots {
    /// A table of `max` slots, of which one source may hold `per_source`, with IPv6 addresses
    /// grouped by their first `ipv6_prefix` bits.
    pub(crate) fn new(max: usize, per_source: usize, ipv6_prefix: u8) -> Arc<Self> {
        Arc::new(HandshakeSlots {
            max,
            per_source,
            ipv6_prefix,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The sections under the lock do not panic; recover from poison all the same.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a connection from `address`, which has already sent a byte (`spoke`) or not.
    /// `None` if its source holds its share, or if the cap is full and no silent slot is left to
    /// evict.
    pub(crate) fn take(self: &Arc<Self>, address: IpAddr, spoke: bool) -> Option<HandshakeSlot> {
        let source = source_of(address, self.ipv6_prefix);
        let mut table = self.table();
        if table.sources.get(&source).copied().unwrap_or(0) >= self.per_source {
            return None;
        }
        if table.held >= self.max && !table.evict_oldest_silent() {
            return None;
        }
        table.held += 1;
        *table.sources.entry(source).or_insert(0) += 1;
        let silent = (!spoke).then(|| {
            let silent = Arc::new(Silent {
                state: AtomicU8::new(SILENT),
                source,
                evicted: Notify::new(),
            });
            table.push_silent(silent.clone());
            silent
        });
        Some(HandshakeSlot {
            slots: self.clone(),
            source,
            silent,
        })
    }

    /// Slots held by `address`'s source.
    #[cfg(test)]
    fn held_by(&self, address: IpAddr) -> usize {
        let source = source_of(address, self.ipv6_prefix);
        self.table().sources.get(&source).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.table().held
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.table().silent.len()
    }
}

impl Table {
    /// Evicts the oldest slot still silent, giving it back; `false` if none is.
    fn evict_oldest_silent(&mut self) -> bool {
        while let Some(oldest) = self.silent.pop_front() {
            let taken =
                oldest
                    .state
                    .compare_exchange(SILENT, EVICTED, Ordering::AcqRel, Ordering::Acquire);
            if taken.is_ok() {
                self.give_back(oldest.source);
                // A permit is kept if the connection is not waiting yet.
                oldest.evicted.notify_one();
                return true;
            }
        }
        false
    }

    fn push_silent(&mut self, silent: Arc<Silent>) {
        while self
            .silent
            .front()
            .is_some_and(|oldest| oldest.state.load(Ordering::Acquire) != SILENT)
        {
            self.silent.pop_front();
        }
        self.silent.push_back(silent);
        if self.silent.len() > 2 * self.held + COMPACT_SLACK {
            self.silent
                .retain(|entry| entry.state.load(Ordering::Acquire) == SILENT);
        }
    }

    fn give_back(&mut self, source: IpAddr) {
        self.held -= 1;
        // The entry exists: it is only removed when its count, which this slot is part of,
        // drops to zero.
        if let Some(count) = self.sources.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.sources.remove(&source);
            }
        }
    }
}

impl HandshakeSlot {
    /// The connection's first byte arrived: from now on the slot is not evicted. `false` if it
    /// was evicted already; the connection then ends.
    pub(crate) fn spoke(&mut self) -> bool {
        let Some(silent) = &self.silent else {
            return true;
        };
        let spoke = silent
            .state
            .compare_exchange(SILENT, SPOKE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if spoke {
            // Given back through the table on drop, as a slot taken speaking is.
            self.silent = None;
        }
        spoke
    }

    /// Completes when the slot is evicted; never for a slot that spoke.
    ///
    /// # Cancel safety
    /// Cancel safe: the eviction is the slot's state, which every call looks at first.
    pub(crate) async fn evicted(&self) {
        let Some(silent) = &self.silent else {
            return std::future::pending().await;
        };
        // An eviction between the look and the wait leaves its wake-up as a permit.
        while silent.state.load(Ordering::Acquire) != EVICTED {
            silent.evicted.notified().await;
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(silent) = &self.silent {
            if silent.state.swap(RELEASED, Ordering::AcqRel) == EVICTED {
                // The eviction gave the slot back.
                return;
            }
        }
        self.slots.table().give_back(self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Whether `slot` has been evicted, without waiting.
    fn is_evicted(slot: &HandshakeSlot) -> bool {
        use futures::FutureExt;
        slot.evicted().now_or_never().is_some()
    }

    #[test]
    fn a_source_holds_at_most_its_share() {
        let slots = HandshakeSlots::new(8, 2, 64);
        let a1 = slots.take(v4(1), true).expect("first");
        let _a2 = slots.take(v4(1), false).expect("second, silent");
        assert!(slots.take(v4(1), true).is_none(), "over the share");
        let _b = slots.take(v4(2), true).expect("another source");
        assert_eq!(slots.held_by(v4(1)), 2);
        drop(a1);
        assert_eq!(slots.held_by(v4(1)), 1);
        let _a3 = slots.take(v4(1), true).expect("a slot of the share freed");
        assert_eq!(slots.held(), 3);
    }

    #[test]
    fn the_addresses_of_one_prefix_share_one_share() {
        let slots = HandshakeSlots::new(8, 2, 64);
        let _a = slots.take(v6("2001:db8::1"), true).unwrap();
        let _b = slots.take(v6("2001:db8::2"), true).unwrap();
        assert!(
            slots.take(v6("2001:db8::ffff:3"), true).is_none(),
            "the third address of one /64"
        );
        let _c = slots
            .take(v6("2001:db8:0:1::1"), true)
            .expect("the next /64 is another source");
        // With a /128 prefix, every address is a source of its own.
        let exact = HandshakeSlots::new(8, 1, 128);
        let _d = exact.take(v6("2001:db8::1"), true).unwrap();
        let _e = exact.take(v6("2001:db8::2"), true).unwrap();
        assert!(exact.take(v6("2001:db8::2"), true).is_none());
        // An IPv4-mapped client is its IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let _f = exact.take(mapped, true).unwrap();
        assert!(exact.take(v4(1), true).is_none());
    }

    #[test]
    fn at_the_cap_the_oldest_silent_slot_goes_and_one_mid_handshake_never_does() {
        let slots = HandshakeSlots::new(3, 3, 64);
        let speaking = slots.take(v4(1), true).unwrap();
        let older = slots.take(v4(2), false).unwrap();
        let newer = slots.take(v4(3), false).unwrap();
        assert!(!is_evicted(&older) && !is_evicted(&newer));

        // The cap is full: a new connection evicts the oldest silent slot.
        let first = slots
            .take(v4(4), true)
            .expect("the oldest silent slot is evicted");
        assert!(is_evicted(&older), "the oldest silent one");
        assert!(!is_evicted(&newer));
        assert_eq!(slots.held(), 3);
        assert_eq!(slots.held_by(v4(2)), 0, "the evicted source's count");
        // The next goes to the newer one, which speaks too late.
        let mut newer = newer;
        let second = slots.take(v4(5), false).expect("the next silent slot");
        assert!(is_evicted(&newer));
        assert!(!newer.spoke(), "evicted before its first byte");
        // Now the cap holds two slots mid-handshake and one silent (`second`), which speaks.
        let mut second = second;
        assert!(second.spoke());
        assert!(slots.take(v4(6), false).is_none(), "nothing left to evict");
        assert!(!is_evicted(&speaking) && !is_evicted(&first) && !is_evicted(&second));
        // Evicted slots were given back at eviction: dropping them gives nothing back twice.
        drop((older, newer));
        assert_eq!(slots.held(), 3);
        drop((speaking, first, second));
        assert_eq!(slots.held(), 0);
        assert_eq!(slots.held_by(v4(1)), 0);
    }

    #[test]
    fn a_source_at_its_share_evicts_nothing() {
        let slots = HandshakeSlots::new(2, 1, 64);
        let silent = slots.take(v4(1), false).unwrap();
        let _other = slots.take(v4(2), true).unwrap();
        assert!(slots.take(v4(1), true).is_none(), "refused for its share");
        assert!(!is_evicted(&silent), "before any eviction");
    }

    #[test]
    fn slots_that_spoke_or_ended_leave_the_queue_and_it_stays_small() {
        const MAX: usize = 4;
        let slots = HandshakeSlots::new(MAX, MAX, 64);
        let mut kept = slots.take(v4(1), false).unwrap();
        for round in 0..1_000u32 {
            let mut slot = slots.take(v4(2), false).unwrap();
            if round % 2 == 0 {
                assert!(slot.spoke());
            }
            drop(slot);
            assert!(
                slots.queued() <= 2 * MAX + COMPACT_SLACK,
                "{}",
                slots.queued()
            );
        }
        assert_eq!(slots.held(), 1);
        // The one silent slot left is the oldest: at the cap it is the one evicted.
        let _full: Vec<_> = (3..6).map(|n| slots.take(v4(n), true).unwrap()).collect();
        let _new = slots
            .take(v4(6), true)
            .expect("evicts the kept silent slot");
        assert!(is_evicted(&kept));
        assert!(!kept.spoke());
    }

    #[test]
    fn counts_are_exact_under_concurrent_takes_speaks_and_evictions() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 2_000;
        const MAX: usize = 6;
        let slots = HandshakeSlots::new(MAX, 3, 64);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let slots = &slots;
                scope.spawn(move || {
                    let mut held = Vec::new();
                    for round in 0..ROUNDS {
                        let address = v4((thread % 4) as u8);
                        if let Some(mut slot) = slots.take(address, round % 3 == 0) {
                            assert!(slots.held() <= MAX, "over the cap");
                            assert!(slots.held_by(address) <= 3, "over the share");
                            if round % 5 == 0 {
                                let _ = slot.spoke();
                            }
                            held.push(slot);
                        }
                        if round % 4 == 0 {
                            held.clear();
                        }
                    }
                });
            }
        });
        assert_eq!(slots.held(), 0);
        for n in 0..4 {
            assert_eq!(slots.held_by(v4(n)), 0);
        }
    }
}
