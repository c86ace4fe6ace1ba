//! The server API on a shard: reads `/api/...` requests (keep-alive), executes them
//! through the bus, answers JSON; plus what the cluster commands do here (closes and
//! blocks).
//!
//! Runs on: its shard, in the task of the socket that sent the request (started by
//! `session` when the first request head names `/api/`). Publishes go to the bus like a
//! client's; their receipts come back through the shard's inbox to the waiting request
//! (by ticket, [`ApiWaiters`]).

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    time::{Duration, Instant},
};

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::{net::TcpStream, timer::Timer};
use serde_json::{Value, json};
use tracing::debug;

use super::Shard;
use crate::{
    api::{
        self, ApiCall, ApiDisconnect, ApiError, ApiPublish,
        http::{self as api_http, ApiHead},
    },
    conn::{handshake, state::Close},
    ids::Publisher,
    xshard::ClusterControl,
};

/// How long a request waits for its receipt (the bus, and Redis, answer well within it;
/// past it the outcome is unknown and the request gets 503).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

/// API requests of this shard waiting for an answer from the bus, by ticket.
#[derive(Debug, Default)]
pub(super) struct ApiWaiters {
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, flume::Sender<Box<str>>>>,
}

impl ApiWaiters {
    /// A new ticket; the answer arrives on the receiver. The ticket is forgotten when the
    /// guard drops (answered or not).
    fn register(self: &Rc<Self>) -> (Ticket, flume::Receiver<Box<str>>) {
        let ticket = self.next.get();
        self.next.set(ticket + 1);
        let (tx, rx) = flume::bounded(1);
        self.waiting.borrow_mut().insert(ticket, tx);
        (Ticket { waiters: self.clone(), ticket }, rx)
    }

    /// Hands `json` to the request holding `ticket` (nothing when it gave up).
    pub(super) fn answer(&self, ticket: u64, json: &str) {
        if let Some(tx) = self.waiting.borrow_mut().remove(&ticket) {
            let _ = tx.try_send(json.into());
        }
    }
}

/// A registered ticket; forgets itself on drop.
struct Ticket {
    waiters: Rc<ApiWaiters>,
    ticket: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.waiters.waiting.borrow_mut().remove(&self.ticket);
    }
}

/// Users whose upgrades this shard refuses until a time (Unix ms), from
/// `/api/disconnect` with `block_seconds`.
#[derive(Debug, Default)]
pub(super) struct Blocks(RefCell<HashMap<Box<str>, u64>>);

impl Blocks {
    fn block(&self, user: &str, until_ms: u64) {
        let mut blocks = self.0.borrow_mut();
        let until = blocks.entry(user.into()).or_insert(0);
        *until = (*until).max(until_ms);
    }

    /// Whether `user` is blocked at `now_ms` (an ended block is forgotten).
    pub(super) fn is_blocked(&self, user: &str, now_ms: u64) -> bool {
        let mut blocks = self.0.borrow_mut();
        match blocks.get(user) {
            Some(&until) if until > now_ms => true,
            Some(_) => {
                blocks.remove(user);
                false
            }
            None => false,
        }
    }
}

impl Shard {
    /// Ends `conn`'s subscription to `topic`, whose subscription token expired, and tells
    /// the client `{"type":"unsubscribed","topic":T,"reason":"subscription token expired"}`.
    pub(super) fn end_expired_subscription(&self, conn: &Rc<crate::conn::Conn>, topic: &str) {
        use crate::conn::Subscriptions;
        self.unsubscribe(conn.id(), topic);
        let json = serde_json::json!({
            "type": "unsubscribed",
            "topic": topic,
            "reason": "subscription token expired",
        });
        conn.enqueue(&self.ctx, &Rc::new(crate::ws::frame::encode_text(&json.to_string())));
    }

    /// Applies a cluster command to this shard's connections.
    pub(super) fn apply_control(&self, control: &ClusterControl) {
        match control {
            ClusterControl::Disconnect { user, code, reason, until_ms } => {
                if *until_ms > crate::clock::unix_now_ms() {
                    self.blocks.block(user, *until_ms);
                }
                let conns: Vec<_> = {
                    let table = self.table.borrow();
                    let subs = self.subs.borrow();
                    subs.user_conns(user)
                        .iter()
                        .filter_map(|id| table.get(id.0 as usize).cloned())
                        .collect()
                };
                let close = Close { code: *code, reason, discard_queued: false };
                for conn in &conns {
                    conn.begin_close(&self.ctx, close, self.ctx.timing.close_grace);
                }
                if !conns.is_empty() {
                    debug!(shard = %self.ctx.id, user, closed = conns.len(), code, "disconnected by the server API");
                }
            }
        }
    }
}

