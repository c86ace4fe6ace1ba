//! Heartbeats: WebSocket Pings, Pong deadlines, and the seed protocol's
//! `{"type":"ping"}` text.
//!
//! Runs on: its shard, as one task that sweeps the connection table on a tick (instead
//! of one timer per connection, which would cost memory per idle socket). Each
//! connection's schedule starts at its upgrade, so pings spread out over the interval
//! instead of bursting. The frames are encoded once per shard.
//!
//! A connection whose Pong has not arrived `pong_timeout` after our Ping is closed with
//! 1008: this is how a peer that vanished without a FIN is detected.

use std::{rc::Rc, sync::atomic::Ordering, time::Duration};

use glommio::timer::Timer;

use super::Shard;
use crate::{conn::Phase, frame::close_code, xshard::ShardStats};

/// Finest and coarsest sweep period.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

/// Sweeps forever (until the task is dropped at shutdown).
pub(super) async fn run(shard: Rc<Shard>) {
    let cfg = &shard.cfg;
    let ping = cfg.ping_interval.enabled();
    let pong_timeout = cfg.pong_timeout.0;
    let app_ping = cfg.app_ping_interval.enabled();
    let shortest = [ping, ping.map(|_| pong_timeout), app_ping].into_iter().flatten().min();
    // The tick also samples queued bytes for /healthz, so it runs even with heartbeats off.
    let tick = shortest.map_or(MAX_TICK, |d| (d / 4).clamp(MIN_TICK, MAX_TICK));
    loop {
        Timer::new(tick).await;
        let now = std::time::Instant::now();
        let mut queued = 0u64;
        let mut timeouts = 0u64;
        for (_, conn) in shard.conns.borrow().iter() {
            queued += conn.out.borrow().bytes() as u64;
            if conn.phase.get() != Phase::Open {
                continue;
            }
            let mut hb = conn.heartbeat.get();
            if let Some(interval) = ping {
                match hb.awaiting_pong_since {
                    Some(since) if now.duration_since(since) >= pong_timeout => {
                        timeouts += 1;
                        conn.begin_close(
                            &shard,
                            close_code::POLICY_VIOLATION,
                            "heartbeat timeout: no pong",
                        );
                        continue;
                    }
                    Some(_) => {}
                    None if now >= hb.next_ping => {
                        conn.enqueue(&shard, &shard.ping_frame);
                        hb.awaiting_pong_since = Some(now);
                        hb.next_ping = now + interval;
                    }
                    None => {}
                }
            }
            if let Some(interval) = app_ping
                && now >= hb.next_app_ping
            {
                conn.enqueue(&shard, &shard.app_ping_frame);
                hb.next_app_ping = now + interval;
            }
            conn.heartbeat.set(hb);
        }
        shard.flush_dirty();
        let stats = shard.stats();
        stats.queued_bytes.store(queued, Ordering::Relaxed);
        ShardStats::add(&stats.heartbeat_timeouts, timeouts);
    }
}
