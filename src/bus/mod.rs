//! The bus: how an event published on one shard reaches the shards (and, with Redis, the
//! nodes) whose connections want it, in one order per stream.
//!
//! Runs on: shard threads.
//! - **Shard side** ([`BusHandle`]): one per shard, `!Send`, inside the shard. Clients'
//!   publishes and the shard's [`InterestChange`]s go through it as [`BusCommand`]s, in
//!   the order the shard issued them, to the **sequencer** of their stream.
//! - **Sequencer side**: whoever puts a stream in one order, encodes each of its events
//!   **once**, and hands the same `Arc<Delivery>` to the inbox of every shard that wants
//!   it (`xshard::ShardMessage`). With the embedded bus ([`embedded`]) every stream has
//!   an **owner shard** (a hash of the stream's name) whose `LocalSequencer` does this —
//!   in its own task for commands from other shards, and inline in the publishing
//!   connection's task when the publisher is on the owner shard (no hop). With Redis
//!   ([`redis`]), every shard has one lane, to the bridge thread; Redis orders the
//!   streams, and the bridge hands what Redis sends it to the interested shards.
//!
//! A handle has one **lane** per sequencer (a bounded channel): commands about one
//! stream always take the same lane, so they stay in order; commands about different
//! streams never wait for each other. A stream that is hot on every shard has one owner
//! shard doing its encoding and its pushes into the inboxes; that is the price of one
//! order (the old per-publisher path spread the encoding over the publishers' shards).
//!
//! Contract for every bus implementation (tests/bus_contract.rs checks it):
//! - **One order per stream.** Every subscriber of a topic, on every shard, sees that
//!   topic's events in the same order; so for broadcasts and for each user's direct
//!   messages. (This implies per-publisher order: one connection's events reach every
//!   receiver in the order it published them.)
//! - **Exactly once** to every connection the route names when the event arrives.
//! - **Confirmation.** Every topic a shard gains is confirmed to it
//!   (`ShardMessage::TopicConfirmed`) once the shard receives the topic's events; the
//!   shard's subscribers are told `subscribed` then (`shard::subs`).
//! - **Interest.** A shard gets a topic's events only while it has a subscriber of that
//!   topic, and a user's direct messages only while it has a connection of that user; the
//!   broadcast stream always. A shard's interest changes and publishes about one stream
//!   are applied in the order the shard issued them, so a client that subscribes and then
//!   publishes to the topic receives its own event.
//! - **Never blocks a shard.** A publish that finds its lane full waits in the publishing
//!   connection's task only (its reads pause: backpressure on that one client); interest
//!   changes never wait.

pub(crate) mod embedded;
pub(crate) mod interest;
pub(crate) mod redis;

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    hash::{Hash, Hasher},
    rc::Rc,
};

use crate::{
    event::{Event, PublishOptions},
    history::Since,
    ids::{Interest, InterestChange, PublishedAt, Publisher, Route, ShardId},
    presence::{PRESENCE_STREAM, PresenceCommand, Query, SnapshotTo},
    xshard::{ClusterControl, ReplayTo},
};

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BusError {
    /// The node is shutting down: the stream's sequencer is gone. The event is dropped.
    #[error("bus closed (node shutting down)")]
    Closed,
}

/// What a shard sends to a stream's sequencer (`Send`).
#[derive(Debug)]
pub(crate) enum BusCommand {
    /// A client's event, to sequence, encode once and deliver.
    Publish {
        /// The event.
        event: Event,
        /// Receipt and idempotency key.
        options: PublishOptions,
        /// The publishing v1 connection, told if the event could not reach every node,
        /// and sent its receipt (`None` for seed-mode publishers: that protocol has no
        /// replies).
        reply_to: Option<(ShardId, Publisher)>,
        /// When the publishing shard took it in.
        published: PublishedAt,
    },
    /// A connection wants past events of a stream (recovery, `latest`, a history page).
    Replay(Box<ReplayRequest>),
    /// A user's connection count (`max_connections_per_user`), kept by the user's
    /// sequencer: the embedded owner shard, or Redis.
    CountUser {
        /// The user.
        user: Box<str>,
        /// Admit one more, or release one.
        change: UserCount,
    },
    /// A command for every node's connections (server API), answered `{"type":"done"}`
    /// once every node will apply it (with Redis: once published), or `unavailable`.
    Control {
        /// The command.
        control: ClusterControl,
        /// The API request to answer.
        reply_to: Option<(ShardId, Publisher)>,
    },
    /// Membership, presence snapshots and occupancy questions, for the node's presence
    /// owner (one lane: [`PRESENCE_STREAM`]).
    Presence(PresenceCommand),
    /// A shard's interest changed.
    Interest {
        /// The shard whose interest it is.
        shard: ShardId,
        /// What changed.
        change: InterestChange,
    },
}

