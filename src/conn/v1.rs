//! What a text message does on a seed or v1 connection: the message rate limit, the seed
//! protocol's broadcast, and the v1 commands — subscribe (with its authorization: the
//! connection's permissions, a subscription token, the API key for the stats topic),
//! unsubscribe, refresh, presence and history queries, and publish, direct and broadcast,
//! whose events wait in the connection for the bus.
//!
//! Runs on: the connection's shard, inside its task's poll (called by
//! [`super::dispatch`] for each complete text message). The wire protocol itself (parsing,
//! the JSON replies, the limits) is `protocol`; this file executes it for one connection.

use std::rc::Rc;

use super::{Conn, Mode, ShardContext, SubscribeReply, Subscriptions, auth::Action, rate};
use crate::{
    clock::unix_now,
    event::{Event, Payload, PublishOptions},
    ids::Route,
    protocol::{
        command,
        limits::{MAX_TOPICS_PER_CONN, STATS_TOPIC},
        reply,
    },
    stats::ShardStats,
    ws::{
        frame::{close_code, encode_text},
        inbound::Violation,
    },
};

/// A text message from a seed or v1 client (the decoder already checked it is UTF-8).
///
/// # Errors
/// The [`Violation`] that closes the connection (past the message rate limit's burst).
pub(crate) fn handle_text(
    ctx: &ShardContext,
    conn: &Rc<Conn>,
    subs: &dyn Subscriptions,
    payload: &mut [u8],
) -> Result<(), Violation> {
    // The decoder already validated the text; this only converts.
    let Ok(text) = std::str::from_utf8(payload) else { return Err(Violation::INVALID_UTF8) };
    ShardStats::add(&ctx.stats().messages_in, 1);
    match conn.take_message(ctx) {
        rate::Verdict::Pass => {}
        rate::Verdict::Limited => {
            ShardStats::add(&ctx.stats().rate_limited, 1);
            if conn.mode == Mode::V1 {
                let error =
                    command::CommandError::new("rate_limited", "message rate limit: dropped");
                send_reply(ctx, conn, &error.to_json());
            }
            return Ok(());
        }
        rate::Verdict::Close => {
            ShardStats::add(&ctx.stats().rate_limited, 1);
            ShardStats::add(&ctx.stats().rate_limit_closes, 1);
            return Err(Violation {
                code: close_code::POLICY_VIOLATION,
                reason: "rate limit exceeded",
            });
        }
    }
    if conn.mode == Mode::Seed {
        seed_text(ctx, conn, text);
        return Ok(());
    }
    run_command(ctx, conn, subs, payload);
    Ok(())
}

/// A seed client's text: broadcast to everyone (when it may broadcast).
fn seed_text(ctx: &ShardContext, conn: &Conn, text: &str) {
    if !conn.permits(Action::Broadcast) {
        // The seed protocol has no error channel: dropped, counted, logged.
        ShardStats::add(&ctx.stats().seed_texts_dropped, 1);
        tracing::debug!(shard = %ctx.id, conn = conn.id().0, "seed text dropped: no broadcast permission");
        return;
    }
    let event = Event {
        sender: conn.user.to_string(),
        route: Route::Broadcast,
        payload: Payload::Text(text.to_owned()),
    };
    if event.too_large_for(ctx.timing.queue_limit).is_some() {
        ShardStats::add(&ctx.stats().too_large, 1);
        tracing::debug!(shard = %ctx.id, conn = conn.id().0, "seed text dropped: larger than a connection may queue");
        return;
    }
    conn.pending_events.borrow_mut().push((event, PublishOptions::default()));
}

