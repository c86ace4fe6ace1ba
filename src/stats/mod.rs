//! The node's counters: every shard's, the Redis bridge's and the webhook dispatcher's,
//! which `/healthz`, `/metrics` and the stats feed read.
//!
//! Runs on: any thread. Each counter is written by one thread only (its shard, the bridge
//! thread, or the webhook dispatcher; relaxed) and read by any shard. Owns
//! [`NodeStats`] (shared by every thread in an `Arc`) and what it holds: [`ShardStats`],
//! [`BridgeStats`], [`WebhookStats`], and the latency [`Histogram`]s (`histogram`). All
//! are `Send + Sync`: atomics, no lock. `prometheus` encodes them for `GET /metrics`.
//! Nothing here imports the shard, the bus or a connection.

mod histogram;
pub(crate) mod prometheus;

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

pub(crate) use histogram::{
    Buckets, FanOutBuckets, Histogram, HistogramReading, LagBuckets, RoundTripBuckets,
};

use crate::ids::NodeId;

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
    /// Upgrades refused for their token, per reason (`auth::AuthFailure::ALL` order).
    pub auth_rejected: [AtomicU64; 8],
    /// v1 commands refused with `forbidden` (and invalid subscription tokens).
    pub forbidden: AtomicU64,
    /// Seed-mode texts dropped because the user may not broadcast.
    pub seed_texts_dropped: AtomicU64,
    /// Client events refused because their frame could be larger than a connection may
    /// queue (v1 `too_large`; seed texts, dropped).
    pub too_large: AtomicU64,
    /// Connections closed (1008) because their token expired unrefreshed.
    pub token_expiry_closes: AtomicU64,
    /// Client messages dropped by the message rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed (1008) for staying over the message rate limit.
    pub rate_limit_closes: AtomicU64,
    /// Upgrades refused (429) by the per-IP connection rate.
    pub connects_limited: AtomicU64,
    /// Upgrades refused (429) by the per-user connection limit.
    pub user_limited: AtomicU64,
    /// Refused HTTP requests by status ([`REJECTED_STATUSES`] order; the last slot:
    /// handshakes that never completed, a timeout or the peer leaving).
    pub rejected_by_status: [AtomicU64; REJECTED_STATUSES.len() + 1],
    /// Bytes written to client sockets (frames and control frames), added at each
    /// heartbeat tick from the shard's own count.
    pub bytes_out: AtomicU64,
    /// Time to queue one event to every local connection it is for.
    pub fan_out: Histogram<FanOutBuckets>,
    /// Publish to first delivery on this node, once per event per node (the first shard
    /// to deliver it observes it).
    pub delivery_lag: Histogram<LagBuckets>,
}

/// The statuses `/metrics` counts refused requests by (others count as 400: every error
/// status the node answers is one of these).
pub(crate) const REJECTED_STATUSES: [u16; 10] = [400, 401, 403, 404, 405, 408, 426, 429, 431, 503];

impl ShardStats {
    /// Counts one refused request (`None`: a handshake that never completed).
    pub fn rejected(&self, status: Option<u16>) {
        let at = match status {
            Some(status) => REJECTED_STATUSES.iter().position(|s| *s == status).unwrap_or(0),
            None => REJECTED_STATUSES.len(),
        };
        ShardStats::add(&self.rejected_by_status[at], 1);
        ShardStats::add(&self.rejected_handshakes, 1);
    }
}

impl ShardStats {
    /// Adds `n` to a counter (relaxed: counters are for observation only).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The state and counters of the Redis bridge, written by the bridge thread only
/// (relaxed), read by `/healthz` and `/readyz` on any shard.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Both Redis connections (subscriber, publisher) are up.
    pub connected: AtomicBool,
    /// Connected, and the node's heartbeat came back through Redis recently: what
    /// `/readyz` reports.
    pub ready: AtomicBool,
    /// The bridge has been ready at least once since the node started: until then the
    /// node refuses WebSocket upgrades (503, `Retry-After`), so that nothing a client
    /// sends is published before the node can reach the other nodes.
    pub ever_ready: AtomicBool,
    /// Channels the node is subscribed to (interest, broadcast and heartbeat included).
    pub subscribed_channels: AtomicU64,
    /// Reconnections to Redis (either connection) since start.
    pub reconnects: AtomicU64,
    /// Messages fred dropped because the bridge fell behind (`Lagged`).
    pub lagged: AtomicU64,
    /// Publishes that did not reach Redis (Redis away, error or timeout).
    pub publish_errors: AtomicU64,
    /// Messages received from Redis and handed to shards.
    pub messages_in: AtomicU64,
    /// Messages received from Redis and dropped (payload not UTF-8, or larger than
    /// `outbound_queue_limit`).
    pub dropped_messages: AtomicU64,
    /// Reads of the history in Redis (gap fills and client replays; concurrent replays of
    /// one stream share one read).
    pub history_reads: AtomicU64,
    /// Streams mode: XREADs that returned events.
    pub stream_reads: AtomicU64,
    /// Reads of where a stream stands, before the node subscribes to it (one per new
    /// topic or user on the node, pipelined).
    pub position_reads: AtomicU64,
    /// Events live delivery had missed (lost in Pub/Sub) and the node delivered from the
    /// history instead.
    pub gaps_filled: AtomicU64,
    /// Times a stream's local clients were told `recovered: false` because the node could
    /// not fill a gap (history trimmed, expired or wiped).
    pub streams_lost: AtomicU64,
    /// Epochs this node found Redis had lost writes of (a read below what the node had
    /// delivered) and abandoned, so that no id of them names two events.
    pub epochs_abandoned: AtomicU64,
    /// Live events held behind a gap that the history never confirmed (an id made up by
    /// another publisher, or a write Redis lost), dropped after three complete reads.
    pub unconfirmed_dropped: AtomicU64,
    /// Client replays answered `recovered: false` because the history kept reading below
    /// the node's delivery position.
    pub replays_given_up: AtomicU64,
    /// Round trips of the bridge's heartbeat PUBLISH to Redis.
    pub round_trip: Histogram<RoundTripBuckets>,
}

