//! Cluster-wide commands and counts through Redis: a cluster command (a `disconnect`,
//! with its block) published on the control channel and stored in the blocks hash, the
//! blocks read again when the node (re)connects, and users' connections admitted or
//! released against their cluster-wide count.
//!
//! Runs on: the bridge thread, in tasks the bridge's loop (and its subscription task)
//! spawns. Does I/O: Redis through the publisher connection, the shards' inboxes; the
//! counting itself is in [`user_count`].

use std::collections::HashMap;

use fred::{
    interfaces::{HashesInterface, PubsubInterface},
    prelude::Client,
    types::Value,
};
use tracing::debug;

use super::{Shared, user_count};
use crate::{
    ids::{Publisher, ShardId},
    protocol::command::CommandError,
    stats::BridgeStats,
    xshard::{ClusterControl, ShardMessage},
};

/// Publishes a cluster command on the control channel (every node, this one included,
/// applies it when it comes back); a `disconnect` with a block is also stored in the
/// blocks hash, so that nodes that were away or start later refuse the user too. The
/// API request is answered `done`, or `unavailable`.
pub(super) async fn send_control(
    shared: &Shared,
    publisher: &Client,
    control: ClusterControl,
    reply_to: Option<(ShardId, Publisher)>,
) {
    let result: Result<(), String> = async {
        if !shared.ready() {
            return Err("Redis is unavailable".to_owned());
        }
        let json = serde_json::to_string(&control).map_err(|e| e.to_string())?;
        let ClusterControl::Disconnect { user, until_ms, .. } = &control;
        if *until_ms > crate::clock::unix_now_ms() {
            let _: Value = publisher
                .hset(shared.channels.blocks(), (user.as_str(), json.as_str()))
                .await
                .map_err(|e| e.details().to_string())?;
        }
        let _: Value = publisher
            .publish(shared.channels.control(), json)
            .await
            .map_err(|e| e.details().to_string())?;
        // This node's shards act before the caller is answered, not when the command
        // comes back through Redis: an upgrade of the user right after the answer is
        // refused here too. (Acting twice is harmless: closing is idempotent and a block
        // keeps the later end.)
        shared.apply_everywhere(control.clone()).await;
        Ok(())
    }
    .await;
    let Some((shard, to)) = reply_to else { return };
    let json = match result {
        Ok(()) => crate::bus::DONE_JSON.into(),
        Err(why) => {
            BridgeStats::add(&shared.bridge().publish_errors, 1);
            CommandError { code: "unavailable", message: why }.to_json().into_boxed_str()
        }
    };
    shared.deliver(&[shard], ShardMessage::Reply { to, user: "".into(), json }).await;
}

/// Admits or releases one connection of `user` (`max_connections_per_user`). While
/// Redis is away an upgrade is admitted without being counted.
pub(super) async fn count_user(
    shared: &Shared,
    publisher: &Client,
    user: &str,
    change: crate::bus::UserCount,
) {
    let Some(users) = &shared.users else { return };
    match change {
        crate::bus::UserCount::Release => users.release(publisher, user).await,
        crate::bus::UserCount::Admit { limit, reply_to: (shard, to) } => {
            let json = if shared.ready() {
                match users.admit(publisher, user, limit).await {
                    Ok(user_count::Admission::Counted(_)) => crate::bus::admitted_json(true),
                    Ok(user_count::Admission::Refused(n)) => crate::bus::refused_json(n),
                    Err(why) => {
                        debug!(cause = %why, "could not count a user's connection: admitted uncounted");
                        crate::bus::admitted_json(false)
                    }
                }
            } else {
                crate::bus::admitted_json(false)
            };
            let reply = ShardMessage::Reply { to, user: "".into(), json: json.into() };
            shared.deliver(&[shard], reply).await;
        }
    }
}

/// Reads the blocks hash and applies every block still running (expired ones are
/// removed): a node that starts, or comes back, refuses blocked users at once.
pub(super) async fn load_blocks(shared: &Shared, publisher: &Client) {
    let blocks: Result<HashMap<String, String>, _> =
        publisher.hgetall(shared.channels.blocks()).await;
    let blocks = match blocks {
        Ok(blocks) => blocks,
        Err(e) => {
            debug!(cause = %e.details(), "could not read the blocked users");
            return;
        }
    };
    let now = crate::clock::unix_now_ms();
    let mut expired = Vec::new();
    for (user, json) in blocks {
        match serde_json::from_str::<ClusterControl>(&json) {
            Ok(control @ ClusterControl::Disconnect { until_ms, .. }) if until_ms > now => {
                shared.apply_everywhere(control).await;
            }
            _ => expired.push(user),
        }
    }
    if !expired.is_empty() {
        let _: Result<Value, _> = publisher.hdel(shared.channels.blocks(), expired).await;
    }
}
