//! The checker: the delivery contract (PROTOCOL.md, "Guarantees") held to every client's
//! view after a run, against the log of the ids Redis handed out.
//!
//! Runs on: the simulation's thread (`sim::run`), once per run.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
};

use super::{Seen, Violation, World, stream_key};
use crate::ids::{EventId, Route};

impl World {
    /// The contract, over every client's view (PROTOCOL.md, "Guarantees").
    pub(super) fn check(&self, markers: &[Route]) -> Result<(), Violation> {
        if let Some(what) = &self.broken {
            return Err(self.violation(what.clone()));
        }
        let mut named: HashMap<EventId, &str> = HashMap::new();
        for (c, client) in self.clients.iter().enumerate() {
            let mut seen_ids = BTreeSet::new();
            let mut last: Option<EventId> = None;
            let mut gap_told = false;
            for item in &client.seen {
                match item {
                    Seen::Connected(since) => {
                        // G2 is per connection: after a `recovered: false`, a client
                        // that resyncs may get again what it had.
                        last = *since;
                        seen_ids.clear();
                    }
                    Seen::Lost | Seen::Recovered(false) => gap_told = true,
                    Seen::Recovered(true) => {}
                    Seen::Event(id, data) => {
                        // G5: one id, one event, across every client (but for the ids a
                        // publisher that could not know was handed out again).
                        if !self.reused.contains(id)
                            && let Some(other) = named.insert(*id, data)
                            && other != data
                        {
                            return Err(self.violation(format!(
                                "G5: id {id} names two events ({other} and {data})"
                            )));
                        }
                        // G2: never twice to one client.
                        if !seen_ids.insert(*id) {
                            return Err(self.violation(format!(
                                "G2: client {c} got {id} twice: {}",
                                view_of(&client.seen)
                            )));
                        }
                        // G1/G3/G4: the next one in order, unless a loss was told.
                        if let Some(l) = last
                            && !gap_told
                            && (id.epoch != l.epoch || id.offset != l.offset + 1)
                        {
                            return Err(self.violation(format!(
                                "G3: client {c} got {id} after {l} with no recovered:false between"
                            )));
                        }
                        last = Some(*id);
                        gap_told = false;
                    }
                }
            }
            // Liveness: every connected client ends on its topic's marker — or, when the
            // marker itself was given an id the lost writes had (the documented limit of
            // G5), was told of the loss after the last event it got: never silence.
            let top = self.redis.top(&stream_key(&client.topic));
            let reused = top.is_some_and(|id| self.reused.contains(&id));
            let told_last = client
                .seen
                .iter()
                .rev()
                .take_while(|s| !matches!(s, Seen::Event(..)))
                .any(|s| matches!(s, Seen::Lost | Seen::Recovered(false)));
            if markers.contains(&client.topic) && client.node.is_some() && !(reused && told_last) {
                let got = client.seen.iter().rev().find_map(|s| match s {
                    Seen::Event(id, data) => Some((*id, data.as_str())),
                    _ => None,
                });
                if got.map(|g| g.1) != Some("marker") || got.map(|g| g.0) != top {
                    let mut tail = String::new();
                    for s in client.seen.iter().rev().take(6) {
                        let _ = write!(tail, "{s:?} ");
                    }
                    return Err(self.violation(format!(
                        "G3: client {c} did not end on the marker {top:?} of {:?}; last seen (newest first): {tail}",
                        client.topic
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A client's view, compactly: `e:o` events, `L` lost, `R+`/`R-` recovered, `C(since)`.
fn view_of(seen: &[Seen]) -> String {
    let mut out = String::new();
    for s in seen {
        let _ = match s {
            Seen::Event(id, _) => write!(out, "{}:{} ", id.epoch % 100_000, id.offset),
            Seen::Lost => write!(out, "L "),
            Seen::Recovered(r) => write!(out, "R{} ", if *r { '+' } else { '-' }),
            Seen::Connected(since) => {
                write!(
                    out,
                    "C({}) ",
                    since
                        .map(|s| format!("{}:{}", s.epoch % 100_000, s.offset))
                        .unwrap_or_default()
                )
            }
        };
    }
    out
}
