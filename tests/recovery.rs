//! Event ids, history and recovery, on one node (embedded bus) and on several nodes over a
//! real Redis (the harness's own `redis-server`, killed, frozen and put to sleep):
//! clients coming back get every missed event once and in order, or `recovered: false`;
//! connected clients lose nothing to Pub/Sub faults.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use corecast::config::DeliveryMode;
use serde_json::{Value, json};

use crate::support::{
    Client, TestServer, WAIT, connect,
    redis::{RedisServer, redis_child_node, redis_node},
    take_id, within,
};

/// Subscribes, with `since` when given; returns after `subscribed`.
pub(crate) async fn subscribe(client: &mut Client, topic: &str, since: Option<&str>) {
    let mut command = json!({"op":"subscribe","topic":topic});
    if let Some(since) = since {
        command["since"] = json!(since);
    }
    client.send_json(command).await;
    assert_eq!(next_not_state(client).await, json!({"type":"subscribed","topic":topic}));
}

/// The next message that is not `degraded` / `restored`.
pub(crate) async fn next_not_state(client: &mut Client) -> Value {
    loop {
        let m = client.recv_json().await;
        if m["type"] != "degraded" && m["type"] != "restored" {
            return m;
        }
    }
}

/// Publishes `data` on `topic` with a receipt; returns the event id.
pub(crate) async fn publish(client: &mut Client, topic: &str, data: Value) -> String {
    client.send_json(json!({"op":"publish","topic":topic,"data":data,"ack":true})).await;
    let receipt = next_not_state(client).await;
    assert_eq!(receipt["type"], "published", "{receipt}");
    assert_eq!(receipt["topic"], topic, "{receipt}");
    receipt["id"].as_str().unwrap_or_else(|| panic!("receipt without id: {receipt}")).to_owned()
}

pub(crate) fn parse_id(id: &str) -> (u64, u64) {
    let (e, o) = id.split_once(':').expect("epoch:offset");
    (e.parse().expect("epoch"), o.parse().expect("offset"))
}

/// Receives `n` events of a topic; returns `(offset, data)` of each (all of one epoch).
async fn events(client: &mut Client, n: usize) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut epochs = HashSet::new();
    while out.len() < n {
        let mut m = next_not_state(client).await;
        assert_eq!(m["type"], "message", "{m}");
        let (epoch, offset) = take_id(&mut m);
        epochs.insert(epoch);
        out.push((offset, m["data"].clone()));
    }
    assert!(epochs.len() <= 1, "one epoch");
    out
}

/// After a `subscribe` with `since`: `n` events of the topic and one `recovered: true`.
/// Events the node had not delivered yet when it answered come live, after `recovered`;
/// either way each comes once and in order.
async fn recovered_events(client: &mut Client, topic: &str, n: usize) -> Vec<(u64, Value)> {
    let mut out: Vec<(u64, Value)> = Vec::new();
    let mut recovered = 0;
    while out.len() < n || recovered == 0 {
        let mut m = next_not_state(client).await;
        if m["type"] == "recovered" {
            assert_eq!(m, json!({"type":"recovered","topic":topic,"recovered":true}));
            recovered += 1;
            continue;
        }
        assert_eq!(m["type"], "message", "{m}");
        let (_, offset) = take_id(&mut m);
        if let Some((last, _)) = out.last() {
            assert_eq!(offset, last + 1, "in order, once");
        }
        out.push((offset, m["data"].clone()));
    }
    assert_eq!(recovered, 1);
    out
}

/// A recovery on one topic, publisher and recovering client on `pub_addr` / `sub_addr`
/// (the same node with the embedded bus, two nodes with Redis): the missed events once,
/// in order, `recovered: true`, then live ones.
async fn recovers_missed_events(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    let mut publisher = connect(pub_addr, "pub", true).await;
    let mut reader = connect(sub_addr, "reader", true).await;
    subscribe(&mut reader, "t", None).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&mut publisher, "t", json!(i)).await);
    }
    let got = events(&mut reader, 3).await;
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(parse_id(&ids[2]).1, 3);
    drop(reader);
    // Missed while away.
    for i in 3..6 {
        ids.push(publish(&mut publisher, "t", json!(i)).await);
    }
    let mut back = connect(sub_addr, "reader", true).await;
    subscribe(&mut back, "t", Some(&ids[2])).await;
    let replayed = recovered_events(&mut back, "t", 3).await;
    assert_eq!(replayed, vec![(4, json!(3)), (5, json!(4)), (6, json!(5))]);
    publish(&mut publisher, "t", json!("live")).await;
    assert_eq!(events(&mut back, 1).await, vec![(7, json!("live"))]);
}

