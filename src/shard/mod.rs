//! The shard: the per-core root object that owns every connection it accepted.
//!
//! Runs on: one glommio `LocalExecutor`, pinned to one CPU. `Shard` is `!Send`: it lives
//! in an `Rc` shared by this executor's tasks and nowhere else. Its state is plain
//! `RefCell`/`Cell` data; no borrow is ever held across an `.await`.
//!
//! Tasks of a shard:
//! - `listener::run`: accept loop on this shard's SO_REUSEPORT socket → `conn::run`;
//! - `conn::run`: one per socket;
//! - `inbox::run`: drains deliveries from the bus and fans them out to local connections;
//! - `heartbeat::run`: pings, pong deadlines and seed-mode application pings;
//! - [`run`] itself: waits for the shutdown command and drains.
//!
//! Writes are batched per pass: producers (inbox, heartbeat, replies) queue frames and
//! put the connection on the `dirty` list; [`Shard::flush_dirty`] then writes each dirty
//! socket once, with all its queued frames in one `sendmsg`.

mod health;
mod heartbeat;
mod inbox;
mod listener;

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use glommio::timer::Timer;
use slab::Slab;
use tracing::{info, warn};

use crate::{
    bus::Bus,
    config::Config,
    conn::{Conn, reader::InboundLimits},
    frame::{self, FrameDecoder, SharedFrame, close_code},
    hub::{ConnId, Hub},
    sys,
    xshard::{ConnectionBudget, NodeStats, ShardControl, ShardId, ShardInbox, ShardStats},
};

/// Size of the shard's read scratch buffer, shared by all its connections: one read
/// never returns more than this. 64 KiB lets a max-size message arrive in one read.
const SCRATCH_BYTES: usize = 64 << 10;

/// simd-json's reusable parse buffers (a newtype only to give it `Debug`).
pub struct JsonBuffers(pub simd_json::Buffers);

impl std::fmt::Debug for JsonBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonBuffers")
    }
}

/// Everything a shard thread is started with (all `Send`).
#[derive(Debug)]
pub struct ShardParts {
    /// This shard's index.
    pub id: ShardId,
    /// How many shards the node has.
    pub shard_count: usize,
    /// Node configuration.
    pub cfg: Config,
    /// The bound, listening SO_REUSEPORT socket for this shard.
    pub listener: OwnedFd,
    /// Deliveries from the bus.
    pub inbox: ShardInbox,
    /// Shutdown command from the main thread.
    pub control: flume::Receiver<ShardControl>,
    /// The bus, for events published by this shard's clients.
    pub bus: Arc<dyn Bus>,
    /// Node counters.
    pub stats: Arc<NodeStats>,
    /// Node-wide connection count.
    pub budget: Arc<ConnectionBudget>,
    /// Node-wide count of sockets in the HTTP handshake.
    pub pending_budget: Arc<ConnectionBudget>,
}

/// How long a shard's tasks run before the executor polls for I/O again. The inbox
/// task's flush pass yields at this rate, so a publisher's message read mid-pass joins
/// the pass (glommio's default, 100 ms, would make it wait for the next one).
pub const PREEMPT_TIMER: Duration = Duration::from_millis(2);

/// Entries of each of the shard executor's io_uring rings (glommio's default is 128).
/// Every idle connection keeps a readiness poll in the main ring, and glommio cancels
/// and re-arms a timer there on every turn of its loop; the kernel finds the request to
/// cancel by walking one bucket of a hash table whose size grows with the ring (up to
/// 256 buckets). With 128 entries, 10,000 sockets meant ~200 µs per cancel (measured:
/// 1.7% of the core at 20 k deliveries/s); with 4,096, the table has its full size.
/// Costs about 1 MiB of kernel memory per shard.
pub const RING_DEPTH: usize = 4096;

