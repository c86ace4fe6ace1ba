//! The per-stream position tracker that makes the node's live delivery gap-free.
//!
//! Runs on: the bridge thread, inside the stream core (`bus::redis::streams`) that owns
//! one tracker per stream the node delivers; driven as well by the simulation. Pure: no
//! I/O, no clock.
//!
//! A [`StreamTracker`] keeps the last offset the node delivered **contiguously**. A live
//! event past a gap is held and the gap is read from the history (never skipped:
//! advancing past a gap and backfilling later loses events); what the history no longer
//! has is reported as lost, so the stream's clients are told `recovered: false`. A read in
//! the tracker's epoch that ends below the position the read was made from means Redis
//! lost writes the node had delivered: the tracker abandons the epoch (its ids may name
//! two events from now on) and reports it (the stream core has Redis abandon it too, with
//! `REBASE_SCRIPT` of `bus::redis::history`).

use std::{collections::BTreeMap, sync::Arc};

use crate::{history::StreamState, ids::EventId, xshard::Delivery};

/// A read of the history, its entries framed: the stream's state and its events.
pub(crate) type FramedSnapshot = (StreamState, Vec<Arc<Delivery>>);

/// Where a stream stood for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// Never learned (Redis was away when the node started reading the stream): the
    /// first event sets it.
    Unknown,
    /// The stream had no history when the node started reading it: the next event is
    /// the first of a new epoch.
    Empty,
    /// The last event delivered contiguously.
    At(EventId),
    /// The node gave this epoch up: Redis lost writes of it (a read in it found the
    /// stream's last offset below what the node had delivered already). Its events are
    /// dropped — an id of it above what Redis kept may name two events — and the next
    /// epoch starts from its first event (the loss was reported once, when found).
    Abandoned(u64),
}

/// Epochs a tracker remembers having left (a Redis restarted from an old snapshot twice
/// in a row comes back to an epoch the node had moved on from).
const EPOCHS_REMEMBERED: usize = 4;

/// Most live events held behind a gap before the gap is given up as lost.
pub(crate) const MAX_HELD: usize = 65_536;

/// Complete reads of the history after which a held event that Redis still does not have
/// is dropped. A real event published just after a read executed can come live before
/// that read's answer (one more read finds it); one that three reads in a row did not
/// find is not in the history: a payload from outside with a made-up id, or a write Redis
/// lost. Holding it longer would hold the stream behind it forever.
pub(crate) const UNCONFIRMED_READS: u8 = 3;

/// What to do with a live event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// Deliver it (the next one in order).
    Deliver,
    /// Already delivered (it came back through the history first): drop it.
    Duplicate,
    /// Held behind a gap; read the history after this position to fill it (`None`: a
    /// read is on its way already).
    Held(Option<EventId>),
    /// Too many events held behind a gap that is not being filled: the gap is lost, and
    /// the held events are ready ([`StreamTracker::take_ready`]).
    GaveUp,
}

/// The result of filling a gap.
#[derive(Debug, Default)]
pub(crate) struct Filled {
    /// To deliver now, in order.
    pub deliver: Vec<Arc<Delivery>>,
    /// Events were lost for good (trimmed, expired, or the epoch changed): the stream's
    /// clients must resync.
    pub lost: bool,
    /// Read again after this position (the read stopped at its count, or events arrived
    /// live past what it saw).
    pub again: Option<EventId>,
    /// Redis lost writes of this epoch (the read's last offset was below the position the
    /// read was made from): abandon it in Redis (`REBASE_SCRIPT` (`bus::redis::history`)), so that no one goes
    /// on handing out its ids. `lost` is set too.
    pub regressed: Option<u64>,
    /// Held live events the history never confirmed, dropped ([`UNCONFIRMED_READS`]).
    pub dropped: usize,
}