/// A recovery while the topic is busy: events published during the replay are neither
/// lost nor sent twice (the replay and live delivery meet at one position).
async fn recovers_while_the_topic_is_busy(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    const TOTAL: usize = 400;
    let mut publisher = connect(pub_addr, "busy-pub", true).await;
    let mut first = connect(sub_addr, "busy", true).await;
    subscribe(&mut first, "busy", None).await;
    let since = publish(&mut publisher, "busy", json!(0)).await;
    assert_eq!(events(&mut first, 1).await.len(), 1);
    let (epoch, offset) = parse_id(&since);
    // The publisher keeps going (no receipts, one event per millisecond) while a second
    // connection recovers from the first event: live events keep arriving while its
    // replay is read and queued.
    let (progress, mut published) = tokio::sync::watch::channel(0);
    let flood = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        for i in 1..TOTAL {
            pace.tick().await;
            publisher.send_json(json!({"op":"publish","topic":"busy","data":i})).await;
            let _ = progress.send(i);
        }
        publisher
    });
    within(WAIT, "50 published", published.wait_for(|n| *n >= 50)).await.expect("flood runs");
    let mut second = connect(sub_addr, "busy", true).await;
    subscribe(&mut second, "busy", Some(&since)).await;
    let mut offsets = Vec::new();
    let mut recovered = 0;
    within(WAIT, "every event once", async {
        while offsets.len() < TOTAL - 1 {
            let mut m = next_not_state(&mut second).await;
            if m["type"] == "recovered" {
                assert_eq!(m, json!({"type":"recovered","topic":"busy","recovered":true}));
                recovered += 1;
                continue;
            }
            assert_eq!(
                take_id(&mut m),
                (epoch, offset + 1 + offsets.len() as u64),
                "no gap, no duplicate"
            );
            offsets.push(m["data"].as_u64().expect("numbered"));
        }
    })
    .await;
    assert_eq!(offsets, (1..TOTAL as u64).collect::<Vec<_>>());
    let mut publisher = flood.await.expect("publisher");
    // Exactly one `recovered`, before the marker.
    publish(&mut publisher, "busy", json!("marker")).await;
    loop {
        let m = next_not_state(&mut second).await;
        if m["type"] == "recovered" {
            recovered += 1;
            continue;
        }
        assert_eq!(m["data"], "marker", "{m}");
        break;
    }
    assert_eq!(recovered, 1);
}

/// Positions that cannot be recovered are told, never skipped silently: trimmed (the
/// history keeps 5 events here), in the future, of another epoch, or malformed.
async fn unrecoverable_positions_are_told(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    let mut publisher = connect(pub_addr, "lost-pub", true).await;
    let mut last = String::new();
    for i in 0..12 {
        last = publish(&mut publisher, "short", json!(i)).await;
    }
    let (epoch, top) = parse_id(&last);
    let mut client = connect(sub_addr, "lost", true).await;
    let not_recovered = json!({"type":"recovered","topic":"short","recovered":false});
    for since in [
        format!("{epoch}:2"),           // trimmed: only the last 5 are kept
        format!("{epoch}:{}", top + 5), // in the future
        format!("{}:{top}", epoch - 1), // another epoch (the history was lost)
    ] {
        subscribe(&mut client, "short", Some(&since)).await;
        assert_eq!(next_not_state(&mut client).await, not_recovered, "since {since}");
        client.send_json(json!({"op":"unsubscribe","topic":"short"})).await;
        assert_eq!(next_not_state(&mut client).await["type"], "unsubscribed");
    }
    // Within the window: recovered.
    subscribe(&mut client, "short", Some(&format!("{epoch}:{}", top - 2))).await;
    assert_eq!(
        events(&mut client, 2).await.iter().map(|e| e.0).collect::<Vec<_>>(),
        [top - 1, top]
    );
    assert_eq!(next_not_state(&mut client).await["recovered"], true);
    // Malformed: an error reply (the subscription is not made).
    client.send_json(json!({"op":"subscribe","topic":"other","since":"12"})).await;
    assert_eq!(next_not_state(&mut client).await["code"], "invalid_since");
}

/// A client offline for longer than the history's age (`expiring` keeps 1 s here) is
/// told `recovered: false`.
async fn offline_longer_than_the_history(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    let mut publisher = connect(pub_addr, "ttl-pub", true).await;
    let last = publish(&mut publisher, "expiring", json!("soon gone")).await;
    let (epoch, offset) = parse_id(&last);
    // The client is away for 2 s (the scenario's length, not a synchronisation), and one
    // more event is published meanwhile, after the first expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let missed = publish(&mut publisher, "expiring", json!("missed")).await;
    assert_eq!(parse_id(&missed), (epoch, offset + 1), "the position outlives the events");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut client = connect(sub_addr, "ttl", true).await;
    // It saw the first event, and missed the second, which expired meanwhile.
    subscribe(&mut client, "expiring", Some(&last)).await;
    assert_eq!(
        next_not_state(&mut client).await,
        json!({"type":"recovered","topic":"expiring","recovered":false})
    );
}

