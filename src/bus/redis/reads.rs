//! The bridge's history reads: the reads task (gap fills and replays the stream core
//! asks for, pipelined), what comes back handed to the stream core, the growing pause
//! before a failed read is made again, abandoning an epoch Redis lost writes of, and in
//! streams mode the stream reader (blocking XREADs from the node's positions).
//!
//! Runs on: the bridge thread (the reads task, the stream reader, and the bridge's loop
//! for what comes back). Pure: framing a read's entries ([`deliveries_of`]) and the retry
//! pause ([`retry_pause`], with OS-seeded jitter); the rest does I/O (Redis, the shards'
//! inboxes through the stream core's effects).

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use fred::{
    interfaces::ClientLike,
    prelude::{Client, Error as RedisError},
    types::Value,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    Shared,
    history::{self, Snapshot, StreamKeys},
    load_scripts,
    scripts::{READ_SHA, REBASE_SHA, evalsha, is_noscript, replies, seconds},
    streams::{FILL_COUNT, ReadFrom, ReadJob},
    wire,
};
use crate::{
    ids::{Route, ShardId},
    stats::BridgeStats,
    xshard::Delivery,
};

/// Most history reads in one pipeline.
pub(super) const READ_BATCH: usize = 256;

/// First pause before a failed history read is made again; it doubles per failure up to
/// [`READ_RETRY_MAX`], with full jitter so that nodes coming back together spread out.
const READ_RETRY_FIRST: Duration = Duration::from_millis(100);

/// Longest pause before a failed history read is made again.
const READ_RETRY_MAX: Duration = Duration::from_secs(5);

/// What a history read returned, back to the bridge's loop.
#[derive(Debug)]
pub(super) struct ReadDone {
    job: ReadJob,
    result: Result<Option<Snapshot>, String>,
}

/// How long one XREAD of the stream reader blocks: new streams join the read within
/// this time.
const STREAM_BLOCK: Duration = Duration::from_millis(100);

/// Streams mode: reads every stream the node delivers with blocking XREADs from its
/// position, and hands what comes to the bridge's loop, which delivers it in order
/// through the stream core, then reads again. Pub/Sub still brings payloads without ids
/// (other publishers), the first event of a new epoch (a cursor in the old one would never
/// reach it), and the node's liveness signal; every other stored event comes from here.
pub(super) async fn read_streams(
    shared: Rc<Shared>,
    reader: Client,
    out: mpsc::UnboundedSender<StreamBatch>,
) {
    let command = || {
        fred::types::CustomCommand::new_static("XREAD", fred::types::ClusterHash::FirstKey, true)
    };
    loop {
        // Each stream from where the node stands (its contiguous position).
        let wanted = shared.streams.borrow().stream_cursors();
        if wanted.is_empty() || !reader.is_connected() {
            tokio::time::sleep(STREAM_BLOCK).await;
            continue;
        }
        let mut args = Vec::with_capacity(6 + 2 * wanted.len());
        args.extend([
            "BLOCK".to_owned(),
            STREAM_BLOCK.as_millis().to_string(),
            "COUNT".to_owned(),
            FILL_COUNT.to_string(),
            "STREAMS".to_owned(),
        ]);
        args.extend(wanted.iter().map(|(route, _)| StreamKeys::of(&shared.prefix, route).stream));
        args.extend(wanted.iter().map(|(_, at)| format!("{}-0", at.offset)));
        let reply: Result<Value, RedisError> = reader.custom(command(), args).await;
        let batches = match reply {
            Ok(value) => match history::parse_xread(value) {
                Ok(batches) => batches,
                Err(why) => {
                    warn!(cause = %why, "unexpected XREAD answer");
                    tokio::time::sleep(STREAM_BLOCK).await;
                    continue;
                }
            },
            Err(e) => {
                debug!(cause = %e.details(), "XREAD failed (retried)");
                tokio::time::sleep(STREAM_BLOCK).await;
                continue;
            }
        };
        BridgeStats::add(&shared.bridge().stream_reads, 1);
        let prefix = format!("{}history:", shared.prefix);
        let batch: Vec<(Route, Vec<String>)> = batches
            .into_iter()
            .filter_map(|(key, entries)| {
                let route = key.strip_prefix(&prefix).and_then(history::route_of_stream)?;
                Some((route, entries.into_iter().map(|(_, payload)| payload).collect()))
            })
            .collect();
        // The next read starts where the delivery of this one left the cursors.
        let (processed, done) = tokio::sync::oneshot::channel();
        if out.send((batch, processed)).is_err() {
            return;
        }
        let _ = done.await;
    }
}

/// What one XREAD brought, per stream, for the bridge's loop to deliver; the loop says
/// when it has.
pub(super) type StreamBatch = (Vec<(Route, Vec<String>)>, tokio::sync::oneshot::Sender<()>);

