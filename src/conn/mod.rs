//! One client connection: its state ([`Conn`]) and the socket work of its task
//! ([`io::next_step`]).
//!
//! Runs on: the shard that accepted the socket; everything here is `!Send`. Connection
//! code sees its shard only through [`ShardContext`] (read-only, plus scratch space and
//! the dirty list) and the [`Subscriptions`] it is handed; the lifecycle (upgrade →
//! register → serve → close) is driven by the shard (`shard::session`).
//!
//! A `Conn` is the socket-facing shell around the sans-I/O [`state::ConnState`]: the fd,
//! the task's waker, the flags the shard's flush pass uses, and the inbound reassembly.
//! Who touches a `Conn` besides its task: the shard's inbox task and heartbeat task queue
//! frames into it and, when the socket is full or the connection must close, wake the
//! task through [`Conn::wake`].

pub(crate) mod auth;
pub(crate) mod context;
pub(crate) mod dispatch;
pub(crate) mod handshake;
pub(crate) mod io;
pub(crate) mod out_queue;
pub(crate) mod rate;
pub(crate) mod state;
pub(crate) mod v1;

use std::{
    cell::{Cell, Ref, RefCell},
    os::fd::RawFd,
    rc::Rc,
    task::{Context, Waker},
    time::{Duration, Instant},
};

use tracing::{debug, trace};

pub(crate) use context::ShardContext;

use crate::{
    event::{Event, PublishOptions},
    history::Since,
    ids::ConnId,
    stats::ShardStats,
    ws::{
        frame::{SharedFrame, close_code, encode_text},
        inbound::Inbound,
    },
};
use auth::{Action, ConnAuth, ExpiryStep};
use state::{Close, ConnState, Enqueued, Phase};

/// When a subscribe's `subscribed` reply goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeReply {
    /// Now: the topic's events already reach this shard.
    Now,
    /// Once the bus confirms the topic for this shard (the shard sends it then).
    WhenConfirmed,
    /// Refused: the connection is at its topic limit.
    TooManyTopics,
}

/// What connection code may do to the shard's subscription index (the shard implements
/// it: the hub, plus interest changes for the bus).
pub trait Subscriptions {
    /// Subscribes `conn` to `topic`; with `since`, the missed events (or the last one,
    /// for `latest`) are replayed before live ones.
    /// With `presence`, the connection also gets the topic's members after `subscribed`,
    /// then its joins and leaves.
    fn subscribe(
        &self,
        conn: ConnId,
        topic: &str,
        since: Option<Since>,
        presence: bool,
    ) -> SubscribeReply;
    /// Unsubscribes `conn` from `topic` (nothing when it was not subscribed).
    fn unsubscribe(&self, conn: ConnId, topic: &str);
    /// Sends `conn` one page of `topic`'s history (the answer comes later).
    fn history(&self, conn: ConnId, topic: &str, since: Since, limit: u64);
    /// Sends `conn` the members of `topic` once (the answer comes later).
    fn presence(&self, conn: ConnId, topic: &str);
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The seed protocol (no subprotocol): text in, `{"sender","text"}` out.
    Seed,
    /// `corecast.v1`: JSON commands.
    V1,
    /// The conformance echo endpoint (`--echo-path`): every message echoed, nothing else.
    Echo,
}

/// The connection task's waker (a `Cell` so that waking needs no borrow).
#[derive(Default)]
struct WakerSlot(Cell<Option<Waker>>);

impl std::fmt::Debug for WakerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakerSlot")
    }
}

/// A connection's in-flight frame and message reassembly: a `Cell`, because it is only
/// ever taken out and put back, never borrowed (8 bytes where a `RefCell` takes 16).
#[derive(Default)]
struct InboundSlot(Cell<Option<Box<Inbound>>>);

impl InboundSlot {
    fn take(&self) -> Option<Box<Inbound>> {
        self.0.take()
    }

