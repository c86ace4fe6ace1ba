//! One client connection: its state ([`Conn`]) and its task ([`run`]).
//!
//! Runs on: the shard that accepted the socket; everything here is `!Send`.
//!
//! Lifecycle of the task, one per socket:
//! 1. **handshake**: read the HTTP request (bounded by `handshake_timeout` and
//!    `max_request_size`), answer `/healthz` or an error status, or upgrade;
//! 2. **register**: the [`Conn`] goes into the shard's table and user index;
//! 3. **serve**: one poll loop reacts to readability (frames are read into the shard's
//!    scratch buffer, so an idle connection owns no read buffer), to writability when
//!    its queue could not be flushed at once, and to the close deadline;
//! 4. **close**: unregister (before the fd is closed: fd numbers are reused at once),
//!    release the connection slot, drop the socket.
//!
//! Who touches a `Conn` besides its task: the shard's inbox task and heartbeat task
//! queue frames into it and, when the socket is full or the connection must close,
//! wake the task through [`Conn::wake`].

pub mod command;
pub mod handshake;
pub mod reader;
pub mod writer;

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use glommio::{net::TcpStream, timer::Timer};
use tracing::{debug, trace};

use crate::{
    event::Event,
    frame::{self, SharedFrame, close_code},
    hub::ConnId,
    shard::Shard,
    xshard::ShardStats,
};
use handshake::Request;
use reader::Inbound;
use writer::OutQueue;

/// Where a connection is in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Normal operation.
    Open,
    /// We queued a Close; waiting for the client's Close (or the deadline). Inbound data
    /// is discarded, no new frames are queued.
    Closing,
    /// The client sent a Close and ours is queued: close TCP once it is written.
    PeerClosed,
    /// Close the socket now (I/O error, deadline passed, forced shutdown).
    Abort,
}

/// The connection task's waker (a `Cell` so that waking needs no borrow).
#[derive(Default)]
struct WakerSlot(Cell<Option<Waker>>);

impl std::fmt::Debug for WakerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakerSlot")
    }
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

/// Heartbeat bookkeeping (see `shard::heartbeat`).
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// When our unanswered Ping went out; `None` when none is outstanding.
    pub awaiting_pong_since: Option<Instant>,
    /// When the next Ping is due.
    pub next_ping: Instant,
    /// When the next seed-mode `{"type":"ping"}` is due.
    pub next_app_ping: Instant,
}

/// One upgraded WebSocket connection, owned by its shard.
#[derive(Debug)]
pub struct Conn {
    /// Key in the shard's table (set at registration).
    pub id: Cell<ConnId>,
    /// The socket's fd, for the shard's batched writes. Valid while registered: the task
    /// unregisters before the socket is dropped.
    pub fd: RawFd,
    /// The user id from `/ws/{user_id}`.
    pub user: Box<str>,
    /// The protocol it speaks.
    pub mode: Mode,
    /// Frames waiting for the socket.
    pub out: RefCell<OutQueue>,
    /// Close-handshake state.
    pub phase: Cell<Phase>,
    /// On the shard's dirty list (has frames that the next flush pass must write).
    pub dirty: Cell<bool>,
    /// The socket was full: the task waits for writability and flushes itself.
    pub write_blocked: Cell<bool>,
    /// The connection task's waker; woken when the task has something to do.
    waker: WakerSlot,
    /// Heartbeat state, driven by the shard's heartbeat task.
    pub heartbeat: Cell<Heartbeat>,
    /// When an ongoing close gives up waiting for the client.
    pub close_deadline: Cell<Option<Instant>>,
    /// Partial frame and message reassembly.
    pub inbound: RefCell<Option<Box<Inbound>>>,
    /// The second (since the shard started) of the current control-frame window, and the
    /// Pings/Pongs received in it.
    pub control_window: Cell<(u32, u32)>,
    /// Topics this connection is subscribed to (to clean the hub on close).
    pub topics: RefCell<Vec<Box<str>>>,
    /// Events decoded from the client, waiting for the bus (published by the task, which
    /// may wait for room: that pauses this client's reads, nobody else's).
    pub pending_events: RefCell<Vec<Event>>,
}

