//! Admission control: what a shard checks before it takes a new connection, node-wide.
//!
//! Runs on: any shard thread (the accepting one); the main thread creates both at start.
//! Owns the per-address connect rate ([`ConnectRate`], `max_connects_per_ip`) and the
//! node's connection count ([`ConnectionBudget`], `max_connections`) with its slot guard
//! ([`BudgetSlot`]). Both are `Send + Sync`, shared in an `Arc` by every shard: relaxed
//! (the rate) or acquire/release (the budget) atomics, no lock.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// New connections per second per source IP, node-wide (`max_connects_per_ip`), shared
/// by every shard without a lock: a table of atomic slots, one per address hash, each
/// packing (second, address tag, count). Two addresses landing on one slot in the same
/// second: the second one is not counted (it may pass, it is never refused for the
/// other's connections).
#[derive(Debug)]
pub(crate) struct ConnectRate {
    per_second: u64,
    hasher: std::hash::RandomState,
    slots: Box<[AtomicU64]>,
}

/// Slots of the connect-rate table (8 bytes each).
const CONNECT_RATE_SLOTS: usize = 16 << 10;

impl ConnectRate {
    /// A limit of `per_second` new connections per address (0 = none).
    pub(crate) fn new(per_second: usize) -> Arc<ConnectRate> {
        let slots = if per_second == 0 { 0 } else { CONNECT_RATE_SLOTS };
        Arc::new(ConnectRate {
            per_second: per_second as u64,
            hasher: std::hash::RandomState::new(),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Counts a new connection from `ip` in second `now_s`; `false` when over the limit.
    pub(crate) fn allow(&self, ip: std::net::IpAddr, now_s: u64) -> bool {
        use std::hash::BuildHasher;
        if self.per_second == 0 {
            return true;
        }
        let hash = self.hasher.hash_one(ip);
        let slot = &self.slots[hash as usize % self.slots.len()];
        let (second, tag) = (now_s & 0xffff, (hash >> 48) & 0xffff);
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (was_second, was_tag, count) =
                (current >> 48, (current >> 32) & 0xffff, current & 0xffff_ffff);
            let count = if was_second != second || count == 0 {
                1
            } else if was_tag != tag {
                return true; // another address holds the slot this second
            } else {
                count.saturating_add(1).min(0xffff_ffff)
            };
            let next = (second << 48) | (tag << 32) | count;
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return count <= self.per_second,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Node-wide count of WebSocket connections against `max_connections`.
#[derive(Debug)]
pub(crate) struct ConnectionBudget {
    used: AtomicUsize,
    max: usize,
}

impl ConnectionBudget {
    /// A budget of `max` connections.
    pub(crate) fn new(max: usize) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget { used: AtomicUsize::new(0), max })
    }

    /// Takes one slot; `None` when the node is full (the caller answers 503). The slot
    /// is given back when the returned guard drops.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<BudgetSlot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| BudgetSlot(self.clone()))
    }

    /// Connections currently counted.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The configured maximum.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// One slot of a [`ConnectionBudget`]; dropping it gives the slot back, so no path can
/// forget to.
#[derive(Debug)]
pub(crate) struct BudgetSlot(Arc<ConnectionBudget>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_rate_counts_per_address_and_second() {
        let rate = ConnectRate::new(3);
        let (a, b) = (std::net::IpAddr::from([10, 0, 0, 1]), std::net::IpAddr::from([10, 0, 0, 2]));
        let first: Vec<bool> = (0..5).map(|_| rate.allow(a, 100)).collect();
        assert_eq!(first, [true, true, true, false, false]);
        assert!(rate.allow(b, 100), "another address has its own count");
        assert!(rate.allow(a, 101), "a new second starts over");
        assert!(ConnectRate::new(0).allow(a, 1), "0 = no limit");
    }

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<ConnectRate>();
    const _: () = assert_send_sync::<ConnectionBudget>();

    #[test]
    fn budget_refuses_past_max() {
        let budget = ConnectionBudget::new(2);
        let a = budget.try_acquire().expect("first");
        let _b = budget.try_acquire().expect("second");
        assert!(budget.try_acquire().is_none());
        drop(a);
        let _c = budget.try_acquire().expect("a dropped slot is free again");
        assert_eq!(budget.used(), 2);
    }
}
