//! The shard end of the bus: drains the bus's messages, fans deliveries out to local
//! connections, and acts on the bus's other messages — confirmations, replay answers,
//! losses, presence news and snapshots, replies — through the subscription book
//! (`shard::subs`) where they concern a subscription.
//!
//! Runs on: its shard. Upstream: the bus (any thread) via the shard's bounded inbox.
//! Downstream: connection queues, then a flush pass over the dirty connections, so that
//! frames arriving together for one socket leave in one write.
//!
//! A pass over 10,000 sockets takes milliseconds, so it goes a slice at a time
//! ([`FLUSH_SLICE`] sockets). Between slices the task lets the executor run (when its
//! preemption timer says so: a publisher's read, the reactor), then takes in what arrived
//! meanwhile: a new event joins the queues of the sockets this pass has not reached yet
//! instead of waiting for the whole pass to end. Sockets already written go to the back
//! of the list, so every event reaches every socket within about one pass.
//!
//! Each delivery's frames (`Bytes`, atomic refcount) are wrapped in one `Rc` here and
//! every local connection clones that `Rc` (non-atomic): no payload copy, no encoding,
//! and no atomic traffic per connection.

use std::{rc::Rc, sync::Arc};

use super::Shard;
use crate::{
    conn::Mode,
    ids::{ConnId, Publisher, Route},
    presence::{News, SnapshotTo},
    protocol::reply,
    stats::ShardStats,
    ws::frame::encode_text,
    xshard::{Delivery, ReplayAnswer, ReplayPurpose, ReplayTo, ShardInbox, ShardMessage},
};

/// Most messages taken from the inbox before a flush pass: large enough for corking
/// under load, small enough to bound the latency of the first delivery of the batch.
const MAX_BATCH: usize = 1024;

/// Sockets written between two looks at the inbox.
const FLUSH_SLICE: usize = 256;

/// Runs until the bus side of the inbox is gone.
pub(super) async fn run(shard: Rc<Shard>, inbox: ShardInbox) {
    while let Ok(first) = inbox.recv_async().await {
        let delivered = handle(&shard, first);
        let stats = shard.ctx.stats();
        ShardStats::add(&stats.deliveries, delivered + take_in(&shard, &inbox));
        while shard.flusher.flush_some(&shard.ctx, FLUSH_SLICE) {
            glommio::yield_if_needed().await;
            ShardStats::add(&stats.deliveries, take_in(&shard, &inbox));
        }
        glommio::yield_if_needed().await;
    }
}

/// Acts on one message from the bus; returns how many connections took a frame.
fn handle(shard: &Shard, message: ShardMessage) -> u64 {
    match message {
        ShardMessage::Deliver(delivery) => {
            let started = std::time::Instant::now();
            let delivered = fan_out(shard, &delivery);
            let stats = shard.ctx.stats();
            stats.fan_out.observe(started.elapsed());
            if delivered > 0
                && let Some(lag) = delivery.take_lag()
            {
                stats.delivery_lag.observe(lag);
            }
            delivered
        }
        ShardMessage::TopicConfirmed(topic) => {
            shard.update_subs(|subs, out| subs.topic_confirmed(&topic, out));
            0
        }
        ShardMessage::Replayed { to, answer } => {
            replayed(shard, &to, &answer);
            answer.events.len() as u64
        }
        ShardMessage::StreamLost(route) => {
            stream_lost(shard, &route);
            0
        }
        ShardMessage::BusState { ready } => {
            bus_state(shard, ready);
            0
        }
        ShardMessage::Control(control) => {
            shard.apply_control(&control);
            0
        }
        ShardMessage::Presence(news) => presence_news(shard, &news),
        ShardMessage::PresenceResync => {
            shard.update_subs(|subs, out| subs.presence_resync(out));
            0
        }
        ShardMessage::PresenceSnapshot { to, seq, json } => {
            presence_snapshot(shard, &to, seq, &json)
        }
        ShardMessage::Reply { to, user, json } => {
            reply_to(shard, to, &user, &json);
            0
        }
    }
}

/// Takes in what is waiting in the inbox, at most [`MAX_BATCH`] messages; returns how
/// many connections took frames.
fn take_in(shard: &Shard, inbox: &ShardInbox) -> u64 {
    let mut delivered = 0;
    for _ in 0..MAX_BATCH {
        match inbox.try_recv() {
            Ok(next) => delivered += handle(shard, next),
            Err(_) => break,
        }
    }
    delivered
}

/// Queues one delivery on every local connection it is for; returns how many took it.
pub(super) fn fan_out(shard: &Shard, delivery: &Delivery) -> u64 {
    let ctx = &shard.ctx;
    let v1 = Rc::new(delivery.v1.clone());
    let seed = delivery.seed.as_ref().map(|f| Rc::new(f.clone()));
    let conns = shard.table.borrow();
    let subs = shard.subs.borrow();
    let mut delivered = 0;
    // Connections waiting for a replay of this stream get these events in the replay.
    let holding = subs.holds_any();
    let held = |id| holding && subs.holds(&delivery.route, id);
    match &delivery.route {
        Route::Broadcast => {
            for (at, conn) in conns.iter() {
                if held(ConnId(at as u32)) {
                    continue;
                }
                let frame = match conn.mode() {
                    Mode::V1 => &v1,
                    Mode::Seed => seed.as_ref().unwrap_or(&v1),
                    Mode::Echo => continue,
                };
                delivered += u64::from(conn.enqueue(ctx, frame));
            }
        }
        Route::Topic(topic) => {
            for id in subs.topic_conns(topic) {
                if held(*id) {
                    continue;
                }
                if let Some(conn) = conns.get(id.0 as usize) {
                    delivered += u64::from(conn.enqueue(ctx, &v1));
                }
            }
        }
        Route::Direct(user) => {
            for id in subs.user_conns(user) {
                if let Some(conn) = conns.get(id.0 as usize) {
                    delivered += u64::from(conn.enqueue(ctx, &v1));
                }
            }
        }
    }
    delivered
}

