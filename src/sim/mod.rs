//! Deterministic simulation of a corecast cluster's stream delivery: several nodes, each
//! running the bridge's real stream core (`bus::redis::streams::StreamsCore`, with its
//! trackers, gap fills, replays and floors) and the real Pub/Sub framing, against a model
//! of Redis ([`model`]) and simulated clients, under a seeded scheduler that picks every
//! next step: a command executed by Redis, a reply or a Pub/Sub message taken by a node, a
//! timer, a client action, a fault. After every run a checker holds each client's view to
//! the delivery contract (PROTOCOL.md, "Guarantees").
//!
//! Runs on: the caller's thread, alone. Deterministic: the same seed gives the same run,
//! step for step (no clock, no hash-order dependence, one seeded ChaCha8 generator).
//!
//! What each run exercises: publishes from any node (with the node's floor), Pub/Sub per
//! node with its own queue, history reads and replies in order per node connection, and
//! these faults: a node's Pub/Sub connection killed (its queue lost), messages dropped as
//! at `Lagged`, Redis frozen (the scheduler simply does not pick it for a while), Redis
//! restarted empty, Redis restarted from an earlier snapshot (last writes lost) — which
//! is also what a failover to a lagging replica looks like —, every connection dropped
//! with its commands in flight, a node crashed and restarted (everything it knew lost,
//! its clients disconnected), and clients disconnecting and coming back with `since` to
//! any node. Each node's clients subscribe, recover and leave through the shard's real
//! subscription book (`shard::SubscriptionBook`): it decides when the node gains or
//! loses a topic, which replays are asked for, and whose live events are held back.
//!
//! Not modelled (see the module docs of [`model`] too): the shard's inbox between the
//! bridge and connections (effects reach clients at once, in order) — a full inbox makes
//! the bridge wait, never drop or reorder (it is one FIFO per shard), and what piles up
//! behind that wait is fred's `Lagged`, which is a fault here —, key expiry, idempotency
//! keys, streams mode, presence.

mod check;
mod clients;
mod faults;
pub mod model;

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    bus::redis::{
        streams::{Effect, ReadFrom, ReadJob, StreamsCore},
        wire,
    },
    history::{memory::HistorySettings, retention::Retention},
    ids::{ConnId, EventId, Route},
    shard::SubscriptionBook,
    xshard::Delivery,
};
use model::{ModelRead, ModelRedis};

/// The shape of one simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes of the cluster.
    pub nodes: usize,
    /// Clients; each subscribes to one topic.
    pub clients: usize,
    /// Topics (streams).
    pub topics: usize,
    /// Scheduler steps before the run heals and settles.
    pub steps: usize,
    /// Entries each stream keeps (`MAXLEN`).
    pub history_size: usize,
    /// `recovery_max_replay`.
    pub max_replay: u64,
    /// Percent of steps that inject a fault (0: none).
    pub fault_percent: u32,
    /// Steps kept for a violation's report.
    pub trace_len: usize,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            clients: 6,
            topics: 2,
            steps: 400,
            history_size: 20,
            max_replay: 1000,
            fault_percent: 4,
            trace_len: 64,
        }
    }
}

/// What a run did (for the runner's report).
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Steps taken, settling included.
    pub steps: u64,
    /// Events stored by the model Redis.
    pub published: u64,
    /// Events delivered to clients (replays included).
    pub delivered: u64,
    /// Faults injected.
    pub faults: u64,
    /// Ids Redis handed out twice to a publisher that could not know better (the
    /// documented limit of G5).
    pub reused: u64,
}

/// A broken guarantee: what, and the run's last steps.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed that reproduces it.
    pub seed: u64,
    /// What broke.
    pub what: String,
    /// The last steps of the run, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.what)?;
        writeln!(f, "last steps:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay: cargo run -p corecast-sim -- --seed {}", self.seed)
    }
}

/// A command on its way to Redis on a node's connection.
#[derive(Debug, Clone)]
enum Command {
    Publish { route: Route, rest: String, floor: Option<EventId> },
    Read(ReadJob),
    Rebase(Route, u64),
}

