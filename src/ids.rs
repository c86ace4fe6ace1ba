//! The identifiers and small keys every layer passes around: shards, connections,
//! streams (routes), nodes, event positions and publish times, who a bus answer is for,
//! and what a shard wants from the bus.
//!
//! Runs on: any thread. Pure values (`Send`, `Copy` or cheap to clone), no I/O; the only
//! clock and file reads are [`PublishedAt::now`] and [`NodeId::for_this_process`]. Depends
//! on nothing else in the crate, so that the shard-side modules (`hub`, `presence`) and the
//! thread-crossing messages (`xshard`) can share them without depending on each other.

use std::sync::Arc;

/// Index of a shard, `0..shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Key of a connection in its shard's table (a slab index, reused after the connection
/// is gone: every index entry is removed before that happens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Who receives a delivery on each shard. Each route is also one **stream**: the bus
/// puts every stream's events in one order, which every receiver sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Every connection of the node.
    Broadcast,
    /// Every connection subscribed to the topic.
    Topic(Box<str>),
    /// Every connection of the user.
    Direct(Box<str>),
}

/// A node's name (`--node-id`, default `<hostname>-<pid>`): in logs, `/healthz`, and
/// the Redis heartbeat channel. Stamped on deliveries the embedded bus sequenced; a
/// delivery that came through Redis carries [`NodeId::redis`] (the payload does not say
/// which node published it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(pub Arc<str>);

impl NodeId {
    /// The default name of this process: host name and process id.
    pub fn for_this_process() -> NodeId {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        NodeId(format!("{host}-{}", std::process::id()).into())
    }

    /// The origin of deliveries that arrived through Redis.
    pub fn redis() -> NodeId {
        NodeId("redis".into())
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The position of an event in its stream: `<epoch>:<offset>` (decimal numbers). Assigned
/// by whoever stores the stream's history (the Redis publish script, or the embedded
/// sequencer); `None` on an `xshard::Delivery` of a stream without history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Changes whenever the stream's history was lost.
    pub epoch: u64,
    /// Grows by exactly one per event of the stream; the first event is 1.
    pub offset: u64,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for EventId {
    type Err = &'static str;

    /// Strict: two decimal numbers of at most 19 digits each, no sign, no spaces.
    fn from_str(s: &str) -> Result<EventId, &'static str> {
        const WHY: &str = "an event id is <epoch>:<offset> (two decimal numbers)";
        let (epoch, offset) = s.split_once(':').ok_or(WHY)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WHY);
            }
            part.parse::<u64>().map_err(|_| WHY)
        };
        Ok(EventId { epoch: number(epoch)?, offset: number(offset)? })
    }
}

/// When an event was published: microseconds since the Unix epoch, by the clock of the
/// node whose client published it. The delivering node's `/metrics` observes the
/// difference to its own clock (`corecast_publish_delivery_lag_seconds`), so across
/// nodes it is as exact as their clocks agree (NTP keeps that well under a millisecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedAt(pub u64);

impl PublishedAt {
    /// Now, by this node's clock.
    pub fn now() -> PublishedAt {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        PublishedAt(since.map_or(0, |d| d.as_micros() as u64))
    }

    /// How long ago, by this node's clock (zero when the stamp is ahead of it).
    pub fn age(self) -> std::time::Duration {
        std::time::Duration::from_micros(PublishedAt::now().0.saturating_sub(self.0))
    }
}

/// Who is told how a bus command went: a v1 connection, or a task of the shard waiting
/// for the answer by ticket (a server-API request, an upgrade waiting for its user's
/// connection count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publisher {
    /// A v1 connection of the shard.
    Conn(ConnId),
    /// A waiting task of the shard (`shard::api::ApiWaiters`).
    Waiter(u64),
}

/// Something a shard wants from the bus, or stops wanting. Sent when the first local
/// connection needs it and when the last one leaves: per shard, never per connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// The events of a topic.
    Topic(Box<str>),
    /// The direct messages of a user.
    User(Box<str>),
}

/// A change in one shard's interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChange {
    /// The first local subscriber of a topic, or the first local connection of a user.
    Gained(Interest),
    /// The last one left.
    Lost(Interest),
}
