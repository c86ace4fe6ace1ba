//! Presence across the cluster: each node's members in Redis, crash-safe, and exactly
//! one webhook per cluster-level transition.
//!
//! Runs on: the bridge thread, as one task ([`run`]) fed by the bridge loop with the
//! shards' presence commands.
//!
//! **Keys** (all under the channel prefix `p`):
//! - `p presence:topic:<T>` — hash user → connections, cluster-wide (the members);
//! - `p presence:node:<N>|<T>` — hash user → connections on node N (its contribution);
//! - `p presence:index:<N>` — set of the topics node N contributes to;
//! - `p presence:occupancy` — hash topic → subscribed connections, cluster-wide;
//! - `p presence:seq:<T>` — the number of the topic's latest news (seeded from Redis's
//!   clock in microseconds, so it never goes back after a loss);
//! - `p presence:nodes` — sorted set node → its last presence heartbeat (Redis time, ms);
//! - `p presence:stats` — hash node → its load (JSON) for `/api/stats`;
//! - `p presence:pending` — sorted set of delayed webhooks (`v|<T>`, `m|<T>|<U>`) → due
//!   time.
//!
//! Everything is done by one Lua script ([`PRESENCE_SCRIPT`]), atomically: a node sets
//! its own counts (`set`), and Redis works out the cluster-level transitions, publishes
//! the joins and leaves on the topic's channel (`{"type":"join","topic":T,"user":U,
//! "seq":N}`), and returns the webhooks to send at once. A removal is not sent: it is
//! put in `pending` with its due time, and an addition of the same topic (or member)
//! before then takes it out and is not sent either — on whatever node either happens.
//! Every node's heartbeat (`beat`, every fifth of `presence_ttl`) refreshes its place in
//! `nodes`, removes the nodes silent for `presence_ttl` (their members leave, with news
//! and delayed webhooks), and pops the due webhooks: whoever pops one sends it, once.
//!
//! The node keeps its own counts ([`Tally`]): after every (re)connect, after a write
//! that failed, and when its heartbeat finds it was declared dead, it writes them all
//! again (`set` with `replace`), which also removes what a previous life of the node
//! left behind.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use fred::{
    error::Error as RedisError,
    interfaces::{ClientLike, SetsInterface},
    prelude::Client,
    types::Value,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    ids::ShardId,
    presence::{
        self, Member, NodeLoad, Occupancy, PresenceCommand, Query, RateMeter, SnapshotTo, Tally,
        webhook::{EventName, WebhookEvent, WebhookQueue},
    },
    stats::NodeStats,
    xshard::{ShardInboxes, ShardMessage},
};

