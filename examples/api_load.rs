//! Publishes through the server API against the same publishes over WebSocket, closed
//! loop: `--connections` clients each send one publish and wait for its receipt before
//! the next, for `--duration` seconds. Reports publishes/s and receipt latency
//! percentiles as one JSON line. Both paths store the event and answer with its id: an
//! API `POST /api/publish` answered `{"ok":true,"id":...}`, a v1 `publish` with
//! `"ack":true` answered `{"type":"published",...}`.
//!
//! Run: `cargo run --release --example api_load -- --addr 127.0.0.1:8080 --api-key K --mode api`
//! (`bench/api_load.sh` starts the node and runs both modes in interleaved rounds).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

struct Args {
    addr: SocketAddr,
    api_key: String,
    mode: String,
    connections: usize,
    duration: Duration,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        api_key: String::new(),
        mode: "api".into(),
        connections: 8,
        duration: Duration::from_secs(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value.parse().expect("--addr ADDR:PORT"),
            "--api-key" => a.api_key = value,
            "--mode" => a.mode = value,
            "--connections" => a.connections = value.parse().expect("--connections N"),
            "--duration" => {
                a.duration = Duration::from_secs_f64(value.parse().expect("--duration S"))
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One API client: keep-alive POSTs, each answered before the next.
async fn api_client(args: &Args, until: Instant, i: usize) -> Histogram<u64> {
    let mut hist = Histogram::new(3).unwrap();
    let stream = TcpStream::connect(args.addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut stream = BufReader::new(stream);
    let body = format!(r#"{{"topic":"bench.{i}","data":"x"}}"#);
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
        args.api_key,
        body.len()
    );
    let mut line = String::new();
    while Instant::now() < until {
        let sent = Instant::now();
        stream.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut length = 0;
        loop {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            assert!(!line.is_empty(), "connection closed");
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        assert!(
            body.starts_with(br#"{"id""#) || body.starts_with(br#"{"ok":true"#),
            "{}",
            String::from_utf8_lossy(&body)
        );
        hist.record(sent.elapsed().as_micros() as u64).unwrap();
    }
    hist
}

/// One v1 client: publishes with `"ack":true`, each receipt before the next.
async fn ws_client(args: &Args, until: Instant, i: usize) -> Histogram<u64> {
    let mut hist = Histogram::new(3).unwrap();
    let mut req = format!("ws://{}/ws/bench{i}", args.addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("corecast.v1"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
    let command = format!(r#"{{"op":"publish","topic":"bench.{i}","data":"x","ack":true}}"#);
    while Instant::now() < until {
        let sent = Instant::now();
        ws.send(Message::text(command.clone())).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"published""#) => break,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
        hist.record(sent.elapsed().as_micros() as u64).unwrap();
    }
    hist
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    let start = Instant::now();
    let until = start + args.duration;
    let runs = (0..args.connections).map(|i| {
        let args = &args;
        async move {
            if args.mode == "api" {
                api_client(args, until, i).await
            } else {
                ws_client(args, until, i).await
            }
        }
    });
    let mut total = Histogram::<u64>::new(3).unwrap();
    for h in futures_util::future::join_all(runs).await {
        total.add(h).unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        r#"{{"mode":"{}","connections":{},"publishes_per_s":{:.0},"p50_us":{},"p99_us":{},"p999_us":{}}}"#,
        args.mode,
        args.connections,
        total.len() as f64 / elapsed,
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
    );
}