impl BusCommand {
    /// The name of the stream the command is about (`""` for broadcasts); commands about
    /// one stream go to one sequencer.
    fn stream(&self) -> &str {
        match self {
            BusCommand::Publish { event, .. } => match &event.route {
                Route::Broadcast => "",
                Route::Topic(name) | Route::Direct(name) => name,
            },
            BusCommand::Replay(request) => match &request.route {
                Route::Broadcast => "",
                Route::Topic(name) | Route::Direct(name) => name,
            },
            BusCommand::Control { .. } => "",
            BusCommand::Presence(_) => PRESENCE_STREAM,
            BusCommand::CountUser { user, .. } => user,
            BusCommand::Interest { change, .. } => match change {
                InterestChange::Gained(i) | InterestChange::Lost(i) => match i {
                    Interest::Topic(name) | Interest::User(name) => name,
                },
            },
        }
    }
}

/// A change of a user's connection count.
#[derive(Debug)]
pub(crate) enum UserCount {
    /// One more connection if the user has fewer than `limit` across the cluster: answered
    /// [`admitted_json`] (counted or, Redis being away, not) or [`refused_json`].
    Admit {
        /// The limit.
        limit: u64,
        /// The waiting upgrade.
        reply_to: (ShardId, Publisher),
    },
    /// A counted connection closed.
    Release,
}