/// The presence script; `ARGV[1]` is the operation, `ARGV[2]` the prefix, `ARGV[3]` the
/// vacate delay in ms (`-1`: this node sends no webhooks, so none are kept).
pub(crate) const PRESENCE_SCRIPT: &str = r#"
local op, p, delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local hooks = delay >= 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes_key = p .. 'presence:nodes'
local pending_key = p .. 'presence:pending'
local occupancy_key = p .. 'presence:occupancy'
local stats_key = p .. 'presence:stats'
local function users_key(topic) return p .. 'presence:topic:' .. topic end
local function mine_key(node, topic) return p .. 'presence:node:' .. node .. '|' .. topic end
local function index_key(node) return p .. 'presence:index:' .. node end
local out = {}
local function emit(name, topic, user)
  out[#out + 1] = name
  out[#out + 1] = topic
  out[#out + 1] = user or ''
end
local function news(topic, kind, user)
  local sk = p .. 'presence:seq:' .. topic
  if redis.call('EXISTS', sk) == 0 then
    redis.call('SET', sk, string.format('%d', now * 1000))
  end
  local seq = redis.call('INCR', sk)
  redis.call('EXPIRE', sk, 86400)
  redis.call('PUBLISH', p .. 'topic:' .. topic, '{"type":"' .. kind .. '","topic":' ..
    cjson.encode(topic) .. ',"user":' .. cjson.encode(user) .. ',"seq":' .. string.format('%d', seq) .. '}')
end
local function set_count(node, topic, user, count)
  local mk = mine_key(node, topic)
  local old = tonumber(redis.call('HGET', mk, user)) or 0
  if count == old then return end
  local diff = count - old
  if count > 0 then redis.call('HSET', mk, user, count) else redis.call('HDEL', mk, user) end
  local uk = users_key(topic)
  local was_occupied = redis.call('EXISTS', uk) == 1
  local total = redis.call('HINCRBY', uk, user, diff)
  if redis.call('HINCRBY', occupancy_key, topic, diff) <= 0 then
    redis.call('HDEL', occupancy_key, topic)
  end
  if total <= 0 then
    redis.call('HDEL', uk, user)
    if total - diff > 0 then
      news(topic, 'leave', user)
      if hooks then redis.call('ZADD', pending_key, now + delay, 'm|' .. topic .. '|' .. user) end
      if redis.call('EXISTS', uk) == 0 then
        redis.call('HDEL', occupancy_key, topic)
        if hooks then redis.call('ZADD', pending_key, now + delay, 'v|' .. topic) end
      end
    end
  elseif total == diff then
    if hooks and not was_occupied and redis.call('ZREM', pending_key, 'v|' .. topic) == 0 then
      emit('channel_occupied', topic)
    end
    news(topic, 'join', user)
    if hooks and redis.call('ZREM', pending_key, 'm|' .. topic .. '|' .. user) == 0 then
      emit('member_added', topic, user)
    end
  end
end
local function remove_node(node)
  for _, topic in ipairs(redis.call('SMEMBERS', index_key(node))) do
    local mk = mine_key(node, topic)
    for _, user in ipairs(redis.call('HKEYS', mk)) do set_count(node, topic, user, 0) end
    redis.call('DEL', mk)
  end
  redis.call('DEL', index_key(node))
  redis.call('ZREM', nodes_key, node)
  redis.call('HDEL', stats_key, node)
end
if op == 'set' then
  local node, topic, replace = ARGV[4], ARGV[5], ARGV[6] == '1'
  local listed = {}
  for i = 7, #ARGV, 2 do
    listed[ARGV[i]] = true
    set_count(node, topic, ARGV[i], tonumber(ARGV[i + 1]))
  end
  if replace then
    for _, user in ipairs(redis.call('HKEYS', mine_key(node, topic))) do
      if not listed[user] then set_count(node, topic, user, 0) end
    end
  end
  if redis.call('EXISTS', mine_key(node, topic)) == 1 then
    redis.call('SADD', index_key(node), topic)
  else
    redis.call('SREM', index_key(node), topic)
  end
  return out
elseif op == 'beat' then
  local node, ttl = ARGV[4], tonumber(ARGV[5])
  local known = redis.call('ZSCORE', nodes_key, node)
  redis.call('ZADD', nodes_key, now, node)
  redis.call('HSET', stats_key, node, ARGV[6])
  out[1] = known and '1' or '0'
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes_key, '-inf', now - ttl, 'LIMIT', 0, 16)) do
    remove_node(dead)
  end
  for _, item in ipairs(redis.call('ZRANGEBYSCORE', pending_key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))) do
    redis.call('ZREM', pending_key, item)
    local rest = string.sub(item, 3)
    if string.sub(item, 1, 1) == 'v' then
      emit('channel_vacated', rest)
    else
      local bar = string.find(rest, '|', 1, true)
      if bar then emit('member_removed', string.sub(rest, 1, bar - 1), string.sub(rest, bar + 1)) end
    end
  end
  return out