/// One stream's delivery position on this node.
#[derive(Debug)]
pub(crate) struct StreamTracker {
    position: Position,
    /// Live events past a gap, by offset (all of the position's epoch).
    held: BTreeMap<u64, Arc<Delivery>>,
    /// A read to fill the gap is on its way.
    filling: bool,
    /// Complete reads in a row that left held events Redis did not have.
    unconfirmed: u8,
    /// A read was asked for (a reconnect, `Lagged`) while one was on its way: that one
    /// may have been made before what the new one is for (it may even answer for a Redis
    /// that has since restarted older), so another read follows it.
    reread: bool,
    /// The last id delivered in each of the epochs this tracker left (the latest few):
    /// Redis coming back to one of them below that lost writes too.
    left: Vec<EventId>,
    /// Which of the node's trackers this is (a stream untracked and tracked again gets a
    /// new one): a read made for an earlier one is not an answer for this one.
    generation: u64,
}

impl StreamTracker {
    #[cfg(test)]
    pub(crate) fn new(position: Position) -> StreamTracker {
        StreamTracker::numbered(position, 0)
    }

    /// The node's tracker number `generation` of a stream, starting at `position`.
    pub(crate) fn numbered(position: Position, generation: u64) -> StreamTracker {
        StreamTracker {
            position,
            held: BTreeMap::new(),
            filling: false,
            unconfirmed: 0,
            reread: false,
            left: Vec::new(),
            generation,
        }
    }

    /// Which of the node's trackers this is ([`numbered`](Self::numbered)).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The last event delivered contiguously, when known.
    pub(crate) fn position(&self) -> Option<EventId> {
        match self.position {
            Position::At(id) => Some(id),
            Position::Unknown | Position::Empty | Position::Abandoned(_) => None,
        }
    }

    /// The position is certain (the node knows where its delivery stands).
    pub(crate) fn is_known(&self) -> bool {
        !matches!(self.position, Position::Unknown)
    }

    /// Whether a gap read is on its way.
    #[cfg(test)]
    pub(crate) fn is_filling(&self) -> bool {
        self.filling
    }

    /// Starts a read after the position (a reconnect, or a `Lagged`): `None` when the
    /// position is not known, or when one is on its way already (another follows it when
    /// it comes back).
    pub(crate) fn start_fill(&mut self) -> Option<EventId> {
        if self.filling {
            self.reread = true;
            return None;
        }
        let from = match self.position {
            Position::At(id) => id,
            // Nothing was delivered yet (of the epoch Redis has now): from its start.
            Position::Empty | Position::Abandoned(_) => EventId { epoch: 0, offset: 0 },
            Position::Unknown => return None,
        };
        self.filling = true;
        Some(from)
    }

    /// A live event `id` arrived. Returns `(what to do, lost)`: `lost` when the epoch
    /// changed (the history was lost: what this node had not delivered of the old epoch
    /// is gone).
    pub(crate) fn live(&mut self, id: EventId, delivery: &Arc<Delivery>) -> (Live, bool) {
        if self.left_at_or_above(id) {
            // An epoch this node moved on from, at an id it delivered there: a copy from
            // before, or Redis went back to that epoch and hands its ids out again.
            return (Live::Duplicate, false);
        }
        let mut lost = false;
        let at = match self.position {
            Position::Unknown => {
                self.position = Position::At(id);
                return (Live::Deliver, false);
            }
            Position::Empty => self.start_of(id.epoch),
            // An id of the abandoned epoch may name another event than the one stored.
            Position::Abandoned(epoch) if epoch == id.epoch => return (Live::Duplicate, false),
            Position::Abandoned(_) => self.start_of(id.epoch),
            Position::At(at) if at.epoch != id.epoch => {
                lost = true;
                self.held.clear();
                self.leave(at);
                self.start_of(id.epoch)
            }
            Position::At(at) => at,
        };
        self.position = Position::At(at);
        if id.offset <= at.offset {
            return (Live::Duplicate, lost);
        }
        if id.offset == at.offset + 1 && self.held.is_empty() {
            self.position = Position::At(id);
            return (Live::Deliver, lost);
        }
        self.held.insert(id.offset, delivery.clone());
        if self.held.len() > MAX_HELD {
            // The gap is not being filled (Redis is away): give it up, go on from the
            // first held event (`take_ready` hands them over).
            let first = self.held.keys().next().copied().unwrap_or(id.offset);
            self.position = Position::At(EventId { epoch: id.epoch, offset: first - 1 });
            self.filling = false;
            return (Live::GaveUp, true);
        }
        if self.filling {
            return (Live::Held(None), lost);
        }
        self.filling = true;
        (Live::Held(Some(at)), lost)
    }

