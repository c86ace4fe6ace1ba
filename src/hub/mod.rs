//! The hub: this shard's indexes from user ids and topics to local connections, and the
//! one record of which topics each connection is subscribed to.
//!
//! Runs on: one shard (`!Send`: it is inside the shard). Pure data, no I/O and no clock,
//! so it is unit-tested and benchmarked without sockets (the shape of uWS's `TopicTree`:
//! a set per topic plus each subscriber's own topic list). The list of *all* connections
//! is the shard's connection table itself.
//!
//! Every operation costs O(1) per (connection, topic) pair: joining or leaving a topic
//! of 100,000 local subscribers does not scan them, and removing a connection walks only
//! its own topics.
//!
//! The hub reports **interest transitions** ([`InterestChange`]): a topic gained its
//! first or lost its last subscriber on this shard, a user gained its first or lost its
//! last connection. The shard forwards them to the bus, which then sends this shard only
//! what its connections need.

mod conn_set;

use std::{collections::HashMap, rc::Rc};

pub(crate) use conn_set::ConnSet;

use crate::ids::{ConnId, Interest, InterestChange};

/// What a subscribe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribed {
    /// Now subscribed; `Some` when it is the topic's first subscriber on this shard.
    Added(Option<InterestChange>),
    /// It already was (nothing changed).
    Already,
    /// Refused: the connection is at its topic limit.
    TooManyTopics,
}

/// Per-shard subscription and user indexes.
#[derive(Debug, Default)]
pub struct Hub {
    /// user id → that user's connections on this shard.
    users: HashMap<Box<str>, ConnSet>,
    /// topic → subscribed connections on this shard. The key is shared with the
    /// subscribers' own lists.
    topics: HashMap<Rc<str>, ConnSet>,
    /// The topics of each connection, indexed by [`ConnId`] (slab keys are dense); `None`
    /// for a connection with no topic (8 bytes per idle connection). The only record of a
    /// connection's subscriptions.
    #[allow(clippy::box_collection, reason = "8 bytes per idle connection instead of 24")]
    conn_topics: Vec<Option<Box<Vec<Rc<str>>>>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Records that `conn` belongs to `user`. `Some` when it is the user's first
    /// connection on this shard.
    pub fn add_conn(&mut self, user: &str, conn: ConnId) -> Option<InterestChange> {
        let set = self.users.entry(user.into()).or_default();
        set.insert(conn);
        (set.len() == 1).then(|| InterestChange::Gained(Interest::User(user.into())))
    }

    /// Forgets `conn` of `user` and all its subscriptions (on close); appends the interest
    /// this shard lost to `lost`.
    pub fn remove_conn(&mut self, user: &str, conn: ConnId, lost: &mut Vec<InterestChange>) {
        if let Some(set) = self.users.get_mut(user) {
            set.remove(conn);
            if set.is_empty() {
                self.users.remove(user);
                lost.push(InterestChange::Lost(Interest::User(user.into())));
            }
        }
        let Some(topics) = self.conn_topics.get_mut(conn.0 as usize).and_then(Option::take) else {
            return;
        };
        for topic in *topics {
            if let Some(change) = remove_subscriber(&mut self.topics, &topic, conn) {
                lost.push(change);
            }
        }
    }

    /// Subscribes `conn` to `topic`, unless it already has `max_topics` topics.
    pub fn subscribe(&mut self, topic: &str, conn: ConnId, max_topics: usize) -> Subscribed {
        let slot = conn.0 as usize;
        if self.conn_topics.len() <= slot {
            self.conn_topics.resize_with(slot + 1, || None);
        }
        let key: Rc<str> = match self.topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => topic.into(),
        };
        let subscribers = self.topics.entry(key.clone()).or_default();
        if subscribers.contains(conn) {
            return Subscribed::Already;
        }
        let mine = self.conn_topics[slot].get_or_insert_with(Box::default);
        if mine.len() >= max_topics {
            if subscribers.is_empty() {
                self.topics.remove(topic);
            }
            return Subscribed::TooManyTopics;
        }
        subscribers.insert(conn);
        let first = subscribers.len() == 1;
        mine.push(key);
        Subscribed::Added(first.then(|| InterestChange::Gained(Interest::Topic(topic.into()))))
    }

    /// Unsubscribes `conn` from `topic`. `Some` when it was the topic's last subscriber on
    /// this shard. Unsubscribing from a topic one is not subscribed to does nothing.
    pub fn unsubscribe(&mut self, topic: &str, conn: ConnId) -> Option<InterestChange> {
        let slot = self.conn_topics.get_mut(conn.0 as usize)?;
        let mine = slot.as_mut()?;
        // A connection has at most `MAX_TOPICS_PER_CONN` topics: a short scan.
        let at = mine.iter().position(|t| **t == *topic)?;
        mine.swap_remove(at);
        if mine.is_empty() {
            *slot = None;
        }
        remove_subscriber(&mut self.topics, topic, conn)
    }

    /// The local connections of `user`.
    pub fn user_conns(&self, user: &str) -> &[ConnId] {
        self.users.get(user).map_or(&[], ConnSet::as_slice)
    }

    /// Whether `conn` is subscribed to `topic` (O(1)).
    pub fn is_subscribed(&self, topic: &str, conn: ConnId) -> bool {
        self.topics.get(topic).is_some_and(|set| set.contains(conn))
    }

    /// The local subscribers of `topic`.
    pub fn topic_conns(&self, topic: &str) -> &[ConnId] {
        self.topics.get(topic).map_or(&[], ConnSet::as_slice)
    }

    /// The topics `conn` is subscribed to.
    pub fn topics_of(&self, conn: ConnId) -> impl Iterator<Item = &str> + '_ {
        self.conn_topics
            .get(conn.0 as usize)
            .into_iter()
            .flatten()
            .flat_map(|v| v.iter())
            .map(|t| &**t)
    }

    /// Number of topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Number of users with at least one local connection.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// Removes `conn` from `topic`'s set; `Some` when the set became empty.