/// The bus answered a replay request: a history page, or the replay a connection waits
/// for (its events, then `recovered` for a recovery).
fn replayed(shard: &Shard, to: &ReplayTo, answer: &ReplayAnswer) {
    let conns = shard.table.borrow();
    let Some(conn) = conns.get(to.conn.0 as usize).filter(|c| c.user() == &*to.user) else {
        return;
    };
    let topic = match &to.route {
        Route::Topic(topic) => Some(&**topic),
        Route::Broadcast | Route::Direct(_) => None,
    };
    if to.purpose == ReplayPurpose::History {
        let json = reply::history_json(topic.unwrap_or_default(), answer);
        conn.enqueue(&shard.ctx, &Rc::new(encode_text(&json)));
        return;
    }
    // An answer to an older request (unsubscribed, or subscribed again) is dropped.
    if !shard.update_subs(|subs, _| subs.replay_answered(&to.route, to.conn, to.token)) {
        return;
    }
    for event in &answer.events {
        let frame = match (conn.mode(), &event.seed) {
            (Mode::Seed, Some(seed)) => seed,
            _ => &event.v1,
        };
        conn.enqueue(&shard.ctx, &Rc::new(frame.clone()));
    }
    if to.purpose == ReplayPurpose::Recover {
        let json = reply::recovered_json(topic, answer.recovered);
        conn.enqueue(&shard.ctx, &Rc::new(encode_text(&json)));
    }
}

/// The bus lost events of `route` it could not replay: the local subscribers must
/// resync (`recovered: false`).
fn stream_lost(shard: &Shard, route: &Route) {
    let conns = shard.table.borrow();
    let subs = shard.subs.borrow();
    let lost = |topic| Rc::new(encode_text(&reply::recovered_json(topic, false)));
    match route {
        Route::Topic(topic) => {
            let frame = lost(Some(topic));
            for id in subs.topic_conns(topic) {
                if let Some(conn) = conns.get(id.0 as usize) {
                    conn.enqueue(&shard.ctx, &frame);
                }
            }
        }
        Route::Broadcast => {
            let frame = lost(None);
            for (_, conn) in conns.iter().filter(|(_, c)| c.mode() != Mode::Echo) {
                conn.enqueue(&shard.ctx, &frame);
            }
        }
        // The user's connections are told (they cannot ask for a replay of direct
        // messages: the app resyncs them as it resyncs a topic).
        Route::Direct(user) => {
            let frame = Rc::new(encode_text(&reply::direct_lost_json()));
            for id in subs.user_conns(user) {
                if let Some(conn) = conns.get(id.0 as usize)
                    && conn.mode() != Mode::Echo
                {
                    conn.enqueue(&shard.ctx, &frame);
                }
            }
        }
    }
}

/// The bus can (`true`) or cannot reach the other nodes: v1 clients are told.
fn bus_state(shard: &Shard, ready: bool) {
    let json = if ready { r#"{"type":"restored"}"# } else { r#"{"type":"degraded"}"# };
    let frame = Rc::new(encode_text(json));
    for (_, conn) in shard.table.borrow().iter().filter(|(_, c)| c.mode() == Mode::V1) {
        conn.enqueue(&shard.ctx, &frame);
    }
}

/// A topic's members arrived for one connection: sent, then the news held for its watch
/// (unless the watch ended or restarted meanwhile). Returns how many frames were queued.
fn presence_snapshot(shard: &Shard, to: &SnapshotTo, seq: u64, json: &str) -> u64 {
    let conns = shard.table.borrow();
    let Some(conn) = conns.get(to.conn.0 as usize).filter(|c| c.user() == &*to.user) else {
        return 0;
    };
    let mut then = Vec::new();
    if let Some(token) = to.watch {
        let arrived = |subs: &mut super::SubscriptionBook, out: &mut _| {
            subs.snapshot_arrived(&to.topic, to.conn, token, seq, &mut then, out)
        };
        if !shard.update_subs(arrived) {
            return 0;
        }
    }
    conn.enqueue(&shard.ctx, &Rc::new(encode_text(json)));
    for news in &then {
        conn.enqueue(&shard.ctx, &Rc::new(news.frame.clone()));
    }
    1 + then.len() as u64
}

/// A join or leave: to the topic's watchers that are live. Returns how many took it.
fn presence_news(shard: &Shard, news: &Arc<News>) -> u64 {
    let mut to = Vec::new();
    shard.update_subs(|subs, _| subs.presence_news(news, &mut to));
    if to.is_empty() {
        return 0;
    }
    let frame = Rc::new(news.frame.clone());
    let conns = shard.table.borrow();
    let mut delivered = 0;
    for id in to {
        if let Some(conn) = conns.get(id.0 as usize) {
            delivered += u64::from(conn.enqueue(&shard.ctx, &frame));
        }
    }
    delivered
}

/// Sends `json` to connection `to` if it is still `user`'s, or to a server-API waiter.
fn reply_to(shard: &Shard, to: Publisher, user: &str, json: &str) {
    let id = match to {
        Publisher::Conn(id) => id,
        Publisher::Waiter(ticket) => {
            shard.api_waiters.answer(ticket, json);
            return;
        }
    };
    let conns = shard.table.borrow();
    if let Some(conn) = conns.get(id.0 as usize)
        && conn.user() == user
    {
        conn.enqueue(&shard.ctx, &Rc::new(encode_text(json)));
    }
}