/// A reply on its way back to a node.
#[derive(Debug)]
enum Reply {
    Published(Route, EventId),
    Read(ReadJob, Result<ModelRead, String>),
    RebaseFailed(Route, u64),
}

/// One simulated node (of one shard): the real stream core, the shard's real
/// subscription book, the node's Redis subscriptions, its three queues.
#[derive(Debug)]
struct Node {
    core: StreamsCore,
    /// The shard's subscriptions and replays (it says when the node gains or loses a
    /// topic, which replays to ask for, whose live events to hold back).
    book: SubscriptionBook,
    /// The topics the node is subscribed to in Redis.
    subscribed: BTreeSet<Route>,
    /// Its connections to Redis are up.
    up: bool,
    /// Pub/Sub messages on their way to it.
    inbox: VecDeque<(Route, String)>,
    /// Commands on their way to Redis.
    commands: VecDeque<Command>,
    /// Replies on their way back.
    replies: VecDeque<Reply>,
}

impl Node {
    fn new(history: &HistorySettings) -> Node {
        Node {
            core: StreamsCore::new(history.clone()),
            book: SubscriptionBook::default(),
            subscribed: BTreeSet::new(),
            up: true,
            inbox: VecDeque::new(),
            commands: VecDeque::new(),
            replies: VecDeque::new(),
        }
    }
}

/// What a client saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Event(EventId, String),
    Lost,
    Recovered(bool),
    /// A new connection, subscribed with `since` (`None`: fresh).
    Connected(Option<EventId>),
}

#[derive(Debug)]
struct Client {
    topic: Route,
    /// The node it is connected to (`None`: disconnected).
    node: Option<usize>,
    seen: Vec<Seen>,
    /// The last event id it got.
    last: Option<EventId>,
}

/// The simulated cluster.
struct World {
    seed: u64,
    config: SimConfig,
    rng: ChaCha8Rng,
    start: Instant,
    micros: u64,
    redis: ModelRedis,
    snapshot: Option<ModelRedis>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    /// The history settings every node's stream core is made with.
    history: HistorySettings,
    /// Reads and rebases to send again later: (due step, node, command).
    timers: Vec<(u64, usize, Command)>,
    step: u64,
    published: u64,
    delivered: u64,
    faults: u64,
    trace: VecDeque<String>,
    json: String,
    /// Every id Redis handed out, per stream, with its event.
    handed_out: HashMap<(Route, EventId), String>,
    /// Ids handed out twice to a publisher that could not know (the documented limit of
    /// G5: its node had no memory of the lost writes).
    reused: BTreeSet<EventId>,
    /// A broken guarantee found while running (reported after the run).
    broken: Option<String>,
}

/// Runs one simulation; `Err` names the first guarantee broken.
///
/// # Errors
/// The violation, with the seed and the run's last steps.
pub fn run(seed: u64, config: &SimConfig) -> Result<Outcome, Violation> {
    let mut world = World::new(seed, config.clone());
    for _ in 0..config.steps {
        world.step(true);
    }
    world.settle()?;
    // A last event on every topic: every connected client must end on it.
    let mut markers = Vec::new();
    for t in 0..world.config.topics {
        let route = topic(t);
        let node = t % world.nodes.len();
        world.publish(node, route.clone(), "marker".into());
        markers.push(route);
    }
    world.settle()?;
    world.check(&markers)?;
    Ok(Outcome {
        steps: world.step,
        published: world.published,
        delivered: world.delivered,
        faults: world.faults,
        reused: world.reused.len() as u64,
    })
}

fn topic(t: usize) -> Route {
    Route::Topic(format!("t{t}").into())
}

fn stream_key(route: &Route) -> String {
    match route {
        Route::Topic(t) => format!("topic:{t}"),
        Route::Direct(u) => format!("user:{u}"),
        Route::Broadcast => "broadcast".into(),
    }
}

