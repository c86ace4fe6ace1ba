//! The bridge's stream decisions, sans I/O: which events of each stream the node delivers
//! and in what order, which history reads it makes, how client replays are answered, and
//! what a publish's floor is.
//!
//! Runs on: the bridge thread, owned by the bridge's shared state; driven as well by the
//! deterministic simulation (`testing::sim`). Pure: no I/O, no clock (`now` is an
//! argument), no randomness. Every input is a `handle_*` call; what must happen next comes
//! out as [`Effect`]s, in order, which the caller executes ([`StreamsCore::swap_effects`]):
//! the fred/tokio shell in `bus::redis` against real Redis and real shards, the simulation
//! against its model of Redis and its clients.
//!
//! - **Live events** go through the stream's [`StreamTracker`]: delivered in offset order,
//!   duplicates dropped, gaps held and read from the history.
//! - **History reads** come back to [`StreamsCore::handle_read`]: gap fills (delivering,
//!   reporting losses, abandoning an epoch Redis lost writes of, reading again), and
//!   replays (answered up to the node's delivery position, re-read a bounded number of
//!   times when the read is behind it).
//! - **Floors**: the highest id of each stream the node knows was handed out (delivered,
//!   or its own last receipt), carried by its next publish on the stream.

use std::{collections::HashMap, rc::Rc, sync::Arc, time::Instant};

use super::{
    ReplayRequest,
    tracker::{FramedSnapshot, Live, Position, StreamTracker},
};
use crate::{
    history::{self as recovery, Since, StreamState, memory::HistorySettings},
    ids::{EventId, Route},
    xshard::{Delivery, ReplayAnswer, ReplayPurpose, ReplayTo},
};

/// Most history entries one gap-fill read asks for.
pub(crate) const FILL_COUNT: usize = 1000;
/// How long a stream's last replay read answers further replays (a reconnect storm:
/// thousands of clients asking about one stream within a second).
pub(crate) const REPLAY_CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Most reads in a row, for waiting replays, that came back below what the node had
/// delivered when the read was made before they are answered `recovered: false`: Redis
/// lost writes the node had delivered, and re-reading would never end (the node's own
/// read of the stream then finds the loss).
pub(crate) const MAX_READS_BEHIND: u32 = 4;
/// Most reads in a row, for waiting replays, that came back below the node's position
/// only because the node delivered more while they were on their way (a busy stream: the
/// bridge takes in Pub/Sub before read answers). Each is made again at once, and one
/// lands as soon as the stream pauses for a round trip; a stream busier than that for
/// this many round trips (about a second or more) gets `recovered: false`.
pub(crate) const MAX_RACED_READS: u32 = 1000;
/// Most reads in a row, for a client that saw more than this node has delivered yet (it
/// comes from a node ahead of this one), before it is answered `recovered: false`. The
/// first is at once, each later one waits longer (the shell's pause for a read that
/// failed that many times: up to 200, 400, 800, 1,600 ms, with full jitter): about 1.5 s
/// in all, at most 3 s.
pub(crate) const MAX_NODE_WAITS: u32 = 5;
/// Most streams whose last published id the node remembers as a floor for its next
/// publish on them (the map is cleared when it would grow past this: a floor is a
/// safeguard, not state anything else depends on).
pub(crate) const MAX_PUBLISH_FLOORS: usize = 65_536;

/// Where a history read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// From this offset on.
    Offset(u64),
    /// The last event only.
    Latest,
}

/// Why a history read is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFor {
    /// To fill the node's gap after `after`, for the stream's tracker number `tracker`
    /// (an answer that comes back after the stream was untracked and tracked again
    /// belongs to no one: it may have been made before Redis lost writes the new tracker
    /// never saw).
    Fill { after: EventId, tracker: u64 },
    /// To answer the clients waiting for a replay of the stream.
    Replay,
    /// To learn where the stream stands before subscribing to it.
    Position,
}

/// One history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadJob {
    pub(crate) route: Route,
    pub(crate) from: ReadFrom,
    pub(crate) count: usize,
    pub(crate) purpose: ReadFor,
    /// Reads of this kind for this stream that failed in a row before this one (the
    /// pause before it grows with them).
    pub(crate) failures: u32,
}

