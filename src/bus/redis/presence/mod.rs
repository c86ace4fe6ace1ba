//! Presence across the cluster: each node's members in Redis, crash-safe, and exactly
//! one webhook per cluster-level transition.
//!
//! Runs on: the bridge thread, as one task ([`run`]) fed by the bridge loop with the
//! shards' presence commands. This file is the fred/tokio shell: it runs what the core
//! decides and answers reads; it does I/O (Redis through the publisher connection, the
//! shards' inboxes, the webhook queue).
//!
//! - [`script`]: the Lua script that keeps every node's members in Redis and works out
//!   the cluster-level transitions atomically (joins and leaves published as news, the
//!   webhooks to send, delayed removals, dead nodes), and what its replies mean;
//! - [`core`]: this node's decisions, sans I/O — its own counts, what it writes and when,
//!   writing everything again after a loss, its heartbeat.

pub(crate) mod core;
pub(super) mod script;

use std::{cell::RefCell, collections::VecDeque, rc::Rc, sync::Arc, time::Instant};

use fred::{
    error::Error as RedisError,
    interfaces::{ClientLike, SetsInterface},
    prelude::Client,
    types::Value,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use self::core::{Effect, PresenceCore, ScriptArgs};
pub(crate) use self::script::{PRESENCE_SCRIPT, news_of};
use super::scripts::{PRESENCE_SHA, evalsha, is_noscript, replies};
use crate::{
    ids::ShardId,
    presence::{self, PresenceCommand, Query, SnapshotTo, webhook::WebhookQueue},
    stats::NodeStats,
    xshard::{ShardInboxes, ShardMessage},
};

/// This node's side of presence in Redis: the core's decisions carried out. See the
/// module docs.
pub(crate) struct RedisPresence {
    /// Every decision; never borrowed across an await.
    core: RefCell<PresenceCore>,
    /// Where the webhooks Redis returns go, when this node sends webhooks.
    webhooks: Option<WebhookQueue>,
    stats: Arc<NodeStats>,
    inboxes: ShardInboxes,
}

impl RedisPresence {
    /// Presence of node `node`.
    pub(crate) fn new(
        prefix: &str,
        node: &str,
        ttl: std::time::Duration,
        webhooks: Option<(WebhookQueue, std::time::Duration)>,
        stats: Arc<NodeStats>,
        inboxes: ShardInboxes,
    ) -> RedisPresence {
        let (webhooks, delay) = webhooks.map_or((None, None), |(q, d)| (Some(q), Some(d)));
        RedisPresence {
            core: RefCell::new(PresenceCore::new(prefix, node, ttl, delay, Instant::now())),
            webhooks,
            stats,
            inboxes,
        }
    }

    /// Runs the script with `args` (loading it first if Redis does not know it).
    async fn call(client: &Client, args: ScriptArgs) -> Result<Value, RedisError> {
        let all = with_sha(args);
        match client.custom::<Value, _>(evalsha(), all.clone()).await {
            Err(e) if is_noscript(&e) => {
                load(client).await;
                client.custom(evalsha(), all).await
            }
            other => other,
        }
    }

    /// Carries out the core's effects in order; what a reply leads to is done before the
    /// rest.
    async fn execute(&self, client: &Client, effects: Vec<Effect>) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            let next = match effect {
                Effect::ReadIndex(index) => {
                    let in_redis: Result<Vec<String>, RedisError> = client.smembers(&index).await;
                    if let Err(e) = &in_redis {
                        debug!(cause = %e.details(), "presence: cannot read this node's topics");
                    }
                    self.core.borrow_mut().handle_index(in_redis.ok())
                }
                Effect::Write { calls, whole } => {
                    let written = calls.len();
                    let ok = self.run_sets(client, calls).await;
                    if ok && whole {
                        debug!(topics = written, "presence: this node's members written to Redis");
                    }
                    self.core.borrow_mut().handle_written(whole, ok)
                }
                Effect::Beat => {
                    self.beat(client).await;
                    Vec::new()
                }
            };
            for effect in next.into_iter().rev() {
                queue.push_front(effect);
            }
        }
    }

    /// Answers a read (a snapshot or an API question) in a task of its own.
    fn answer(self: &Rc<Self>, client: &Client, command: PresenceCommand) {
        match command {
            PresenceCommand::Change { .. } => {}
            PresenceCommand::Snapshot(to) => {
                let (this, client) = (self.clone(), client.clone());
                tokio::task::spawn_local(async move { this.snapshot(&client, to).await });
            }
            PresenceCommand::Query { query, reply_to } => {
                let (this, client) = (self.clone(), client.clone());
                tokio::task::spawn_local(async move {
                    let json = this.query(&client, query).await;
                    let (shard, to) = reply_to;
                    let reply = ShardMessage::Reply { to, user: "".into(), json: json.into() };
                    crate::xshard::deliver_to(&this.inboxes, &[shard], reply).await;
                });
            }
        }
    }

    /// Runs `set` calls in order, in one pipeline; sends the webhooks they return.
    /// `false` when one failed (the node then writes everything again).
    async fn run_sets(&self, client: &Client, calls: Vec<ScriptArgs>) -> bool {
        if calls.is_empty() {
            return true;
        }
        let pipeline = client.pipeline();
        let mut queued = Vec::with_capacity(calls.len());
        for args in calls {
            let sent: Result<(), RedisError> = pipeline.custom(evalsha(), with_sha(args)).await;
            queued.push(sent);
        }
        let mut ok = true;
        for result in replies(pipeline, queued).await {
            match result {
                Ok(value) => self.send_webhooks(&value, 0),
                Err(e) => {
                    ok = false;
                    if is_noscript(&e) {
                        load(client).await;
                    }
                    debug!(cause = %e.details(), "presence: a write failed (everything is written again)");
                }
            }
        }
        ok
    }

    /// Offers the webhooks in a script's answer (`name, topic, user` triples from
    /// `skip`).
    fn send_webhooks(&self, value: &Value, skip: usize) {
        let Some(queue) = &self.webhooks else { return };
        let Value::Array(items) = value else { return };
        let time_ms = crate::clock::unix_now_ms();
        let texts: Vec<Option<String>> = items.iter().skip(skip).map(Value::as_string).collect();
        for event in script::webhooks_in(&texts, time_ms) {
            queue.offer(event);
        }
    }

    /// The heartbeat: see the script's module docs.
    async fn beat(&self, client: &Client) {
        let args = self.core.borrow_mut().beat_args(
            Instant::now(),
            self.stats.total(|s| &s.connections),
            self.stats.total(|s| &s.deliveries),
        );
        match Self::call(client, args).await {
            Ok(value) => {
                let first = match &value {
                    Value::Array(items) => items.first().map(Value::as_string),
                    _ => None,
                };
                let found = script::beat_found_node(first.as_slice());
                if self.core.borrow_mut().handle_beat(found) {
                    warn!(
                        "presence: this node had been declared dead (no heartbeat for presence_ttl); writing its members again"
                    );
                }
                self.send_webhooks(&value, 1);
            }
            Err(e) => debug!(cause = %e.details(), "presence heartbeat failed"),
        }
    }

    /// Answers a snapshot request.
    async fn snapshot(&self, client: &Client, to: Box<SnapshotTo>) {
        let args = self.core.borrow().snapshot_args(&to.topic);
        let (seq, members) = match Self::call(client, args).await {
            Ok(Value::Array(items)) => {
                let texts: Vec<String> = items.iter().filter_map(Value::as_string).collect();
                script::snapshot_of(&texts)
            }
            // Redis away: the snapshot of this node's own members.
            Ok(_) | Err(_) => (0, self.core.borrow().own_members(&to.topic)),
        };
        let json = presence::snapshot_json(&to.topic, &members).into_boxed_str();
        let shard: ShardId = to.shard;
        let message = ShardMessage::PresenceSnapshot { to, seq, json };
        crate::xshard::deliver_to(&self.inboxes, &[shard], message).await;
    }

    /// Answers an API question.
    async fn query(&self, client: &Client, query: Query) -> String {
        let args = self.core.borrow().query_args(&query);
        let Ok(Value::Array(items)) = Self::call(client, args).await else {
            return script::unavailable_json();
        };
        let texts: Vec<String> = items.iter().filter_map(Value::as_string).collect();
        script::query_answer(&query, &texts)
    }
}

