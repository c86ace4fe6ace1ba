//! The shard's presence watchers: connections subscribed with `presence: true`, and what
//! each has been told.
//!
//! Runs on: its shard (`!Send`). Pure: no I/O.
//!
//! A watch starts **awaiting** its snapshot: the news of the topic that arrives meanwhile
//! is held (it may be older or newer than the snapshot: the snapshot and the news travel
//! different ways). When the snapshot arrives with the number of the latest news it
//! includes, the watcher gets the snapshot, then the held news numbered after it; from
//! then on it gets each piece of news numbered after the last it got. So a watcher
//! never misses a join or leave and never sees one twice or out of order, whichever way
//! the node learnt of it.

use std::{collections::HashMap, rc::Rc, sync::Arc};

use super::Shard;
use crate::{
    ids::ConnId,
    presence::{
        News, SnapshotTo,
        webhook::{CloseReason, WebhookEvent},
    },
    ws::frame::encode_text,
};

/// Most pieces of news held for one awaiting watcher; past it the snapshot is asked for
/// again when it arrives (a join storm outran it).
const MAX_HELD: usize = 4096;

/// One watch.
#[derive(Debug)]
enum Watch {
    /// Waiting for snapshot `token`; the news that arrived meanwhile.
    Awaiting { token: u64, held: Vec<Arc<News>>, overflowed: bool },
    /// Told everything up to news number `seq`.
    Live { seq: u64 },
}

/// What to do with an arriving snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum SnapshotFate {
    /// Send it, then this held news.
    #[default]
    Send,
    /// Drop it: it answers a watch that ended or was restarted.
    Stale,
    /// Drop it and ask again under a new token (too much news was held meanwhile).
    AskAgain(u64),
}

/// Every presence watch of the shard, by topic.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    topics: HashMap<Box<str>, HashMap<ConnId, Watch>>,
    next_token: u64,
}

