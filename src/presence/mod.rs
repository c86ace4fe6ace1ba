//! Presence: which users are subscribed to which topics, cluster-wide, and what the
//! app backend hears about it (webhooks).
//!
//! Runs on: whoever owns the node's presence — with the embedded bus, the sequencer of
//! the shard that owns the presence lane ([`PRESENCE_STREAM`]); with Redis, the bridge
//! thread (`bus::redis::presence`). Shards only report changes and read answers. This
//! module is pure: no I/O, no clock.
//!
//! **Membership.** Every subscription makes its user a member of the topic; a member's
//! count is its subscribed connections. A user **joins** a topic when its first
//! subscribed connection anywhere appears and **leaves** when its last one anywhere is
//! gone: a second tab, or the same user on another node, is not a new join. A topic is
//! **occupied** while it has a member. [`Tally`] counts one node's (or, embedded, the
//! whole cluster's) memberships and reports those transitions.
//!
//! **News.** Joins and leaves reach the subscribers that asked for presence as
//! `{"type":"join"|"leave","topic":T,"user":U}`, after their snapshot
//! `{"type":"presence","topic":T,"members":[...]}`. Each piece of news of a topic has a
//! sequence number (increasing; after a loss of the presence data it restarts above every
//! earlier one, being seeded from the clock in microseconds): a subscriber gets only the
//! news after its snapshot's number (`shard::subs`).

pub(crate) mod dispatch;
pub(crate) mod webhook;

use std::collections::HashMap;

use serde::Serialize;

use crate::ids::{Publisher, ShardId};

/// The stream name whose lane carries every presence command: one owner per node (the
/// embedded bus's sequencer of that lane; the bridge with Redis). Not a valid topic or
/// user id, so no event stream shares it by name.
pub(crate) const PRESENCE_STREAM: &str = "\u{0}presence";

/// What changed when one connection's membership changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The user's first connection in the topic.
    pub joined: bool,
    /// The user's last connection in the topic is gone.
    pub left: bool,
    /// The topic's first member.
    pub occupied: bool,
    /// The topic's last member is gone.
    pub vacated: bool,
}

/// Members of topics: user → subscribed connections, per topic.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    topics: HashMap<Box<str>, TopicMembers>,
}

/// One topic's members.
#[derive(Debug, Default)]
struct TopicMembers {
    users: HashMap<Box<str>, u64>,
    /// Sum of `users`' counts.
    connections: u64,
}

impl Tally {
    /// One connection of `user` subscribed to `topic` (`joined`) or left it. A leave
    /// that was never counted (it cannot happen: shards report each subscription's end
    /// once) changes nothing.
    pub(crate) fn change(&mut self, topic: &str, user: &str, joined: bool) -> Transition {
        let mut t = Transition::default();
        if joined {
            let members = self.topics.entry(topic.into()).or_default();
            t.occupied = members.users.is_empty();
            let count = members.users.entry(user.into()).or_insert(0);
            *count += 1;
            t.joined = *count == 1;
            members.connections += 1;
            return t;
        }
        let Some(members) = self.topics.get_mut(topic) else { return t };
        let Some(count) = members.users.get_mut(user) else { return t };
        *count -= 1;
        members.connections -= 1;
        if *count == 0 {
            members.users.remove(user);
            t.left = true;
            if members.users.is_empty() {
                self.topics.remove(topic);
                t.vacated = true;
            }
        }
        t
    }

    /// `user`'s connections in `topic`.
    pub(crate) fn count(&self, topic: &str, user: &str) -> u64 {
        self.topics.get(topic).and_then(|m| m.users.get(user)).copied().unwrap_or(0)
    }

