//! The simulation's model of Redis (`corecast::sim::model`) held to the real thing: seeded
//! random sequences of the bridge's scripts (publish with and without a floor, reads from
//! any offset or the latest, abandoning an epoch) and of FLUSHALL run against a real
//! `redis-server` and against the model, every answer compared.
//!
//! Epochs come from each side's clock, so they are compared as a bijection (the n-th epoch
//! Redis makes is the n-th the model makes); everything else must be equal.

use std::collections::HashMap;

use corecast::sim::model::{ModelRedis, SCRIPTS};
use fred::{
    interfaces::{ClientLike, LuaInterface},
    types::Value,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::{WAIT, redis::RedisServer, within};

const STREAMS: [&str; 3] = ["topic:a", "topic:b", "user:u"];

/// Real epoch ↔ model epoch, learned as they appear.
#[derive(Default)]
struct Epochs {
    to_model: HashMap<u64, u64>,
    to_real: HashMap<u64, u64>,
}

impl Epochs {
    /// Asserts that `real` and `model` correspond (learning the pair the first time).
    fn same(&mut self, real: u64, model: u64, what: &str) {
        let a = *self.to_model.entry(real).or_insert(model);
        let b = *self.to_real.entry(model).or_insert(real);
        assert_eq!((a, b), (model, real), "{what}: epoch {real} (Redis) against {model} (model)");
    }

    fn real_of(&self, model: u64) -> Option<u64> {
        self.to_real.get(&model).copied()
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Integer(i) => i.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

fn id_of(text: &str) -> (u64, u64) {
    let (e, o) = text.split_once(':').expect("epoch:offset");
    (e.parse().expect("epoch"), o.parse().expect("offset"))
}

/// The id a stored payload starts with (`{"id":"E:O",...`).
fn payload_id(payload: &str) -> (u64, u64) {
    let rest = payload.strip_prefix("{\"id\":\"").expect("a payload starting with its id");
    id_of(&rest[..rest.find('"').expect("the id's end")])
}

/// A stored payload with its id's epoch replaced by `epoch` (so both sides compare).
fn with_epoch(payload: &str, epoch: u64) -> String {
    let start = payload.find("\"id\":\"").expect("an id") + 6;
    let colon = start + payload[start..].find(':').expect("epoch:offset");
    format!("{}{epoch}{}", &payload[..start], &payload[colon..])
}

/// One seeded sequence of `steps` commands against both.
async fn compare(redis: &RedisServer, seed: u64, steps: usize) {
    let client = redis.client().await;
    let _: Value = client.flushall(false).await.expect("FLUSHALL");
    let mut shas = Vec::new();
    for script in SCRIPTS {
        shas.push(client.script_load::<String, _>(script).await.expect("SCRIPT LOAD"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = ModelRedis::new(1_000_000);
    let mut epochs = Epochs::default();
    let mut seen: Vec<(u64, u64)> = Vec::new(); // model ids handed out
    for step in 0..steps {
        model.tick(1);
        let stream = STREAMS[rng.random_range(0..STREAMS.len())];
        let keys = vec![format!("sim:history:{stream}"), format!("sim:meta:{stream}")];
        let what = format!("seed {seed} step {step} on {stream}");
        match rng.random_range(0..100) {
            0..45 => {
                let size = rng.random_range(1..6usize);
                let rest = format!("\"data\":{step}}}");
                // No floor, a floor from an id seen (maybe above the stream's offset), or
                // one of an epoch that does not exist.
                let floor = match rng.random_range(0..3) {
                    0 => None,
                    1 if !seen.is_empty() => {
                        let (e, o) = seen[rng.random_range(0..seen.len())];
                        Some((e, o + rng.random_range(0..3)))
                    }
                    _ => Some((7, rng.random_range(0..4))),
                };
                let real_floor = floor
                    .map(|(e, o)| (epochs.real_of(e).unwrap_or(e + 1_000_000_000), o))
                    .map(|(e, o)| (e.to_string(), o.to_string()))
                    .unwrap_or_default();
                let model_floor = floor.map(|(e, o)| corecast::sim::model::floor(e, o));
                let args = vec![
                    "sim:channel".to_owned(),
                    rest.clone(),
                    size.to_string(),
                    "300".to_owned(),
                    "3600".to_owned(),
                    real_floor.0,
                    if real_floor.1.is_empty() { "0".to_owned() } else { real_floor.1 },
                ];
                let real: Value = client.evalsha(&shas[0], keys, args).await.expect("publish");
                let (real_epoch, real_offset) = id_of(&text(&real));
                let (id, _) = model.publish(stream, &rest, size, model_floor);
                epochs.same(real_epoch, id.epoch, &what);
                assert_eq!(real_offset, id.offset, "{what}: offset");
                seen.push((id.epoch, id.offset));
            }
            45..85 => {
                let count = rng.random_range(0..6usize);
                let from = (rng.random_range(0..4) > 0).then(|| rng.random_range(0..12u64));
                let arg = from.map_or("latest".to_owned(), |f| f.max(1).to_string());
                let real: Value = client
                    .evalsha(&shas[1], keys, vec![arg, count.to_string()])
                    .await
                    .expect("read");
                let expected = model.read(stream, from.map(|f| f.max(1)), count);
                let Value::Array(parts) = real else { panic!("{what}: {real:?}") };
                let Some((state, entries)) = expected else {
                    assert!(parts.is_empty(), "{what}: Redis has the stream, the model not");
                    continue;
                };
                assert_eq!(parts.len(), 4, "{what}: the model has the stream, Redis not");
                epochs.same(text(&parts[0]).parse().expect("epoch"), state.epoch, &what);
                assert_eq!(text(&parts[1]), state.top.to_string(), "{what}: top");
                let first = text(&parts[2]);
                let want_first = state.first.map(|f| format!("{f}-0")).unwrap_or_default();
                assert_eq!(first, want_first, "{what}: oldest entry");
                let Value::Array(real_entries) = &parts[3] else { panic!("{what}: entries") };
                assert_eq!(real_entries.len(), entries.len(), "{what}: entries");
                for (real, (offset, payload)) in real_entries.iter().zip(&entries) {
                    let Value::Array(entry) = real else { panic!("{what}: entry") };
                    assert_eq!(text(&entry[0]), format!("{offset}-0"), "{what}: entry id");
                    let Value::Array(fields) = &entry[1] else { panic!("{what}: fields") };
                    let real_payload = text(&fields[1]);
                    assert_eq!(
                        with_epoch(&real_payload, 0),
                        with_epoch(payload, 0),
                        "{what}: payload"
                    );
                    epochs.same(payload_id(&real_payload).0, payload_id(payload).0, &what);
                }
            }
            85..97 => {
                // Abandon an epoch: one seen (often the stream's own), or one never made.
                let epoch = if seen.is_empty() || rng.random_bool(0.2) {
                    5
                } else {
                    seen[rng.random_range(0..seen.len())].0
                };
                let real_epoch = epochs.real_of(epoch).unwrap_or(5);
                let real: Value = client
                    .evalsha(&shas[2], keys, vec![real_epoch.to_string(), "3600".to_owned()])
                    .await
                    .expect("rebase");
                let after = model.rebase(stream, epoch);
                match after {
                    None => assert_eq!(text(&real), "", "{what}: no meta"),
                    Some(e) => epochs.same(text(&real).parse().expect("epoch"), e, &what),
                }
            }
            _ => {
                let _: Value = client.flushall(false).await.expect("FLUSHALL");
                model.flush();
            }
        }
    }
    let _ = client.quit().await;
}

/// Twenty seeded sequences of 300 commands: the model answers as Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_answers_as_redis_does() {
    let redis = RedisServer::start().await;
    within(WAIT * 6, "the sequences", async {
        for seed in 0..20 {
            compare(&redis, seed, 300).await;
        }
    })
    .await;
}
