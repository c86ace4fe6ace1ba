//! The contract every bus implementation keeps (src/bus/mod.rs): one order per stream
//! across shards, exactly once, and interest (a shard that gains a subscriber gets the
//! topic). Each test body takes a started server, so the Redis bridge runs the same
//! bodies against a real redis-server.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::support::*;

/// Tiny shard inboxes: publishers on different shards then wait for room at the same
/// time, which is when per-shard orders would diverge if the bus did not sequence.
fn small_queues(cfg: &mut corecast::Config) {
    cfg.inbox_capacity = 2;
}

/// Events each publisher sends per stream.
const PER_PUBLISHER: usize = 300;

/// Connects `user` (v1) until there are `per_shard` connections on each of the node's two
/// shards; the extra connections are dropped.
async fn on_both_shards(server: &TestServer, user: &str, per_shard: usize) -> Vec<Client> {
    let mut kept: Vec<Client> = Vec::new();
    for _ in 0..400 {
        let on = |s: u16, kept: &[Client]| kept.iter().filter(|c| c.shard == s).count();
        if on(0, &kept) >= per_shard && on(1, &kept) >= per_shard {
            return kept;
        }
        let c = connect(server.addr, user, true).await;
        if on(c.shard, &kept) < per_shard {
            kept.push(c);
        }
    }
    panic!("the kernel put 400 connections on one shard");
}

/// Receives `n` messages (skipping none: anything else is a failure of the test).
async fn recv_n(client: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(client.recv_json().await);
    }
    got
}

/// Two publishers on different shards send `PER_PUBLISHER` events each, at the same time,
/// on one stream; every receiver (at least two per shard) sees every event exactly once
/// and all receivers see the same sequence.
async fn one_order_per_stream(
    receivers: &mut [Client],
    publishers: &mut [Client],
    command: impl Fn(usize, &str) -> Value,
) {
    assert_eq!(publishers.len(), 2);
    assert_ne!(publishers[0].shard, publishers[1].shard, "publishers on different shards");
    let sends = publishers.iter_mut().map(|p| {
        let name = format!("shard{}", p.shard);
        let cmds: Vec<Value> = (0..PER_PUBLISHER).map(|i| command(i, &name)).collect();
        async move {
            for cmd in cmds {
                p.send_json(cmd).await;
            }
        }
    });
    join_all(sends).await;
    let total = 2 * PER_PUBLISHER;
    let sequences = join_all(receivers.iter_mut().map(|r| recv_n(r, total))).await;
    let first = &sequences[0];
    let distinct: HashSet<String> = first.iter().map(|m| m["data"].to_string()).collect();
    assert_eq!(distinct.len(), total, "every event exactly once");
    for (i, seq) in sequences.iter().enumerate() {
        assert_eq!(seq, first, "receiver {i} (shard {}) saw another order", receivers[i].shard);
    }
}

/// Topics: subscribers on both shards see one order of two shards' publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_topic_stream_has_one_order() {
    let server = TestServer::start(small_queues);
    let mut receivers = on_both_shards(&server, "reader", 2).await;
    for r in receivers.iter_mut() {
        r.send_json(json!({"op":"subscribe","topic":"race"})).await;
        assert_eq!(r.recv_json().await, json!({"type":"subscribed","topic":"race"}));
    }
    let mut publishers = on_both_shards(&server, "writer", 1).await;
    one_order_per_stream(
        &mut receivers,
        &mut publishers,
        |i, me| json!({"op":"publish","topic":"race","data":format!("{me}-{i}")}),
    )
    .await;
}

/// Broadcasts: every connection sees one order (the publishers' own connections too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broadcast_stream_has_one_order() {
    let server = TestServer::start(small_queues);
    let mut receivers = on_both_shards(&server, "reader", 2).await;
    let mut publishers = on_both_shards(&server, "writer", 1).await;
    let total = 2 * PER_PUBLISHER;
    one_order_per_stream(
        &mut receivers,
        &mut publishers,
        |i, me| json!({"op":"broadcast","data":format!("{me}-{i}")}),
    )
    .await;
    // The publishers received the same sequence too.
    let mut own = Vec::new();
    for p in publishers.iter_mut() {
        own.push(recv_n(p, total).await);
    }
    assert_eq!(own[0], own[1], "publishers see one order");
}

/// A user's direct messages: that user's connections on both shards see one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_direct_stream_has_one_order() {
    let server = TestServer::start(small_queues);
    let mut receivers = on_both_shards(&server, "dora", 2).await;
    let mut publishers = on_both_shards(&server, "writer", 1).await;
    one_order_per_stream(
        &mut receivers,
        &mut publishers,
        |i, me| json!({"op":"direct","to":"dora","data":format!("{me}-{i}")}),
    )
    .await;
}

/// Interest: a topic's first subscriber on a shard starts that shard's share of the
/// stream, the last one leaving ends it, and a client that publishes right after its
/// `subscribed` gets its own event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_interest_follows_subscriptions() {
    let server = TestServer::start(small_queues);
    let mut clients = on_both_shards(&server, "c", 1).await;
    for round in 0..20 {
        for c in clients.iter_mut() {
            c.send_json(json!({"op":"subscribe","topic":"flip"})).await;
            assert_eq!(c.recv_json().await["type"], "subscribed");
            let data = format!("{}-{round}", c.shard);
            c.send_json(json!({"op":"publish","topic":"flip","data":data})).await;
            assert_eq!(c.recv_json().await["data"], data, "own event right after subscribing");
            c.send_json(json!({"op":"unsubscribe","topic":"flip"})).await;
            assert_eq!(c.recv_json().await["type"], "unsubscribed");
        }
    }
}