/// `since: "latest"` gives the last event before live ones; `history` pages stitch to a
/// following `subscribe` with `since` without overlap or gap.
async fn latest_and_history_pages(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    let mut publisher = connect(pub_addr, "page-pub", true).await;
    for i in 1..=7 {
        publish(&mut publisher, "pages", json!(i)).await;
    }
    let mut late = connect(sub_addr, "late", true).await;
    subscribe(&mut late, "pages", Some("latest")).await;
    assert_eq!(events(&mut late, 1).await, vec![(7, json!(7))]);
    publish(&mut publisher, "pages", json!(8)).await;
    assert_eq!(events(&mut late, 1).await, vec![(8, json!(8))]);

    let mut reader = connect(sub_addr, "pager", true).await;
    let mut since: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut command = json!({"op":"history","topic":"pages","limit":3});
        if let Some(since) = &since {
            command["since"] = json!(since);
        }
        reader.send_json(command).await;
        let page = next_not_state(&mut reader).await;
        assert_eq!(
            (&page["type"], &page["recovered"]),
            (&json!("history"), &json!(true)),
            "{page}"
        );
        for event in page["events"].as_array().expect("events") {
            seen.push(event["data"].as_u64().expect("numbered"));
        }
        since = page["position"].as_str().map(str::to_owned);
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(seen, (1..=8).collect::<Vec<_>>());
    // A publish after the last page, then a subscribe from the page's position: exactly
    // what followed it.
    publish(&mut publisher, "pages", json!(9)).await;
    subscribe(&mut reader, "pages", since.as_deref()).await;
    assert_eq!(recovered_events(&mut reader, "pages", 1).await, vec![(9, json!(9))]);
}

/// Receipts for every kind of publish; a retry with the same idempotency key gets the
/// first id and is delivered once.
async fn receipts_and_idempotency(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    let mut publisher = connect(pub_addr, "idem-pub", true).await;
    let mut reader = connect(sub_addr, "idem", true).await;
    subscribe(&mut reader, "orders", None).await;
    let order = json!({"op":"publish","topic":"orders","data":"shipped","ack":true,"idempotency_key":"order-17"});
    publisher.send_json(order.clone()).await;
    let first = next_not_state(&mut publisher).await;
    publisher.send_json(order).await;
    let retry = next_not_state(&mut publisher).await;
    assert_eq!(first["type"], "published");
    assert_eq!(first, retry, "a retry gets the first publish's receipt");
    let other = publish(&mut publisher, "orders", json!("other")).await;
    let got = events(&mut reader, 2).await;
    assert_eq!(
        got.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
        [json!("shipped"), json!("other")]
    );
    assert_eq!(parse_id(&other).1, parse_id(first["id"].as_str().unwrap()).1 + 1);

    publisher.send_json(json!({"op":"direct","to":"idem","data":1,"ack":true})).await;
    let receipt = next_not_state(&mut publisher).await;
    assert_eq!(
        (&receipt["type"], &receipt["to"]),
        (&json!("published"), &json!("idem")),
        "{receipt}"
    );
    assert!(receipt["id"].is_string(), "{receipt}");
    publisher.send_json(json!({"op":"broadcast","data":1,"ack":true})).await;
    // The publisher gets its own broadcast and the receipt (across nodes the receipt may
    // come first: it is sent once the event is stored, the copy comes through Pub/Sub).
    let two = [next_not_state(&mut publisher).await, next_not_state(&mut publisher).await];
    let receipt = two.iter().find(|m| m["type"] == "published").expect("a receipt");
    let own = two.iter().find(|m| m["type"] == "broadcast").expect("its own broadcast");
    assert!(receipt.get("topic").is_none() && receipt["id"].is_string(), "{receipt}");
    assert_eq!(receipt["id"], own["id"]);
}

/// Seed mode: `?lastEventId=` replays the missed broadcasts, then `recovered`; a
/// malformed one is answered `recovered: false` at once.
async fn seed_last_event_id(pub_addr: SocketAddr, sub_addr: SocketAddr) {
    let mut publisher = connect(pub_addr, "seed-pub", false).await;
    let mut watcher = connect(sub_addr, "watcher", false).await;
    publisher.send_text("one").await;
    let mut first = without_state(&mut watcher).await;
    let (epoch, offset) = take_id(&mut first);
    assert_eq!(first, json!({"sender":"seed-pub","text":"one"}));
    drop(watcher);
    publisher.send_text("two").await;
    publisher.send_text("three").await;
    // The publisher sees its own three, so both are stored before the reconnect.
    for _ in 0..3 {
        without_state(&mut publisher).await;
    }
    // `:` percent-encoded, as browsers' EventSource-style clients send it.
    let url_id = format!("{epoch}%3A{offset}");
    let mut back = connect_with_query(sub_addr, "watcher", &format!("lastEventId={url_id}")).await;
    // The missed two, once and in order, and `recovered` (before them, or between, for
    // the ones the node had not delivered yet when it answered: those come live).
    let (mut texts, mut recovered) = (Vec::new(), 0);
    while texts.len() < 2 || recovered == 0 {
        let mut m = without_state(&mut back).await;
        if m["type"] == "recovered" {
            assert_eq!(m, json!({"type":"recovered","recovered":true}));
            recovered += 1;
            continue;
        }
        assert_eq!(take_id(&mut m), (epoch, offset + 1 + texts.len() as u64));
        texts.push(m["text"].clone());
    }
    assert_eq!((texts, recovered), (vec![json!("two"), json!("three")], 1));
    let mut bad = connect_with_query(sub_addr, "watcher", "lastEventId=yesterday").await;
    assert_eq!(without_state(&mut bad).await, json!({"type":"recovered","recovered":false}));
}

