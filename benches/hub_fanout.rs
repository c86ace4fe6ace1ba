//! The shard hop without sockets: one delivery fanned out to N local connections, and the
//! hub's subscription churn at 100,000 connections.
//!
//! Measures `Shard::fan_out` on a detached shard (no executor, no sockets; connections
//! have fd −1 and are never flushed): the hub lookup, one `Rc` per delivery, and per
//! connection an `Rc` clone pushed into its queue plus the dirty-list entry, for
//! - `broadcast`: every connection of the shard (seed frames);
//! - `topic`: the subscribers of one topic, the other connections subscribed elsewhere.
//!
//! Leaves out: the write itself (one `sendmsg` per dirty socket, measured end to end by
//! the load tool), the cross-shard channel (`benches/xshard.rs`) and encoding
//! (`benches/frame_encode.rs`). After each iteration the queued frames are discarded,
//! which is counted in the time (it is a `VecDeque` pop per connection).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use corecast::{
    Config,
    testing::{ConnId, Event, Hub, Mode, NodeId, Payload, Route, Shard, Subscriptions},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_fan_out");
    let node = NodeId("bench".into());
    for n in [1usize, 100, 10_000, 100_000] {
        let shard = Shard::detached(Config::default());
        let conns: Vec<_> =
            (0..n).map(|i| shard.add_detached(&format!("u{i}"), Mode::Seed)).collect();
        // Half the connections subscribe to "news", the other half to "sports".
        for (i, registered) in conns.iter().enumerate() {
            let topic = if i % 2 == 0 { "news" } else { "sports" };
            shard.subscribe(registered.conn().id(), topic, None, false);
        }
        let broadcast = Event {
            sender: "pub".into(),
            route: Route::Broadcast,
            payload: Payload::Text("x".repeat(64)),
        }
        .encode(&node, None);
        let topic = Event {
            sender: "pub".into(),
            route: Route::Topic("news".into()),
            payload: Payload::Text("x".repeat(64)),
        }
        .encode(&node, None);

        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("broadcast", n), &n, |b, _| {
            b.iter(|| {
                black_box(shard.fan_out(&broadcast));
                shard.discard_queued();
            })
        });
        group.throughput(Throughput::Elements(n.div_ceil(2) as u64));
        group.bench_with_input(BenchmarkId::new("topic_half", n), &n, |b, _| {
            b.iter(|| {
                black_box(shard.fan_out(&topic));
                shard.discard_queued();
            })
        });
        drop(conns);
    }
    group.finish();
}

/// Connections in the churn cases.
const CHURN_CONNS: u32 = 100_000;
/// Topics the mass-disconnect connections spread over (10 each: 10,000 subscribers per topic).
const CHURN_TOPICS: u32 = 100;

/// Subscription churn on the hub alone (no sockets, no shard):
/// - `join_leave_one_topic_100k`: 100,000 connections subscribe to one topic, then all
///   unsubscribe (a room filling and emptying);
/// - `mass_disconnect_100k_x10_topics`: 100,000 connections, each with its user entry
///   and 10 of 100 topics, all removed (a node losing its clients, or the shutdown drain);
///   only the removal is timed.
fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_churn");
    group.sample_size(10).warm_up_time(Duration::from_millis(1));
    group.throughput(Throughput::Elements(u64::from(CHURN_CONNS)));
    group.bench_function("join_leave_one_topic_100k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut hub = Hub::new();
                let started = Instant::now();
                for i in 0..CHURN_CONNS {
                    black_box(hub.subscribe("room", ConnId(i), 256));
                }
                for i in 0..CHURN_CONNS {
                    black_box(hub.unsubscribe("room", ConnId(i)));
                }
                total += started.elapsed();
            }
            total
        })
    });
    let names: Vec<String> = (0..CHURN_TOPICS).map(|t| format!("room-{t}")).collect();
    let users: Vec<String> = (0..CHURN_CONNS).map(|i| format!("u{i}")).collect();
    group.bench_function("mass_disconnect_100k_x10_topics", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut hub = Hub::new();
                for i in 0..CHURN_CONNS {
                    hub.add_conn(&users[i as usize], ConnId(i));
                    for k in 0..10 {
                        hub.subscribe(
                            &names[((i + k * 10) % CHURN_TOPICS) as usize],
                            ConnId(i),
                            256,
                        );
                    }
                }
                let mut lost = Vec::new();
                let started = Instant::now();
                for i in 0..CHURN_CONNS {
                    hub.remove_conn(&users[i as usize], ConnId(i), &mut lost);
                }
                total += started.elapsed();
                assert_eq!(lost.len(), (CHURN_CONNS + CHURN_TOPICS) as usize);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, fan_out, churn);
criterion_main!(benches);
