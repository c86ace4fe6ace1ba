//! The simulated clients: connecting to a node (with `since`, as a reconnecting client
//! does), leaving and coming back to any node, and what a node delivers to them.
//!
//! Runs on: the simulation's thread (`sim::run`).

use std::collections::VecDeque;

use rand::Rng;

use super::{Seen, World, data_of, stream_key};
use crate::{
    bus::{ReplayRequest, redis::tracker::Position},
    history::Since,
    ids::{ConnId, Interest, InterestChange, Route, ShardId},
    shard::SubscriptionEffect as BookEffect,
    xshard::{Delivery, ReplayTo},
};

impl World {
    /// Node `n` delivers `delivery` of `route` to its clients of the stream (held back
    /// from those waiting for a replay, as the shard's fan-out does: the answer has it).
    pub(super) fn deliver(&mut self, n: usize, route: &Route, delivery: &Delivery) {
        let (Some(id), Some(data)) = (delivery.id, data_of(delivery)) else { return };
        for (c, client) in self.clients.iter_mut().enumerate() {
            if client.node == Some(n)
                && client.topic == *route
                && !self.nodes[n].book.holds(route, ConnId(c as u32))
            {
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

    /// Client `c` connects to node `n` and subscribes, with `since` when it saw events:
    /// through the shard's subscription book, as a real connection does.
    pub(super) fn connect(&mut self, c: usize, n: usize) {
        let Route::Topic(topic) = self.clients[c].topic.clone() else { return };
        let since = self.clients[c].last;
        self.log(format!("client {c} connects to node {n} since {since:?}"));
        let (conn, user) = (ConnId(c as u32), format!("c{c}"));
        let client = &mut self.clients[c];
        client.node = Some(n);
        client.seen.push(Seen::Connected(since));
        let mut out = Vec::new();
        let book = &mut self.nodes[n].book;
        book.arrived(conn, &user, &mut out);
        book.subscribe(conn, &topic, since.map(Since::After), false, &mut out);
        self.carry_out(n, out);
    }

    /// Client `c` disconnects; it comes back to a random node (or later).
    pub(super) fn client_moves(&mut self, c: usize) {
        if let Some(n) = self.clients[c].node.take() {
            self.log(format!("client {c} leaves node {n}"));
            let mut out = Vec::new();
            self.nodes[n].book.departed(ConnId(c as u32), &format!("c{c}"), &mut out);
            self.carry_out(n, out);
        } else {
            let n = self.rng.random_range(0..self.nodes.len());
            self.connect(c, n);
        }
    }

    /// Carries out what node `n`'s subscription book decided, as the shard and the bridge
    /// do: a topic gained is tracked from where Redis stands (when the node can reach it)
    /// and subscribed, then confirmed to the book; a topic lost is untracked; a replay
    /// request goes to the stream core. Presence and users' direct streams are not
    /// simulated.
    fn carry_out(&mut self, n: usize, effects: Vec<BookEffect>) {
        let mut queue: VecDeque<BookEffect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                BookEffect::ChangeInterest(InterestChange::Gained(Interest::Topic(topic))) => {
                    let route = Route::Topic(topic.clone());
                    let up = self.nodes[n].up;
                    let position = if up { self.position_of(&route) } else { Position::Unknown };
                    self.nodes[n].core.track(&route, position);
                    self.nodes[n].subscribed.insert(route);
                    let mut out = Vec::new();
                    self.nodes[n].book.topic_confirmed(&topic, &mut out);
                    queue.extend(out);
                }
                BookEffect::ChangeInterest(InterestChange::Lost(Interest::Topic(topic))) => {
                    let route = Route::Topic(topic);
                    self.nodes[n].subscribed.remove(&route);
                    self.nodes[n].core.untrack(&route);
                }
                BookEffect::RequestReplay { conn, route, since, token, purpose } => {
                    let to = ReplayTo {
                        shard: ShardId(0),
                        route: route.clone(),
                        conn,
                        user: format!("c{}", conn.0).into(),
                        token,
                        purpose,
                    };
                    let request = ReplayRequest { route, since, limit: u64::MAX, to };
                    let now = self.now();
                    self.nodes[n].core.handle_replay(request, now);
                    self.apply(n);
                }
                BookEffect::ChangeInterest(_)
                | BookEffect::PresenceChange { .. }
                | BookEffect::RequestSnapshot { .. }
                | BookEffect::Subscribed { .. } => {}
            }
        }
    }
}