/// The next seed message (seed clients get no `degraded`; pings are JSON too).
async fn without_state(client: &mut Client) -> Value {
    loop {
        let m = client.recv_json().await;
        if m["type"] != "ping" {
            return m;
        }
    }
}

/// A seed-mode connection with a query string.
async fn connect_with_query(addr: SocketAddr, user: &str, query: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = format!("ws://{addr}/ws/{user}?{query}").into_client_request().unwrap();
    let (ws, resp) = within(WAIT, "connect", tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade succeeds");
    let shard = resp.headers().get("x-corecast-shard").unwrap().to_str().unwrap().parse().unwrap();
    Client { ws, shard, user: user.to_owned() }
}

fn short_history(c: &mut corecast::Config) {
    // `busy` keeps its whole flood (400 events): the busy recovery is about events
    // published during the replay, not about a history trimmed before a loaded machine
    // gets to read it (which is `recovered: false`, rightly, and tested on its own).
    c.history_rules = "short=5/5m,expiring=100/1s,busy=1000/5m".parse().expect("rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_recovery() {
    let server = TestServer::start(short_history);
    let a = server.addr;
    recovers_missed_events(a, a).await;
    recovers_while_the_topic_is_busy(a, a).await;
    unrecoverable_positions_are_told(a, a).await;
    offline_longer_than_the_history(a, a).await;
    latest_and_history_pages(a, a).await;
    receipts_and_idempotency(a, a).await;
    seed_last_event_id(a, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_across_nodes() {
    let redis = RedisServer::start().await;
    let a = redis_node(&redis, "a", short_history).await;
    let b = redis_node(&redis, "b", short_history).await;
    recovers_missed_events(a.addr, b.addr).await;
    recovers_while_the_topic_is_busy(a.addr, b.addr).await;
    unrecoverable_positions_are_told(a.addr, b.addr).await;
    offline_longer_than_the_history(a.addr, b.addr).await;
    latest_and_history_pages(a.addr, b.addr).await;
    receipts_and_idempotency(a.addr, b.addr).await;
    seed_last_event_id(a.addr, b.addr).await;
}

/// What a numbering publisher saw: per event number, its id (stored) or that it failed
/// visibly (an error reply).
#[derive(Debug, Default)]
struct Published {
    acked: HashMap<u64, String>,
    /// When each stored event's receipt came.
    acked_at: HashMap<u64, Instant>,
    failed: HashSet<u64>,
}

/// Publishes numbered events on `topic` with receipts, one every 5 ms, until `stop` says
/// so, then the marker `"end"` (retried until stored). Reports progress on `progress`.
async fn numbered_publisher(
    addr: SocketAddr,
    topic: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
    progress: tokio::sync::watch::Sender<u64>,
) -> Published {
    let mut client = connect(addr, "numbered", true).await;
    let mut published = Published::default();
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    let send = async |client: &mut Client, data: Value| {
        client.send_json(json!({"op":"publish","topic":topic,"data":data,"ack":true})).await;
        let reply = next_not_state(client).await;
        match reply["type"].as_str() {
            Some("published") => Ok(reply["id"].as_str().expect("id").to_owned()),
            Some("error") => {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                Err(())
            }
            _ => panic!("unexpected reply {reply}"),
        }
    };
    for n in 1.. {
        if *stop.borrow() {
            break;
        }
        pace.tick().await;
        match send(&mut client, json!(n)).await {
            Ok(id) => {
                published.acked.insert(n, id);
                published.acked_at.insert(n, Instant::now());
            }
            Err(()) => {
                published.failed.insert(n);
            }
        }
        let _ = progress.send(n);
    }
    within(WAIT, "the end marker is stored", async {
        while send(&mut client, json!("end")).await.is_err() {
            pace.tick().await;
        }
    })
    .await;
    published
}

/// One event as a receiver got it: its id (none for an event delivered only locally
/// while Redis was away), its number, and when.
type Received = (Option<(u64, u64)>, Value, Instant);

/// Collects a subscriber's events of `topic` until the marker `"end"`; fails on
/// `recovered: false`.
async fn collect_until_end(mut client: Client) -> Vec<Received> {
    let mut got = Vec::new();
    within(Duration::from_secs(60), "the end marker", async {
        loop {
            let mut m = next_not_state(&mut client).await;
            assert_ne!(m["type"], "recovered", "{}: {m}", client.user);
            assert_eq!(m["type"], "message", "{m}");
            let id = m.get("id").is_some().then(|| take_id(&mut m));
            let end = m["data"] == "end";
            got.push((id, m["data"].clone(), Instant::now()));
            if end {
                break;
            }
        }
    })
    .await;
    got
}

/// Checks one receiver: every stored event exactly once with its id, ids contiguous in
/// one epoch, nothing twice. Returns how long after `fault_end` the last event published
/// before `fault_end` arrived (zero if all were there before), and the longest time from
/// an event's receipt to its arrival (what the fault cost the worst-hit event).
fn check_receiver(
    name: &str,
    got: &[Received],
    published: &Published,
    fault_end: Instant,
) -> (Duration, Duration) {
    let mut seen = HashSet::new();
    let mut last: Option<(u64, u64)> = None;
    for (id, data, _) in got {
        assert!(seen.insert(data.to_string()), "{name}: {data} received twice");
        if let Some((epoch, offset)) = *id {
            if let Some((e, o)) = last {
                assert_eq!((epoch, offset), (e, o + 1), "{name}: ids contiguous in one epoch");
            }
            last = Some((epoch, offset));
        }
    }
    let by_number: HashMap<u64, (Option<(u64, u64)>, Instant)> =
        got.iter().filter_map(|(id, data, at)| Some((data.as_u64()?, (*id, *at)))).collect();
    let mut lost = Vec::new();
    for (n, id) in &published.acked {
        match by_number.get(n) {
            Some((Some(got), _)) => {
                assert_eq!(*got, parse_id(id), "{name}: event {n} has its stored id")
            }
            Some((None, _)) => panic!("{name}: stored event {n} arrived without its id"),
            None => lost.push(*n),
        }
    }
    lost.sort_unstable();
    assert!(lost.is_empty(), "{name}: lost {} stored events: {lost:?}", lost.len());
    // Events stored before the fault ended (during it: Pub/Sub lost or held them).
    let before_end = |n: u64| published.acked_at.get(&n).is_some_and(|at| *at <= fault_end);
    let after_fault = got
        .iter()
        .filter(|(_, data, _)| data.as_u64().is_some_and(before_end))
        .map(|(_, _, at)| at.saturating_duration_since(fault_end))
        .max()
        .unwrap_or_default();
    let worst_lag = got
        .iter()
        .filter_map(|(_, data, at)| {
            Some(at.saturating_duration_since(*published.acked_at.get(&data.as_u64()?)?))
        })
        .max()
        .unwrap_or_default();
    (after_fault, worst_lag)
}

/// A fault scenario: two nodes on `redis`, a numbering publisher on a, subscribers of the
/// topic on a and b; `fault` runs once 150 events were published and returns when the
/// fault is over; the publisher goes on for 1 s after it. Connected clients must lose
/// nothing stored and get nothing twice.
async fn survives(name: &str, redis: &mut RedisServer, fault: impl AsyncFnOnce(&mut RedisServer)) {
    survives_with(name, redis, DeliveryMode::PubSub, fault).await;
}

/// [`survives`], the nodes getting stored events by `delivery`.
async fn survives_with(
    name: &str,
    redis: &mut RedisServer,
    delivery: DeliveryMode,
    fault: impl AsyncFnOnce(&mut RedisServer),
) {
    // The history covers what a fault can release at once: publishes that timed out on a
    // partitioned link are retransmitted by TCP and executed when it heals (up to ~400
    // here, at 200/s); with the default 100, the nodes would (rightly) tell their clients
    // `recovered: false` for the part trimmed before they could read it.
    let tweak = |c: &mut corecast::Config| {
        c.delivery = delivery;
        c.history_size = 1000;
    };
    let a = redis_node(redis, "a", tweak).await;
    let b = redis_node(redis, "b", tweak).await;
    let mut on_a = connect(a.addr, "ra", true).await;
    let mut on_b = connect(b.addr, "rb", true).await;
    subscribe(&mut on_a, "numbers", None).await;
    subscribe(&mut on_b, "numbers", None).await;
    let receivers = [tokio::spawn(collect_until_end(on_a)), tokio::spawn(collect_until_end(on_b))];
    let (progress, mut published_so_far) = tokio::sync::watch::channel(0);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(numbered_publisher(a.addr, "numbers", stopped, progress));
    within(WAIT, "150 published", published_so_far.wait_for(|n| *n >= 150))
        .await
        .expect("publisher runs");
    let fault_start = Instant::now();
    fault(redis).await;
    let fault_end = Instant::now();
    // Both nodes ready again, then 1 s of traffic (that wait is the scenario's length).
    for node in [&a, &b] {
        node.wait_health("ready after the fault", |h| h["bridge"]["ready"] == true).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(true);
    let published =
        within(Duration::from_secs(60), "publisher", publisher).await.expect("publisher");
    let (mut catch_up, mut worst_lag) = (Duration::ZERO, Duration::ZERO);
    for (receiver, who) in receivers.into_iter().zip(["node a", "node b"]) {
        let got = receiver.await.expect("receiver");
        let (after, lag) = check_receiver(&format!("{name}, {who}"), &got, &published, fault_end);
        catch_up = catch_up.max(after);
        worst_lag = worst_lag.max(lag);
    }
    let gaps = b.health().await["bridge"]["gaps_filled"].as_u64().unwrap_or(0)
        + a.health().await["bridge"]["gaps_filled"].as_u64().unwrap_or(0);
    eprintln!(
        "RESULT fault={name:?} delivery={delivery} lasted_ms={} stored={} failed_visibly={} lost=0 duplicated=0 \
         gap_events_filled={gaps} full_delivery_after_fault_ms={} worst_event_delay_ms={}",
        fault_end.duration_since(fault_start).as_millis(),
        published.acked.len(),
        published.failed.len(),
        catch_up.as_millis(),
        worst_lag.as_millis()
    );
}

/// `CLIENT KILL TYPE pubsub`, twice in a row: what Pub/Sub dropped meanwhile comes from
/// the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connections_killed_twice() {
    let mut redis = RedisServer::start().await;
    survives("CLIENT KILL TYPE pubsub x2", &mut redis, async |redis: &mut RedisServer| {
        assert!(redis.kill_subscribers().await >= 2);
        // Twice in a row: the second kill hits the new connections.
        redis.wait_numsub("corecast:topic:numbers", 2).await;
        assert!(redis.kill_subscribers().await >= 2);
    })
    .await;
}

/// Redis frozen (SIGSTOP) for 3 s: no error on any connection; the heartbeat notices,
/// publishes fail visibly meanwhile, and nothing stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_3s() {
    let mut redis = RedisServer::start().await;
    survives("SIGSTOP 3s", &mut redis, async |redis: &mut RedisServer| {
        redis.freeze();
        // The fault is 3 s long: this wait is its duration, not a synchronisation.
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.thaw();
    })
    .await;
}

/// `DEBUG SLEEP 3`: Redis stops answering for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_debug_sleep_3s() {
    let mut redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await;
    survives("DEBUG SLEEP 3", &mut redis, async |redis: &mut RedisServer| {
        redis.debug_sleep(3).await;
    })
    .await;
}

/// A 5 s network partition between the nodes and Redis (a veth link to the namespace
/// Redis runs in, cut and restored): no connection is reset, packets just vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_partition_for_5s() {
    let mut redis = match RedisServer::start_in_netns().await {
        Ok(redis) => redis,
        Err(why) => {
            eprintln!(
                "SKIPPED network_partition_for_5s: cannot make a network namespace here ({why})"
            );
            return;
        }
    };
    survives("5 s network partition", &mut redis, async |redis: &mut RedisServer| {
        redis.partition();
        // The fault is 5 s long: this wait is its duration, not a synchronisation.
        tokio::time::sleep(Duration::from_secs(5)).await;
        redis.heal();
    })
    .await;
}

/// kill -9 and restart of a Redis that persists every write (AOF, fsync always): the
/// history and the epochs survive, so nothing stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_persistence() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    survives("kill -9 + restart (AOF)", &mut redis, async |redis: &mut RedisServer| {
        redis.restart().await;
    })
    .await;
}

