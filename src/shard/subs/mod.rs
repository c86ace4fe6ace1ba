//! The subscription book: the one owner of what the shard's connections are subscribed
//! to, and of everything that waits on a subscription.
//!
//! Runs on: its shard (`!Send`: it is inside the shard). Pure: no I/O, no bus handle, no
//! clock, so it is unit-tested without sockets.
//!
//! [`SubscriptionBook`] holds four pieces, each its own private submodule:
//! - the [`Hub`]: topic → connections, user → connections, each connection's topics; it
//!   reports the shard's interest transitions;
//! - `awaiting`: subscribers waiting for the bus to confirm their topic before they are
//!   told `subscribed`;
//! - `recovering`: connections waiting for a replay of a stream, whose live events of it
//!   are held back meanwhile;
//! - `watchers`: presence watchers (subscriptions with `presence: true`) and what each has
//!   been told.
//!
//! Every change of subscription state goes through one of the book's methods — a
//! connection arriving or departing, a subscribe, an unsubscribe, a topic confirmed by the
//! bus, a replay answered, a presence watch's snapshot or news, a presence resync — and
//! each method appends what the shard must do about it to `out`, as [`Effect`]s, in the
//! order they must happen (per stream, the bus applies a shard's commands in that order:
//! a topic's gain goes before the replay request that depends on it). The shard carries
//! them out in one place (`Shard::carry_out`), which resolves connections to their users
//! and sends to the bus or queues replies. The fan-out only reads the book (one borrow,
//! then index lookups).

mod awaiting;
mod recovering;
mod watchers;

use std::sync::Arc;

use awaiting::AwaitingBus;
use recovering::Recoveries;
use watchers::{SnapshotFate, Watchers};

use crate::{
    conn::SubscribeReply,
    history::Since,
    hub::{Hub, Subscribed},
    ids::{ConnId, InterestChange, Route},
    presence::News,
    protocol::limits::MAX_TOPICS_PER_CONN,
    xshard::ReplayPurpose,
};

/// What the shard must do after the book changed; carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Tell the bus this shard gained or lost interest in a topic or a user.
    ChangeInterest(InterestChange),
    /// Tell the presence owner that `conn`'s user joined (`joined`) or left `topic`.
    PresenceChange { conn: ConnId, topic: Box<str>, joined: bool },
    /// Ask the bus for `conn`'s replay of `route` from `since`; the answer carries `token`.
    RequestReplay { conn: ConnId, route: Route, since: Since, token: u64, purpose: ReplayPurpose },
    /// Ask the presence owner for `topic`'s members for `conn`; `watch`: the token of the
    /// watch the snapshot starts (`None`: a one-off `presence` command).
    RequestSnapshot { conn: ConnId, topic: Box<str>, watch: Option<u64> },
    /// Tell each of `conns` `{"type":"subscribed","topic":T}` (one entry per subscribe).
    Subscribed { topic: Box<str>, conns: Vec<ConnId> },
}

/// Every subscription of a shard's connections and what waits on them. See the module
/// docs.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionBook {
    /// User and topic indexes, and each connection's topics.
    hub: Hub,
    /// Subscribers whose topic the bus has not confirmed yet.
    awaiting: AwaitingBus,
    /// Connections waiting for a replay, whose live events of that stream are held back.
    recoveries: Recoveries,
    /// Connections subscribed with `presence: true`.
    watchers: Watchers,
}

impl SubscriptionBook {
    /// Connection `conn` of `user` registered.
    pub(crate) fn arrived(&mut self, conn: ConnId, user: &str, out: &mut Vec<Effect>) {
        if let Some(change) = self.hub.add_conn(user, conn) {
            out.push(Effect::ChangeInterest(change));
        }
    }

