//! History in Redis: the Lua scripts that store and read it, the keys they use, and the
//! parsers of their answers.
//!
//! Runs on: the bridge thread. Pure: no I/O (the bridge runs the scripts; the stream
//! tracker that makes live delivery gap-free is `bus::redis::tracker`).
//!
//! - **Publish** ([`PUBLISH_SCRIPT`]): one script per event assigns the next offset
//!   (`HINCRBY` of the stream's meta hash, whose `e` field is the epoch — created from
//!   Redis's clock when the hash is missing, which also deletes any stale stream), appends
//!   the payload to the stream with the offset as its entry id (`XADD key MAXLEN size
//!   <offset>-0`), refreshes both keys' expiry, and PUBLISHes the payload — with
//!   `"id":"<epoch>:<offset>"` as its first field — on the stream's channel. Atomic: no
//!   reader ever sees an id without its event, and the channel carries a stream's events
//!   in offset order. With an idempotency key, a retry within the window returns the
//!   first id instead. The publishing node passes a **floor** (the highest id of the
//!   stream it knows was handed out): a meta hash of the floor's epoch below it means
//!   Redis lost writes, and the script starts a new epoch rather than reuse an id.
//! - **Abandon** ([`REBASE_SCRIPT`]): a compare-and-set of the epoch, for a node that
//!   found Redis lost writes of it.
//! - **Read** ([`READ_SCRIPT`]): the stream's epoch, last offset and oldest kept offset,
//!   and up to `count` entries from an offset — one consistent snapshot.
//!
//! Both scripts that start an epoch do it with one Lua function (`new_epoch`, from
//! [`lua_new_epoch`]), so the two can never disagree on what a new epoch is.

use fred::types::Value;

use crate::{history::StreamState, ids::Route};

/// The Lua function both epoch-starting scripts open with: a new epoch from Redis's
/// clock (microseconds), never equal to `old` (two in one microsecond), with the
/// stream's entries deleted and its offset back to 0 (KEYS[1]: stream, KEYS[2]: meta).
macro_rules! lua_new_epoch {
    () => {
        r#"
local function new_epoch(old)
  local now = redis.call('TIME')
  local epoch = now[1] .. string.format('%06d', tonumber(now[2]))
  if epoch == old then epoch = string.format('%.0f', tonumber(epoch) + 1) end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
  return epoch
end
"#
    };
}

/// Stores one event and publishes it (module docs).
///
/// KEYS: stream, meta[, idempotency key]. ARGV: channel, payload without its opening `{`,
/// size, ttl (s), meta ttl (s), floor epoch, floor offset[, idempotency window (s)].
/// Returns the id.
///
/// The **floor** is the highest id of the stream the publishing node knows was used (the
/// last it delivered or published; `""`, `0` when it knows none). When the meta hash is
/// in the floor's epoch but its offset is below the floor, Redis has lost writes (a
/// restart from an older snapshot, a failover to a replica that lagged): the offsets
/// above it were handed out already, so the stream starts a new epoch instead of using
/// them twice.
pub(crate) const PUBLISH_SCRIPT: &str = concat!(
    lua_new_epoch!(),
    r#"
if #KEYS == 3 then
  local first = redis.call('GET', KEYS[3])
  if first then return first end
end
local meta = redis.call('HMGET', KEYS[2], 'e', 'o')
local epoch = meta[1]
if epoch and epoch == ARGV[6] and (tonumber(meta[2]) or 0) < tonumber(ARGV[7]) then
  epoch = false
end
if not epoch then epoch = new_epoch(meta[1]) end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local id = epoch .. ':' .. offset
local payload = '{"id":"' .. id .. '",' .. ARGV[2]
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], offset .. '-0', 'd', payload)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
if #KEYS == 3 then redis.call('SET', KEYS[3], id, 'EX', ARGV[8]) end
redis.call('PUBLISH', ARGV[1], payload)
return id
"#
);

/// Abandons an epoch that Redis lost writes of (compare-and-set): when the stream is
/// still in epoch ARGV[1], it starts a new epoch (its history deleted: the old epoch's
/// ids above what Redis kept may name two events). Several nodes finding the same loss
/// change the epoch once.
///
/// KEYS: stream, meta. ARGV: the epoch to abandon, meta ttl (s). Returns the stream's
/// epoch afterwards (`""`: no meta hash, the next publish starts an epoch anyway).
pub(crate) const REBASE_SCRIPT: &str = concat!(
    lua_new_epoch!(),
    r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then return '' end
if epoch ~= ARGV[1] then return epoch end
local new = new_epoch(epoch)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return new
"#
);

/// Reads a snapshot of one stream (module docs).
///
/// KEYS: stream, meta. ARGV: first offset wanted (`latest`: the last event only), most
/// entries. Returns `{}` when the stream has no meta, else `{epoch, top, oldest entry id
/// or "", entries}`.
pub(crate) const READ_SCRIPT: &str = r#"
local meta = redis.call('HMGET', KEYS[2], 'e', 'o')
if not meta[1] then return {} end
local top = tonumber(meta[2]) or 0
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = ''
if #oldest > 0 then first = oldest[1][1] end
local from = ARGV[1]
if from == 'latest' then from = top end
local entries = {}
if tonumber(ARGV[2]) > 0 and tonumber(from) <= top then
  entries = redis.call('XRANGE', KEYS[1], from .. '-0', '+', 'COUNT', ARGV[2])