/// A connection counted in its user's cluster-wide count (`max_connections_per_user`);
/// released when it drops (the registration holds it, so the count follows the
/// connection's life).
#[derive(Debug)]
pub(crate) struct UserSlot {
    shard: Rc<Shard>,
    user: Box<str>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.shard.bus.release_user(&self.user);
    }
}

/// Why an upgrade was refused by the per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserAtLimit {
    /// The user's connections across the cluster.
    pub(crate) connections: u64,
}

impl Shard {
    /// Asks the bus for one more connection of `user` under `limit`: a counted slot, no
    /// slot (admitted without counting: Redis away, or no answer in time), or refused.
    pub(super) async fn admit_user(
        self: &Rc<Self>,
        user: &str,
        limit: u64,
    ) -> Result<Option<UserSlot>, UserAtLimit> {
        let (ticket, answer) = self.api_waiters.register();
        self.bus.admit_user(user, limit, ticket.ticket);
        let Ok(reply) = answer_of(&Waiting { _ticket: ticket, answer }).await else {
            return Ok(None);
        };
        match reply.get("type").and_then(Value::as_str) {
            Some("refused") => Err(UserAtLimit {
                connections: reply.get("connections").and_then(Value::as_u64).unwrap_or(limit),
            }),
            _ if reply.get("counted") == Some(&Value::Bool(true)) => {
                Ok(Some(UserSlot { shard: self.clone(), user: user.into() }))
            }
            _ => Ok(None),
        }
    }
}

/// Serves API requests on `stream`, the first one's head already read (`buffered` holds
/// the bytes after it), until the client closes, asks to close, or idles past the
/// handshake timeout. A request's body must arrive within the handshake timeout; its
/// execution is bounded by the bus's own answer timeout ([`RECEIPT_TIMEOUT`]: a slow
/// Redis is answered 503, not cut off), and the whole request by the two together.
pub(super) async fn serve(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    first: ApiHead,
    mut buffered: Vec<u8>,
    served_elsewhere: bool,
) {
    let timeout = shard.ctx.cfg.handshake_timeout.0;
    // Past this, something waits without its own bound: drop the connection.
    let whole_request = timeout + RECEIPT_TIMEOUT + Duration::from_secs(1);
    let mut head = first;
    loop {
        let read_by = Instant::now() + timeout;
        let (status, body, keep_alive) =
            match one_request(shard, stream, &head, &mut buffered, served_elsewhere, read_by)
                .or(async {
                    Timer::new(whole_request).await;
                    Err(None)
                })
                .await
            {
                Ok((status, body)) => (status, body, head.keep_alive),
                // The body could not be read: answer and close (its bytes are not a request).
                Err(Some(error)) => (error.status, error.to_body(), false),
                Err(None) => return, // timed out, or the peer went away
            };
        let response = api_http::response(status, &body, keep_alive, &head.endpoint);
        if stream.write_all(&response).await.is_err() || !keep_alive {
            let _ = stream.close().await;
            return;
        }
        match next_head(shard, stream, &mut buffered)
            .or(async {
                Timer::new(timeout).await;
                None
            })
            .await
        {
            Some(next) => head = next,
            None => {
                let _ = stream.close().await;
                return;
            }
        }
    }
}

/// Reads the next request head of a keep-alive API connection: `None` when the client
/// closed or sent anything but an API request (answered 400).
async fn next_head(
    shard: &Shard,
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
) -> Option<ApiHead> {
    let cfg = &shard.ctx.cfg;
    loop {
        let policy =
            handshake::Policy { echo_path: &cfg.echo_path, allowed_origins: &cfg.allowed_origins };
        if let Some((request, used)) = handshake::parse_request(buffered, policy) {
            buffered.drain(..used.min(buffered.len()));
            if let handshake::Request::Api(head) = request {
                return Some(head);
            }
            let error =
                ApiError::new(400, "invalid_request", "only /api/ requests on an API connection");
            let _ = stream.write_all(&api_http::response(400, &error.to_body(), false, "")).await;
            return None;
        }
        if buffered.len() >= cfg.max_request_size.0 {
            return None;
        }
        if read_more(stream, buffered).await == 0 {
            return None;
        }
    }
}

