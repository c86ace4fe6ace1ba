//! Which shards want which stream: the interest table every bus implementation keeps.
//!
//! Runs on: whoever sequences streams (an owner shard's sequencer with the embedded bus,
//! the bridge thread with Redis). Pure data, no I/O.
//!
//! Shards report [`InterestChange`]s (their first subscriber of a topic, their last, the
//! first and last connection of a user); the table keeps, per topic and per user, the
//! set of shards that want it, and says when the **node** as a whole gained or lost a
//! stream (the bridge turns that into one SUBSCRIBE or UNSUBSCRIBE per node).

use std::collections::HashMap;

use crate::ids::{Interest, InterestChange, Route, ShardId};

/// What a shard's change meant for the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeInterest {
    /// The first shard of the node wants the stream.
    Gained,
    /// The last shard that wanted it does not anymore.
    Lost,
    /// Other shards already wanted it (or still do); or the change repeated a known state.
    Unchanged,
}

/// Per topic and per user, the shards that want it.
#[derive(Debug, Default)]
pub(crate) struct InterestTable {
    /// Topic → shards with a subscriber.
    topics: HashMap<Box<str>, ShardSet>,
    /// User → shards with a connection of that user.
    users: HashMap<Box<str>, ShardSet>,
}

impl InterestTable {
    /// Applies one shard's change; says what it means for the node.
    pub(crate) fn apply(&mut self, shard: ShardId, change: InterestChange) -> NodeInterest {
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
                Some(set) => {
                    set.insert(shard);
                    NodeInterest::Unchanged
                }
                None => {
                    map.insert(key, ShardSet::One(shard));
                    NodeInterest::Gained
                }
            }
        } else if map.get_mut(&key).is_some_and(|set| set.remove(shard)) {
            map.remove(&key);
            NodeInterest::Lost
        } else {
            NodeInterest::Unchanged
        }
    }

    /// Fills `out` with the shards that want an event on `route` (broadcasts: all of
    /// the node's `shards`).
    pub(crate) fn targets(&self, route: &Route, shards: u16, out: &mut Vec<ShardId>) {
        out.clear();
        match route {
            Route::Broadcast => out.extend((0..shards).map(ShardId)),
            Route::Topic(topic) => {
                out.extend(self.topics.get(topic).into_iter().flat_map(|s| s.as_slice()))
            }
            Route::Direct(user) => {
                out.extend(self.users.get(user).into_iter().flat_map(|s| s.as_slice()))
            }
        }
    }

    /// Every topic and user some shard wants (to subscribe again after a reconnect).
    pub(crate) fn streams(&self) -> impl Iterator<Item = Interest> + '_ {
        let topics = self.topics.keys().map(|t| Interest::Topic(t.clone()));
        topics.chain(self.users.keys().map(|u| Interest::User(u.clone())))
    }

    /// How many topics and users some shard wants.
    pub(crate) fn len(&self) -> usize {
        self.topics.len() + self.users.len()
    }
}

/// The shards that want one stream. Most users have their connections on one shard, so
/// that case needs no allocation (the table keeps one entry per user of the node).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(t: &str) -> Interest {
        Interest::Topic(t.into())
    }

    /// The node gains a stream with its first shard and loses it with its last.
    #[test]
    fn node_interest_follows_first_and_last_shard() {
        let mut table = InterestTable::default();
        let g = |i| InterestChange::Gained(i);
        let l = |i| InterestChange::Lost(i);
        assert_eq!(table.apply(ShardId(0), g(topic("t"))), NodeInterest::Gained);
        assert_eq!(table.apply(ShardId(1), g(topic("t"))), NodeInterest::Unchanged);
        assert_eq!(table.apply(ShardId(1), g(topic("t"))), NodeInterest::Unchanged);
        assert_eq!(table.apply(ShardId(0), l(topic("t"))), NodeInterest::Unchanged);
        let mut out = Vec::new();
        table.targets(&Route::Topic("t".into()), 2, &mut out);
        assert_eq!(out, vec![ShardId(1)]);
        assert_eq!(table.apply(ShardId(1), l(topic("t"))), NodeInterest::Lost);
        assert_eq!(table.apply(ShardId(1), l(topic("t"))), NodeInterest::Unchanged);
        table.targets(&Route::Topic("t".into()), 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(table.apply(ShardId(0), g(Interest::User("u".into()))), NodeInterest::Gained);
        assert_eq!(table.streams().collect::<Vec<_>>(), vec![Interest::User("u".into())]);
        table.targets(&Route::Broadcast, 3, &mut out);
        assert_eq!(out, vec![ShardId(0), ShardId(1), ShardId(2)]);
        assert_eq!(table.len(), 1);
    }
}
