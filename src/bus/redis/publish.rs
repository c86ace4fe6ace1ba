//! The bridge's publishes: a client's event to Redis (through the history script when
//! its stream keeps history), pipelined in arrival order by the publisher task, and each
//! publisher told how it went; while the bridge is not ready, to this node's shards only.
//!
//! Runs on: the bridge thread (its loop hands publishes to the publisher task). Pure:
//! which publishes to send again after `NOSCRIPT` ([`noscript_retries`]); the rest does
//! I/O (Redis through the publisher connection, the shards' inboxes).

use std::{rc::Rc, sync::Arc};

use fred::{
    interfaces::{ClientLike, PubsubInterface},
    prelude::{Client, Error as RedisError},
    types::Value,
};
use tokio::sync::mpsc;
use tracing::debug;

use super::{
    Shared,
    history::StreamKeys,
    load_scripts,
    scripts::{PUBLISH_SHA, evalsha, is_noscript, replies, seconds},
    wire,
};
use crate::{
    event::{Event, PublishOptions},
    ids::{EventId, PublishedAt, Publisher, Route, ShardId},
    protocol::reply::published_json,
    stats::BridgeStats,
    xshard::ShardMessage,
};

/// Most publishes in one pipeline to Redis.
const PUBLISH_BATCH: usize = 512;

/// A publish on its way to Redis.
#[derive(Debug)]
pub(super) struct PublishJob {
    channel: String,
    /// The payload; for a stored event, without its opening `{` (the script puts the id
    /// first).
    payload: String,
    /// The stream's history keys and arguments, when it keeps history.
    stored: Option<StoredPublish>,
    route: Route,
    /// Send the publisher its receipt.
    ack: bool,
    reply_to: Option<(ShardId, Publisher, Box<str>)>,
}

/// The script's keys and retention arguments for one stored publish.
#[derive(Debug)]
struct StoredPublish {
    keys: Vec<String>,
    /// size, ttl, meta ttl (in seconds), the floor's epoch and offset[, idempotency
    /// window in seconds].
    retention: Vec<String>,
}

/// A client's event: to Redis when the bridge is ready (through the history script when
/// its stream keeps history), else to this node's shards only (and the v1 publisher is
/// told).
pub(super) async fn publish(
    shared: &Shared,
    jobs: &mpsc::UnboundedSender<PublishJob>,
    (event, published): (Event, PublishedAt),
    options: PublishOptions,
    reply_to: Option<(ShardId, Publisher)>,
    targets: &mut Vec<ShardId>,
) {
    let reply_to = reply_to.map(|(shard, conn)| (shard, conn, event.sender.as_str().into()));
    if shared.ready() {
        let mut payload = String::new();
        wire::write_payload(&event, published, &mut payload);
        let retention = shared.retention(&event.route);
        let stored = retention.enabled().then(|| {
            // The script writes `{"id":"...",` and then the rest of the object.
            payload.remove(0);
            let keys = StreamKeys::of(&shared.prefix, &event.route);
            let floor = shared.streams.borrow().floor_of(&event.route);
            let mut retention = vec![
                retention.size.to_string(),
                seconds(retention.ttl),
                seconds(shared.history.meta_ttl.max(retention.ttl)),
                floor.map(|f| f.epoch.to_string()).unwrap_or_default(),
                floor.map_or(0, |f| f.offset).to_string(),
            ];
            let mut script_keys = vec![keys.stream.clone(), keys.meta.clone()];
            if let Some(key) = &options.idempotency_key {
                script_keys.push(keys.idempotency(&shared.prefix, key));
                retention.push(seconds(shared.idempotency_window));
            }
            StoredPublish { keys: script_keys, retention }
        });
        let job = PublishJob {
            channel: shared.channels.of_route(&event.route),
            payload,
            stored,
            route: event.route,
            ack: options.ack,
            reply_to,
        };
        shared.in_flight.set(shared.in_flight.get() + 1);
        let _ = jobs.send(job);
        return;
    }
    BridgeStats::add(&shared.bridge().publish_errors, 1);
    shared.interest.borrow().targets(&event.route, shared.shards, targets);
    if !targets.is_empty() {
        let delivery = event.encode(&shared.stats.node, None).published_at(published);
        shared.deliver(targets, ShardMessage::Deliver(Arc::new(delivery))).await;
    }
    if let Some(to) = reply_to {
        let message =
            "Redis is unavailable: delivered to this node's clients only, not stored".to_owned();
        shared.reply_unavailable(to, message).await;
    }
}

