//! The bridge's subscriptions: a shard's interest change turned into what Redis must do,
//! and the subscription task that applies those changes in order, batched (SUBSCRIBE,
//! UNSUBSCRIBE, everything again after a reconnect), learns where new streams stand,
//! confirms each shard's new topic once subscribed, and retries what Redis refused.
//!
//! Runs on: the bridge thread (its loop applies interest changes; the subscription task
//! does the rest). Pure: batching the queued changes ([`batch_steps`]) and recording a
//! SUBSCRIBE's outcome; the retry bookkeeping is in `subscriptions` ([`Refused`], sans
//! I/O); the rest does I/O (Redis through both connections, the shards' inboxes).

use std::{collections::HashSet, rc::Rc, sync::atomic::Ordering::Relaxed};

use fred::{
    interfaces::{ClientLike, PubsubInterface},
    prelude::{Client, Error as RedisError},
    types::Value,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    Shared,
    control::load_blocks,
    history,
    reads::{READ_BATCH, retry_pause, send_reads},
    receive::value_text,
    streams::{ReadFor, ReadFrom, ReadJob},
    subscriptions::Refused,
    tracker::Position,
    wire::Incoming,
};
use crate::{
    bus::interest::NodeInterest,
    ids::{Interest, InterestChange, ShardId},
    stats::BridgeStats,
    xshard::ShardMessage,
};

/// Most channels in one SUBSCRIBE or UNSUBSCRIBE.
const SUBSCRIBE_BATCH: usize = 1024;

/// A subscription change, applied in order by the subscription task.
#[derive(Debug)]
pub(super) enum SubscriptionOp {
    /// Subscribe to `channel` (when the node just gained it), then confirm `confirm`'s
    /// topic to that shard.
    Subscribe { channel: Option<String>, confirm: Option<(ShardId, Box<str>)> },
    /// Unsubscribe from the channel (the node lost its last local subscriber).
    Unsubscribe(String),
    /// After a reconnect: subscribe again to every channel of current interest.
    ResubscribeAll,
}

/// Applies a shard's interest change to the table; returns what Redis must do about it.
pub(super) fn interest_op(
    shared: &Shared,
    shard: ShardId,
    change: InterestChange,
) -> SubscriptionOp {
    let confirm = match &change {
        InterestChange::Gained(Interest::Topic(topic)) => Some((shard, topic.clone())),
        _ => None,
    };
    let channel = match &change {
        InterestChange::Gained(i) | InterestChange::Lost(i) => shared.channels.of_interest(i),
    };
    match shared.interest.borrow_mut().apply(shard, change) {
        NodeInterest::Gained => SubscriptionOp::Subscribe { channel: Some(channel), confirm },
        NodeInterest::Lost => SubscriptionOp::Unsubscribe(channel),
        // Already subscribed (or being subscribed: the confirmation waits for that
        // SUBSCRIBE, which is before it in the queue).
        NodeInterest::Unchanged => SubscriptionOp::Subscribe { channel: None, confirm },
    }
}

/// The subscription task: applies subscription changes in order, consecutive ones of a
/// kind batched into one command; confirms each shard's new topic after its SUBSCRIBE. A
/// SUBSCRIBE Redis refuses while connected is retried, one channel at a time, with a
/// growing pause; the confirmations of its topics wait for it ([`Refused`]).
pub(super) async fn apply_subscriptions(
    shared: Rc<Shared>,
    subscriber: Client,
    publisher: Client,
    mut ops: mpsc::UnboundedReceiver<SubscriptionOp>,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut refused = Refused::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut pending = Vec::new();
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = ops.recv_many(&mut pending, SUBSCRIBE_BATCH) => {
                if n == 0 {
                    break;
                }
                for step in batch_steps(pending.drain(..)) {
                    apply_step(&shared, &subscriber, &publisher, step, &mut subscribed, &mut refused).await;
                }
            }
            () = retry => {
                retry_at = None;
                let wanted: HashSet<String> = shared.channels_of_interest().into_iter().collect();
                let mut failed = Vec::new();
                for channel in refused.due() {
                    let confirms = if !wanted.contains(&channel) {
                        refused.settled(&channel)
                    } else {
                        match subscribe(&subscriber, &publisher, vec![channel.clone()]).await {
                            // Away: the reconnect subscribes everything again.
                            SubscribeResult::Done { refused: no } if no.is_empty() => {
                                subscribed.insert(channel.clone());
                                refused.settled(&channel)
                            }
                            SubscribeResult::Away => refused.settled(&channel),
                            SubscribeResult::Done { .. } | SubscribeResult::Refused => {
                                failed.push(channel);
                                Vec::new()
                            }
                        }
                    };
                    for (shard, topic) in confirms {
                        shared.deliver(&[shard], ShardMessage::TopicConfirmed(topic)).await;
                    }
                }
                if !failed.is_empty() {
                    refused.refused(failed);
                }
            }
        }
        if !refused.is_empty() && retry_at.is_none() {
            retry_at = Some(tokio::time::Instant::now() + retry_pause(refused.failures()));
        }
        let count = subscribed.len() as u64;
        shared.bridge().subscribed_channels.store(count, Relaxed);
    }
}