fn remove_subscriber(
    topics: &mut HashMap<Rc<str>, ConnSet>,
    topic: &str,
    conn: ConnId,
) -> Option<InterestChange> {
    let set = topics.get_mut(topic)?;
    set.remove(conn);
    if !set.is_empty() {
        return None;
    }
    topics.remove(topic);
    Some(InterestChange::Lost(Interest::Topic(topic.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gained_topic(t: &str) -> Option<InterestChange> {
        Some(InterestChange::Gained(Interest::Topic(t.into())))
    }

    fn sorted(it: &[ConnId]) -> Vec<ConnId> {
        let mut v = it.to_vec();
        v.sort();
        v
    }

    #[test]
    fn subscribe_reports_first_and_last_subscriber() {
        let mut hub = Hub::new();
        assert_eq!(hub.subscribe("t", ConnId(1), 10), Subscribed::Added(gained_topic("t")));
        assert_eq!(hub.subscribe("t", ConnId(1), 10), Subscribed::Already);
        assert_eq!(hub.subscribe("t", ConnId(2), 10), Subscribed::Added(None));
        assert_eq!(sorted(hub.topic_conns("t")), [ConnId(1), ConnId(2)]);
        assert_eq!(hub.unsubscribe("t", ConnId(1)), None);
        assert_eq!(hub.unsubscribe("t", ConnId(1)), None, "not subscribed: nothing");
        assert_eq!(sorted(hub.topic_conns("t")), [ConnId(2)]);
        assert!(hub.is_subscribed("t", ConnId(2)) && !hub.is_subscribed("t", ConnId(1)));
        assert!(!hub.is_subscribed("other", ConnId(2)));
        assert_eq!(
            hub.unsubscribe("t", ConnId(2)),
            Some(InterestChange::Lost(Interest::Topic("t".into())))
        );
        assert_eq!(hub.topic_count(), 0);
    }

    #[test]
    fn topic_limit_per_connection() {
        let mut hub = Hub::new();
        assert!(matches!(hub.subscribe("a", ConnId(0), 2), Subscribed::Added(_)));
        assert!(matches!(hub.subscribe("b", ConnId(0), 2), Subscribed::Added(_)));
        assert_eq!(hub.subscribe("c", ConnId(0), 2), Subscribed::TooManyTopics);
        assert_eq!(hub.topic_count(), 2, "a refused subscribe leaves no empty topic");
        assert_eq!(hub.subscribe("a", ConnId(0), 2), Subscribed::Already);
    }

    #[test]
    fn users_and_removal_report_lost_interest() {
        let mut hub = Hub::new();
        assert_eq!(
            hub.add_conn("u", ConnId(5)),
            Some(InterestChange::Gained(Interest::User("u".into())))
        );
        assert_eq!(hub.add_conn("u", ConnId(6)), None);
        hub.subscribe("x", ConnId(5), 10);
        hub.subscribe("y", ConnId(5), 10);
        hub.subscribe("y", ConnId(6), 10);
        let mut lost = Vec::new();
        hub.remove_conn("u", ConnId(5), &mut lost);
        assert_eq!(lost, [InterestChange::Lost(Interest::Topic("x".into()))]);
        assert_eq!(sorted(hub.user_conns("u")), [ConnId(6)]);
        assert_eq!(hub.topics_of(ConnId(5)).count(), 0);
        lost.clear();
        hub.remove_conn("u", ConnId(6), &mut lost);
        assert_eq!(
            lost,
            [
                InterestChange::Lost(Interest::User("u".into())),
                InterestChange::Lost(Interest::Topic("y".into()))
            ]
        );
        assert_eq!((hub.topic_count(), hub.user_count()), (0, 0));
    }

    /// Many subscribers on one topic: the set grows past its inline form and back.
    #[test]
    fn large_topic_joins_and_leaves() {
        let mut hub = Hub::new();
        for i in 0..1000 {
            hub.subscribe("big", ConnId(i), 10);
        }
        assert_eq!(hub.topic_conns("big").len(), 1000);
        for i in (0..1000).step_by(2) {
            assert_eq!(hub.unsubscribe("big", ConnId(i)), None);
        }
        assert_eq!(
            sorted(hub.topic_conns("big")),
            (1..1000).step_by(2).map(ConnId).collect::<Vec<_>>()
        );
        let mut lost = Vec::new();
        for i in (1..1000).step_by(2) {
            hub.remove_conn("nobody", ConnId(i), &mut lost);
        }
        assert_eq!(lost, [InterestChange::Lost(Interest::Topic("big".into()))]);
    }
}
