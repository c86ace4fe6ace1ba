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

use std::{cell::RefCell, collections::VecDeque, rc::Rc, sync::Arc};

use glommio::sync::Semaphore;
use tracing::debug;

use super::{BusCommand, BusCommands, BusError, interest::InterestTable};
use crate::xshard::{
    Delivery, Interest, InterestChange, NodeId, ShardId, ShardInboxes, ShardMessage,
};

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
}

impl LocalSequencer {
    /// The sequencer of shard `owner`.
    pub(crate) fn new(
        owner: ShardId,
        commands: BusCommands,
        inboxes: ShardInboxes,
        node: NodeId,
    ) -> Rc<LocalSequencer> {
        Rc::new(LocalSequencer {
            owner,
            state: RefCell::new(Sequencer::new(inboxes.len(), node)),
            turn: Semaphore::new(1),
            pending: RefCell::new(VecDeque::new()),
            commands,
            inboxes,
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
    /// order. A full inbox is waited for (its shard drains it without waiting on anyone).
    async fn process(&self, command: BusCommand) {
        let mut targets = Vec::new();
        let Some(message) = self.state.borrow_mut().handle(command, &mut targets) else { return };
        crate::xshard::deliver_to(&self.inboxes, &targets, message).await;
    }
}

/// A sequencer's state: who wants the streams it owns. Pure: no I/O.
#[derive(Debug)]
struct Sequencer {
    /// Shards of the node (broadcasts go to all).
    shards: u16,
    /// Which shards want which topic and user.
    interest: InterestTable,
    /// Stamped on every delivery as its origin.
    node: NodeId,
}

impl Sequencer {
    fn new(shards: usize, node: NodeId) -> Sequencer {
        let shards = u16::try_from(shards).unwrap_or(u16::MAX);
        Sequencer { shards, interest: InterestTable::default(), node }
    }

    /// Applies `command`. For a publish, fills `targets` with the shards that want it
    /// and returns the delivery, encoded here once — or `None`, without
    /// encoding, when no shard wants it. For a shard's new topic, returns the
    /// confirmation for that shard (its target): from now on it gets the topic's events.
    fn handle(&mut self, command: BusCommand, targets: &mut Vec<ShardId>) -> Option<ShardMessage> {
        targets.clear();
        match command {
            BusCommand::Interest { shard, change } => {
                let confirm = match &change {
                    InterestChange::Gained(Interest::Topic(topic)) => Some(topic.clone()),
                    _ => None,
                };
                self.interest.apply(shard, change);
                let topic = confirm?;
                targets.push(shard);
                Some(ShardMessage::TopicConfirmed(topic))
            }
            BusCommand::Publish { event, .. } => {
                self.interest.targets(&event.route, self.shards, targets);
                // Nobody on this node wants it: not even encoded.
                if targets.is_empty() {
                    return None;
                }
                let delivery: Arc<Delivery> = Arc::new(event.encode(&self.node));
                Some(ShardMessage::Deliver(delivery))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Payload};
    use crate::xshard::Route;

    fn publish(route: Route) -> BusCommand {
        BusCommand::Publish {
            event: Event { sender: "s".into(), route, payload: Payload::Text("x".into()) },
            reply_to: None,
        }
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
        let mut bus = Sequencer::new(3, NodeId("n".into()));
        let mut targets = Vec::new();
        let mut route = |bus: &mut Sequencer, command| {
            let message = bus.handle(command, &mut targets);
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
}
