use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Messages the publisher may be ahead of the readers that do read (16 KiB: well under
/// the 64 KiB queue limit, so only the client that stops reading can pass it).
const WINDOW: usize = 16;

/// A client that stops reading (4 KiB receive buffer) is cut off once its queue passes
/// the 64 KiB limit: when it reads again (within the grace period) it finds a Close
/// 1013 after the frames that were already on their way. Meanwhile a normal client
/// receives all 32,000 messages (32 MiB) in order, and this process's RSS grows by less
/// than half of the 32 MiB that an unbounded queue would have kept for the slow client
/// (the node runs as a child process, so the figure is its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_others_keep_receiving() {
    const MESSAGES: usize = 32_000;
    // A process of its own, so its memory is not mixed with other tests' servers.
    let server = ChildServer::start(&[
        "--shards",
        "2",
        "--app-ping-interval",
        "off",
        "--outbound-queue-limit",
        "64KiB",
        "--socket-send-buffer",
        "8KiB",
        "--close-grace",
        "60s",
    ])
    .await;
    let mut slow = RawClient::upgrade(server.addr, "slow", Some(4096)).await;
    let fast = connect(server.addr, "fast", false).await;
    let publisher = connect(server.addr, "pub", false).await;
    server.wait_health("3 connections", |h| h["connections"] == 3).await;
    let rss_before = server.rss_bytes();

    // Both reading clients report how many messages they have received, in order.
    let reader = |user: &'static str, stream: futures_util::stream::SplitStream<_>| {
        let (tx, rx) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            let mut stream = stream;
            for i in 0..MESSAGES {
                match within(WAIT, user, stream.next()).await {
                    Some(Ok(Message::Text(t))) => {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(
                            &v["text"].as_str().unwrap()[..5],
                            format!("{i:05}"),
                            "{user}: in order, none lost"
                        );
                        let _ = tx.send(i + 1);
                    }
                    other => panic!("{user}: {other:?}"),
                }
            }
        });
        (rx, task)
    };
    let (mut pub_sink, pub_stream) = publisher.ws.split();
    let (_fast_sink, fast_stream) = fast.ws.split();
    let (mut fast_seen, fast_task) = reader("fast", fast_stream);
    let (mut pub_seen, pub_task) = reader("pub", pub_stream);

    let payload = "x".repeat(1000);
    for i in 0..MESSAGES {
        if i >= WINDOW {
            let need = i - WINDOW;
            within(WAIT, "readers keep up", fast_seen.wait_for(|n| *n >= need)).await.unwrap();
            within(WAIT, "readers keep up", pub_seen.wait_for(|n| *n >= need)).await.unwrap();
        }
        within(WAIT, "publish", pub_sink.send(Message::text(format!("{i:05}{payload}"))))
            .await
            .unwrap();
    }
    within(WAIT, "fast client receives everything", fast_task).await.unwrap();
    within(WAIT, "publisher receives everything", pub_task).await.unwrap();
    let health =
        server.wait_health("slow consumer counted", |h| h["slow_consumer_closes"] == 1).await;
    let rss_growth = server.rss_bytes().saturating_sub(rss_before);
    assert!(
        rss_growth < 16 << 20,
        "RSS grew {rss_growth} bytes while 32 MiB went to a client that does not read; health: {health}"
    );
    eprintln!("rss growth during 32 MiB to a non-reading client: {} KiB", rss_growth >> 10);

    // The slow client now reads: buffered frames first, then Close 1013, then EOF.
    assert_eq!(slow.expect_close().await, 1013);
    slow.expect_eof().await;
    drop(slow);
    server.wait_health("slow client gone", |h| h["connections"] == 2).await;
}