/// kill -9 and restart of a Redis that keeps nothing: new events carry a new epoch; a
/// client coming back with an id from before is told `recovered: false` — even once the
/// new epoch's offsets have passed the old one — and connected clients are told too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_starts_a_new_epoch() {
    let mut redis = RedisServer::start().await;
    let a = redis_node(&redis, "a", |_| {}).await;
    let b = redis_node(&redis, "b", |_| {}).await;
    let mut publisher = connect(a.addr, "pub", true).await;
    let mut connected = connect(b.addr, "stays", true).await;
    subscribe(&mut connected, "t", None).await;
    let mut old = String::new();
    for i in 0..3 {
        old = publish(&mut publisher, "t", json!(i)).await;
    }
    assert_eq!(events(&mut connected, 3).await.len(), 3);
    redis.restart().await;
    a.wait_health("reconnected", |h| {
        h["bridge"]["ready"] == true && h["bridge"]["reconnects"].as_u64() >= Some(4)
    })
    .await;
    b.wait_health("reconnected", |h| {
        h["bridge"]["ready"] == true && h["bridge"]["reconnects"].as_u64() >= Some(4)
    })
    .await;
    let mut new = String::new();
    for i in 0..5 {
        new = within(WAIT, "publish after the restart", async {
            loop {
                publisher.send_json(json!({"op":"publish","topic":"t","data":i,"ack":true})).await;
                let reply = next_not_state(&mut publisher).await;
                if reply["type"] == "published" {
                    return reply["id"].as_str().expect("id").to_owned();
                }
            }
        })
        .await;
    }
    let ((old_epoch, old_offset), (new_epoch, new_offset)) = (parse_id(&old), parse_id(&new));
    assert_ne!(old_epoch, new_epoch);
    assert!(new_offset > old_offset, "the new offsets passed the old position");
    // The connected client: told its stream lost history, then the new epoch's events.
    let mut told = false;
    let mut new_events = 0;
    within(WAIT, "told and the new events", async {
        while new_events < 5 {
            let mut m = next_not_state(&mut connected).await;
            if m["type"] == "recovered" {
                assert_eq!(m, json!({"type":"recovered","topic":"t","recovered":false}));
                told = true;
                continue;
            }
            assert_eq!(take_id(&mut m).0, new_epoch);
            new_events += 1;
        }
    })
    .await;
    assert!(told, "a connected client is told when its stream's history was lost");
    // A client coming back with the old id: lost, never a silent skip.
    let mut back = connect(b.addr, "back", true).await;
    subscribe(&mut back, "t", Some(&old)).await;
    assert_eq!(
        next_not_state(&mut back).await,
        json!({"type":"recovered","topic":"t","recovered":false})
    );
}

