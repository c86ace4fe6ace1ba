//! The `Send` boundary: the messages, inboxes and shared counters that cross between
//! threads live here (the identifiers they carry are in `ids`).
//!
//! Runs on: any thread. Shard code is otherwise `Rc`/`RefCell` only; the types in this
//! module are the exceptions, each with a reason:
//!
//! - [`Delivery`] (in an `Arc`, inside a [`ShardMessage`]) carries one event's
//!   pre-encoded frames from the sequencer that ordered and encoded it (the stream's owner
//!   shard, or the Redis bridge's thread) to the inbox of
//!   every shard that wants it. One `Arc` per event; the frames inside are
//!   [`SharedFrame`]s (`Bytes`).
//! - `ids::InterestChange`s go the other way, from a shard to the bus (inside
//!   `bus::BusCommand`).
//! - [`ShardInboxes`] are bounded flume channels: lock-free on the fast path, and a send
//!   from a foreign thread wakes the glommio executor without busy polling
//!   (`glommio::channels::shared_channel` cannot be fed from a non-glommio thread: it
//!   panics).
//! - [`NodeStats`] are relaxed atomics, each written by one shard only, read by
//!   `/healthz` on any shard.
//! - [`Histogram`]s are fixed buckets of relaxed atomics, each written by one thread (a
//!   shard, or the bridge), summed by `/metrics` on any shard.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use crate::{
    frame::SharedFrame,
    ids::{ConnId, EventId, NodeId, PublishedAt, Publisher, Route, ShardId},
};

/// One event, encoded once per wire format, on its way to the shards that want it.
#[derive(Debug)]
pub struct Delivery {
    /// Which local connections get it.
    pub route: Route,
    /// Its position in its stream, when the bus assigns one.
    pub id: Option<EventId>,
    /// The node whose client published it.
    pub origin: NodeId,
    /// The frame for v1 connections (and for seed connections on a direct route).
    pub v1: SharedFrame,
    /// The seed-format frame (`{"sender","text"}`), for broadcasts only.
    pub seed: Option<SharedFrame>,
    /// When it was published, if the publisher said (payloads from other publishers on
    /// Redis do not).
    pub published: Option<PublishedAt>,
    /// Set by the first shard that delivers it: the node observes its lag once.
    pub lag_observed: AtomicBool,
}

impl Delivery {
    /// The same delivery, stamped with its publish time.
    pub fn published_at(self, at: PublishedAt) -> Delivery {
        Delivery { published: Some(at), ..self }
    }

    /// The publish-to-delivery lag, to the first caller only (the first shard of this
    /// node that queued it to a connection); `None` to the others, and when unstamped.
    pub fn take_lag(&self) -> Option<std::time::Duration> {
        let published = self.published?;
        (!self.lag_observed.swap(true, Ordering::Relaxed)).then(|| published.age())
    }
}

/// What a shard's inbox carries, in one order: deliveries, and the bus's answers to the
/// shard's own commands (which must not overtake the deliveries before them).
#[derive(Debug, Clone)]
pub(crate) enum ShardMessage {
    /// An event for the local connections its route names.
    Deliver(Arc<Delivery>),
    /// The bus now delivers `topic`'s events to this shard: the subscribers waiting for
    /// that (one per `Interest::Topic` gain the shard reported) get their `subscribed`.
    TopicConfirmed(Box<str>),
    /// The answer to one connection's replay request.
    Replayed {
        /// Who asked.
        to: Box<ReplayTo>,
        /// The answer.
        answer: Box<ReplayAnswer>,
    },
    /// The node could not fill a gap in this stream (its history no longer covers it):
    /// its local subscribers are told `recovered: false`.
    StreamLost(Route),
    /// The bus became unable (`false`) or able again (`true`) to reach the other nodes:
    /// v1 clients are told `degraded` / `restored`.
    BusState {
        /// Whether publishes reach every node.
        ready: bool,
    },
    /// A cluster command to apply to this shard's connections.
    Control(Arc<ClusterControl>),
    /// A join or leave in a topic, for the shard's presence watchers of it.
    Presence(Arc<crate::presence::News>),
    /// News of joins and leaves may have been lost (the bridge's Pub/Sub connection came
    /// back, or fell behind): every presence watcher is given a fresh snapshot.
    PresenceResync,
    /// A topic's members, for one connection (its watch's start, or a `presence`
    /// command).
    PresenceSnapshot {
        /// Who asked.
        to: Box<crate::presence::SnapshotTo>,
        /// The number of the latest news the snapshot includes.
        seq: u64,
        /// `{"type":"presence",...}`.
        json: Box<str>,
    },
    /// A reply for one connection (a v1 publisher whose event could not reach the other
    /// nodes, or its publish receipt) or one API request. `user` guards against a
    /// connection id reused in the meantime.
    Reply {
        /// The connection or API request.
        to: Publisher,
        /// Its user id.
        user: Box<str>,
        /// The JSON text to send it.
        json: Box<str>,
    },
}