impl ReadJob {
    /// A read of `route`'s history after `after`, to fill the gap of its tracker number
    /// `tracker`.
    pub(crate) fn fill(route: Route, after: EventId, tracker: u64, failures: u32) -> ReadJob {
        let from = ReadFrom::Offset(after.offset + 1);
        let purpose = ReadFor::Fill { after, tracker };
        ReadJob { route, from, count: FILL_COUNT, purpose, failures }
    }
}

/// What the caller must do next, in this order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Hand this event of the stream to the shards that want the stream.
    Deliver(Route, Arc<Delivery>),
    /// Tell the stream's local clients they must resync (`recovered: false`).
    Lost(Route),
    /// Make this history read now (`failures == 0`), or after a pause that grows with
    /// `failures` (the read failed: Redis may be away).
    Read(ReadJob),
    /// Abandon `epoch` of the stream in Redis (`REBASE_SCRIPT`); `found`: this is the
    /// finding (count and log it), not a repeat.
    Abandon { route: Route, epoch: u64, found: bool },
    /// Answer one client's replay.
    Replayed(Box<ReplayTo>, Box<ReplayAnswer>),
    /// Events the history filled (they had been missed live).
    GapFilled(u64),
    /// Held live events the history never confirmed, dropped.
    UnconfirmedDropped(Route, usize),
    /// Replays answered `recovered: false` because the history stayed behind.
    ReplaysGivenUp(Route, usize),
}

/// Replays of one stream waiting for a history read (shared by all of them).
#[derive(Debug, Default)]
struct ReplayGroup {
    reading: bool,
    waiting: Vec<ReplayRequest>,
    /// Where the node's delivery stood when the read on its way was made.
    issued_at: Option<EventId>,
    /// Reads in a row that came back below what the node had delivered when they were
    /// made.
    read_behind: u32,
    /// Reads in a row that came back below the node's position only because it moved on
    /// while they were on their way.
    raced: u32,
    /// Reads in a row that found a waiting client ahead of the node.
    node_behind: u32,
}

/// Why a replay cannot be answered from a read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotYet {
    /// The read is older than what the node delivered since (or did not reach far
    /// enough): read again at once.
    ReadBehind,
    /// The client saw more than this node has delivered: wait for the node.
    NodeBehind,
}

/// Every stream decision of one node (module docs). One owner: the bridge's shared state
/// (or a simulated node).
#[derive(Debug)]
pub(crate) struct StreamsCore {
    /// Per stream with history that this node delivers: its delivery position.
    trackers: HashMap<Route, StreamTracker>,
    /// Per stream this node published on or stopped delivering recently: the last id
    /// it was handed back or delivered.
    published: HashMap<Route, EventId>,
    /// Client replays waiting for a history read, per stream.
    replays: HashMap<Route, ReplayGroup>,
    /// Each stream's last history read for replays, and when it was made (kept
    /// [`REPLAY_CACHE_FOR`]).
    replay_cache: HashMap<Route, (Instant, Rc<FramedSnapshot>)>,
    /// The history settings (replay limit; page sizes).
    history: HistorySettings,
    /// Trackers made so far (the next one's number).
    trackers_made: u64,
    /// What to do next, in order.
    effects: Vec<Effect>,
}

impl StreamsCore {
    pub(crate) fn new(history: HistorySettings) -> StreamsCore {
        StreamsCore {
            trackers: HashMap::new(),
            published: HashMap::new(),
            replays: HashMap::new(),
            replay_cache: HashMap::new(),
            history,
            trackers_made: 0,
            effects: Vec::new(),
        }
    }

    /// Moves the effects of the inputs so far, in order, into `into` (emptied first),
    /// which the core keeps as its next buffer: no allocation per input on the hot path.
    pub(crate) fn swap_effects(&mut self, into: &mut Vec<Effect>) {
        into.clear();
        std::mem::swap(&mut self.effects, into);
    }

    /// Whether the node tracks `route`, whether its position is known, and what it is.
    pub(crate) fn position_of(&self, route: &Route) -> Option<(bool, Option<EventId>)> {
        self.trackers.get(route).map(|t| (t.is_known(), t.position()))
    }

    /// The node tracks `route` and knows where its delivery stands.
    pub(crate) fn is_known(&self, route: &Route) -> bool {
        self.trackers.get(route).is_some_and(StreamTracker::is_known)
    }

