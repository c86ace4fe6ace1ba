//! The shard: the per-core root object that owns every connection it accepted.
//!
//! Runs on: one glommio `LocalExecutor`, pinned to one CPU. `Shard` is `!Send`: it lives
//! in an `Rc` shared by this executor's tasks and nowhere else. Its state is plain
//! `RefCell`/`Cell` data; no borrow is ever held across an `.await`.
//!
//! What it owns, and who else may touch it:
//! - [`ShardContext`] (`ctx`): configuration, counters, scratch buffers, the dirty list —
//!   lent read-only to connection code;
//! - [`table::ConnTable`]: every registered connection; entries come and go only through
//!   the registration guard ([`table::Registered`]), whose `Drop` undoes everything;
//! - [`Hub`]: user and topic indexes, whose interest transitions go to the bus;
//! - [`BusHandle`]: this shard's end of the bus;
//! - [`flush::Flusher`]: the send ring that writes a flush pass.
//!
//! Tasks of a shard:
//! - `listener::run`: accept loop on this shard's SO_REUSEPORT socket → `session::run`;
//! - `session::run`: one per socket: upgrade → register → serve → close;
//! - `inbox::run`: drains the bus's messages and fans deliveries out to local connections;
//! - `LocalSequencer::run` (`bus::embedded`): sequences the streams this shard owns and
//!   delivers them to the inboxes of the shards that want them;
//! - `heartbeat::run`: pings, pong deadlines and seed-mode application pings;
//! - `stats_feed::run` (shard 0 only): the node's figures on `corecast.stats` each second;
//! - [`run`] itself: waits for the shutdown command and drains.
//!
//! Writes are batched per pass: producers (inbox, heartbeat, replies) queue frames and
//! put the connection on the dirty list; a flush pass then writes each dirty socket once,
//! with all its queued frames (`flush`).

mod api;
mod awaiting;
mod flush;
mod health;
mod heartbeat;
mod inbox;
mod listener;
mod presence;
mod recovering;
mod session;
pub(crate) mod stats_feed;
mod table;

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use awaiting::AwaitingBus;
use recovering::Recoveries;

use crate::{
    admission::{BudgetSlot, ConnectRate, ConnectionBudget},
    auth::Verifier,
    bus::{BusCommand, BusCommands, BusHandle, ReplayRequest, embedded::LocalSequencer},
    config::Config,
    conn::{Conn, Mode, ShardContext, SubscribeReply, Subscriptions, state::Close},
    history::{Since, memory::HistorySettings},
    hub::{Hub, Subscribed},
    ids::{ConnId, NodeId, Publisher, Route, ShardId},
    presence::webhook::WebhookQueue,
    protocol::{limits::MAX_TOPICS_PER_CONN, reply},
    stats::NodeStats,
    ws::frame::close_code,
    xshard::{
        Delivery, ReplayAnswer, ReplayPurpose, ReplayTo, ShardControl, ShardInbox, ShardInboxes,
    },
};

/// Everything a shard thread is started with (all `Send`).
#[derive(Debug)]
pub(crate) struct ShardParts {
    /// This shard's index.
    pub id: ShardId,
    /// Node configuration.
    pub cfg: Config,
    /// The bound, listening SO_REUSEPORT socket for this shard.
    pub listener: OwnedFd,
    /// With `api_listen`: this shard's API-only listening socket.
    pub api_listener: Option<OwnedFd>,
    /// Messages from the bus.
    pub inbox: ShardInbox,
    /// Shutdown command from the main thread.
    pub control: flume::Receiver<ShardControl>,
    /// Senders into every sequencer lane (for this shard's `BusHandle`): one per shard
    /// with the embedded bus, the bridge's one with Redis.
    pub bus_lanes: Vec<flume::Sender<BusCommand>>,
    /// With the embedded bus: this shard's sequencer lane (commands about the streams it
    /// owns) and every shard's inbox (the sequencer delivers into them).
    pub sequencer: Option<(BusCommands, ShardInboxes)>,
    /// Told once this shard's executor runs (the node's start waits for every shard).
    pub started: flume::Sender<ShardId>,
    /// What every shard of the node shares.
    pub node: NodeShared,
}

