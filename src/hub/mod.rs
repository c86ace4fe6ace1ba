//! The hub: this shard's indexes from user ids and topics to local connections.
//!
//! Runs on: one shard (`!Send`: it is inside the shard's `Rc`). Pure data, no I/O and no
//! clock, so it is unit-tested and benchmarked without sockets (the shape of uWS's
//! `TopicTree`). The list of *all* connections is the shard's connection table itself.

use std::collections::HashMap;

/// Key of a connection in its shard's table (a slab index, reused after the connection
/// is gone: every index entry is removed before that happens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Per-shard subscription and user indexes.
#[derive(Debug, Default)]
pub struct Hub {
    /// user id → that user's connections on this shard.
    users: HashMap<Box<str>, Vec<ConnId>>,
    /// topic → subscribed connections on this shard.
    topics: HashMap<Box<str>, Vec<ConnId>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Records that `conn` belongs to `user`.
    pub fn add_user_conn(&mut self, user: &str, conn: ConnId) {
        self.users.entry(user.into()).or_default().push(conn);
    }

    /// Forgets `conn` of `user` (on close).
    pub fn remove_user_conn(&mut self, user: &str, conn: ConnId) {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Subscribes `conn` to `topic`. Returns `false` when it already was.
    pub fn subscribe(&mut self, topic: &str, conn: ConnId) -> bool {
        let list = self.topics.entry(topic.into()).or_default();
        if list.contains(&conn) {
            return false;
        }
        list.push(conn);
        true
    }

    /// Unsubscribes `conn` from `topic`. Returns `false` when it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str, conn: ConnId) -> bool {
        let Some(list) = self.topics.get_mut(topic) else { return false };
        let Some(at) = list.iter().position(|c| *c == conn) else { return false };
        list.swap_remove(at);
        if list.is_empty() {
            self.topics.remove(topic);
        }
        true
    }

    /// The local connections of `user`.
    pub fn user_conns(&self, user: &str) -> &[ConnId] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// The local subscribers of `topic`.
    pub fn topic_conns(&self, topic: &str) -> &[ConnId] {
        self.topics.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Number of topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_and_users() {
        let mut hub = Hub::new();
        assert!(hub.subscribe("t", ConnId(1)));
        assert!(!hub.subscribe("t", ConnId(1)));
        assert!(hub.subscribe("t", ConnId(2)));
        assert_eq!(hub.topic_conns("t"), &[ConnId(1), ConnId(2)]);
        assert!(hub.unsubscribe("t", ConnId(1)));
        assert!(!hub.unsubscribe("t", ConnId(1)));
        assert_eq!(hub.topic_conns("t"), &[ConnId(2)]);
        assert!(hub.unsubscribe("t", ConnId(2)));
        assert_eq!(hub.topic_count(), 0);

        hub.add_user_conn("u", ConnId(5));
        hub.add_user_conn("u", ConnId(6));
        hub.remove_user_conn("u", ConnId(5));
        assert_eq!(hub.user_conns("u"), &[ConnId(6)]);
        hub.remove_user_conn("u", ConnId(6));
        assert!(hub.user_conns("u").is_empty());
    }
}
