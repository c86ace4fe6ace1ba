//! The cross-thread hop: the bounded flume channel that carries `Arc<Delivery>` from the
//! bus (another shard, later the Redis thread) into a shard's inbox.
//!
//! Measures, between two real threads:
//! - throughput of 10,000 `Arc<Delivery>` sends through `flume::bounded(8192)` (what
//!   corecast uses) vs `std::sync::mpsc::sync_channel(8192)` (the baseline);
//! - a latency histogram (HDR, p50/p99/p99.9 printed after the criterion run) of one
//!   send → receive hop with the receiver parked, i.e. including the wake-up.
//!
//! Leaves out: glommio's own wake-up path (the receiver here is a plain thread blocking
//! in `recv`, not an executor parked in io_uring), which adds the eventfd round trip.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::{sync::Arc, time::Instant};

use corecast::testing::{Delivery, Event, NodeId, Payload, Route};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 10_000;

fn delivery() -> Arc<Delivery> {
    Arc::new(
        Event {
            sender: "pub".into(),
            route: Route::Broadcast,
            payload: Payload::Text("x".repeat(64)),
        }
        .encode(&NodeId("bench".into()), None),
    )
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("xshard_channel");
    group.throughput(Throughput::Elements(BATCH as u64));
    let d = delivery();
    group.bench_function("flume_bounded", |b| {
        let (tx, rx) = flume::bounded::<Arc<Delivery>>(8192);
        let consumer = std::thread::spawn(move || while rx.recv().is_ok() {});
        send_batches(b, &d, |x| tx.send(x).expect("consumer alive"));
        drop(tx);
        consumer.join().expect("consumer thread");
    });
    group.bench_function("std_sync_channel", |b| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Delivery>>(8192);
        let consumer = std::thread::spawn(move || while rx.recv().is_ok() {});
        send_batches(b, &d, |x| tx.send(x).expect("consumer alive"));
        drop(tx);
        consumer.join().expect("consumer thread");
    });
    group.finish();
    latency_histogram();
}

/// Times `BATCH` sends per iteration (a consumer thread drains the other end).
fn send_batches(b: &mut criterion::Bencher<'_>, d: &Arc<Delivery>, send: impl Fn(Arc<Delivery>)) {
    b.iter(|| {
        for _ in 0..BATCH {
            send(d.clone());
        }
    });
}

/// One hop at a time (the receiver is parked between messages): p50/p99/p99.9.
fn latency_histogram() {
    let (tx, rx) = flume::bounded::<(Instant, Arc<Delivery>)>(8192);
    let (back_tx, back_rx) = flume::bounded::<u64>(1);
    let consumer = std::thread::spawn(move || {
        while let Ok((sent, _d)) = rx.recv() {
            let _ = back_tx.send(sent.elapsed().as_nanos() as u64);
        }
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("valid precision");
    let d = delivery();
    for _ in 0..20_000 {
        tx.send((Instant::now(), d.clone())).expect("consumer alive");
        let nanos = back_rx.recv().expect("consumer answers");
        let _ = hist.record(nanos);
    }
    drop(tx);
    consumer.join().expect("consumer thread");
    println!(
        "xshard hop latency (flume, parked receiver, 20,000 hops): p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}

criterion_group!(benches, throughput);
criterion_main!(benches);