    fn set(&self, inbound: Option<Box<Inbound>>) {
        self.0.set(inbound);
    }
}

impl std::fmt::Debug for InboundSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundSlot")
    }
}

/// One upgraded WebSocket connection, owned by its shard's table. `repr(C)`: the fields
/// that the fan-out touches for every frame (the state's queue and phase, the dirty flag)
/// come first, so queueing a frame touches as few cache lines as possible.
#[derive(Debug)]
#[repr(C)]
pub struct Conn {
    /// The state machine: close handshake, outbound queue, heartbeat deadlines.
    state: RefCell<ConnState>,
    /// On the shard's dirty list (has frames that the next flush pass must write).
    dirty: Cell<bool>,
    /// The socket was full: the task waits for writability and flushes itself.
    write_blocked: Cell<bool>,
    /// The protocol it speaks.
    mode: Mode,
    /// Key in the shard's table (set once, at registration).
    id: Cell<ConnId>,
    /// The socket's fd, for the shard's batched writes. Valid while registered: the
    /// session task drops the registration guard before it closes the socket.
    fd: RawFd,
    /// The user id from `/ws/{user_id}`.
    user: Box<str>,
    /// The connection task's waker; woken when the task has something to do.
    waker: WakerSlot,
    /// Partial frame and message reassembly (`None` while idle: no memory).
    inbound: InboundSlot,
    /// Events decoded from the client, waiting for the bus (published by the task, which
    /// may wait for room: that pauses this client's reads, nobody else's).
    pending_events: RefCell<Vec<(Event, PublishOptions)>>,
    /// What the connection may do, until when, and how fast it may send; `None` when
    /// nothing is checked (authentication off, default permissions open, no rate limit):
    /// no memory, no check. One pointer for both keeps an idle `Conn` in its allocator
    /// size class.
    rules: Option<Box<ConnRules>>,
}

/// Size of a connection's boxed rules (with authentication or a rate limit on), before
/// the heap parts of its permissions (one boxed string per pattern).
pub(crate) fn rules_size() -> usize {
    std::mem::size_of::<ConnRules>()
}

/// A connection's rules, boxed together (see [`Conn`]'s `rules`).
#[derive(Debug)]
struct ConnRules {
    /// Expiry and permissions (`None`: everything allowed, nothing expires).
    auth: Option<RefCell<ConnAuth>>,
    /// The inbound message rate limit's bucket (`None`: no limit).
    bucket: Option<RefCell<rate::TokenBucket>>,
}

impl Conn {
    /// A connection on socket `fd` (−1 for a connection with no socket, in benchmarks),
    /// under the rules `auth` (from [`ShardContext::admit`]).
    pub(crate) fn new(
        fd: RawFd,
        user: String,
        mode: Mode,
        auth: Option<Box<ConnAuth>>,
        ctx: &ShardContext,
        now: Instant,
    ) -> Conn {
        Conn {
            id: Cell::new(ConnId(u32::MAX)),
            fd,
            user: user.into_boxed_str(),
            mode,
            state: RefCell::new(ConnState::new(now, &ctx.timing, mode == Mode::Seed)),
            dirty: Cell::new(false),
            write_blocked: Cell::new(false),
            waker: WakerSlot::default(),
            inbound: InboundSlot::default(),
            pending_events: RefCell::default(),
            rules: {
                let auth = auth.map(|a| RefCell::new(*a));
                let bucket = ctx
                    .rate_limit
                    .map(|limit| RefCell::new(rate::TokenBucket::new(&limit, ctx.now_ms())));
                (auth.is_some() || bucket.is_some()).then(|| Box::new(ConnRules { auth, bucket }))
            },
        }
    }

    /// Key in the shard's table.
    pub fn id(&self) -> ConnId {
        self.id.get()
    }

    /// Set by the shard's table when it registers the connection.
    pub fn set_id(&self, id: ConnId) {
        self.id.set(id);
    }

