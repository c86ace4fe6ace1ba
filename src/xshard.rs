//! The `Send` boundary: everything that crosses between threads lives here.
//!
//! Runs on: any thread. Shard code is otherwise `Rc`/`RefCell` only; the types in this
//! module are the exceptions, each with a reason:
//!
//! - [`Delivery`] (in an `Arc`) carries one event's pre-encoded frames from whoever
//!   encoded them (a shard for the embedded bus, the Redis thread later) to every shard's
//!   inbox. One `Arc` per event; the frames inside are [`SharedFrame`]s (`Bytes`).
//! - [`ShardInboxes`] are bounded flume channels (lock-free on the fast path, wake a
//!   glommio executor from a foreign thread without busy polling; NOTES §1).
//! - [`NodeStats`] are relaxed atomics, each written by one shard only, read by
//!   `/healthz` on any shard.
//! - [`ConnectionBudget`] is the node-wide connection count (one atomic).

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::frame::SharedFrame;

/// Index of a shard, `0..shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Who receives a delivery on each shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Every connection of the node.
    Broadcast,
    /// Every connection subscribed to the topic.
    Topic(Box<str>),
    /// Every connection of the user.
    Direct(Box<str>),
}

/// One event, encoded once per wire format, on its way to every shard.
#[derive(Debug)]
pub struct Delivery {
    /// Which local connections get it.
    pub route: Route,
    /// The frame for v1 connections (and for seed connections on a direct route).
    pub v1: SharedFrame,
    /// The seed-format frame (`{"sender","text"}`), for broadcasts only.
    pub seed: Option<SharedFrame>,
}

/// Sending halves of every shard's inbox, indexed by [`ShardId`]. Held by the bus.
pub type ShardInboxes = Arc<[flume::Sender<Arc<Delivery>>]>;

/// Receiving half of one shard's inbox. Held by that shard's inbox task; dropping it makes
/// the bus's sends to this shard fail with `Disconnected` (only during shutdown).
pub type ShardInbox = flume::Receiver<Arc<Delivery>>;

/// Creates one bounded inbox per shard.
pub fn shard_inboxes(shards: usize, capacity: usize) -> (ShardInboxes, Vec<ShardInbox>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(capacity)).unzip();
    (txs.into(), rxs)
}

/// Commands from the main thread to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardControl {
    /// Stop accepting, send Close 1001 to every client, drain, then stop the executor.
    Shutdown,
}

/// Counters of one shard. Written by that shard only (relaxed), read by anyone.
/// Padded to a cache line so two shards never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Open WebSocket connections (gauge).
    pub connections: AtomicU64,
    /// Upgrades completed since start.
    pub upgrades: AtomicU64,
    /// HTTP requests answered with an error status (400/404/426/431/503) or that timed out.
    pub rejected_handshakes: AtomicU64,
    /// Client messages received (text frames, reassembled).
    pub messages_in: AtomicU64,
    /// Frames queued to connections (one per connection per event).
    pub deliveries: AtomicU64,
    /// Connections cut off because their outbound queue passed the limit (1013).
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed because no Pong came back in time.
    pub heartbeat_timeouts: AtomicU64,
    /// Connections closed for a protocol violation (1002/1003/1007/1009).
    pub protocol_closes: AtomicU64,
    /// Bytes queued for sockets but not yet written, sampled every heartbeat tick.
    pub queued_bytes: AtomicU64,
    /// Socket writes submitted through the shard's io_uring (0 when sends are plain
    /// `sendmsg` calls).
    pub batched_sends: AtomicU64,
    /// `io_uring_enter` calls that carried those writes.
    pub send_batches: AtomicU64,
}

impl ShardStats {
    /// Adds `n` to a counter (relaxed: counters are for observation only).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Every shard's counters, shared by all shards.
#[derive(Debug)]
pub struct NodeStats {
    /// Indexed by [`ShardId`].
    pub shards: Box<[ShardStats]>,
}

impl NodeStats {
    /// Zeroed counters for `shards` shards.
    pub fn new(shards: usize) -> Arc<NodeStats> {
        Arc::new(NodeStats { shards: (0..shards).map(|_| ShardStats::default()).collect() })
    }

    /// Sum of one counter over all shards.
    pub fn total(&self, field: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| field(s).load(Ordering::Relaxed)).sum()
    }
}

/// Node-wide count of WebSocket connections against `max_connections`.
#[derive(Debug)]
pub struct ConnectionBudget {
    used: AtomicUsize,
    max: usize,
}

impl ConnectionBudget {
    /// A budget of `max` connections.
    pub fn new(max: usize) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget { used: AtomicUsize::new(0), max })
    }

    /// Takes one slot; `false` when the node is full (the caller answers 503).
    pub fn try_acquire(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// Gives back a slot taken by [`try_acquire`](Self::try_acquire).
    pub fn release(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections currently counted.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<Delivery>();
    const _: () = assert_send_sync::<NodeStats>();
    const _: () = assert_send_sync::<ConnectionBudget>();
    const _: () = assert_send_sync::<SharedFrame>();

    #[test]
    fn budget_refuses_past_max() {
        let budget = ConnectionBudget::new(2);
        assert!(budget.try_acquire());
        assert!(budget.try_acquire());
        assert!(!budget.try_acquire());
        budget.release();
        assert!(budget.try_acquire());
        assert_eq!(budget.used(), 2);
    }
}
