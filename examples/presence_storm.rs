//! A join storm against presence watchers, and its same-volume baseline.
//!
//! `--watchers` connections (of `--watcher-users` users, so that setting them up is not a
//! storm of its own) subscribe to one topic — with `"presence":true` in `--mode presence`.
//! Then `--joiners` connections of distinct users, spread evenly over `--over` seconds:
//! - `presence`: each subscribes to the topic: every watcher gets one `join` per joiner;
//! - `messages` (the baseline): each publishes one message to the topic instead: every
//!   watcher gets one message per joiner — the same number of deliveries.
//!
//! Reports one JSON line: deliveries/s over the storm (first send to the last watcher
//! complete) and the latency (send → receipt) of the events at a sample of watchers.
//! With `--redis-addr`, also the Redis commands per joiner (`INFO commandstats` deltas,
//! minus the idle rate measured just before), total and EVALSHA.
//!
//! Run: `bench/presence_storm.sh` (starts Redis and the node, runs both modes in rounds).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

struct Args {
    addr: SocketAddr,
    mode: String,
    watchers: usize,
    watcher_users: usize,
    joiners: usize,
    over: Duration,
    sample: usize,
    redis: Option<SocketAddr>,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        mode: "presence".into(),
        watchers: 10_000,
        watcher_users: 10,
        joiners: 1_000,
        over: Duration::from_secs(1),
        sample: 200,
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value.parse().expect("--addr ADDR:PORT"),
            "--mode" => a.mode = value,
            "--watchers" => a.watchers = value.parse().expect("--watchers N"),
            "--watcher-users" => a.watcher_users = value.parse().expect("--watcher-users N"),
            "--joiners" => a.joiners = value.parse().expect("--joiners N"),
            "--over" => a.over = Duration::from_secs_f64(value.parse().expect("--over S")),
            "--sample" => a.sample = value.parse().expect("--sample N"),
            "--redis-addr" => a.redis = Some(value.parse().expect("--redis-addr ADDR:PORT")),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, user: &str) -> Ws {
    let mut req = format!("ws://{addr}/ws/{user}").into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("corecast.v1"));
    for attempt in 0..50 {
        match tokio_tungstenite::connect_async(req.clone()).await {
            Ok((ws, _)) => return ws,
            Err(e) if attempt == 49 => panic!("connect {user}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    unreachable!()
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// `INFO commandstats` over a raw connection: total calls, and EVALSHA's.
async fn command_calls(redis: SocketAddr) -> (u64, u64) {
    let mut s = TcpStream::connect(redis).await.expect("redis");
    s.write_all(b"INFO commandstats\r\n").await.unwrap();
    // A RESP bulk string: `$<len>\r\n<len bytes>\r\n`.
    let mut text = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "redis closed");
        text.extend_from_slice(&buf[..n]);
        if let Some(end) = text.windows(2).position(|w| w == b"\r\n") {
            let len: usize = std::str::from_utf8(&text[1..end]).unwrap().parse().unwrap();
            if text.len() >= end + 2 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&text);
    let mut total = 0;
    let mut evalsha = 0;
    for line in text.lines().filter(|l| l.starts_with("cmdstat_")) {
        let calls: u64 = line
            .split_once("calls=")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if line.starts_with("cmdstat_info:") {
            continue;
        }
        total += calls;
        if line.starts_with("cmdstat_evalsha:") {
            evalsha += calls;
        }
    }
    (total, evalsha)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    if args.mode == "cost" {
        cost(&args).await;
        return;
    }
    let presence = args.mode == "presence";
    let topic = "storm";
    // Watchers, subscribed (with their snapshot in presence mode).
    let mut watchers = Vec::with_capacity(args.watchers);
    for chunk in (0..args.watchers).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(chunk.iter().map(|i| async move {
            let mut ws = connect(args.addr, &format!("w{}", i % args.watcher_users)).await;
            let sub = serde_json::json!({"op":"subscribe","topic":topic,"presence":presence});
            ws.send(Message::text(sub.to_string())).await.unwrap();
            assert!(next_text(&mut ws).await.contains("subscribed"));
            if presence {
                assert!(next_text(&mut ws).await.contains("\"presence\""));
            }
            ws
        }))
        .await;
        watchers.extend(opened);
    }
    let mut joiners = Vec::with_capacity(args.joiners);
    for chunk in (0..args.joiners).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(
            chunk.iter().map(|i| async move { connect(args.addr, &format!("j{i}")).await }),
        )
        .await;
        joiners.extend(opened);
    }
    let base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.joiners).map(|_| AtomicU64::new(0)).collect());
    let joiners_n = args.joiners;
    let sample = args.sample.min(args.watchers);
    let mut tasks = Vec::new();
    for (w, mut ws) in watchers.into_iter().enumerate() {
        let sent_at = sent_at.clone();
        let sampled = w < sample;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let mut got = 0;
            while got < joiners_n {
                let text = next_text(&mut ws).await;
                // The watchers' own users joined while they were set up: not storm news.
                if text.contains(r#""user":"w"#) {
                    continue;
                }
                got += 1;
                if sampled {
                    let now = base.elapsed().as_micros() as u64;
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let i: usize = match v["type"].as_str() {
                        Some("join") => v["user"].as_str().unwrap()[1..].parse().unwrap(),
                        _ => v["data"].as_u64().unwrap() as usize,
                    };
                    let sent = sent_at[i].load(Ordering::Relaxed);
                    hist.record(now.saturating_sub(sent).max(1)).unwrap();
                }
            }
            (hist, base.elapsed())
        }));
    }
    let gap = args.over / args.joiners as u32;
    let started = Instant::now();
    for (i, ws) in joiners.iter_mut().enumerate() {
        let due = started + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let command = if presence {
            serde_json::json!({"op":"subscribe","topic":topic})
        } else {
            serde_json::json!({"op":"publish","topic":topic,"data":i})
        };
        sent_at[i].store(base.elapsed().as_micros() as u64, Ordering::Relaxed);
        ws.send(Message::text(command.to_string())).await.unwrap();
    }
    let send_start = sent_at[0].load(Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut last = Duration::ZERO;
    for task in tasks {
        let (h, done) = task.await.unwrap();
        hist.add(h).unwrap();
        last = last.max(done);
    }
    let elapsed = last.as_secs_f64() - send_start as f64 / 1e6;
    let deliveries = (args.watchers * args.joiners) as f64;
    let line = serde_json::json!({
        "mode": args.mode,
        "watchers": args.watchers,
        "joiners": args.joiners,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / elapsed,
        "storm_s": elapsed,
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": hist.max() as f64 / 1000.0,
    });
    println!("{line}");
}