/// What every shard of a node shares (all `Send + Sync`).
#[derive(Debug, Clone)]
pub(crate) struct NodeShared {
    /// Node counters and the node's id.
    pub stats: Arc<NodeStats>,
    /// Node-wide connection count.
    pub budget: Arc<ConnectionBudget>,
    /// Node-wide count of sockets in the HTTP handshake.
    pub pending_budget: Arc<ConnectionBudget>,
    /// Verifies tokens; `None` when authentication is off.
    pub verifier: Option<Arc<Verifier>>,
    /// The server API's key; `None` when the API is off.
    pub api_key: Option<Arc<str>>,
    /// New connections per second per IP, node-wide.
    pub connect_rate: Arc<ConnectRate>,
    /// To the webhook dispatcher; `None` without webhooks.
    pub webhooks: Option<WebhookQueue>,
}

/// How long a shard's tasks run before the executor polls for I/O again. The inbox
/// task's flush pass yields at this rate, so a publisher's message read mid-pass joins
/// the pass (glommio's default, 100 ms, would make it wait for the next one).
pub(crate) const PREEMPT_TIMER: Duration = Duration::from_millis(2);

/// Entries of each of the shard executor's io_uring rings (glommio's default is 128).
/// Every idle connection keeps a readiness poll in the main ring, and glommio cancels
/// and re-arms a timer there on every turn of its loop; the kernel finds the request to
/// cancel by walking one bucket of a hash table whose size grows with the ring (up to
/// 256 buckets). With 128 entries, 10,000 sockets meant ~200 µs per cancel (measured:
/// 1.7% of the core at 20 k deliveries/s); with 4,096, the table has its full size.
/// Costs about 1 MiB of kernel memory per shard.
pub(crate) const RING_DEPTH: usize = 4096;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serves {
    /// Upgrades, `/healthz`, `/readyz`, and `/api/` unless `api_listen` is set.
    Everything,
    /// `/api/`, `/healthz` and `/readyz` only (`api_listen`).
    ApiOnly,
}

/// Per-core state. See the module docs.
#[derive(Debug)]
pub struct Shard {
    /// What connection code may see.
    ctx: ShardContext,
    /// Every registered connection.
    table: table::ConnTable,
    /// User and topic indexes.
    hub: RefCell<Hub>,
    /// Subscribers whose topic the bus has not confirmed yet.
    awaiting: RefCell<AwaitingBus>,
    /// Connections waiting for a replay, whose live events of that stream are held back.
    recoveries: RefCell<Recoveries>,
    /// This shard's end of the bus.
    bus: Rc<BusHandle>,
    /// Writes flush passes.
    flusher: flush::Flusher,
    /// Sockets of this shard still in the HTTP handshake, per source IP.
    pending_by_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Node-wide count of sockets in the HTTP handshake.
    pending_budget: Arc<ConnectionBudget>,
    /// Node-wide connection count.
    budget: Arc<ConnectionBudget>,
    /// Set once shutdown has begun: no new upgrades.
    shutting_down: Cell<bool>,
    /// Server-API requests waiting for the bus's answer.
    api_waiters: Rc<api::ApiWaiters>,
    /// Connections subscribed with `presence: true`.
    watchers: RefCell<presence::Watchers>,
    /// To the webhook dispatcher (`connection_closed`); `None` without webhooks.
    webhooks: Option<WebhookQueue>,
    /// Users refused until a time (`/api/disconnect` with a block).
    blocks: api::Blocks,
    /// New connections per second per IP, node-wide.
    connect_rate: Arc<ConnectRate>,
}

