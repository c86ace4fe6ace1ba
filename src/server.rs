//! Process topology: limits, listeners, the bus, and one pinned shard per CPU.
//!
//! Runs on: the main thread (or a test's thread). Built in dependency order in one place:
//! 1. check and raise process limits (open files, locked memory) and ignore SIGPIPE;
//! 2. choose the CPUs (the process's affinity mask, which glommio's topology ignores);
//! 3. bind one SO_REUSEPORT listener per shard (the first resolves port 0 for all);
//! 4. create the shard inboxes and one bus lane per shard (each shard sequences the streams
//!    it owns: `bus::embedded`);
//! 5. start one glommio executor per shard, pinned, each owning its listener, its inbox,
//!    its sequencer lane and a sender into every shard's lane and inbox.
//!
//! Shutdown is two-phase inside each shard (`shard::run`): stop accepting and send Close
//! 1001, then drain until `drain_timeout`; [`RunningServer::join`] returns when every shard
//! has stopped.

use std::{net::SocketAddr, os::fd::OwnedFd, sync::Arc};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::{
    admission::{ConnectRate, ConnectionBudget},
    bus,
    config::{Config, CpuChoice, ShardCount},
    error::{Error, Result},
    ids::{NodeId, ShardId},
    shard::{self, ShardParts},
    stats::NodeStats,
    sys,
    xshard::{self, ShardControl},
};

/// File descriptors kept free for everything that is not a client socket (listeners,
/// io_uring rings, eventfds, log files, the Redis connection).
const RESERVED_FDS_BASE: u64 = 64;
/// Extra descriptors per shard (listener, ring, eventfds, timers).
const RESERVED_FDS_PER_SHARD: u64 = 16;
/// glommio refuses to start below this locked-memory limit.
const GLOMMIO_MIN_MEMLOCK: u64 = 512 << 10;

/// How long `start` waits for every shard's executor to run.
const SHARD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A node that is running. Dropping it does not stop it: call [`shutdown`](Self::shutdown)
/// then [`join`](Self::join).
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    /// The API-only listener's address (`api_listen`).
    api_addr: Option<SocketAddr>,
    controls: Vec<flume::Sender<ShardControl>>,
    shards: Vec<ExecutorJoinHandle<()>>,
    /// The Redis bridge thread; it stops when every shard has closed its lane.
    bridge: Option<std::thread::JoinHandle<()>>,
    /// The webhook dispatcher's thread (embedded bus with webhooks).
    webhook_thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<NodeStats>,
    budget: Arc<ConnectionBudget>,
}

/// Ends a node's drain early: see [`RunningServer::drain_handle`].
#[derive(Debug, Clone)]
pub struct DrainHandle {
    controls: Vec<flume::Sender<ShardControl>>,
}

impl DrainHandle {
    /// During a drain: closes the remaining connections at once, with 1012.
    pub fn close_rest_now(&self) {
        for control in &self.controls {
            let _ = control.try_send(ShardControl::Now);
        }
    }
}

impl RunningServer {
    /// The address the node listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the API-only listener (`api_listen`), with its real port.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Node counters.
    pub fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    /// Open WebSocket connections, node-wide.
    pub fn connections(&self) -> usize {
        self.budget.used()
    }

    /// Starts the graceful shutdown of every shard (returns at once).
    pub fn shutdown(&self) {
        for control in &self.controls {
            let _ = control.try_send(ShardControl::Shutdown);
        }
    }

    /// A handle that can end a drain early from another thread (a second SIGTERM).
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle { controls: self.controls.clone() }
    }

    /// Waits until every shard has stopped.
    ///
    /// # Errors
    /// [`Error::ShardPanicked`] when a shard thread panicked.
    pub fn join(self) -> Result<()> {
        let mut result = Ok(());
        for (i, handle) in self.shards.into_iter().enumerate() {
            if handle.join().is_err() && result.is_ok() {
                result = Err(Error::ShardPanicked(i));
            }
        }
        if let Some(bridge) = self.bridge
            && bridge.join().is_err()
            && result.is_ok()
        {
            result = Err(Error::System("the Redis bridge thread panicked".into()));
        }
        if let Some(thread) = self.webhook_thread
            && thread.join().is_err()
            && result.is_ok()
        {
            result = Err(Error::System("the webhook thread panicked".into()));
        }
        result
    }
}