/// The Redis cost of presence: `--joiners` cycles, one at a time, of a user subscribing
/// (the watcher sees its join) then unsubscribing (the watcher sees its leave); `INFO
/// commandstats` deltas over them, minus the idle rate (heartbeats) measured just before,
/// per join + leave. Also the idle rate itself.
async fn cost(args: &Args) {
    let redis = args.redis.expect("--mode cost needs --redis-addr");
    let topic = "cost";
    let mut watcher = connect(args.addr, "watcher").await;
    let sub = serde_json::json!({"op":"subscribe","topic":topic,"presence":true});
    watcher.send(Message::text(sub.to_string())).await.unwrap();
    next_text(&mut watcher).await;
    next_text(&mut watcher).await;
    let mut joiner = connect(args.addr, "joiner").await;
    let idle_window = Duration::from_secs(10);
    let before = command_calls(redis).await;
    tokio::time::sleep(idle_window).await;
    let after = command_calls(redis).await;
    let idle = (
        (after.0 - before.0) as f64 / idle_window.as_secs_f64(),
        (after.1 - before.1) as f64 / idle_window.as_secs_f64(),
    );
    let start = Instant::now();
    let before = command_calls(redis).await;
    for _ in 0..args.joiners {
        for op in ["subscribe", "unsubscribe"] {
            let command = serde_json::json!({"op":op,"topic":topic});
            joiner.send(Message::text(command.to_string())).await.unwrap();
            next_text(&mut joiner).await;
            let news = next_text(&mut watcher).await;
            assert!(news.contains("\"joiner\""), "{news}");
        }
    }
    let after = command_calls(redis).await;
    let window = start.elapsed().as_secs_f64();
    let per = |d: u64, idle: f64| (d as f64 - idle * window) / args.joiners as f64;
    let line = serde_json::json!({
        "mode": "cost",
        "cycles": args.joiners,
        "redis_commands_per_join_and_leave": per(after.0 - before.0, idle.0),
        "redis_evalsha_per_join_and_leave": per(after.1 - before.1, idle.1),
        "idle_commands_per_s": idle.0,
        "idle_evalsha_per_s": idle.1,
    });
    println!("{line}");
}