    /// Every member of `topic` with its connections, by user id.
    pub(crate) fn members(&self, topic: &str) -> Vec<Member> {
        let mut all: Vec<Member> = self
            .topics
            .get(topic)
            .map(|m| {
                m.users
                    .iter()
                    .map(|(user, n)| Member { user: user.to_string(), connections: *n })
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by(|a, b| a.user.cmp(&b.user));
        all
    }

    /// `topic`'s occupancy.
    pub(crate) fn occupancy(&self, topic: &str) -> Occupancy {
        self.topics.get(topic).map_or_else(Occupancy::default, |m| Occupancy {
            subscribers: m.connections,
            users: m.users.len() as u64,
        })
    }

    /// Every occupied topic starting with `prefix`, with its occupancy, at most `limit`
    /// (by name).
    pub(crate) fn occupied(&self, prefix: &str, limit: usize) -> Vec<(String, Occupancy)> {
        let mut all: Vec<(String, Occupancy)> = self
            .topics
            .keys()
            .filter(|t| t.starts_with(prefix))
            .map(|t| (t.to_string(), self.occupancy(t)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.truncate(limit);
        all
    }

    /// Every topic with members, with each user's connections (to write a node's whole
    /// contribution again).
    pub(crate) fn topics(&self) -> impl Iterator<Item = (&str, Vec<(&str, u64)>)> {
        self.topics.iter().map(|(t, m)| (&**t, m.users.iter().map(|(u, n)| (&**u, *n)).collect()))
    }
}

/// A member of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct Member {
    /// The user id.
    pub user: String,
    /// Its subscribed connections, cluster-wide.
    pub connections: u64,
}

/// How many are in a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Occupancy {
    /// Subscribed connections.
    pub subscribers: u64,
    /// Distinct users among them.
    pub users: u64,
}

/// What a shard or an API request asks the presence owner (`bus::BusCommand::Presence`).
#[derive(Debug)]
pub(crate) enum PresenceCommand {
    /// One connection of `user` subscribed to `topic` (`joined`) or stopped being
    /// subscribed (unsubscribe, close).
    Change {
        /// The topic.
        topic: Box<str>,
        /// The user.
        user: Box<str>,
        /// Subscribed (`true`) or gone.
        joined: bool,
    },
    /// A connection wants `topic`'s members (a `presence` subscription or command).
    Snapshot(Box<SnapshotTo>),
    /// The server API asks about occupancy (answered with JSON).
    Query {
        /// What it asks.
        query: Query,
        /// The waiting API request.
        reply_to: (ShardId, Publisher),
    },
}

/// Who gets a presence snapshot: one connection of one shard.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotTo {
    /// The asking shard.
    pub shard: ShardId,
    /// The topic.
    pub topic: Box<str>,
    /// The connection and its user (guards against a reused connection id).
    pub conn: crate::ids::ConnId,
    /// Its user.
    pub user: Box<str>,
    /// `Some`: the watch (subscription with `presence: true`) this snapshot starts;
    /// `None`: a one-off `presence` command.
    pub watch: Option<u64>,
}

/// An API question about occupancy (`GET /api/channels...`, `GET /api/stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    /// Occupied topics starting with a prefix.
    Channels {
        /// The prefix (`""`: all).
        prefix: String,
    },
    /// One topic's occupancy.
    Channel(String),
    /// One topic's members.
    Users(String),
    /// The live nodes and their load.
    Stats,
}

/// Most topics `GET /api/channels` lists.
pub(crate) const MAX_LISTED_CHANNELS: usize = 10_000;

/// `{"type":"presence","topic":T,"members":[...]}`.
pub(crate) fn snapshot_json(topic: &str, members: &[Member]) -> String {
    #[derive(Serialize)]
    struct Snapshot<'a> {
        r#type: &'static str,
        topic: &'a str,
        members: &'a [Member],
    }
    serde_json::to_string(&Snapshot { r#type: "presence", topic, members }).unwrap_or_default()
}

/// A join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NewsKind {
    /// A user's first connection in the topic, cluster-wide.
    Join,
    /// A user's last connection in the topic is gone, cluster-wide.
    Leave,
}