/// A node killed mid-stream (kill -9 of the real binary): its clients reconnect to another
/// node with their last ids and get every event they missed, once and in order
/// (`recovered: true`) — a topic subscriber (v1) and a seed-mode client (broadcasts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_recover_on_another() {
    let redis = RedisServer::start().await;
    let mut doomed = redis_child_node(&redis, "doomed", &["--shards", "2"]).await;
    // The history must cover the reconnect (the default keeps 100 events; this stream
    // carries 200 per second).
    let b = redis_node(&redis, "b", |c| c.history_size = 10_000).await;
    let mut topic_client = connect(doomed.addr, "tc", true).await;
    subscribe(&mut topic_client, "live", None).await;
    let mut seed_client = connect(doomed.addr, "sc", false).await;

    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let b_addr = b.addr;
    let publisher = tokio::spawn(async move {
        let mut topics = connect(b_addr, "tp", true).await;
        let mut seed = connect(b_addr, "sp", false).await;
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        let mut n = 0u64;
        while !*stopped.borrow_and_update() {
            pace.tick().await;
            n += 1;
            topics.send_json(json!({"op":"publish","topic":"live","data":n})).await;
            seed.send_text(n.to_string()).await;
        }
        topics.send_json(json!({"op":"publish","topic":"live","data":"end"})).await;
        seed.send_text("end").await;
        (topics, seed)
    });
    // Both clients follow the streams for a while, then their node dies.
    let mut last_topic = (0, 0);
    let mut seen = 0;
    while seen < 100 {
        // A v1 client also gets the broadcasts (live only: it recovers the topic).
        let mut m = next_not_state(&mut topic_client).await;
        if m["type"] == "message" {
            last_topic = take_id(&mut m);
            seen += 1;
        }
    }
    let mut last_broadcast = (0, 0);
    for _ in 0..100 {
        let mut m = without_state(&mut seed_client).await;
        last_broadcast = take_id(&mut m);
    }
    doomed.child.kill().expect("kill -9");
    doomed.child.wait().expect("reaped");
    drop((topic_client, seed_client));

    let since = format!("{}:{}", last_topic.0, last_topic.1);
    let mut topic_client = connect(b.addr, "tc", true).await;
    topic_client.send_json(json!({"op":"subscribe","topic":"live","since":since})).await;
    // Broadcasts keep coming meanwhile (live only for this client).
    loop {
        let m = next_not_state(&mut topic_client).await;
        if m["type"] != "broadcast" {
            assert_eq!(m, json!({"type":"subscribed","topic":"live"}));
            break;
        }
    }
    let query = format!("lastEventId={}:{}", last_broadcast.0, last_broadcast.1);
    let mut seed_client = connect_with_query(b.addr, "sc", &query).await;
    // Traffic after the reconnect is part of the scenario: this wait is its length.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);

    for (client, mut at, v1) in
        [(&mut topic_client, last_topic, true), (&mut seed_client, last_broadcast, false)]
    {
        let mut recovered = 0;
        within(WAIT, "every missed event, then live ones, to the end", async {
            loop {
                let mut m =
                    if v1 { next_not_state(client).await } else { without_state(client).await };
                if m["type"] == "broadcast" {
                    continue;
                }
                if m["type"] == "recovered" {
                    assert_eq!(m["recovered"], true, "{m}");
                    recovered += 1;
                    continue;
                }
                let id = take_id(&mut m);
                assert_eq!(id, (at.0, at.1 + 1), "{}: no gap, no duplicate", client.user);
                at = id;
                let data = if v1 {
                    m["data"].to_string()
                } else {
                    m["text"].as_str().unwrap_or_default().to_owned()
                };
                if data.contains("end") {
                    break;
                }
            }
        })
        .await;
        assert_eq!(recovered, 1, "{}: told once", client.user);
        assert!(at.1 > last_topic.1.min(last_broadcast.1), "events followed");
    }
    publisher.await.expect("publisher");
}