impl Shard {
    /// Builds the per-core state. No I/O: sockets and tasks are attached by [`run`].
    fn new(
        id: ShardId,
        cfg: Config,
        bus: Vec<flume::Sender<BusCommand>>,
        sequencer: Option<Rc<LocalSequencer>>,
        node: NodeShared,
    ) -> Rc<Shard> {
        let NodeShared { stats, budget, pending_budget, verifier, api_key, connect_rate, webhooks } =
            node;
        Rc::new(Shard {
            table: table::ConnTable::default(),
            hub: RefCell::new(Hub::new()),
            awaiting: RefCell::default(),
            recoveries: RefCell::default(),
            bus: BusHandle::new(id, bus, sequencer.map(|s| (id.0 as usize, s))),
            flusher: flush::Flusher::default(),
            pending_by_ip: RefCell::new(HashMap::new()),
            pending_budget,
            budget,
            shutting_down: Cell::new(false),
            api_waiters: Rc::default(),
            watchers: RefCell::default(),
            webhooks,
            blocks: api::Blocks::default(),
            connect_rate,
            ctx: ShardContext::new(id, cfg, stats, verifier, api_key),
        })
    }

    /// The shard as connection code sees it.
    pub fn ctx(&self) -> &ShardContext {
        &self.ctx
    }

    /// Admits a socket into the HTTP handshake, within the per-IP (this shard) and node-wide
    /// caps. The returned guard releases both when the handshake ends, however it ends.
    fn try_begin_handshake(self: &Rc<Self>, peer: Option<SocketAddr>) -> Option<PendingHandshake> {
        let ip = peer.map(|p| p.ip());
        if let Some(ip) = ip {
            let mut pending = self.pending_by_ip.borrow_mut();
            let n = pending.entry(ip).or_insert(0);
            if *n >= self.ctx.cfg.max_pending_handshakes_per_ip {
                return None;
            }
            *n += 1;
        }
        let mut guard = PendingHandshake { shard: self.clone(), ip, slot: None };
        // On failure the guard gives the per-IP slot back.
        guard.slot = Some(self.pending_budget.try_acquire()?);
        Some(guard)
    }

    /// Writes every dirty connection once (all its queued frames in one send).
    fn flush_dirty(&self) {
        while self.flusher.flush_some(&self.ctx, usize::MAX) {}
    }

    /// Queues one delivery on every local connection it is for (no write); returns how many
    /// connections took it.
    pub fn fan_out(&self, delivery: &Delivery) -> u64 {
        inbox::fan_out(self, delivery)
    }

    /// A shard with no executor, no listener and no sequencer, for benchmarks of the
    /// fan-out path without sockets: connections are added with
    /// [`add_detached`](Self::add_detached) and never flushed.
    pub fn detached(cfg: Config) -> Rc<Shard> {
        let budget = ConnectionBudget::new(usize::MAX);
        let (bus, _) = crate::bus::command_channel(1);
        let stats = NodeStats::new(1, NodeId("detached".into()), false);
        let node = NodeShared {
            stats,
            budget: budget.clone(),
            pending_budget: budget,
            verifier: None,
            api_key: None,
            connect_rate: ConnectRate::new(0),
            webhooks: None,
        };
        Shard::new(ShardId(0), cfg, vec![bus], None, node)
    }

    /// Registers a connection with no socket (fd −1) on a detached shard; it stays
    /// registered while the returned guard lives.
    pub fn add_detached(self: &Rc<Self>, user: &str, mode: Mode) -> table::Registered {
        let conn = Rc::new(Conn::new(-1, user.to_owned(), mode, None, &self.ctx, Instant::now()));
        let slot = self.budget.try_acquire().expect("a detached shard's budget is unlimited");
        table::Registered::new(self, conn, slot, None)
    }

    /// Forgets every queued frame and the dirty list (benchmarks of a detached shard).
    pub fn discard_queued(&self) {
        let drained: Vec<Rc<Conn>> = self.ctx.dirty.borrow_mut().drain(..).collect();
        for conn in drained {
            conn.discard_unstarted();
        }
    }
}

