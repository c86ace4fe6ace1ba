//! The Redis bridge: the bus between nodes. One OS thread per node, pinned, running a
//! tokio current-thread runtime with two fred clients (a subscriber and a publisher).
//!
//! Runs on: the bridge thread (spawned by `server::start` before the shards, so that it
//! is pinned to the CPU it was given rather than inheriting a shard's mask). Everything
//! here is `!Send` state on one [`tokio::task::LocalSet`]; the thread talks to the
//! shards only through flume channels: their commands in (one lane, bounded), deliveries
//! and replies out (each shard's bounded inbox).
//!
//! - **Interest.** The bridge keeps which shards want which topic and user
//!   ([`InterestTable`]); the node SUBSCRIBEs to a topic's or user's channel when its
//!   first shard wants it and UNSUBSCRIBEs when the last one stops: one subscription per
//!   node however many local subscribers. Subscription changes are applied in order by one
//!   task, batched (a burst of joins is one SUBSCRIBE). A shard's new topic is confirmed to
//!   it (`ShardMessage::TopicConfirmed`) once Redis confirmed the SUBSCRIBE.
//! - **One order, exactly once.** A publish goes to Redis only; the node's own clients
//!   get it back through their subscription like everyone else's, so every node delivers
//!   every stream in the order Redis delivered it, and nobody gets it twice. Each message
//!   from Redis is framed once ([`wire::delivery_from`]) and the same `Arc` goes to the
//!   shards that want it.
//! - **Redis away.** fred reconnects with exponential backoff, forever; after every
//!   reconnect the bridge subscribes again to every channel of current interest (one
//!   SUBSCRIBE per batch of channels). A frozen Redis or a dropped link raises no error on
//!   a subscribe-only connection, so the bridge publishes a heartbeat to its own channel
//!   and forces a reconnect when it does not come back in time (`readiness`). While the
//!   bridge is not ready (disconnected or heartbeat missing), publishes are delivered on
//!   this node only and the publishing v1 client is told `unavailable`; `/readyz` says
//!   503; v1 clients are told `degraded`, then `restored`.
//! - **History and gap fill** ([`history`]). A publish on a stream with history runs one
//!   Lua script that assigns the event's id, appends it to the stream's Redis Stream and
//!   PUBLISHes it. The bridge tracks, per stream it delivers, the last id delivered
//!   contiguously: an event past a gap is held while the gap is read from the history;
//!   after every reconnect (and `Lagged`) every stream is read from its position. So the
//!   node's clients miss nothing Pub/Sub dropped, and are told `recovered: false` for
//!   what the history no longer has. Client replays (`since`, `lastEventId`, `history`)
//!   are read from the history too — one read per stream for every client asking at the
//!   same time — and answered behind the live events up to the node's position. A read
//!   below what the node delivered means Redis lost writes (a restart from an older
//!   snapshot, a lagging replica promoted): the node abandons the stream's epoch in Redis
//!   and tells its clients; every stored publish also carries the highest id of its
//!   stream the node knows, so that the script never hands it out twice.
//!
//! The parts, one file each. This module starts the thread (`spawn`) and runs the
//! bridge's loop (`run`) over the state its tasks share (`Shared`, which executes the
//! stream core's effects). The fred/tokio shell around it:
//! - `settings`: the bridge's settings and the fred clients built from them;
//! - `receive`: what comes from Redis on the subscriber connection;
//! - `publish`: clients' events to Redis, pipelined by the publisher task;
//! - `subscribe`: interest changes and the subscription task;
//! - `reads`: history reads, streams mode's stream reader, abandoning an epoch;
//! - `control`: cluster commands, blocks, and users' connection counts;
//! - `scripts`: the Lua scripts' SHAs, EVALSHA, NOSCRIPT, pipeline replies, loading them;
//! - `link`: the heartbeat tick carried out (readiness told, forced reconnects, the
//!   heartbeats) and connection errors logged;
//! - [`presence`]: presence in Redis and its webhooks (one task, the shell of
//!   `presence::core`);
//! - [`user_count`]: users' connection counts in Redis.
//!
//! Its decisions, sans I/O: [`streams`] (every stream decision), [`tracker`] (one
//! stream's delivery position, gaps and losses), [`history`] (the history scripts, keys
//! and answer parsers), `readiness` (when the bridge is ready, when it forces a
//! reconnect, when it beats, which connection errors are logged), [`presence::core`]
//! (this node's presence: its counts, what it writes and when, resync, its heartbeat)
//! and `presence::script` (the presence script and its replies), [`subscriptions`]
//! (refused SUBSCRIBEs), [`wire`] (channels and payloads on Redis).