    /// Connection `conn` of `user` is going: it waits for no confirmation or replay any
    /// more, it leaves every topic it was in (and stops watching them), and the interest
    /// only it held is lost.
    pub(crate) fn departed(&mut self, conn: ConnId, user: &str, out: &mut Vec<Effect>) {
        self.recoveries.forget_conn(conn);
        // Its topics are walked for the presence leaves; the awaiting and watcher indexes
        // are touched only when some topic is unconfirmed or watched, which is rare.
        let (awaiting, watching) = (!self.awaiting.is_empty(), !self.watchers.is_empty());
        for topic in self.hub.topics_of(conn) {
            if awaiting {
                self.awaiting.forget(topic, conn);
            }
            out.push(Effect::PresenceChange { conn, topic: topic.into(), joined: false });
            if watching {
                self.watchers.forget(topic, conn);
            }
        }
        let mut lost = Vec::new();
        self.hub.remove_conn(user, conn, &mut lost);
        out.extend(lost.into_iter().map(Effect::ChangeInterest));
    }

    /// Subscribes `conn` to `topic`; with `since`, its missed events (or the last one,
    /// for `latest`) are replayed before live ones; with `presence`, it watches the
    /// topic's members. The `subscribed` reply goes now, or with [`Effect::Subscribed`]
    /// once the bus confirms the topic.
    pub(crate) fn subscribe(
        &mut self,
        conn: ConnId,
        topic: &str,
        since: Option<Since>,
        presence: bool,
        out: &mut Vec<Effect>,
    ) -> SubscribeReply {
        let outcome = self.hub.subscribe(topic, conn, MAX_TOPICS_PER_CONN);
        if matches!(outcome, Subscribed::Added(_)) {
            out.push(Effect::PresenceChange { conn, topic: topic.into(), joined: true });
        }
        let reply = match outcome {
            Subscribed::Added(Some(change)) => {
                self.awaiting.gained(topic, conn);
                out.push(Effect::ChangeInterest(change));
                SubscribeReply::WhenConfirmed
            }
            Subscribed::Added(None) | Subscribed::Already => {
                if self.awaiting.join(topic, conn) {
                    SubscribeReply::WhenConfirmed
                } else {
                    SubscribeReply::Now
                }
            }
            Subscribed::TooManyTopics => return SubscribeReply::TooManyTopics,
        };
        if presence {
            // The snapshot is asked for once `subscribed` is sent (now, or when the bus
            // confirms the topic); news is held until it arrives.
            let token = self.watchers.watch(topic, conn);
            if reply == SubscribeReply::Now {
                let topic = topic.into();
                out.push(Effect::RequestSnapshot { conn, topic, watch: Some(token) });
            }
        }
        if let Some(since) = since {
            let route = Route::Topic(topic.into());
            self.recoveries.begin(route.clone(), conn, since, purpose_of(since));
            if reply == SubscribeReply::Now {
                self.request_replay(conn, route, out);
            }
        }
        reply
    }

    /// Unsubscribes `conn` from `topic` (nothing when it was not subscribed).
    pub(crate) fn unsubscribe(&mut self, conn: ConnId, topic: &str, out: &mut Vec<Effect>) {
        if self.hub.is_subscribed(topic, conn) {
            out.push(Effect::PresenceChange { conn, topic: topic.into(), joined: false });
        }
        self.watchers.forget(topic, conn);
        self.awaiting.forget(topic, conn);
        self.recoveries.forget(&Route::Topic(topic.into()), conn);
        if let Some(change) = self.hub.unsubscribe(topic, conn) {
            out.push(Effect::ChangeInterest(change));
        }
    }

    /// `conn` connected with `?lastEventId=`: its broadcasts are held back until the
    /// missed ones are replayed.
    pub(crate) fn recover_broadcasts(&mut self, conn: ConnId, since: Since, out: &mut Vec<Effect>) {
        self.recoveries.begin(Route::Broadcast, conn, since, purpose_of(since));
        self.request_replay(conn, Route::Broadcast, out);
    }