/// Sends `jobs` to Redis in one pipeline; one result per job, in order.
async fn send_publishes(publisher: &Client, jobs: &[PublishJob]) -> Vec<Result<Value, RedisError>> {
    let pipeline = publisher.pipeline();
    let mut queued = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result: Result<(), RedisError> = match &job.stored {
            None => pipeline.publish(job.channel.as_str(), job.payload.as_str()).await,
            Some(stored) => {
                let mut args = Vec::with_capacity(4 + stored.keys.len() + stored.retention.len());
                args.push(PUBLISH_SHA.clone());
                args.push(stored.keys.len().to_string());
                args.extend(stored.keys.iter().cloned());
                args.push(job.channel.clone());
                args.push(job.payload.clone());
                args.extend(stored.retention.iter().cloned());
                pipeline.custom(evalsha(), args).await
            }
        };
        queued.push(result);
    }
    replies(pipeline, queued).await
}

/// The publisher task: pipelines publishes to Redis in arrival order, one batch in
/// flight; every failure is counted and told to its v1 publisher, every stored event's id
/// to a publisher that asked for a receipt.
pub(super) async fn publish_jobs(
    shared: Rc<Shared>,
    publisher: Client,
    mut jobs: mpsc::UnboundedReceiver<PublishJob>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while jobs.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut results = send_publishes(&publisher, &batch).await;
        if results.iter().any(|r| r.as_ref().is_err_and(is_noscript)) {
            // Redis restarted and forgot the script; those publishes did not run: load
            // it and send them again, in the same order.
            load_scripts(&publisher).await;
            let again = noscript_retries(&batch, &results);
            let retry: Vec<PublishJob> = again
                .iter()
                .rev()
                .map(|&i| batch.remove(i))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let retried = send_publishes(&publisher, &retry).await;
            for (&i, (job, result)) in again.iter().zip(retry.into_iter().zip(retried)) {
                batch.insert(i, job);
                results[i] = result;
            }
        }
        let sent = batch.len();
        for (job, result) in batch.drain(..).zip(results) {
            answer_publish(&shared, job, result).await;
        }
        shared.in_flight.set(shared.in_flight.get().saturating_sub(sent));
        shared.room.notify_one();
    }
}

/// Which publishes of a batch to send again after NOSCRIPT (Redis forgot the script: they
/// did not run): each one that failed so, unless a later publish of the same stream in the
/// batch ran — the script was loaded in between, by another node — since sending it again
/// now would give it an id after that later event's. Those stay failed, and their
/// publishers are told (`unavailable`).
fn noscript_retries(batch: &[PublishJob], results: &[Result<Value, RedisError>]) -> Vec<usize> {
    (0..results.len())
        .filter(|&i| results[i].as_ref().is_err_and(is_noscript))
        .filter(|&i| {
            !(i + 1..results.len()).any(|j| results[j].is_ok() && batch[j].route == batch[i].route)
        })
        .collect()
}

/// Tells the publisher how its publish went: an error reply if it failed, the receipt if
/// it asked for one.
async fn answer_publish(shared: &Shared, job: PublishJob, result: Result<Value, RedisError>) {
    let PublishJob { stored, route, ack, reply_to, .. } = job;
    match result {
        Err(e) => {
            BridgeStats::add(&shared.bridge().publish_errors, 1);
            debug!(cause = %e.details(), "publish to Redis failed");
            if let Some(to) = reply_to {
                let message = format!(
                    "could not publish to Redis ({}): other nodes may not have received it",
                    e.details()
                );
                shared.reply_unavailable(to, message).await;
            }
        }
        Ok(value) => {
            let id = stored.and_then(|_| value.as_str().and_then(|id| id.parse::<EventId>().ok()));
            if let Some(id) = id {
                shared.streams.borrow_mut().handle_receipt(&route, id);
            }
            let Some((shard, conn, user)) = reply_to.filter(|_| ack) else { return };
            let json = published_json(&route, id).into_boxed_str();
            shared.deliver(&[shard], ShardMessage::Reply { to: conn, user, json }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(topic: &str) -> PublishJob {
        PublishJob {
            channel: format!("c:{topic}"),
            payload: String::new(),
            stored: None,
            route: Route::Topic(topic.into()),
            ack: false,
            reply_to: None,
        }
    }

    #[test]
    fn a_noscript_retry_never_puts_a_stream_out_of_order() {
        let noscript =
            || Err(RedisError::new(fred::error::ErrorKind::Unknown, "NOSCRIPT no script"));
        let ok = || Ok(Value::Null);
        let batch = [job("a"), job("b"), job("a"), job("c"), job("c")];
        // a: the first failed and a later one of `a` ran (the script came back meanwhile):
        // sending it again would give it the later id — it stays failed. b failed alone:
        // sent again. c: both failed: both sent again, in order.
        let results = [noscript(), noscript(), ok(), noscript(), noscript()];
        assert_eq!(noscript_retries(&batch, &results), [1, 3, 4]);
    }
}
