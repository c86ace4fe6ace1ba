//! The simulation's faults: what each does to the simulated Redis, the nodes'
//! connections and the clients, and how a node's connections come back.
//!
//! Runs on: the simulation's thread (`sim::run`).

use rand::Rng;

use super::{Command, Node, Reply, World};
use crate::ids::Route;

impl World {
    /// Injects one fault.
    pub(super) fn fault(&mut self) {
        self.faults += 1;
        let n = self.rng.random_range(0..self.nodes.len());
        match self.rng.random_range(0..7) {
            0 => {
                self.log(format!("FAULT node {n}'s Pub/Sub connection killed"));
                self.drop_connections(n);
            }
            1 => {
                let before = self.nodes[n].inbox.len();
                let keep = self.rng.random_range(0..=before);
                let inbox = &mut self.nodes[n].inbox;
                let mut i = 0;
                inbox.retain(|_| {
                    i += 1;
                    i > before - keep
                });
                self.log(format!("FAULT node {n} lagged: {} messages dropped", before - keep));
                self.nodes[n].core.handle_gap_everywhere();
                self.apply(n);
            }
            2 => {
                self.log("Redis snapshot taken (no fault yet)".into());
                self.snapshot = Some(self.redis.clone());
            }
            3 => {
                if let Some(snapshot) = self.snapshot.clone() {
                    self.log("FAULT Redis restarted from the snapshot: last writes lost".into());
                    self.redis.restore_keys_of(&snapshot);
                    for n in 0..self.nodes.len() {
                        self.drop_connections(n);
                    }
                }
            }
            4 => {
                self.log("FAULT Redis restarted empty".into());
                self.redis.flush();
                self.snapshot = None;
                for n in 0..self.nodes.len() {
                    self.drop_connections(n);
                }
            }
            5 => {
                self.log(format!("FAULT node {n} crashed and restarted: all it knew is gone"));
                // Its clients lose their connections (they come back later, to any node);
                // its queues, timers, trackers, floors and subscriptions die with it.
                for client in &mut self.clients {
                    if client.node == Some(n) {
                        client.node = None;
                    }
                }
                self.timers.retain(|(_, node, _)| *node != n);
                self.nodes[n] = Node::new(&self.history);
                self.nodes[n].up = false;
            }
            _ => {
                let c = self.rng.random_range(0..self.clients.len());
                self.client_moves(c);
            }
        }
    }

    /// Node `n`'s connections drop: Pub/Sub in flight is lost, commands in flight fail.
    fn drop_connections(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.up = false;
        node.inbox.clear();
        for command in std::mem::take(&mut node.commands) {
            match command {
                // The publisher is told `unavailable`; nothing to track.
                Command::Publish { .. } => {}
                Command::Read(job) => {
                    node.replies.push_back(Reply::Read(job, Err("connection lost".into())))
                }
                Command::Rebase(route, epoch) => {
                    node.replies.push_back(Reply::RebaseFailed(route, epoch))
                }
            }
        }
    }

    /// Node `n`'s connections come back: it learns the positions it lacks, subscribes
    /// again, and reads every stream from its position.
    pub(super) fn reconnect(&mut self, n: usize) {
        self.log(format!("node {n} reconnects"));
        self.nodes[n].up = true;
        let routes: Vec<Route> = self.nodes[n].subscribed.iter().cloned().collect();
        for route in routes {
            if !self.nodes[n].core.is_known(&route) {
                let position = self.position_of(&route);
                self.nodes[n].core.track(&route, position);
            }
        }
        self.nodes[n].core.handle_gap_everywhere();
        self.apply(n);
    }
}
