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
//! - [`SubscriptionBook`] (`subs`): every subscription of the shard's connections and
//!   what waits on one — the `hub::Hub` (user and topic indexes), the subscribers waiting
//!   for the bus to confirm their topic, the pending replays, the presence watchers. Its
//!   methods are pure and return [`Effect`]s; it is changed only through
//!   [`Shard::update_subs`], which then carries the effects out in one place
//!   ([`Shard::carry_out`]: interest and presence changes, replay and snapshot requests to
//!   the bus, `subscribed` replies). The fan-out only reads it;
//! - [`BusHandle`]: this shard's end of the bus;
//! - [`flush::Flusher`]: the send ring that writes a flush pass.
//!
//! Tasks of a shard:
//! - `listener::run`: accept loop on this shard's SO_REUSEPORT socket → `session::run`;
//! - `session::run`: one per socket: upgrade → register → serve → close;
//! - `inbox::run`: drains the bus's messages, fans deliveries out to local connections
//!   and acts on the bus's answers (confirmations, replays, losses, presence, replies);
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
mod flush;
mod health;
mod heartbeat;
mod inbox;
mod listener;
mod session;
pub(crate) mod stats_feed;
mod subs;
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

use subs::Effect;
pub(crate) use subs::{Effect as SubscriptionEffect, SubscriptionBook};

use crate::{
    admission::{BudgetSlot, ConnectRate, ConnectionBudget},
    auth::Verifier,
    bus::{BusCommand, BusCommands, BusHandle, ReplayRequest, embedded::LocalSequencer},
    config::Config,
    conn::{Conn, Mode, ShardContext, SubscribeReply, Subscriptions, state::Close},
    history::{Since, memory::HistorySettings},
    ids::{ConnId, NodeId, Route, ShardId},
    presence::{SnapshotTo, webhook::WebhookQueue},
    protocol::reply,
    stats::NodeStats,
    ws::frame::{close_code, encode_text},
    xshard::{Delivery, ReplayPurpose, ReplayTo, ShardControl, ShardInbox, ShardInboxes},
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
    /// Every subscription of this shard's connections and what waits on one: changed
    /// only through [`update_subs`](Shard::update_subs).
    subs: RefCell<SubscriptionBook>,
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
            subs: RefCell::default(),
            bus: BusHandle::new(id, bus, sequencer.map(|s| (id.0 as usize, s))),
            flusher: flush::Flusher::default(),
            pending_by_ip: RefCell::new(HashMap::new()),
            pending_budget,
            budget,
            shutting_down: Cell::new(false),
            api_waiters: Rc::default(),
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
        self.update_subs(|subs, out| subs.subscribe(conn, topic, since, presence, out))
    }

    fn unsubscribe(&self, conn: ConnId, topic: &str) {
        self.update_subs(|subs, out| subs.unsubscribe(conn, topic, out));
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
        let once = Effect::RequestSnapshot { conn, topic: topic.into(), watch: None };
        self.carry_out(vec![once]);
    }
}

impl Shard {
    /// The user of connection `id`, if it is registered.
    fn user_of(&self, id: ConnId) -> Option<Box<str>> {
        self.table.borrow().get(id.0 as usize).map(|c| c.user().into())
    }

    /// `conn` connected with `?lastEventId=`: its broadcasts are held back until the
    /// missed ones are replayed.
    pub(crate) fn recover_broadcasts(&self, conn: ConnId, since: Since) {
        self.update_subs(|subs, out| subs.recover_broadcasts(conn, since, out));
    }

    /// Changes the subscription book with `change`, then carries out what it decided.
    /// The only place the book is borrowed mutably; the borrow ends before anything is
    /// carried out. A caller may still hold the connection table borrowed (shared):
    /// carrying out only reads it.
    fn update_subs<R>(
        &self,
        change: impl FnOnce(&mut SubscriptionBook, &mut Vec<Effect>) -> R,
    ) -> R {
        let mut effects = Vec::new();
        let result = change(&mut self.subs.borrow_mut(), &mut effects);
        self.carry_out(effects);
        result
    }

    /// Does what the subscription book decided, in order: the one place its decisions
    /// reach the bus and the connections. A connection that is no longer registered is
    /// skipped (its user is looked up here, in the table).
    fn carry_out(&self, effects: Vec<Effect>) {
        let shard = self.ctx.id;
        for effect in effects {
            match effect {
                Effect::ChangeInterest(change) => self.bus.change_interest(change),
                Effect::PresenceChange { conn, topic, joined } => {
                    if let Some(conn) = self.table.borrow().get(conn.0 as usize) {
                        self.bus.presence_change(&topic, conn.user(), joined);
                    }
                }
                Effect::RequestReplay { conn, route, since, token, purpose } => {
                    let Some(user) = self.user_of(conn) else { continue };
                    let to = ReplayTo { shard, route: route.clone(), conn, user, token, purpose };
                    self.bus.request_replay(ReplayRequest { route, since, limit: u64::MAX, to });
                }
                Effect::RequestSnapshot { conn, topic, watch } => {
                    let Some(user) = self.user_of(conn) else { continue };
                    self.bus.presence_snapshot(SnapshotTo { shard, topic, conn, user, watch });
                }
                Effect::Subscribed { topic, conns } => {
                    let frame = Rc::new(encode_text(&reply::ack_json("subscribed", &topic)));
                    let table = self.table.borrow();
                    for conn in conns.iter().filter_map(|id| table.get(id.0 as usize)) {
                        conn.enqueue(&self.ctx, &frame);
                    }
                }
            }
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