    /// Starts tracking `route` at `position` (learned before subscribing), unless its
    /// position is known already.
    pub(crate) fn track(&mut self, route: &Route, position: Position) {
        if self.trackers.get(route).is_some_and(StreamTracker::is_known) {
            return;
        }
        self.trackers_made += 1;
        self.trackers.insert(route.clone(), StreamTracker::numbered(position, self.trackers_made));
    }

    /// The node no longer delivers `route`; what it delivered stays its floor.
    pub(crate) fn untrack(&mut self, route: &Route) {
        let delivered = self.trackers.remove(route).and_then(|t| t.position());
        if let Some(delivered) = delivered
            && self
                .floor_of(route)
                .is_none_or(|f| f.epoch != delivered.epoch || f.offset < delivered.offset)
        {
            self.handle_receipt(route, delivered);
        }
    }

    /// Streams mode: every stream to read, from where the node stands.
    pub(crate) fn stream_cursors(&self) -> Vec<(Route, EventId)> {
        self.trackers
            .iter()
            .filter(|(_, t)| t.is_known())
            .map(|(route, t)| {
                (route.clone(), t.position().unwrap_or(EventId { epoch: 0, offset: 0 }))
            })
            .collect()
    }

    /// Streams mode: whether a Pub/Sub copy of stored event `id` is left to the stream
    /// reader. Not when it opens another epoch than the node's: a cursor in the old epoch
    /// would never reach the new one's lower offsets.
    pub(crate) fn left_to_reader(&self, route: &Route, id: EventId) -> bool {
        self.trackers
            .get(route)
            .is_some_and(|t| t.is_known() && t.position().is_none_or(|at| at.epoch == id.epoch))
    }

    /// The highest id of `route` this node knows was handed out: what it delivered, or
    /// the id of its last publish on it, whichever is later in one epoch (the delivered
    /// one when the epochs differ: that is the stream's present).
    pub(crate) fn floor_of(&self, route: &Route) -> Option<EventId> {
        let delivered = self.trackers.get(route).and_then(StreamTracker::position);
        let published = self.published.get(route).copied();
        match (delivered, published) {
            (Some(d), Some(p)) if d.epoch == p.epoch => {
                Some(if p.offset > d.offset { p } else { d })
            }
            (Some(d), _) => Some(d),
            (None, p) => p,
        }
    }

    /// A publish on `route` was given `id` (or the node delivered up to `id` when it
    /// stopped delivering the stream).
    pub(crate) fn handle_receipt(&mut self, route: &Route, id: EventId) {
        if let Some(floor) = self.published.get_mut(route) {
            *floor = id;
            return;
        }
        if self.published.len() >= MAX_PUBLISH_FLOORS {
            self.published.clear();
        }
        self.published.insert(route.clone(), id);
    }

    /// After a reconnect or `Lagged`: every stream is read from its position (in the
    /// routes' order, so that a replayed run makes the same reads in the same order).
    pub(crate) fn handle_gap_everywhere(&mut self) {
        let mut fills: Vec<(Route, EventId, u64)> = Vec::new();
        for (route, tracker) in &mut self.trackers {
            if let Some(after) = tracker.start_fill() {
                fills.push((route.clone(), after, tracker.generation()));
            }
        }
        fills.sort_unstable();
        for (route, after, tracker) in fills {
            self.effects.push(Effect::Read(ReadJob::fill(route, after, tracker, 0)));
        }
    }

    /// A live event of `route` (from Pub/Sub, or the stream reader): through the stream's
    /// tracker when it has an id and the node tracks the stream, else delivered as is.
    /// The common case — deliver it now, nothing else to do — is returned rather than
    /// pushed as an effect (the hot path: no route copied, no effects to run); otherwise
    /// everything, this event's delivery included, is in the effects.
    pub(crate) fn handle_live(
        &mut self,
        route: &Route,
        delivery: Arc<Delivery>,
    ) -> Option<Arc<Delivery>> {
        let (action, lost, generation) = match (delivery.id, self.trackers.get_mut(route)) {
            (Some(id), Some(tracker)) => {
                let (action, lost) = tracker.live(id, &delivery);
                (action, lost, tracker.generation())
            }
            // No id (another publisher's payload, or a stream without history).
            _ => return Some(delivery),
        };
        if lost {
            self.effects.push(Effect::Lost(route.clone()));
        }
        match action {
            Live::Deliver if !lost => return Some(delivery),
            Live::Deliver => self.effects.push(Effect::Deliver(route.clone(), delivery)),
            Live::Duplicate | Live::Held(None) => {}
            Live::Held(Some(after)) => {
                let job = ReadJob::fill(route.clone(), after, generation, 0);
                self.effects.push(Effect::Read(job));
            }
            Live::GaveUp => {
                let ready = self.trackers.get_mut(route).map(StreamTracker::take_ready);
                for d in ready.unwrap_or_default() {
                    self.effects.push(Effect::Deliver(route.clone(), d));
                }
            }
        }
        None
    }

