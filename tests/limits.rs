//! Configured limits: the connection cap, the Pong deadline, application pings. Hostile
//! input (bad requests, oversized or fragmented messages, silent sockets, slow consumers)
//! is in `hostile.rs`, where each case also proves a bystander keeps receiving.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Beyond `max_connections`, the upgrade is answered with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_503() {
    let server = TestServer::start(|cfg| cfg.max_connections = 2);
    let _a = connect(server.addr, "a", false).await;
    let _b = connect(server.addr, "b", false).await;
    let raw = raw_request(server.addr, upgrade_request("c").as_bytes()).await;
    assert_eq!(parse_http(&raw).0, 503, "{raw}");
}

/// A client that never answers Pings is closed with 1008 once `pong_timeout` passes,
/// while a client that answers (tungstenite does, automatically) stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ignoring_pings_is_closed() {
    let server = TestServer::start(|cfg| {
        cfg.ping_interval.0 = Duration::from_millis(100);
        // Generous: the good client's reader must answer within it on a loaded 2-CPU box.
        cfg.pong_timeout.0 = Duration::from_millis(1500);
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

/// Seed-mode clients get the application heartbeat `{"type":"ping"}` every
/// `app_ping_interval`; v1 clients do not, however long they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_clients_get_application_pings() {
    let server = TestServer::start(|cfg| cfg.app_ping_interval.0 = Duration::from_millis(50));
    let mut v1 = connect(server.addr, "v", true).await;
    let mut seed = connect(server.addr, "s", false).await;
    // The seed client is the clock: three of its pings mean that more than two ping
    // periods have passed since the v1 client connected (before it).
    for _ in 0..3 {
        assert_eq!(seed.recv_json().await, serde_json::json!({"type":"ping"}));
    }
    v1.send_json(serde_json::json!({"op":"subscribe","topic":"t"})).await;
    assert_eq!(
        v1.recv_json().await,
        serde_json::json!({"type":"subscribed","topic":"t"}),
        "no application ping reached the v1 client in two ping periods"
    );
}