/// One of the bridge's counters as both reports name it: its key in `/healthz`'s
/// `bridge` object and its `/metrics` family (`_total` is added by the encoder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BridgeCounter {
    pub(crate) key: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) help: &'static str,
    pub(crate) value: u64,
}

impl BridgeStats {
    /// Every counter, read once (relaxed): the one list `/healthz` and `/metrics` serve.
    pub(crate) fn counters(&self) -> [BridgeCounter; 13] {
        let c = |key, metric, help, counter: &AtomicU64| BridgeCounter {
            key,
            metric,
            help,
            value: counter.load(Ordering::Relaxed),
        };
        [
            c(
                "reconnects",
                "corecast_bridge_reconnects",
                "Reconnections to Redis.",
                &self.reconnects,
            ),
            c(
                "lagged",
                "corecast_bridge_lagged_messages",
                "Messages dropped because the bridge fell behind (then read from history).",
                &self.lagged,
            ),
            c(
                "publish_errors",
                "corecast_bridge_publish_errors",
                "Publishes that did not reach Redis.",
                &self.publish_errors,
            ),
            c(
                "messages_in",
                "corecast_bridge_messages_in",
                "Messages received from Redis and handed to shards.",
                &self.messages_in,
            ),
            c(
                "dropped_messages",
                "corecast_bridge_messages_dropped",
                "Messages from Redis dropped (not UTF-8, or too large).",
                &self.dropped_messages,
            ),
            c(
                "history_reads",
                "corecast_bridge_history_reads",
                "Reads of the history in Redis.",
                &self.history_reads,
            ),
            c(
                "position_reads",
                "corecast_bridge_position_reads",
                "Reads of where a stream stands, before the node subscribes to it.",
                &self.position_reads,
            ),
            c(
                "stream_reads",
                "corecast_bridge_stream_reads",
                "Streams delivery: XREADs that returned events.",
                &self.stream_reads,
            ),
            c(
                "gaps_filled",
                "corecast_bridge_gaps_filled",
                "Events missed live and delivered from the history.",
                &self.gaps_filled,
            ),
            c(
                "streams_lost",
                "corecast_bridge_streams_lost",
                "Times local clients were told recovered:false for a gap.",
                &self.streams_lost,
            ),
            c(
                "epochs_abandoned",
                "corecast_bridge_epochs_abandoned",
                "Epochs abandoned because Redis lost writes of them.",
                &self.epochs_abandoned,
            ),
            c(
                "unconfirmed_dropped",
                "corecast_bridge_unconfirmed_dropped",
                "Held live events the history never confirmed, dropped.",
                &self.unconfirmed_dropped,
            ),
            c(
                "replays_given_up",
                "corecast_bridge_replays_given_up",
                "Replays answered recovered:false: the history stayed below the node's position.",
                &self.replays_given_up,
            ),
        ]
    }

    /// Adds `n` to a counter (relaxed).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a flag (relaxed).
    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::Relaxed);
    }
}

/// Every shard's counters and the bus's state, shared by all shards.
#[derive(Debug)]
pub struct NodeStats {
    /// This node's name.
    pub node: NodeId,
    /// Indexed by [`ShardId`](crate::ids::ShardId).
    pub shards: Box<[ShardStats]>,
    /// The Redis bridge's state; `None` with the embedded bus.
    pub bridge: Option<BridgeStats>,
    /// Webhook delivery (zero while no `webhook_url` is set).
    pub webhooks: WebhookStats,
}

/// Webhook delivery counters: written by shards (`queued`, `dropped`) and by the webhook
/// dispatcher, read by `/healthz` (relaxed).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events waiting in the dispatcher (queued, held for the vacate delay, or batched).
    pub queued: AtomicU64,
    /// Events delivered (a 2xx answer), counted once per receiver.
    pub sent: AtomicU64,
    /// Events given up on (attempts or age used up, or a 4xx answer), per receiver.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl NodeStats {
    /// Zeroed counters for `shards` shards; `redis` when the node runs the Redis bridge.
    pub fn new(shards: usize, node: NodeId, redis: bool) -> Arc<NodeStats> {
        Arc::new(NodeStats {
            node,
            shards: (0..shards).map(|_| ShardStats::default()).collect(),
            bridge: redis.then(BridgeStats::default),
            webhooks: WebhookStats::default(),
        })
    }

    /// Whether the bus can take traffic: always with the embedded bus; with Redis, while
    /// the bridge is connected and its heartbeat comes back.
    pub fn bus_ready(&self) -> bool {
        self.bridge.as_ref().is_none_or(|b| b.ready.load(Ordering::Relaxed))
    }

    /// Whether the node has started taking clients: at once with the embedded bus; with
    /// Redis, once its bridge was first ready (a later outage does not undo it: the
    /// clients it has then are told `degraded`).
    pub fn bus_started(&self) -> bool {
        self.bridge.as_ref().is_none_or(|b| b.ever_ready.load(Ordering::Relaxed))
    }

    /// Sum of one counter over all shards.
    pub fn total(&self, field: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| field(s).load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<NodeStats>();
}