/// Per-core state. See the module docs.
#[derive(Debug)]
pub struct Shard {
    /// This shard's index.
    pub id: ShardId,
    /// How many shards the node has.
    pub shard_count: usize,
    /// Node configuration (a copy).
    pub cfg: Config,
    /// Every registered connection, by id.
    pub conns: RefCell<Slab<Rc<Conn>>>,
    /// User and topic indexes.
    pub hub: RefCell<Hub>,
    /// Connections with queued frames that the next [`flush_dirty`](Self::flush_dirty) writes.
    pub dirty: RefCell<VecDeque<Rc<Conn>>>,
    /// The io_uring that carries a flush pass's sends in batches (`None`: one `sendmsg`
    /// per socket, by configuration or because io_uring could not be set up).
    send_ring: RefCell<Option<sys::SendRing>>,
    /// Where a flush pass coalesces each socket's small frames into one buffer.
    send_staging: RefCell<Vec<u8>>,
    /// Read buffer shared by every connection of the shard (borrowed only inside a poll).
    pub scratch: RefCell<Box<[u8]>>,
    /// simd-json's parse buffers, reused for every v1 command.
    pub json_buffers: RefCell<JsonBuffers>,
    /// Client frame decoder with the configured limit.
    pub decoder: FrameDecoder,
    /// Message reassembly limits.
    pub inbound_limits: InboundLimits,
    /// Sockets of this shard still in the HTTP handshake, per source IP.
    pending_by_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Node-wide count of sockets in the HTTP handshake.
    pending_budget: Arc<ConnectionBudget>,
    /// Where this shard's clients publish.
    pub bus: Arc<dyn Bus>,
    /// Node counters (this shard writes its own slot).
    node_stats: Arc<NodeStats>,
    /// Node-wide connection count.
    pub budget: Arc<ConnectionBudget>,
    /// The WebSocket Ping frame, encoded once per shard.
    pub ping_frame: Rc<SharedFrame>,
    /// The seed-mode `{"type":"ping"}` text frame, encoded once per shard.
    pub app_ping_frame: Rc<SharedFrame>,
    /// Set once shutdown has begun: no new upgrades.
    pub shutting_down: Cell<bool>,
    /// When the shard started: the origin of coarse per-connection clocks.
    pub epoch: Instant,
}

impl Shard {
    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.node_stats.shards[self.id.0 as usize]
    }

    /// Admits a socket into the HTTP handshake, within the per-IP (this shard) and node-wide
    /// caps. The returned guard releases both when the handshake ends, however it ends.
    pub fn try_begin_handshake(
        self: &Rc<Self>,
        peer: Option<SocketAddr>,
    ) -> Option<PendingHandshake> {
        let ip = peer.map(|p| p.ip());
        if let Some(ip) = ip {
            let mut pending = self.pending_by_ip.borrow_mut();
            let n = pending.entry(ip).or_insert(0);
            if *n >= self.cfg.max_pending_handshakes_per_ip {
                return None;
            }
            *n += 1;
        }
        let mut guard = PendingHandshake { shard: self.clone(), ip, counted: false };
        if !self.pending_budget.try_acquire() {
            return None; // the guard gives the per-IP slot back
        }
        guard.counted = true;
        Some(guard)
    }

    /// Adds a connection to the table and the user index.
    pub fn register(&self, conn: &Rc<Conn>) {
        if let Some(ring) = self.send_ring.borrow_mut().as_mut() {
            ring.register_socket(conn.fd);
        }
        let id = ConnId(self.conns.borrow_mut().insert(conn.clone()) as u32);
        conn.id.set(id);
        self.hub.borrow_mut().add_user_conn(&conn.user, id);
        let stats = self.stats();
        ShardStats::add(&stats.connections, 1);
        ShardStats::add(&stats.upgrades, 1);
    }

    /// Removes a connection from every index and the table.
    pub fn unregister(&self, conn: &Rc<Conn>) {
        let id = conn.id.get();
        {
            let mut hub = self.hub.borrow_mut();
            hub.remove_user_conn(&conn.user, id);
            for topic in conn.topics.borrow_mut().drain(..) {
                hub.unsubscribe(&topic, id);
            }
        }
        self.conns.borrow_mut().try_remove(id.0 as usize);
        // Before the socket closes: the ring's file table holds a reference to it.
        if let Some(ring) = self.send_ring.borrow_mut().as_mut() {
            ring.unregister_socket(conn.fd);
        }
        self.stats().connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes every dirty connection once (all its queued frames in one send).
    pub fn flush_dirty(&self) {
        while self.flush_some(usize::MAX) {}
    }

    /// Writes the first `max` connections of the dirty list (all queued frames of each in
    /// one send): through the shard's io_uring, [`send_batch`](Config::send_batch)
    /// sockets per `io_uring_enter`, or with one `sendmsg` each. Returns whether
    /// connections are still waiting.
    pub fn flush_some(&self, max: usize) -> bool {
        let slice: Vec<Rc<Conn>> = {
            let mut list = self.dirty.borrow_mut();
            let n = max.min(list.len());
            list.drain(..n).collect()
        };
        let mut ring = self.send_ring.borrow_mut();
        if let Some(r) = ring.as_mut()
            && let Err(e) =
                flush_batched(r, &mut self.send_staging.borrow_mut(), &slice, self.stats())
        {
            // Entries a failed ring still holds could point at released frames: the ring
            // is never submitted to again.
            warn!(shard = %self.id, cause = %e, "io_uring send batch failed; using sendmsg from now on");
            *ring = None;
        }
        drop(ring);
        for conn in &slice {
            if conn.dirty.get() {
                conn.flush_now();
            }
        }
        let mut list = self.dirty.borrow_mut();
        if list.is_empty() && list.capacity() > 1 << 16 {
            // A one-off burst must not pin a large list for the shard's lifetime.
            *list = VecDeque::new();
        }
        !list.is_empty()
    }

    /// The `/healthz` body: node-wide counters.
    pub fn health_json(&self) -> String {
        health::Health::read(self.id, self.shutting_down.get(), &self.node_stats, &self.budget)
            .to_json()
    }
}

