//! History and recovery: what a stream keeps of its past, and what a client coming back
//! with a position gets.
//!
//! Runs on: whoever sequences a stream — the owner shard with the embedded bus
//! ([`memory`]), the Redis bridge thread with Redis (which stores the history in Redis
//! Streams). Pure: no I/O, the clock is an argument.
//!
//! The contract (PROTOCOL.md, "Event ids and recovery"):
//! - every event of a stream with history has an id `<epoch>:<offset>`: the offset grows
//!   by exactly one per event, the epoch changes whenever the stream's history was lost;
//! - a client that comes back with the id of the last event it saw gets every event
//!   after it, once and in order, then live ones — or `recovered: false` when that is not
//!   possible ([`plan`] decides), never a silent skip.

pub(crate) mod memory;
pub(crate) mod retention;

use std::sync::Arc;

use crate::{
    ids::EventId,
    xshard::{Delivery, ReplayAnswer},
};

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// After this event (the last one the client saw).
    After(EventId),
    /// The stream's last event only (`since: "latest"`).
    Latest,
    /// The oldest event kept (a `history` command without `since`).
    Oldest,
    /// A position that is not an event id (a malformed `lastEventId`): never recoverable.
    Malformed,
}

impl Since {
    /// Parses a client's `since` / `lastEventId`: `latest` or an event id.
    ///
    /// # Errors
    /// What a valid value looks like.
    pub(crate) fn parse(text: &str) -> Result<Since, &'static str> {
        if text == "latest" {
            return Ok(Since::Latest);
        }
        text.parse()
            .map(Since::After)
            .map_err(|_| "since must be \"latest\" or an event id <epoch>:<offset>")
    }
}

/// What a stream's history holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// The history's epoch.
    pub epoch: u64,
    /// The offset of the stream's last event (0: none yet in this epoch).
    pub top: u64,
    /// The offset of the oldest event still kept (`None`: none kept, all trimmed or
    /// expired).
    pub first: Option<u64>,
}

impl StreamState {
    /// The position of the stream's last event.
    pub(crate) fn position(&self) -> EventId {
        EventId { epoch: self.epoch, offset: self.top }
    }
}

/// What to send for a replay request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The events with offsets `from..=to` (none when `from > to`), then "recovered".
    Replay {
        /// First offset to send.
        from: u64,
        /// Last offset to send.
        to: u64,
    },
    /// The position cannot be recovered: tell the client to resync.
    Lost,
}

impl Plan {
    /// Nothing to send, and nothing lost.
    pub(crate) const NOTHING: Plan = Plan::Replay { from: 1, to: 0 };
}

/// Decides a replay of the stream in `state` (`None`: the stream has no history at all)
/// for a client at `since`, sending at most `max_replay` events.
///
/// `Lost` when the epoch changed, the position is in the future, events after it were
/// trimmed or expired, or more than `max_replay` events were missed. A history page
/// ([`Since::Oldest`], or a limit) is cut by the caller, not here.
pub(crate) fn plan(since: Since, state: Option<StreamState>, max_replay: u64) -> Plan {
    match (since, state) {
        (Since::Malformed, _) | (Since::After(_), None) => Plan::Lost,
        (Since::Latest | Since::Oldest, None) => Plan::NOTHING,
        (Since::Latest, Some(s)) => match s.first {
            Some(first) if first <= s.top && s.top > 0 => Plan::Replay { from: s.top, to: s.top },
            _ => Plan::NOTHING,
        },
        (Since::Oldest, Some(s)) => match s.first {
            Some(first) => Plan::Replay { from: first, to: s.top },
            None => Plan::NOTHING,
        },
        (Since::After(id), Some(s)) => {
            if id.epoch != s.epoch || id.offset > s.top {
                return Plan::Lost;
            }
            if id.offset == s.top {
                return Plan::NOTHING;
            }
            let kept = s.first.is_some_and(|first| first <= id.offset + 1);
            if !kept || s.top - id.offset > max_replay {
                return Plan::Lost;
            }
            Plan::Replay { from: id.offset + 1, to: s.top }
        }
    }
}

