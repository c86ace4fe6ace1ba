use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Bad paths, bad user ids, non-upgrade requests and wrong versions get the right HTTP
/// status before any upgrade; `/healthz` answers 200 with JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_statuses_for_bad_requests() {
    let server = TestServer::start(|_| {});
    let status = |raw: String| parse_http(&raw).0;
    assert_eq!(
        status(
            raw_request(
                server.addr,
                upgrade_request("alice").replace("/ws/alice", "/chat").as_bytes()
            )
            .await
        ),
        404
    );
    assert_eq!(status(raw_request(server.addr, upgrade_request("bad%20id").as_bytes()).await), 400);
    assert_eq!(
        status(raw_request(server.addr, upgrade_request(&"u".repeat(65)).as_bytes()).await),
        400
    );
    assert_eq!(
        status(raw_request(server.addr, b"GET /ws/alice HTTP/1.1\r\nHost: x\r\n\r\n").await),
        400
    );
    let v8 = raw_request(
        server.addr,
        upgrade_request("alice").replace("Version: 13", "Version: 8").as_bytes(),
    )
    .await;
    assert_eq!(status(v8.clone()), 426);
    assert!(v8.contains("Sec-WebSocket-Version: 13"), "{v8}");
    assert_eq!(status(raw_request(server.addr, b"\x16\x03\x01garbage\r\n\r\n").await), 400);
    let (code, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["shards"], 2);
    assert!(health["rejected_handshakes"].as_u64().unwrap() >= 6);
}

/// Beyond `max_connections`, the upgrade is answered with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_503() {
    let server = TestServer::start(|cfg| cfg.max_connections = 2);
    let _a = connect(server.addr, "a", false).await;
    let _b = connect(server.addr, "b", false).await;
    let raw = raw_request(server.addr, upgrade_request("c").as_bytes()).await;
    assert_eq!(parse_http(&raw).0, 503, "{raw}");
}

/// A message over `max_message_size` closes the connection with 1009, whether it comes
/// in one frame or in fragments; other clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_with_1009() {
    let server = TestServer::start(|cfg| cfg.max_message_size.0 = 1024);
    let mut bystander = connect(server.addr, "by", false).await;
    let mut big = connect(server.addr, "big", false).await;
    big.send_text("y".repeat(2048)).await;
    assert_eq!(big.recv_close().await.expect("close frame").code, 1009u16.into());

    let mut raw = RawClient::upgrade(server.addr, "frag", None).await;
    raw.send(&client_frame(0x1, false, &[b'a'; 600])).await;
    raw.send(&client_frame(0x0, true, &[b'a'; 600])).await;
    assert_eq!(raw.expect_close().await, 1009);

    bystander.send_text("still here").await;
    assert_eq!(bystander.recv_json().await["text"], "still here");
}

/// Protocol violations get the matching close code: unmasked frame → 1002, binary → 1003,
/// invalid UTF-8 → 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_close_codes() {
    let server = TestServer::start(|_| {});
    let mut unmasked = RawClient::upgrade(server.addr, "u1", None).await;
    unmasked.send(&[0x81, 0x02, b'h', b'i']).await;
    assert_eq!(unmasked.expect_close().await, 1002);
    let mut binary = RawClient::upgrade(server.addr, "u2", None).await;
    binary.send(&client_frame(0x2, true, b"\x00\x01")).await;
    assert_eq!(binary.expect_close().await, 1003);
    let mut utf8 = RawClient::upgrade(server.addr, "u3", None).await;
    utf8.send(&client_frame(0x1, true, b"\xff\xfe")).await;
    assert_eq!(utf8.expect_close().await, 1007);
    server.wait_health("violations counted", |h| h["protocol_closes"] == 3).await;
}

/// A socket that connects and says nothing (or trickles a partial request) is closed at
/// the handshake deadline, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_handshakes_are_closed_at_the_deadline() {
    let deadline = Duration::from_millis(400);
    let server = TestServer::start(|cfg| cfg.handshake_timeout.0 = deadline);
    for partial in [&b""[..], b"GET /ws/slow HTTP/1.1\r\nHost: x\r\n"] {
        let started = Instant::now();
        let mut s =
            within(WAIT, "connect", tokio::net::TcpStream::connect(server.addr)).await.unwrap();
        s.write_all(partial).await.unwrap();
        let mut buf = [0u8; 64];
        let n = within(WAIT, "server closes silent socket", s.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "no response, just a close");
        let waited = started.elapsed();
        assert!(
            waited >= deadline - Duration::from_millis(50),
            "closed after {waited:?}, before the deadline"
        );
        assert!(waited < deadline * 10, "closed after {waited:?}");
    }
}

/// A client that never answers Pings is closed with 1008 once `pong_timeout` passes,
/// while a client that answers (tungstenite does, automatically) stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ignoring_pings_is_closed() {
    let server = TestServer::start(|cfg| {
        cfg.ping_interval.0 = Duration::from_millis(100);
        cfg.pong_timeout.0 = Duration::from_millis(300);
    });
    let good = connect(server.addr, "good", false).await;
    let (mut good_sink, mut good_stream) = good.ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = pings.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = good_stream.next().await {
            match msg {
                Message::Ping(_) => {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Message::Text(t) => {
                    let _ = tx.send(t.to_string());
                }
                _ => {}
            }
        }
    });

    let mut deaf = RawClient::upgrade(server.addr, "deaf", None).await;
    let first = deaf.next_frame().await.expect("a frame");
    assert_eq!(first.opcode, 0x9, "the server pings");
    assert_eq!(deaf.expect_close().await, 1008);
    deaf.expect_eof().await;
    drop(deaf);
    server
        .wait_health("timeout counted, deaf socket gone", |h| {
            h["heartbeat_timeouts"] == 1 && h["connections"] == 1
        })
        .await;

    // Several ping rounds have passed; the good client answered them and is still served.
    assert!(pings.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    within(WAIT, "send", good_sink.send(Message::text("alive"))).await.unwrap();
    let echoed = within(WAIT, "good client's broadcast", rx.recv()).await.unwrap();
    assert!(echoed.contains("alive"));
    let health = server.health().await;
    assert_eq!(health["heartbeat_timeouts"], 1);
    assert_eq!(health["connections"], 1);
    reader.abort();
}

/// Seed-mode clients get the application heartbeat `{"type":"ping"}`; v1 clients do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_clients_get_application_pings() {
    let server = TestServer::start(|cfg| cfg.app_ping_interval.0 = Duration::from_millis(50));
    let mut seed = connect(server.addr, "s", false).await;
    let mut v1 = connect(server.addr, "v", true).await;
    assert_eq!(seed.recv_json().await, serde_json::json!({"type":"ping"}));
    v1.send_json(serde_json::json!({"op":"subscribe","topic":"t"})).await;
    assert_eq!(v1.recv_json().await["type"], "subscribed", "no app ping before the reply");
}