    /// The socket's fd.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The protocol.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The state machine, read-only (the flush pass reads queues through it).
    pub fn state(&self) -> Ref<'_, ConnState> {
        self.state.borrow()
    }

    /// The close-handshake phase.
    pub fn phase(&self) -> Phase {
        self.state.borrow().phase()
    }

    /// Wakes the connection's task.
    pub fn wake(&self) {
        if let Some(w) = self.waker.0.take() {
            w.wake();
        }
    }

    fn register_waker(&self, cx: &Context<'_>) {
        match self.waker.0.take() {
            Some(w) if w.will_wake(cx.waker()) => self.waker.0.set(Some(w)),
            _ => self.waker.0.set(Some(cx.waker().clone())),
        }
    }

    /// Queues the `101` response, ahead of everything.
    pub fn push_handshake_response(&self, response: Rc<SharedFrame>) {
        self.state.borrow_mut().push_first(response);
    }

    /// Queues `frame` for this connection. Returns `false` when it was not queued
    /// (closing, or the client just became a slow consumer and is being cut off).
    pub fn enqueue(self: &Rc<Self>, ctx: &ShardContext, frame: &Rc<SharedFrame>) -> bool {
        let outcome = self.state.borrow_mut().enqueue(frame, Instant::now, &ctx.timing);
        match outcome {
            Enqueued::Queued => {
                self.mark_dirty(ctx);
                true
            }
            Enqueued::Closing => false,
            Enqueued::CutOff => {
                ShardStats::add(&ctx.stats().slow_consumer_closes, 1);
                debug!(shard = %ctx.id, conn = self.id().0, user = %self.user, "slow consumer cut off");
                self.close_started(ctx);
                false
            }
        }
    }

    /// A close was just queued: the flush pass writes it, and the task watches the close
    /// deadline.
    fn close_started(self: &Rc<Self>, ctx: &ShardContext) {
        self.mark_dirty(ctx);
        self.wake();
    }

    fn mark_dirty(self: &Rc<Self>, ctx: &ShardContext) {
        if !self.dirty.replace(true) {
            ctx.dirty.borrow_mut().push_back(self.clone());
        }
    }

    /// Starts a server-side close (the only way): see [`Close`]. The client has `grace`
    /// to read the Close and answer. Nothing happens when a close is already under way.
    pub fn begin_close(self: &Rc<Self>, ctx: &ShardContext, close: Close<'_>, grace: Duration) {
        if self.state.borrow_mut().begin_close(close, Instant::now(), grace) {
            self.close_started(ctx);
        }
    }

    /// Closes the socket without a close handshake (used when the peer is gone or a
    /// deadline has passed).
    pub fn abort(&self) {
        self.state.borrow_mut().abort();
        self.wake();
    }

    /// Runs the heartbeat rules at `now`: queues a due Ping or app ping, or starts the
    /// close of a peer whose Pong is late. Returns whether it timed out.
    pub fn handle_heartbeat(self: &Rc<Self>, ctx: &ShardContext, now: Instant) -> bool {
        let due = self.state.borrow_mut().poll_heartbeat(now, &ctx.timing);
        if due.timed_out {
            self.close_started(ctx);
        }
        if due.ping {
            self.enqueue(ctx, &ctx.ping_frame);
        }
        if due.app_ping {
            self.enqueue(ctx, &ctx.app_ping_frame);
        }
        due.timed_out
    }

    /// Takes one inbound message from the rate limit (always passes when it is off).
    pub(crate) fn take_message(&self, ctx: &ShardContext) -> rate::Verdict {
        let bucket = self.rules.as_ref().and_then(|r| r.bucket.as_ref());
        match (bucket, &ctx.rate_limit) {
            (Some(bucket), Some(limit)) => bucket.borrow_mut().take(limit, ctx.now_ms()),
            _ => rate::Verdict::Pass,
        }
    }

    /// Whether the connection may do `action` (always, when it has no rules).
    pub(crate) fn permits(&self, action: Action<'_>) -> bool {
        self.auth().is_none_or(|a| a.borrow().permits(action))
    }

    /// The connection's rules, for `refresh` and subscription tokens (`None` when it has
    /// none: authentication off, default permissions open).
    pub(crate) fn auth(&self) -> Option<&RefCell<ConnAuth>> {
        self.rules.as_ref().and_then(|r| r.auth.as_ref())
    }

    /// Runs the token expiry rules at `now_ms` (Unix milliseconds): warns a v1 client
    /// once, or starts the 1008 close. Returns whether it closed.
    pub(crate) fn handle_token_expiry(
        self: &Rc<Self>,
        ctx: &ShardContext,
        now_ms: u64,
        grace_ms: u64,
    ) -> bool {
        let Some(auth) = self.auth() else { return false };
        let step = auth.borrow_mut().poll_expiry(now_ms, grace_ms, self.mode == Mode::V1);
        match step {
            ExpiryStep::Nothing => false,
            ExpiryStep::Warn => {
                self.enqueue(ctx, &Rc::new(encode_text(r#"{"type":"token_expired"}"#)));
                false
            }
            ExpiryStep::Close => {
                let close = Close {
                    code: close_code::POLICY_VIOLATION,
                    reason: "token expired",
                    discard_queued: false,
                };
                let closing = self.phase() == Phase::Open;
                self.begin_close(ctx, close, ctx.timing.close_grace);
                closing
            }
        }
    }

    /// The topics whose subscription token expired by `now_ms` (Unix ms): the caller
    /// ends those subscriptions.
    pub(crate) fn take_expired_grants(&self, now_ms: u64) -> Vec<Box<str>> {
        self.auth().map(|a| a.borrow_mut().take_expired_grants(now_ms)).unwrap_or_default()
    }

    /// Events decoded since the last call, in order.
    pub fn take_events(&self) -> Vec<(Event, PublishOptions)> {
        std::mem::take(&mut *self.pending_events.borrow_mut())
    }

    /// Whether events wait for the bus.
    pub fn has_events(&self) -> bool {
        !self.pending_events.borrow().is_empty()
    }

    /// Whether a flush pass may write this connection's queue now (it is dirty, has
    /// bytes, and its task is not itself waiting for the socket).
    pub fn batch_writable(&self) -> bool {
        let state = self.state.borrow();
        self.dirty.get()
            && !self.write_blocked.get()
            && state.phase() != Phase::Abort
            && !state.out().is_empty()
    }

    /// Takes the connection off the dirty list's books (a flush pass picked it).
    pub fn clear_dirty(&self) {
        self.dirty.set(false);
    }

    /// Whether it is on the dirty list.
    pub fn is_dirty(&self) -> bool {
        self.dirty.get()
    }

    /// Records that a batched send wrote `n` bytes of the queue.
    pub fn record_written(&self, n: usize) {
        self.state.borrow_mut().out_mut().advance(n);
    }

    /// Drops every queued frame not yet started (benchmarks of a detached shard).
    pub fn discard_unstarted(&self) {
        self.dirty.set(false);
        self.state.borrow_mut().out_mut().drop_unstarted();
    }

    /// Writes what the socket takes now; on a full socket hands over to the task.
    pub fn flush_now(&self) {
        self.dirty.set(false);
        if self.write_blocked.get() {
            return;
        }
        let result = {
            let mut state = self.state.borrow_mut();
            if state.phase() == Phase::Abort {
                return;
            }
            io::write_queue_now(state.out_mut(), self.fd).map(|done| (done, state.phase()))
        };
        match result {
            Ok((true, phase)) => {
                if phase != Phase::Open {
                    // Close frame written: the task half-closes and finishes.
                    self.wake();
                }
            }
            Ok((false, _)) => {
                self.write_blocked.set(true);
                self.wake();
            }
            Err(e) => {
                trace!(cause = %e, "write failed");
                self.abort();
            }
        }
    }
}
