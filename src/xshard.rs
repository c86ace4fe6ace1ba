//! The `Send` boundary: the messages and inboxes that cross between threads live here
//! (the identifiers they carry are in `ids`).
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

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::{
    ids::{ConnId, EventId, NodeId, PublishedAt, Publisher, Route, ShardId},
    ws::frame::SharedFrame,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InterestChange;

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<Delivery>();
    const _: () = assert_send_sync::<ShardMessage>();
    const _: () = assert_send_sync::<InterestChange>();
    const _: () = assert_send_sync::<SharedFrame>();
}
