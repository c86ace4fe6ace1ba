//! The life of one accepted socket, driven from the shard: upgrade → register → serve →
//! close.
//!
//! Runs on: its shard, as one task per socket (spawned by `listener`).
//!
//! 1. **upgrade**: read the HTTP request (bounded by `handshake_timeout` and
//!    `max_request_size`, counted against the pending-handshake caps), answer `/healthz`
//!    or an error status, or upgrade;
//! 2. **register**: a [`Registered`] guard puts the connection in the table, the hub, the
//!    send ring's file table and the counters, and holds the connection's budget slot;
//! 3. **serve**: `conn::io` steps until the connection is done; events the client
//!    published go to the bus in order (the task waits when the bus is full: this
//!    client's reads pause, nobody else's);
//! 4. **close**: the guard drops — unregistered everywhere, slot released — and then the
//!    socket (the task's argument, so it always outlives the guard) is closed.

use std::{future::Future, net::SocketAddr, rc::Rc, time::Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::{net::TcpStream, timer::Timer};
use tracing::{debug, trace};

use super::{Serves, Shard, table::Registered};
use crate::{
    conn::{
        Conn, Mode, dispatch,
        handshake::{self, Request},
        io::{self, IoState, Step},
        state::Close,
    },
    ids::Publisher,
    stats::ShardStats,
    ws::frame::{SharedFrame, close_code},
};

/// Serves one accepted socket until it closes. Never returns an error: problems end
/// this connection only, with an HTTP status or close code, and are logged at `debug`.
///
/// The socket is captured by the task and the registration is a local inside it, so the
/// registration always drops first: the connection is unregistered everywhere before its
/// fd is closed (fd numbers are reused at once).
///
/// A plain function returning the task (an `async fn` would store its arguments, the
/// 144-byte socket included, twice in every idle connection's task).
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
pub(super) fn run(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    serves: Serves,
) -> impl Future<Output = ()> {
    async move {
        // The upgrade's state (request buffer, deadline timer) lives in its own
        // allocation, freed when the upgrade is done: this task lives as long as the
        // connection, and its size is paid by every idle socket.
        let Some((registered, leftover)) = Box::pin(upgrade(&shard, &mut stream, serves)).await
        else {
            return;
        };
        let conn = registered.conn();
        // Frames that came in the same read as the request head are the client's first:
        // they are handled now, and their events published, before waiting for input.
        if let Some(bytes) = leftover {
            Box::pin(handle_first_frames(&shard, conn, bytes)).await;
        }
        serve(&shard, conn, &mut stream).await;
        // `registered` drops here, before the captured `stream`: unregistered, then closed.
    }
}

/// Runs the HTTP exchange. After a 101, returns the registered connection and any bytes
/// that followed the request head (the client's first frames); otherwise `None` (the
/// socket was answered, or not, and is dropped).
async fn upgrade(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    serves: Serves,
) -> Option<(Registered, Option<Vec<u8>>)> {
    let peer = stream.peer_addr().ok();
    let ctx = &shard.ctx;
    let Some(_pending) = shard.try_begin_handshake(peer) else {
        let rejection = handshake::Rejection { status: 503, reason: "too many pending handshakes" };
        refuse(shard, stream, peer, rejection).await;
        return None;
    };
    if let Some(ip) = peer.map(|p| p.ip())
        && !shard.connect_rate.allow(ip, crate::clock::unix_now())
    {
        ShardStats::add(&ctx.stats().connects_limited, 1);
        let rejection = handshake::Rejection {
            status: 429,
            reason: "too many new connections from this address",
        };
        refuse(shard, stream, peer, rejection).await;
        return None;
    }
    let deadline = ctx.cfg.handshake_timeout.0;
    let handshake = read_request(shard, stream).or(async {
        Timer::new(deadline).await;
        Err("handshake timeout")
    });
    let (request, leftover) = match handshake.await {
        Ok(parsed) => parsed,
        Err(why) => {
            ctx.stats().rejected(None);
            debug!(shard = %ctx.id, ?peer, cause = why, "handshake failed");
            return None;
        }
    };
    let (user, mode, accept_key, last_event_id, token) = match request {
        Request::Upgrade { .. } if serves == Serves::ApiOnly => {
            let reason = "this listener serves only /api/ (WebSockets are on `listen`)";
            refuse(shard, stream, peer, handshake::Rejection { status: 404, reason }).await;
            return None;
        }
        Request::Upgrade { user, mode, accept_key, last_event_id, token } => {
            (user, mode, accept_key, last_event_id, token)
        }
        Request::Health => {
            let body = super::health::Health::read(
                ctx.id,
                shard.shutting_down.get(),
                ctx.node_stats(),
                &shard.budget,
                &shard.pending_budget,
                ctx.verifier.is_some(),
            )
            .to_json();
            let response = handshake::http_response(200, "application/json", &body);
            let _ = write_and_close(stream, &response).await;
            return None;
        }
        Request::Metrics => {
            let text = crate::stats::prometheus::NodeCollector::new(
                ctx.node_stats().clone(),
                shard.budget.clone(),
                shard.pending_budget.clone(),
                shard.shutting_down.get(),
            )
            .render();
            let response =
                handshake::http_response(200, crate::stats::prometheus::CONTENT_TYPE, &text);
            let _ = write_and_close(stream, &response).await;
            return None;
        }
        Request::Asset { asset, key } => {
            let locked = asset == crate::assets::DASHBOARD
                && ctx
                    .api_key
                    .as_deref()
                    .is_some_and(|k| !crate::api::http::key_matches(key.as_deref(), k));
            if locked {
                let reason = "the dashboard needs the API key (Authorization: Bearer or ?key=)";
                refuse(shard, stream, peer, handshake::Rejection { status: 401, reason }).await;
            } else {
                let _ = write_and_close(stream, &crate::assets::response(asset)).await;
            }
            return None;
        }
        Request::Live => {
            let response = handshake::http_response(200, "application/json", r#"{"live":true}"#);
            let _ = write_and_close(stream, &response).await;
            return None;
        }
        Request::Ready => {
            let readiness =
                super::health::Readiness::read(shard.shutting_down.get(), ctx.node_stats());
            let status = if readiness.ready { 200 } else { 503 };
            let response =
                handshake::http_response(status, "application/json", &readiness.to_json());
            let _ = write_and_close(stream, &response).await;
            return None;
        }
        Request::Api(head) => {
            let elsewhere = serves == Serves::Everything && ctx.cfg.api_listen.0.is_some();
            // Boxed: only API connections pay for its state, not every upgrade.
            let buffered = leftover.unwrap_or_default();
            Box::pin(super::api::serve(shard, stream, head, buffered, elsewhere)).await;
            return None;
        }
        Request::Reject(rejection) => {
            refuse(shard, stream, peer, rejection).await;
            return None;
        }
    };
    let auth = if mode == Mode::Echo {
        Ok(None)
    } else {
        ctx.admit(token.as_deref(), &user, crate::clock::unix_now())
    };
    let auth = match auth {
        Ok(auth) => auth,
        Err(failure) => {
            ShardStats::add(&ctx.stats().auth_rejected[failure.index()], 1);
            let rejection =
                handshake::Rejection { status: failure.status(), reason: failure.message() };
            refuse(shard, stream, peer, rejection).await;
            return None;
        }
    };
    if mode != Mode::Echo && shard.blocks.is_blocked(&user, crate::clock::unix_now_ms()) {
        let rejection = handshake::Rejection { status: 403, reason: "user blocked by the server" };
        refuse(shard, stream, peer, rejection).await;
        return None;
    }
    let user_slot = match ctx.cfg.max_connections_per_user {
        0 => None,
        limit if mode != Mode::Echo => {
            match Box::pin(shard.admit_user(&user, limit as u64)).await {
                Ok(slot) => slot,
                Err(at_limit) => {
                    ShardStats::add(&ctx.stats().user_limited, 1);
                    debug!(shard = %ctx.id, connections = at_limit.connections, "user at its connection limit");
                    let reason = "too many connections for this user";
                    refuse(shard, stream, peer, handshake::Rejection { status: 429, reason }).await;
                    return None;
                }
            }
        }
        _ => None,
    };
    let slot = if shard.shutting_down.get() {
        Err("server shutting down")
    } else if !ctx.node_stats().bus_started() {
        // Nothing a client sends may be published before the node reaches the others.
        Err("starting: not connected to Redis yet")
    } else {
        shard.budget.try_acquire().ok_or("connection limit reached")
    };
    let slot = match slot {
        Ok(slot) => slot,
        Err(reason) => {
            refuse(shard, stream, peer, handshake::Rejection { status: 503, reason }).await;
            return None;
        }
    };

    // Register first, then send the 101 through the connection's own queue: every event
    // fanned out after this point is queued behind the 101, so a client that has its 101
    // misses nothing published afterwards.
    use std::os::fd::AsRawFd;
    let conn = Rc::new(Conn::new(stream.as_raw_fd(), user, mode, auth, ctx, Instant::now()));
    let response = handshake::upgrade_response(&accept_key, mode, ctx.id.0);
    conn.push_handshake_response(Rc::new(SharedFrame::from(response)));
    let registered = Registered::new(shard, conn, slot, user_slot);
    if let Some(since) = last_event_id.filter(|_| mode != Mode::Echo) {
        // Before any broadcast can reach it (no await since registering): the missed ones
        // come first, then live ones.
        shard.recover_broadcasts(registered.conn().id(), since);
    }
    registered.conn().flush_now();
    trace!(shard = %ctx.id, conn = registered.conn().id().0, user = registered.conn().user(), ?mode, "upgraded");
    Some((registered, leftover))
}

/// Reads the HTTP request head. Returns the decision and any bytes after the head.
async fn read_request(
    shard: &Shard,
    stream: &mut TcpStream,
) -> Result<(Request, Option<Vec<u8>>), &'static str> {
    let cfg = &shard.ctx.cfg;
    let max = cfg.max_request_size.0;
    let mut buf = vec![0u8; 1024.min(max)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= max {
                let rejection =
                    handshake::Rejection { status: 431, reason: "request head too large" };
                return Ok((Request::Reject(rejection), None));
            }
            buf.resize((buf.len() * 2).min(max), 0);
        }
        let n = stream.read(&mut buf[filled..]).await.map_err(|_| "read error")?;
        if n == 0 {
            return Err("peer closed during handshake");
        }
        filled += n;
        let policy =
            handshake::Policy { echo_path: &cfg.echo_path, allowed_origins: &cfg.allowed_origins };
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
    peer: Option<SocketAddr>,
    rejection: handshake::Rejection,
) {
    shard.ctx.stats().rejected(Some(rejection.status));
    debug!(shard = %shard.ctx.id, ?peer, status = rejection.status, cause = rejection.reason, "request refused");
    let _ = write_and_close(stream, &handshake::rejection_response(rejection)).await;
}

async fn write_and_close(stream: &mut TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.write_all(response).await?;
    stream.close().await
}

/// Handles the bytes that followed the request head.
async fn handle_first_frames(shard: &Rc<Shard>, conn: &Rc<Conn>, mut bytes: Vec<u8>) {
    dispatch::handle_input(&shard.ctx, conn, &**shard, &mut bytes);
    after_progress(shard, conn).await;
}

/// Serves a registered connection until it is done.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
fn serve<'a>(
    shard: &'a Rc<Shard>,
    conn: &'a Rc<Conn>,
    stream: &'a mut TcpStream,
) -> impl Future<Output = ()> + 'a {
    async move {
        let mut io_state = IoState::default();
        while io::next_step(&shard.ctx, conn, &**shard, stream, &mut io_state).await
            == Step::Progress
        {
            after_progress(shard, conn).await;
        }
    }
}

/// After input was handled: publish its events, write the replies, let others run.
async fn after_progress(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    if conn.has_events() {
        // Boxed: its state exists only while events are on their way, not in every idle
        // connection's task.
        Box::pin(publish_pending(shard, conn)).await;
    }
    if conn.is_dirty() {
        conn.flush_now();
    }
    glommio::yield_if_needed().await;
}

/// Publishes the events the reader decoded, in order; waits when the bus is full (this
/// client's reads pause meanwhile, nobody else's).
async fn publish_pending(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    let reply_to = (conn.mode() == Mode::V1).then(|| Publisher::Conn(conn.id()));
    for (event, options) in conn.take_events() {
        if shard.bus.publish(event, options, reply_to).await.is_err() {
            let close = Close {
                code: close_code::GOING_AWAY,
                reason: "server shutting down",
                discard_queued: false,
            };
            conn.begin_close(&shard.ctx, close, shard.ctx.timing.close_grace);
            return;
        }
    }
}