    /// The tracker leaves the epoch of `at`, the last id it delivered there.
    fn leave(&mut self, at: EventId) {
        self.left.retain(|l| l.epoch != at.epoch);
        if self.left.len() == EPOCHS_REMEMBERED {
            self.left.remove(0);
        }
        self.left.push(at);
    }

    /// Where delivery in `epoch` starts: after what this tracker delivered there before it
    /// left it, or at its beginning.
    fn start_of(&self, epoch: u64) -> EventId {
        EventId { epoch, offset: self.left_in(epoch).map_or(0, |l| l.offset) }
    }

    /// The last id delivered in `epoch`, if this tracker left it.
    fn left_in(&self, epoch: u64) -> Option<EventId> {
        self.left.iter().find(|l| l.epoch == epoch).copied()
    }

    /// `id` is in an epoch this tracker left, at or below what it delivered there.
    fn left_at_or_above(&self, id: EventId) -> bool {
        self.left_in(id.epoch).is_some_and(|l| id.offset <= l.offset)
    }

    /// Where the tracker stands, as the `from` of a read made now names it.
    fn cursor(&self) -> Option<EventId> {
        match self.position {
            Position::At(id) => Some(id),
            Position::Empty | Position::Abandoned(_) => Some(EventId { epoch: 0, offset: 0 }),
            Position::Unknown => None,
        }
    }

    /// A read that says nothing reliable: read again from where the tracker stands when
    /// a gap is held, else nothing to do.
    fn read_again(&mut self, mut out: Filled) -> Filled {
        if !self.held.is_empty() {
            self.read_from_cursor(&mut out);
        }
        out
    }

    /// Asks for a read from where the tracker stands (when it knows).
    fn read_from_cursor(&mut self, out: &mut Filled) {
        if let Some(cursor) = self.cursor() {
            self.filling = true;
            out.again = Some(cursor);
        }
    }