/// Reads what the socket has into the end of `buffered` (at most 16 KiB); 0 at EOF or
/// on an error.
async fn read_more(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> usize {
    let filled = buffered.len();
    buffered.resize(filled + (16 << 10), 0);
    let n = stream.read(&mut buffered[filled..]).await.unwrap_or(0);
    buffered.truncate(filled + n);
    n
}

/// One request: checks, body, execution. `Err(Some)` is an error answered before the
/// body was read (the connection then closes); `Err(None)`: the peer went away.
async fn one_request(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    head: &ApiHead,
    buffered: &mut Vec<u8>,
    served_elsewhere: bool,
    read_by: Instant,
) -> Result<(u16, String), Option<ApiError>> {
    let ctx = &shard.ctx;
    if served_elsewhere {
        return Err(Some(ApiError::new(
            404,
            "not_found",
            "the server API is served on api_listen",
        )));
    }
    let Some(key) = &ctx.api_key else {
        return Err(Some(ApiError::new(404, "not_found", "the server API is off (set api_key)")));
    };
    if !api_http::key_matches(head.bearer.as_deref(), key) {
        return Err(Some(ApiError::new(
            401,
            "unauthorized",
            "missing or wrong API key (Authorization: Bearer <key>)",
        )));
    }
    let reads = api::is_read_endpoint(&head.endpoint);
    if head.get && reads {
        let answer = match api::parse_query(&head.endpoint, &head.query) {
            Ok(query) => ask(shard, query).await,
            Err(error) => Err(error),
        };
        return Ok(match answer {
            Ok(value) => (200, value.to_string()),
            Err(error) => (error.status, error.to_body()),
        });
    }
    if !head.post && !reads && !api::is_act_endpoint(&head.endpoint) {
        return Err(Some(ApiError::new(
            404,
            "not_found",
            format!("no endpoint /api/{}", head.endpoint),
        )));
    }
    if !head.post || reads {
        return Err(Some(ApiError::new(
            405,
            "method_not_allowed",
            "the /api/ endpoints that act are POSTs, the ones that read are GETs",
        )));
    }
    let length = match head.content_length {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(Some(ApiError::new(
                411,
                "length_required",
                "send the JSON body with a Content-Length",
            )));
        }
        Err(why) => return Err(Some(ApiError::new(400, "invalid_request", why))),
    };
    let max = ctx.cfg.max_api_body.0;
    if length > max {
        return Err(Some(ApiError::new(
            413,
            "body_too_large",
            format!("the body is over max_api_body ({max} bytes)"),
        )));
    }
    // The body within the handshake timeout (a slow sender holds no slot for longer).
    let read_body = async {
        while buffered.len() < length {
            if read_more(stream, buffered).await == 0 {
                return Err(None);
            }
        }
        Ok(())
    };
    read_body
        .or(async {
            Timer::new(read_by.saturating_duration_since(Instant::now())).await;
            Err(None)
        })
        .await?;
    let body: Vec<u8> = buffered.drain(..length).collect();
    let answer = match api::parse_call(&head.endpoint, &body) {
        Ok(call) => execute(shard, call).await,
        Err(error) => Err(error),
    };
    Ok(match answer {
        Ok(value) => (200, value.to_string()),
        Err(error) => (error.status, error.to_body()),
    })
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(503, "unavailable", message)
}

/// The 503 for a bus answer that is not a success: its `message`, else `fallback`.
fn failed(reply: &Value, fallback: &str) -> ApiError {
    unavailable(reply.get("message").and_then(Value::as_str).unwrap_or(fallback))
}

