//! Heartbeats: WebSocket Pings, Pong deadlines, and the seed protocol's
//! `{"type":"ping"}` text.
//!
//! Runs on: its shard, as one task that sweeps the connection table on a tick (instead
//! of one timer per connection, which would cost memory per idle socket). Each
//! connection's schedule starts at its upgrade, so pings spread out over the interval
//! instead of bursting. The frames are encoded once per shard.
//!
//! With authentication on, the same sweep applies token expiry (`conn::auth`): a v1
//! client is told `token_expired`, and closed with 1008 when the grace has passed; a
//! subscription whose subscription token expired ends (`unsubscribed` with a reason).
//!
//! A connection whose Pong has not arrived `pong_timeout` after our Ping is closed with
//! 1008: this is how a peer that vanished without a FIN is detected.

use std::{rc::Rc, sync::atomic::Ordering, time::Duration};

use glommio::timer::Timer;

use super::Shard;
use crate::stats::ShardStats;

/// Finest and coarsest sweep period.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);
/// Coarsest sweep period with authentication on: token expiries are acted on within it.
const TOKEN_TICK: Duration = Duration::from_millis(250);

/// Sweeps forever (until the task is dropped at shutdown).
pub(super) async fn run(shard: Rc<Shard>) {
    let timing = shard.ctx.timing;
    let ping = timing.ping_interval;
    let shortest = [ping, ping.map(|_| timing.pong_timeout), timing.app_ping_interval]
        .into_iter()
        .flatten()
        .min();
    // The tick also samples queued bytes for /healthz, so it runs even with heartbeats off.
    let mut tick = shortest.map_or(MAX_TICK, |d| (d / 4).clamp(MIN_TICK, MAX_TICK));
    let tokens = shard.ctx.verifier.is_some();
    if tokens {
        tick = tick.min(TOKEN_TICK);
    }
    // The close of an expired token is due `grace` after its expiry; asking for it one
    // tick early keeps it within the grace whatever the phase of the sweep.
    let grace_ms = shard.ctx.cfg.token_expiry_grace.0.saturating_sub(tick).as_millis() as u64;
    loop {
        Timer::new(tick).await;
        let now = std::time::Instant::now();
        let stats = shard.ctx.stats();
        ShardStats::add(&stats.bytes_out, crate::conn::out_queue::take_bytes_written());
        let now_ms = crate::clock::unix_now_ms();
        let mut queued = 0u64;
        let mut timeouts = 0u64;
        let mut expired = 0u64;
        let mut ended = Vec::new();
        shard.table.for_each(|conn| {
            queued += conn.state().out().bytes() as u64;
            timeouts += u64::from(conn.handle_heartbeat(&shard.ctx, now));
            if tokens {
                expired += u64::from(conn.handle_token_expiry(&shard.ctx, now_ms, grace_ms));
                for topic in conn.take_expired_grants(now_ms) {
                    ended.push((conn.clone(), topic));
                }
            }
        });
        // Outside the table's borrow: unsubscribing changes the shard's indexes.
        for (conn, topic) in ended {
            shard.end_expired_subscription(&conn, &topic);
        }
        shard.flush_dirty();
        stats.queued_bytes.store(queued, Ordering::Relaxed);
        ShardStats::add(&stats.heartbeat_timeouts, timeouts);
        ShardStats::add(&stats.token_expiry_closes, expired);
    }
}
