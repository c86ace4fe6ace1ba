//! The shard hop: one delivery fanned out to N local connections, without sockets.
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

use std::hint::black_box;

use corecast::{
    Config,
    conn::{Conn, Mode},
    event::{Event, Payload},
    shard::Shard,
    xshard::Route,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_fan_out");
    for n in [1usize, 100, 10_000, 100_000] {
        let shard = Shard::detached(Config::default());
        let conns: Vec<_> =
            (0..n).map(|i| Conn::detached(&shard, &format!("u{i}"), Mode::Seed)).collect();
        // Half the connections subscribe to "news", the other half to "sports".
        for (i, conn) in conns.iter().enumerate() {
            let topic = if i % 2 == 0 { "news" } else { "sports" };
            shard.hub.borrow_mut().subscribe(topic, conn.id.get());
        }
        let broadcast = Event {
            sender: "pub".into(),
            route: Route::Broadcast,
            payload: Payload::Text("x".repeat(64)),
        }
        .encode();
        let topic = Event {
            sender: "pub".into(),
            route: Route::Topic("news".into()),
            payload: Payload::Text("x".repeat(64)),
        }
        .encode();

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

criterion_group!(benches, fan_out);
criterion_main!(benches);