impl Subscriptions for Shard {
    fn subscribe(
        &self,
        conn: ConnId,
        topic: &str,
        since: Option<Since>,
        presence: bool,
    ) -> SubscribeReply {
        let outcome = self.hub.borrow_mut().subscribe(topic, conn, MAX_TOPICS_PER_CONN);
        if matches!(outcome, Subscribed::Added(_))
            && let Some(user) = self.user_of(conn)
        {
            self.bus.presence_change(topic, &user, true);
        }
        let reply = match outcome {
            Subscribed::Added(Some(change)) => {
                self.awaiting.borrow_mut().gained(topic, conn);
                self.bus.change_interest(change);
                SubscribeReply::WhenConfirmed
            }
            Subscribed::Added(None) | Subscribed::Already => {
                if self.awaiting.borrow_mut().join(topic, conn) {
                    SubscribeReply::WhenConfirmed
                } else {
                    SubscribeReply::Now
                }
            }
            Subscribed::TooManyTopics => return SubscribeReply::TooManyTopics,
        };
        if presence {
            // The snapshot is asked for once `subscribed` is sent (now, or when the bus
            // confirms the topic); news is held until it arrives.
            let token = self.watchers.borrow_mut().watch(topic, conn);
            if reply == SubscribeReply::Now {
                self.request_snapshot(conn, topic, Some(token));
            }
        }
        if let Some(since) = since {
            let route = Route::Topic(topic.into());
            self.recoveries.borrow_mut().begin(route.clone(), conn, since, purpose_of(since));
            if reply == SubscribeReply::Now {
                self.request_replay(conn, route);
            }
        }
        reply
    }

    fn unsubscribe(&self, conn: ConnId, topic: &str) {
        if self.hub.borrow().is_subscribed(topic, conn)
            && let Some(user) = self.user_of(conn)
        {
            self.bus.presence_change(topic, &user, false);
        }
        self.watchers.borrow_mut().forget(topic, conn);
        self.awaiting.borrow_mut().forget(topic, conn);
        self.recoveries.borrow_mut().forget(&Route::Topic(topic.into()), conn);
        let change = self.hub.borrow_mut().unsubscribe(topic, conn);
        if let Some(change) = change {
            self.bus.change_interest(change);
        }
    }

    fn history(&self, conn: ConnId, topic: &str, since: Since, limit: u64) {
        let Some(user) = self.user_of(conn) else { return };
        let route = Route::Topic(topic.into());
        let to = ReplayTo {
            shard: self.ctx.id,
            route: route.clone(),
            conn,
            user,
            token: 0,
            purpose: ReplayPurpose::History,
        };
        self.bus.request_replay(ReplayRequest { route, since, limit, to });
    }

    fn presence(&self, conn: ConnId, topic: &str) {
        self.request_snapshot(conn, topic, None);
    }
}

/// A replay from `since` recovers missed events; from `latest` it only delivers the last.
fn purpose_of(since: Since) -> ReplayPurpose {
    if since == Since::Latest { ReplayPurpose::Latest } else { ReplayPurpose::Recover }
}

impl Shard {
    /// The user of connection `id`, if it is registered.
    fn user_of(&self, id: ConnId) -> Option<Box<str>> {
        self.table.borrow().get(id.0 as usize).map(|c| c.user().into())
    }

    /// `conn` connected with `?lastEventId=`: its broadcasts are held back until the
    /// missed ones are replayed.
    pub(crate) fn recover_broadcasts(&self, conn: ConnId, since: Since) {
        self.recoveries.borrow_mut().begin(Route::Broadcast, conn, since, purpose_of(since));
        self.request_replay(conn, Route::Broadcast);
    }

    /// Sends `conn`'s pending replay request of `route`, if it has one not sent yet.
    fn request_replay(&self, conn: ConnId, route: Route) {
        let Some(request) = self.recoveries.borrow_mut().take_request(&route, conn) else { return };
        let Some(user) = self.user_of(conn) else { return };
        let to = ReplayTo {
            shard: self.ctx.id,
            route: route.clone(),
            conn,
            user,
            token: request.token,
            purpose: request.purpose,
        };
        self.bus.request_replay(ReplayRequest { route, since: request.since, limit: u64::MAX, to });
    }