mod control;
pub(crate) mod history;
mod link;
pub(crate) mod presence;
mod publish;
mod readiness;
mod reads;
mod receive;
mod scripts;
mod settings;
pub(crate) mod streams;
mod subscribe;
pub(crate) mod subscriptions;
pub(crate) mod tracker;
pub(crate) mod user_count;
pub(crate) mod wire;

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use fred::{
    interfaces::{ClientLike, EventInterface},
    prelude::Client,
};
use tokio::sync::{
    Notify,
    broadcast::error::{RecvError, TryRecvError},
    mpsc,
};
use tracing::{info, warn};

use super::{BusCommand, BusCommands, ReplayRequest, interest::InterestTable};
pub(crate) use crate::config::DeliveryMode;
use crate::{
    history::{memory::HistorySettings, retention::Retention},
    ids::{Publisher, Route, ShardId},
    protocol::command::CommandError,
    stats::{BridgeStats, NodeStats},
    xshard::{ClusterControl, ShardInboxes, ShardMessage},
};
use control::{count_user, send_control};
use link::{log_error, on_tick};
use publish::{publish, publish_jobs};
use readiness::{ErrorLog, Readiness};
use reads::{StreamBatch, abandon_epoch, on_read, read_jobs, read_streams, retry_pause};
use receive::{deliver_tracked, on_message};
use scripts::load_scripts;
use settings::clients;
pub(crate) use settings::{BridgeSettings, BridgeWebhooks};
use streams::{Effect, ReadJob, StreamsCore};
use subscribe::{SubscriptionOp, apply_subscriptions, interest_op};
use wire::Channels;

