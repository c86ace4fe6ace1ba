//! Hostile input, one class per test. Each test asserts the server's answer (HTTP status
//! or close code) **and** that a well-behaved client on the same node keeps receiving
//! its messages, in order and without a gap, during and after the attack.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A v1 client that publishes numbered messages to its own topic (paced, every 2 ms) and
/// checks that each comes back in order. Only it subscribes to the topic, so the hostile
/// clients get no traffic from it.
struct Bystander {
    received: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
}

impl Bystander {
    async fn start(server: &TestServer) -> Bystander {
        let mut client = connect(server.addr, "bystander", true).await;
        client.send_json(json!({"op":"subscribe","topic":"bystander"})).await;
        assert_eq!(client.recv_json().await["type"], "subscribed");
        let (counter, received) = tokio::sync::watch::channel(0u64);
        let (mut sink, mut stream) = client.ws.split();
        let sender = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            for n in 0u64.. {
                pace.tick().await;
                let msg = json!({"op":"publish","topic":"bystander","data":n}).to_string();
                if sink.send(Message::text(msg)).await.is_err() {
                    return;
                }
            }
        });
        let task = tokio::spawn(async move {
            let mut expected = 0u64;
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "message" {
                        continue; // broadcasts from other tests' clients
                    }
                    assert_eq!(v["data"], expected, "bystander: messages in order, none lost");
                    expected += 1;
                    let _ = counter.send(expected);
                }
            }
        });
        Bystander { received, task, sender }
    }

    fn count(&self) -> u64 {
        *self.received.borrow()
    }

    /// Waits until the bystander has received `more` further messages: it is still served.
    /// (If its reader stops — connection lost, or a message out of order — the channel
    /// closes and this fails.)
    async fn expect_progress(&self, since: u64, more: u64) {
        let mut received = self.received.clone();
        within(WAIT, "bystander keeps receiving", received.wait_for(|n| *n >= since + more))
            .await
            .expect("bystander stopped (connection lost or a message out of order)");
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.sender.abort();
        self.task.abort();
    }
}

async fn status_of(server: &TestServer, request: &[u8]) -> (u16, String) {
    let raw = raw_request(server.addr, request).await;
    let status = parse_http(&raw).0;
    (status, raw)
}

/// Malformed upgrade requests get 400/405/426/431/403 and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes() {
    let server =
        TestServer::start(|cfg| cfg.allowed_origins = "https://app.example".parse().unwrap());
    let by = Bystander::start(&server).await;
    let before = by.count();
    let good = upgrade_request("mallory");
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(9000));
    let many_headers: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), 400),
        (good.replace("GET", "POST").into_bytes(), 405),
        (good.replace("HTTP/1.1", "HTTP/1.0").into_bytes(), 400),
        (good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "").into_bytes(), 400),
        (good.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!notbase64!!!!!!!!!!!==").into_bytes(), 400),
        (good.replace("Upgrade: websocket", "Upgrade: h2c").into_bytes(), 400),
        (good.replace("Version: 13", "Version: 7").into_bytes(), 426),
        (good.replace("\r\n\r\n", &format!("\r\n{huge_header}\r\n")).into_bytes(), 431),
        (good.replace("\r\n\r\n", &format!("\r\n{many_headers}\r\n")).into_bytes(), 431),
        (good.replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n").into_bytes(), 403),
        (good.replace("/ws/mallory", "/ws/../../etc/passwd").into_bytes(), 400),
        (good.replace("/ws/mallory", "/chat").into_bytes(), 404),
        (good.replace("/ws/mallory", "/ws/bad%20id").into_bytes(), 400),
        (good.replace("/ws/mallory", &format!("/ws/{}", "u".repeat(65))).into_bytes(), 400),
        (b"GET /ws/alice HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (good.replace("Host: test\r\n", "").into_bytes(), 400),
        (good.replace("Host: test\r\n", "Host: a\r\nHost: b\r\n").into_bytes(), 400),
        (
            good.replace("\r\n\r\n", "\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n")
                .into_bytes(),
            400,
        ),
    ];
    let refused = cases.len() as u64;
    for (request, expected) in cases {
        let (status, raw) = status_of(&server, &request).await;
        assert_eq!(
            status,
            expected,
            "{:?} → {raw}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
        if expected == 426 {
            assert!(raw.contains("Sec-WebSocket-Version: 13"));
        }
    }
    let health = server.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["rejected_handshakes"].as_u64(), Some(refused), "each refusal counted");
    by.expect_progress(before, 20).await;
}

/// Silent sockets and slowloris (one byte at a time) are closed at the handshake
/// deadline, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_sockets() {
    let deadline = Duration::from_millis(600);
    let server = TestServer::start(|cfg| cfg.handshake_timeout.0 = deadline);
    let by = Bystander::start(&server).await;
    let before = by.count();
    let started = Instant::now();
    // 4 silent + 4 slowloris sockets: within the per-IP cap on either shard.
    let mut attackers = Vec::new();
    for i in 0..8 {
        let addr = server.addr;
        attackers.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = upgrade_request("slow");
            let mut buf = [0u8; 256];
            if i % 2 == 0 {
                return s.read(&mut buf).await.map(|n| n == 0).unwrap_or(true);
            }
            for byte in request.as_bytes() {
                if s.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::select! {
                    r = s.read(&mut buf) => return r.map(|n| n == 0).unwrap_or(true),
                    _ = tokio::time::sleep(Duration::from_millis(40)) => {}
                }
            }
            false
        }));
    }
    for a in attackers {
        assert!(within(WAIT, "attacker closed", a).await.unwrap(), "closed without a response");
    }
    let waited = started.elapsed();
    assert!(waited >= deadline - Duration::from_millis(50) && waited < deadline * 8, "{waited:?}");
    by.expect_progress(before, 20).await;
}