    /// A history read came back: its entries framed (`Err`: the read failed).
    pub(crate) fn handle_read(
        &mut self,
        job: ReadJob,
        result: Result<Option<FramedSnapshot>, String>,
        now: Instant,
    ) {
        match job.purpose {
            // Positions are read before subscribing, by the subscription task ([`track`]).
            ReadFor::Position => {}
            ReadFor::Fill { after, tracker } => self.filled(job, after, tracker, result),
            ReadFor::Replay => self.answer_replays(&job.route, result, now),
        }
    }

    fn filled(
        &mut self,
        job: ReadJob,
        after: EventId,
        generation: u64,
        result: Result<Option<FramedSnapshot>, String>,
    ) {
        let failed = result.is_err();
        let tracker = self.trackers.get_mut(&job.route);
        // A read for a tracker that is gone (the stream was untracked meanwhile) proves
        // nothing about this one: it may even answer for a Redis that has since come back
        // older, and delivering it could hand clients events Redis no longer has.
        let Some(tracker) = tracker.filter(|t| t.generation() == generation) else { return };
        let filled = tracker.filled(after, result.map_err(|_| ()), job.count);
        let route = job.route;
        if filled.lost {
            self.effects.push(Effect::Lost(route.clone()));
        }
        if let Some(epoch) = filled.regressed {
            self.effects.push(Effect::Abandon { route: route.clone(), epoch, found: filled.lost });
        }
        if filled.dropped > 0 {
            self.effects.push(Effect::UnconfirmedDropped(route.clone(), filled.dropped));
        }
        if !filled.deliver.is_empty() {
            self.effects.push(Effect::GapFilled(filled.deliver.len() as u64));
        }
        for d in filled.deliver {
            self.effects.push(Effect::Deliver(route.clone(), d));
        }
        if let Some(after) = filled.again {
            let failures = if failed { job.failures + 1 } else { 0 };
            self.effects.push(Effect::Read(ReadJob::fill(route, after, generation, failures)));
        }
    }

    /// A client asked for a replay: answered from the stream's last read when that is
    /// recent and reaches the node's delivery position (a reconnect storm reads each
    /// stream about once); else it joins the stream's waiting group, which one read serves.
    pub(crate) fn handle_replay(&mut self, request: ReplayRequest, now: Instant) {
        if request.to.purpose != ReplayPurpose::History {
            let cached = self
                .replay_cache
                .get(&request.route)
                .filter(|(at, _)| now.saturating_duration_since(*at) < REPLAY_CACHE_FOR)
                .map(|(_, snapshot)| snapshot.clone());
            if let Some(snapshot) = cached {
                let position = self.position_of(&request.route);
                let answer =
                    replay_answer(&request, Some(&*snapshot), position, self.history.max_replay);
                if let Ok(answer) = answer {
                    self.effects.push(Effect::Replayed(Box::new(request.to), Box::new(answer)));
                    return;
                }
            }
        }
        let route = request.route.clone();
        self.replays.entry(route.clone()).or_default().waiting.push(request);
        self.read_for_replays(&route);
    }

