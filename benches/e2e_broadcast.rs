//! End to end in one process: a corecast node (2 shards, embedded bus) and K real
//! WebSocket clients over loopback; one client publishes, the time is until **every**
//! client has received the message.
//!
//! Measures the whole data flow (client frame → reader → bus → both shards' inboxes →
//! fan-out → `sendmsg` → client `recv`) for K = 10 and 100. The clients (tokio-tungstenite
//! on their own runtime) share the machine's two cores with the shards, so this bench is
//! a regression guard, not a capacity figure: capacity comes from `corecast-load` with the
//! server alone on its core (see BENCHMARKS.md).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use corecast::{Config, config::ShardCount};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn e2e(c: &mut Criterion) {
    let mut cfg = Config::default();
    cfg.listen.0 = "127.0.0.1:0".parse().expect("address");
    cfg.shards = ShardCount::Exactly(2);
    cfg.app_ping_interval.0 = Duration::ZERO;
    let server = corecast::start(cfg).expect("server starts");
    let addr = server.local_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("e2e_broadcast");
    group.measurement_time(Duration::from_secs(5));
    for k in [10usize, 100] {
        let (mut publisher, mut readers) = rt.block_on(async {
            let mut clients = Vec::new();
            for i in 0..k {
                let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/u{i}"))
                    .await
                    .expect("connect");
                clients.push(ws);
            }
            let publisher = clients.pop().expect("k ≥ 1");
            (publisher, clients)
        });
        group.throughput(Throughput::Elements(k as u64));
        group.bench_with_input(BenchmarkId::new("clients", k), &k, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    publisher.send(Message::text("tick")).await.expect("send");
                    // Every client, the publisher included, receives it once.
                    let all = readers.iter_mut().map(|r| async move {
                        while !matches!(r.next().await, Some(Ok(Message::Text(_)))) {}
                    });
                    futures_util::future::join_all(all).await;
                    while !matches!(publisher.next().await, Some(Ok(Message::Text(_)))) {}
                })
            })
        });
        drop(readers);
        drop(publisher);
    }
    group.finish();
    server.shutdown();
    server.join().expect("shards exit");
}

criterion_group!(benches, e2e);
criterion_main!(benches);