/// Most publishes handed to the publisher task and not yet answered by Redis; beyond it
/// the bridge stops taking commands, the lane fills and publishers wait on their shards.
const PUBLISHES_IN_FLIGHT: usize = 8192;
/// Most messages from Redis handled in a row before the bridge looks at shard commands
/// and its heartbeat again.
const RECEIVE_BATCH: usize = 256;
/// Starts the bridge thread, pinned to `cpu` when given. Returns the sending half of its
/// command lane (one clone per shard) and the thread. The Redis clients and the runtime
/// are built here, on the calling thread, so that a configuration they reject stops the
/// node at start with the reason; connecting happens on the bridge thread, in the
/// background (the node serves its own clients meanwhile).
///
/// # Errors
/// A message saying what is wrong (the Redis URL is never part of it).
pub(crate) fn spawn(
    settings: BridgeSettings,
    cpu: Option<core_affinity::CoreId>,
    capacity: usize,
    inboxes: ShardInboxes,
    stats: Arc<NodeStats>,
) -> Result<(flume::Sender<BusCommand>, std::thread::JoinHandle<()>), String> {
    let clients = clients(&settings)
        .map_err(|e| format!("cannot configure the Redis clients: {}", e.details()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the Redis bridge runtime: {e}"))?;
    let (tx, commands) = super::command_channel(capacity);
    let thread = std::thread::Builder::new()
        .name("redis-bridge".into())
        .spawn(move || {
            if let Some(cpu) = cpu
                && !core_affinity::set_for_current(cpu)
            {
                warn!(cpu = cpu.id, "could not pin the Redis bridge thread");
            }
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(settings, clients, commands, inboxes, stats));
        })
        .map_err(|e| format!("cannot spawn the Redis bridge thread: {e}"))?;
    Ok((tx, thread))
}

/// State shared by the bridge's tasks (all on the bridge thread).
struct Shared {
    stats: Arc<NodeStats>,
    inboxes: ShardInboxes,
    shards: u16,
    channels: Channels,
    interest: RefCell<InterestTable>,
    /// Largest payload from Redis delivered.
    max_payload: usize,
    /// Publishes handed to the publisher task and not answered yet.
    in_flight: Cell<usize>,
    /// Notified when `in_flight` drops.
    room: Notify,
    /// Channel prefix (history keys start with it too).
    prefix: String,
    /// What history each stream keeps.
    history: HistorySettings,
    idempotency_window: Duration,
    /// Every stream decision (positions, gap fills, replays, floors): the sans-I/O core
    /// this shell feeds and whose effects it executes ([`Shared::run_effects`]).
    streams: RefCell<StreamsCore>,
    /// An emptied effects buffer, kept for the next [`Shared::run_effects`] (no allocation
    /// per event).
    spare_effects: Cell<Vec<Effect>>,
    /// To the reads task.
    reads: mpsc::UnboundedSender<ReadJob>,
    /// How stored events reach the node.
    delivery: DeliveryMode,
    /// The publisher connection, for the bridge's own writes (abandoning an epoch).
    publisher: Client,
    /// Users' connection counts; `None` without `max_connections_per_user`.
    users: Option<user_count::UserCounts>,
}

impl Shared {
    fn bridge(&self) -> &BridgeStats {
        // `spawn` is only called for nodes whose stats have a bridge part.
        self.stats.bridge.as_ref().expect("a Redis node has bridge stats")
    }

    fn ready(&self) -> bool {
        self.bridge().ready.load(Relaxed)
    }

    /// The channel names of every stream some shard wants, plus the ones always read.
    fn channels_of_interest(&self) -> Vec<String> {
        let interest = self.interest.borrow();
        let mut all = Vec::with_capacity(interest.len() + 2);
        all.push(self.channels.seed().to_owned());
        all.push(self.channels.heartbeat().to_owned());
        all.push(self.channels.control().to_owned());
        all.extend(interest.streams().map(|i| self.channels.of_interest(&i)));
        all
    }

    /// Hands a cluster command to every shard.
    async fn apply_everywhere(&self, control: ClusterControl) {
        self.apply_to_all(ShardMessage::Control(Arc::new(control))).await;
    }

    /// Hands `message` to every shard.
    async fn apply_to_all(&self, message: ShardMessage) {
        let all: Vec<ShardId> = (0..self.shards).map(ShardId).collect();
        self.deliver(&all, message).await;
    }

    /// Hands `message` to each shard in `targets` (`xshard::deliver_to`).
    async fn deliver(&self, targets: &[ShardId], message: ShardMessage) {
        crate::xshard::deliver_to(&self.inboxes, targets, message).await;
    }

    /// The retention of `route`'s stream.
    fn retention(&self, route: &Route) -> Retention {
        self.history.rules.retention_of(route, self.history.default)
    }

    /// Executes what the stream core decided, in order (with awaits between: the core is
    /// not borrowed meanwhile). `known`: a route whose targets `targets` holds already
    /// (the live event's: the hot path looks them up once).
    async fn run_effects(&self, known: Option<&Route>, targets: &mut Vec<ShardId>) {
        let mut effects = self.spare_effects.take();
        self.streams.borrow_mut().swap_effects(&mut effects);
        let mut others = Vec::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Deliver(route, delivery) => {
                    let targets = if known == Some(&route) {
                        &mut *targets
                    } else {
                        self.interest.borrow().targets(&route, self.shards, &mut others);
                        &mut others
                    };
                    if !targets.is_empty() {
                        self.deliver(targets, ShardMessage::Deliver(delivery)).await;
                    }
                }
                Effect::Lost(route) => self.lost(&route, &mut others).await,
                Effect::Read(job) if job.failures == 0 => {
                    let _ = self.reads.send(job);
                }
                Effect::Read(job) => {
                    // Tried again after a pause (Redis may be away), without holding up
                    // the bridge; the pause grows with each failure in a row.
                    let reads = self.reads.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(retry_pause(job.failures)).await;
                        let _ = reads.send(job);
                    });
                }
                Effect::Abandon { route, epoch, found } => abandon_epoch(self, route, epoch, found),
                Effect::Replayed(to, answer) => {
                    let shard = to.shard;
                    self.deliver(&[shard], ShardMessage::Replayed { to, answer }).await;
                }
                Effect::GapFilled(n) => BridgeStats::add(&self.bridge().gaps_filled, n),
                Effect::UnconfirmedDropped(route, n) => {
                    BridgeStats::add(&self.bridge().unconfirmed_dropped, n as u64);
                    warn!(
                        ?route,
                        dropped = n,
                        "dropped live events the history never confirmed (ids made up by another publisher, or writes Redis lost)"
                    );
                }
                Effect::ReplaysGivenUp(route, n) => {
                    BridgeStats::add(&self.bridge().replays_given_up, n as u64);
                    warn!(
                        ?route,
                        waiting = n,
                        "the history stays below this node's delivery position: replays answered recovered:false"
                    );
                }
            }
        }
        self.spare_effects.set(effects);
    }

    /// Tells `route`'s local clients they must resync.
    async fn lost(&self, route: &Route, targets: &mut Vec<ShardId>) {
        BridgeStats::add(&self.bridge().streams_lost, 1);
        warn!(
            ?route,
            "events of this stream were lost (history trimmed, expired or wiped): its clients are told recovered:false"
        );
        self.interest.borrow().targets(route, self.shards, targets);
        self.deliver(targets, ShardMessage::StreamLost(route.clone())).await;
    }

    /// Tells a v1 publisher its event did not reach every node.
    async fn reply_unavailable(&self, to: (ShardId, Publisher, Box<str>), message: String) {
        let (shard, conn, user) = to;
        let json = CommandError { code: "unavailable", message }.to_json().into_boxed_str();
        self.deliver(&[shard], ShardMessage::Reply { to: conn, user, json }).await;
    }
}

