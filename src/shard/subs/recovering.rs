//! Connections waiting for a replay of a stream before they get its live events. Owned by
//! the subscription book (`shard::subs`).
//!
//! Runs on: its shard. Pure data, no I/O.
//!
//! A client that subscribes with `since` (or connects with `?lastEventId=`) must get the
//! events it missed, in order, and then the live ones with no gap and no duplicate. The
//! shard asks the stream's sequencer for the replay (`bus::ReplayRequest`); the answer
//! comes through the shard's inbox behind every live event of the stream up to the
//! answer's position, and ahead of every later one. So while the answer is on its way the
//! connection's live events of that stream are **held back** (not queued: the answer
//! contains them) — and from the answer on, it gets live ones again. Nothing is buffered
//! per connection.

use std::collections::HashMap;

use crate::{history::Since, ids::ConnId, ids::Route, xshard::ReplayPurpose};

/// One connection's replay of one stream.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Matches the answer (a newer request of the same stream replaces this one).
    token: u64,
    since: Since,
    purpose: ReplayPurpose,
    /// The request went to the bus (it waits for the topic's confirmation first).
    requested: bool,
}

/// What to ask the bus for, once the stream reaches this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ToRequest {
    pub token: u64,
    pub since: Since,
    pub purpose: ReplayPurpose,
}

/// Every pending replay of the shard.
#[derive(Debug, Default)]
pub(crate) struct Recoveries {
    last_token: u64,
    pending: HashMap<(Route, ConnId), Pending>,
}

impl Recoveries {
    /// `conn` wants `route` replayed from `since`; its live events of the stream are held
    /// back from now on. Replaces a pending replay of the same stream.
    pub(crate) fn begin(
        &mut self,
        route: Route,
        conn: ConnId,
        since: Since,
        purpose: ReplayPurpose,
    ) {
        self.last_token += 1;
        let pending = Pending { token: self.last_token, since, purpose, requested: false };
        self.pending.insert((route, conn), pending);
    }

    /// The request to send for `conn`'s replay of `route`, once (`None` when there is
    /// none, or it was sent).
    pub(crate) fn take_request(&mut self, route: &Route, conn: ConnId) -> Option<ToRequest> {
        let pending = self.pending.get_mut(&(route.clone(), conn))?;
        if pending.requested {
            return None;
        }
        pending.requested = true;
        Some(ToRequest { token: pending.token, since: pending.since, purpose: pending.purpose })
    }

    /// Whether nobody waits for a replay (the fan-out then checks nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `conn`'s live events of `route` are held back.
    pub(crate) fn holds(&self, route: &Route, conn: ConnId) -> bool {
        !self.pending.is_empty() && self.pending.contains_key(&(route.clone(), conn))
    }

    /// The answer with `token` arrived: `true` when it is the one `conn` waits for (which
    /// then gets live events again).
    pub(crate) fn finish(&mut self, route: &Route, conn: ConnId, token: u64) -> bool {
        let key = (route.clone(), conn);
        match self.pending.get(&key) {
            Some(p) if p.token == token => {
                self.pending.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// `conn` left `route` (unsubscribed).
    pub(crate) fn forget(&mut self, route: &Route, conn: ConnId) {
        if !self.pending.is_empty() {
            self.pending.remove(&(route.clone(), conn));
        }
    }

    /// `conn` closed.
    pub(crate) fn forget_conn(&mut self, conn: ConnId) {
        if !self.pending.is_empty() {
            self.pending.retain(|(_, c), _| *c != conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_are_held_until_the_matching_answer() {
        let mut r = Recoveries::default();
        let t = Route::Topic("t".into());
        let (a, b) = (ConnId(1), ConnId(2));
        assert!(!r.holds(&t, a));
        r.begin(t.clone(), a, Since::Latest, ReplayPurpose::Latest);
        assert!(r.holds(&t, a) && !r.holds(&t, b) && !r.holds(&Route::Broadcast, a));
        let first = r.take_request(&t, a).expect("requested once");
        assert_eq!(r.take_request(&t, a), None);
        // Subscribed again before the answer: the old answer is ignored, the new one counts.
        r.begin(t.clone(), a, Since::Oldest, ReplayPurpose::Recover);
        let second = r.take_request(&t, a).expect("the new request");
        assert!(!r.finish(&t, a, first.token));
        assert!(r.holds(&t, a));
        assert!(r.finish(&t, a, second.token));
        assert!(!r.holds(&t, a) && r.is_empty());
    }

    #[test]
    fn leaving_or_closing_drops_the_wait() {
        let mut r = Recoveries::default();
        let t = Route::Topic("t".into());
        r.begin(t.clone(), ConnId(1), Since::Latest, ReplayPurpose::Latest);
        r.begin(Route::Broadcast, ConnId(1), Since::Latest, ReplayPurpose::Recover);
        r.begin(t.clone(), ConnId(2), Since::Latest, ReplayPurpose::Latest);
        r.forget(&t, ConnId(2));
        assert!(!r.holds(&t, ConnId(2)));
        r.forget_conn(ConnId(1));
        assert!(r.is_empty());
    }
}