impl Conn {
    fn new(fd: RawFd, user: String, mode: Mode, now: Instant, shard: &Shard) -> Conn {
        let cfg = &shard.cfg;
        let far = now + Duration::from_secs(365 * 24 * 3600);
        Conn {
            id: Cell::new(ConnId(u32::MAX)),
            fd,
            user: user.into_boxed_str(),
            mode,
            out: RefCell::default(),
            phase: Cell::new(Phase::Open),
            dirty: Cell::new(false),
            write_blocked: Cell::new(false),
            waker: WakerSlot::default(),
            heartbeat: Cell::new(Heartbeat {
                awaiting_pong_since: None,
                next_ping: cfg.ping_interval.enabled().map_or(far, |d| now + d),
                next_app_ping: cfg
                    .app_ping_interval
                    .enabled()
                    .filter(|_| mode == Mode::Seed)
                    .map_or(far, |d| now + d),
            }),
            close_deadline: Cell::new(None),
            inbound: RefCell::default(),
            control_window: Cell::new((0, 0)),
            topics: RefCell::default(),
            pending_events: RefCell::default(),
        }
    }

    /// A connection with no socket (fd −1) registered on a detached shard, for
    /// benchmarks of the fan-out path. Never flush it: there is nothing to write to.
    pub fn detached(shard: &Shard, user: &str, mode: Mode) -> Rc<Conn> {
        let conn = Rc::new(Conn::new(-1, user.to_owned(), mode, Instant::now(), shard));
        shard.register(&conn);
        conn
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

    /// Queues `frame` for this connection. Returns `false` when it was not queued
    /// (closing, or the client just became a slow consumer and is being cut off).
    pub fn enqueue(self: &Rc<Self>, shard: &Shard, frame: &Rc<SharedFrame>) -> bool {
        if self.phase.get() != Phase::Open {
            return false;
        }
        let mut out = self.out.borrow_mut();
        if out.bytes() + frame.len() > shard.cfg.outbound_queue_limit.0 {
            drop(out);
            ShardStats::add(&shard.stats().slow_consumer_closes, 1);
            debug!(shard = %shard.id, conn = self.id.get().0, user = %self.user, "slow consumer cut off");
            self.cut_off(shard);
            return false;
        }
        out.push(frame.clone());
        drop(out);
        self.mark_dirty(shard);
        true
    }

    fn mark_dirty(self: &Rc<Self>, shard: &Shard) {
        if !self.dirty.replace(true) {
            shard.dirty.borrow_mut().push_back(self.clone());
        }
    }

    /// Starts a server-initiated close: a Close frame is queued after whatever is already
    /// queued (nothing accepted for this client is dropped), and the client has
    /// `close_grace` to read it and answer.
    pub fn begin_close(self: &Rc<Self>, shard: &Shard, code: u16, reason: &str) {
        self.start_close(shard, code, reason, shard.cfg.close_grace.0, false);
    }

    /// [`begin_close`](Self::begin_close) with an explicit grace period.
    pub fn begin_close_within(
        self: &Rc<Self>,
        shard: &Shard,
        code: u16,
        reason: &str,
        grace: Duration,
    ) {
        self.start_close(shard, code, reason, grace, false);
    }

    /// Cuts off a slow consumer: the frames not yet started are dropped (that backlog is
    /// the problem), Close 1013 is queued, and the client has `close_grace` to read it.
    pub fn cut_off(self: &Rc<Self>, shard: &Shard) {
        let grace = shard.cfg.close_grace.0;
        self.start_close(
            shard,
            close_code::TRY_AGAIN_LATER,
            "slow consumer: outbound queue limit",
            grace,
            true,
        );
    }

    fn start_close(
        self: &Rc<Self>,
        shard: &Shard,
        code: u16,
        reason: &str,
        grace: Duration,
        discard_queued: bool,
    ) {
        if self.phase.get() != Phase::Open {
            return;
        }
        self.phase.set(Phase::Closing);
        {
            let mut out = self.out.borrow_mut();
            if discard_queued {
                out.drop_unstarted();
            }
            out.push(Rc::new(frame::encode_close(code, reason)));
        }
        self.close_deadline.set(Some(Instant::now() + grace));
        self.mark_dirty(shard);
        self.wake();
    }

    /// Closes the socket without a close handshake (used when the peer is gone or a
    /// deadline has passed).
    pub fn abort(&self) {
        self.phase.set(Phase::Abort);
        self.wake();
    }

    /// Whether a flush pass may write this connection's queue now (it is dirty, has
    /// bytes, and its task is not itself waiting for the socket).
    pub fn batch_writable(&self) -> bool {
        self.dirty.get()
            && !self.write_blocked.get()
            && self.phase.get() != Phase::Abort
            && !self.out.borrow().is_empty()
    }

    /// Writes what the socket takes now; on a full socket hands over to the task.
    pub fn flush_now(&self) {
        self.dirty.set(false);
        if self.write_blocked.get() || self.phase.get() == Phase::Abort {
            return;
        }
        let result = self.out.borrow_mut().write_nonblocking(self.fd);
        match result {
            Ok(true) => {
                if self.phase.get() != Phase::Open {
                    // Close frame written: the task half-closes and finishes.
                    self.wake();
                }
            }
            Ok(false) => {
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

/// Serves one accepted socket until it closes. Never returns an error: problems end
/// this connection only, with an HTTP status or close code, and are logged at `debug`.
pub async fn run(shard: Rc<Shard>, mut stream: TcpStream) {
    // The upgrade's state (request buffer, deadline timer) lives in its own allocation,
    // freed when the upgrade is done: this task lives as long as the connection, and its
    // size is paid by every idle socket.
    let Some(conn) = Box::pin(upgrade(&shard, &mut stream)).await else {
        return;
    };
    serve(&shard, &conn, &mut stream).await;
    // Unregister before the socket (and its fd number) goes away.
    shard.unregister(&conn);
    shard.budget.release();
    drop(stream);
}

/// Runs the HTTP exchange. Returns the registered connection after a 101, or `None` when
/// the request was answered otherwise (or not at all) and the socket should be dropped.
async fn upgrade(shard: &Rc<Shard>, stream: &mut TcpStream) -> Option<Rc<Conn>> {
    let peer = stream.peer_addr().ok();
    let deadline = shard.cfg.handshake_timeout.0;
    let Some(_pending) = shard.try_begin_handshake(peer) else {
        let rejection = handshake::Rejection { status: 503, reason: "too many pending handshakes" };
        refuse(shard, stream, peer, rejection).await;
        return None;
    };
    let handshake = read_request(shard, stream).or(async {
        Timer::new(deadline).await;
        Err("handshake timeout")
    });
    let (request, leftover) = match handshake.await {
        Ok(parsed) => parsed,
        Err(why) => {
            ShardStats::add(&shard.stats().rejected_handshakes, 1);
            debug!(shard = %shard.id, ?peer, cause = why, "handshake failed");
            return None;
        }
    };
    let (user, mode, accept_key) = match request {
        Request::Upgrade { user, mode, accept_key } => (user, mode, accept_key),
        Request::Health => {
            let body = shard.health_json();
            let _ =
                write_and_close(stream, &handshake::http_response(200, "application/json", &body))
                    .await;
            return None;
        }
        Request::Reject(rejection) => {
            refuse(shard, stream, peer, rejection).await;
            return None;
        }
    };
    let unavailable = if shard.shutting_down.get() {
        Some("server shutting down")
    } else if !shard.budget.try_acquire() {
        Some("connection limit reached")
    } else {
        None
    };
    if let Some(reason) = unavailable {
        refuse(shard, stream, peer, handshake::Rejection { status: 503, reason }).await;
        return None;
    }

    // Register first, then send the 101 through the connection's own queue: every event
    // fanned out after this point is queued behind the 101, so a client that has its 101
    // misses nothing published afterwards.
    let conn = Rc::new(Conn::new(stream.as_raw_fd(), user, mode, Instant::now(), shard));
    let response = handshake::upgrade_response(&accept_key, mode, shard.id.0);
    conn.out.borrow_mut().push(Rc::new(SharedFrame::from(response)));
    shard.register(&conn);
    conn.flush_now();
    trace!(shard = %shard.id, conn = conn.id.get().0, user = %conn.user, ?mode, "upgraded");
    if let Some(mut bytes) = leftover {
        reader::handle_input(shard, &conn, &mut bytes);
    }
    Some(conn)
}

/// Reads the HTTP request head. Returns the decision and any bytes after the head.
async fn read_request(
    shard: &Shard,
    stream: &mut TcpStream,
) -> Result<(Request, Option<Vec<u8>>), &'static str> {
    let max = shard.cfg.max_request_size.0;
    let mut buf = vec![0u8; 1024.min(max)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= max {
                return Ok((
                    Request::Reject(handshake::Rejection {
                        status: 431,
                        reason: "request head too large",
                    }),
                    None,
                ));
            }
            buf.resize((buf.len() * 2).min(max), 0);
        }
        let n = stream.read(&mut buf[filled..]).await.map_err(|_| "read error")?;
        if n == 0 {
            return Err("peer closed during handshake");
        }
        filled += n;
        let policy = handshake::Policy {
            echo_path: &shard.cfg.echo_path,
            allowed_origins: &shard.cfg.allowed_origins,
        };
        if let Some((request, used)) = handshake::parse_request(&buf[..filled], policy) {
            let leftover = (used < filled).then(|| buf[used..filled].to_vec());
            return Ok((request, leftover));
        }
    }
}

/// Answers a request that will not be upgraded with an HTTP error status, and counts it.
async fn refuse(
    shard: &Shard,
    stream: &mut TcpStream,
    peer: Option<std::net::SocketAddr>,
    rejection: handshake::Rejection,
) {
    ShardStats::add(&shard.stats().rejected_handshakes, 1);
    debug!(shard = %shard.id, ?peer, status = rejection.status, cause = rejection.reason, "request refused");
    let _ = write_and_close(stream, &handshake::rejection_response(rejection)).await;
}

async fn write_and_close(stream: &mut TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.write_all(response).await?;
    stream.close().await
}

/// What one poll of the serve loop produced.
enum Step {
    /// Input was handled; events may wait in `pending_events`.
    Progress,
    /// The connection is finished.
    Done,
    /// Nothing handled yet: poll the socket.
    Poll,
}

async fn serve(shard: &Rc<Shard>, conn: &Rc<Conn>, stream: &mut TcpStream) {
    let mut close_timer: Option<Timer> = None;
    let mut half_closed = false;
    // The first step handles what the upgrade left: frames that came in the same read as
    // the request head were decoded already, and their events must not wait for more input.
    let mut step = Step::Progress;
    loop {
        if !matches!(step, Step::Progress) || conn.phase.get() == Phase::Abort {
            step = poll_fn(|cx| {
                poll_step(shard, conn, stream, cx, &mut close_timer, &mut half_closed)
            })
            .await;
        }
        match step {
            Step::Done => return,
            Step::Progress => {
                if !conn.pending_events.borrow().is_empty() {
                    // Boxed: its state exists only while events are on their way, not in
                    // every idle connection's task.
                    Box::pin(publish_pending(shard, conn)).await;
                }
                if conn.dirty.get() {
                    conn.flush_now();
                }
                glommio::yield_if_needed().await;
                step = Step::Poll;
            }
            Step::Poll => {}
        }
    }
}

/// Publishes the events the reader decoded, in order; waits when a shard inbox is full
/// (this client's reads pause meanwhile, nobody else's).
async fn publish_pending(shard: &Shard, conn: &Rc<Conn>) {
    let events = std::mem::take(&mut *conn.pending_events.borrow_mut());
    for event in events {
        if shard.bus.publish(event).await.is_err() {
            conn.begin_close(shard, close_code::GOING_AWAY, "server shutting down");
            return;
        }
    }
}

fn poll_step(
    shard: &Shard,
    conn: &Rc<Conn>,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    close_timer: &mut Option<Timer>,
    half_closed: &mut bool,
) -> Poll<Step> {
    conn.register_waker(cx);
    if conn.phase.get() == Phase::Abort {
        return Poll::Ready(Step::Done);
    }
    if conn.write_blocked.get() {
        match poll_write_queue(conn, stream, cx) {
            Poll::Ready(Ok(())) => conn.write_blocked.set(false),
            Poll::Ready(Err(_)) => return Poll::Ready(Step::Done),
            Poll::Pending => {}
        }
    }
    let phase = conn.phase.get();
    if phase != Phase::Open {
        if !*half_closed && !conn.write_blocked.get() && conn.out.borrow().is_empty() {
            // Our Close is on the wire: send FIN after it, keep reading until the
            // client's Close/EOF so that unread input never turns our close into a RST.
            let _ = stream.poll_shutdown(cx, std::net::Shutdown::Write);
            *half_closed = true;
        }
        if phase == Phase::PeerClosed && *half_closed {
            return Poll::Ready(Step::Done);
        }
        if let Some(deadline) = conn.close_deadline.get() {
            let timer = close_timer.get_or_insert_with(|| {
                Timer::new(deadline.saturating_duration_since(Instant::now()))
            });
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Step::Done);
            }
        }
    }
    let mut scratch = shard.scratch.borrow_mut();
    match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Step::Done),
        Poll::Ready(Ok(n)) => {
            if conn.phase.get() == Phase::Open || conn.phase.get() == Phase::Closing {
                reader::handle_input(shard, conn, &mut scratch[..n]);
            }
            Poll::Ready(Step::Progress)
        }
        Poll::Pending => Poll::Pending,
    }
}

/// Writes the queue through glommio, which registers for writability when the socket
/// is full (the shard's non-blocking pass handed over to us).
fn poll_write_queue(
    conn: &Conn,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    loop {
        let mut out = conn.out.borrow_mut();
        if out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut iov = [std::io::IoSlice::new(&[]); writer::MAX_IOVECS];
        let n = out.iovecs(&mut iov);
        match Pin::new(&mut *stream).poll_write_vectored(cx, &iov[..n]) {
            Poll::Ready(Ok(written)) => out.advance(written),
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}