/// Applies one step of queued subscription changes.
async fn apply_step(
    shared: &Shared,
    subscriber: &Client,
    publisher: &Client,
    step: Step,
    subscribed: &mut HashSet<String>,
    refused: &mut Refused,
) {
    match step {
        Step::ResubscribeAll => {
            subscribed.clear();
            let all = shared.channels_of_interest();
            // Streams whose position was never learned learn it now; the others are read
            // from their position once subscribed (what was published while the node was
            // away is in the history).
            learn_positions(shared, publisher, &all).await;
            for chunk in all.chunks(SUBSCRIBE_BATCH) {
                let result = subscribe(subscriber, publisher, chunk.to_vec()).await;
                note_subscribe(result, chunk, subscribed, refused);
            }
            // Blocks set while this node was away (or before it started).
            load_blocks(shared, publisher).await;
            shared.streams.borrow_mut().handle_gap_everywhere();
            shared.run_effects(None, &mut Vec::new()).await;
            // Joins and leaves published while the node was away are lost: every
            // presence watcher gets a fresh snapshot (now that news reaches it again).
            shared.apply_to_all(ShardMessage::PresenceResync).await;
        }
        Step::Unsubscribe(channels) => {
            for c in &channels {
                subscribed.remove(c);
                if let Incoming::Event(route) = shared.channels.classify(c) {
                    shared.streams.borrow_mut().untrack(&route);
                }
                // Nobody here wants it any more: what waited for it is answered.
                for (shard, topic) in refused.settled(c) {
                    shared.deliver(&[shard], ShardMessage::TopicConfirmed(topic)).await;
                }
            }
            if let Err(e) = subscriber.unsubscribe(channels).await {
                debug!(cause = %e.details(), "UNSUBSCRIBE failed (the next reconnect forgets it)");
            }
        }
        Step::Subscribe { channels, confirms } => {
            // Where each new stream stands, read before subscribing: an event published in
            // between comes live past that position, and the gap before it is read from
            // the history.
            learn_positions(shared, publisher, &channels).await;
            if !channels.is_empty() {
                // Confirmed even when Redis is away: the node delivers locally meanwhile
                // and subscribes again on reconnect.
                let result = subscribe(subscriber, publisher, channels.clone()).await;
                note_subscribe(result, &channels, subscribed, refused);
            }
            for (shard, topic) in confirms {
                let channel = shared.channels.of_interest(&Interest::Topic(topic.clone()));
                if let Some((shard, topic)) = refused.confirm(channel, (shard, topic)) {
                    shared.deliver(&[shard], ShardMessage::TopicConfirmed(topic)).await;
                }
            }
        }
    }
}

/// Records how a SUBSCRIBE of `channels` went: subscribed, or refused (retried).
fn note_subscribe(
    result: SubscribeResult,
    channels: &[String],
    subscribed: &mut HashSet<String>,
    refused: &mut Refused,
) {
    match result {
        SubscribeResult::Done { refused: no } => {
            subscribed.extend(channels.iter().filter(|c| !no.contains(c)).cloned());
            if !no.is_empty() {
                refused.refused(no);
            }
        }
        SubscribeResult::Refused => refused.refused(channels.iter().cloned()),
        SubscribeResult::Away => {}
    }
}

/// Reads where each stream of `channels` with history stands, for the streams whose
/// position the node does not know; creates their trackers. A failed read leaves the
/// position unknown (the first live event sets it).
async fn learn_positions(shared: &Shared, publisher: &Client, channels: &[String]) {
    let mut jobs = Vec::new();
    for channel in channels {
        let Incoming::Event(route) = shared.channels.classify(channel) else { continue };
        if !shared.retention(&route).enabled() {
            continue;
        }
        let known = shared.streams.borrow().is_known(&route);
        if !known {
            jobs.push(ReadJob {
                route,
                from: ReadFrom::Latest,
                count: 0,
                purpose: ReadFor::Position,
                failures: 0,
            });
        }
    }
    for chunk in jobs.chunks(READ_BATCH) {
        let results = if publisher.is_connected() {
            send_reads(publisher, &shared.prefix, chunk).await
        } else {
            Vec::new()
        };
        BridgeStats::add(&shared.bridge().position_reads, results.len() as u64);
        let mut results = results.into_iter();
        for job in chunk {
            let result = results.next().map(|r| r.map_err(|e| e.details().to_owned()));
            let position = match result.map(|r| r.and_then(history::parse_snapshot)) {
                Some(Ok(None)) => Position::Empty,
                Some(Ok(Some(snapshot))) => Position::At(snapshot.state.position()),
                Some(Err(why)) => {
                    debug!(route = ?job.route, cause = %why, "could not read a stream's position");
                    Position::Unknown
                }
                None => Position::Unknown,
            };
            shared.streams.borrow_mut().track(&job.route, position);
        }
    }
}