/// A command every node applies to its own connections (the server API's
/// `/api/disconnect`). With Redis it travels as JSON on `<prefix>control`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ClusterControl {
    /// Close every connection of `user` with `code` and `reason`; refuse its upgrades
    /// (403) until `until_ms` (Unix milliseconds; 0: no block).
    Disconnect {
        /// The user.
        user: String,
        /// Close code (4000–4999).
        code: u16,
        /// Close reason (at most 123 bytes).
        reason: String,
        /// End of the block, Unix milliseconds.
        until_ms: u64,
    },
}

/// What a connection asked the bus for a stream's past events for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayPurpose {
    /// Recovery after a reconnect (`since` on subscribe, `?lastEventId=`): the missed
    /// events, then `recovered`; the connection's live events wait for the answer.
    Recover,
    /// `since: "latest"`: the stream's last event, before live ones.
    Latest,
    /// The `history` command: one page, answered as one message; no subscription.
    History,
}

/// Who receives a replay answer (one connection of one shard).
#[derive(Debug, Clone)]
pub(crate) struct ReplayTo {
    /// The asking shard.
    pub shard: ShardId,
    /// The stream asked about.
    pub route: Route,
    /// The connection.
    pub conn: ConnId,
    /// Its user id (guards against a connection id reused meanwhile).
    pub user: Box<str>,
    /// Matches the answer with the shard's pending request.
    pub token: u64,
    /// What the answer is for.
    pub purpose: ReplayPurpose,
}

/// The bus's answer to a replay request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayAnswer {
    /// The position was recoverable: `events` are everything after it (up to the limit).
    /// `false`: the epoch changed, the position was trimmed, is in the future, or the gap
    /// is over the replay limit — the client must resync from its source of truth.
    pub recovered: bool,
    /// The events, oldest first.
    pub events: Vec<Arc<Delivery>>,
    /// The stream's position after these events (the last one's id, or where the stream
    /// stood when nothing was missed); `None` when the stream has no history.
    pub position: Option<EventId>,
    /// A history page stopped at its limit: more events follow `position`.
    pub more: bool,
}

/// Sending halves of every shard's inbox, indexed by [`ShardId`]. Held by the bus.
pub(crate) type ShardInboxes = Arc<[flume::Sender<ShardMessage>]>;

/// Receiving half of one shard's inbox. Held by that shard's inbox task; dropping it makes
/// the bus's sends to this shard fail with `Disconnected` (only during shutdown).
pub(crate) type ShardInbox = flume::Receiver<ShardMessage>;

/// Hands `message` to the inbox of each shard in `targets`, in order, waiting for room
/// when an inbox is full (its shard drains it without waiting on anyone). A shard whose
/// inbox is gone (it stopped: shutdown) is skipped.
pub(crate) async fn deliver_to(inboxes: &ShardInboxes, targets: &[ShardId], message: ShardMessage) {
    for shard in targets {
        let Some(inbox) = inboxes.get(shard.0 as usize) else { continue };
        match inbox.try_send(message.clone()) {
            Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
            Err(flume::TrySendError::Full(message)) => {
                let _ = inbox.send_async(message).await;
            }
        }
    }
}

