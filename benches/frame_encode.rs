//! The first hop of the data flow: turning one event into what N connections receive.
//!
//! Measures, for one broadcast event and N receiving connections on a shard:
//! - `shared`: corecast's path: `Event::encode` once (JSON + frame header, both wire
//!   formats), wrap the frame in one `Rc`, push an `Rc` clone into each of N queues;
//! - `per_connection`: the baseline a naive server does: build the JSON and encode a
//!   frame (tungstenite `Frame::format`) separately for every connection.
//!
//! Leaves out: sockets and syscalls (the queues are plain `VecDeque`s; the real write is
//! measured by the end-to-end load tool), the cross-shard channel (one `Arc` clone per
//! shard, independent of N). Throughput is reported in deliveries (elements) per second.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::{collections::VecDeque, hint::black_box, rc::Rc};

use corecast::testing::{Event, NodeId, Payload, Route, SharedFrame};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};

fn event() -> Event {
    Event {
        sender: "user-42".into(),
        route: Route::Broadcast,
        payload: Payload::Text(
            "the quick brown fox jumps over the lazy dog, 64 bytes of chat...".into(),
        ),
    }
}

fn encode_per_connection(event: &Event) -> Vec<u8> {
    let Payload::Text(text) = &event.payload else { unreachable!() };
    let mut json = String::with_capacity(96);
    json.push_str(r#"{"sender":"#);
    corecast::testing::push_json_str(&mut json, &event.sender);
    json.push_str(r#","text":"#);
    corecast::testing::push_json_str(&mut json, text);
    json.push('}');
    let mut out = Vec::with_capacity(json.len() + 10);
    Frame::message(json.into_bytes(), OpCode::Data(Data::Text), true)
        .format(&mut out)
        .expect("Vec write");
    out
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast_to_n_connections");
    for n in [1usize, 100, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        let mut shared_queues: Vec<VecDeque<Rc<SharedFrame>>> =
            (0..n).map(|_| VecDeque::new()).collect();
        group.bench_with_input(BenchmarkId::new("shared", n), &n, |b, _| {
            let ev = event();
            b.iter(|| {
                let delivery = ev.encode(&NodeId("bench".into()), None);
                let frame = Rc::new(delivery.seed.clone().expect("broadcast has a seed frame"));
                for q in shared_queues.iter_mut() {
                    q.push_back(frame.clone());
                }
                for q in shared_queues.iter_mut() {
                    black_box(q.pop_front());
                }
            })
        });
        let mut own_queues: Vec<VecDeque<Vec<u8>>> = (0..n).map(|_| VecDeque::new()).collect();
        group.bench_with_input(BenchmarkId::new("per_connection", n), &n, |b, _| {
            let ev = event();
            b.iter(|| {
                for q in own_queues.iter_mut() {
                    q.push_back(encode_per_connection(&ev));
                }
                for q in own_queues.iter_mut() {
                    black_box(q.pop_front());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
