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

/// A flooding connection is limited (v1: `rate_limited`, message dropped) while a
/// bystander on the same shard keeps receiving everything else in order; staying over
/// the limit closes the flooder with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_limited_and_a_bystander_is_not() {
    use serde_json::json;
    let server = TestServer::start(|cfg| {
        cfg.rate_limit_messages = "10".parse().unwrap();
        cfg.rate_limit_burst = 20;
        cfg.rate_limit_close_after.0 = Duration::from_secs(1);
    });
    let mut flooder = connect(server.addr, "flooder", true).await;
    let mut bystander = loop {
        let c = connect(server.addr, "bystander", true).await;
        if c.shard == flooder.shard {
            break c;
        }
    };
    let mut speaker = connect(server.addr, "speaker", true).await;
    // 100 broadcasts at once: the first 20 (the burst) pass, the rest are refused.
    for i in 0..100 {
        flooder.send_json(json!({"op":"broadcast","data":i})).await;
    }
    let mut limited = 0;
    let mut passed = Vec::new();
    while limited + passed.len() < 100 {
        let m = flooder.recv_json().await;
        match m["type"].as_str() {
            Some("error") => {
                assert_eq!(m["code"], "rate_limited", "{m}");
                limited += 1;
            }
            Some("broadcast") => passed.push(m["data"].as_u64().unwrap()),
            _ => panic!("{m}"),
        }
    }
    // The burst, plus what the bucket refilled (10/s) while the 100 were being read.
    assert!((20..=40).contains(&passed.len()), "passed {}", passed.len());
    assert!(passed.windows(2).all(|w| w[0] < w[1]), "in order: {passed:?}");
    // The bystander got exactly the passed ones, in order, then the speaker's.
    speaker.send_json(json!({"op":"broadcast","data":"after the flood"})).await;
    for want in &passed {
        assert_eq!(bystander.recv_json().await["data"], json!(want));
    }
    assert_eq!(bystander.recv_json().await["data"], "after the flood");

    // Keep flooding (one message every 5 ms, 200/s against a limit of 10/s): closed 1008
    // once it has been over the limit for 1 s.
    let close = within(WAIT, "the flooder is closed", async {
        loop {
            if flooder.ws.send(Message::text(r#"{"op":"broadcast","data":"more"}"#)).await.is_err()
            {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await; // the flood's pace
            while let Some(Ok(m)) =
                futures_util::FutureExt::now_or_never(flooder.ws.next()).flatten()
            {
                if let Message::Close(frame) = m {
                    return frame;
                }
            }
        }
    })
    .await
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "rate limit exceeded");
    speaker.send_json(json!({"op":"broadcast","data":"still fine"})).await;
    loop {
        let m = bystander.recv_json().await;
        if m["data"] == "still fine" {
            break;
        }
        assert_eq!(m["sender"], "flooder", "only the flooder's passed messages before: {m}");
    }
    let h = server.health().await;
    assert_eq!(h["rate_limit_closes"], 1, "{h}");
    assert!(h["rate_limited"].as_u64().unwrap() >= 80, "{h}");
}

/// The message limit is on by default with authentication (100/s, burst 200), and off
/// without it: a node with neither setting never throttles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_limit_is_on_by_default_only_with_auth() {
    use serde_json::json;
    let open = TestServer::start(|_| {});
    let mut c = connect(open.addr, "c", true).await;
    for i in 0..400 {
        c.send_json(json!({"op":"unsubscribe","topic":format!("t{i}")})).await;
    }
    for _ in 0..400 {
        assert_eq!(c.recv_json().await["type"], "unsubscribed");
    }
    assert_eq!(open.health().await["rate_limited"], 0);

    let secret = "limits-secret";
    let authed = TestServer::start(|cfg| cfg.jwt_secret.0 = Some(secret.into()));
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"c","exp":exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let url = format!("ws://{}/ws/c?token={token}", authed.addr);
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await.unwrap();
    for i in 0..400 {
        ws.send(Message::text(format!("seed text {i}"))).await.unwrap();
    }
    // 400 at once against a bucket of 200 refilling at 100/s: whatever the pace of the
    // sends on a loaded machine, some are dropped (none are on the open node above).
    authed
        .wait_health("the default limit dropped some", |h| h["rate_limited"].as_u64() >= Some(1))
        .await;
}

/// `max_connects_per_ip`: more new connections per second from one address get 429
/// before the upgrade; another address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_ip_are_limited() {
    let server = TestServer::start(|cfg| cfg.max_connects_per_ip = 5);
    let from = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let raw = within(WAIT, "upgrade from 127.0.0.7", async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::new(from(7), 0)).unwrap();
            let mut s = socket.connect(server.addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(upgrade_request("u").as_bytes()).await.unwrap();
            let mut buf = vec![0; 1024];
            let n = s.read(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await;
        statuses.push(parse_http(&raw).0);
    }
    // Thirty quick connections span a few one-second windows at most, five passing per
    // window: some are refused (none would be without the limit).
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 101 || *s == 429), "{statuses:?}");
    let h = health_from(server.addr, from(9)).await;
    assert_eq!(h["connects_limited"].as_u64(), Some(refused as u64), "{h}");
}

/// `max_connections_per_user` on one node: the third connection of a user gets 429,
/// others are not affected, and a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_on_one_node() {
    let server = TestServer::start(|cfg| cfg.max_connections_per_user = 2);
    let first = connect(server.addr, "alice", false).await;
    let _second = connect(server.addr, "alice", true).await;
    assert_eq!(upgrade_status(server.addr, "alice").await, 429);
    let _bob = connect(server.addr, "bob", false).await;
    drop(first);
    poll_until(WAIT, "alice's closed connection frees its place", || async {
        (upgrade_status(server.addr, "alice").await == 101).then_some(())
    })
    .await;
    assert!(server.health().await["user_limited"].as_u64() >= Some(1));
}