/// The reads task: runs history reads in pipelines, in order, and hands each result back
/// to the bridge's loop.
pub(super) async fn read_jobs(
    publisher: Client,
    prefix: String,
    mut jobs: mpsc::UnboundedReceiver<ReadJob>,
    done: mpsc::UnboundedSender<ReadDone>,
) {
    let mut batch = Vec::with_capacity(READ_BATCH);
    while jobs.recv_many(&mut batch, READ_BATCH).await > 0 {
        let mut results = send_reads(&publisher, &prefix, &batch).await;
        if results.iter().any(|r| r.as_ref().is_err_and(is_noscript)) {
            load_scripts(&publisher).await;
            results = send_reads(&publisher, &prefix, &batch).await;
        }
        for (job, result) in batch.drain(..).zip(results) {
            let result =
                result.map_err(|e| e.details().to_owned()).and_then(history::parse_snapshot);
            if done.send(ReadDone { job, result }).is_err() {
                return;
            }
        }
    }
}

/// Sends `jobs` to Redis in one pipeline; one result per job, in order.
pub(super) async fn send_reads(
    publisher: &Client,
    prefix: &str,
    jobs: &[ReadJob],
) -> Vec<Result<Value, RedisError>> {
    let pipeline = publisher.pipeline();
    let mut queued = Vec::with_capacity(jobs.len());
    for job in jobs {
        let keys = StreamKeys::of(prefix, &job.route);
        let from = match job.from {
            ReadFrom::Offset(offset) => offset.max(1).to_string(),
            ReadFrom::Latest => "latest".to_owned(),
        };
        let args = vec![
            READ_SHA.clone(),
            "2".to_owned(),
            keys.stream,
            keys.meta,
            from,
            job.count.to_string(),
        ];
        let result: Result<(), RedisError> = pipeline.custom(evalsha(), args).await;
        queued.push(result);
    }
    replies(pipeline, queued).await
}

/// Frames a snapshot's entries once each (they carry their ids).
fn deliveries_of(
    route: &Route,
    entries: Vec<(u64, String)>,
    json: &mut String,
) -> Vec<Arc<Delivery>> {
    entries
        .into_iter()
        .map(|(_, payload)| Arc::new(wire::delivery_from(route.clone(), &payload, json)))
        .filter(|d| d.id.is_some())
        .collect()
}

/// A history read came back: its entries framed once, then the stream core decides.
pub(super) async fn on_read(
    shared: &Shared,
    done: ReadDone,
    json: &mut String,
    targets: &mut Vec<ShardId>,
) {
    BridgeStats::add(&shared.bridge().history_reads, 1);
    let ReadDone { job, result } = done;
    if let Err(why) = &result {
        debug!(route = ?job.route, cause = %why, "history read failed");
    }
    let framed = result.map(|s| s.map(|s| (s.state, deliveries_of(&job.route, s.entries, json))));
    shared.streams.borrow_mut().handle_read(job, framed, Instant::now());
    shared.run_effects(None, targets).await;
}

/// The pause before the `failures`-th retry of a failed read: exponential from
/// [`READ_RETRY_FIRST`] up to [`READ_RETRY_MAX`], with full jitter (a uniform pick below
/// it) so that the nodes and streams that failed together do not retry together.
pub(super) fn retry_pause(failures: u32) -> Duration {
    let cap = READ_RETRY_FIRST.saturating_mul(1 << failures.min(16)).min(READ_RETRY_MAX);
    cap.mul_f64(jitter())
}

/// A number in `[0, 1)`, different at each call: `RandomState` is seeded from the OS's
/// randomness once per thread and moves on at each `new()`.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Redis lost writes of `route`'s `epoch` (a read found its last offset below what this
/// node had delivered): has Redis abandon it ([`REBASE_SCRIPT`](history::REBASE_SCRIPT),
/// a compare-and-set, so nodes that find it together change the epoch once), retried with
/// a growing pause until Redis answers. `told`: the stream's clients were told
/// `recovered: false` (counted once per finding).
pub(super) fn abandon_epoch(shared: &Shared, route: Route, epoch: u64, told: bool) {
    if told {
        BridgeStats::add(&shared.bridge().epochs_abandoned, 1);
        warn!(
            ?route,
            epoch,
            "Redis lost writes of this stream (it reads below what this node delivered): abandoning the epoch so that no id is used twice"
        );
    }
    let keys = StreamKeys::of(&shared.prefix, &route);
    let meta_ttl = seconds(shared.history.meta_ttl.max(shared.retention(&route).ttl));
    let publisher = shared.publisher.clone();
    tokio::task::spawn_local(async move {
        let args = vec![
            REBASE_SHA.clone(),
            "2".to_owned(),
            keys.stream,
            keys.meta,
            epoch.to_string(),
            meta_ttl,
        ];
        for failures in 1.. {
            let result: Result<Value, RedisError> = publisher.custom(evalsha(), args.clone()).await;
            match result {
                Ok(_) => return,
                Err(e) if is_noscript(&e) => load_scripts(&publisher).await,
                Err(e) => {
                    debug!(cause = %e.details(), "abandoning an epoch failed (retried)");
                    tokio::time::sleep(retry_pause(failures)).await;
                }
            }
        }
    });
}