async fn execute(shard: &Rc<Shard>, call: ApiCall) -> Result<Value, ApiError> {
    if !shard.ctx.node_stats().bus_ready() {
        return Err(unavailable("the node cannot reach Redis: nothing was published"));
    }
    match call {
        ApiCall::Publish(publish) => {
            let waiting = start_publish(shard, publish).await?;
            receipt(waiting).await
        }
        ApiCall::Batch(calls) => {
            // Every publish is handed to the bus in request order, then the receipts are
            // collected: one round trip for the batch, not one per command.
            let mut started = Vec::with_capacity(calls.len());
            for call in calls {
                started.push(match call {
                    Ok(publish) => start_publish(shard, publish).await,
                    Err(error) => Err(error),
                });
            }
            let mut results = Vec::with_capacity(started.len());
            for waiting in started {
                results.push(match waiting {
                    Ok(waiting) => receipt(waiting).await,
                    Err(error) => Err(error),
                });
            }
            let results: Vec<Value> = results
                .into_iter()
                .map(|r| match r {
                    Ok(ok) => ok,
                    Err(e) => json!({"ok": false, "error": e.to_value()}),
                })
                .collect();
            Ok(json!({ "results": results }))
        }
        ApiCall::Disconnect(disconnect) => disconnect_everywhere(shard, disconnect).await,
    }
}

/// A publish handed to the bus, waiting for its receipt.
struct Waiting {
    _ticket: Ticket,
    answer: flume::Receiver<Box<str>>,
}

async fn start_publish(shard: &Rc<Shard>, publish: ApiPublish) -> Result<Waiting, ApiError> {
    let (ticket, answer) = shard.api_waiters.register();
    let ApiPublish { event, options } = publish;
    if let Some(message) = event.too_large_for(shard.ctx.cfg.outbound_queue_limit.0) {
        let field = Some("data".into());
        return Err(ApiError { status: 413, code: "event_too_large", message, field });
    }
    let to = Publisher::Waiter(ticket.ticket);
    shard
        .bus
        .publish(event, options, Some(to))
        .await
        .map_err(|_| unavailable("the node is shutting down"))?;
    Ok(Waiting { _ticket: ticket, answer })
}

/// The receipt of a publish: `{"ok":true,"id":...}` (no `id` when the stream keeps no
/// history), or 503.
async fn receipt(waiting: Waiting) -> Result<Value, ApiError> {
    let reply = answer_of(&waiting).await?;
    match reply.get("type").and_then(Value::as_str) {
        Some("published") => {
            let mut ok = json!({"ok": true});
            if let Some(id) = reply.get("id").filter(|id| !id.is_null()) {
                ok["id"] = id.clone();
            }
            Ok(ok)
        }
        _ => Err(failed(&reply, "the publish failed")),
    }
}

async fn answer_of(waiting: &Waiting) -> Result<Value, ApiError> {
    let text = waiting
        .answer
        .recv_async()
        .or(async {
            Timer::new(RECEIPT_TIMEOUT).await;
            Err(flume::RecvError::Disconnected)
        })
        .await
        .map_err(|_| {
            unavailable("no answer in time: the event may or may not be stored; retry with the same idempotency_key")
        })?;
    serde_json::from_str(&text).map_err(|_| unavailable("unreadable answer from the bus"))
}

/// An occupancy question, answered by the node's presence owner (cluster-wide).
async fn ask(shard: &Rc<Shard>, query: crate::presence::Query) -> Result<Value, ApiError> {
    let (ticket, answer) = shard.api_waiters.register();
    shard.bus.presence_query(query, ticket.ticket);
    let reply = answer_of(&Waiting { _ticket: ticket, answer }).await?;
    if reply.get("type").and_then(Value::as_str) == Some("error") {
        return Err(failed(&reply, "Redis is unreachable"));
    }
    Ok(reply)
}

async fn disconnect_everywhere(shard: &Rc<Shard>, d: ApiDisconnect) -> Result<Value, ApiError> {
    let until_ms =
        if d.block_seconds == 0 { 0 } else { crate::clock::unix_now_ms() + d.block_seconds * 1000 };
    let control =
        ClusterControl::Disconnect { user: d.user, code: d.code, reason: d.reason, until_ms };
    let (ticket, answer) = shard.api_waiters.register();
    shard.bus.control(control, Publisher::Waiter(ticket.ticket));
    let reply = answer_of(&Waiting { _ticket: ticket, answer }).await?;
    match reply.get("type").and_then(Value::as_str) {
        Some("done") => Ok(json!({"ok": true})),
        _ => Err(failed(&reply, "the command failed")),
    }
}
