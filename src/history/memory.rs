//! The embedded bus's history: per stream, the last events in memory, with their ids.
//!
//! Runs on: the stream's owner shard (inside its sequencer), `!Sync` by use though plain
//! data. The same contract as the Redis history: ids `<epoch>:<offset>`, a size and an age
//! per stream ([`super::retention`]), a new epoch when the history was lost — here when
//! the process restarted (epochs are microseconds since the Unix epoch, so a new process
//! never reuses one) or the stream was idle past `meta_ttl`.
//!
//! Also the publish idempotency keys of those streams ([`Idempotency`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    StreamState,
    retention::{HistoryRules, Retention},
};
use crate::{
    ids::{EventId, Route},
    xshard::Delivery,
};

/// How often idle streams are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What retention applies where.
#[derive(Debug, Clone)]
pub(crate) struct HistorySettings {
    /// Per-pattern rules.
    pub rules: HistoryRules,
    /// Streams no rule matches.
    pub default: Retention,
    /// How long a stream's epoch and offset outlive its last event (after that its next
    /// event starts a new epoch).
    pub meta_ttl: Duration,
    /// Most events one recovery replays.
    pub max_replay: u64,
}

impl HistorySettings {
    /// The settings of the node's configuration.
    pub(crate) fn of(cfg: &crate::config::Config) -> HistorySettings {
        HistorySettings {
            rules: cfg.history_rules.clone(),
            default: Retention { size: cfg.history_size as u64, ttl: cfg.history_ttl.0 },
            meta_ttl: cfg.history_meta_ttl.0,
            max_replay: cfg.recovery_max_replay as u64,
        }
    }
}

/// One stream's history.
#[derive(Debug)]
struct StreamLog {
    epoch: u64,
    /// Offset of the last event.
    top: u64,
    /// The last events, oldest first; the last one has offset `top`.
    events: VecDeque<Arc<Delivery>>,
    last_event: Instant,
    retention: Retention,
}

impl StreamLog {
    fn state(&self) -> StreamState {
        let first = (!self.events.is_empty()).then(|| self.top + 1 - self.events.len() as u64);
        StreamState { epoch: self.epoch, top: self.top, first }
    }
}

/// The history of the streams one sequencer owns.
#[derive(Debug)]
pub(crate) struct MemoryHistory {
    settings: HistorySettings,
    streams: HashMap<Route, StreamLog>,
    /// The last epoch handed out (epochs strictly increase).
    last_epoch: u64,
    next_sweep: Instant,
}

impl MemoryHistory {
    pub(crate) fn new(settings: HistorySettings, now: Instant) -> MemoryHistory {
        MemoryHistory {
            settings,
            streams: HashMap::new(),
            last_epoch: 0,
            next_sweep: now + SWEEP_EVERY,
        }
    }

    pub(crate) fn settings(&self) -> &HistorySettings {
        &self.settings
    }

    /// A new epoch: the wall clock in microseconds, strictly above the last one.
    fn new_epoch(&mut self) -> u64 {
        let micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_epoch = micros.max(self.last_epoch + 1);
        self.last_epoch
    }

    /// Drops what `route`'s stream lost to age by `now` (the events after `ttl`, the whole
    /// stream after `meta_ttl`).
    fn expire(&mut self, route: &Route, now: Instant) {
        let meta_ttl = self.settings.meta_ttl;
        if let Some(log) = self.streams.get_mut(route) {
            let idle = now.saturating_duration_since(log.last_event);
            if idle >= meta_ttl.max(log.retention.ttl) {
                self.streams.remove(route);
            } else if idle >= log.retention.ttl {
                log.events.clear();
            }
        }
    }

    /// Every so often: forgets idle streams (memory stays bounded by the active ones).
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let meta_ttl = self.settings.meta_ttl;
        self.streams.retain(|_, log| {
            let idle = now.saturating_duration_since(log.last_event);
            if idle >= log.retention.ttl {
                log.events.clear();
            }
            idle < meta_ttl.max(log.retention.ttl)
        });
    }

    /// Records the next event of `route`'s stream: `encode` gets its id (`None` when the
    /// stream keeps no history) and builds the delivery, which is kept.
    pub(crate) fn record(
        &mut self,
        route: &Route,
        now: Instant,
        encode: impl FnOnce(Option<EventId>) -> Delivery,
    ) -> Arc<Delivery> {
        self.sweep(now);
        let retention = self.settings.rules.retention_of(route, self.settings.default);
        if !retention.enabled() {
            return Arc::new(encode(None));
        }
        self.expire(route, now);
        if !self.streams.contains_key(route) {
            let epoch = self.new_epoch();
            let log =
                StreamLog { epoch, top: 0, events: VecDeque::new(), last_event: now, retention };
            self.streams.insert(route.clone(), log);
        }
        let Some(log) = self.streams.get_mut(route) else { return Arc::new(encode(None)) };
        log.top += 1;
        log.last_event = now;
        log.retention = retention;
        let delivery = Arc::new(encode(Some(EventId { epoch: log.epoch, offset: log.top })));
        log.events.push_back(delivery.clone());
        while log.events.len() as u64 > retention.size {
            log.events.pop_front();
        }
        delivery
    }

    /// What `route`'s stream holds now (`None`: no history).
    pub(crate) fn state(&mut self, route: &Route, now: Instant) -> Option<StreamState> {
        self.expire(route, now);
        self.streams.get(route).map(StreamLog::state)
    }

    /// The kept events of `route` with offsets `from..=to`, oldest first.
    pub(crate) fn events(&self, route: &Route, from: u64, to: u64) -> Vec<Arc<Delivery>> {
        let Some(log) = self.streams.get(route) else { return Vec::new() };
        let Some(first) = log.state().first else { return Vec::new() };
        let from = from.max(first);
        let to = to.min(log.top);
        if from > to {
            return Vec::new();
        }
        let skip = (from - first) as usize;
        log.events.iter().skip(skip).take((to - from + 1) as usize).cloned().collect()
    }
}

