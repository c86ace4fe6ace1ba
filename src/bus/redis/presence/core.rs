//! This node's presence decisions, sans I/O: its own members, which of their counts it
//! writes to Redis and when, when it writes them all again, and what its heartbeat says.
//!
//! Runs on: the bridge thread, owned by the presence task (`presence::run`), which feeds
//! it the shards' commands and Redis's replies and executes its [`Effect`]s. Pure: no
//! I/O, no clock (`now` is an argument).
//!
//! - **Counts.** The node keeps its own counts (a [`Tally`]) and the users whose count
//!   changed since the last write, per topic; once the queue of commands is drained
//!   they are written (one `set` per topic, in one pipeline), then the reads that came
//!   with them are answered (so that a snapshot includes the changes sent before it, the
//!   subscriber's own first).
//! - **Resync.** At start, after every (re)connect, after a write that failed, and when a
//!   heartbeat finds the node was declared dead, it writes everything again: every topic
//!   it has members in and every topic Redis holds for it (`set` with `replace`, which
//!   also removes what a previous life of the node left behind), then beats at once (the
//!   node is listed in `/api/stats` from its first write on).
//! - **Heartbeat**, every fifth of `presence_ttl` ([`PresenceCore::beat_every`]), with
//!   the node's load (its connections and delivery rate).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::script::MAX_DUE_PER_BEAT;
use crate::presence::{Member, NodeLoad, PresenceCommand, Query, RateMeter, Tally};

/// The arguments of one call of the presence script (after its SHA and key count).
pub(crate) type ScriptArgs = Vec<String>;

/// What the presence task must do next, in order; what a reply leads to comes before the
/// rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Read the topics Redis holds for this node (`SMEMBERS` of this key) and hand them to
    /// [`PresenceCore::handle_index`].
    ReadIndex(String),
    /// Run these `set` calls, in order, in one pipeline (offering the webhooks each
    /// returns) and hand whether all of them succeeded to [`PresenceCore::handle_written`].
    /// `whole`: the node's whole contribution.
    Write { calls: Vec<ScriptArgs>, whole: bool },
    /// Beat: run [`PresenceCore::beat_args`] and hand the reply to
    /// [`PresenceCore::handle_beat`].
    Beat,
}

/// This node's side of presence. See the module docs.
#[derive(Debug)]
pub(crate) struct PresenceCore {
    prefix: String,
    node: String,
    ttl: Duration,
    /// The vacate delay, when this node sends webhooks.
    delay: Option<Duration>,
    /// This node's members.
    tally: Tally,
    /// Users whose count changed since the last write, per topic.
    dirty: HashMap<Box<str>, HashSet<Box<str>>>,
    /// Write everything again at the next chance.
    resync: bool,
    /// A heartbeat has registered the node (so a later one that finds it missing means
    /// it was declared dead).
    registered: bool,
    /// The node's delivery rate, sampled at each heartbeat.
    meter: RateMeter,
}

impl PresenceCore {
    /// Presence of node `node` under the channel prefix `prefix`; `delay`: the vacate
    /// delay, when this node sends webhooks. It writes everything at its first chance.
    pub(crate) fn new(
        prefix: &str,
        node: &str,
        ttl: Duration,
        delay: Option<Duration>,
        now: Instant,
    ) -> PresenceCore {
        PresenceCore {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            ttl,
            delay,
            tally: Tally::default(),
            dirty: HashMap::new(),
            resync: true,
            registered: false,
            meter: RateMeter::new(now, 0),
        }
    }