/// A v1 command: executed (subscriptions, queries, events for the bus) and answered,
/// now or when its answer comes (`subscribed` once the bus confirms, history pages,
/// presence, publish receipts). A refused command is answered with its error.
fn run_command(ctx: &ShardContext, conn: &Rc<Conn>, subs: &dyn Subscriptions, payload: &mut [u8]) {
    let parsed = command::parse(payload, &mut ctx.json_buffers.borrow_mut().0);
    let publish = |route, payload, mut options: PublishOptions| {
        // A client's idempotency keys are its user's own: another user's publish, or the
        // server API's (`api.<endpoint>:<key>`), never answers for them.
        if let Some(key) = &options.idempotency_key {
            options.idempotency_key = Some(format!("ws.{}:{key}", conn.user).into_boxed_str());
        }
        let event = Event { sender: conn.user.to_string(), route, payload };
        if let Some(message) = event.too_large_for(ctx.timing.queue_limit) {
            ShardStats::add(&ctx.stats().too_large, 1);
            return Some(command::CommandError { code: "too_large", message }.to_json());
        }
        conn.pending_events.borrow_mut().push((event, options));
        None
    };
    let answer = match parsed {
        Ok(command::Command::Subscribe { topic, since, token, presence }) => {
            if let Err(refused) = authorize_subscribe(ctx, conn, &topic, token.as_deref()) {
                send_reply(ctx, conn, &refused.to_json());
                return;
            }
            match subs.subscribe(conn.id(), &topic, since, presence) {
                SubscribeReply::Now => Some(reply::ack_json("subscribed", &topic)),
                SubscribeReply::WhenConfirmed => None,
                SubscribeReply::TooManyTopics => Some(
                    command::CommandError {
                        code: "too_many_topics",
                        message: format!("at most {MAX_TOPICS_PER_CONN} topics per connection"),
                    }
                    .to_json(),
                ),
            }
        }
        Ok(command::Command::Unsubscribe(topic)) => {
            subs.unsubscribe(conn.id(), &topic);
            Some(reply::ack_json("unsubscribed", &topic))
        }
        Ok(command::Command::Refresh { token }) => Some(refresh(ctx, conn, &token)),
        Ok(command::Command::Presence(topic)) if !conn.permits(Action::Subscribe(&topic)) => {
            Some(forbidden(ctx, format!("not allowed to read topic \"{topic}\"")))
        }
        Ok(command::Command::Presence(topic)) => {
            subs.presence(conn.id(), &topic);
            None
        }
        Ok(command::Command::History { topic, .. }) if !conn.permits(Action::Subscribe(&topic)) => {
            Some(forbidden(ctx, format!("not allowed to read topic \"{topic}\"")))
        }
        Ok(command::Command::History { topic, since, limit }) => {
            subs.history(conn.id(), &topic, since, limit);
            None
        }
        Ok(command::Command::Publish { topic, .. }) if topic == STATS_TOPIC => Some(
            command::CommandError::new(
                "read_only",
                format!("topic \"{STATS_TOPIC}\" is written by the nodes only"),
            )
            .to_json(),
        ),
        Ok(command::Command::Publish { topic, .. }) if !conn.permits(Action::Publish(&topic)) => {
            Some(forbidden(ctx, format!("not allowed to publish on topic \"{topic}\"")))
        }
        Ok(command::Command::Publish { topic, payload, options }) => {
            publish(Route::Topic(topic.into()), payload, options)
        }
        Ok(command::Command::Direct { .. }) if !conn.permits(Action::Direct) => {
            Some(forbidden(ctx, "not allowed to send direct messages".into()))
        }
        Ok(command::Command::Direct { to, payload, options }) => {
            publish(Route::Direct(to.into()), payload, options)
        }
        Ok(command::Command::Broadcast(..)) if !conn.permits(Action::Broadcast) => {
            Some(forbidden(ctx, "not allowed to broadcast".into()))
        }
        Ok(command::Command::Broadcast(payload, options)) => {
            publish(Route::Broadcast, payload, options)
        }
        Err(e) => Some(e.to_json()),
    };
    if let Some(json) = answer {
        send_reply(ctx, conn, &json);
    }
}

fn send_reply(ctx: &ShardContext, conn: &Rc<Conn>, json: &str) {
    conn.enqueue(ctx, &Rc::new(encode_text(json)));
}

/// A `forbidden` error, counted.
fn forbidden(ctx: &ShardContext, message: String) -> String {
    ShardStats::add(&ctx.stats().forbidden, 1);
    command::CommandError::new("forbidden", message).to_json()
}

/// Whether `conn` may subscribe to `topic`: by its permissions, or by a subscription
/// token (which then grants the topic for the connection's life).
fn authorize_subscribe(
    ctx: &ShardContext,
    conn: &Conn,
    topic: &str,
    token: Option<&str>,
) -> Result<(), command::CommandError> {
    if topic == STATS_TOPIC
        && let Some(key) = &ctx.api_key
    {
        // The node figures are for operators: the API key is the subscription's token.
        if crate::api::http::key_matches(token, key) {
            return Ok(());
        }
        ShardStats::add(&ctx.stats().forbidden, 1);
        let message = format!("topic \"{STATS_TOPIC}\" needs the API key as its \"token\"");
        return Err(command::CommandError::new("forbidden", message));
    }
    // A token is always checked when given (it may extend an earlier grant).
    if token.is_none() && conn.permits(Action::Subscribe(topic)) {
        return Ok(());
    }
    let refuse = |code, message: String| {
        ShardStats::add(&ctx.stats().forbidden, 1);
        Err(command::CommandError::new(code, message))
    };
    let (Some(token), Some(verifier), Some(auth)) = (token, &ctx.verifier, conn.auth()) else {
        return refuse("forbidden", format!("not allowed to subscribe to topic \"{topic}\""));
    };
    match verifier.subscription(token, conn.user(), topic, unix_now()) {
        Ok(exp) if auth.borrow_mut().grant(topic, exp) => Ok(()),
        Ok(_) => refuse("forbidden", "too many topics granted by subscription tokens".into()),
        Err(failure) => {
            refuse("invalid_token", format!("subscription token refused: {}", failure.message()))
        }
    }
}

/// `{"op":"refresh"}`: the reply (`refreshed`, or `invalid_token` keeping the old token).
fn refresh(ctx: &ShardContext, conn: &Conn, token: &str) -> String {
    let invalid = |message: &str| command::CommandError::new("invalid_token", message).to_json();
    let (Some(verifier), Some(auth)) = (&ctx.verifier, conn.auth()) else {
        return invalid("authentication is off on this node");
    };
    match verifier.connection(Some(token), conn.user(), unix_now()) {
        Ok(identity) => match auth.borrow_mut().refresh(identity) {
            Ok(exp) => reply::refreshed_json(exp),
            Err(_) => invalid("the new token must expire later than the current one"),
        },
        Err(failure) => invalid(failure.message()),
    }
}