/// Past the per-IP cap on sockets in the handshake (8 per shard here), new sockets get
/// 503 at once instead of a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshake_cap_per_ip() {
    let server = TestServer::start(|cfg| cfg.max_pending_handshakes_per_ip = 8);
    let by = Bystander::start(&server).await;
    // Open 40 sockets from one IP. A refused socket is answered 503 at accept time; a
    // held one holds a pending slot. Then every socket sends a complete upgrade: the held
    // ones get 101, the refused ones have their 503 (sent before the request) — so each
    // socket's first answer classifies it, with no timing involved.
    let elsewhere: std::net::IpAddr = [127, 0, 0, 2].into();
    let rejected = |h: &serde_json::Value| h["rejected_handshakes"].as_u64().unwrap_or(0);
    let rejected_before = rejected(&health_from(server.addr, elsewhere).await);
    let mut sockets = Vec::new();
    for _ in 0..40 {
        sockets.push(
            within(WAIT, "connect", tokio::net::TcpStream::connect(server.addr)).await.unwrap(),
        );
    }
    // The server has accepted all 40 (each is pending or refused) before any request is
    // sent: otherwise a socket accepted after an earlier one's upgrade could take its
    // freed slot. The health request itself, from another address, is pending too.
    poll_until(WAIT, "all 40 accepted", || async {
        let h = health_from(server.addr, elsewhere).await;
        let pending = h["pending_handshakes"].as_u64().unwrap_or(0).saturating_sub(1);
        (pending + rejected(&h) - rejected_before == 40).then_some(())
    })
    .await;
    let answers = futures_util::future::join_all(sockets.iter_mut().map(|s| async move {
        // A refused socket may already be closed: the write can fail, the 503 is read anyway.
        let _ = s.write_all(upgrade_request("capped").as_bytes()).await;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match within(WAIT, "an answer to each socket", s.read(&mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }))
    .await;
    let held = answers.iter().filter(|a| a.starts_with("HTTP/1.1 101")).count();
    let refused = answers.iter().filter(|a| a.starts_with("HTTP/1.1 503")).count();
    assert_eq!(held + refused, 40, "every socket answered 101 or 503: {answers:?}");
    assert!(held <= 16 && refused >= 24, "at most 8 pending per shard: {held} held");
    assert!(held >= 8, "the cap admits 8 per shard: {held} held");
    by.expect_progress(by.count(), 20).await;
}

/// Declared lengths: 2^63 (top bit set) → 1002, 2^63 − 1 and just over the limit → 1009,
/// refused from the header alone (the server never waits for the payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_lengths() {
    let server = TestServer::start(|cfg| cfg.max_message_size.0 = 1024);
    let by = Bystander::start(&server).await;
    let before = by.count();
    let header = |len: u64| {
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    };
    for (wire, code) in [
        (header(1 << 63), 1002),
        (header((1 << 63) - 1), 1009),
        (client_frame(0x1, true, &[b'a'; 1025])[..20].to_vec(), 1009),
    ] {
        let mut c = RawClient::upgrade(server.addr, "big", None).await;
        c.send(&wire).await;
        assert_eq!(c.expect_close().await, code);
    }
    by.expect_progress(before, 20).await;
}

