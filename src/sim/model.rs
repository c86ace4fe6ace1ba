//! A model of what Redis does for the bridge's history: the publish, read and abandon
//! scripts on one stream's meta hash and Redis Stream, with exact `MAXLEN` trimming and a
//! clock for new epochs. Pub/Sub lives in the simulated world, not here.
//!
//! Runs on: the simulation's thread. Pure and deterministic: the clock is a counter that
//! moves forward by a step the caller gives.
//!
//! Held to the real scripts by a differential test (random command sequences against a
//! `redis-server` and against this model, every answer compared: `tests/sim_model.rs`).
//! Not modelled: expiry (TTLs), idempotency keys.

use std::collections::{BTreeMap, HashMap};

use crate::{history::StreamState, ids::EventId};

/// The scripts this model stands for, as the bridge sends them (for the differential
/// test): publish, read, abandon.
pub const SCRIPTS: [&str; 3] = [
    crate::bus::redis::history::PUBLISH_SCRIPT,
    crate::bus::redis::history::READ_SCRIPT,
    crate::bus::redis::history::REBASE_SCRIPT,
];

/// A floor for [`ModelRedis::publish`] (the id type is the crate's).
pub fn floor(epoch: u64, offset: u64) -> EventId {
    EventId { epoch, offset }
}

/// One stream's keys: the meta hash (`e`, `o`) and the Redis Stream of entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stream {
    /// Epoch and last offset; `None` when the meta hash does not exist.
    meta: Option<(u64, u64)>,
    /// Entries by offset: the payload with its id.
    entries: BTreeMap<u64, String>,
}

/// What a read returns: `None` when the stream has no meta hash.
pub type ModelRead = Option<(ModelState, Vec<(u64, String)>)>;

/// A stream's state as a read reports it (the crate's `StreamState`, public for the
/// differential test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelState {
    /// The epoch.
    pub epoch: u64,
    /// The last offset (0: none yet in this epoch).
    pub top: u64,
    /// The oldest entry kept, if any.
    pub first: Option<u64>,
}

impl ModelState {
    pub(crate) fn into_state(self) -> StreamState {
        StreamState { epoch: self.epoch, top: self.top, first: self.first }
    }
}

/// The model of one Redis server's history keys (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelRedis {
    streams: HashMap<String, Stream>,
    /// Microseconds, as `TIME` gives them; only ever grows.
    clock: u64,
}

impl ModelRedis {
    /// An empty server whose clock starts at `clock` microseconds.
    pub fn new(clock: u64) -> ModelRedis {
        ModelRedis { streams: HashMap::new(), clock }
    }

    /// Moves the clock forward by `micros` (at least 1: two epochs created at different
    /// steps never collide).
    pub fn tick(&mut self, micros: u64) {
        self.clock += micros.max(1);
    }

    /// Every key lost: a restart without persistence (the clock goes on).
    pub fn flush(&mut self) {
        self.streams.clear();
    }

    /// The keys of `other` (an older snapshot, a lagging replica), this server's clock
    /// (time never goes back).
    pub fn restore_keys_of(&mut self, other: &ModelRedis) {
        self.streams = other.streams.clone();
    }

    /// A new epoch from the clock, different from `old`.
    fn new_epoch(&self, old: Option<u64>) -> u64 {
        if Some(self.clock) == old { self.clock + 1 } else { self.clock }
    }

    /// `PUBLISH_SCRIPT` without the PUBLISH: stores `rest` (the payload without its opening
    /// `{`) as the stream's next event, keeping `size` entries; `floor` is the publisher's
    /// highest known id. Returns the id and the stored payload (what is published).
    pub fn publish(
        &mut self,
        stream: &str,
        rest: &str,
        size: usize,
        floor: Option<EventId>,
    ) -> (EventId, String) {
        let clock = self.clock;
        let s = self.streams.entry(stream.to_owned()).or_default();
        let mut epoch = s.meta.map(|(e, _)| e);
        if let (Some((e, top)), Some(f)) = (s.meta, floor)
            && e == f.epoch
            && top < f.offset
        {
            epoch = None;
        }
        let epoch = match epoch {
            Some(e) => e,
            None => {
                let old = s.meta.map(|(e, _)| e);
                let e = if Some(clock) == old { clock + 1 } else { clock };
                s.entries.clear();
                s.meta = Some((e, 0));
                e
            }
        };
        let offset = s.meta.map_or(0, |(_, o)| o) + 1;
        s.meta = Some((epoch, offset));
        let id = EventId { epoch, offset };
        let payload = format!("{{\"id\":\"{id}\",{rest}");
        s.entries.insert(offset, payload.clone());
        while s.entries.len() > size {
            s.entries.pop_first();
        }
        (id, payload)
    }

    /// `READ_SCRIPT`: the stream's state and up to `count` entries from offset `from`
    /// (`None`: the last event only).
    pub fn read(&self, stream: &str, from: Option<u64>, count: usize) -> ModelRead {
        let s = self.streams.get(stream)?;
        let (epoch, top) = s.meta?;
        let first = s.entries.keys().next().copied();
        let from = from.unwrap_or(top).max(1);
        let entries = if count > 0 && from <= top {
            s.entries.range(from..).take(count).map(|(o, p)| (*o, p.clone())).collect()
        } else {
            Vec::new()
        };
        Some((ModelState { epoch, top, first }, entries))
    }

    /// `REBASE_SCRIPT`: when the stream is still in `epoch`, a new epoch from the clock
    /// (offset 0, entries deleted). Returns the epoch afterwards (`None`: no meta hash).
    pub fn rebase(&mut self, stream: &str, epoch: u64) -> Option<u64> {
        let new = self.new_epoch(Some(epoch));
        let s = self.streams.get_mut(stream)?;
        let (e, _) = s.meta?;
        if e != epoch {
            return Some(e);
        }
        s.entries.clear();
        s.meta = Some((new, 0));
        Some(new)
    }

    /// The stream's last id (`None`: no meta hash, or no event in its epoch).
    pub fn top(&self, stream: &str) -> Option<EventId> {
        let (epoch, offset) = self.streams.get(stream)?.meta?;
        (offset > 0).then_some(EventId { epoch, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_follows_the_scripts_rules() {
        let mut r = ModelRedis::new(1000);
        let (a, payload) = r.publish("s", "\"d\":1}", 2, None);
        assert_eq!((a.epoch, a.offset), (1000, 1));
        assert_eq!(payload, "{\"id\":\"1000:1\",\"d\":1}");
        r.publish("s", "\"d\":2}", 2, None);
        r.publish("s", "\"d\":3}", 2, None);
        let (state, entries) = r.read("s", Some(1), 10).unwrap();
        assert_eq!(state, ModelState { epoch: 1000, top: 3, first: Some(2) });
        assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(r.read("s", None, 1).unwrap().1.len(), 1, "latest");
        assert!(r.read("other", Some(1), 10).is_none());
        // A floor above the meta's offset in its epoch: a new epoch.
        r.tick(5);
        let (b, _) = r.publish("s", "\"d\":4}", 2, Some(EventId { epoch: 1000, offset: 9 }));
        assert_eq!((b.epoch, b.offset), (1005, 1));
        // Abandon: a compare-and-set.
        r.tick(5);
        assert_eq!(r.rebase("s", 1000), Some(1005), "not the stream's epoch any more");
        assert_eq!(r.rebase("s", 1005), Some(1010));
        assert_eq!(r.top("s"), None);
        assert_eq!(r.rebase("none", 1), None);
    }
}