elseif op == 'snapshot' then
  local topic = ARGV[4]
  local res = { redis.call('GET', p .. 'presence:seq:' .. topic) or '0' }
  for _, v in ipairs(redis.call('HGETALL', users_key(topic))) do res[#res + 1] = v end
  return res
elseif op == 'channels' then
  local prefix = ARGV[4]
  local all = redis.call('HGETALL', occupancy_key)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #prefix) == prefix then
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
      out[#out + 1] = tostring(redis.call('HLEN', users_key(all[i])))
    end
  end
  return out
elseif op == 'channel' then
  local topic = ARGV[4]
  return { redis.call('HGET', occupancy_key, topic) or '0', tostring(redis.call('HLEN', users_key(topic))) }
elseif op == 'users' then
  return redis.call('HGETALL', users_key(ARGV[4]))
elseif op == 'stats' then
  local alive = redis.call('ZRANGEBYSCORE', nodes_key, now - tonumber(ARGV[4]), '+inf')
  for _, node in ipairs(alive) do
    local load = redis.call('HGET', stats_key, node)
    if load then out[#out + 1] = load end
  end
  return out
end
return redis.error_reply('unknown presence op')
"#;

/// Most delayed webhooks one heartbeat pops.
const MAX_DUE_PER_BEAT: usize = 500;

/// A news payload on a topic channel (made by [`PRESENCE_SCRIPT`]).
#[derive(Debug, serde::Deserialize)]
struct WireNews {
    r#type: presence::NewsKind,
    user: String,
    seq: u64,
}

/// The news in a payload on `topic`'s channel, if it is one (`{"type":"join",...}` or
/// `{"type":"leave",...}`; anything else is an event).
pub(crate) fn news_of(topic: &str, payload: &str) -> Option<presence::News> {
    if !(payload.starts_with(r#"{"type":"join","#) || payload.starts_with(r#"{"type":"leave","#)) {
        return None;
    }
    let wire: WireNews = serde_json::from_str(payload).ok()?;
    if !crate::protocol::limits::is_valid_user_id(&wire.user) {
        return None;
    }
    Some(presence::News::new(wire.r#type, topic, &wire.user, wire.seq))
}

/// This node's side of presence in Redis. See the module docs.
pub(crate) struct RedisPresence {
    prefix: String,
    node: String,
    ttl: Duration,
    /// The vacate delay, when this node sends webhooks.
    delay: Option<Duration>,
    webhooks: Option<WebhookQueue>,
    stats: Arc<NodeStats>,
    inboxes: ShardInboxes,
    /// This node's members.
    tally: RefCell<Tally>,
    /// Users whose count changed since the last write, per topic.
    dirty: RefCell<HashMap<Box<str>, HashSet<Box<str>>>>,
    /// Write everything again at the next chance.
    resync: Cell<bool>,
    /// A heartbeat has registered the node (so a later one that finds it missing means
    /// it was declared dead).
    registered: Cell<bool>,
    meter: RefCell<RateMeter>,
}

impl RedisPresence {
    /// Presence of node `node`.
    pub(crate) fn new(
        prefix: &str,
        node: &str,
        ttl: Duration,
        webhooks: Option<(WebhookQueue, Duration)>,
        stats: Arc<NodeStats>,
        inboxes: ShardInboxes,
    ) -> RedisPresence {
        let (webhooks, delay) = webhooks.map_or((None, None), |(q, d)| (Some(q), Some(d)));
        RedisPresence {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            ttl,
            delay,
            webhooks,
            stats,
            inboxes,
            tally: RefCell::default(),
            dirty: RefCell::default(),
            resync: Cell::new(true),
            registered: Cell::new(false),
            meter: RefCell::new(RateMeter::new(Instant::now(), 0)),
        }
    }

    fn args(&self, op: &str) -> Vec<String> {
        let delay = self.delay.map_or(-1, |d| d.as_millis() as i64);
        vec![op.to_owned(), self.prefix.clone(), delay.to_string()]
    }

    /// Runs the script with `args` (loading it first if Redis does not know it).
    async fn call(client: &Client, args: Vec<String>) -> Result<Value, RedisError> {
        let mut all = Vec::with_capacity(args.len() + 2);
        all.push(PRESENCE_SHA.clone());
        all.push("0".to_owned());
        all.extend(args);
        match client.custom::<Value, _>(super::scripts::evalsha(), all.clone()).await {
            Err(e) if super::scripts::is_noscript(&e) => {
                load(client).await;
                client.custom(super::scripts::evalsha(), all).await
            }
            other => other,
        }
    }

    /// Applies a membership change; returns a read for after the next write (so that a
    /// snapshot includes the changes sent before it, the subscriber's own first).
    fn apply(&self, command: PresenceCommand) -> Option<PresenceCommand> {
        match command {
            PresenceCommand::Change { topic, user, joined } => {
                self.tally.borrow_mut().change(&topic, &user, joined);
                self.dirty.borrow_mut().entry(topic).or_default().insert(user);
                None
            }
            read => Some(read),
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

    /// Writes what changed (or, after a loss, everything), in one pipeline.
    async fn flush(&self, client: &Client) {
        if self.resync.replace(false) {
            self.dirty.borrow_mut().clear();
            if self.write_all(client).await {
                // At once: the node is listed in `/api/stats` from its first write on.
                self.beat(client).await;
            } else {
                self.resync.set(true);
            }
            return;
        }
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        if dirty.is_empty() {
            return;
        }
        let calls: Vec<Vec<String>> = {
            let tally = self.tally.borrow();
            dirty
                .iter()
                .map(|(topic, users)| {
                    let counts = users.iter().map(|u| (&**u, tally.count(topic, u)));
                    self.set_args(topic, false, counts)
                })
                .collect()
        };
        if !self.run_sets(client, calls).await {
            self.resync.set(true);
        }
    }

    fn set_args<'a>(
        &self,
        topic: &str,
        replace: bool,
        counts: impl Iterator<Item = (&'a str, u64)>,
    ) -> Vec<String> {
        let mut args = self.args("set");
        args.extend([
            self.node.clone(),
            topic.to_owned(),
            if replace { "1" } else { "0" }.to_owned(),
        ]);
        for (user, count) in counts {
            args.push(user.to_owned());
            args.push(count.to_string());
        }
        args
    }

    /// Writes this node's whole contribution again: every topic it has members in, and
    /// every topic Redis holds for it (emptied when it has none there any more).
    async fn write_all(&self, client: &Client) -> bool {
        let index = format!("{}presence:index:{}", self.prefix, self.node);
        let in_redis: Vec<String> = match client.smembers(&index).await {
            Ok(topics) => topics,
            Err(e) => {
                debug!(cause = %e.details(), "presence: cannot read this node's topics");
                return false;
            }
        };
        let calls: Vec<Vec<String>> = {
            let tally = self.tally.borrow();
            let mut seen = HashSet::new();
            let mut calls: Vec<Vec<String>> = tally
                .topics()
                .map(|(topic, users)| {
                    seen.insert(topic.to_owned());
                    self.set_args(topic, true, users.into_iter())
                })
                .collect();
            for topic in in_redis.iter().filter(|t| !seen.contains(*t)) {
                calls.push(self.set_args(topic, true, std::iter::empty()));
            }
            calls
        };
        let written = calls.len();
        let ok = self.run_sets(client, calls).await;
        if ok {
            debug!(topics = written, "presence: this node's members written to Redis");
        }
        ok
    }

    /// Runs `set` calls in order, in one pipeline; sends the webhooks they return.
    /// `false` when one failed (the node then writes everything again).
    async fn run_sets(&self, client: &Client, calls: Vec<Vec<String>>) -> bool {
        if calls.is_empty() {
            return true;
        }
        let pipeline = client.pipeline();
        let mut queued = Vec::with_capacity(calls.len());
        for args in calls {
            let mut all = Vec::with_capacity(args.len() + 2);
            all.push(PRESENCE_SHA.clone());
            all.push("0".to_owned());
            all.extend(args);
            let sent: Result<(), RedisError> =
                pipeline.custom(super::scripts::evalsha(), all).await;
            queued.push(sent);
        }
        let mut ok = true;
        for result in super::scripts::replies(pipeline, queued).await {
            match result {
                Ok(value) => self.send_webhooks(&value, 0),
                Err(e) => {
                    ok = false;
                    if super::scripts::is_noscript(&e) {
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
        let texts: Vec<Option<String>> = items.iter().skip(skip).map(|v| v.as_string()).collect();
        for triple in texts.chunks_exact(3) {
            let (Some(name), Some(topic), Some(user)) = (&triple[0], &triple[1], &triple[2]) else {
                continue;
            };
            let name = match name.as_str() {
                "channel_occupied" => EventName::ChannelOccupied,
                "channel_vacated" => EventName::ChannelVacated,
                "member_added" => EventName::MemberAdded,
                "member_removed" => EventName::MemberRemoved,
                _ => continue,
            };
            let user = (!user.is_empty()).then_some(user.as_str());
            queue.offer(WebhookEvent::presence(name, topic, user, time_ms));
        }
    }

    /// The heartbeat: see the module docs.
    async fn beat(&self, client: &Client) {
        let now = Instant::now();
        let load = NodeLoad {
            id: self.node.clone(),
            connections: self.stats.total(|s| &s.connections),
            deliveries_per_s: self
                .meter
                .borrow_mut()
                .sample(now, self.stats.total(|s| &s.deliveries)),
        };
        let mut args = self.args("beat");
        args.extend([
            self.node.clone(),
            (self.ttl.as_millis() as u64).to_string(),
            serde_json::to_string(&load).unwrap_or_default(),
            MAX_DUE_PER_BEAT.to_string(),
        ]);
        match Self::call(client, args).await {
            Ok(value) => {
                let known = matches!(&value, Value::Array(v) if v.first().and_then(Value::as_string).as_deref() == Some("1"));
                if !known && self.registered.get() {
                    warn!(
                        "presence: this node had been declared dead (no heartbeat for presence_ttl); writing its members again"
                    );
                    self.resync.set(true);
                }
                self.registered.set(true);
                self.send_webhooks(&value, 1);
            }
            Err(e) => debug!(cause = %e.details(), "presence heartbeat failed"),
        }
    }

    /// Answers a snapshot request.
    async fn snapshot(&self, client: &Client, to: Box<SnapshotTo>) {
        let mut args = self.args("snapshot");
        args.push(to.topic.to_string());
        let (seq, members) = match Self::call(client, args).await {
            Ok(Value::Array(items)) => {
                let texts: Vec<String> = items.iter().filter_map(Value::as_string).collect();
                let seq = texts.first().and_then(|s| s.parse().ok()).unwrap_or(0);
                (seq, members_of(texts.get(1..).unwrap_or_default()))
            }
            Ok(_) | Err(_) => {
                // Redis away: the snapshot of this node's own members (news resumes when
                // Redis is back; the watcher is told what is known).
                let members = self.tally.borrow().members(&to.topic);
                (0, members)
            }
        };
        let json = presence::snapshot_json(&to.topic, &members).into_boxed_str();
        let shard: ShardId = to.shard;
        let message = ShardMessage::PresenceSnapshot { to, seq, json };
        crate::xshard::deliver_to(&self.inboxes, &[shard], message).await;
    }

    /// Answers an API question.
    async fn query(&self, client: &Client, query: Query) -> String {
        let unavailable = || {
            crate::protocol::command::CommandError::new(
                "unavailable",
                "Redis is unreachable: cluster-wide counts are unknown",
            )
            .to_json()
        };
        let (op, arg) = match &query {
            Query::Channels { prefix } => ("channels", prefix.clone()),
            Query::Channel(topic) => ("channel", topic.clone()),
            Query::Users(topic) => ("users", topic.clone()),
            Query::Stats => ("stats", (self.ttl.as_millis() as u64).to_string()),
        };
        let mut args = self.args(op);
        args.push(arg);
        let Ok(Value::Array(items)) = Self::call(client, args).await else { return unavailable() };
        let texts: Vec<String> = items.iter().filter_map(Value::as_string).collect();
        let num = |s: Option<&String>| s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        match query {
            Query::Channels { .. } => {
                let mut all: Vec<(String, Occupancy)> = texts
                    .chunks_exact(3)
                    .map(|c| {
                        (
                            c[0].clone(),
                            Occupancy { subscribers: num(c.get(1)), users: num(c.get(2)) },
                        )
                    })
                    .filter(|(_, o)| o.users > 0)
                    .collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                all.truncate(presence::MAX_LISTED_CHANNELS);
                presence::channels_json(&all)
            }
            Query::Channel(_) => {
                let users = num(texts.get(1));
                let subscribers = if users == 0 { 0 } else { num(texts.first()) };
                presence::channel_json(Occupancy { subscribers, users })
            }
            Query::Users(_) => presence::users_json(&members_of(&texts)),
            Query::Stats => {
                let mut nodes: Vec<NodeLoad> =
                    texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect();
                nodes.sort_by(|a, b| a.id.cmp(&b.id));
                presence::stats_json(&nodes)
            }
        }
    }
}

/// `user, count, user, count, ...` → members by user id.
fn members_of(flat: &[String]) -> Vec<Member> {
    let mut members: Vec<Member> = flat
        .chunks_exact(2)
        .filter_map(|c| Some(Member { user: c[0].clone(), connections: c[1].parse().ok()? }))
        .filter(|m| m.connections > 0)
        .collect();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    members
}

/// The script's SHA-1 (for EVALSHA).
static PRESENCE_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| super::history::script_sha(PRESENCE_SCRIPT));

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
    let mut ticker = tokio::time::interval((presence.ttl / 5).max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                let mut next = Some(message);
                let mut reads = Vec::new();
                // Everything already queued, then one write, then the reads.
                while let Some(message) = next.take() {
                    match message {
                        ToPresence::Command(command) => reads.extend(presence.apply(command)),
                        ToPresence::Reconnected => presence.resync.set(true),
                    }
                    next = rx.try_recv().ok();
                }
                if client.is_connected() {
                    presence.flush(&client).await;
                } else {
                    presence.resync.set(true);
                }
                for read in reads {
                    presence.answer(&client, read);
                }
            }
            _ = ticker.tick() => {
                if client.is_connected() {
                    presence.flush(&client).await;
                    presence.beat(&client).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_is_told_apart_from_events() {
        let news = news_of("room", r#"{"type":"join","topic":"room","user":"ann","seq":17}"#)
            .expect("news");
        assert_eq!(news.seq, 17);
        assert_eq!(&news.frame[2..], br#"{"type":"join","topic":"room","user":"ann"}"#);
        assert!(news_of("room", r#"{"type":"message","topic":"room","data":1}"#).is_none());
        // Malformed, or a user id that is not one: not news (and not delivered as news).
        assert!(news_of("room", r#"{"type":"leave","user":"a b","seq":1}"#).is_none());
        assert!(news_of("room", r#"{"type":"leave","user":"ann"}"#).is_none());
    }

    #[test]
    fn members_are_parsed_sorted_and_positive() {
        let flat: Vec<String> =
            ["bob", "1", "ann", "2", "eve", "0", "odd"].map(String::from).to_vec();
        assert_eq!(
            members_of(&flat),
            vec![
                Member { user: "ann".into(), connections: 2 },
                Member { user: "bob".into(), connections: 1 }
            ]
        );
    }
}