/// A reconnect storm: clients (1,000; `CORECAST_STORM_CLIENTS` for the measurement)
/// reconnect at once with `since` ids spread over the last 50 events of a topic. Each
/// recovers exactly what it missed, and the node reads the topic's history a handful of
/// times — not once per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_shares_history_reads() {
    let clients: usize =
        std::env::var("CORECAST_STORM_CLIENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let redis = RedisServer::start().await;
    let node = redis_node(&redis, "b", |c| {
        // Every client of the storm comes from 127.0.0.1.
        c.max_pending_handshakes_per_ip = clients + 16;
    })
    .await;
    let mut publisher = connect(node.addr, "storm-pub", true).await;
    // The node delivers the topic (a subscriber that stays).
    let mut keeper = connect(node.addr, "keeper", true).await;
    subscribe(&mut keeper, "storm", None).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(publish(&mut publisher, "storm", json!(i)).await);
    }
    assert_eq!(events(&mut keeper, 50).await.len(), 50);
    let reads_before = node.health().await["bridge"]["history_reads"].as_u64().expect("reads");
    let evalsha_before = redis.command_calls("evalsha").await;

    let start = Instant::now();
    let storm: Vec<_> = (0..clients)
        .map(|i| {
            let (since, missed) = (ids[i % 50].clone(), 49 - i % 50);
            let addr = node.addr;
            tokio::spawn(async move {
                let mut client = connect(addr, &format!("storm-{i}"), true).await;
                subscribe(&mut client, "storm", Some(&since)).await;
                let got = events(&mut client, missed).await;
                assert_eq!(got.last().map(|e| e.0), (missed > 0).then_some(50));
                assert_eq!(
                    next_not_state(&mut client).await,
                    json!({"type":"recovered","topic":"storm","recovered":true})
                );
                (Instant::now(), client)
            })
        })
        .collect();
    let mut live_at = start;
    let mut connected = Vec::with_capacity(clients);
    for task in storm {
        let (at, client) =
            within(Duration::from_secs(60), "the storm", task).await.expect("client");
        live_at = live_at.max(at);
        connected.push(client);
    }
    let reads =
        node.health().await["bridge"]["history_reads"].as_u64().expect("reads") - reads_before;
    // Every client is a new user of the node: one read of where its direct-message stream
    // stands (pipelined); the topic's history itself is read a handful of times.
    let evalsha = redis.command_calls("evalsha").await - evalsha_before;
    let positions = node.health().await["bridge"]["position_reads"].as_u64().expect("positions");
    eprintln!(
        "RESULT storm clients={clients} topic_history_reads={reads} redis_evalsha={evalsha} \
         (user stream positions: {positions}) all_live_after_ms={}",
        live_at.duration_since(start).as_millis()
    );
    assert!(reads <= 10, "{reads} history reads for {clients} clients");
    // And they are live: one more event reaches all of them.
    publish(&mut publisher, "storm", json!("after")).await;
    for client in &mut connected {
        assert_eq!(events(client, 1).await[0].1, json!("after"));
    }
    drop(connected);

    // The baseline, same node, same run: as many clients subscribing without `since`.
    let start = Instant::now();
    let plain: Vec<_> = (0..clients)
        .map(|i| {
            let addr = node.addr;
            tokio::spawn(async move {
                let mut client = connect(addr, &format!("plain-{i}"), true).await;
                subscribe(&mut client, "storm", None).await;
                (Instant::now(), client)
            })
        })
        .collect();
    let mut subscribed_at = start;
    let mut connected = Vec::with_capacity(clients);
    for task in plain {
        let (at, client) =
            within(Duration::from_secs(60), "the plain storm", task).await.expect("client");
        subscribed_at = subscribed_at.max(at);
        connected.push(client);
    }
    eprintln!(
        "RESULT storm baseline clients={clients} without since: all subscribed after {} ms",
        subscribed_at.duration_since(start).as_millis()
    );
}

