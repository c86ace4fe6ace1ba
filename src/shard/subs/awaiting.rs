//! Subscribers waiting for the bus to confirm their topic before they are told
//! `subscribed`. Owned by the subscription book (`shard::subs`).
//!
//! Runs on: its shard. Pure data, no I/O.
//!
//! When a shard's first subscriber of a topic arrives, the shard reports the gain to the
//! bus, and the bus starts sending it the topic's events only after that (with Redis:
//! after Redis confirmed the SUBSCRIBE). Until the bus confirms, the `subscribed` reply
//! of that subscriber — and of every other local subscriber of the topic arriving
//! meanwhile — waits here; so a client that publishes right after `subscribed` gets its
//! own event. The bus answers every gain the shard reported, in order, so the waiters of
//! a topic are answered when its last outstanding gain is confirmed.

use std::collections::HashMap;

use crate::ids::ConnId;

/// Per topic: gains not yet confirmed, and who waits for them.
#[derive(Debug, Default)]
pub(crate) struct AwaitingBus {
    topics: HashMap<Box<str>, Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Gains of the topic reported to the bus and not yet confirmed.
    unconfirmed: u32,
    /// Connections to answer, one entry per subscribe command.
    conns: Vec<ConnId>,
}

impl AwaitingBus {
    /// The shard reported a gain of `topic` for `conn`'s subscribe.
    pub(crate) fn gained(&mut self, topic: &str, conn: ConnId) {
        let waiting = self.topics.entry(topic.into()).or_default();
        waiting.unconfirmed += 1;
        waiting.conns.push(conn);
    }

    /// `conn` subscribed to a topic the shard already wants. Returns `true` when the
    /// topic is still unconfirmed (the reply waits), `false` when it can go now.
    pub(crate) fn join(&mut self, topic: &str, conn: ConnId) -> bool {
        match self.topics.get_mut(topic) {
            Some(waiting) => {
                waiting.conns.push(conn);
                true
            }
            None => false,
        }
    }

    /// Whether any topic waits for its confirmation (nearly never, outside a burst of
    /// new topics: the close path checks it before looking a connection's topics up).
    pub(crate) fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// `conn` left `topic` (unsubscribed or closed) before it was confirmed.
    pub(crate) fn forget(&mut self, topic: &str, conn: ConnId) {
        if let Some(waiting) = self.topics.get_mut(topic) {
            waiting.conns.retain(|c| *c != conn);
        }
    }

    /// The bus confirmed one gain of `topic`. Returns whom to answer now (nobody while
    /// other gains of the topic are unconfirmed).
    pub(crate) fn confirmed(&mut self, topic: &str) -> Vec<ConnId> {
        let Some(waiting) = self.topics.get_mut(topic) else { return Vec::new() };
        waiting.unconfirmed = waiting.unconfirmed.saturating_sub(1);
        if waiting.unconfirmed > 0 {
            return Vec::new();
        }
        self.topics.remove(topic).map(|w| w.conns).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_answered_when_every_gain_is_confirmed() {
        let mut awaiting = AwaitingBus::default();
        awaiting.gained("t", ConnId(1));
        assert!(awaiting.join("t", ConnId(2)), "the topic is not confirmed yet");
        assert!(!awaiting.join("other", ConnId(3)), "a confirmed topic answers at once");
        awaiting.forget("t", ConnId(2));
        // The topic was lost and gained again before the first confirmation.
        awaiting.gained("t", ConnId(4));
        assert_eq!(awaiting.confirmed("t"), Vec::<ConnId>::new());
        assert_eq!(awaiting.confirmed("t"), vec![ConnId(1), ConnId(4)]);
        assert!(awaiting.is_empty());
        assert!(!awaiting.join("t", ConnId(5)));
        assert_eq!(awaiting.confirmed("t"), Vec::<ConnId>::new(), "unknown topic: nobody");
    }
}