/// The bridge's life: until every shard has closed its lane (shutdown).
async fn run(
    mut settings: BridgeSettings,
    (subscriber, publisher, reader): (Client, Client, Client),
    commands: BusCommands,
    inboxes: ShardInboxes,
    stats: Arc<NodeStats>,
) {
    let node = stats.node.clone();
    settings.prefix = settings::deployment_prefix(&settings.prefix, &settings.url);
    let (reads_tx, reads_rx) = mpsc::unbounded_channel();
    let shared = Rc::new(Shared {
        shards: u16::try_from(inboxes.len()).unwrap_or(u16::MAX),
        inboxes,
        channels: Channels::new(&settings.prefix, &node, &settings.seed_channel),
        stats,
        interest: RefCell::default(),
        max_payload: settings.max_payload,
        in_flight: Cell::new(0),
        room: Notify::new(),
        prefix: settings.prefix.clone(),
        history: settings.history.clone(),
        idempotency_window: settings.idempotency_window,
        streams: RefCell::new(StreamsCore::new(settings.history.clone())),
        spare_effects: Cell::default(),
        reads: reads_tx,
        delivery: settings.delivery,
        publisher: publisher.clone(),
        users: settings.count_users.then(|| {
            user_count::UserCounts::new(
                &settings.prefix,
                &node.to_string(),
                settings.heartbeat_timeout * 3,
            )
        }),
    });
    // Taken out of the settings: the dispatcher ends once every queue sender is gone.
    let webhook_parts = settings.webhooks.take();
    let redis_presence = Rc::new(presence::RedisPresence::new(
        &settings.prefix,
        &node.to_string(),
        settings.presence_ttl,
        webhook_parts.as_ref().map(|w| (w.queue.clone(), w.vacate_delay)),
        shared.stats.clone(),
        shared.inboxes.clone(),
    ));
    let (presence_tx, presence_rx) = mpsc::unbounded_channel();
    let presence_task =
        tokio::task::spawn_local(presence::run(redis_presence, publisher.clone(), presence_rx));
    let webhooks = webhook_parts.map(|w| {
        let stats = shared.stats.clone();
        tokio::task::spawn_local(crate::presence::dispatch::run(w.settings, w.events, stats))
    });
    // Receivers first: nothing published after the connection is up is missed.
    let mut messages = subscriber.message_rx();
    let mut sub_reconnects = subscriber.reconnect_rx();
    let mut pub_reconnects = publisher.reconnect_rx();
    let mut sub_errors = subscriber.error_rx();
    let mut pub_errors = publisher.error_rx();
    let mut errors = ErrorLog::default();
    let _sub_task = subscriber.connect();
    let _pub_task = publisher.connect();
    info!(node = %node, prefix = %settings.prefix, "Redis bridge started");

    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let subscriptions = tokio::task::spawn_local(apply_subscriptions(
        shared.clone(),
        subscriber.clone(),
        publisher.clone(),
        ops_rx,
    ));
    // Streams mode: the reader hands what it read to this loop, which delivers it (one
    // task delivers every stream, so no event of a stream can overtake another while a
    // shard's inbox is full). The sender is kept here so the arm never sees a closed
    // channel.
    let (stream_batches_tx, mut stream_batches) = mpsc::unbounded_channel::<StreamBatch>();
    let streams = (settings.delivery == DeliveryMode::Streams).then(|| {
        let _reader_task = reader.connect();
        let (shared, out) = (shared.clone(), stream_batches_tx.clone());
        tokio::task::spawn_local(read_streams(shared, reader.clone(), out))
    });
    let (done_tx, mut reads_done) = mpsc::unbounded_channel();
    let reads = tokio::task::spawn_local(read_jobs(
        publisher.clone(),
        shared.prefix.clone(),
        reads_rx,
        done_tx,
    ));
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let publishes =
        tokio::task::spawn_local(publish_jobs(shared.clone(), publisher.clone(), jobs_rx));

    let mut readiness = Readiness::new(settings.heartbeat_timeout);
    let mut ticker = tokio::time::interval(settings.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut json = String::new();
    let mut targets = Vec::new();
    'bridge: loop {
        tokio::select! {
            biased;
            message = messages.recv() => {
                // Then whatever else is already buffered, before looking at anything else.
                let mut next = Some(message);
                let mut taken = 0;
                while let Some(message) = next.take() {
                    match message {
                        Ok(message) => on_message(&shared, &message, &mut json, &mut targets).await,
                        Err(RecvError::Lagged(n)) => {
                            BridgeStats::add(&shared.bridge().lagged, n);
                            warn!(dropped = n, "the Redis bridge fell behind: fred dropped messages (Lagged); reading every stream's history from its position");
                            shared.streams.borrow_mut().handle_gap_everywhere();
                            shared.run_effects(None, &mut targets).await;
                            // Joins and leaves were dropped too: watchers start over.
                            shared.apply_to_all(ShardMessage::PresenceResync).await;
                        }
                        Err(RecvError::Closed) => break 'bridge,
                    }
                    taken += 1;
                    if taken < RECEIVE_BATCH {
                        next = match messages.try_recv() {
                            Ok(m) => Some(Ok(m)),
                            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                            Err(TryRecvError::Empty | TryRecvError::Closed) => None,
                        };
                    }
                }
                // Anything from Redis (the heartbeat or any other message) proves the
                // subscriber connection alive: under a flood the heartbeat waits behind the
                // backlog, and a forced reconnect would throw the backlog away.
                readiness.heard(Instant::now());
            }
            error = sub_errors.recv() => log_error(error, "subscriber", &mut errors),
            error = pub_errors.recv() => log_error(error, "publisher", &mut errors),
            _ = sub_reconnects.recv() => {
                errors.reconnected();
                BridgeStats::add(&shared.bridge().reconnects, 1);
                info!("Redis subscriber connected; subscribing to every channel of interest");
                let _ = ops_tx.send(SubscriptionOp::ResubscribeAll);
            }
            _ = pub_reconnects.recv() => {
                BridgeStats::add(&shared.bridge().reconnects, 1);
                info!("Redis publisher connected");
                // A Redis that restarted has forgotten the scripts (EVALSHA would fail
                // with NOSCRIPT until they are loaded again).
                let (shared, publisher) = (shared.clone(), publisher.clone());
                tokio::task::spawn_local(async move {
                    load_scripts(&publisher).await;
                    if let Some(users) = &shared.users {
                        users.rewrite(&publisher).await;
                    }
                });
                let _ = presence_tx.send(presence::ToPresence::Reconnected);
            }
            done = reads_done.recv() => {
                let Some(done) = done else { break 'bridge };
                on_read(&shared, done, &mut json, &mut targets).await;
            }
            batch = stream_batches.recv() => {
                let Some((batch, processed)) = batch else { continue };
                for (route, payloads) in batch {
                    shared.interest.borrow().targets(&route, shared.shards, &mut targets);
                    if targets.is_empty() {
                        continue;
                    }
                    for payload in payloads {
                        let delivery = Arc::new(wire::delivery_from(route.clone(), &payload, &mut json));
                        if delivery.id.is_some() {
                            BridgeStats::add(&shared.bridge().messages_in, 1);
                            deliver_tracked(&shared, route.clone(), delivery, &mut targets).await;
                        }
                    }
                }
                let _ = processed.send(());
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                shared.streams.borrow_mut().expire_cache(now);
                let tick = readiness.tick(now, subscriber.is_connected(), publisher.is_connected());
                on_tick(&shared, tick, (&subscriber, &publisher), readiness.timeout()).await;
            }
            command = commands.recv_async(), if shared.in_flight.get() < PUBLISHES_IN_FLIGHT => {
                let Ok(command) = command else { break 'bridge };
                match command {
                    BusCommand::Interest { shard, change } => {
                        let op = interest_op(&shared, shard, change);
                        let _ = ops_tx.send(op);
                    }
                    BusCommand::Publish { event, options, reply_to, published } => {
                        let event = (event, published);
                        publish(&shared, &jobs_tx, event, options, reply_to, &mut targets).await;
                    }
                    BusCommand::Replay(request) => {
                        shared.streams.borrow_mut().handle_replay(*request, Instant::now());
                        shared.run_effects(None, &mut targets).await;
                    }
                    BusCommand::Presence(command) => {
                        let _ = presence_tx.send(presence::ToPresence::Command(command));
                    }
                    BusCommand::CountUser { user, change } => {
                        let (shared, publisher) = (shared.clone(), publisher.clone());
                        tokio::task::spawn_local(async move {
                            count_user(&shared, &publisher, &user, change).await;
                        });
                    }
                    BusCommand::Control { control, reply_to } => {
                        let (shared, publisher) = (shared.clone(), publisher.clone());
                        tokio::task::spawn_local(async move {
                            send_control(&shared, &publisher, control, reply_to).await;
                        });
                    }
                }
            }
            () = shared.room.notified() => {}
        }
    }
    drop(jobs_tx);
    drop(ops_tx);
    drop(presence_tx);
    let _ = publishes.await;
    // Bounded: the last presence writes, and the last webhooks (connections closed by
    // the shutdown) get a moment, not a hold on the node's exit.
    let last = async {
        let _ = presence_task.await;
        if let Some(webhooks) = webhooks {
            let _ = webhooks.await;
        }
    };
    let _ = tokio::time::timeout(settings.command_timeout.max(Duration::from_secs(2)), last).await;
    subscriptions.abort();
    reads.abort();
    if let Some(streams) = streams {
        streams.abort();
        let _ = tokio::time::timeout(Duration::from_millis(200), reader.quit()).await;
    }
    let bye = async {
        let _ = subscriber.quit().await;
        let _ = publisher.quit().await;
    };
    // Bounded: a Redis that is away must not hold the node's shutdown.
    let _ =
        tokio::time::timeout(settings.command_timeout.min(Duration::from_millis(500)), bye).await;
    info!("Redis bridge stopped");
}