/// Fragment floods: more than `max_fragments` frames → 1008; reassembled size over the
/// limit → 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_floods() {
    let server = TestServer::start(|cfg| {
        cfg.max_fragments = 100;
        cfg.max_message_size.0 = 4096;
    });
    let by = Bystander::start(&server).await;
    let before = by.count();
    let mut c = RawClient::upgrade(server.addr, "frag", None).await;
    let mut flood = client_frame(0x1, false, b"a");
    for _ in 0..200 {
        flood.extend(client_frame(0x0, false, b"a"));
    }
    c.send(&flood).await;
    assert_eq!(c.expect_close().await, 1008);

    let mut c = RawClient::upgrade(server.addr, "frag", None).await;
    let mut big = client_frame(0x1, false, &[b'a'; 50]);
    for _ in 0..90 {
        big.extend(client_frame(0x0, false, &[b'a'; 50]));
    }
    c.send(&big).await;
    assert_eq!(c.expect_close().await, 1009);
    by.expect_progress(before, 20).await;
}

/// Invalid UTF-8 in a text message, split across fragments, or in a close reason → 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8() {
    let server = TestServer::start(|_| {});
    let by = Bystander::start(&server).await;
    let before = by.count();
    let mut close_reason = 1000u16.to_be_bytes().to_vec();
    close_reason.extend_from_slice(b"bye \xc3\x28");
    let mut split = client_frame(0x1, false, "ok €".as_bytes());
    split.extend(client_frame(0x0, true, b"\xe2\x82")); // message ends inside a character
    for wire in [
        client_frame(0x1, true, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
        split,
        client_frame(0x8, true, &close_reason),
    ] {
        let mut c = RawClient::upgrade(server.addr, "utf", None).await;
        c.send(&wire).await;
        assert_eq!(c.expect_close().await, 1007);
    }
    by.expect_progress(before, 20).await;
}

/// Invalid close codes and a 1-byte close payload → 1002; a valid code is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_close_codes() {
    let server = TestServer::start(|_| {});
    let by = Bystander::start(&server).await;
    let before = by.count();
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
        let mut c = RawClient::upgrade(server.addr, "closer", None).await;
        c.send(&client_frame(0x8, true, &code.to_be_bytes())).await;
        assert_eq!(c.expect_close().await, 1002, "code {code}");
    }
    let mut c = RawClient::upgrade(server.addr, "closer", None).await;
    c.send(&client_frame(0x8, true, &[0x03])).await;
    assert_eq!(c.expect_close().await, 1002);
    let mut c = RawClient::upgrade(server.addr, "closer", None).await;
    c.send(&client_frame(0x8, true, &4001u16.to_be_bytes())).await;
    assert_eq!(c.expect_close().await, 4001, "valid private code echoed");
    c.expect_eof().await;
    by.expect_progress(before, 20).await;
}

