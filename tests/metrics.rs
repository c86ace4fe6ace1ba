//! `/metrics`: read with a Prometheus text-format parser (`prometheus-parse`), on two real
//! nodes sharing a real Redis, while real WebSocket clients publish and receive.

use std::collections::BTreeSet;

use prometheus_parse::{Scrape, Value as Metric};
use serde_json::json;

use crate::support::{
    redis::{RedisServer, redis_node},
    *,
};

/// `GET /metrics`: the status, content type and parsed body.
async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let raw = raw_request(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines()
            .any(|l| l
                .eq_ignore_ascii_case("content-type: text/plain; version=0.0.4; charset=utf-8")),
        "{head}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of one counter or gauge sample (`labels` must all match).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match sample.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
        ref other => panic!("{name} is not a counter or gauge: {other:?}"),
    }
}

/// A histogram's observation count (its `+Inf` bucket).
fn observations(scrape: &Scrape, name: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .unwrap_or_else(|| panic!("no histogram {name}"));
    let Metric::Histogram(buckets) = &sample.value else { panic!("{name} is not a histogram") };
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite(), "{buckets:?}");
    // Cumulative: never decreasing.
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "{buckets:?}");
    last.count
}

/// Counters move with real traffic: 20 events published on n2 reach 3 subscribers on n1,
/// which counts 60 deliveries and observes the publish-to-delivery lag once per event;
/// refusals and protocol closes are counted by status and reason; labels stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_traffic() {
    const EVENTS: usize = 20;
    const SUBSCRIBERS: usize = 3;
    let redis = RedisServer::start().await;
    let n1 = redis_node(&redis, "n1", |_| {}).await;
    let n2 = redis_node(&redis, "n2", |_| {}).await;
    let before1 = scrape(n1.addr).await;
    let before2 = scrape(n2.addr).await;

    let mut subscribers = Vec::new();
    for at in 0..SUBSCRIBERS {
        let mut client = connect(n1.addr, &format!("sub{at}"), true).await;
        subscribe(&mut client, "prices").await;
        subscribers.push(client);
    }
    // n1's subscription to the topic's Redis channel is in place.
    let mut publisher = connect(n2.addr, "pub", true).await;
    redis.wait_numsub("corecast:topic:prices", 1).await;
    for i in 0..EVENTS {
        publisher.send_json(json!({"op":"publish","topic":"prices","data":i})).await;
    }
    for client in &mut subscribers {
        for i in 0..EVENTS {
            let message = without_id(client.recv_json().await);
            assert_eq!(message["data"], json!(i), "{message}");
        }
    }

    let delta = |after: &Scrape, before: &Scrape, name: &str, labels: &[(&str, &str)]| {
        value(after, name, labels) - value(before, name, labels)
    };
    let deliveries = (EVENTS * SUBSCRIBERS) as f64;
    let after1 = poll_until(WAIT, "n1 counts every delivery and writes its bytes", || async {
        let now = scrape(n1.addr).await;
        let done = delta(&now, &before1, "corecast_deliveries_total", &[]) >= deliveries
            && delta(&now, &before1, "corecast_bytes_out_total", &[]) > 0.0
            && observations(&now, "corecast_bridge_redis_round_trip_seconds") > 0.0;
        done.then_some(now)
    })
    .await;
    assert_eq!(delta(&after1, &before1, "corecast_deliveries_total", &[]), deliveries);
    assert_eq!(delta(&after1, &before1, "corecast_upgrades_total", &[]), SUBSCRIBERS as f64);
    let lag = "corecast_publish_delivery_lag_seconds";
    assert_eq!(
        observations(&after1, lag) - observations(&before1, lag),
        EVENTS as f64,
        "one lag observation per event on the delivering node",
    );
    let fan_out = "corecast_fanout_duration_seconds";
    assert!(observations(&after1, fan_out) - observations(&before1, fan_out) >= EVENTS as f64);
    // Every delivered frame is at least its 2-byte head and a ~50-byte body.
    assert!(delta(&after1, &before1, "corecast_bytes_out_total", &[]) >= deliveries * 50.0);
    let open: f64 =
        ["0", "1"].iter().map(|s| value(&after1, "corecast_connections", &[("shard", s)])).sum();
    assert_eq!(open, SUBSCRIBERS as f64);
    assert_eq!(value(&after1, "corecast_bridge_connected", &[]), 1.0);
    assert_eq!(value(&after1, "corecast_bridge_ready", &[]), 1.0);
    assert!(value(&after1, "corecast_bridge_subscribed_channels", &[]) >= 1.0);

    let after2 = scrape(n2.addr).await;
    assert_eq!(delta(&after2, &before2, "corecast_messages_in_total", &[]), EVENTS as f64);
    assert_eq!(
        observations(&after2, lag),
        observations(&before2, lag),
        "n2 has no subscriber of the topic: nothing delivered, no lag observed"
    );

    // Refusals by status, closes by reason.
    let (status, _) = http_get(n1.addr, "/no/such/path").await;
    assert_eq!(status, 404);
    let mut rude = RawClient::upgrade(n1.addr, "rude", None).await;
    rude.send(&client_frame(0x3, true, b"reserved opcode")).await;
    assert_eq!(rude.expect_close().await, 1002);
    let after = poll_until(WAIT, "the protocol close is counted", || async {
        let now = scrape(n1.addr).await;
        let closes = delta(&now, &after1, "corecast_closes_total", &[("reason", "protocol")]);
        (closes == 1.0).then_some(now)
    })
    .await;
    let refused = [("status", "404")];
    assert_eq!(delta(&after, &after1, "corecast_handshakes_rejected_total", &refused), 1.0);

    // No topic, user or node labels: every label key is one of the bounded sets.
    let keys: BTreeSet<&str> =
        after.samples.iter().flat_map(|s| s.labels.keys().map(String::as_str)).collect();
    let bounded: BTreeSet<&str> = ["shard", "status", "reason", "limit", "outcome"].into();
    assert!(keys.is_subset(&bounded), "{keys:?}");
    let names: BTreeSet<&str> = after.samples.iter().map(|s| s.metric.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("corecast_")), "{names:?}");
}