end
return {meta[1], tostring(top), first, entries}
"#;

/// The SHA-1 of a script, as EVALSHA wants it (lowercase hex).
pub(crate) fn script_sha(script: &str) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(script.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The Redis keys of one stream's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamKeys {
    /// The Redis Stream of events.
    pub stream: String,
    /// The meta hash: epoch `e`, last offset `o`.
    pub meta: String,
}

impl StreamKeys {
    /// `<prefix>history:<stream>` and `<prefix>meta:<stream>`, where `<stream>` is
    /// `broadcast`, `topic:<T>` or `user:<U>`.
    pub(crate) fn of(prefix: &str, route: &Route) -> StreamKeys {
        let name = match route {
            Route::Broadcast => "broadcast".to_owned(),
            Route::Topic(t) => format!("topic:{t}"),
            Route::Direct(u) => format!("user:{u}"),
        };
        StreamKeys {
            stream: format!("{prefix}history:{name}"),
            meta: format!("{prefix}meta:{name}"),
        }
    }

    /// The key remembering the first id of a publish with idempotency key `key`.
    /// The key remembering a publish with idempotency key `key` on this stream:
    /// `<prefix>idem:<length of the stream's name>:<stream>:<key>`. The length keeps two
    /// (stream, key) pairs from sharing a key when names and keys contain `:` (topic
    /// `a:b` with key `c`, topic `a` with key `b:c`).
    pub(crate) fn idempotency(&self, prefix: &str, key: &str) -> String {
        let stream = self.meta.strip_prefix(prefix).and_then(|m| m.strip_prefix("meta:"));
        let stream = stream.unwrap_or_default();
        format!("{prefix}idem:{}:{stream}:{key}", stream.len())
    }
}

/// What a read returned: the stream's state and entries `(offset, payload)`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub state: StreamState,
    pub entries: Vec<(u64, String)>,
}

/// Parses [`READ_SCRIPT`]'s answer: `None` when the stream has no history.
///
/// # Errors
/// What is malformed (never panics on a strange answer).
pub(crate) fn parse_snapshot(value: Value) -> Result<Option<Snapshot>, String> {
    let Value::Array(parts) = value else { return Err(format!("unexpected answer {value:?}")) };
    if parts.is_empty() {
        return Ok(None);
    }
    let [epoch, top, first, entries]: [Value; 4] =
        parts.try_into().map_err(|p: Vec<Value>| format!("expected 4 parts, got {}", p.len()))?;
    let number = |v: &Value, what: &str| -> Result<u64, String> {
        text_of(v).and_then(|t| t.parse().ok()).ok_or_else(|| format!("bad {what}: {v:?}"))
    };
    let epoch = number(&epoch, "epoch")?;
    let top = number(&top, "top offset")?;
    let first = match text_of(&first) {
        Some("") => None,
        Some(id) => Some(entry_offset(id).ok_or_else(|| format!("bad entry id {id}"))?),
        None => return Err(format!("bad oldest entry {first:?}")),
    };
    let Value::Array(raw) = entries else { return Err(format!("bad entries {entries:?}")) };
    let mut out = Vec::with_capacity(raw.len());
    for entry in raw {
        let Value::Array(entry) = entry else { return Err("bad entry".into()) };
        let [id, fields]: [Value; 2] =
            entry.try_into().map_err(|_| "bad entry shape".to_owned())?;
        let offset = text_of(&id).and_then(entry_offset).ok_or("bad entry id")?;
        let Value::Array(fields) = fields else { return Err("bad entry fields".into()) };
        // Fields come as name, value pairs; the payload is field `d`.
        let payload = fields
            .chunks(2)
            .find(|pair| text_of(&pair[0]) == Some("d"))
            .and_then(|pair| pair.get(1))
            .and_then(text_of)
            .ok_or("entry without its payload")?;
        out.push((offset, payload.to_owned()));
    }
    Ok(Some(Snapshot { state: StreamState { epoch, top, first }, entries: out }))
}

/// One stream's entries in an XREAD answer: its key, and `(offset, payload)`s.
pub(crate) type StreamEntries = (String, Vec<(u64, String)>);