/// What the subscription task sends Redis for a run of queued changes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// One SUBSCRIBE of `channels` (none: only confirmations, after what came before),
    /// then the confirmations.
    Subscribe { channels: Vec<String>, confirms: Vec<(ShardId, Box<str>)> },
    /// One UNSUBSCRIBE.
    Unsubscribe(Vec<String>),
    /// Subscribe again to everything of current interest.
    ResubscribeAll,
}

/// Turns queued changes into commands, in order: consecutive changes of one kind become
/// one command (a burst of 1,000 joins is one SUBSCRIBE), and nothing moves past a change
/// of the other kind (a SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE of one channel stays in that
/// order). Pure.
fn batch_steps(ops: impl IntoIterator<Item = SubscriptionOp>) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for op in ops {
        match (op, steps.last_mut()) {
            (SubscriptionOp::ResubscribeAll, _) => steps.push(Step::ResubscribeAll),
            (SubscriptionOp::Unsubscribe(c), Some(Step::Unsubscribe(channels))) => channels.push(c),
            (SubscriptionOp::Unsubscribe(c), _) => steps.push(Step::Unsubscribe(vec![c])),
            (
                SubscriptionOp::Subscribe { channel, confirm },
                Some(Step::Subscribe { channels, confirms }),
            ) => {
                channels.extend(channel);
                confirms.extend(confirm);
            }
            (SubscriptionOp::Subscribe { channel, confirm }, _) => steps.push(Step::Subscribe {
                channels: channel.into_iter().collect(),
                confirms: confirm.into_iter().collect(),
            }),
        }
    }
    steps
}

/// How a SUBSCRIBE went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SubscribeResult {
    /// Redis confirmed it; the channels listed were refused all the same (see
    /// [`subscribe`]).
    Done { refused: Vec<String> },
    /// Not connected: the reconnect subscribes every channel of interest again.
    Away,
    /// Redis answered with an error, or did not answer in time (logged): retried.
    Refused,
}

/// One SUBSCRIBE of `channels`. fred answers `Ok` to a SUBSCRIBE that Redis refused (an
/// ACL without the channel: `NOPERM`), so the node asks Redis (`PUBSUB NUMSUB`, on the
/// publisher connection) whether each channel has a subscriber now: one without any was
/// refused. (A channel another node is subscribed to passes this check even when this
/// node was refused; nodes of one deployment share their Redis user.)
async fn subscribe(
    subscriber: &Client,
    publisher: &Client,
    channels: Vec<String>,
) -> SubscribeResult {
    if !subscriber.is_connected() {
        return SubscribeResult::Away;
    }
    match subscriber.subscribe(channels.clone()).await {
        Ok(()) => {}
        Err(_) if !subscriber.is_connected() => return SubscribeResult::Away,
        Err(e) => {
            warn!(cause = %e.details(), "SUBSCRIBE failed (retried with a growing pause; the topic's subscribers wait)");
            return SubscribeResult::Refused;
        }
    }
    let counts: Result<Vec<Value>, RedisError> = publisher.pubsub_numsub(channels).await;
    let refused: Vec<String> = match counts {
        Ok(counts) => counts
            .chunks(2)
            .filter(|pair| pair.get(1).and_then(Value::as_i64) == Some(0))
            .filter_map(|pair| pair.first().and_then(value_text).map(str::to_owned))
            .collect(),
        // Not known: taken as subscribed (the next reconnect subscribes it again anyway).
        Err(_) => Vec::new(),
    };
    if !refused.is_empty() {
        warn!(channels = ?refused, "Redis refused to SUBSCRIBE (an ACL without these channels?): retried with a growing pause; the topics' subscribers wait");
    }
    SubscribeResult::Done { refused }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_changes_are_batched_in_order() {
        let sub = |c: Option<&str>, confirm: Option<u16>| SubscriptionOp::Subscribe {
            channel: c.map(str::to_owned),
            confirm: confirm.map(|s| (ShardId(s), "t".into())),
        };
        let unsub = |c: &str| SubscriptionOp::Unsubscribe(c.to_owned());
        let steps = batch_steps([
            sub(Some("c:topic:t"), Some(0)),
            sub(None, Some(1)),
            sub(Some("c:user:u"), None),
            unsub("c:topic:t"),
            unsub("c:user:u"),
            sub(Some("c:topic:t"), Some(0)),
            SubscriptionOp::ResubscribeAll,
            sub(None, Some(1)),
        ]);
        let confirm = |s| (ShardId(s), Box::<str>::from("t"));
        assert_eq!(
            steps,
            vec![
                Step::Subscribe {
                    channels: vec!["c:topic:t".into(), "c:user:u".into()],
                    confirms: vec![confirm(0), confirm(1)],
                },
                Step::Unsubscribe(vec!["c:topic:t".into(), "c:user:u".into()]),
                Step::Subscribe { channels: vec!["c:topic:t".into()], confirms: vec![confirm(0)] },
                Step::ResubscribeAll,
                Step::Subscribe { channels: vec![], confirms: vec![confirm(1)] },
            ]
        );
    }
}
