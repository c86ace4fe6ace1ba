//! Users' connection counts across the cluster (`max_connections_per_user`).
//!
//! Runs on: the bridge thread.
//!
//! Each node keeps its own counts in a hash `<prefix>conns:<node>` (user → connections
//! on that node) and says it is alive in the sorted set `<prefix>nodes` (score: the
//! time of its last heartbeat, in ms). An upgrade asks [`ADMIT_SCRIPT`], which sums the
//! user's count over the live nodes and, under the limit, counts the connection on this
//! node — atomically, so two nodes admitting at once cannot both take the last place. A
//! node that dies stops refreshing its score and its hash's expiry: its connections stop
//! counting within [`UserCounts::ttl`]. After a reconnect (Redis may have restarted empty)
//! the node writes its hash again from its own counts.

use std::{cell::RefCell, collections::HashMap, time::Duration};

use fred::{
    interfaces::{HashesInterface, KeysInterface, LuaInterface, SortedSetsInterface},
    prelude::Client,
    types::Value,
};
use tracing::debug;

/// Admits one connection of a user: `KEYS[1]` the live-nodes set, `KEYS[2]` this node's
/// hash; `ARGV`: user, limit, now (ms), oldest live heartbeat (ms), prefix of the nodes'
/// hashes, this node, hash expiry (ms). Returns the user's new count, or minus its
/// current count when it is at the limit.
pub(crate) const ADMIT_SCRIPT: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[6])
local total = 0
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[4], '+inf')) do
  total = total + (tonumber(redis.call('HGET', ARGV[5] .. node, ARGV[1])) or 0)
end
if total >= tonumber(ARGV[2]) then
  return -total
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return total + 1
"#;

/// This node's counted connections per user, and the keys that hold them in Redis.
#[derive(Debug)]
pub(crate) struct UserCounts {
    counts: RefCell<HashMap<Box<str>, u64>>,
    node: String,
    nodes_key: String,
    hash_prefix: String,
    own_hash: String,
    /// How long a node's counts outlive its last heartbeat.
    ttl: Duration,
}

/// What an admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Counted: the user now has this many connections.
    Counted(u64),
    /// At the limit: the user has this many.
    Refused(u64),
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl UserCounts {
    /// The counts of node `node`, with channel prefix `prefix`; a dead node's counts stop
    /// counting `ttl` after its last heartbeat.
    pub(crate) fn new(prefix: &str, node: &str, ttl: Duration) -> UserCounts {
        UserCounts {
            counts: RefCell::default(),
            node: node.to_owned(),
            nodes_key: format!("{prefix}nodes"),
            hash_prefix: format!("{prefix}conns:"),
            own_hash: format!("{prefix}conns:{node}"),
            ttl,
        }
    }

    /// Asks Redis to admit one connection of `user` under `limit`.
    ///
    /// # Errors
    /// Redis's error (the caller admits without counting).
    pub(crate) async fn admit(
        &self,
        client: &Client,
        user: &str,
        limit: u64,
    ) -> Result<Admission, String> {
        let now = crate::clock::unix_now_ms();
        let args = vec![
            user.to_owned(),
            limit.to_string(),
            now.to_string(),
            now.saturating_sub(ms(self.ttl)).to_string(),
            self.hash_prefix.clone(),
            self.node.clone(),
            ms(self.ttl * 2).to_string(),
        ];
        let keys = vec![self.nodes_key.clone(), self.own_hash.clone()];
        let answer: i64 =
            client.eval(ADMIT_SCRIPT, keys, args).await.map_err(|e| e.details().to_string())?;
        if answer > 0 {
            *self.counts.borrow_mut().entry(user.into()).or_insert(0) += 1;
            Ok(Admission::Counted(answer as u64))
        } else {
            Ok(Admission::Refused(answer.unsigned_abs()))
        }
    }

    /// A counted connection of `user` closed.
    pub(crate) async fn release(&self, client: &Client, user: &str) {
        {
            let mut counts = self.counts.borrow_mut();
            match counts.get_mut(user) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    counts.remove(user);
                }
                None => return, // not counted here (admitted while Redis was away)
            }
        }
        let left: Result<i64, _> = client.hincrby(&self.own_hash, user, -1).await;
        match left {
            Ok(n) if n <= 0 => {
                let _: Result<Value, _> = client.hdel(&self.own_hash, user).await;
            }
            Ok(_) => {}
            Err(e) => debug!(cause = %e.details(), "could not release a user's connection count"),
        }
    }

    /// The node is alive: its score and its hash's expiry are refreshed; nodes silent for
    /// ten times the TTL leave the set.
    pub(crate) async fn heartbeat(&self, client: &Client) {
        let now = crate::clock::unix_now_ms();
        let pipeline = client.pipeline();
        let _: Result<Value, _> = pipeline
            .zadd(&self.nodes_key, None, None, false, false, (now as f64, self.node.as_str()))
            .await;
        let _: Result<Value, _> =
            pipeline.pexpire(&self.own_hash, ms(self.ttl * 2) as i64, None).await;
        let stale = now.saturating_sub(ms(self.ttl) * 10) as f64;
        let _: Result<Value, _> =
            pipeline.zremrangebyscore(&self.nodes_key, f64::NEG_INFINITY, stale).await;
        let _: Result<Vec<Value>, _> = pipeline.all().await;
    }

    /// After a reconnect: this node's hash is written again from its own counts (Redis
    /// may have restarted empty).
    pub(crate) async fn rewrite(&self, client: &Client) {
        let entries: Vec<(String, String)> =
            self.counts.borrow().iter().map(|(u, n)| (u.to_string(), n.to_string())).collect();
        let _: Result<Value, _> = client.del(&self.own_hash).await;
        for chunk in entries.chunks(1000) {
            let _: Result<Value, _> = client.hset(&self.own_hash, chunk.to_vec()).await;
        }
        self.heartbeat(client).await;
    }
}