impl Watchers {
    /// `conn` starts (or restarts) watching `topic`; returns the token its snapshot
    /// request must carry.
    pub(crate) fn watch(&mut self, topic: &str, conn: ConnId) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        let watch = Watch::Awaiting { token, held: Vec::new(), overflowed: false };
        self.topics.entry(topic.into()).or_default().insert(conn, watch);
        token
    }

    /// The snapshot for `conn`'s watch `token` of `topic` arrived, including news up to
    /// `seq`: whether to send it, and (appended to `then`) the held news to send after.
    pub(crate) fn snapshot(
        &mut self,
        topic: &str,
        conn: ConnId,
        token: u64,
        seq: u64,
        then: &mut Vec<Arc<News>>,
    ) -> SnapshotFate {
        let Some(watch) = self.topics.get_mut(topic).and_then(|w| w.get_mut(&conn)) else {
            return SnapshotFate::Stale;
        };
        let Watch::Awaiting { token: awaited, held, overflowed } = watch else {
            return SnapshotFate::Stale;
        };
        if *awaited != token {
            return SnapshotFate::Stale;
        }
        if *overflowed {
            self.next_token += 1;
            let token = self.next_token;
            *watch = Watch::Awaiting { token, held: Vec::new(), overflowed: false };
            return SnapshotFate::AskAgain(token);
        }
        let mut last = seq;
        for news in held.drain(..) {
            if news.seq > last {
                last = news.seq;
                then.push(news);
            }
        }
        *watch = Watch::Live { seq: last };
        SnapshotFate::Send
    }

    /// News of its topic arrived: appends the watchers to tell now to `to`.
    pub(crate) fn news(&mut self, news: &Arc<News>, to: &mut Vec<ConnId>) {
        let Some(watches) = self.topics.get_mut(&news.topic) else { return };
        for (conn, watch) in watches.iter_mut() {
            match watch {
                Watch::Live { seq } if news.seq > *seq => {
                    *seq = news.seq;
                    to.push(*conn);
                }
                Watch::Live { .. } => {}
                Watch::Awaiting { held, overflowed, .. } => {
                    if held.len() < MAX_HELD {
                        held.push(news.clone());
                    } else {
                        *overflowed = true;
                    }
                }
            }
        }
    }

    /// The token of `conn`'s watch of `topic` while it awaits its snapshot.
    pub(crate) fn awaiting(&self, topic: &str, conn: ConnId) -> Option<u64> {
        match self.topics.get(topic)?.get(&conn)? {
            Watch::Awaiting { token, .. } => Some(*token),
            Watch::Live { .. } => None,
        }
    }

    /// `conn` stops watching `topic` (unsubscribed, or closed).
    pub(crate) fn forget(&mut self, topic: &str, conn: ConnId) {
        if let Some(watches) = self.topics.get_mut(topic) {
            watches.remove(&conn);
            if watches.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Restarts every watch (news may have been lost): each awaits a new snapshot, under
    /// a new token; returns `(topic, conn, token)` of each, to ask for.
    pub(crate) fn rewatch_all(&mut self) -> Vec<(Box<str>, ConnId, u64)> {
        let mut all = Vec::new();
        for (topic, watches) in &mut self.topics {
            for (conn, watch) in watches.iter_mut() {
                self.next_token += 1;
                *watch =
                    Watch::Awaiting { token: self.next_token, held: Vec::new(), overflowed: false };
                all.push((topic.clone(), *conn, self.next_token));
            }
        }
        all.sort_unstable();
        all
    }

    /// Whether no connection watches anything (most shards: then closes skip the lookup).
    pub(crate) fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

impl Shard {
    /// Asks the presence owner for `topic`'s members, for `conn` (`watch`: the token of
    /// the watch it starts).
    pub(super) fn request_snapshot(&self, conn: ConnId, topic: &str, watch: Option<u64>) {
        let Some(user) = self.user_of(conn) else { return };
        let to = SnapshotTo { shard: self.ctx.id, topic: topic.into(), conn, user, watch };
        self.bus.presence_snapshot(to);
    }

    /// News of joins and leaves may have been lost on the way to this node: every watcher
    /// gets a fresh snapshot (a `presence` message replacing its member list), then the
    /// news after it.
    pub(super) fn presence_resync(&self) {
        let again = self.watchers.borrow_mut().rewatch_all();
        for (topic, conn, token) in again {
            self.request_snapshot(conn, &topic, Some(token));
        }
    }

    /// A topic's members arrived for one connection.
    pub(super) fn presence_snapshot(&self, to: &SnapshotTo, seq: u64, json: &str) -> u64 {
        let conns = self.table.borrow();
        let Some(conn) = conns.get(to.conn.0 as usize).filter(|c| c.user() == &*to.user) else {
            return 0;
        };
        let mut then = Vec::new();
        if let Some(token) = to.watch {
            let fate =
                self.watchers.borrow_mut().snapshot(&to.topic, to.conn, token, seq, &mut then);
            match fate {
                SnapshotFate::Send => {}
                SnapshotFate::Stale => return 0,
                SnapshotFate::AskAgain(token) => {
                    drop(conns);
                    self.request_snapshot(to.conn, &to.topic, Some(token));
                    return 0;
                }
            }
        }
        conn.enqueue(&self.ctx, &Rc::new(encode_text(json)));
        for news in &then {
            conn.enqueue(&self.ctx, &Rc::new(news.frame.clone()));
        }
        1 + then.len() as u64
    }

    /// A join or leave: to the topic's watchers that are live.
    pub(super) fn presence_news(&self, news: &Arc<News>) -> u64 {
        let mut to = Vec::new();
        self.watchers.borrow_mut().news(news, &mut to);
        if to.is_empty() {
            return 0;
        }
        let frame = Rc::new(news.frame.clone());
        let conns = self.table.borrow();
        let mut delivered = 0;
        for id in to {
            if let Some(conn) = conns.get(id.0 as usize) {
                delivered += u64::from(conn.enqueue(&self.ctx, &frame));
            }
        }
        delivered
    }

    /// Connection `conn` of `user` is going: it leaves every topic it was in (and stops
    /// watching them), and the app backend hears that it closed.
    pub(super) fn presence_gone(&self, conn: &crate::conn::Conn) {
        let id = conn.id();
        let topics: Vec<Box<str>> = self.hub.borrow().topics_of(id).map(Box::from).collect();
        let watching = !self.watchers.borrow().is_empty();
        for topic in &topics {
            self.bus.presence_change(topic, conn.user(), false);
            if watching {
                self.watchers.borrow_mut().forget(topic, id);
            }
        }
        if let Some(webhooks) = &self.webhooks {
            let (code, reason) = CloseReason::of(conn.state().ending());
            let node = &self.ctx.node_stats().node.0;
            let now = crate::clock::unix_now_ms();
            webhooks.offer(WebhookEvent::closed(conn.user(), node, code, reason, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::NewsKind;

    fn news(seq: u64) -> Arc<News> {
        Arc::new(News::new(NewsKind::Join, "t", &format!("u{seq}"), seq))
    }

    #[test]
    fn news_waits_for_the_snapshot_and_nothing_is_doubled() {
        let mut w = Watchers::default();
        let token = w.watch("t", ConnId(1));
        let mut to = Vec::new();
        // News 5 and 7 arrive before the snapshot (which includes up to 6).
        w.news(&news(5), &mut to);
        w.news(&news(7), &mut to);
        assert!(to.is_empty(), "held until the snapshot");
        let mut then = Vec::new();
        assert_eq!(w.snapshot("t", ConnId(1), token, 6, &mut then), SnapshotFate::Send);
        assert_eq!(then.iter().map(|n| n.seq).collect::<Vec<_>>(), [7]);
        // A late copy of older news, then newer news.
        w.news(&news(6), &mut to);
        assert!(to.is_empty());
        w.news(&news(8), &mut to);
        assert_eq!(to, [ConnId(1)]);
        // A second snapshot for the same token is stale.
        assert_eq!(w.snapshot("t", ConnId(1), token, 9, &mut then), SnapshotFate::Stale);
    }

    #[test]
    fn an_ended_or_restarted_watch_drops_old_snapshots() {
        let mut w = Watchers::default();
        let first = w.watch("t", ConnId(1));
        let second = w.watch("t", ConnId(1));
        let mut then = Vec::new();
        assert_eq!(w.snapshot("t", ConnId(1), first, 1, &mut then), SnapshotFate::Stale);
        w.forget("t", ConnId(1));
        assert_eq!(w.snapshot("t", ConnId(1), second, 1, &mut then), SnapshotFate::Stale);
        assert!(w.is_empty());
    }

    #[test]
    fn a_resync_restarts_every_watch_and_its_snapshot_replaces_the_list() {
        let mut w = Watchers::default();
        let a = w.watch("t", ConnId(1));
        let mut then = Vec::new();
        assert_eq!(w.snapshot("t", ConnId(1), a, 3, &mut then), SnapshotFate::Send);
        w.watch("u", ConnId(2));
        let again = w.rewatch_all();
        assert_eq!(again.len(), 2);
        let (_, _, token) = again.iter().find(|(t, _, _)| &**t == "t").cloned().unwrap();
        // News lost on the way is in the new snapshot; news after it still comes, held
        // until the snapshot; the old token is stale.
        let mut to = Vec::new();
        w.news(&news(9), &mut to);
        assert!(to.is_empty(), "held until the new snapshot");
        assert_eq!(w.snapshot("t", ConnId(1), a, 8, &mut then), SnapshotFate::Stale);
        assert_eq!(w.snapshot("t", ConnId(1), token, 8, &mut then), SnapshotFate::Send);
        assert_eq!(then.iter().map(|n| n.seq).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_storm_past_the_hold_limit_asks_again() {
        let mut w = Watchers::default();
        let token = w.watch("t", ConnId(1));
        let mut to = Vec::new();
        for seq in 0..=MAX_HELD as u64 {
            w.news(&news(seq + 1), &mut to);
        }
        let mut then = Vec::new();
        let SnapshotFate::AskAgain(again) = w.snapshot("t", ConnId(1), token, 0, &mut then) else {
            panic!("expected to ask again");
        };
        assert_eq!(w.snapshot("t", ConnId(1), again, 10_000, &mut then), SnapshotFate::Send);
        assert!(then.is_empty());
    }
}