    /// The bus answered a replay request.
    fn replayed(&self, to: &ReplayTo, answer: &ReplayAnswer) {
        let conns = self.table.borrow();
        let Some(conn) = conns.get(to.conn.0 as usize).filter(|c| c.user() == &*to.user) else {
            return;
        };
        let topic = match &to.route {
            Route::Topic(topic) => Some(&**topic),
            Route::Broadcast | Route::Direct(_) => None,
        };
        if to.purpose == ReplayPurpose::History {
            let json = reply::history_json(topic.unwrap_or_default(), answer);
            conn.enqueue(&self.ctx, &Rc::new(crate::ws::frame::encode_text(&json)));
            return;
        }
        // An answer to an older request (unsubscribed, or subscribed again) is dropped.
        if !self.recoveries.borrow_mut().finish(&to.route, to.conn, to.token) {
            return;
        }
        for event in &answer.events {
            let frame = match (conn.mode(), &event.seed) {
                (Mode::Seed, Some(seed)) => seed,
                _ => &event.v1,
            };
            conn.enqueue(&self.ctx, &Rc::new(frame.clone()));
        }
        if to.purpose == ReplayPurpose::Recover {
            let json = reply::recovered_json(topic, answer.recovered);
            conn.enqueue(&self.ctx, &Rc::new(crate::ws::frame::encode_text(&json)));
        }
    }

    /// The bus lost events of `route` it could not replay: the local subscribers must
    /// resync (`recovered: false`).
    fn stream_lost(&self, route: &Route) {
        let conns = self.table.borrow();
        let hub = self.hub.borrow();
        let lost =
            |topic| Rc::new(crate::ws::frame::encode_text(&reply::recovered_json(topic, false)));
        match route {
            Route::Topic(topic) => {
                let frame = lost(Some(topic));
                for id in hub.topic_conns(topic) {
                    if let Some(conn) = conns.get(id.0 as usize) {
                        conn.enqueue(&self.ctx, &frame);
                    }
                }
            }
            Route::Broadcast => {
                let frame = lost(None);
                for (_, conn) in conns.iter().filter(|(_, c)| c.mode() != Mode::Echo) {
                    conn.enqueue(&self.ctx, &frame);
                }
            }
            // The user's connections are told (they cannot ask for a replay of direct
            // messages: the app resyncs them as it resyncs a topic).
            Route::Direct(user) => {
                let frame = Rc::new(crate::ws::frame::encode_text(&reply::direct_lost_json()));
                for id in hub.user_conns(user) {
                    if let Some(conn) = conns.get(id.0 as usize)
                        && conn.mode() != Mode::Echo
                    {
                        conn.enqueue(&self.ctx, &frame);
                    }
                }
            }
        }
    }

    /// The bus can (`true`) or cannot reach the other nodes: v1 clients are told.
    fn bus_state(&self, ready: bool) {
        let json = if ready { r#"{"type":"restored"}"# } else { r#"{"type":"degraded"}"# };
        let frame = Rc::new(crate::ws::frame::encode_text(json));
        for (_, conn) in self.table.borrow().iter().filter(|(_, c)| c.mode() == Mode::V1) {
            conn.enqueue(&self.ctx, &frame);
        }
    }

    /// Whether `conn`'s live events of `route` wait for a replay.
    fn holds(&self, route: &Route, conn: ConnId) -> bool {
        self.recoveries.borrow().holds(route, conn)
    }
}

impl Shard {
    /// The bus confirmed one of this shard's gains of `topic`: the subscribers that
    /// waited for it get their `subscribed`.
    fn topic_confirmed(&self, topic: &str) {
        let answer = self.awaiting.borrow_mut().confirmed(topic);
        if answer.is_empty() {
            return;
        }
        let frame = Rc::new(crate::ws::frame::encode_text(&reply::ack_json("subscribed", topic)));
        let conns = self.table.borrow();
        let hub = self.hub.borrow();
        let mut recover = Vec::new();
        for id in answer {
            // Still subscribed (an unsubscribe or a close removed it from the waiters).
            if let Some(conn) = conns.get(id.0 as usize)
                && hub.is_subscribed(topic, id)
            {
                conn.enqueue(&self.ctx, &frame);
                recover.push(id);
            }
        }
        drop((conns, hub));
        // Subscribers with `since` ask for their replay now that the topic's events reach
        // this shard (the answer comes behind them).
        for id in recover {
            self.request_replay(id, Route::Topic(topic.into()));
            let token = self.watchers.borrow().awaiting(topic, id);
            if token.is_some() {
                self.request_snapshot(id, topic, token);
            }
        }
    }