/// Streams mode: the nodes read the history streams with XREAD instead of Pub/Sub; killing
/// the subscriber connections twice, and freezing Redis, lose nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_mode_survives_the_same_faults() {
    let mut redis = RedisServer::start().await;
    survives_with(
        "CLIENT KILL TYPE pubsub x2",
        &mut redis,
        DeliveryMode::Streams,
        async |redis: &mut RedisServer| {
            assert!(redis.kill_subscribers().await >= 2);
            redis.wait_numsub("corecast:topic:numbers", 2).await;
            assert!(redis.kill_subscribers().await >= 2);
        },
    )
    .await;
    let mut redis = RedisServer::start().await;
    survives_with(
        "SIGSTOP 3s",
        &mut redis,
        DeliveryMode::Streams,
        async |redis: &mut RedisServer| {
            redis.freeze();
            // The fault is 3 s long: this wait is its duration, not a synchronisation.
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.thaw();
        },
    )
    .await;
}

/// Streams mode: recovery across nodes behaves as with Pub/Sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_across_nodes_in_streams_mode() {
    let redis = RedisServer::start().await;
    let streams = |c: &mut corecast::Config| {
        short_history(c);
        c.delivery = DeliveryMode::Streams;
        // A node reading streams gets only what the history still holds when it reads:
        // the busy topic's burst of 400 events must fit.
        c.history_size = 1000;
    };
    let a = redis_node(&redis, "a", streams).await;
    let b = redis_node(&redis, "b", streams).await;
    recovers_missed_events(a.addr, b.addr).await;
    recovers_while_the_topic_is_busy(a.addr, b.addr).await;
    unrecoverable_positions_are_told(a.addr, b.addr).await;
    latest_and_history_pages(a.addr, b.addr).await;
    receipts_and_idempotency(a.addr, b.addr).await;
    seed_last_event_id(a.addr, b.addr).await;
    let h = b.health().await;
    assert!(h["bridge"]["stream_reads"].as_u64() > Some(0), "{h}");
}
