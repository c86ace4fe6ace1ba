//! The embedded bus: single node, no Redis. Each stream has an owner shard, whose
//! sequencer task puts it in one order.
//!
//! Runs on: every shard, as one task ([`LocalSequencer::run`]) beside the shard's inbox
//! task. A stream's
//! owner is `bus::lane_of(stream, shards)`: every shard sends its commands about that
//! stream (publishes and interest changes) to the owner's sequencer channel, so the owner
//! sees them in one order. The owner encodes each event once and pushes it, in that order,
//! into the inbox of every shard that wants it; a shard's inbox is FIFO, so every shard
//! sees every stream in the owner's order. When a publisher's own shard is the owner, the
//! publisher sequences its event itself (after what is queued): nothing crosses a thread
//! or waits for another task until the delivery does (on a one-shard node, nothing does).
//!
//! When a destination inbox is full, the sequencer task waits for that shard (which drains
//! its inbox without ever waiting on anything); its channel fills up behind it, which makes
//! the publishing clients wait on their shards. The shard thread itself never blocks.

use std::{
    cell::RefCell,
    collections::VecDeque,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use glommio::sync::Semaphore;
use tracing::debug;

use super::{
    BusCommand, BusCommands, BusError, DONE_JSON, ReplayRequest, UserCount, interest::InterestTable,
};
use crate::{
    history::{
        self,
        memory::{HistorySettings, Idempotency, MemoryHistory},
    },
    ids::{Interest, InterestChange, NodeId, ShardId},
    presence::{
        self, LocalPresence, PresenceCommand, Query,
        webhook::{WebhookEvent, WebhookQueue},
    },
    protocol::reply::published_json,
    stats::NodeStats,
    xshard::{ShardInboxes, ShardMessage},
};

/// Most idempotency keys one sequencer remembers (the oldest are forgotten first).
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// The sequencer of the streams one shard owns. Lives in that shard (`!Send`).
///
/// Commands arrive on the shard's lane (from every shard, this one included) and are
/// processed one at a time, in arrival order, by [`run`](Self::run) — or by a publisher of
/// this shard, which takes its turn and first processes everything queued before it
/// ([`sequence_here`](Self::sequence_here)): a local publish then reaches the inboxes with
/// no task hop in between, as if the publishing shard wrote them itself.
#[derive(Debug)]
pub(crate) struct LocalSequencer {
    owner: ShardId,
    /// Who wants which stream.
    state: RefCell<Sequencer>,
    /// One command at a time: the task's turn or a local publisher's.
    turn: Semaphore,
    /// Commands the task took from the lane and has not processed yet (kept here so that
    /// whoever holds the turn processes them first, in order).
    pending: RefCell<VecDeque<BusCommand>>,
    /// This shard's lane: every shard's commands about the streams it owns.
    commands: BusCommands,
    /// Every shard's inbox.
    inboxes: ShardInboxes,
    /// To the webhook dispatcher (presence transitions); `None` without webhooks.
    webhooks: Option<WebhookQueue>,
}

impl LocalSequencer {
    /// The sequencer of shard `owner`.
    pub(crate) fn new(
        owner: ShardId,
        commands: BusCommands,
        inboxes: ShardInboxes,
        stats: Arc<NodeStats>,
        history: HistorySettings,
        idempotency_window: Duration,
        webhooks: Option<WebhookQueue>,
    ) -> Rc<LocalSequencer> {
        let sequencer = Sequencer::new(inboxes.len(), stats, history, idempotency_window);
        Rc::new(LocalSequencer {
            owner,
            state: RefCell::new(sequencer),
            turn: Semaphore::new(1),
            pending: RefCell::new(VecDeque::new()),
            commands,
            inboxes,
            webhooks,
        })
    }

    /// Processes the lane until every shard has closed it (shutdown) or the task is
    /// dropped.
    pub(crate) async fn run(self: Rc<Self>) {
        while let Ok(command) = self.commands.recv_async().await {
            // Kept in order before anyone else can take a turn (no await in between).
            self.pending.borrow_mut().push_back(command);
            let Ok(_turn) = self.turn.acquire_permit(1).await else { break };
            self.catch_up().await;
            drop(_turn);
            glommio::yield_if_needed().await;
        }
        debug!(shard = %self.owner, "sequencer stopped");
    }

    /// Sequences `command` on the calling task, after every command queued before it.
    ///
    /// # Errors
    /// [`BusError::Closed`] when the sequencer is gone (shutdown).
    pub(crate) async fn sequence_here(&self, command: BusCommand) -> Result<(), BusError> {
        let _turn = self.turn.acquire_permit(1).await.map_err(|_| BusError::Closed)?;
        self.catch_up().await;
        self.process(command).await;
        Ok(())
    }

    /// Processes what waits, in order. Only with the turn held.
    async fn catch_up(&self) {
        loop {
            let next = self.pending.borrow_mut().pop_front();
            let Some(command) = next.or_else(|| self.commands.try_recv().ok()) else { break };
            self.process(command).await;
        }
    }

    /// Applies one command; delivers a publish to every shard that wants it, in shard
    /// order, then the publisher's receipt. A full inbox is waited for (its shard drains
    /// it without waiting on anyone).
    async fn process(&self, command: BusCommand) {
        let mut targets = Vec::new();
        let Output { message, reply, webhooks } =
            self.state.borrow_mut().handle(command, &mut targets, Instant::now());
        if let Some(queue) = &self.webhooks {
            for event in webhooks {
                queue.offer(event);
            }
        }
        if let Some(message) = message {
            crate::xshard::deliver_to(&self.inboxes, &targets, message).await;
        }
        if let Some((shard, reply)) = reply {
            crate::xshard::deliver_to(&self.inboxes, &[shard], reply).await;
        }
    }
}

/// What one command produces.
#[derive(Debug, Default)]
struct Output {
    /// For the `targets` shards: a delivery, or a confirmation.
    message: Option<ShardMessage>,
    /// For one shard: a publish receipt or a replay answer.
    reply: Option<(ShardId, ShardMessage)>,
    /// For the app backend (presence transitions).
    webhooks: Vec<WebhookEvent>,
}

/// A sequencer's state: who wants the streams it owns, and their history. Pure: no I/O,
/// the clock is an argument.
#[derive(Debug)]
struct Sequencer {
    /// Shards of the node (broadcasts go to all).
    shards: u16,
    /// Which shards want which topic and user.
    interest: InterestTable,
    /// Stamped on every delivery as its origin.
    node: NodeId,
    /// The streams' ids and last events.
    history: MemoryHistory,
    /// Publish idempotency keys.
    idempotency: Idempotency,
    /// Connections of the users this sequencer owns (`max_connections_per_user`).
    user_counts: std::collections::HashMap<Box<str>, u64>,
    /// The node's members (used by the sequencer of the presence lane only).
    presence: LocalPresence,
    /// The node's counters (occupancy API's `stats`).
    stats: Arc<NodeStats>,
}

impl Sequencer {
    fn new(
        shards: usize,
        stats: Arc<NodeStats>,
        history: HistorySettings,
        window: Duration,
    ) -> Sequencer {
        let shards = u16::try_from(shards).unwrap_or(u16::MAX);
        Sequencer {
            shards,
            interest: InterestTable::default(),
            node: stats.node.clone(),
            presence: LocalPresence::new(Instant::now()),
            stats,
            history: MemoryHistory::new(history, Instant::now()),
            idempotency: Idempotency::new(window, MAX_IDEMPOTENCY_KEYS),
            user_counts: std::collections::HashMap::new(),
        }
    }

    /// Applies `command`. For a publish: fills `targets` with the shards that want it and
    /// returns the delivery, encoded here once with its id (not even encoded when nobody
    /// wants it and its stream keeps no history), plus the publisher's receipt. For a
    /// shard's new topic: the confirmation for that shard (its target): from now on it
    /// gets the topic's events. For a replay: the answer, behind every delivery so far.
    fn handle(&mut self, command: BusCommand, targets: &mut Vec<ShardId>, now: Instant) -> Output {
        targets.clear();
        match command {
            BusCommand::Interest { shard, change } => {
                let confirm = match &change {
                    InterestChange::Gained(Interest::Topic(topic)) => Some(topic.clone()),
                    _ => None,
                };
                self.interest.apply(shard, change);
                let Some(topic) = confirm else { return Output::default() };
                targets.push(shard);
                let message = Some(ShardMessage::TopicConfirmed(topic));
                Output { message, ..Output::default() }
            }
            BusCommand::Publish { event, options, reply_to, published } => {
                let route = event.route.clone();
                let receipt = |id| {
                    let (shard, conn) = reply_to?;
                    let json = published_json(&route, id).into_boxed_str();
                    let user = event.sender.as_str().into();
                    Some((shard, ShardMessage::Reply { to: conn, user, json }))
                };
                let key = options.idempotency_key.as_deref();
                if let Some(first) = key.and_then(|k| self.idempotency.seen(&route, k, now)) {
                    // A retry of a publish already stored: its id, and nothing delivered.
                    return Output { reply: receipt(Some(first)), ..Output::default() };
                }
                self.interest.targets(&route, self.shards, targets);
                let history = self
                    .history
                    .settings()
                    .rules
                    .retention_of(&route, self.history.settings().default);
                if targets.is_empty() && !history.enabled() {
                    let reply = if options.ack { receipt(None) } else { None };
                    return Output { reply, ..Output::default() };
                }
                let node = &self.node;
                let delivery = self
                    .history
                    .record(&route, now, |id| event.encode(node, id).published_at(published));
                let id = delivery.id;
                if let (Some(key), Some(id)) = (key, id) {
                    self.idempotency.remember(&route, key, id, now);
                }
                let message = (!targets.is_empty()).then_some(ShardMessage::Deliver(delivery));
                let reply = if options.ack { receipt(id) } else { None };
                Output { message, reply, ..Output::default() }
            }
            BusCommand::CountUser { user, change } => match change {
                UserCount::Admit { limit, reply_to: (shard, to) } => {
                    let count = self.user_counts.entry(user).or_insert(0);
                    let json = if *count < limit {
                        *count += 1;
                        super::admitted_json(true)
                    } else {
                        super::refused_json(*count)
                    };
                    let reply = ShardMessage::Reply { to, user: "".into(), json: json.into() };
                    Output { reply: Some((shard, reply)), ..Output::default() }
                }
                UserCount::Release => {
                    if let Some(count) = self.user_counts.get_mut(&user) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.user_counts.remove(&user);
                        }
                    }
                    Output::default()
                }
            },
            BusCommand::Control { control, reply_to } => {
                targets.extend((0..self.shards).map(ShardId));
                let reply = reply_to.map(|(shard, to)| {
                    let json = DONE_JSON.into();
                    (shard, ShardMessage::Reply { to, user: "".into(), json })
                });
                let message = Some(ShardMessage::Control(Arc::new(control)));
                Output { message, reply, ..Output::default() }
            }
            BusCommand::Replay(request) => {
                let ReplayRequest { route, since, limit, to } = *request;
                let state = self.history.state(&route, now);
                let max_replay = self.history.settings().max_replay;
                let history = &self.history;
                let answer = history::answer(since, state, max_replay, limit, |from, to| {
                    history.events(&route, from, to)
                });
                let shard = to.shard;
                let message = ShardMessage::Replayed { to: Box::new(to), answer: Box::new(answer) };
                Output { reply: Some((shard, message)), ..Output::default() }
            }
            BusCommand::Presence(command) => self.presence(command, targets, now),
        }
    }

    /// A presence command: the node is the cluster, so its transitions are the
    /// cluster's. News goes to every shard (each knows its watchers).
    fn presence(
        &mut self,
        command: PresenceCommand,
        targets: &mut Vec<ShardId>,
        now: Instant,
    ) -> Output {
        match command {
            PresenceCommand::Change { topic, user, joined } => {
                let (news, transition) = self.presence.change(&topic, &user, joined);
                let time_ms = crate::clock::unix_now_ms();
                let webhooks =
                    crate::presence::webhook::transition_events(&topic, &user, transition, time_ms);
                let Some(news) = news else { return Output { webhooks, ..Output::default() } };
                targets.extend((0..self.shards).map(ShardId));
                let message = Some(ShardMessage::Presence(Arc::new(news)));
                Output { message, webhooks, ..Output::default() }
            }
            PresenceCommand::Snapshot(to) => {
                let (members, seq) = self.presence.snapshot(&to.topic);
                let json = presence::snapshot_json(&to.topic, &members).into_boxed_str();
                let shard = to.shard;
                let message = ShardMessage::PresenceSnapshot { to, seq, json };
                Output { reply: Some((shard, message)), ..Output::default() }
            }
            PresenceCommand::Query { query, reply_to: (shard, to) } => {
                let tally = self.presence.tally();
                let json = match query {
                    Query::Channels { prefix } => presence::channels_json(
                        &tally.occupied(&prefix, presence::MAX_LISTED_CHANNELS),
                    ),
                    Query::Channel(topic) => presence::channel_json(tally.occupancy(&topic)),
                    Query::Users(topic) => presence::users_json(&tally.members(&topic)),
                    Query::Stats => {
                        let stats = &self.stats;
                        let total = stats.total(|s| &s.deliveries);
                        let load = presence::NodeLoad {
                            id: stats.node.0.to_string(),
                            connections: stats.total(|s| &s.connections),
                            deliveries_per_s: self.presence.delivery_rate(now, total),
                        };
                        presence::stats_json(&[load])
                    }
                };
                let reply = ShardMessage::Reply { to, user: "".into(), json: json.into() };
                Output { reply: Some((shard, reply)), ..Output::default() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Payload};
    use crate::ids::Route;

    fn publish(route: Route) -> BusCommand {
        BusCommand::Publish {
            event: Event { sender: "s".into(), route, payload: Payload::Text("x".into()) },
            options: Default::default(),
            reply_to: None,
            published: crate::ids::PublishedAt(0),
        }
    }

    fn settings(size: u64) -> HistorySettings {
        HistorySettings {
            rules: Default::default(),
            default: crate::history::retention::Retention { size, ttl: Duration::from_secs(60) },
            meta_ttl: Duration::from_secs(3600),
            max_replay: 1000,
        }
    }

    fn sequencer(shards: usize, history: u64) -> Sequencer {
        let stats = NodeStats::new(shards, NodeId("n".into()), false);
        Sequencer::new(shards, stats, settings(history), Duration::from_secs(300))
    }

    fn gained(shard: u16, interest: Interest) -> BusCommand {
        BusCommand::Interest { shard: ShardId(shard), change: InterestChange::Gained(interest) }
    }

    fn lost(shard: u16, interest: Interest) -> BusCommand {
        BusCommand::Interest { shard: ShardId(shard), change: InterestChange::Lost(interest) }
    }

    /// Topics and direct messages go only to the shards that want them; broadcasts to all.
    #[test]
    fn interest_decides_which_shards_receive() {
        let mut bus = sequencer(3, 0);
        let mut targets = Vec::new();
        let mut route = |bus: &mut Sequencer, command| {
            let message = bus.handle(command, &mut targets, Instant::now()).message;
            if let Some(ShardMessage::Deliver(d)) = &message {
                assert_eq!(d.origin, NodeId("n".into()));
            }
            (message.is_some(), targets.clone())
        };
        let topic = || Interest::Topic("t".into());
        let none: Vec<ShardId> = Vec::new();
        // A shard's new topic is confirmed to that shard; a new user needs no answer.
        assert_eq!(route(&mut bus, gained(1, topic())), (true, vec![ShardId(1)]));
        assert_eq!(route(&mut bus, gained(2, Interest::User("u".into()))), (false, none.clone()));
        assert_eq!(route(&mut bus, publish(Route::Topic("t".into()))), (true, vec![ShardId(1)]));
        assert_eq!(route(&mut bus, publish(Route::Topic("other".into()))), (false, none.clone()));
        assert_eq!(route(&mut bus, publish(Route::Direct("u".into()))), (true, vec![ShardId(2)]));
        assert_eq!(
            route(&mut bus, publish(Route::Broadcast)),
            (true, vec![ShardId(0), ShardId(1), ShardId(2)])
        );
        route(&mut bus, gained(2, topic()));
        route(&mut bus, lost(1, topic()));
        assert_eq!(route(&mut bus, publish(Route::Topic("t".into()))), (true, vec![ShardId(2)]));
        route(&mut bus, lost(2, topic()));
        assert_eq!(route(&mut bus, publish(Route::Topic("t".into()))), (false, none));
    }

    /// Every event of a stream gets the next offset; a retried publish with the same
    /// idempotency key gets the first one's id and is not delivered again; a replay
    /// answers what followed a position.
    #[test]
    fn ids_receipts_idempotency_and_replay() {
        use crate::{
            event::PublishOptions,
            history::Since,
            xshard::{ReplayPurpose, ReplayTo},
        };
        let mut bus = sequencer(2, 100);
        let mut targets = Vec::new();
        let now = Instant::now();
        bus.handle(gained(1, Interest::Topic("t".into())), &mut targets, now);
        let acked = |key: Option<&str>| BusCommand::Publish {
            event: Event {
                sender: "s".into(),
                route: Route::Topic("t".into()),
                payload: Payload::Text("x".into()),
            },
            options: PublishOptions { ack: true, idempotency_key: key.map(Into::into) },
            reply_to: Some((ShardId(0), crate::ids::Publisher::Conn(crate::ids::ConnId(4)))),
            published: crate::ids::PublishedAt(0),
        };
        let mut ids = Vec::new();
        for key in [None, Some("k"), Some("k"), None] {
            let out = bus.handle(acked(key), &mut targets, now);
            let delivered = matches!(out.message, Some(ShardMessage::Deliver(_)));
            let Some((ShardId(0), ShardMessage::Reply { json, .. })) = out.reply else {
                panic!("a receipt")
            };
            ids.push((delivered, json.to_string()));
        }
        let epoch = match bus.history.state(&Route::Topic("t".into()), now) {
            Some(state) => state.epoch,
            None => panic!("the topic has history"),
        };
        let receipt = |n| format!(r#"{{"type":"published","topic":"t","id":"{epoch}:{n}"}}"#);
        assert_eq!(
            ids,
            [(true, receipt(1)), (true, receipt(2)), (false, receipt(2)), (true, receipt(3))]
        );
        // A topic nobody here wants is still stored (late joiners, recovery).
        bus.handle(publish(Route::Topic("quiet".into())), &mut targets, now);
        assert_eq!(bus.history.state(&Route::Topic("quiet".into()), now).map(|s| s.top), Some(1));

        let replay = |since| {
            BusCommand::Replay(Box::new(ReplayRequest {
                route: Route::Topic("t".into()),
                since,
                limit: u64::MAX,
                to: ReplayTo {
                    shard: ShardId(1),
                    route: Route::Topic("t".into()),
                    conn: crate::ids::ConnId(2),
                    user: "u".into(),
                    token: 9,
                    purpose: ReplayPurpose::Recover,
                },
            }))
        };
        let answer = |bus: &mut Sequencer, since| match bus
            .handle(replay(since), &mut Vec::new(), now)
            .reply
        {
            Some((ShardId(1), ShardMessage::Replayed { to, answer })) => {
                assert_eq!(to.token, 9);
                let offsets: Vec<u64> =
                    answer.events.iter().filter_map(|d| d.id).map(|id| id.offset).collect();
                (answer.recovered, offsets)
            }
            other => panic!("a replay answer, got {other:?}"),
        };
        let after = |offset| Since::After(crate::ids::EventId { epoch, offset });
        assert_eq!(answer(&mut bus, after(1)), (true, vec![2, 3]));
        assert_eq!(answer(&mut bus, after(3)), (true, vec![]));
        assert_eq!(answer(&mut bus, Since::Latest), (true, vec![3]));
        assert_eq!(
            answer(&mut bus, Since::After(crate::ids::EventId { epoch: epoch - 1, offset: 1 })),
            (false, vec![])
        );
    }
}