/// Largest queue that [`flush_batched`] copies into one contiguous buffer: a few small
/// frames are cheaper to copy once and hand the kernel as one `send` than as a
/// `sendmsg` with an iovec per frame (the kernel copies the bytes either way).
const COALESCE_MAX_BYTES: usize = 16 << 10;

/// Writes the dirty connections' queues through `ring` in batches and records what each
/// send wrote; [`Conn::flush_now`] then finishes each one's job. Connections the batch
/// skips (their task waits for the socket) stay marked dirty.
///
/// A queue of several frames, up to [`COALESCE_MAX_BYTES`], is copied into `staging` so
/// that every socket gets a single-buffer send, as uWebSockets' cork buffer does.
fn flush_batched(
    ring: &mut sys::SendRing,
    staging: &mut Vec<u8>,
    dirty: &[Rc<Conn>],
    stats: &ShardStats,
) -> std::io::Result<()> {
    let mut results = Vec::new();
    for chunk in dirty.chunks(ring.capacity()) {
        // A connection can be on the list twice (flushed by its task, then dirtied
        // again): clearing `dirty` as it is picked keeps it to one send per pass.
        let ready: Vec<&Rc<Conn>> =
            chunk.iter().filter(|c| c.batch_writable()).inspect(|c| c.dirty.set(false)).collect();
        if ready.is_empty() {
            continue;
        }
        let queues: Vec<_> = ready.iter().map(|c| c.out.borrow()).collect();
        // First every copy (the staging buffer must not move once slices point into it).
        staging.clear();
        let staged: Vec<Option<std::ops::Range<usize>>> = queues
            .iter()
            .map(|q| {
                (q.frame_count() > 1 && q.bytes() <= COALESCE_MAX_BYTES).then(|| {
                    let start = staging.len();
                    q.copy_into(staging);
                    start..staging.len()
                })
            })
            .collect();
        let mut slices = Vec::with_capacity(queues.len());
        let mut spans = Vec::with_capacity(queues.len());
        for (q, staged) in queues.iter().zip(&staged) {
            let start = slices.len();
            match staged {
                Some(range) => slices.push(std::io::IoSlice::new(&staging[range.clone()])),
                None => q.extend_iovecs(&mut slices),
            }
            spans.push(start..slices.len());
        }
        let jobs: Vec<sys::SendJob<'_>> =
            ready.iter().zip(&spans).map(|(c, span)| (c.fd, &slices[span.clone()])).collect();
        let outcome = ring.send_all(&jobs, &mut results);
        ShardStats::add(&stats.batched_sends, jobs.len() as u64);
        // A chunk is at most the ring's capacity: one `io_uring_enter`.
        ShardStats::add(&stats.send_batches, 1);
        drop(jobs);
        drop(slices);
        drop(queues);
        for (conn, result) in ready.iter().zip(&results) {
            if let Ok(written) = result {
                conn.out.borrow_mut().advance(*written);
            }
        }
        // What the batch did not finish: a closing connection whose queue is now empty,
        // a short write, `EAGAIN` or an error; `flush_now` handles each (a syscall only
        // where bytes remain).
        for conn in &ready {
            conn.flush_now();
        }
        outcome?;
    }
    // A burst of large queues must not pin a large buffer for the shard's lifetime.
    if staging.capacity() > 4 << 20 {
        *staging = Vec::new();
    }
    Ok(())
}