    /// Connection `id` is closing: it no longer waits for any topic's confirmation or
    /// replay. (Its topics are looked up only when some topic is unconfirmed, which is
    /// rare.)
    fn forget_waiting(&self, id: ConnId) {
        self.recoveries.borrow_mut().forget_conn(id);
        let mut awaiting = self.awaiting.borrow_mut();
        if awaiting.is_empty() {
            return;
        }
        for topic in self.hub.borrow().topics_of(id) {
            awaiting.forget(topic, id);
        }
    }

    /// Sends `json` to connection `id` if it is still `user`'s.
    fn reply_to(&self, to: Publisher, user: &str, json: &str) {
        let id = match to {
            Publisher::Conn(id) => id,
            Publisher::Waiter(ticket) => {
                self.api_waiters.answer(ticket, json);
                return;
            }
        };
        let conns = self.table.borrow();
        if let Some(conn) = conns.get(id.0 as usize)
            && conn.user() == user
        {
            conn.enqueue(&self.ctx, &Rc::new(crate::ws::frame::encode_text(json)));
        }
    }
}

/// A socket in the HTTP handshake, counted against the pending-handshake caps.
#[derive(Debug)]
struct PendingHandshake {
    shard: Rc<Shard>,
    ip: Option<IpAddr>,
    /// The node-wide slot (released on drop).
    slot: Option<BudgetSlot>,
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut pending = self.shard.pending_by_ip.borrow_mut();
            if let Some(n) = pending.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(&ip);
                }
            }
        }
    }
}

/// Runs a shard until it is told to shut down and has drained.
pub(crate) async fn run(parts: ShardParts) {
    let ShardParts {
        id,
        cfg,
        listener,
        api_listener,
        inbox,
        control,
        bus_lanes,
        sequencer,
        started,
        node,
    } = parts;
    let listener = crate::sys::glommio_listener(listener);
    let sequencer = sequencer.map(|(lane, inboxes)| {
        let history = HistorySettings::of(&cfg);
        let window = cfg.idempotency_window.0;
        let webhooks = node.webhooks.clone();
        LocalSequencer::new(id, lane, inboxes, node.stats.clone(), history, window, webhooks)
    });
    let shard = Shard::new(id, cfg, bus_lanes, sequencer.clone(), node);
    // The ring is set up on this thread: it is its only submitter.
    shard.flusher.start_ring(&shard.ctx);
    let accept = glommio::spawn_local(listener::run(shard.clone(), listener, Serves::Everything));
    let accept_api = api_listener.map(|fd| {
        let api = crate::sys::glommio_listener(fd);
        glommio::spawn_local(listener::run(shard.clone(), api, Serves::ApiOnly))
    });
    let fanout = glommio::spawn_local(inbox::run(shard.clone(), inbox));
    let heartbeat = glommio::spawn_local(heartbeat::run(shard.clone()));
    let stats_feed = (id.0 == 0).then(|| glommio::spawn_local(stats_feed::run(shard.clone())));
    let sequencer = sequencer.map(|s| glommio::spawn_local(s.run()));
    info!(shard = %id, cpu = ?crate::sys::current_cpu(), "shard started");
    let _ = started.send(id);
    drop(started);

    // Any message, or the main thread going away, means shut down.
    let _ = control.recv_async().await;
    // From now on `/readyz` answers 503 and upgrades are refused (503): load balancers
    // stop sending new clients while the listener still answers their probes.
    shard.shutting_down.set(true);
    let drain = shard.ctx.cfg.drain_timeout.0;
    let period = shard.ctx.cfg.drain_period.0;
    let open = shard.table.all();
    info!(shard = %id, connections = open.len(), ?period, "shutting down: /readyz answers 503; closing connections with 1012 spread over the drain period");
    let close = Close {
        code: close_code::SERVICE_RESTART,
        reason: "service restart",
        discard_queued: false,
    };
    let started = Instant::now();
    let mut closed = 0;
    let mut at_once = false;
    while closed < open.len() {
        let due =
            if at_once { open.len() } else { closes_due(open.len(), started.elapsed(), period) };
        for conn in &open[closed..due] {
            conn.begin_close(&shard.ctx, close, drain);
        }
        closed = due;
        shard.flush_dirty();
        if closed == open.len() {
            break;
        }
        let tick = (period / open.len() as u32)
            .clamp(Duration::from_millis(5), Duration::from_millis(100));
        use futures_lite::FutureExt;
        // A second signal (or the main thread gone) closes the rest at once.
        at_once = async {
            let _ = control.recv_async().await;
            true
        }
        .or(async {
            glommio::timer::Timer::new(tick).await;
            false
        })
        .await;
        if at_once {
            info!(shard = %id, left = open.len() - closed, "closing the remaining connections at once");
        }
    }
    drop(open);
    drop(accept); // cancels the accept loop and closes this shard's listening socket
    drop(accept_api);
    // The last registration guard to drop opens the gate.
    if !drained_within(&shard, drain + Duration::from_millis(100)).await {
        let left = shard.table.all();
        warn!(shard = %id, connections = left.len(), "drain deadline passed; dropping remaining sockets");
        for conn in &left {
            conn.abort();
        }
        drop(left);
        // The aborted tasks run once more to drop their registrations and sockets.
        drained_within(&shard, Duration::from_millis(500)).await;
    }
    drop(heartbeat);
    drop(stats_feed);
    shard.bus.close();
    drop(sequencer);
    drop(fanout);
    info!(shard = %id, "shard stopped");
}

