//! The presence script in Redis and what its replies mean: [`PRESENCE_SCRIPT`], the
//! join/leave news it publishes ([`news_of`]), and the webhooks, members and API answers
//! in its replies.
//!
//! Runs on: the bridge thread (the presence task, and the bridge's loop for news). Pure:
//! the script is text Redis runs; the rest parses its replies (as text, the shell having
//! taken them out of fred's values).
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
//! **Operations** (`ARGV[1]`), each atomic: `set` (a node sets its own counts of one
//! topic's users, `replace` dropping the ones it does not list; Redis works out the
//! cluster-level transitions, publishes the joins and leaves on the topic's channel
//! (`{"type":"join","topic":T,"user":U,"seq":N}`), and returns the webhooks to send at
//! once); `beat` (the node's heartbeat: refreshes its place in `nodes`, removes the nodes
//! silent for `presence_ttl` — their members leave, with news and delayed webhooks — and
//! pops at most [`MAX_DUE_PER_BEAT`] due webhooks: whoever pops one sends it, once);
//! `snapshot`, and the API's `channels`, `channel`, `users` and `stats`. A removal's
//! webhook is not sent: it is put in `pending` with its due time, and an addition of the
//! same topic (or member) before then takes it out and is not sent either — on whatever
//! node either happens.

use crate::presence::{
    self, Member, NodeLoad, Occupancy, Query,
    webhook::{EventName, WebhookEvent},
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
pub(super) const MAX_DUE_PER_BEAT: usize = 500;

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

/// The webhooks in a `set` or `beat` reply: `name, topic, user` triples (`texts` starts at
/// the first; a text that is not one leaves its triple out, as does an unknown name; an
/// empty user is none), stamped `time_ms`.
pub(super) fn webhooks_in(texts: &[Option<String>], time_ms: u64) -> Vec<WebhookEvent> {
    let mut events = Vec::with_capacity(texts.len() / 3);
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
        events.push(WebhookEvent::presence(name, topic, user, time_ms));
    }
    events
}

/// Whether a `beat` reply says Redis knew the node (its first text is `1`): `false` once
/// it was declared dead (or before its first heartbeat).
pub(super) fn beat_found_node(texts: &[Option<String>]) -> bool {
    texts.first().and_then(Option::as_deref) == Some("1")
}

/// A `snapshot` reply: the topic's news number (`0` when unknown), then its members.
pub(super) fn snapshot_of(texts: &[String]) -> (u64, Vec<Member>) {
    let seq = texts.first().and_then(|s| s.parse().ok()).unwrap_or(0);
    (seq, members_of(texts.get(1..).unwrap_or_default()))
}

/// The JSON answer to an API question from the script's reply (its texts).
pub(super) fn query_answer(query: &Query, texts: &[String]) -> String {
    let num = |s: Option<&String>| s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    match query {
        Query::Channels { .. } => {
            let mut all: Vec<(String, Occupancy)> = texts
                .chunks_exact(3)
                .map(|c| {
                    (c[0].clone(), Occupancy { subscribers: num(c.get(1)), users: num(c.get(2)) })
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
        Query::Users(_) => presence::users_json(&members_of(texts)),
        Query::Stats => {
            let mut nodes: Vec<NodeLoad> =
                texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect();
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            presence::stats_json(&nodes)
        }
    }
}

/// The answer to an API question Redis did not answer.
pub(super) fn unavailable_json() -> String {
    crate::protocol::command::CommandError::new(
        "unavailable",
        "Redis is unreachable: cluster-wide counts are unknown",
    )
    .to_json()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(all: &[&str]) -> Vec<String> {
        all.iter().map(|s| (*s).to_owned()).collect()
    }

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

    #[test]
    fn webhooks_are_triples_with_known_names() {
        let some = |s: &str| Some(s.to_owned());
        let reply = vec![
            some("channel_occupied"),
            some("room"),
            some(""),
            some("member_added"),
            some("room"),
            some("ann"),
            some("no_such_event"),
            some("room"),
            some("bob"),
            None,
            some("room"),
            some("eve"),
            some("member_removed"),
        ];
        let events = webhooks_in(&reply, 7);
        assert_eq!(
            events,
            vec![
                WebhookEvent::presence(EventName::ChannelOccupied, "room", None, 7),
                WebhookEvent::presence(EventName::MemberAdded, "room", Some("ann"), 7),
            ]
        );
    }

    #[test]
    fn a_beat_reply_says_whether_redis_knew_the_node() {
        assert!(beat_found_node(&[Some("1".to_owned()), Some("member_removed".to_owned())]));
        assert!(!beat_found_node(&[Some("0".to_owned())]));
        assert!(!beat_found_node(&[]));
    }

    #[test]
    fn snapshots_carry_their_number_and_members() {
        let (seq, members) = snapshot_of(&texts(&["42", "bob", "1", "ann", "0"]));
        assert_eq!(seq, 42);
        assert_eq!(members, vec![Member { user: "bob".into(), connections: 1 }]);
        assert_eq!(snapshot_of(&[]), (0, Vec::new()));
    }

    #[test]
    fn api_answers_are_read_from_the_reply() {
        let channels = Query::Channels { prefix: String::new() };
        let reply = texts(&["b", "3", "2", "a", "1", "1", "empty", "4", "0"]);
        assert_eq!(
            query_answer(&channels, &reply),
            presence::channels_json(&[
                ("a".to_owned(), Occupancy { subscribers: 1, users: 1 }),
                ("b".to_owned(), Occupancy { subscribers: 3, users: 2 }),
            ])
        );
        let channel = Query::Channel("a".to_owned());
        assert_eq!(
            query_answer(&channel, &texts(&["5", "0"])),
            presence::channel_json(Occupancy { subscribers: 0, users: 0 }),
            "no users: nobody counts as subscribed"
        );
        assert_eq!(
            query_answer(&Query::Users("a".to_owned()), &texts(&["ann", "2"])),
            presence::users_json(&[Member { user: "ann".into(), connections: 2 }])
        );
        let load = r#"{"id":"n1","connections":3,"deliveries_per_s":0.0}"#;
        assert!(query_answer(&Query::Stats, &texts(&[load, "not json"])).contains(r#""n1""#));
    }
}