/// The answer to an admitted [`UserCount::Admit`]; `counted: false` when the count could
/// not be kept (Redis away: the limit is not enforced then).
pub(crate) fn admitted_json(counted: bool) -> String {
    format!(r#"{{"type":"admitted","counted":{counted}}}"#)
}

/// The answer to a refused [`UserCount::Admit`]: the user already has `connections`.
pub(crate) fn refused_json(connections: u64) -> String {
    format!(r#"{{"type":"refused","connections":{connections}}}"#)
}

/// The answer to a [`BusCommand::Control`] that every node will apply.
pub(crate) const DONE_JSON: &str = r#"{"type":"done"}"#;

/// A connection's request for past events of one stream. Answered with
/// `ShardMessage::Replayed` in the asking shard's inbox, **after** every live event of
/// the stream up to the answer's position and before every later one: the shard holds
/// the connection's live events of the stream until then, so nothing is missed or sent
/// twice.
#[derive(Debug)]
pub(crate) struct ReplayRequest {
    /// The stream.
    pub route: Route,
    /// Where to start.
    pub since: Since,
    /// Most events (a history page; `u64::MAX` for a recovery, which has the replay limit).
    pub limit: u64,
    /// Who gets the answer.
    pub to: ReplayTo,
}

/// A sequencer's receiving end of every shard's commands for its streams.
pub(crate) type BusCommands = flume::Receiver<BusCommand>;

/// Creates one lane: `capacity` commands in flight before publishers wait.
pub(crate) fn command_channel(capacity: usize) -> (flume::Sender<BusCommand>, BusCommands) {
    flume::bounded(capacity)
}

/// The lane (sequencer) of a stream among `lanes`: a stable hash of its name, the same
/// on every shard. Topics and users share the hash space: a topic and a user of the same
/// name share a sequencer, which costs nothing.
pub(crate) fn lane_of(stream: &str, lanes: usize) -> usize {
    // `DefaultHasher::new()` has fixed keys: every shard computes the same lane.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    stream.hash(&mut hasher);
    (hasher.finish() % lanes.max(1) as u64) as usize
}

/// A command waiting on the shard side for room in its lane, with whoever waits for it
/// to be handed over.
#[derive(Debug)]
struct Waiting {
    command: BusCommand,
    /// Told when the command is in the lane (a waiting publish).
    handed_over: Option<flume::Sender<()>>,
}

/// One lane of a [`BusHandle`]: the channel to one sequencer and what waits for room in
/// it.
#[derive(Debug)]
struct Lane {
    /// Sending half of the sequencer's channel; `None` once closed (shutdown).
    tx: RefCell<Option<flume::Sender<BusCommand>>>,
    /// Commands that found the channel full, oldest first.
    backlog: RefCell<VecDeque<Waiting>>,
    /// A task is handing the backlog over (its current command is out of `backlog`).
    draining: Cell<bool>,
}

impl Lane {
    fn sender(&self) -> Result<flume::Sender<BusCommand>, BusError> {
        self.tx.borrow().clone().ok_or(BusError::Closed)
    }

    fn backlogged(&self) -> bool {
        self.draining.get() || !self.backlog.borrow().is_empty()
    }

    /// Puts `command` in the channel now if nothing waits before it and there is room.
    /// Returns it back when it must wait behind the backlog (or for room), so that no
    /// command overtakes an earlier one.
    ///
    /// # Errors
    /// [`BusError::Closed`] when the lane is closed (shutdown).
    fn try_send_in_order(&self, command: BusCommand) -> Result<Option<BusCommand>, BusError> {
        let tx = self.sender()?;
        if self.backlogged() {
            return Ok(Some(command));
        }
        match tx.try_send(command) {
            Ok(()) => Ok(None),
            Err(flume::TrySendError::Full(command)) => Ok(Some(command)),
            Err(flume::TrySendError::Disconnected(_)) => Err(BusError::Closed),
        }
    }
}

/// A shard's end of the bus. Lives in its shard (`!Send`: `Rc` and `Cell`s, no atomics).
///
/// Keeps each lane's commands in order: while earlier commands wait for room (the
/// backlog), later ones queue behind them instead of overtaking.
#[derive(Debug)]
pub(crate) struct BusHandle {
    shard: ShardId,
    /// One per sequencer, in lane order.
    lanes: Box<[Lane]>,
    /// This shard's own sequencer and its lane number, when the bus runs in the shards
    /// (embedded): publishes it owns are sequenced on the publisher's task.
    local: Option<(usize, Rc<embedded::LocalSequencer>)>,
}

impl BusHandle {
    /// The handle of `shard`, with one lane per sender in `lanes`; `local` is this shard's
    /// own sequencer and its lane number, if it has one.
    pub(crate) fn new(
        shard: ShardId,
        lanes: Vec<flume::Sender<BusCommand>>,
        local: Option<(usize, Rc<embedded::LocalSequencer>)>,
    ) -> Rc<BusHandle> {
        let lanes = lanes
            .into_iter()
            .map(|tx| Lane {
                tx: RefCell::new(Some(tx)),
                backlog: RefCell::new(VecDeque::new()),
                draining: Cell::new(false),
            })
            .collect();
        Rc::new(BusHandle { shard, lanes, local })
    }

    fn lane_for(&self, command: &BusCommand) -> usize {
        lane_of(command.stream(), self.lanes.len())
    }

    /// Publishes `event`. Resolves once its sequencer has taken it (it is then sequenced
    /// and delivered without this connection's help). `reply_to` is the publishing v1
    /// connection, told when the event could not reach the other nodes.
    ///
    /// # Errors
    /// [`BusError::Closed`] when the node is shutting down.
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves may or may not publish the event.
    pub(crate) async fn publish(
        self: &Rc<Self>,
        event: Event,
        options: PublishOptions,
        reply_to: Option<Publisher>,
    ) -> Result<(), BusError> {
        let reply_to = reply_to.map(|conn| (self.shard, conn));
        let published = PublishedAt::now();
        let command = BusCommand::Publish { event, options, reply_to, published };
        let at = self.lane_for(&command);
        let lane = &self.lanes[at];
        if let Some((own, sequencer)) = &self.local
            && *own == at
            && !lane.backlogged()
        {
            // This shard owns the stream: sequence it here, after what its lane holds
            // (this shard's earlier interest changes included).
            lane.sender()?;
            return sequencer.sequence_here(command).await;
        }
        let Some(command) = lane.try_send_in_order(command)? else { return Ok(()) };
        let (done_tx, done_rx) = flume::bounded(1);
        self.push_backlog(at, Waiting { command, handed_over: Some(done_tx) });
        done_rx.recv_async().await.map_err(|_| BusError::Closed)
    }

    /// Reports an interest change of this shard. Never waits; a change that finds its
    /// lane full is handed over by a background task, still in order. Ignored after
    /// shutdown began.
    pub(crate) fn change_interest(self: &Rc<Self>, change: InterestChange) {
        self.send_in_background(BusCommand::Interest { shard: self.shard, change });
    }

    /// Asks for past events of a stream; the answer comes through the shard's inbox.
    /// Never waits (like an interest change), and stays in order with them.
    pub(crate) fn request_replay(self: &Rc<Self>, request: ReplayRequest) {
        self.send_in_background(BusCommand::Replay(Box::new(request)));
    }

    /// Sends a cluster command (server API); the answer goes to `reply_to`. Never waits.
    pub(crate) fn control(self: &Rc<Self>, control: ClusterControl, reply_to: Publisher) {
        let reply_to = Some((self.shard, reply_to));
        self.send_in_background(BusCommand::Control { control, reply_to });
    }

    /// Asks for one more connection of `user` under `limit`; the answer goes to the
    /// waiter `ticket`. Never waits.
    pub(crate) fn admit_user(self: &Rc<Self>, user: &str, limit: u64, ticket: u64) {
        let reply_to = (self.shard, Publisher::Waiter(ticket));
        let change = UserCount::Admit { limit, reply_to };
        self.send_in_background(BusCommand::CountUser { user: user.into(), change });
    }

    /// A counted connection of `user` closed. Never waits.
    pub(crate) fn release_user(self: &Rc<Self>, user: &str) {
        let change = UserCount::Release;
        self.send_in_background(BusCommand::CountUser { user: user.into(), change });
    }

    /// One connection of `user` subscribed to `topic` (`joined`) or stopped being
    /// subscribed. Never waits.
    pub(crate) fn presence_change(self: &Rc<Self>, topic: &str, user: &str, joined: bool) {
        let change = PresenceCommand::Change { topic: topic.into(), user: user.into(), joined };
        self.send_in_background(BusCommand::Presence(change));
    }

    /// Asks for a topic's members; the answer comes through the shard's inbox
    /// (`ShardMessage::PresenceSnapshot`). Never waits.
    pub(crate) fn presence_snapshot(self: &Rc<Self>, to: SnapshotTo) {
        self.send_in_background(BusCommand::Presence(PresenceCommand::Snapshot(Box::new(to))));
    }

    /// Asks an occupancy question (server API); the answer goes to the waiter `ticket`.
    /// Never waits.
    pub(crate) fn presence_query(self: &Rc<Self>, query: Query, ticket: u64) {
        let reply_to = (self.shard, Publisher::Waiter(ticket));
        self.send_in_background(BusCommand::Presence(PresenceCommand::Query { query, reply_to }));
    }

    /// Sends `command` now, or through the lane's backlog task when the lane is full.
    fn send_in_background(self: &Rc<Self>, command: BusCommand) {
        let at = self.lane_for(&command);
        if let Ok(Some(command)) = self.lanes[at].try_send_in_order(command) {
            self.push_backlog(at, Waiting { command, handed_over: None });
        }
    }

    fn push_backlog(self: &Rc<Self>, at: usize, waiting: Waiting) {
        let lane = &self.lanes[at];
        lane.backlog.borrow_mut().push_back(waiting);
        if !lane.draining.replace(true) {
            glommio::spawn_local(self.clone().drain_backlog(at)).detach();
        }
    }

    /// Hands lane `at`'s backlog over in order, waiting for room as needed.
    async fn drain_backlog(self: Rc<Self>, at: usize) {
        let lane = &self.lanes[at];
        loop {
            let next = lane.backlog.borrow_mut().pop_front();
            let Some(Waiting { command, handed_over }) = next else { break };
            let Ok(tx) = lane.sender() else { break };
            if tx.send_async(command).await.is_err() {
                break;
            }
            if let Some(done) = handed_over {
                let _ = done.try_send(());
            }
        }
        // Closed: waiting publishers see their sender dropped and get `Closed`.
        lane.backlog.borrow_mut().clear();
        lane.draining.set(false);
    }

    /// Stops using the bus (shutdown): later publishes fail with [`BusError::Closed`].
    pub(crate) fn close(&self) {
        for lane in self.lanes.iter() {
            lane.tx.borrow_mut().take();
            lane.backlog.borrow_mut().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shard must agree on a stream's lane, and streams spread over the lanes.
    #[test]
    fn lanes_are_stable_and_spread() {
        assert_eq!(lane_of("chat.room-1", 4), lane_of("chat.room-1", 4));
        assert_eq!(lane_of("anything", 1), 0);
        let used: std::collections::HashSet<usize> =
            (0..100).map(|i| lane_of(&format!("topic-{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
        // A publish and an interest change about one topic take the same lane.
        let publish = BusCommand::Publish {
            event: Event {
                sender: "u".into(),
                route: Route::Topic("t".into()),
                payload: crate::event::Payload::Text("x".into()),
            },
            options: PublishOptions::default(),
            reply_to: None,
            published: PublishedAt(0),
        };
        let interest = BusCommand::Interest {
            shard: ShardId(1),
            change: InterestChange::Gained(Interest::Topic("t".into())),
        };
        assert_eq!(publish.stream(), interest.stream());
    }
}
