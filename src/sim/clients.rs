//! The simulated clients: connecting to a node (with `since`, as a reconnecting client
//! does), leaving and coming back to any node, and what a node delivers to them.
//!
//! Runs on: the simulation's thread (`sim::run`).

use rand::Rng;

use super::{Seen, World, data_of, stream_key};
use crate::{
    bus::{ReplayRequest, redis::tracker::Position},
    history::Since,
    ids::{ConnId, Route, ShardId},
    xshard::{Delivery, ReplayPurpose, ReplayTo},
};

impl World {
    /// Node `n` delivers `delivery` of `route` to its clients of the stream (held back
    /// from those waiting for a replay: the answer has it).
    pub(super) fn deliver(&mut self, n: usize, route: &Route, delivery: &Delivery) {
        let (Some(id), Some(data)) = (delivery.id, data_of(delivery)) else { return };
        for client in &mut self.clients {
            if client.node == Some(n) && client.topic == *route && client.recovering.is_none() {
                client.seen.push(Seen::Event(id, data.clone()));
                client.last = Some(id);
                self.delivered += 1;
            }
        }
    }

    /// Where `route` stands in Redis now (a subscription's position read).
    pub(super) fn position_of(&self, route: &Route) -> Position {
        match self.redis.read(&stream_key(route), None, 0) {
            None => Position::Empty,
            Some((state, _)) => Position::At(state.into_state().position()),
        }
    }

    /// Client `c` connects to node `n` and subscribes, with `since` when it saw events.
    pub(super) fn connect(&mut self, c: usize, n: usize) {
        let route = self.clients[c].topic.clone();
        let since = self.clients[c].last;
        self.log(format!("client {c} connects to node {n} since {since:?}"));
        let node = &mut self.nodes[n];
        let count = node.interest.entry(route.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            let position = if node.up { self.position_of(&route) } else { Position::Unknown };
            self.nodes[n].core.track(&route, position);
        }
        let client = &mut self.clients[c];
        client.node = Some(n);
        client.seen.push(Seen::Connected(since));
        let Some(since) = since else { return };
        self.next_token += 1;
        let token = self.next_token;
        client.recovering = Some(token);
        let to = ReplayTo {
            shard: ShardId(0),
            route: route.clone(),
            conn: ConnId(c as u32),
            user: format!("c{c}").into(),
            token,
            purpose: ReplayPurpose::Recover,
        };
        let request = ReplayRequest { route, since: Since::After(since), limit: u64::MAX, to };
        let now = self.now();
        self.nodes[n].core.handle_replay(request, now);
        self.apply(n);
    }

    /// Client `c` disconnects; it comes back to a random node (or later).
    pub(super) fn client_moves(&mut self, c: usize) {
        if let Some(n) = self.clients[c].node.take() {
            self.clients[c].recovering = None;
            let route = self.clients[c].topic.clone();
            let node = &mut self.nodes[n];
            if let Some(count) = node.interest.get_mut(&route) {
                *count -= 1;
                if *count == 0 {
                    node.interest.remove(&route);
                    node.core.untrack(&route);
                }
            }
            self.log(format!("client {c} leaves node {n}"));
        } else {
            let n = self.rng.random_range(0..self.nodes.len());
            self.connect(c, n);
        }
    }
}
