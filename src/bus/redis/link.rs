//! The bridge's link to Redis carried out: what [`Readiness`] decided at a heartbeat tick
//! (a readiness change logged, published in the stats and told to every shard; a forced
//! reconnect; the node's heartbeat through Redis and its users' counts), and connection
//! errors logged as [`ErrorLog`] says.
//!
//! Runs on: the bridge thread, called by the bridge's loop (`run`). Does I/O: the shards'
//! inboxes, Redis through both connections (in tasks of their own, so that a slow Redis
//! does not hold up the loop).
//!
//! [`Readiness`]: super::readiness::Readiness

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use fred::{
    interfaces::{ClientLike, PubsubInterface},
    prelude::{Client, Error as RedisError},
    types::Value,
};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::{
    Shared,
    readiness::{ErrorLog, Tick},
};
use crate::{stats::BridgeStats, xshard::ShardMessage};

/// Carries out one heartbeat tick; `timeout`: the heartbeat's (for the log).
pub(super) async fn on_tick(
    shared: &Rc<Shared>,
    tick: Tick,
    (subscriber, publisher): (&Client, &Client),
    timeout: Duration,
) {
    BridgeStats::set(&shared.bridge().connected, tick.connected);
    if let Some(ready) = tick.became {
        if ready {
            info!("Redis bridge ready (heartbeat through Redis)");
        } else {
            warn!(
                connected = tick.connected,
                "Redis bridge not ready: publishes stay on this node"
            );
        }
        BridgeStats::set(&shared.bridge().ready, ready);
        if ready {
            BridgeStats::set(&shared.bridge().ever_ready, true);
        }
        shared.apply_to_all(ShardMessage::BusState { ready }).await;
    }
    if tick.force_reconnect {
        warn!(timeout = ?timeout, "Redis heartbeat lost: forcing a reconnect");
        for client in [subscriber.clone(), publisher.clone()] {
            tokio::task::spawn_local(async move {
                let _ = client.force_reconnection().await;
            });
        }
    }
    if !tick.beat {
        return;
    }
    if shared.users.is_some() {
        let (shared, publisher) = (shared.clone(), publisher.clone());
        tokio::task::spawn_local(async move {
            if let Some(users) = &shared.users {
                users.heartbeat(&publisher).await;
            }
        });
    }
    let (publisher, channel) = (publisher.clone(), shared.channels.heartbeat().to_owned());
    let beat = shared.stats.node.to_string();
    let shared = shared.clone();
    tokio::task::spawn_local(async move {
        let sent = Instant::now();
        let answer: Result<Value, _> = publisher.publish(channel, beat).await;
        if answer.is_ok() {
            shared.bridge().round_trip.observe(sent.elapsed());
        }
    });
}

/// Logs a Redis connection error when `log` says it is a new reason.
pub(super) fn log_error(
    error: Result<(RedisError, Option<fred::types::config::Server>), RecvError>,
    connection: &str,
    log: &mut ErrorLog,
) {
    let Ok((error, _server)) = error else { return };
    let reason = error.details();
    if log.is_new(reason) {
        warn!(connection, cause = %reason, "Redis connection error (reconnecting)");
    }
}