/// Starts a node: with the Redis bridge when `cfg.redis` is set, else the embedded bus.
///
/// # Errors
/// [`Error::System`] when the machine's limits cannot host the shards,
/// [`Error::Bind`] when the address is unavailable, [`Error::ShardStart`] when an
/// executor cannot start.
pub fn start(cfg: Config) -> Result<RunningServer> {
    cfg.validate()?;
    sys::ignore_sigpipe();

    let cpus = sys::allowed_cpus();
    if cpus.is_empty() {
        return Err(Error::System("cannot read the CPU affinity mask".into()));
    }
    let shard_count = match cfg.shards {
        ShardCount::All => cpus.len(),
        ShardCount::Exactly(n) if n <= cpus.len() => n,
        ShardCount::Exactly(n) => {
            return Err(Error::System(format!(
                "shards = {n} but this process may only run on {} CPUs ({cpus:?}); lower --shards",
                cpus.len()
            )));
        }
    };

    let (nofile, _) = sys::raise_nofile_limit()?;
    let reserved = RESERVED_FDS_BASE + RESERVED_FDS_PER_SHARD * shard_count as u64;
    let fd_capacity = nofile.saturating_sub(reserved) as usize;
    if fd_capacity == 0 {
        return Err(Error::System(format!("open-files limit {nofile} is too low (see tuning/)")));
    }
    let max_connections = cfg.max_connections.min(fd_capacity);
    info!(
        open_files_limit = nofile,
        capacity = fd_capacity,
        max_connections,
        "connection capacity (open-files limit minus {reserved} reserved descriptors)"
    );

    let memlock = sys::memlock_limit()?;
    // glommio registers its io_memory three times per executor and refuses to start
    // below 512 KiB of locked memory.
    let needed = GLOMMIO_MIN_MEMLOCK.max(3 * cfg.io_memory.0 as u64 * shard_count as u64);
    if memlock < needed {
        return Err(Error::System(format!(
            "locked-memory limit is {} KiB but {shard_count} shards with io_memory {} need {} KiB; \
             raise `ulimit -l` / LimitMEMLOCK, or lower --io-memory or --shards (see tuning/)",
            memlock >> 10,
            cfg.io_memory,
            needed >> 10
        )));
    }

    let (addr, listeners) = bind_listeners(cfg.listen.0, cfg.backlog, shard_count)?;
    let (api_addr, mut api_listeners) = match cfg.api_listen.0 {
        Some(at) => {
            let (bound, fds) = bind_listeners(at, cfg.backlog, shard_count)?;
            (Some(bound), fds.into_iter().map(Some).collect())
        }
        None => (None, Vec::new()),
    };
    api_listeners.resize_with(shard_count, || None);
    let mut api_listeners = api_listeners.into_iter();
    let (inbox_txs, inbox_rxs) = xshard::shard_inboxes(shard_count, cfg.inbox_capacity);
    let node = match cfg.node_id.0.as_str() {
        "" => NodeId::for_this_process(),
        name => NodeId(name.into()),
    };
    let stats = NodeStats::new(shard_count, node.clone(), cfg.redis.0.is_some());
    let budget = ConnectionBudget::new(max_connections);
    let pending_budget = ConnectionBudget::new(cfg.max_pending_handshakes);
    let jwt = cfg.jwt_keys().map_err(Error::Config)?;
    let verifier = crate::auth::Verifier::for_keys(
        jwt.secret.as_deref(),
        jwt.public_key_pem.as_deref(),
        cfg.default_permissions,
    )
    .map_err(Error::Config)?;
    let api_key: Option<Arc<str>> = cfg.api_key().map_err(Error::Config)?.map(Arc::from);
    let connect_rate = ConnectRate::new(cfg.max_connects_per_ip);
    if verifier.is_none() && !addr.ip().is_loopback() {
        warn!(
            %addr,
            "AUTHENTICATION IS OFF on a non-loopback address: anyone who reaches this port \
             may connect as any user; set jwt_secret or jwt_public_key"
        );
    }

    // The bus: with Redis, the bridge thread (spawned before the shards, so that it gets
    // its own pin and not a shard's mask) and one lane to it; embedded, one sequencer
    // lane per shard (the owner of each stream sequences it).
    let embedded = cfg.redis.0.is_none();
    let hooks = crate::presence::dispatch::settings_of(&cfg, embedded).map_err(Error::Config)?;
    let (webhook_queue, webhook_events) = match &hooks {
        Some(_) => {
            let (queue, events) =
                crate::presence::webhook::WebhookQueue::new(cfg.webhook_queue, stats.clone());
            (Some(queue), Some(events))
        }
        None => (None, None),
    };
    let mut webhook_thread = None;
    let (lane_txs, mut sequencers, bridge) = match &cfg.redis.0 {
        Some(url) => {
            let cpu = match cfg.bridge_cpu {
                CpuChoice::Last => cpus.last().copied(),
                CpuChoice::Cpu(n) => Some(n),
            };
            let settings = bus::redis::BridgeSettings {
                url: url.clone(),
                tls_ca: cfg.redis_tls_ca.0.clone(),
                prefix: cfg.redis_prefix.0.clone(),
                seed_channel: cfg.seed_channel.0.clone(),
                heartbeat_interval: cfg.redis_heartbeat_interval.0,
                heartbeat_timeout: cfg.redis_heartbeat_timeout.0,
                command_timeout: cfg.redis_command_timeout.0,
                command_queue: cfg.redis_command_queue,
                receive_buffer: cfg.redis_receive_buffer,
                max_payload: cfg.outbound_queue_limit.0,
                history: crate::history::memory::HistorySettings::of(&cfg),
                idempotency_window: cfg.idempotency_window.0,
                delivery: cfg.delivery,
                count_users: cfg.max_connections_per_user > 0,
                presence_ttl: cfg.presence_ttl.0,
                webhooks: match (hooks, &webhook_queue, webhook_events) {
                    (Some(settings), Some(queue), Some(events)) => {
                        Some(bus::redis::BridgeWebhooks {
                            settings,
                            queue: queue.clone(),
                            events,
                            vacate_delay: cfg.webhook_vacate_delay.0,
                        })
                    }
                    _ => None,
                },
            };
            let core = cpu.map(|id| core_affinity::CoreId { id });
            let (lane, thread) = bus::redis::spawn(
                settings,
                core,
                cfg.inbox_capacity,
                inbox_txs.clone(),
                stats.clone(),
            )
            .map_err(Error::Config)?;
            info!(redis = %cfg.redis, ?cpu, "Redis bridge thread started");
            (vec![lane], Vec::new(), Some(thread))
        }
        None => {
            if let (Some(settings), Some(events)) = (hooks, webhook_events) {
                let thread =
                    crate::presence::dispatch::spawn_thread(settings, events, stats.clone())
                        .map_err(Error::System)?;
                webhook_thread = Some(thread);
            }
            let (txs, rxs): (Vec<_>, Vec<_>) =
                (0..shard_count).map(|_| bus::command_channel(cfg.inbox_capacity)).unzip();
            (txs, rxs.into_iter().map(Some).collect(), None)
        }
    };

    let mut controls = Vec::with_capacity(shard_count);
    let mut shards = Vec::with_capacity(shard_count);
    // Each shard reports once its executor runs: `spawn` returns before the executor
    // exists, so an executor that fails to start (io_uring setup, locked memory) is only
    // seen here — instead of a listener whose connections nobody ever accepts.
    let (started_tx, started_rx) = flume::unbounded();
    sequencers.resize_with(shard_count, || None);
    let per_shard = listeners.into_iter().zip(inbox_rxs).zip(sequencers);
    for (i, ((listener, inbox), lane)) in per_shard.enumerate() {
        let (control_tx, control_rx) = flume::bounded(1);
        controls.push(control_tx);
        let parts = ShardParts {
            id: ShardId(i as u16),
            cfg: cfg.clone(),
            listener,
            api_listener: api_listeners.next().flatten(),
            inbox,
            control: control_rx,
            bus_lanes: lane_txs.clone(),
            sequencer: lane.map(|lane| (lane, inbox_txs.clone())),
            started: started_tx.clone(),
            node: shard::NodeShared {
                stats: stats.clone(),
                budget: budget.clone(),
                pending_budget: pending_budget.clone(),
                verifier: verifier.clone(),
                api_key: api_key.clone(),
                connect_rate: connect_rate.clone(),
                webhooks: webhook_queue.clone(),
            },
        };
        let started = LocalExecutorBuilder::new(Placement::Fixed(cpus[i]))
            .name(&format!("shard-{i}"))
            .io_memory(cfg.io_memory.0)
            .preempt_timer(shard::PREEMPT_TIMER)
            .ring_depth(shard::RING_DEPTH)
            .spawn(move || shard::run(parts));
        match started {
            Ok(handle) => shards.push(handle),
            Err(e) => {
                drop(lane_txs);
                let partial = RunningServer {
                    addr,
                    api_addr,
                    controls,
                    shards,
                    bridge,
                    webhook_thread,
                    stats,
                    budget,
                };
                partial.shutdown();
                let _ = partial.join();
                return Err(Error::ShardStart { shard: i, message: e.to_string() });
            }
        }
    }
    drop(lane_txs);
    drop(inbox_txs);
    drop(started_tx);
    let mut reported = Vec::with_capacity(shard_count);
    while reported.len() < shard_count {
        // A shard that could not start drops its sender without reporting: once every
        // running shard has reported, the channel is disconnected.
        match started_rx.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(id) => reported.push(id),
            Err(_) => {
                let missing =
                    (0..shard_count).find(|i| !reported.contains(&ShardId(*i as u16))).unwrap_or(0);
                let partial = RunningServer {
                    addr,
                    api_addr,
                    controls,
                    shards,
                    bridge,
                    webhook_thread,
                    stats,
                    budget,
                };
                partial.shutdown();
                let _ = partial.join();
                let message =
                    "its executor did not start (io_uring setup or locked memory; see tuning/)";
                return Err(Error::ShardStart { shard: missing, message: message.into() });
            }
        }
    }
    let bus = if bridge.is_some() { "redis" } else { "embedded" };
    info!(%addr, ?api_addr, shards = shard_count, ?cpus, node = %node, bus, "corecast listening");
    Ok(RunningServer { addr, api_addr, controls, shards, bridge, webhook_thread, stats, budget })
}

/// Binds one SO_REUSEPORT listener per shard on the configured address. The first bind
/// resolves port 0; the others bind the same port so the kernel balances between them.
fn bind_listeners(
    mut addr: SocketAddr,
    backlog: usize,
    shards: usize,
) -> Result<(SocketAddr, Vec<OwnedFd>)> {
    let mut fds = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = (|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.set_cloexec(true)?;
            socket.bind(&addr.into())?;
            socket.listen(backlog as i32)?;
            Ok::<_, std::io::Error>(socket)
        })()
        .map_err(|source| Error::Bind { addr, source })?;
        if addr.port() == 0 {
            let bound = socket.local_addr().ok().and_then(|a| a.as_socket());
            addr = bound.ok_or_else(|| Error::System("cannot read the bound address".into()))?;
        }
        fds.push(OwnedFd::from(socket));
    }
    Ok((addr, fds))
}