    /// The bus confirmed one of this shard's gains of `topic`: the subscribers that
    /// waited for it get their `subscribed`, then ask for their replay and presence
    /// snapshot (the topic's events now reach this shard, so the answers come behind
    /// them).
    pub(crate) fn topic_confirmed(&mut self, topic: &str, out: &mut Vec<Effect>) {
        let mut answer = self.awaiting.confirmed(topic);
        // Still subscribed (an unsubscribe or a departure removed it from the waiters).
        answer.retain(|id| self.hub.is_subscribed(topic, *id));
        if answer.is_empty() {
            return;
        }
        let route = Route::Topic(topic.into());
        let at = out.len();
        for id in &answer {
            self.request_replay(*id, route.clone(), out);
            if let Some(token) = self.watchers.awaiting(topic, *id) {
                out.push(Effect::RequestSnapshot {
                    conn: *id,
                    topic: topic.into(),
                    watch: Some(token),
                });
            }
        }
        out.insert(at, Effect::Subscribed { topic: topic.into(), conns: answer });
    }

    /// The bus answered `conn`'s replay of `route` with `token`: `true` when it is the
    /// answer `conn` waits for (it then gets the replayed events, and live ones again);
    /// `false` for an answer to an older request (unsubscribed, or subscribed again).
    pub(crate) fn replay_answered(&mut self, route: &Route, conn: ConnId, token: u64) -> bool {
        self.recoveries.finish(route, conn, token)
    }

    /// News of joins and leaves may have been lost on the way to this node: every watch
    /// starts over, asking for a fresh snapshot (which replaces the member list).
    pub(crate) fn presence_resync(&mut self, out: &mut Vec<Effect>) {
        for (topic, conn, token) in self.watchers.rewatch_all() {
            out.push(Effect::RequestSnapshot { conn, topic, watch: Some(token) });
        }
    }

    /// The snapshot of `topic` for `conn`'s watch `token` arrived, including news up to
    /// `seq`. `true` when it is to be sent, followed by the held news appended to `then`;
    /// `false` when it is stale, or when too much news was held meanwhile (it is asked for
    /// again).
    pub(crate) fn snapshot_arrived(
        &mut self,
        topic: &str,
        conn: ConnId,
        token: u64,
        seq: u64,
        then: &mut Vec<Arc<News>>,
        out: &mut Vec<Effect>,
    ) -> bool {
        match self.watchers.snapshot(topic, conn, token, seq, then) {
            SnapshotFate::Send => true,
            SnapshotFate::Stale => false,
            SnapshotFate::AskAgain(token) => {
                out.push(Effect::RequestSnapshot { conn, topic: topic.into(), watch: Some(token) });
                false
            }
        }
    }

    /// A join or leave of its topic arrived: appends the watchers to tell now to `to`
    /// (the others hold it until their snapshot).
    pub(crate) fn presence_news(&mut self, news: &Arc<News>, to: &mut Vec<ConnId>) {
        self.watchers.news(news, to);
    }

    /// The local subscribers of `topic`.
    pub(crate) fn topic_conns(&self, topic: &str) -> &[ConnId] {
        self.hub.topic_conns(topic)
    }

    /// The local connections of `user`.
    pub(crate) fn user_conns(&self, user: &str) -> &[ConnId] {
        self.hub.user_conns(user)
    }

    /// Whether some connection waits for a replay (when none does, the fan-out checks
    /// nothing per connection).
    pub(crate) fn holds_any(&self) -> bool {
        !self.recoveries.is_empty()
    }

    /// Whether `conn`'s live events of `route` wait for a replay.
    pub(crate) fn holds(&self, route: &Route, conn: ConnId) -> bool {
        self.recoveries.holds(route, conn)
    }

    /// Asks for `conn`'s pending replay of `route`, if it has one not asked for yet.
    fn request_replay(&mut self, conn: ConnId, route: Route, out: &mut Vec<Effect>) {
        if let Some(request) = self.recoveries.take_request(&route, conn) {
            let (since, token, purpose) = (request.since, request.token, request.purpose);
            out.push(Effect::RequestReplay { conn, route, since, token, purpose });
        }
    }
}