/// `{"type":"join"|"leave","topic":T,"user":U}`.
pub(crate) fn news_json(kind: NewsKind, topic: &str, user: &str) -> String {
    #[derive(Serialize)]
    struct News<'a> {
        r#type: NewsKind,
        topic: &'a str,
        user: &'a str,
    }
    serde_json::to_string(&News { r#type: kind, topic, user }).unwrap_or_default()
}

/// One piece of news for a topic's presence watchers on every shard: encoded once.
#[derive(Debug)]
pub(crate) struct News {
    /// The topic.
    pub topic: Box<str>,
    /// Its sequence number in the topic.
    pub seq: u64,
    /// The frame watchers get.
    pub frame: crate::ws::frame::SharedFrame,
}

impl News {
    /// The news that `user` joined or left `topic`, number `seq`.
    pub(crate) fn new(kind: NewsKind, topic: &str, user: &str, seq: u64) -> News {
        let frame = crate::ws::frame::encode_text(&news_json(kind, topic, user));
        News { topic: topic.into(), seq, frame }
    }
}

/// `{"channels":{T:{"subscribers":N,"users":N},...}}`.
pub(crate) fn channels_json(channels: &[(String, Occupancy)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = channels
        .iter()
        .map(|(t, o)| (t.clone(), serde_json::to_value(o).unwrap_or_default()))
        .collect();
    serde_json::json!({ "channels": map }).to_string()
}

/// `{"occupied":bool,"subscribers":N,"users":N}`.
pub(crate) fn channel_json(o: Occupancy) -> String {
    serde_json::json!({ "occupied": o.users > 0, "subscribers": o.subscribers, "users": o.users })
        .to_string()
}

/// `{"users":[{"user":U,"connections":N},...]}`.
pub(crate) fn users_json(members: &[Member]) -> String {
    serde_json::json!({ "users": members }).to_string()
}

/// One node's load, as `/api/stats` lists it (and as each node stores it in Redis).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct NodeLoad {
    /// The node id.
    pub id: String,
    /// Its open WebSocket connections.
    pub connections: u64,
    /// Messages queued to its connections per second, lately.
    pub deliveries_per_s: f64,
}

/// `{"nodes":[...],"connections":N,"deliveries_per_s":X}`.
pub(crate) fn stats_json(nodes: &[NodeLoad]) -> String {
    let connections: u64 = nodes.iter().map(|n| n.connections).sum();
    let rate: f64 = nodes.iter().map(|n| n.deliveries_per_s).sum();
    serde_json::json!({ "nodes": nodes, "connections": connections, "deliveries_per_s": rate })
        .to_string()
}

/// Deliveries per second from samples of the node's delivery counter: the rate over the
/// last interval of at least one second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateMeter {
    last: (std::time::Instant, u64),
    rate: f64,
}

impl RateMeter {
    /// A meter whose first sample is `total` at `now`.
    pub(crate) fn new(now: std::time::Instant, total: u64) -> RateMeter {
        RateMeter { last: (now, total), rate: 0.0 }
    }

    /// The counter reads `total` at `now`; returns the latest rate.
    pub(crate) fn sample(&mut self, now: std::time::Instant, total: u64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last.0).as_secs_f64();
        if elapsed >= 1.0 {
            self.rate = total.saturating_sub(self.last.1) as f64 / elapsed;
            self.last = (now, total);
        }
        self.rate
    }
}

/// The embedded bus's presence owner: the whole node's members (the cluster is this
/// node), each topic's news numbers, and the node's delivery rate.
#[derive(Debug)]
pub(crate) struct LocalPresence {
    tally: Tally,
    seqs: HashMap<Box<str>, u64>,
    meter: RateMeter,
}

impl LocalPresence {
    /// No members yet.
    pub(crate) fn new(now: std::time::Instant) -> LocalPresence {
        LocalPresence {
            tally: Tally::default(),
            seqs: HashMap::new(),
            meter: RateMeter::new(now, 0),
        }
    }

    /// Applies one membership change: the news for watchers (a join or a leave) and the
    /// transition (for webhooks).
    pub(crate) fn change(
        &mut self,
        topic: &str,
        user: &str,
        joined: bool,
    ) -> (Option<News>, Transition) {
        let t = self.tally.change(topic, user, joined);
        let kind = match (t.joined, t.left) {
            (true, _) => NewsKind::Join,
            (_, true) => NewsKind::Leave,
            _ => return (None, t),
        };
        let seq = self.next_seq(topic);
        if t.vacated {
            // Nobody watches a topic with no member: its numbering can start again.
            self.seqs.remove(topic);
        }
        (Some(News::new(kind, topic, user, seq)), t)
    }

    fn next_seq(&mut self, topic: &str) -> u64 {
        let seq = self.seqs.entry(topic.into()).or_insert_with(clock_seq);
        *seq += 1;
        *seq
    }

    /// `topic`'s members and the number of its latest news.
    pub(crate) fn snapshot(&self, topic: &str) -> (Vec<Member>, u64) {
        (self.tally.members(topic), self.seqs.get(topic).copied().unwrap_or(0))
    }