impl World {
    fn new(seed: u64, config: SimConfig) -> World {
        let history = HistorySettings {
            rules: Default::default(),
            default: Retention { size: config.history_size as u64, ttl: Duration::from_secs(300) },
            meta_ttl: Duration::from_secs(86_400),
            max_replay: config.max_replay,
        };
        let nodes = (0..config.nodes).map(|_| Node::new(&history)).collect();
        let clients = (0..config.clients)
            .map(|c| Client {
                topic: topic(c % config.topics.max(1)),
                node: None,
                seen: Vec::new(),
                last: None,
            })
            .collect();
        World {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            start: Instant::now(),
            micros: 0,
            redis: ModelRedis::new(1_700_000_000_000_000),
            snapshot: None,
            nodes,
            clients,
            timers: Vec::new(),
            history,
            step: 0,
            published: 0,
            delivered: 0,
            faults: 0,
            trace: VecDeque::new(),
            json: String::new(),
            handed_out: HashMap::new(),
            reused: BTreeSet::new(),
            broken: None,
            config,
        }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_micros(self.micros)
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= self.config.trace_len {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6} {line}", self.step));
    }

    fn violation(&self, what: String) -> Violation {
        Violation { seed: self.seed, what, trace: self.trace.iter().cloned().collect() }
    }

