//! The embedded bus: single node, no Redis. One thread sequences every stream.
//!
//! Runs on: its own OS thread ("bus"), spawned by `server` before the shards and pinned
//! to the last CPU the process may use (shared with a shard when there are few CPUs: it
//! sleeps in `recv` when nothing is published). It is the single place where streams are
//! put in order, as Redis will be for the bridge: commands from all shards arrive on one
//! channel, and each event is encoded once and pushed, in arrival order, into the inbox
//! of every shard that wants it. A shard's inbox is FIFO, so every shard sees every
//! stream in the bus's order.
//!
//! Blocking here is the design: when a shard's inbox is full, the thread waits for that
//! shard (which drains its inbox without ever waiting on anything), and the command
//! channel fills up behind it, which makes publishing clients wait on their shards.

use std::{collections::HashMap, sync::Arc, thread::JoinHandle};

use tracing::debug;

use super::{BusCommand, BusCommands};
use crate::xshard::{
    Delivery, Interest, InterestChange, NodeId, Route, ShardId, ShardInboxes, ShardMessage,
};

/// Starts the bus thread. It ends on [`BusCommand::Shutdown`], or when every sender is
/// gone.
///
/// # Errors
/// The OS refused to start a thread.
pub(crate) fn spawn(
    commands: BusCommands,
    inboxes: ShardInboxes,
    node: NodeId,
    cpu: Option<usize>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("bus".into()).spawn(move || {
        if let Some(id) = cpu {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
        let mut bus = Sequencer::new(inboxes, node);
        while let Ok(command) = commands.recv() {
            if matches!(command, BusCommand::Shutdown) {
                break;
            }
            bus.handle(command);
        }
        debug!("embedded bus stopped");
    })
}

/// The bus thread's state: who wants what, and where to send it.
#[derive(Debug)]
struct Sequencer {
    /// Every shard's inbox, by [`ShardId`].
    inboxes: ShardInboxes,
    /// Topic → shards with a subscriber.
    topics: HashMap<Box<str>, ShardSet>,
    /// User → shards with a connection of that user.
    users: HashMap<Box<str>, ShardSet>,
    /// Stamped on every delivery as its origin.
    node: NodeId,
}

/// The shards that want one stream. Most users have their connections on one shard, so
/// that case needs no allocation (the bus keeps one entry per user of the node).
#[derive(Debug)]
enum ShardSet {
    /// One shard.
    One(ShardId),
    /// Several (a node has a few dozen shards at most).
    Many(Vec<ShardId>),
}

impl ShardSet {
    fn insert(&mut self, shard: ShardId) {
        match self {
            ShardSet::One(s) if *s == shard => {}
            ShardSet::One(s) => *self = ShardSet::Many(vec![*s, shard]),
            ShardSet::Many(v) if v.contains(&shard) => {}
            ShardSet::Many(v) => v.push(shard),
        }
    }

    /// Removes `shard`; `true` when the set is now empty.
    fn remove(&mut self, shard: ShardId) -> bool {
        match self {
            ShardSet::One(s) => *s == shard,
            ShardSet::Many(v) => {
                v.retain(|s| *s != shard);
                match v.as_slice() {
                    [] => true,
                    [only] => {
                        *self = ShardSet::One(*only);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn as_slice(&self) -> &[ShardId] {
        match self {
            ShardSet::One(s) => std::slice::from_ref(s),
            ShardSet::Many(v) => v,
        }
    }
}

impl Sequencer {
    fn new(inboxes: ShardInboxes, node: NodeId) -> Sequencer {
        Sequencer { inboxes, topics: HashMap::new(), users: HashMap::new(), node }
    }

    fn handle(&mut self, command: BusCommand) {
        match command {
            BusCommand::Interest { shard, change } => self.change_interest(shard, change),
            BusCommand::Shutdown => {}
            BusCommand::Publish(event) => {
                let delivery: Arc<Delivery> = Arc::new(event.encode(&self.node));
                let targets = match &delivery.route {
                    Route::Broadcast => None,
                    Route::Topic(topic) => Some(self.topics.get(topic)),
                    Route::Direct(user) => Some(self.users.get(user)),
                };
                let message = ShardMessage::Deliver(delivery.clone());
                match targets {
                    None => {
                        for inbox in self.inboxes.iter() {
                            // Disconnected: that shard has stopped (shutdown).
                            let _ = inbox.send(message.clone());
                        }
                    }
                    Some(None) => {} // nobody on this node wants it
                    Some(Some(shards)) => {
                        for shard in shards.as_slice() {
                            if let Some(inbox) = self.inboxes.get(shard.0 as usize) {
                                let _ = inbox.send(message.clone());
                            }
                        }
                    }
                }
            }
        }
    }

    fn change_interest(&mut self, shard: ShardId, change: InterestChange) {
        let (gained, interest) = match change {
            InterestChange::Gained(i) => (true, i),
            InterestChange::Lost(i) => (false, i),
        };
        let (map, key) = match interest {
            Interest::Topic(t) => (&mut self.topics, t),
            Interest::User(u) => (&mut self.users, u),
        };
        if gained {
            match map.get_mut(&key) {
                Some(set) => set.insert(shard),
                None => {
                    map.insert(key, ShardSet::One(shard));
                }
            }
        } else if let Some(set) = map.get_mut(&key)
            && set.remove(shard)
        {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Payload};

    fn publish(route: Route) -> BusCommand {
        BusCommand::Publish(Event { sender: "s".into(), route, payload: Payload::Text("x".into()) })
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
        let (txs, rxs) = crate::xshard::shard_inboxes(3, 16);
        let mut bus = Sequencer::new(txs, NodeId("n".into()));
        let topic = || Interest::Topic("t".into());
        bus.handle(gained(1, topic()));
        bus.handle(gained(2, Interest::User("u".into())));
        bus.handle(publish(Route::Topic("t".into())));
        bus.handle(publish(Route::Topic("other".into())));
        bus.handle(publish(Route::Direct("u".into())));
        bus.handle(publish(Route::Broadcast));
        bus.handle(gained(2, topic()));
        bus.handle(lost(1, topic()));
        bus.handle(publish(Route::Topic("t".into())));
        bus.handle(lost(2, topic()));
        bus.handle(publish(Route::Topic("t".into())));
        let routes = |rx: &crate::xshard::ShardInbox| -> Vec<Route> {
            rx.try_iter()
                .map(|ShardMessage::Deliver(d)| {
                    assert_eq!(d.origin, NodeId("n".into()));
                    d.route.clone()
                })
                .collect()
        };
        assert_eq!(routes(&rxs[0]), [Route::Broadcast]);
        assert_eq!(routes(&rxs[1]), [Route::Topic("t".into()), Route::Broadcast]);
        assert_eq!(
            routes(&rxs[2]),
            [Route::Direct("u".into()), Route::Broadcast, Route::Topic("t".into())]
        );
        assert!(bus.topics.is_empty(), "the last shard leaving removes the topic");
    }
}