    /// The members' counts.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The node's delivery rate, given its delivery counter now.
    pub(crate) fn delivery_rate(&mut self, now: std::time::Instant, total: u64) -> f64 {
        self.meter.sample(now, total)
    }
}

/// A topic's first news number: the clock in microseconds, so that numbering restarted
/// after a loss stays above every earlier number.
fn clock_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_leaves_are_per_user_and_occupancy_per_topic() {
        let mut tally = Tally::default();
        let first = tally.change("room", "ann", true);
        assert_eq!(first, Transition { joined: true, occupied: true, ..Default::default() });
        // Ann's second tab: not a join.
        assert_eq!(tally.change("room", "ann", true), Transition::default());
        assert!(tally.change("room", "bob", true).joined);
        assert_eq!(tally.occupancy("room"), Occupancy { subscribers: 3, users: 2 });
        assert_eq!(
            tally.members("room"),
            vec![
                Member { user: "ann".into(), connections: 2 },
                Member { user: "bob".into(), connections: 1 }
            ]
        );
        // One of Ann's tabs goes: she is still there.
        assert_eq!(tally.change("room", "ann", false), Transition::default());
        assert_eq!(
            tally.change("room", "ann", false),
            Transition { left: true, ..Default::default() }
        );
        assert_eq!(
            tally.change("room", "bob", false),
            Transition { left: true, vacated: true, ..Default::default() }
        );
        assert_eq!(tally.occupancy("room"), Occupancy::default());
        // A leave never counted changes nothing (no underflow, no event).
        assert_eq!(tally.change("room", "bob", false), Transition::default());
        assert_eq!(tally.topics().count(), 0);
    }

    #[test]
    fn listing_filters_by_prefix_sorts_and_caps() {
        let mut tally = Tally::default();
        for t in ["chat.b", "chat.a", "feed.x", "chat.c"] {
            tally.change(t, "u", true);
        }
        let listed: Vec<String> = tally.occupied("chat.", 2).into_iter().map(|(t, _)| t).collect();
        assert_eq!(listed, ["chat.a", "chat.b"]);
        assert_eq!(tally.occupied("", 10).len(), 4);
    }

    #[test]
    fn local_news_is_numbered_and_only_for_transitions() {
        let mut presence = LocalPresence::new(std::time::Instant::now());
        let (join, t) = presence.change("room", "ann", true);
        let join = join.expect("a join");
        assert!(t.occupied);
        assert_eq!(&join.frame[2..], br#"{"type":"join","topic":"room","user":"ann"}"#);
        assert!(presence.change("room", "ann", true).0.is_none(), "a second tab is no news");
        let (members, seq) = presence.snapshot("room");
        assert_eq!(seq, join.seq);
        assert_eq!(members, vec![Member { user: "ann".into(), connections: 2 }]);
        presence.change("room", "ann", false);
        let (leave, t) = presence.change("room", "ann", false);
        assert!(leave.expect("a leave").seq > join.seq);
        assert!(t.vacated);
    }

    #[test]
    fn api_answers_have_the_documented_shapes() {
        let o = Occupancy { subscribers: 3, users: 2 };
        assert_eq!(channel_json(o), r#"{"occupied":true,"subscribers":3,"users":2}"#);
        assert_eq!(
            channels_json(&[("a".into(), o)]),
            r#"{"channels":{"a":{"subscribers":3,"users":2}}}"#
        );
        let m = [Member { user: "ann".into(), connections: 2 }];
        assert_eq!(users_json(&m), r#"{"users":[{"connections":2,"user":"ann"}]}"#);
        assert_eq!(
            snapshot_json("t", &m),
            r#"{"type":"presence","topic":"t","members":[{"user":"ann","connections":2}]}"#
        );
        let node = NodeLoad { id: "n1".into(), connections: 5, deliveries_per_s: 2.5 };
        let stats: serde_json::Value = serde_json::from_str(&stats_json(&[node])).unwrap();
        assert_eq!(stats["connections"], 5);
        assert_eq!(stats["nodes"][0]["id"], "n1");
    }

    #[test]
    fn rate_meter_waits_a_second_between_samples() {
        let t0 = std::time::Instant::now();
        let mut meter = RateMeter::new(t0, 0);
        assert_eq!(meter.sample(t0 + std::time::Duration::from_millis(500), 100), 0.0);
        assert_eq!(meter.sample(t0 + std::time::Duration::from_secs(2), 400), 200.0);
    }
}