    /// One scheduler step: a random enabled action (faults only when `faults`). Returns
    /// whether anything was enabled.
    fn step(&mut self, faults: bool) -> bool {
        self.step += 1;
        self.micros += self.rng.random_range(1..2_000);
        self.redis.tick(self.rng.random_range(1..2_000));
        if faults && self.rng.random_range(0..100) < self.config.fault_percent {
            self.fault();
            return true;
        }
        // Every enabled action, then one picked uniformly.
        let mut enabled: Vec<(u8, usize)> = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if node.up {
                enabled.push((0, n)); // publish from this node
                if !node.commands.is_empty() {
                    enabled.extend([(1, n), (1, n)]); // Redis executes (weighted)
                }
            } else if faults {
                enabled.push((2, n)); // reconnect
            }
            if !node.replies.is_empty() {
                enabled.extend([(3, n), (3, n)]);
            }
            if !node.inbox.is_empty() {
                enabled.extend([(4, n), (4, n)]);
            }
        }
        if !self.timers.is_empty() {
            enabled.push((5, 0));
        }
        if faults {
            for c in 0..self.clients.len() {
                enabled.push((6, c));
            }
        }
        if enabled.is_empty() {
            return false;
        }
        let (what, who) = enabled[self.rng.random_range(0..enabled.len())];
        match what {
            0 => {
                let route = topic(self.rng.random_range(0..self.config.topics.max(1)));
                let data = format!("p{}", self.step);
                self.publish(who, route, data);
            }
            1 => self.execute(who),
            2 => self.reconnect(who),
            3 => self.take_reply(who),
            4 => self.take_message(who),
            5 => {
                let i = self.rng.random_range(0..self.timers.len());
                let (_, node, command) = self.timers.swap_remove(i);
                if self.nodes[node].up {
                    self.nodes[node].commands.push_back(command);
                } else {
                    self.timers.push((self.step + 1, node, command));
                }
            }
            _ => self.client_moves(who),
        }
        true
    }

    /// Heals every node and runs without faults until nothing is left to do, every timer
    /// fired and every client connected.
    fn settle(&mut self) -> Result<(), Violation> {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                self.reconnect(n);
            }
        }
        for c in 0..self.clients.len() {
            if self.clients[c].node.is_none() {
                let node = c % self.nodes.len();
                self.connect(c, node);
            }
        }
        let limit = self.step + 200_000;
        loop {
            let busy = self
                .nodes
                .iter()
                .any(|n| !n.commands.is_empty() || !n.replies.is_empty() || !n.inbox.is_empty());
            if !busy && self.timers.is_empty() {
                break;
            }
            if self.step > limit {
                return Err(
                    self.violation("the cluster never settled (a read or a replay loops)".into())
                );
            }
            self.step_without_publishing();
        }
        let waits = |c: &Client, nodes: &[Node], i: usize| {
            c.node.is_some_and(|n| nodes[n].book.holds(&c.topic, ConnId(i as u32)))
        };
        if let Some(c) = (0..self.clients.len()).find(|&c| waits(&self.clients[c], &self.nodes, c))
        {
            return Err(self.violation(format!("client {c} waits for its replay forever")));
        }
        Ok(())
    }

    /// A settling step: Redis, replies, messages and timers only.
    fn step_without_publishing(&mut self) {
        self.step += 1;
        self.micros += self.rng.random_range(1..2_000);
        self.redis.tick(self.rng.random_range(1..2_000));
        let mut enabled = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if !node.commands.is_empty() {
                enabled.push((1, n));
            }
            if !node.replies.is_empty() {
                enabled.push((3, n));
            }
            if !node.inbox.is_empty() {
                enabled.push((4, n));
            }
        }
        if !self.timers.is_empty() {
            enabled.push((5, 0));
        }
        let Some(&(what, who)) = enabled.get(self.rng.random_range(0..enabled.len().max(1))) else {
            return;
        };
        match what {
            1 => self.execute(who),
            3 => self.take_reply(who),
            4 => self.take_message(who),
            _ => {
                let (_, node, command) = self.timers.swap_remove(0);
                self.nodes[node].commands.push_back(command);
            }
        }
    }

    /// A client's publish on `route` through node `n`: with the node's floor.
    fn publish(&mut self, n: usize, route: Route, data: String) {
        let floor = self.nodes[n].core.floor_of(&route);
        let rest = format!("\"type\":\"message\",\"data\":\"{data}\"}}");
        self.log(format!("node {n} sends publish {data} on {route:?} floor {floor:?}"));
        self.nodes[n].commands.push_back(Command::Publish { route, rest, floor });
    }

    /// Redis executes node `n`'s next command.
    fn execute(&mut self, n: usize) {
        let Some(command) = self.nodes[n].commands.pop_front() else { return };
        match command {
            Command::Publish { route, rest, floor } => {
                let key = stream_key(&route);
                let (id, payload) =
                    self.redis.publish(&key, &rest, self.config.history_size, floor);
                self.published += 1;
                if let Some(before) = self.handed_out.insert((route.clone(), id), rest.clone())
                    && before != rest
                {
                    let knew = floor.is_some_and(|f| f.epoch == id.epoch && f.offset >= id.offset);
                    if knew {
                        self.broken.get_or_insert(format!(
                            "G5: node {n} knew {floor:?} yet Redis handed out {id} again"
                        ));
                    }
                    self.reused.insert(id);
                }
                self.log(format!("redis stores {id} on {route:?} for node {n}"));
                for node in &mut self.nodes {
                    if node.up && node.subscribed.contains(&route) {
                        node.inbox.push_back((route.clone(), payload.clone()));
                    }
                }
                self.nodes[n].replies.push_back(Reply::Published(route, id));
            }
            Command::Read(job) => {
                let from = match job.from {
                    ReadFrom::Offset(o) => Some(o),
                    ReadFrom::Latest => None,
                };
                let read = self.redis.read(&stream_key(&job.route), from, job.count);
                self.nodes[n].replies.push_back(Reply::Read(job, Ok(read)));
            }
            Command::Rebase(route, epoch) => {
                let after = self.redis.rebase(&stream_key(&route), epoch);
                self.log(format!("redis abandons epoch {epoch} of {route:?}: now {after:?}"));
            }
        }
    }

    /// Node `n` takes its next reply.
    fn take_reply(&mut self, n: usize) {
        let Some(reply) = self.nodes[n].replies.pop_front() else { return };
        match reply {
            Reply::Published(route, id) => self.nodes[n].core.handle_receipt(&route, id),
            Reply::Read(job, result) => {
                let route = job.route.clone();
                let framed = result.map(|read| {
                    read.map(|(state, entries)| {
                        let deliveries: Vec<Arc<Delivery>> = entries
                            .iter()
                            .map(|(_, payload)| {
                                Arc::new(wire::delivery_from(
                                    route.clone(),
                                    payload,
                                    &mut self.json,
                                ))
                            })
                            .filter(|d| d.id.is_some())
                            .collect();
                        (state.into_state(), deliveries)
                    })
                });
                let summary = match &framed {
                    Ok(Some((s, d))) => format!(
                        "epoch {} top {} first {:?}, {} entries",
                        s.epoch,
                        s.top,
                        s.first,
                        d.len()
                    ),
                    Ok(None) => "no history".into(),
                    Err(e) => format!("failed: {e}"),
                };
                self.log(format!("node {n} read {:?} {:?}: {summary}", job.route, job.purpose));
                let now = self.now();
                self.nodes[n].core.handle_read(job, framed, now);
                self.apply(n);
            }
            Reply::RebaseFailed(route, epoch) => {
                let due = self.step + self.rng.random_range(1..50);
                self.timers.push((due, n, Command::Rebase(route, epoch)));
            }
        }
    }

    /// Node `n` takes its next Pub/Sub message.
    fn take_message(&mut self, n: usize) {
        let Some((route, payload)) = self.nodes[n].inbox.pop_front() else { return };
        let delivery = Arc::new(wire::delivery_from(route.clone(), &payload, &mut self.json));
        self.log(format!("node {n} gets live {:?} on {route:?}", delivery.id));
        if let Some(delivery) = self.nodes[n].core.handle_live(&route, delivery) {
            self.deliver(n, &route, &delivery);
        }
        self.apply(n);
    }

    /// Executes node `n`'s effects.
    fn apply(&mut self, n: usize) {
        let mut effects = Vec::new();
        self.nodes[n].core.swap_effects(&mut effects);
        for effect in effects {
            match effect {
                Effect::Deliver(route, delivery) => self.deliver(n, &route, &delivery),
                Effect::Lost(route) => {
                    self.log(format!("node {n} tells {route:?} lost"));
                    for client in &mut self.clients {
                        if client.node == Some(n) && client.topic == route {
                            client.seen.push(Seen::Lost);
                        }
                    }
                }
                Effect::Read(job) if job.failures == 0 => {
                    self.nodes[n].commands.push_back(Command::Read(job));
                }
                Effect::Read(job) => {
                    let pause = 1u64 << job.failures.min(6);
                    let due = self.step + self.rng.random_range(1..=pause);
                    self.timers.push((due, n, Command::Read(job)));
                }
                Effect::Abandon { route, epoch, .. } => {
                    self.log(format!("node {n} abandons epoch {epoch} of {route:?}"));
                    self.nodes[n].commands.push_back(Command::Rebase(route, epoch));
                }
                Effect::Replayed(to, answer) => {
                    let c = to.conn.0 as usize;
                    // An answer for a connection that is gone, or to an older request
                    // (the shard's own check).
                    if self.clients[c].node != Some(n)
                        || !self.nodes[n].book.replay_answered(&to.route, to.conn, to.token)
                    {
                        continue;
                    }
                    let client = &mut self.clients[c];
                    for event in &answer.events {
                        if let (Some(id), Some(data)) = (event.id, data_of(event)) {
                            client.seen.push(Seen::Event(id, data));
                            client.last = Some(id);
                            self.delivered += 1;
                        }
                    }
                    client.seen.push(Seen::Recovered(answer.recovered));
                    let line = format!(
                        "client {c} recovered {} with {} events",
                        answer.recovered,
                        answer.events.len()
                    );
                    self.log(line);
                }
                Effect::GapFilled(_)
                | Effect::UnconfirmedDropped(..)
                | Effect::ReplaysGivenUp(..) => {}
            }
        }
    }
}

/// The `data` of a framed event (the simulation's payloads are `{"id",..,"data":"…"}`).
fn data_of(delivery: &Delivery) -> Option<String> {
    let (_, range, _) = crate::ws::frame::decode_unmasked(&delivery.v1)?;
    let text = std::str::from_utf8(delivery.v1.get(range)?).ok()?;
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("data")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_replayed_step_for_step_by_its_seed() {
        let config = SimConfig { steps: 300, ..SimConfig::default() };
        let a = run(7, &config).map_err(|v| v.to_string());
        let b = run(7, &config).map_err(|v| v.to_string());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn runs_without_faults_keep_the_contract() {
        let config = SimConfig { fault_percent: 0, ..SimConfig::default() };
        for seed in 0..20 {
            if let Err(v) = run(seed, &config) {
                panic!("{v}");
            }
        }
    }
}
