//! The shard end of the bus: drains the bus's messages and fans deliveries out to local
//! connections.
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

use std::rc::Rc;

use super::Shard;
use crate::conn::Mode;
use crate::ids::ConnId;
use crate::{
    ids::Route,
    stats::ShardStats,
    xshard::{Delivery, ShardInbox, ShardMessage},
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
            shard.topic_confirmed(&topic);
            0
        }
        ShardMessage::Replayed { to, answer } => {
            shard.replayed(&to, &answer);
            answer.events.len() as u64
        }
        ShardMessage::StreamLost(route) => {
            shard.stream_lost(&route);
            0
        }
        ShardMessage::BusState { ready } => {
            shard.bus_state(ready);
            0
        }
        ShardMessage::Control(control) => {
            shard.apply_control(&control);
            0
        }
        ShardMessage::Presence(news) => shard.presence_news(&news),
        ShardMessage::PresenceResync => {
            shard.presence_resync();
            0
        }
        ShardMessage::PresenceSnapshot { to, seq, json } => {
            shard.presence_snapshot(&to, seq, &json)
        }
        ShardMessage::Reply { to, user, json } => {
            shard.reply_to(to, &user, &json);
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
    let mut delivered = 0;
    // Connections waiting for a replay of this stream get these events in the replay.
    let holding = !shard.recoveries.borrow().is_empty();
    let held = |id| holding && shard.holds(&delivery.route, id);
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
            let hub = shard.hub.borrow();
            for id in hub.topic_conns(topic) {
                if held(*id) {
                    continue;
                }
                if let Some(conn) = conns.get(id.0 as usize) {
                    delivered += u64::from(conn.enqueue(ctx, &v1));
                }
            }
        }
        Route::Direct(user) => {
            let hub = shard.hub.borrow();
            for id in hub.user_conns(user) {
                if let Some(conn) = conns.get(id.0 as usize) {
                    delivered += u64::from(conn.enqueue(ctx, &v1));
                }
            }
        }
    }
    delivered
}