/// A replay from `since` recovers missed events; from `latest` it only delivers the last.
fn purpose_of(since: Since) -> ReplayPurpose {
    if since == Since::Latest { ReplayPurpose::Latest } else { ReplayPurpose::Recover }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, Interest};

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);

    fn topic(t: &str) -> Interest {
        Interest::Topic(t.into())
    }

    fn joined(conn: ConnId, t: &str, joined: bool) -> Effect {
        Effect::PresenceChange { conn, topic: t.into(), joined }
    }

    /// A book with connection `A` of user `a` and `B` of user `b`.
    fn book() -> SubscriptionBook {
        let mut book = SubscriptionBook::default();
        let mut out = Vec::new();
        book.arrived(A, "a", &mut out);
        book.arrived(B, "b", &mut out);
        assert_eq!(out.len(), 2, "each user's first connection is a gain");
        book
    }

    /// Whether every index of the book is empty.
    fn is_clear(book: &SubscriptionBook) -> bool {
        book.hub.topic_count() == 0
            && book.hub.user_count() == 0
            && book.awaiting.is_empty()
            && book.recoveries.is_empty()
            && book.watchers.is_empty()
    }

    #[test]
    fn the_first_local_subscriber_reports_the_gain_once() {
        let mut book = book();
        let mut out = Vec::new();
        assert_eq!(book.subscribe(A, "t", None, false, &mut out), SubscribeReply::WhenConfirmed);
        let gain = Effect::ChangeInterest(InterestChange::Gained(topic("t")));
        assert_eq!(out, [joined(A, "t", true), gain]);
        out.clear();
        // A second subscriber, and the first again, while the gain is unconfirmed: they
        // wait for it too, and nothing more goes to the bus than B's presence.
        assert_eq!(book.subscribe(B, "t", None, false, &mut out), SubscribeReply::WhenConfirmed);
        assert_eq!(book.subscribe(A, "t", None, false, &mut out), SubscribeReply::WhenConfirmed);
        assert_eq!(out, [joined(B, "t", true)]);
        assert_eq!(book.topic_conns("t").len(), 2);
    }

    #[test]
    fn subscribed_replay_and_snapshot_wait_for_the_confirmation() {
        let mut book = book();
        let mut out = Vec::new();
        let since = Since::After(EventId { epoch: 1, offset: 5 });
        book.subscribe(A, "t", Some(since), true, &mut out);
        book.subscribe(B, "t", None, false, &mut out);
        assert!(
            !out.iter().any(|e| matches!(
                e,
                Effect::RequestReplay { .. }
                    | Effect::RequestSnapshot { .. }
                    | Effect::Subscribed { .. }
            )),
            "nothing is asked for or answered before the bus confirms: {out:?}"
        );
        assert!(book.holds(&Route::Topic("t".into()), A), "A's live events wait for its replay");
        out.clear();
        book.topic_confirmed("t", &mut out);
        let [
            Effect::Subscribed { conns, .. },
            Effect::RequestReplay { conn, token, .. },
            Effect::RequestSnapshot { conn: watcher, watch: Some(_), .. },
        ] = &out[..]
        else {
            panic!("subscribed, then A's replay and snapshot: {out:?}");
        };
        assert_eq!((&conns[..], *conn, *watcher), (&[A, B][..], A, A));
        // A later subscriber of the confirmed topic is answered at once and asks at once.
        let token = *token;
        out.clear();
        book.arrived(ConnId(3), "c", &mut out);
        out.clear();
        let reply = book.subscribe(ConnId(3), "t", Some(Since::Latest), false, &mut out);
        assert_eq!(reply, SubscribeReply::Now);
        assert!(matches!(
            out[..],
            [_, Effect::RequestReplay { purpose: ReplayPurpose::Latest, .. }]
        ));
        // A second confirmation has nobody to answer.
        out.clear();
        book.topic_confirmed("t", &mut out);
        assert!(out.is_empty());
        assert!(book.replay_answered(&Route::Topic("t".into()), A, token));
    }

    #[test]
    fn an_unsubscribe_before_the_confirmation_drops_the_answer() {
        let mut book = book();
        let mut out = Vec::new();
        book.subscribe(A, "t", None, false, &mut out);
        book.subscribe(B, "t", None, false, &mut out);
        out.clear();
        book.unsubscribe(B, "t", &mut out);
        assert_eq!(out, [joined(B, "t", false)], "A still holds the topic");
        out.clear();
        book.topic_confirmed("t", &mut out);
        assert_eq!(out, [Effect::Subscribed { topic: "t".into(), conns: vec![A] }]);
    }

    #[test]
    fn the_last_subscriber_departing_reports_the_loss() {
        let mut book = book();
        let mut out = Vec::new();
        book.subscribe(A, "t", None, false, &mut out);
        book.subscribe(B, "t", None, false, &mut out);
        book.topic_confirmed("t", &mut out);
        out.clear();
        book.departed(A, "a", &mut out);
        let lost_a = Effect::ChangeInterest(InterestChange::Lost(Interest::User("a".into())));
        assert_eq!(out, [joined(A, "t", false), lost_a]);
        out.clear();
        book.departed(B, "b", &mut out);
        let lost_b = Effect::ChangeInterest(InterestChange::Lost(Interest::User("b".into())));
        let lost_t = Effect::ChangeInterest(InterestChange::Lost(topic("t")));
        assert_eq!(out, [joined(B, "t", false), lost_b, lost_t]);
        assert!(is_clear(&book));
    }

    #[test]
    fn live_events_are_held_until_the_replay_answers() {
        let mut book = book();
        let mut out = Vec::new();
        assert!(!book.holds_any());
        book.recover_broadcasts(A, Since::After(EventId { epoch: 1, offset: 1 }), &mut out);
        let [Effect::RequestReplay { conn: A, route: Route::Broadcast, token, purpose, .. }] =
            out[..]
        else {
            panic!("one replay request for A's broadcasts: {out:?}");
        };
        assert_eq!(purpose, ReplayPurpose::Recover);
        assert!(book.holds_any() && book.holds(&Route::Broadcast, A));
        assert!(!book.holds(&Route::Broadcast, B));
        assert!(!book.replay_answered(&Route::Broadcast, A, token + 1), "not its answer");
        assert!(book.holds(&Route::Broadcast, A));
        assert!(book.replay_answered(&Route::Broadcast, A, token));
        assert!(!book.holds_any(), "released");
    }

    #[test]
    fn a_departure_mid_recovery_cleans_every_index() {
        let mut book = book();
        let mut out = Vec::new();
        let since = Since::After(EventId { epoch: 1, offset: 1 });
        book.recover_broadcasts(A, since, &mut out);
        book.subscribe(A, "t", Some(since), true, &mut out);
        book.subscribe(A, "u", Some(Since::Latest), true, &mut out);
        book.topic_confirmed("u", &mut out);
        book.departed(A, "a", &mut out);
        book.departed(B, "b", &mut out);
        assert!(!book.holds_any());
        // The gain of "t" the bus has not confirmed yet is still counted (its confirmation
        // is on its way), but nobody waits for it any more.
        out.clear();
        book.topic_confirmed("t", &mut out);
        assert!(out.is_empty(), "nobody waits any more: {out:?}");
        assert!(is_clear(&book), "{book:?}");
    }

    #[test]
    fn a_presence_resync_asks_every_watcher_again() {
        let mut book = book();
        let mut out = Vec::new();
        book.subscribe(A, "t", None, true, &mut out);
        book.topic_confirmed("t", &mut out);
        let Some(&Effect::RequestSnapshot { watch: Some(first), .. }) = out.last() else {
            panic!("A's snapshot is asked for: {out:?}");
        };
        out.clear();
        book.presence_resync(&mut out);
        let [Effect::RequestSnapshot { conn: A, watch: Some(again), .. }] = out[..] else {
            panic!("one new snapshot request: {out:?}");
        };
        let mut then = Vec::new();
        assert!(!book.snapshot_arrived("t", A, first, 1, &mut then, &mut out), "stale");
        assert!(book.snapshot_arrived("t", A, again, 1, &mut then, &mut out));
    }
}