impl Shard {
    /// Builds the per-core state. No I/O: sockets and tasks are attached by [`run`].
    fn new(
        id: ShardId,
        shard_count: usize,
        cfg: Config,
        bus: Arc<dyn Bus>,
        stats: Arc<NodeStats>,
        budget: Arc<ConnectionBudget>,
        pending_budget: Arc<ConnectionBudget>,
    ) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            shard_count,
            decoder: FrameDecoder { max_frame_payload: cfg.max_message_size.0 },
            inbound_limits: InboundLimits {
                max_message: cfg.max_message_size.0,
                max_fragments: cfg.max_fragments,
            },
            pending_by_ip: RefCell::new(HashMap::new()),
            pending_budget,
            conns: RefCell::new(Slab::new()),
            hub: RefCell::new(Hub::new()),
            dirty: RefCell::new(VecDeque::new()),
            send_ring: RefCell::new(None),
            send_staging: RefCell::new(Vec::new()),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            json_buffers: RefCell::new(JsonBuffers(simd_json::Buffers::new(SCRATCH_BYTES))),
            bus,
            node_stats: stats,
            budget,
            ping_frame: Rc::new(frame::encode_control(
                tungstenite::protocol::frame::coding::Control::Ping,
                b"",
            )),
            app_ping_frame: Rc::new(frame::encode_text(r#"{"type":"ping"}"#)),
            shutting_down: Cell::new(false),
            epoch: Instant::now(),
            cfg,
        })
    }

    /// A shard with no executor, no listener and no bus peers, for benchmarks and tests of
    /// the fan-out path without sockets: connections are added with
    /// [`Conn::detached`](crate::conn::Conn::detached) and never flushed.
    pub fn detached(cfg: Config) -> Rc<Shard> {
        let bus: Arc<dyn Bus> = Arc::new(crate::bus::embedded::EmbeddedBus::new(Arc::from([])));
        let budget = ConnectionBudget::new(usize::MAX);
        Shard::new(ShardId(0), 1, cfg, bus, NodeStats::new(1), budget.clone(), budget)
    }

    /// Queues one delivery on every local connection it is for (no write); returns how many
    /// connections took it. The inbox task calls this, then [`flush_dirty`](Self::flush_dirty).
    pub fn fan_out(&self, delivery: &crate::xshard::Delivery) -> u64 {
        inbox::fan_out(self, delivery)
    }

    /// Forgets every queued frame and the dirty list (benchmarks of a detached shard).
    pub fn discard_queued(&self) {
        let drained: Vec<Rc<Conn>> = self.dirty.borrow_mut().drain(..).collect();
        for conn in drained {
            conn.dirty.set(false);
            conn.out.borrow_mut().drop_unstarted();
        }
    }
}

/// A socket in the HTTP handshake, counted against the pending-handshake caps.
#[derive(Debug)]
pub struct PendingHandshake {
    shard: Rc<Shard>,
    ip: Option<IpAddr>,
    /// Holds a slot of the node-wide budget.
    counted: bool,
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
        if self.counted {
            self.shard.pending_budget.release();
        }
    }
}

/// Runs a shard until it is told to shut down and has drained.
pub async fn run(parts: ShardParts) {
    let ShardParts {
        id,
        shard_count,
        cfg,
        listener,
        inbox,
        control,
        bus,
        stats,
        budget,
        pending_budget,
    } = parts;
    let listener = sys::glommio_listener(listener);
    let shard = Shard::new(id, shard_count, cfg, bus, stats, budget, pending_budget);
    // The ring is set up on this thread: it is its only submitter.
    if shard.cfg.send_batch > 0 {
        // Every fd below the open-files limit gets a registered-file slot.
        match sys::SendRing::new(shard.cfg.send_batch as u32, u32::MAX) {
            Ok(ring) => *shard.send_ring.borrow_mut() = Some(ring),
            Err(e) => {
                warn!(shard = %id, cause = %e, "io_uring unavailable; one sendmsg per socket")
            }
        }
    }
    let accept = glommio::spawn_local(listener::run(shard.clone(), listener));
    let fanout = glommio::spawn_local(inbox::run(shard.clone(), inbox));
    let heartbeat = glommio::spawn_local(heartbeat::run(shard.clone()));
    info!(shard = %id, cpu = ?sys::current_cpu(), "shard started");

    // Any message, or the main thread going away, means shut down.
    let _ = control.recv_async().await;
    shard.shutting_down.set(true);
    drop(accept); // cancels the accept loop and closes this shard's listening socket
    let drain = shard.cfg.drain_timeout.0;
    let open: Vec<Rc<Conn>> = shard.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
    info!(shard = %id, connections = open.len(), "shutting down: closing connections with 1001");
    for conn in &open {
        conn.begin_close_within(&shard, close_code::GOING_AWAY, "server shutting down", drain);
    }
    drop(open);
    shard.flush_dirty();
    let give_up = Instant::now() + drain + Duration::from_millis(100);
    while !shard.conns.borrow().is_empty() && Instant::now() < give_up {
        Timer::new(Duration::from_millis(10)).await;
    }
    let left: Vec<Rc<Conn>> = shard.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
    if !left.is_empty() {
        warn!(shard = %id, connections = left.len(), "drain deadline passed; dropping remaining sockets");
        for conn in &left {
            conn.abort();
        }
        drop(left);
        // Let the aborted tasks run once so they unregister and close their sockets.
        let until = Instant::now() + Duration::from_millis(500);
        while !shard.conns.borrow().is_empty() && Instant::now() < until {
            Timer::new(Duration::from_millis(5)).await;
        }
    }
    drop(heartbeat);
    drop(fanout);
    info!(shard = %id, "shard stopped");
}