/// How many of `total` connections must have been sent their Close `elapsed` into a
/// drain spread evenly over `period` (all of them at once when `period` is zero).
fn closes_due(total: usize, elapsed: Duration, period: Duration) -> usize {
    if period.is_zero() || elapsed >= period {
        return total;
    }
    let share = elapsed.as_secs_f64() / period.as_secs_f64();
    ((total as f64 * share).ceil() as usize).min(total)
}

/// Waits until the last registration guard has dropped, at most `limit`; `false` when
/// connections remain.
async fn drained_within(shard: &Shard, limit: Duration) -> bool {
    use futures_lite::FutureExt;
    async {
        shard.table.wait_empty().await;
        true
    }
    .or(async {
        glommio::timer::Timer::new(limit).await;
        false
    })
    .await
}

/// Size in bytes of a connection task's future (paid by every idle connection).
pub(crate) fn session_future_size() -> usize {
    fn size_of_future<F, Fut>(_: F) -> usize
    where
        F: Fn(Rc<Shard>, glommio::net::TcpStream, Serves) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }
    size_of_future(session::run)
}

/// Compile-time checks that per-core state stays on its core: these types hold `Rc`s and
/// `Cell`s and must never become `Send` by accident (a `Send` `Shard` would let a shard's
/// state cross threads without atomics). The check is the `static_assertions`
/// `assert_not_impl_any!` construction: `Send` types would make the call ambiguous.
#[cfg(test)]
mod not_send {
    trait AmbiguousIfSend<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

    const _: fn() = || {
        let _ = <super::Shard as AmbiguousIfSend<_>>::check;
        let _ = <crate::hub::Hub as AmbiguousIfSend<_>>::check;
        let _ = <crate::bus::BusHandle as AmbiguousIfSend<_>>::check;
        let _ = <crate::conn::Conn as AmbiguousIfSend<_>>::check;
        let _ = <super::table::ConnTable as AmbiguousIfSend<_>>::check;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly_over_the_drain_period() {
        let period = Duration::from_secs(10);
        assert_eq!(closes_due(1000, Duration::ZERO, period), 0);
        assert_eq!(closes_due(1000, Duration::from_secs(1), period), 100);
        assert_eq!(closes_due(1000, Duration::from_millis(5_001), period), 501);
        assert_eq!(closes_due(1000, period, period), 1000);
        assert_eq!(closes_due(3, Duration::from_millis(1), period), 1, "the first goes at once");
        assert_eq!(
            closes_due(1000, Duration::ZERO, Duration::ZERO),
            1000,
            "no period: all at once"
        );
    }
}