    /// Forgets replay reads older than [`REPLAY_CACHE_FOR`].
    pub(crate) fn expire_cache(&mut self, now: Instant) {
        self.replay_cache
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < REPLAY_CACHE_FOR);
    }

    /// One read for the replays waiting for `route`, unless one is on its way.
    fn read_for_replays(&mut self, route: &Route) {
        let Some(group) = self.replays.get_mut(route) else { return };
        if group.reading || group.waiting.is_empty() {
            return;
        }
        group.reading = true;
        group.issued_at = self.trackers.get(route).and_then(StreamTracker::position);
        let (from, count) = read_range(&self.history, &group.waiting);
        let job =
            ReadJob { route: route.clone(), from, count, purpose: ReadFor::Replay, failures: 0 };
        self.effects.push(Effect::Read(job));
    }

    /// Answers the replays waiting for `route`'s read. A recovery (or `latest`) is
    /// answered up to the node's delivery position — the shard holds the client's live
    /// events until the answer, which it receives behind every live event up to that
    /// position — so the client gets each event exactly once. Waiters the read did not
    /// cover are read again, a bounded number of times.
    fn answer_replays(
        &mut self,
        route: &Route,
        snapshot: Result<Option<FramedSnapshot>, String>,
        now: Instant,
    ) {
        let (waiting, issued_at) = {
            let Some(group) = self.replays.get_mut(route) else { return };
            group.reading = false;
            (std::mem::take(&mut group.waiting), group.issued_at.take())
        };
        // Below what the node had delivered when the read was made: Redis lost writes.
        let regressed = match (&snapshot, issued_at) {
            (Ok(Some((state, _))), Some(at)) => at.epoch == state.epoch && at.offset > state.top,
            _ => false,
        };
        if let Ok(Some(snapshot)) = &snapshot {
            self.replay_cache.insert(route.clone(), (now, Rc::new(snapshot.clone())));
        }
        let position = self.position_of(route);
        let mut again = Vec::new();
        let mut wait_for_node = false;
        for request in waiting {
            let answer = match &snapshot {
                Err(_) => Ok(ReplayAnswer { recovered: false, ..ReplayAnswer::default() }),
                Ok(snapshot) => {
                    replay_answer(&request, snapshot.as_ref(), position, self.history.max_replay)
                }
            };
            match answer {
                Ok(answer) => {
                    self.effects.push(Effect::Replayed(Box::new(request.to), Box::new(answer)));
                }
                Err(why) => {
                    wait_for_node |= why == NotYet::NodeBehind;
                    again.push(request);
                }
            }
        }
        let group = self.replays.entry(route.clone()).or_default();
        if again.is_empty() {
            (group.read_behind, group.node_behind, group.raced) = (0, 0, 0);
        } else if wait_for_node {
            group.node_behind += 1;
        } else if regressed {
            group.read_behind += 1;
        } else {
            group.raced += 1;
        }
        let pause = if wait_for_node { group.node_behind.saturating_sub(1) } else { 0 };
        if group.read_behind > MAX_READS_BEHIND
            || group.node_behind > MAX_NODE_WAITS
            || group.raced > MAX_RACED_READS
        {
            // Redis keeps answering below what this node delivered: it lost writes. The
            // waiting clients are told now (never held forever), and the node's own read
            // of the stream finds the loss and abandons the epoch.
            (group.read_behind, group.node_behind, group.raced) = (0, 0, 0);
            self.effects.push(Effect::ReplaysGivenUp(route.clone(), again.len()));
            for request in again.drain(..) {
                let answer = ReplayAnswer { recovered: false, ..ReplayAnswer::default() };
                self.effects.push(Effect::Replayed(Box::new(request.to), Box::new(answer)));
            }
            let fill =
                self.trackers.get_mut(route).and_then(|t| Some((t.start_fill()?, t.generation())));
            if let Some((after, tracker)) = fill {
                self.effects.push(Effect::Read(ReadJob::fill(route.clone(), after, tracker, 0)));
            }
        }
        if !again.is_empty() {
            let group = self.replays.entry(route.clone()).or_default();
            group.waiting.extend(again);
            self.read_for_replays(route);
            // Read again: at once the first time (a read made just before the node
            // delivered more is the common case), then after a pause that grows (the node
            // catches up meanwhile).
            if let Some(Effect::Read(job)) = self.effects.last_mut()
                && job.purpose == ReadFor::Replay
            {
                job.failures = pause;
            }
        }
    }
}