/// The answer to a replay request on a stream in `state`: [`plan`], cut to `limit`
/// events (a history page; `u64::MAX` for a recovery), with the events `fetch(from, to)`
/// returns (offsets `from..=to`, oldest first).
pub(crate) fn answer(
    since: Since,
    state: Option<StreamState>,
    max_replay: u64,
    limit: u64,
    fetch: impl FnOnce(u64, u64) -> Vec<Arc<Delivery>>,
) -> ReplayAnswer {
    let position = state.map(|s| s.position());
    match plan(since, state, max_replay) {
        Plan::Lost => ReplayAnswer { recovered: false, events: Vec::new(), position, more: false },
        Plan::Replay { from, to } if from > to => {
            ReplayAnswer { recovered: true, events: Vec::new(), position, more: false }
        }
        Plan::Replay { from, to } => {
            let last = to.min(from.saturating_add(limit.max(1) - 1));
            let events = fetch(from, last);
            let position = state.map(|s| EventId { epoch: s.epoch, offset: last });
            ReplayAnswer { recovered: true, events, position, more: last < to }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, offset: u64) -> EventId {
        EventId { epoch, offset }
    }

    fn state(top: u64, first: Option<u64>) -> Option<StreamState> {
        Some(StreamState { epoch: 7, top, first })
    }

    #[test]
    fn event_ids_are_parsed_strictly() {
        assert_eq!("7:42".parse::<EventId>(), Ok(id(7, 42)));
        assert_eq!(id(1_700_000_000_123_456, 3).to_string(), "1700000000123456:3");
        for bad in
            ["", "7", "7:", ":4", "7:4:1", "-1:2", "1: 2", "+1:2", "a:1", "99999999999999999999:1"]
        {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Since::parse("latest"), Ok(Since::Latest));
        assert_eq!(Since::parse("3:9"), Ok(Since::After(id(3, 9))));
        assert!(Since::parse("LATEST").is_err());
    }

    #[test]
    fn a_position_in_the_kept_window_replays_what_follows_it() {
        assert_eq!(
            plan(Since::After(id(7, 5)), state(9, Some(1)), 100),
            Plan::Replay { from: 6, to: 9 }
        );
        // The oldest kept event is the first one missed: still complete.
        assert_eq!(
            plan(Since::After(id(7, 5)), state(9, Some(6)), 100),
            Plan::Replay { from: 6, to: 9 }
        );
        // Up to date: nothing to send, recovered.
        assert_eq!(plan(Since::After(id(7, 9)), state(9, Some(1)), 100), Plan::NOTHING);
        assert_eq!(plan(Since::After(id(7, 9)), state(9, None), 100), Plan::NOTHING);
        // From the start of the epoch.
        assert_eq!(
            plan(Since::After(id(7, 0)), state(2, Some(1)), 100),
            Plan::Replay { from: 1, to: 2 }
        );
    }

    #[test]
    fn every_unrecoverable_position_is_lost_never_skipped() {
        let after = |e, o| Since::After(id(e, o));
        assert_eq!(plan(after(6, 5), state(9, Some(1)), 100), Plan::Lost, "epoch changed");
        // The new epoch's offsets passed the old position: still lost.
        assert_eq!(
            plan(after(6, 5), Some(StreamState { epoch: 8, top: 50, first: Some(1) }), 100),
            Plan::Lost
        );
        assert_eq!(plan(after(7, 10), state(9, Some(1)), 100), Plan::Lost, "future");
        assert_eq!(plan(after(7, 4), state(9, Some(6)), 100), Plan::Lost, "trimmed");
        assert_eq!(plan(after(7, 4), state(9, None), 100), Plan::Lost, "expired");
        assert_eq!(plan(after(7, 4), state(9, Some(1)), 4), Plan::Lost, "over the replay limit");
        assert_eq!(plan(after(7, 4), None, 100), Plan::Lost, "no history at all");
        assert_eq!(plan(Since::Malformed, state(9, Some(1)), 100), Plan::Lost, "malformed");
    }

    #[test]
    fn latest_and_oldest() {
        assert_eq!(plan(Since::Latest, state(9, Some(3)), 100), Plan::Replay { from: 9, to: 9 });
        assert_eq!(plan(Since::Latest, state(9, None), 100), Plan::NOTHING);
        assert_eq!(plan(Since::Latest, state(0, None), 100), Plan::NOTHING);
        assert_eq!(plan(Since::Latest, None, 100), Plan::NOTHING);
        assert_eq!(plan(Since::Oldest, state(9, Some(3)), 100), Plan::Replay { from: 3, to: 9 });
        assert_eq!(plan(Since::Oldest, None, 100), Plan::NOTHING);
    }
}