/// `EVALSHA`'s arguments: the script's SHA, no keys, then `args`.
fn with_sha(args: ScriptArgs) -> Vec<String> {
    let mut all = Vec::with_capacity(args.len() + 2);
    all.push(PRESENCE_SHA.clone());
    all.push("0".to_owned());
    all.extend(args);
    all
}

/// Loads the script into Redis's script cache.
pub(crate) async fn load(client: &Client) {
    use fred::interfaces::LuaInterface;
    if let Err(e) = client.script_load::<String, _>(PRESENCE_SCRIPT).await {
        debug!(cause = %e.details(), "SCRIPT LOAD of the presence script failed");
    }
}

/// Commands from the bridge loop to the presence task.
#[derive(Debug)]
pub(crate) enum ToPresence {
    /// A shard's command.
    Command(PresenceCommand),
    /// Redis (re)connected: write everything again.
    Reconnected,
}

/// The presence task: applies commands, writes changes as soon as the queue is empty,
/// beats every fifth of the TTL. Ends when the bridge drops its sender.
pub(crate) async fn run(
    presence: Rc<RedisPresence>,
    client: Client,
    mut rx: mpsc::UnboundedReceiver<ToPresence>,
) {
    let mut ticker = tokio::time::interval(presence.core.borrow().beat_every());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                let mut next = Some(message);
                let mut reads = Vec::new();
                // Everything already queued, then one write, then the reads.
                while let Some(message) = next.take() {
                    let mut core = presence.core.borrow_mut();
                    match message {
                        ToPresence::Command(command) => reads.extend(core.handle_command(command)),
                        ToPresence::Reconnected => core.handle_reconnected(),
                    }
                    next = rx.try_recv().ok();
                }
                let effects = presence.core.borrow_mut().handle_drained(client.is_connected());
                presence.execute(&client, effects).await;
                for read in reads {
                    presence.answer(&client, read);
                }
            }
            _ = ticker.tick() => {
                let effects = presence.core.borrow_mut().handle_tick(client.is_connected());
                presence.execute(&client, effects).await;
            }
        }
    }
}