    /// Takes held events that are now next in order.
    fn release_held(&mut self, filled: &mut Filled) {
        let Position::At(mut at) = self.position else { return };
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != at.offset + 1 {
                break;
            }
            at.offset += 1;
            filled.deliver.push(entry.remove());
        }
        self.position = Position::At(at);
    }

    /// Hands over held events that have become next in order (after the position moved).
    pub(crate) fn take_ready(&mut self) -> Vec<Arc<Delivery>> {
        let mut filled = Filled::default();
        self.release_held(&mut filled);
        filled.deliver
    }

    /// A gap read came back: `snapshot` is the history read after `from` (`Err`: the read
    /// failed, retried later), `count` the most entries it asked for; `entries` are its
    /// entries framed as deliveries.
    pub(crate) fn filled(
        &mut self,
        from: EventId,
        snapshot: Result<Option<FramedSnapshot>, ()>,
        count: usize,
    ) -> Filled {
        let mut out = self.read_answered(from, snapshot, count);
        // A read asked for while this one was on its way (a reconnect): made now.
        if std::mem::take(&mut self.reread) && out.again.is_none() {
            self.read_from_cursor(&mut out);
        }
        out
    }

    /// [`filled`](Self::filled), without the read asked for meanwhile.
    fn read_answered(
        &mut self,
        from: EventId,
        snapshot: Result<Option<FramedSnapshot>, ()>,
        count: usize,
    ) -> Filled {
        self.filling = false;
        let mut out = Filled::default();
        let Ok(snapshot) = snapshot else {
            // Made again from where the tracker stands now, not from `from`: the node may
            // have delivered more meanwhile, and a read from an older position could not
            // tell that Redis lost what it delivered since (its answer would only be
            // "behind").
            out.again = Some(self.cursor().unwrap_or(from));
            return out;
        };
        // The tracker delivered since the read was made (events that came live in order):
        // the read may be older than they are, so it proves nothing missing.
        let moved = self.cursor() != Some(from);
        let Some((state, entries)) = snapshot else {
            if moved {
                return self.read_again(out);
            }
            // No history at all any more (Redis lost it, or it expired).
            if let Position::At(at) = self.position {
                out.lost |= at.offset > 0;
                self.leave(at);
            }
            self.position = Position::Empty;
            self.held.clear();
            return out;
        };
        if let Position::Abandoned(epoch) = self.position {
            if state.epoch == epoch {
                // Not abandoned in Redis yet (the compare-and-set failed or is on its way).
                out.regressed = Some(epoch);
                return out;
            }
            self.position = Position::Empty;
        }
        let in_epoch = matches!(self.position, Position::At(at) if at.epoch == state.epoch);
        let back_below =
            !in_epoch && self.left_in(state.epoch).is_some_and(|l| state.top < l.offset);
        if back_below && moved {
            // Redis went back to an epoch this node had left, below what it delivered
            // there — but the node has delivered since this read was made (of a newer
            // epoch): have Redis abandon the old one (a no-op if it moved on), and stay.
            out.regressed = Some(state.epoch);
            return self.read_again(out);
        }
        if back_below || (in_epoch && from.epoch == state.epoch && state.top < from.offset) {
            // This node had delivered `from` before asking (every event it delivers was
            // stored before it was published), yet Redis's stream ends below it: Redis
            // lost writes. Every id of this epoch above its top may be handed out again.
            out.lost = true;
            out.regressed = Some(state.epoch);
            self.held.clear();
            self.unconfirmed = 0;
            if let Position::At(at) = self.position {
                self.leave(at);
            }
            self.position = Position::Abandoned(state.epoch);
            return out;
        }
        if moved {
            return self.read_again(out);
        }
        let at = match self.position {
            Position::At(at) => at,
            Position::Empty | Position::Unknown | Position::Abandoned(_) => {
                self.start_of(state.epoch)
            }
        };
        if at.epoch != state.epoch {
            // The epoch changed under us: what we missed of the old one is gone. Start
            // from where the new epoch stands now (its clients resync anyway).
            out.lost = true;
            self.held.retain(|&offset, d| {
                d.id.is_some_and(|i| i.epoch == state.epoch) && offset > state.top
            });
            if at.offset > 0 {
                self.leave(at);
            }
            self.position = Position::At(state.position());
            self.release_held(&mut out);
            return out;
        }
        let mut at = EventId { epoch: state.epoch, offset: at.offset };
        let read_all = entries.len() < count;
        let read_upto = entries.last().and_then(|d| d.id).map_or(at.offset, |i| i.offset);
        for delivery in entries {
            if let Some(id) = delivery.id {
                // The history's event, not a live one with the same id (which may come
                // from anyone who can publish on the channel).
                self.held.insert(id.offset, delivery);
            }
        }
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            if offset > state.top {
                // Past what Redis had when it answered: published after the read (the
                // next read confirms it), or a write Redis has lost since it came live —
                // delivering it could give its id a second event. Read again.
                break;
            }
            if offset <= at.offset {
                entry.remove();
                continue;
            }
            if offset == at.offset + 1 {
                at.offset = offset;
                out.deliver.push(entry.remove());
                continue;
            }
            // A gap before `offset`. The read covered it (its entries went past it, or it
            // reached the end of what existed), so the history no longer has it: lost.
            let covered = at.offset < state.top && (at.offset < read_upto || read_all);
            if covered {
                out.lost = true;
                at.offset = offset - 1;
                continue;
            }
            break;
        }
        // Events that existed at read time and are still missing: the history lost them.
        if read_all && at.offset < state.top && self.held.range(..=state.top).next().is_none() {
            out.lost = true;
            at.offset = state.top;
        }
        // Held events past everything Redis has: published after the read (the next read
        // finds them), or never stored at all.
        if read_all && at.offset >= state.top && !self.held.is_empty() {
            self.unconfirmed += 1;
            if self.unconfirmed >= UNCONFIRMED_READS {
                out.dropped = self.held.len();
                self.held.clear();
            }
        } else {
            self.unconfirmed = 0;
        }
        if self.held.is_empty() {
            self.unconfirmed = 0;
        }
        self.position = Position::At(at);
        if !read_all || !self.held.is_empty() {
            self.filling = true;
            out.again = Some(at);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ids::{NodeId, Route},
        ws::frame,
    };

    fn event(epoch: u64, offset: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            route: Route::Topic("t".into()),
            id: Some(EventId { epoch, offset }),
            origin: NodeId::redis(),
            v1: frame::encode_text("{}"),
            seed: None,
            published: None,
            lag_observed: Default::default(),
        })
    }

    fn offsets(events: &[Arc<Delivery>]) -> Vec<u64> {
        events.iter().filter_map(|d| d.id).map(|i| i.offset).collect()
    }

    fn at(offset: u64) -> EventId {
        EventId { epoch: 5, offset }
    }

    fn state(top: u64, first: Option<u64>) -> StreamState {
        StreamState { epoch: 5, top, first }
    }

    #[test]
    fn contiguous_events_go_out_and_duplicates_are_dropped() {
        let mut t = StreamTracker::new(Position::At(at(3)));
        assert_eq!(t.live(at(4), &event(5, 4)), (Live::Deliver, false));
        assert_eq!(t.live(at(4), &event(5, 4)), (Live::Duplicate, false));
        assert_eq!(t.live(at(2), &event(5, 2)), (Live::Duplicate, false));
        assert_eq!(t.position(), Some(at(4)));
        // A stream first seen empty starts at offset 1 of whatever epoch comes.
        let mut t = StreamTracker::new(Position::Empty);
        assert_eq!(t.live(EventId { epoch: 9, offset: 1 }, &event(9, 1)), (Live::Deliver, false));
    }

    #[test]
    fn a_gap_is_held_and_filled_from_the_history_in_order() {
        let mut t = StreamTracker::new(Position::At(at(3)));
        // 4 and 5 were lost on the way; 6 and 7 arrive.
        assert_eq!(t.live(at(6), &event(5, 6)), (Live::Held(Some(at(3))), false));
        assert_eq!(t.live(at(7), &event(5, 7)), (Live::Held(None), false));
        assert!(t.is_filling());
        // The read (after 3) finds 4..=6 (6 was stored before the read, 7 after): 7 waits
        // for a read that has it (it could be a write Redis lost since).
        let read = Ok(Some((state(6, Some(1)), vec![event(5, 4), event(5, 5), event(5, 6)])));
        let filled = t.filled(at(3), read, 1000);
        assert_eq!(offsets(&filled.deliver), [4, 5, 6]);
        assert!(!filled.lost);
        assert_eq!(filled.again, Some(at(6)));
        let read = Ok(Some((state(7, Some(1)), vec![event(5, 7)])));
        let filled = t.filled(at(6), read, 1000);
        assert_eq!((offsets(&filled.deliver), filled.again), (vec![7], None));
        assert_eq!(t.position(), Some(at(7)));
        assert!(!t.is_filling());
        assert_eq!(t.live(at(8), &event(5, 8)), (Live::Deliver, false));
    }

    #[test]
    fn what_the_history_no_longer_has_is_lost_not_skipped_silently() {
        let mut t = StreamTracker::new(Position::At(at(3)));
        t.live(at(9), &event(5, 9));
        // Trimmed: the oldest kept entry is 7.
        let read = Ok(Some((state(9, Some(7)), vec![event(5, 7), event(5, 8), event(5, 9)])));
        let filled = t.filled(at(3), read, 1000);
        assert_eq!(offsets(&filled.deliver), [7, 8, 9]);
        assert!(filled.lost);
        assert_eq!(t.position(), Some(at(9)));
    }

    #[test]
    fn a_read_that_stops_at_its_count_continues() {
        let mut t = StreamTracker::new(Position::At(at(0)));
        assert_eq!(t.start_fill(), Some(at(0)));
        assert_eq!(t.start_fill(), None, "one read at a time");
        let read = Ok(Some((state(5, Some(1)), vec![event(5, 1), event(5, 2)])));
        let filled = t.filled(at(0), read, 2);
        assert_eq!(offsets(&filled.deliver), [1, 2]);
        assert_eq!(filled.again, Some(at(2)));
        let read = Ok(Some((state(5, Some(1)), vec![event(5, 3), event(5, 4), event(5, 5)])));
        let filled = t.filled(at(2), read, 4);
        assert_eq!(
            (offsets(&filled.deliver), filled.lost, filled.again),
            (vec![3, 4, 5], false, None)
        );
    }

    #[test]
    fn a_reconnect_read_with_nothing_missed_changes_nothing() {
        let mut t = StreamTracker::new(Position::At(at(5)));
        let from = t.start_fill().unwrap();
        let filled = t.filled(from, Ok(Some((state(5, Some(1)), vec![]))), 1000);
        assert!(filled.deliver.is_empty() && !filled.lost && filled.again.is_none());
        assert_eq!(t.position(), Some(at(5)));
        // A failed read is retried from the same place.
        let from = t.start_fill().unwrap();
        assert_eq!(t.filled(from, Err(()), 1000).again, Some(at(5)));
    }

    #[test]
    fn a_new_epoch_means_the_rest_of_the_old_one_is_lost() {
        let mut t = StreamTracker::new(Position::At(at(5)));
        let (action, lost) = t.live(EventId { epoch: 6, offset: 1 }, &event(6, 1));
        assert_eq!((action, lost), (Live::Deliver, true));
        assert_eq!(t.position(), Some(EventId { epoch: 6, offset: 1 }));
        // Found by a reconnect read instead: lost, and the position moves to the new top.
        let mut t = StreamTracker::new(Position::At(at(5)));
        let from = t.start_fill().unwrap();
        let read = Ok(Some((
            StreamState { epoch: 6, top: 2, first: Some(1) },
            vec![event(6, 1), event(6, 2)],
        )));
        let filled = t.filled(from, read, 1000);
        assert!(filled.lost);
        assert_eq!(t.position(), Some(EventId { epoch: 6, offset: 2 }));
        // No history at all any more: lost; the next event starts a new epoch.
        let mut t = StreamTracker::new(Position::At(at(5)));
        let from = t.start_fill().unwrap();
        assert!(t.filled(from, Ok(None), 1000).lost);
        assert_eq!(t.live(EventId { epoch: 7, offset: 1 }, &event(7, 1)), (Live::Deliver, false));
    }

    #[test]
    fn a_read_below_what_was_delivered_abandons_the_epoch() {
        // Delivered up to 10; Redis came back from a snapshot at 5 and handed out 6 again.
        let mut t = StreamTracker::new(Position::At(at(10)));
        let from = t.start_fill().unwrap();
        let read = Ok(Some((state(6, Some(1)), vec![])));
        let filled = t.filled(from, read, 1000);
        assert!(filled.lost && filled.deliver.is_empty() && filled.again.is_none());
        assert_eq!(filled.regressed, Some(5));
        assert!(t.is_known() && t.position().is_none());
        // The reused ids of the abandoned epoch are never delivered, whatever their offset.
        assert_eq!(t.live(at(7), &event(5, 7)), (Live::Duplicate, false));
        assert_eq!(t.live(at(11), &event(5, 11)), (Live::Duplicate, false));
        // A read before the compare-and-set landed asks for it again and delivers nothing.
        let from = t.start_fill().unwrap();
        let filled = t.filled(from, Ok(Some((state(8, Some(1)), vec![event(5, 8)]))), 1000);
        assert_eq!((filled.regressed, filled.deliver.len(), filled.lost), (Some(5), 0, false));
        // The new epoch starts from its first event, without a second loss report.
        let next = EventId { epoch: 6, offset: 1 };
        assert_eq!(t.live(next, &event(6, 1)), (Live::Deliver, false));
        assert_eq!(t.position(), Some(next));
    }

    #[test]
    fn a_read_behind_live_delivery_is_not_a_regression() {
        // The read was made from 3; events 4 and 5 came live meanwhile; Redis's answer
        // (made before they were stored) says 3: nothing was lost.
        let mut t = StreamTracker::new(Position::At(at(3)));
        let from = t.start_fill().unwrap();
        assert_eq!(t.live(at(4), &event(5, 4)), (Live::Deliver, false));
        let filled = t.filled(from, Ok(Some((state(3, Some(1)), vec![]))), 1000);
        assert_eq!((filled.regressed, filled.lost), (None, false));
        assert_eq!(t.position(), Some(at(4)));
    }

    #[test]
    fn redis_back_to_an_epoch_the_node_left_below_what_it_delivered_is_a_loss() {
        let mut t = StreamTracker::new(Position::At(at(2)));
        // The stream moves on to epoch 9 (Redis restarted, another node abandoned 5)...
        assert_eq!(t.live(EventId { epoch: 9, offset: 1 }, &event(9, 1)), (Live::Deliver, true));
        // ... then Redis comes back from the same old snapshot: epoch 5, at offset 1.
        let from = t.start_fill().unwrap();
        let filled = t.filled(from, Ok(Some((state(1, Some(1)), vec![]))), 1000);
        assert_eq!((filled.regressed, filled.lost), (Some(5), true));
        // An id of epoch 5 handed out again is never delivered.
        assert_eq!(t.live(at(2), &event(5, 2)), (Live::Duplicate, false));
    }

    #[test]
    fn a_reconnect_during_a_read_is_followed_by_another_read() {
        let mut t = StreamTracker::new(Position::At(at(3)));
        let from = t.start_fill().unwrap();
        // Redis restarts while the read is on its way: the reconnect asks for a read.
        assert_eq!(t.start_fill(), None);
        // The old read's answer (made before the restart) says nothing missing...
        let filled = t.filled(from, Ok(Some((state(3, Some(1)), vec![]))), 1000);
        // ... and another read follows, which sees the Redis of now.
        assert_eq!(filled.again, Some(at(3)));
        let filled = t.filled(at(3), Ok(Some((state(2, Some(1)), vec![]))), 1000);
        assert_eq!(filled.regressed, Some(5), "the restart lost writes: found");
    }

    #[test]
    fn a_failed_read_is_made_again_from_where_the_node_stands_then() {
        let mut t = StreamTracker::new(Position::At(at(2)));
        let from = t.start_fill().unwrap();
        // 3 comes live while the read is on its way; then Redis restarts older (top 2)
        // and the read fails with the connection.
        assert_eq!(t.live(at(3), &event(5, 3)), (Live::Deliver, false));
        assert_eq!(t.start_fill(), None, "the reconnect: a read is on its way");
        let filled = t.filled(from, Err(()), 1000);
        assert_eq!(filled.again, Some(at(3)), "from 3, not from the failed read's 2");
        // The retry sees the Redis of now, below what the node delivered: found.
        let filled = t.filled(at(3), Ok(Some((state(2, Some(1)), vec![]))), 1000);
        assert_eq!(filled.regressed, Some(5));
        assert!(filled.lost);
    }

    #[test]
    fn a_made_up_id_cannot_hold_a_stream_or_replace_its_event() {
        let mut t = StreamTracker::new(Position::At(at(3)));
        // From outside: an id far ahead of the stream.
        assert_eq!(t.live(at(50), &event(5, 50)), (Live::Held(Some(at(3))), false));
        let mut from = at(3);
        for read in 1..=UNCONFIRMED_READS {
            let filled = t.filled(from, Ok(Some((state(3, Some(1)), vec![]))), 1000);
            if read < UNCONFIRMED_READS {
                assert_eq!(filled.again, Some(at(3)), "read {read}: one more read");
                from = filled.again.unwrap();
            } else {
                assert_eq!((filled.dropped, filled.again), (1, None), "given up");
            }
        }
        assert_eq!(t.live(at(4), &event(5, 4)), (Live::Deliver, false));
        // A made-up event held at an offset the history then has: the stored one wins.
        let forged = event(5, 6);
        assert_eq!(t.live(at(6), &forged), (Live::Held(Some(at(4))), false));
        let stored = event(5, 6);
        let filled =
            t.filled(at(4), Ok(Some((state(6, Some(1)), vec![event(5, 5), stored.clone()]))), 1000);
        assert_eq!(offsets(&filled.deliver), [5, 6]);
        assert!(Arc::ptr_eq(&filled.deliver[1], &stored));
    }
}