/// Publish idempotency keys: the id a key's first publish got, for `window`.
#[derive(Debug)]
pub(crate) struct Idempotency {
    window: Duration,
    /// Most keys remembered (the oldest are forgotten first past it).
    max_keys: usize,
    ids: HashMap<(Route, Box<str>), EventId>,
    /// When each key was remembered, oldest first.
    order: VecDeque<(Instant, Route, Box<str>)>,
}

impl Idempotency {
    pub(crate) fn new(window: Duration, max_keys: usize) -> Idempotency {
        Idempotency { window, max_keys, ids: HashMap::new(), order: VecDeque::new() }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, ..)) = self.order.front() {
            let too_many = self.order.len() > self.max_keys;
            if !too_many && now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((_, route, key)) = self.order.pop_front() {
                self.ids.remove(&(route, key));
            }
        }
    }

    /// The id of the first publish with `key` on `route` within the window.
    pub(crate) fn seen(&mut self, route: &Route, key: &str, now: Instant) -> Option<EventId> {
        self.forget_old(now);
        self.ids.get(&(route.clone(), key.into())).copied()
    }

    /// Remembers that `key`'s publish on `route` got `id`.
    pub(crate) fn remember(&mut self, route: &Route, key: &str, id: EventId, now: Instant) {
        if self.ids.insert((route.clone(), key.into()), id).is_none() {
            self.order.push_back((now, route.clone(), key.into()));
        }
        self.forget_old(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ids::NodeId, ws::frame};

    fn settings(size: u64, ttl_s: u64) -> HistorySettings {
        HistorySettings {
            rules: "quiet=0".parse().unwrap(),
            default: Retention { size, ttl: Duration::from_secs(ttl_s) },
            meta_ttl: Duration::from_secs(3600),
            max_replay: 1000,
        }
    }

    fn delivery(route: &Route, id: Option<EventId>) -> Delivery {
        Delivery {
            route: route.clone(),
            id,
            origin: NodeId("n".into()),
            v1: frame::encode_text("{}"),
            seed: None,
            published: None,
            lag_observed: Default::default(),
        }
    }

    fn offsets(events: &[Arc<Delivery>]) -> Vec<u64> {
        events.iter().map(|d| d.id.map_or(0, |id| id.offset)).collect()
    }

    #[test]
    fn ids_count_up_and_the_history_keeps_the_last_events() {
        let t0 = Instant::now();
        let mut h = MemoryHistory::new(settings(3, 60), t0);
        let route = Route::Topic("t".into());
        let ids: Vec<EventId> =
            (0..5).map(|_| h.record(&route, t0, |id| delivery(&route, id)).id.unwrap()).collect();
        assert_eq!(ids.iter().map(|i| i.offset).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(ids.iter().all(|i| i.epoch == ids[0].epoch));
        let state = h.state(&route, t0).unwrap();
        assert_eq!((state.top, state.first), (5, Some(3)));
        assert_eq!(offsets(&h.events(&route, 1, 9)), [3, 4, 5]);
        assert_eq!(offsets(&h.events(&route, 4, 4)), [4]);
        // Another stream counts on its own; a stream with history off gets no id.
        let other = Route::Direct("u".into());
        assert_eq!(h.record(&other, t0, |id| delivery(&other, id)).id.unwrap().offset, 1);
        let quiet = Route::Topic("quiet".into());
        assert_eq!(h.record(&quiet, t0, |id| delivery(&quiet, id)).id, None);
        assert_eq!(h.state(&quiet, t0), None);
    }

    #[test]
    fn age_empties_the_history_and_a_lost_stream_gets_a_new_epoch() {
        let t0 = Instant::now();
        let mut h = MemoryHistory::new(settings(10, 60), t0);
        let route = Route::Broadcast;
        let first = h.record(&route, t0, |id| delivery(&route, id)).id.unwrap();
        // Past the ttl: the events are gone, the position stays.
        let later = t0 + Duration::from_secs(61);
        let state = h.state(&route, later).unwrap();
        assert_eq!((state.epoch, state.top, state.first), (first.epoch, 1, None));
        // Past meta_ttl: the stream is forgotten; its next event starts a new epoch.
        let much_later = t0 + Duration::from_secs(3601);
        assert_eq!(h.state(&route, much_later), None);
        let next = h.record(&route, much_later, |id| delivery(&route, id)).id.unwrap();
        assert!(next.epoch > first.epoch);
        assert_eq!(next.offset, 1);
    }

    #[test]
    fn idempotency_keys_last_for_their_window() {
        let t0 = Instant::now();
        let mut keys = Idempotency::new(Duration::from_secs(300), 2);
        let t = Route::Topic("t".into());
        let id = EventId { epoch: 1, offset: 4 };
        assert_eq!(keys.seen(&t, "k", t0), None);
        keys.remember(&t, "k", id, t0);
        assert_eq!(keys.seen(&t, "k", t0 + Duration::from_secs(299)), Some(id));
        assert_eq!(keys.seen(&Route::Topic("u".into()), "k", t0), None, "keys are per stream");
        assert_eq!(keys.seen(&t, "k", t0 + Duration::from_secs(300)), None);
        // Past the key limit the oldest go first.
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            keys.remember(&t, k, EventId { epoch: 1, offset: i as u64 }, t0);
        }
        assert_eq!(keys.seen(&t, "a", t0), None);
        assert!(keys.seen(&t, "c", t0).is_some());
    }
}