/// One read for every waiting replay of a stream: from the earliest position asked for,
/// enough entries for the replay limit and the largest history page.
fn read_range(history: &HistorySettings, waiting: &[ReplayRequest]) -> (ReadFrom, usize) {
    let max_replay = usize::try_from(history.max_replay).unwrap_or(usize::MAX);
    let mut from: Option<u64> = None;
    let mut count = 1;
    for request in waiting {
        let start = match request.since {
            Since::After(id) => Some(id.offset + 1),
            Since::Oldest => Some(1),
            Since::Latest | Since::Malformed => None,
        };
        if let Some(start) = start {
            from = Some(from.map_or(start, |f| f.min(start)));
        }
        let wanted = if request.limit == u64::MAX { max_replay } else { request.limit as usize };
        count =
            count.max(wanted.min(max_replay.max(crate::protocol::limits::HISTORY_PAGE.1 as usize)));
    }
    match from {
        Some(offset) => (ReadFrom::Offset(offset), count.max(1)),
        None => (ReadFrom::Latest, 1),
    }
}

/// The answer to one replay from a history snapshot; `None` when the snapshot does not
/// cover it (read again). `position`: whether the node's delivery position of the stream
/// is known, and what it is.
fn replay_answer(
    request: &ReplayRequest,
    snapshot: Option<&FramedSnapshot>,
    position: Option<(bool, Option<EventId>)>,
    max_replay: u64,
) -> Result<ReplayAnswer, NotYet> {
    let live = request.to.purpose != ReplayPurpose::History;
    let mut state = snapshot.map(|(state, _)| *state);
    if live {
        // Stitched to live delivery: answered up to the node's position, never past it.
        match (position, state) {
            (Some((true, Some(at))), Some(s)) if at.epoch == s.epoch => {
                if at.offset > s.top {
                    // The read is older than what was delivered: read again.
                    return Err(NotYet::ReadBehind);
                }
                if let Since::After(since) = request.since
                    && since.epoch == at.epoch
                    && since.offset > at.offset
                    && since.offset <= s.top
                {
                    // The client saw more than this node has delivered (it comes from a
                    // node ahead of this one): the events are stored, this node delivers
                    // them soon. Wait for it rather than say they are lost.
                    return Err(NotYet::NodeBehind);
                }
                state = Some(StreamState { top: at.offset, ..s });
            }
            // The stream had no history when the node started delivering it and has
            // delivered nothing since: nothing to replay beyond the start.
            (Some((true, None)), Some(s)) => state = Some(StreamState { top: 0, first: None, ..s }),
            (Some((true, None)), None) => {}
            // Not delivering the stream, or its position is unknown or in another epoch:
            // the answer could not be stitched to live delivery without a gap.
            _ => return Ok(ReplayAnswer { recovered: false, ..ReplayAnswer::default() }),
        }
    }
    let entries = snapshot.map(|(_, e)| e.as_slice()).unwrap_or_default();
    let mut covered = true;
    let answer = recovery::answer(request.since, state, max_replay, request.limit, |from, to| {
        let events: Vec<Arc<Delivery>> = entries
            .iter()
            .filter(|d| d.id.is_some_and(|id| (from..=to).contains(&id.offset)))
            .cloned()
            .collect();
        covered = events.len() as u64 == to - from + 1;
        events
    });
    if covered { Ok(answer) } else { Err(NotYet::ReadBehind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        history::retention::Retention,
        ids::{ConnId, NodeId, ShardId},
    };

    fn core() -> StreamsCore {
        StreamsCore::new(HistorySettings {
            rules: Default::default(),
            default: Retention { size: 100, ttl: std::time::Duration::from_secs(60) },
            meta_ttl: std::time::Duration::from_secs(3600),
            max_replay: 1000,
        })
    }

    fn id(epoch: u64, offset: u64) -> EventId {
        EventId { epoch, offset }
    }

    fn event(epoch: u64, offset: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            route: topic(),
            id: Some(id(epoch, offset)),
            origin: NodeId::redis(),
            v1: crate::ws::frame::encode_text("{}"),
            seed: None,
            published: None,
            lag_observed: Default::default(),
        })
    }

    fn topic() -> Route {
        Route::Topic("t".into())
    }

    fn effects(core: &mut StreamsCore) -> Vec<Effect> {
        let mut out = Vec::new();
        core.swap_effects(&mut out);
        out
    }

    #[test]
    fn streams_mode_leaves_its_epoch_to_the_reader_but_not_a_new_one() {
        let mut c = core();
        c.track(&topic(), Position::At(id(5, 3)));
        assert!(c.left_to_reader(&topic(), id(5, 4)));
        // A cursor in epoch 5 would never reach epoch 6's offsets 1..3.
        assert!(!c.left_to_reader(&topic(), id(6, 1)));
        assert!(c.handle_live(&topic(), event(6, 1)).is_none(), "told lost first");
        let out = effects(&mut c);
        assert!(matches!(out[0], Effect::Lost(_)) && matches!(out[1], Effect::Deliver(..)));
        assert_eq!(c.stream_cursors(), [(topic(), id(6, 1))]);
    }

    #[test]
    fn a_stream_the_node_stops_delivering_stays_its_floor() {
        let mut c = core();
        c.track(&topic(), Position::At(id(5, 3)));
        c.handle_receipt(&topic(), id(5, 2));
        assert_eq!(c.floor_of(&topic()), Some(id(5, 3)), "the later of the two");
        c.untrack(&topic());
        assert_eq!(c.floor_of(&topic()), Some(id(5, 3)));
        c.handle_receipt(&topic(), id(7, 1));
        assert_eq!(c.floor_of(&topic()), Some(id(7, 1)), "a receipt of a new epoch wins");
    }

    #[test]
    fn a_client_ahead_of_this_node_waits_for_it_instead_of_being_told_lost() {
        let mut c = core();
        c.track(&topic(), Position::At(id(5, 8)));
        let to = ReplayTo {
            shard: ShardId(0),
            route: topic(),
            conn: ConnId(1),
            user: "u".into(),
            token: 1,
            purpose: ReplayPurpose::Recover,
        };
        let request =
            ReplayRequest { route: topic(), since: Since::After(id(5, 10)), limit: u64::MAX, to };
        let now = Instant::now();
        c.handle_replay(request, now);
        let Effect::Read(job) = effects(&mut c).remove(0) else { panic!("a read") };
        // Redis has 10; this node delivered 8: not answered yet, read again after a pause.
        let snapshot = (StreamState { epoch: 5, top: 10, first: Some(1) }, vec![]);
        c.handle_read(job, Ok(Some(snapshot.clone())), now);
        let out = effects(&mut c);
        assert!(matches!(&out[..], [Effect::Read(j)] if j.failures == 0), "{out:?}");
        // The node catches up: the client is answered, nothing missed.
        assert!(c.handle_live(&topic(), event(5, 9)).is_some());
        assert!(c.handle_live(&topic(), event(5, 10)).is_some());
        effects(&mut c);
        let Effect::Read(job) = out.into_iter().next().unwrap() else { unreachable!() };
        c.handle_read(job, Ok(Some(snapshot)), now);
        let out = effects(&mut c);
        let [Effect::Replayed(_, answer)] = &out[..] else { panic!("{out:?}") };
        assert!(answer.recovered && answer.events.is_empty());
    }

    #[test]
    fn a_fill_made_for_an_earlier_tracker_of_the_stream_is_not_delivered() {
        // The node reads a gap of the stream; every local subscriber leaves and one comes
        // back (a new tracker, at where Redis stands now: it came back from an older
        // snapshot, top 6). The old read, made before Redis lost 7..9, answers now: its
        // events must not reach anyone (their ids are handed out again next).
        let mut c = core();
        c.track(&topic(), Position::At(id(5, 6)));
        assert!(c.handle_live(&topic(), event(5, 8)).is_none(), "held behind a gap");
        let Effect::Read(old) = effects(&mut c).remove(0) else { panic!("a fill read") };
        c.untrack(&topic());
        c.track(&topic(), Position::At(id(5, 6)));
        let entries = (7..=9).map(|o| event(5, o)).collect();
        let stale = (StreamState { epoch: 5, top: 9, first: Some(1) }, entries);
        c.handle_read(old, Ok(Some(stale)), Instant::now());
        assert!(effects(&mut c).is_empty(), "nothing delivered, nothing read");
        assert_eq!(c.position_of(&topic()), Some((true, Some(id(5, 6)))));
        // The next event of the stream (given id 5:7 again) is delivered, not dropped.
        assert!(c.handle_live(&topic(), event(5, 7)).is_some());
    }
}
