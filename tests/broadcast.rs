use std::collections::HashMap;

use crate::support::*;

/// Through io_uring batches of 8 sends (so a flush pass spans many submissions and
/// chunk boundaries fall inside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_broadcast_through_io_uring_batches() {
    let health = seed_broadcast_reaches_every_client_once_in_order(8).await;
    let batched = health["batched_sends"].as_u64().unwrap();
    let batches = health["send_batches"].as_u64().unwrap();
    assert!(batched >= 200, "writes went through io_uring ({batched})");
    assert!(batches * 8 >= batched && batches > 1, "{batched} sends in {batches} batches");
}

/// With io_uring off: one `sendmsg` per socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_broadcast_with_one_sendmsg_per_socket() {
    let health = seed_broadcast_reaches_every_client_once_in_order(0).await;
    assert_eq!(health["batched_sends"], 0);
}

/// 200 seed-mode clients spread over both shards; 20 of them each send 10 messages.
/// Every client receives all 200 messages exactly once, each sender's in the order sent,
/// as `{"sender": user_id, "text": ...}` (the Python design's wire format).
/// Returns the node's `/healthz` afterwards.
async fn seed_broadcast_reaches_every_client_once_in_order(send_batch: usize) -> serde_json::Value {
    const CLIENTS: usize = 200;
    const SENDERS: usize = 20;
    const PER_SENDER: usize = 10;
    let server = TestServer::start(|c| c.send_batch = send_batch);

    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        clients.push(connect(server.addr, &format!("user-{i}"), false).await);
    }
    let shards: std::collections::HashSet<u16> = clients.iter().map(|c| c.shard).collect();
    assert_eq!(shards.len(), 2, "clients landed on both shards");
    let health = server.health().await;
    assert_eq!(health["connections"], CLIENTS);

    // Senders keep their own connection for sending; receiving happens on all 200.
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        if i < SENDERS {
            let (sink, stream) = futures_util::StreamExt::split(client.ws);
            senders.push((client.user.clone(), sink));
            readers.push(tokio::spawn(read_all(client.user, stream, SENDERS * PER_SENDER)));
        } else {
            let (_, stream) = futures_util::StreamExt::split(client.ws);
            readers.push(tokio::spawn(read_all(client.user, stream, SENDERS * PER_SENDER)));
        }
    }
    let mut sends = Vec::new();
    for (user, mut sink) in senders {
        sends.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                let msg = tokio_tungstenite::tungstenite::Message::text(format!("{user}:{n}"));
                within(WAIT, "send", futures_util::SinkExt::send(&mut sink, msg)).await.unwrap();
            }
            sink
        }));
    }
    let mut sinks = Vec::new();
    for s in sends {
        sinks.push(s.await.unwrap());
    }
    for reader in readers {
        let (user, got) = reader.await.unwrap();
        let mut next_from: HashMap<String, usize> = HashMap::new();
        for (sender, text) in got {
            let (from, n) = text.split_once(':').unwrap();
            assert_eq!(from, sender, "sender field matches the author");
            let expected = next_from.entry(sender.clone()).or_insert(0);
            assert_eq!(
                n.parse::<usize>().unwrap(),
                *expected,
                "{user}: {sender}'s messages in order, no duplicate"
            );
            *expected += 1;
        }
        assert_eq!(next_from.len(), SENDERS, "{user} heard every sender");
        assert!(next_from.values().all(|&n| n == PER_SENDER), "{user} got every message");
    }
    drop(sinks);
    server.health().await
}

async fn read_all(
    user: String,
    mut stream: impl futures_util::Stream<
        Item = Result<
            tokio_tungstenite::tungstenite::Message,
            tokio_tungstenite::tungstenite::Error,
        >,
    > + Unpin,
    count: usize,
) -> (String, Vec<(String, String)>) {
    let mut got = Vec::with_capacity(count);
    let mut epochs = std::collections::HashSet::new();
    within(WAIT, &format!("{user} receives {count}"), async {
        while got.len() < count {
            match futures_util::StreamExt::next(&mut stream).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    // One stream: every receiver sees offsets 1, 2, 3, ... of one epoch.
                    let (epoch, offset) = take_id(&mut v);
                    assert_eq!(offset, got.len() as u64 + 1, "{user}: offsets are contiguous");
                    assert!(epochs.insert(epoch) || epochs.len() == 1, "{user}: one epoch");
                    assert_eq!(v.as_object().unwrap().len(), 2, "exactly sender and text: {v}");
                    got.push((
                        v["sender"].as_str().unwrap().to_owned(),
                        v["text"].as_str().unwrap().to_owned(),
                    ));
                }
                Some(Ok(_)) => {}
                other => panic!("{user}: stream ended: {other:?}"),
            }
        }
    })
    .await;
    (user, got)
}

/// A client that sends its first frame in the same TCP write as its upgrade request gets
/// that frame handled: bytes after the request head belong to the WebSocket stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_in_the_upgrade_write_is_delivered() {
    let server = TestServer::start(|_| {});
    let mut bystander = connect(server.addr, "bystander", false).await;
    let frame = client_frame(0x1, true, b"sent with the request");
    let mut early = RawClient::upgrade_sending(server.addr, "early", None, &frame).await;
    let got = early.next_frame().await.expect("a frame before EOF");
    assert_eq!(got.opcode, 0x1);
    let json: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(
        without_id(json),
        serde_json::json!({"sender": "early", "text": "sent with the request"})
    );
    assert_eq!(bystander.recv_json().await["text"], "sent with the request");
}