    /// How often the node beats: a fifth of `presence_ttl` (at least 100 ms).
    pub(crate) fn beat_every(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_millis(100))
    }

    /// A shard's command: a membership change is counted (written once the queue is
    /// drained); a read is returned, to be answered after that write.
    pub(crate) fn handle_command(&mut self, command: PresenceCommand) -> Option<PresenceCommand> {
        match command {
            PresenceCommand::Change { topic, user, joined } => {
                self.tally.change(&topic, &user, joined);
                self.dirty.entry(topic).or_default().insert(user);
                None
            }
            read => Some(read),
        }
    }

    /// Redis (re)connected: everything is written again.
    pub(crate) fn handle_reconnected(&mut self) {
        self.resync = true;
    }

    /// The queue of commands is drained: the write, when `connected` (otherwise
    /// everything is written again once it is).
    pub(crate) fn handle_drained(&mut self, connected: bool) -> Vec<Effect> {
        if connected {
            self.flush()
        } else {
            self.resync = true;
            Vec::new()
        }
    }

    /// The heartbeat's tick: when `connected`, the write, then the heartbeat.
    pub(crate) fn handle_tick(&mut self, connected: bool) -> Vec<Effect> {
        if !connected {
            return Vec::new();
        }
        let mut effects = self.flush();
        effects.push(Effect::Beat);
        effects
    }

    /// What changed, or (after a loss) everything, to write.
    fn flush(&mut self) -> Vec<Effect> {
        if std::mem::take(&mut self.resync) {
            self.dirty.clear();
            let index = format!("{}presence:index:{}", self.prefix, self.node);
            return vec![Effect::ReadIndex(index)];
        }
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() {
            return Vec::new();
        }
        let calls = dirty
            .iter()
            .map(|(topic, users)| {
                let counts = users.iter().map(|u| (&**u, self.tally.count(topic, u)));
                self.set_args(topic, false, counts)
            })
            .collect();
        vec![Effect::Write { calls, whole: false }]
    }

    /// The topics Redis holds for this node (`None`: the read failed, everything is
    /// written again at the next chance): the whole contribution's write — every topic
    /// it has members in, and every other topic Redis holds for it, emptied.
    pub(crate) fn handle_index(&mut self, in_redis: Option<Vec<String>>) -> Vec<Effect> {
        let Some(in_redis) = in_redis else {
            self.resync = true;
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut calls: Vec<ScriptArgs> = self
            .tally
            .topics()
            .map(|(topic, users)| {
                seen.insert(topic.to_owned());
                self.set_args(topic, true, users.into_iter())
            })
            .collect();
        for topic in in_redis.iter().filter(|t| !seen.contains(*t)) {
            calls.push(self.set_args(topic, true, std::iter::empty()));
        }
        vec![Effect::Write { calls, whole: true }]
    }

    /// A write ran: `ok` when every call succeeded (otherwise everything is written again
    /// at the next chance). The whole contribution written, the node beats at once.
    pub(crate) fn handle_written(&mut self, whole: bool, ok: bool) -> Vec<Effect> {
        if !ok {
            self.resync = true;
            return Vec::new();
        }
        if whole { vec![Effect::Beat] } else { Vec::new() }
    }

    /// The heartbeat's call at `now`, with the node's load: its `connections` and the
    /// total of its `deliveries` so far.
    pub(crate) fn beat_args(
        &mut self,
        now: Instant,
        connections: u64,
        deliveries: u64,
    ) -> ScriptArgs {
        let load = NodeLoad {
            id: self.node.clone(),
            connections,
            deliveries_per_s: self.meter.sample(now, deliveries),
        };
        let mut args = self.args("beat");
        args.extend([
            self.node.clone(),
            (self.ttl.as_millis() as u64).to_string(),
            serde_json::to_string(&load).unwrap_or_default(),
            MAX_DUE_PER_BEAT.to_string(),
        ]);
        args
    }

    /// A heartbeat's reply: whether Redis knew the node (`found`). Returns `true` when it
    /// had been declared dead (no heartbeat for `presence_ttl`): everything is written
    /// again.
    pub(crate) fn handle_beat(&mut self, found: bool) -> bool {
        let declared_dead = !found && self.registered;
        if declared_dead {
            self.resync = true;
        }
        self.registered = true;
        declared_dead
    }

    /// The call that reads `topic`'s snapshot.
    pub(crate) fn snapshot_args(&self, topic: &str) -> ScriptArgs {
        let mut args = self.args("snapshot");
        args.push(topic.to_owned());
        args
    }

    /// `topic`'s members on this node: the snapshot while Redis is away (news resumes
    /// when it is back; the watcher is told what is known).
    pub(crate) fn own_members(&self, topic: &str) -> Vec<Member> {
        self.tally.members(topic)
    }

    /// The call that answers an API question.
    pub(crate) fn query_args(&self, query: &Query) -> ScriptArgs {
        let (op, arg) = match query {
            Query::Channels { prefix } => ("channels", prefix.clone()),
            Query::Channel(topic) => ("channel", topic.clone()),
            Query::Users(topic) => ("users", topic.clone()),
            Query::Stats => ("stats", (self.ttl.as_millis() as u64).to_string()),
        };
        let mut args = self.args(op);
        args.push(arg);
        args
    }

    /// The script's first arguments: the operation, the prefix, the vacate delay in ms
    /// (`-1`: no webhooks).
    fn args(&self, op: &str) -> ScriptArgs {
        let delay = self.delay.map_or(-1, |d| d.as_millis() as i64);
        vec![op.to_owned(), self.prefix.clone(), delay.to_string()]
    }

    /// A `set` call: this node's counts of `topic`'s users (`replace`: and none of the
    /// users it does not list).
    fn set_args<'a>(
        &self,
        topic: &str,
        replace: bool,
        counts: impl Iterator<Item = (&'a str, u64)>,
    ) -> ScriptArgs {
        let mut args = self.args("set");
        args.extend([
            self.node.clone(),
            topic.to_owned(),
            if replace { "1" } else { "0" }.to_owned(),
        ]);
        for (user, count) in counts {
            args.push(user.to_owned());
            args.push(count.to_string());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(delay: Option<Duration>) -> PresenceCore {
        PresenceCore::new("p:", "n1", Duration::from_secs(10), delay, Instant::now())
    }

    fn change(topic: &str, user: &str, joined: bool) -> PresenceCommand {
        PresenceCommand::Change { topic: topic.into(), user: user.into(), joined }
    }

    fn args(all: &[&str]) -> ScriptArgs {
        all.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A core past its first whole write and heartbeat.
    fn synced() -> PresenceCore {
        let mut core = core(None);
        assert_eq!(
            core.handle_drained(true),
            vec![Effect::ReadIndex("p:presence:index:n1".into())]
        );
        let write = core.handle_index(Some(Vec::new()));
        assert_eq!(write, vec![Effect::Write { calls: Vec::new(), whole: true }]);
        assert_eq!(core.handle_written(true, true), vec![Effect::Beat]);
        assert!(!core.handle_beat(false), "the first heartbeat registers the node");
        core
    }

    #[test]
    fn changes_are_written_once_the_queue_is_drained() {
        let mut core = synced();
        assert!(core.handle_command(change("room", "ann", true)).is_none());
        assert!(core.handle_command(change("room", "ann", true)).is_none());
        assert_eq!(
            core.handle_drained(true),
            vec![Effect::Write {
                calls: vec![args(&["set", "p:", "-1", "n1", "room", "0", "ann", "2"])],
                whole: false
            }]
        );
        assert_eq!(core.handle_written(false, true), Vec::new());
        assert_eq!(core.handle_drained(true), Vec::new(), "nothing changed since");
        // The tick writes what changed, then beats.
        core.handle_command(change("room", "ann", false));
        let tick = core.handle_tick(true);
        assert_eq!(tick.len(), 2);
        assert_eq!(
            tick[0],
            Effect::Write {
                calls: vec![args(&["set", "p:", "-1", "n1", "room", "0", "ann", "1"])],
                whole: false
            }
        );
        assert_eq!(tick[1], Effect::Beat);
        assert_eq!(core.handle_tick(false), Vec::new(), "disconnected: no tick");
    }

    #[test]
    fn reads_are_handed_back_and_changes_counted() {
        let mut core = synced();
        let query = PresenceCommand::Query {
            query: Query::Users("room".into()),
            reply_to: (crate::ids::ShardId(0), crate::ids::Publisher::Waiter(7)),
        };
        assert!(matches!(core.handle_command(query), Some(PresenceCommand::Query { .. })));
        assert_eq!(core.handle_drained(true), Vec::new(), "a read writes nothing");
        assert_eq!(core.snapshot_args("room"), args(&["snapshot", "p:", "-1", "room"]));
    }

    #[test]
    fn a_loss_writes_everything_again_then_beats() {
        let mut core = synced();
        core.handle_command(change("room", "ann", true));
        core.handle_command(change("hall", "bob", true));
        core.handle_reconnected();
        // Disconnected: nothing yet.
        assert_eq!(core.handle_drained(false), Vec::new());
        let effects = core.handle_drained(true);
        assert_eq!(effects, vec![Effect::ReadIndex("p:presence:index:n1".into())]);
        // Redis holds a topic the node has no members in any more: emptied.
        let Effect::Write { mut calls, whole: true } =
            core.handle_index(Some(vec!["room".into(), "gone".into()])).remove(0)
        else {
            panic!("a whole write");
        };
        let last = calls.pop();
        calls.sort();
        assert_eq!(
            calls,
            vec![
                args(&["set", "p:", "-1", "n1", "hall", "1", "bob", "1"]),
                args(&["set", "p:", "-1", "n1", "room", "1", "ann", "1"]),
            ]
        );
        assert_eq!(last, Some(args(&["set", "p:", "-1", "n1", "gone", "1"])));
        assert_eq!(core.handle_written(true, true), vec![Effect::Beat]);
        assert_eq!(core.handle_drained(true), Vec::new(), "the changes were in the whole write");
    }

    #[test]
    fn a_failed_read_or_write_is_made_good_by_a_whole_write() {
        let mut core = synced();
        assert_eq!(core.handle_index(None), Vec::new());
        assert!(matches!(core.handle_drained(true)[..], [Effect::ReadIndex(_)]));
        core.handle_index(Some(Vec::new()));
        assert_eq!(core.handle_written(true, false), Vec::new(), "no beat after a failure");
        assert!(matches!(core.handle_tick(true)[..], [Effect::ReadIndex(_), Effect::Beat]));
        core.handle_index(Some(Vec::new()));
        core.handle_written(true, true);
        core.handle_command(change("room", "ann", true));
        assert!(matches!(core.handle_drained(true)[..], [Effect::Write { whole: false, .. }]));
        assert_eq!(core.handle_written(false, false), Vec::new());
        assert!(matches!(core.handle_drained(true)[..], [Effect::ReadIndex(_)]));
    }

    #[test]
    fn a_node_declared_dead_writes_everything_again() {
        let mut core = synced();
        assert!(!core.handle_beat(true));
        assert_eq!(core.handle_drained(true), Vec::new());
        assert!(core.handle_beat(false), "Redis no longer knew the node");
        assert!(matches!(core.handle_drained(true)[..], [Effect::ReadIndex(_)]));
    }

    #[test]
    fn the_heartbeat_carries_the_load_and_the_limits() {
        let t0 = Instant::now();
        let mut core = PresenceCore::new(
            "p:",
            "n1",
            Duration::from_secs(10),
            Some(Duration::from_millis(2500)),
            t0,
        );
        assert_eq!(core.beat_every(), Duration::from_secs(2));
        let beat = core.beat_args(t0 + Duration::from_secs(2), 3, 100);
        assert_eq!(
            beat,
            args(&[
                "beat",
                "p:",
                "2500",
                "n1",
                "10000",
                r#"{"id":"n1","connections":3,"deliveries_per_s":50.0}"#,
                "500"
            ])
        );
        let short = PresenceCore::new("p:", "n1", Duration::from_millis(100), None, t0);
        assert_eq!(short.beat_every(), Duration::from_millis(100));
        assert_eq!(core.query_args(&Query::Stats), args(&["stats", "p:", "2500", "10000"]));
        assert_eq!(
            core.query_args(&Query::Channels { prefix: "ro".into() }),
            args(&["channels", "p:", "2500", "ro"])
        );
    }

    #[test]
    fn own_members_answer_while_redis_is_away() {
        let mut core = synced();
        core.handle_command(change("room", "ann", true));
        assert_eq!(core.own_members("room"), vec![Member { user: "ann".into(), connections: 1 }]);
        assert_eq!(core.own_members("hall"), Vec::new());
    }
}