/// Creates one bounded inbox per shard.
pub(crate) fn shard_inboxes(shards: usize, capacity: usize) -> (ShardInboxes, Vec<ShardInbox>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(capacity)).unzip();
    (txs.into(), rxs)
}

/// Commands from the main thread to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardControl {
    /// Drain: `/readyz` 503, Close 1012 to every client spread over `drain_period`, wait
    /// for the closes, then stop the executor.
    Shutdown,
    /// During a drain: close the remaining clients at once.
    Now,
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
    /// Upgrades refused for their token, per reason (`auth::AuthFailure::ALL` order).
    pub auth_rejected: [AtomicU64; 8],
    /// v1 commands refused with `forbidden` (and invalid subscription tokens).
    pub forbidden: AtomicU64,
    /// Seed-mode texts dropped because the user may not broadcast.
    pub seed_texts_dropped: AtomicU64,
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

/// The upper bounds of a [`Histogram`]'s buckets, in nanoseconds (ascending; an implicit
/// last bucket takes the rest).
pub trait Buckets {
    /// Ascending upper bounds (at most [`MAX_BUCKETS`]).
    const BOUNDS_NS: &'static [u64];
}

/// Most finite buckets of a [`Histogram`].
pub(crate) const MAX_BUCKETS: usize = 20;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// One event's fan-out on one shard: a microsecond for a few connections, milliseconds
/// for tens of thousands.
#[derive(Debug)]
pub struct FanOutBuckets;
impl Buckets for FanOutBuckets {
    const BOUNDS_NS: &'static [u64] = &[
        US,
        2 * US + US / 2,
        5 * US,
        10 * US,
        25 * US,
        50 * US,
        100 * US,
        250 * US,
        500 * US,
        MS,
        2 * MS + MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
    ];
}

/// Publish-to-delivery lag: a hundred microseconds on a quiet cluster, seconds when a
/// node falls behind.
#[derive(Debug)]
pub struct LagBuckets;
impl Buckets for LagBuckets {
    const BOUNDS_NS: &'static [u64] = &[
        100 * US,
        250 * US,
        500 * US,
        MS,
        2 * MS + MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        500 * MS,
        S,
        2 * S + S / 2,
        5 * S,
        10 * S,
        30 * S,
    ];
}

/// A command's round trip to Redis.
#[derive(Debug)]
pub struct RoundTripBuckets;
impl Buckets for RoundTripBuckets {
    const BOUNDS_NS: &'static [u64] = &[
        50 * US,
        100 * US,
        250 * US,
        500 * US,
        MS,
        2 * MS + MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        500 * MS,
        S,
        5 * S,
    ];
}

/// A histogram of durations with fixed buckets: relaxed atomics written by one thread,
/// read (and summed over shards) by `/metrics`. Observing costs a few comparisons and two
/// uncontended atomic adds, no lock.
#[derive(Debug)]
pub struct Histogram<B> {
    /// Observations per bucket (not cumulative); `[BOUNDS_NS.len()]` is the overflow.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    /// Sum of every observation, in nanoseconds.
    sum_ns: AtomicU64,
    buckets: std::marker::PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        const { assert!(B::BOUNDS_NS.len() <= MAX_BUCKETS) };
        Histogram {
            counts: Default::default(),
            sum_ns: AtomicU64::new(0),
            buckets: std::marker::PhantomData,
        }
    }
}