/// Parses an XREAD answer: per stream key, its entries `(offset, payload)`; empty when
/// the read timed out.
///
/// # Errors
/// What is malformed.
pub(crate) fn parse_xread(value: Value) -> Result<Vec<StreamEntries>, String> {
    let streams = match value {
        Value::Null => return Ok(Vec::new()),
        // RESP2 (the clients' protocol): an array of [key, entries].
        Value::Array(streams) => streams,
        other => return Err(format!("unexpected XREAD answer {other:?}")),
    };
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let Value::Array(parts) = stream else { return Err("bad XREAD stream".into()) };
        let [key, entries]: [Value; 2] =
            parts.try_into().map_err(|_| "bad XREAD stream shape".to_owned())?;
        let key = text_of(&key).ok_or("bad XREAD key")?.to_owned();
        // The same shape as a read's entries.
        let snapshot = parse_snapshot(Value::Array(vec![
            Value::String("0".into()),
            Value::String("0".into()),
            Value::String("".into()),
            entries,
        ]))?;
        out.push((key, snapshot.map(|s| s.entries).unwrap_or_default()));
    }
    Ok(out)
}

/// The route of a stream name (`broadcast`, `topic:<T>`, `user:<U>`), the inverse of
/// [`StreamKeys::of`] without the prefix.
pub(crate) fn route_of_stream(name: &str) -> Option<Route> {
    if name == "broadcast" {
        Some(Route::Broadcast)
    } else if let Some(topic) = name.strip_prefix("topic:") {
        Some(Route::Topic(topic.into()))
    } else {
        name.strip_prefix("user:").map(|user| Route::Direct(user.into()))
    }
}

fn text_of(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// The offset of a stream entry id `<offset>-0`.
fn entry_offset(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_parsed_without_trusting_the_answer() {
        let s = |x: &str| Value::String(x.into());
        let entry = |id: &str, payload: &str| {
            Value::Array(vec![s(id), Value::Array(vec![s("d"), s(payload)])])
        };
        let answer = Value::Array(vec![
            s("17"),
            s("9"),
            s("8-0"),
            Value::Array(vec![entry("8-0", "a"), entry("9-0", "b")]),
        ]);
        let snapshot = parse_snapshot(answer).unwrap().unwrap();
        assert_eq!(snapshot.state, StreamState { epoch: 17, top: 9, first: Some(8) });
        assert_eq!(snapshot.entries, vec![(8, "a".to_owned()), (9, "b".to_owned())]);
        assert_eq!(parse_snapshot(Value::Array(vec![])), Ok(None));
        let empty = Value::Array(vec![s("17"), s("9"), s(""), Value::Array(vec![])]);
        assert_eq!(parse_snapshot(empty).unwrap().unwrap().state.first, None);
        for bad in [
            Value::Integer(3),
            Value::Array(vec![s("x"), s("9"), s(""), Value::Array(vec![])]),
            Value::Array(vec![
                s("1"),
                s("9"),
                s("8-0"),
                Value::Array(vec![Value::Array(vec![s("8-0")])]),
            ]),
            Value::Array(vec![s("1"), s("9")]),
        ] {
            assert!(parse_snapshot(bad).is_err());
        }
    }

    #[test]
    fn xread_answers_are_parsed() {
        let s = |x: &str| Value::String(x.into());
        let entry = |id: &str, payload: &str| {
            Value::Array(vec![s(id), Value::Array(vec![s("d"), s(payload)])])
        };
        let answer = Value::Array(vec![Value::Array(vec![
            s("cc:history:topic:t"),
            Value::Array(vec![entry("4-0", "a"), entry("5-0", "b")]),
        ])]);
        let parsed = parse_xread(answer).unwrap();
        assert_eq!(
            parsed,
            vec![("cc:history:topic:t".to_owned(), vec![(4, "a".to_owned()), (5, "b".to_owned())])]
        );
        assert_eq!(parse_xread(Value::Null), Ok(vec![]));
        assert!(parse_xread(Value::Integer(1)).is_err());
        assert_eq!(route_of_stream("topic:a.b"), Some(Route::Topic("a.b".into())));
        assert_eq!(route_of_stream("user:al"), Some(Route::Direct("al".into())));
        assert_eq!(route_of_stream("broadcast"), Some(Route::Broadcast));
        assert_eq!(route_of_stream("other"), None);
        for route in [Route::Broadcast, Route::Topic("x".into()), Route::Direct("y".into())] {
            let key = StreamKeys::of("p:", &route).stream;
            assert_eq!(route_of_stream(key.strip_prefix("p:history:").unwrap()), Some(route));
        }
    }

    #[test]
    fn keys_and_script_hashes() {
        let keys = StreamKeys::of("cc:", &Route::Topic("chat.1".into()));
        assert_eq!(keys.stream, "cc:history:topic:chat.1");
        assert_eq!(keys.meta, "cc:meta:topic:chat.1");
        assert_eq!(keys.idempotency("cc:", "k1"), "cc:idem:12:topic:chat.1:k1");
        // Names and keys may contain ':': no two (stream, key) pairs share a key.
        let (ab, a) = (Route::Topic("a:b".into()), Route::Topic("a".into()));
        assert_ne!(
            StreamKeys::of("cc:", &ab).idempotency("cc:", "c"),
            StreamKeys::of("cc:", &a).idempotency("cc:", "b:c")
        );
        assert_eq!(StreamKeys::of("cc:", &Route::Broadcast).stream, "cc:history:broadcast");
        assert_eq!(script_sha("return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