/// Unmasked frames, reserved bits and reserved opcodes → 1002; binary data → 1003; each
/// counted in `protocol_closes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_reserved_bits_and_opcodes() {
    let server = TestServer::start(|_| {});
    let by = Bystander::start(&server).await;
    let before = by.count();
    let mut rsv1 = client_frame(0x1, true, b"hi");
    rsv1[0] |= 0x40;
    let mut rsv3 = client_frame(0x1, true, b"hi");
    rsv3[0] |= 0x10;
    let cases = [
        vec![0x81, 0x02, b'h', b'i'],
        rsv1,
        rsv3,
        client_frame(0x3, true, b"x"),
        client_frame(0x7, true, b"x"),
        client_frame(0xB, true, b"x"),
        client_frame(0xF, true, b"x"),
        client_frame(0x9, false, b"fragmented ping"),
        client_frame(0x9, true, &[b'p'; 126]),
    ];
    let violations = cases.len() as u64 + 1;
    for wire in cases {
        let mut c = RawClient::upgrade(server.addr, "rsv", None).await;
        c.send(&wire).await;
        assert_eq!(c.expect_close().await, 1002, "{:02x?}", &wire[..2]);
    }
    // Binary data is not part of either protocol: 1003.
    let mut binary = RawClient::upgrade(server.addr, "bin", None).await;
    binary.send(&client_frame(0x2, true, b"\x00\x01")).await;
    assert_eq!(binary.expect_close().await, 1003);
    server.wait_health("violations counted", |h| h["protocol_closes"] == violations).await;
    by.expect_progress(before, 20).await;
}

/// A ping flood gets pongs up to the rate limit, then Close 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood() {
    let server = TestServer::start(|cfg| cfg.max_control_frames_per_sec = 20);
    let by = Bystander::start(&server).await;
    let before = by.count();
    let mut c = RawClient::upgrade(server.addr, "pinger", None).await;
    let mut flood = Vec::new();
    for _ in 0..500 {
        flood.extend(client_frame(0x9, true, b"ping"));
    }
    c.send(&flood).await;
    let mut pongs = 0;
    let code = loop {
        let f = c.next_frame().await.expect("frames before EOF");
        match f.opcode {
            0xA => pongs += 1,
            0x8 => break f.close_code().unwrap(),
            _ => {}
        }
    };
    assert_eq!(code, 1008);
    assert!(pongs <= 20, "{pongs} pongs: the flood was not answered forever");
    by.expect_progress(before, 20).await;
}

/// A TCP reset in the middle of a frame is cleaned up: the connection is unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reset_mid_frame() {
    let server = TestServer::start(|_| {});
    let by = Bystander::start(&server).await;
    let before = by.count();
    for _ in 0..10 {
        let mut c = RawClient::upgrade(server.addr, "resetter", None).await;
        let frame = client_frame(0x1, true, &[b'x'; 1000]);
        c.send(&frame[..500]).await;
        socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO)).unwrap();
        drop(c); // RST
    }
    server.wait_health("reset sockets unregistered", |h| h["connections"] == 1).await;
    by.expect_progress(before, 20).await;
}

/// A client that never reads is cut off with 1013 while the bystander is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads() {
    // The limit applies to every connection: 64 KiB lets the bystander fall behind by
    // dozens of these 1 KB broadcasts on a loaded machine (a debug build in CI) without
    // being cut off itself, while the deaf client (4 KiB receive buffer) passes it well
    // before the 200 KB have been sent.
    let server = TestServer::start(|cfg| {
        cfg.outbound_queue_limit.0 = 64 << 10;
        cfg.socket_send_buffer.0 = 4 << 10;
        cfg.close_grace.0 = Duration::from_secs(60);
    });
    let by = Bystander::start(&server).await;
    let mut deaf = RawClient::upgrade(server.addr, "deaf", Some(4096)).await;
    let mut shouter = connect(server.addr, "shouter", false).await;
    let before = by.count();
    // Seed broadcasts reach the deaf client (and the shouter, which reads its own).
    let text = "z".repeat(1000);
    for i in 0..200 {
        shouter.send_text(format!("{i} {text}")).await;
        assert!(shouter.recv_json().await["text"].as_str().unwrap().starts_with(&format!("{i} ")));
    }
    server.wait_health("deaf client cut off", |h| h["slow_consumer_closes"] == 1).await;
    by.expect_progress(before, 20).await;
    assert_eq!(deaf.expect_close().await, 1013);
}