/// What a scrape reads of one or more [`Histogram`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramReading {
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound in seconds, observations in this bucket only)`, the last bound
    /// `+Inf`: the form `prometheus_client` encodes (it writes the cumulative `le`
    /// buckets).
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramReading {
    /// The observations since `earlier` (a reading of the same histograms).
    pub fn since(&self, earlier: Option<&HistogramReading>) -> HistogramReading {
        let Some(earlier) = earlier else { return self.clone() };
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|((bound, now), (_, then))| (*bound, now.saturating_sub(*then)))
            .collect();
        HistogramReading {
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }

    /// The upper bound (seconds) of the bucket holding quantile `q` (0..=1): an upper
    /// estimate. `None` without observations; the last finite bound when it falls in the
    /// overflow bucket.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        let mut last_finite = None;
        for (bound, n) in &self.buckets {
            if bound.is_finite() {
                last_finite = Some(*bound);
            }
            seen += n;
            if seen >= rank {
                return if bound.is_finite() { Some(*bound) } else { last_finite };
            }
        }
        last_finite
    }
}

impl<B: Buckets> Histogram<B> {
    /// Records one duration.
    pub fn observe(&self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let at = B::BOUNDS_NS.iter().position(|bound| ns <= *bound).unwrap_or(B::BOUNDS_NS.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// This histogram alone as a reading.
    pub fn read_one(&self) -> HistogramReading {
        Histogram::read([self])
    }

    /// The sum of `histograms` (every shard's) as one reading.
    pub fn read<'a>(histograms: impl IntoIterator<Item = &'a Self>) -> HistogramReading
    where
        B: 'a,
    {
        let mut counts = [0u64; MAX_BUCKETS + 1];
        let mut sum_ns = 0u64;
        for h in histograms {
            for (total, count) in counts.iter_mut().zip(&h.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(h.sum_ns.load(Ordering::Relaxed));
        }
        let mut buckets: Vec<(f64, u64)> =
            B::BOUNDS_NS.iter().zip(counts).map(|(bound, n)| (*bound as f64 / 1e9, n)).collect();
        buckets.push((f64::INFINITY, counts[B::BOUNDS_NS.len()]));
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramReading { sum_seconds: sum_ns as f64 / 1e9, count, buckets }
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
    /// Indexed by [`ShardId`].
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

    /// Sum of one counter over all shards.
    pub fn total(&self, field: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| field(s).load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InterestChange;

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<Delivery>();
    const _: () = assert_send_sync::<ShardMessage>();
    const _: () = assert_send_sync::<InterestChange>();
    const _: () = assert_send_sync::<NodeStats>();
    const _: () = assert_send_sync::<SharedFrame>();
}

#[cfg(test)]
mod histogram_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_observation_lands_in_one_bucket_summed_over_shards() {
        let a = Histogram::<LagBuckets>::default();
        let b = Histogram::<LagBuckets>::default();
        a.observe(Duration::from_micros(50));
        a.observe(Duration::from_millis(4));
        b.observe(Duration::from_millis(4));
        b.observe(Duration::from_secs(60));
        let r = Histogram::read([&a, &b]);
        assert_eq!(r.count, 4);
        let at = |bound: f64| r.buckets.iter().find(|(b, _)| *b == bound).map(|(_, c)| *c);
        assert_eq!(at(0.0001), Some(1));
        assert_eq!(at(0.0025), Some(0));
        assert_eq!(at(0.005), Some(2));
        assert_eq!(at(30.0), Some(0));
        assert_eq!(at(f64::INFINITY), Some(1));
        assert!((r.sum_seconds - 60.00805).abs() < 1e-9, "{}", r.sum_seconds);
        assert_eq!(r.quantile_seconds(0.25), Some(0.0001));
        assert_eq!(r.quantile_seconds(0.5), Some(0.005));
        assert_eq!(r.quantile_seconds(1.0), Some(30.0), "the overflow reads as the last bound");
        let earlier = r.clone();
        a.observe(Duration::from_millis(20));
        let recent = Histogram::read([&a, &b]).since(Some(&earlier));
        assert_eq!((recent.count, recent.quantile_seconds(0.99)), (1, Some(0.025)));
        assert_eq!(Histogram::<LagBuckets>::default().read_one().quantile_seconds(0.5), None);
    }
}
