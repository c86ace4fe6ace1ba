//! Presence, occupancy and webhooks: three real nodes on one real Redis (one of them a
//! child process, killed with SIGKILL), real WebSocket clients, a real HTTP receiver
//! for the webhooks started by the test.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::support::{
    redis::{RedisServer, redis_node},
    *,
};

const SECRET: &str = "webhook-test-secret";
const KEY: &str = "presence-test-key";

/// Subscribes with `presence: true`; returns the snapshot's members (after `subscribed`).
async fn watch(client: &mut Client, topic: &str) -> Value {
    client.send_json(json!({"op":"subscribe","topic":topic,"presence":true})).await;
    assert_eq!(client.recv_json().await, json!({"type":"subscribed","topic":topic}));
    let snapshot = client.recv_json().await;
    assert_eq!(snapshot["type"], "presence", "{snapshot}");
    assert_eq!(snapshot["topic"], topic);
    snapshot["members"].clone()
}

/// The one-off `presence` command's members.
async fn members(client: &mut Client, topic: &str) -> Value {
    client.send_json(json!({"op":"presence","topic":topic})).await;
    let answer = client.recv_json().await;
    assert_eq!(answer["type"], "presence", "{answer}");
    answer["members"].clone()
}

fn member(user: &str, connections: u64) -> Value {
    json!({"user": user, "connections": connections})
}

fn news(kind: &str, topic: &str, user: &str) -> Value {
    json!({"type": kind, "topic": topic, "user": user})
}

/// Joins and leaves are per user and cluster-wide; a node killed with SIGKILL loses its
/// members within twice the presence TTL, and one restarted at once with the same id
/// removes its previous life's members at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_nodes_survives_a_crash() {
    let redis = RedisServer::start().await;
    let ttl = Duration::from_secs(2);
    let short = |c: &mut corecast::Config| c.presence_ttl.0 = ttl;
    let n1 = redis_node(&redis, "n1", short).await;
    let n2 = redis_node(&redis, "n2", short).await;
    let n3 = redis_node(&redis, "n3", short).await;

    let mut ann = connect(n1.addr, "ann", true).await;
    assert_eq!(watch(&mut ann, "room").await, json!([member("ann", 1)]));
    let mut bob2 = connect(n2.addr, "bob", true).await;
    subscribe(&mut bob2, "room").await;
    assert_eq!(ann.recv_json().await, news("join", "room", "bob"));
    // Bob's second tab, on another node: not a new join.
    let mut bob3 = connect(n3.addr, "bob", true).await;
    subscribe(&mut bob3, "room").await;
    let mut carl = connect(n3.addr, "carl", true).await;
    subscribe(&mut carl, "room").await;
    assert_eq!(ann.recv_json().await, news("join", "room", "carl"), "bob's second tab is no join");
    assert_eq!(
        members(&mut carl, "room").await,
        json!([member("ann", 1), member("bob", 2), member("carl", 1)])
    );
    // One of Bob's tabs goes: no leave; the last one goes: leave.
    bob2.ws.close(None).await.unwrap();
    drop(bob2);
    let mut eve = connect(n2.addr, "eve", true).await;
    subscribe(&mut eve, "room").await;
    assert_eq!(ann.recv_json().await, news("join", "room", "eve"), "bob is still there");
    bob3.send_json(json!({"op":"unsubscribe","topic":"room"})).await;
    assert_eq!(bob3.recv_json().await["type"], "unsubscribed");
    assert_eq!(ann.recv_json().await, news("leave", "room", "bob"));

    // A node dies (SIGKILL): its member leaves within 2×TTL, with a leave event.
    let url = redis.url();
    let node_args = ["--redis", url.as_str(), "--node-id", "doomed", "--presence-ttl", "2s"];
    let mut doomed = ChildServer::start(&node_args).await;
    doomed.wait_health("bridge ready", |h| h["bridge"]["ready"] == true).await;
    let mut dave = connect(doomed.addr, "dave", true).await;
    subscribe(&mut dave, "room").await;
    assert_eq!(ann.recv_json().await, news("join", "room", "dave"));
    doomed.child.kill().unwrap();
    let killed = Instant::now();
    assert_eq!(ann.recv_json().await, news("leave", "room", "dave"));
    let took = killed.elapsed();
    assert!(took <= 2 * ttl, "dave left {took:?} after the crash (TTL {ttl:?})");
    eprintln!("MEASURE presence_crash_leave_ms={}", took.as_millis());
    drop(dave);
    drop(doomed);

    // Crash and restart at once with the same id: the new life removes the old members.
    let mut doomed = ChildServer::start(&node_args).await;
    doomed.wait_health("bridge ready", |h| h["bridge"]["ready"] == true).await;
    let mut dave = connect(doomed.addr, "dave", true).await;
    subscribe(&mut dave, "room").await;
    assert_eq!(ann.recv_json().await, news("join", "room", "dave"));
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    let restarted = Instant::now();
    let again = ChildServer::start(&node_args).await;
    assert_eq!(ann.recv_json().await, news("leave", "room", "dave"));
    eprintln!("MEASURE presence_restart_leave_ms={}", restarted.elapsed().as_millis());
    assert_eq!(
        members(&mut ann, "room").await,
        json!([member("ann", 1), member("carl", 1), member("eve", 1)]),
        "no ghost of the dead node"
    );
    drop(again);
    drop(dave);
}

/// GET with the API key; (status, JSON body).
async fn api_get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_request(addr, request.as_bytes()).await;
    let (status, body) = parse_http(&raw);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The occupancy API answers the cluster's counts on every node; a user moving to another
/// node (new connection first) never makes the topic unoccupied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_api_counts_the_cluster() {
    let redis = RedisServer::start().await;
    let keyed = |c: &mut corecast::Config| c.api_key.0 = Some(KEY.into());
    let n1 = redis_node(&redis, "n1", keyed).await;
    let n2 = redis_node(&redis, "n2", keyed).await;
    let n3 = redis_node(&redis, "n3", keyed).await;
    let mut clients = Vec::new();
    for (node, user, topic) in [
        (&n1, "ann", "chat.a"),
        (&n2, "ann", "chat.a"),
        (&n3, "bob", "chat.a"),
        (&n2, "bob", "chat.b"),
        (&n3, "cid", "feed.x"),
    ] {
        let mut c = connect(node.addr, user, true).await;
        subscribe(&mut c, topic).await;
        clients.push(c);
    }
    // Subscriptions reach Redis asynchronously: poll until the counts are in.
    let channels = poll_until(WAIT, "occupancy in Redis", || async {
        let (status, body) = api_get(n1.addr, "/api/channels?prefix=chat.").await;
        (status == 200 && body["channels"]["chat.a"]["subscribers"] == 3).then_some(body)
    })
    .await;
    assert_eq!(
        channels,
        json!({"channels":{"chat.a":{"subscribers":3,"users":2},"chat.b":{"subscribers":1,"users":1}}})
    );
    for node in [&n1, &n2, &n3] {
        let (status, one) = api_get(node.addr, "/api/channels/chat.a").await;
        assert_eq!((status, one), (200, json!({"occupied":true,"subscribers":3,"users":2})));
    }
    let (_, users) = api_get(n3.addr, "/api/channels/chat.a/users").await;
    assert_eq!(users, json!({"users":[member("ann", 2), member("bob", 1)]}));
    let (_, empty) = api_get(n2.addr, "/api/channels/nobody.here").await;
    assert_eq!(empty, json!({"occupied":false,"subscribers":0,"users":0}));
    let stats = poll_until(WAIT, "every node's heartbeat", || async {
        let (status, stats) = api_get(n2.addr, "/api/stats").await;
        let all = stats["nodes"].as_array().is_some_and(|n| n.len() == 3);
        (status == 200 && all && stats["connections"] == 5).then_some(stats)
    })
    .await;
    let ids: Vec<&str> =
        stats["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    assert_eq!(stats["connections"], 5);
    // Errors: unknown endpoint, bad topic, no key.
    assert_eq!(api_get(n1.addr, "/api/nothing").await.0, 404);
    assert_eq!(api_get(n1.addr, "/api/channels/bad%20topic").await.0, 400);
    let raw =
        raw_request(n1.addr, b"GET /api/stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(parse_http(&raw).0, 401);

    // cid moves from n3 to n1: the new connection first, then the old one closes.
    let mut moved = connect(n1.addr, "cid", true).await;
    subscribe(&mut moved, "feed.x").await;
    let mut old = clients.pop().unwrap();
    old.ws.close(None).await.unwrap();
    drop(old);
    let after = poll_until(WAIT, "the old connection counted out", || async {
        let (_, body) = api_get(n2.addr, "/api/channels/feed.x").await;
        (body["subscribers"] == 1).then_some(body)
    })
    .await;
    assert_eq!(after, json!({"occupied":true,"subscribers":1,"users":1}));
}

/// One request the webhook receiver got.
#[derive(Debug)]
struct Received {
    signature: String,
    body: String,
    answered: u16,
}

/// A real HTTP/1.1 server that answers 500 to its first `fail_first` requests, 200 after.
struct Receiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    events: Vec<Value>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let served = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, served) = (tx.clone(), served.clone());
                tokio::spawn(serve(stream, tx, served, fail_first));
            }
        });
        Receiver { addr, requests, events: Vec::new() }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// The next request (bounded).
    async fn next(&mut self) -> Received {
        within(WAIT, "a webhook request", self.requests.recv()).await.expect("receiver runs")
    }

    /// Takes requests (checking each signature) until `n` events named `name` have come.
    async fn until(&mut self, name: &str, n: usize) {
        while self.events.iter().filter(|e| e["name"] == name).count() < n {
            let request = self.next().await;
            assert!(verify(&request.signature, &request.body), "bad signature: {request:?}");
            if request.answered == 200 {
                let body: Value = serde_json::from_str(&request.body).unwrap();
                self.events.extend(body["events"].as_array().unwrap().iter().cloned());
            }
        }
    }

    /// Events delivered so far named `name` (for `topic`).
    fn count(&self, name: &str, topic: &str) -> usize {
        self.events.iter().filter(|e| e["name"] == name && e["topic"] == topic).count()
    }
}

async fn serve(
    stream: TcpStream,
    tx: mpsc::UnboundedSender<Received>,
    served: Arc<AtomicUsize>,
    fail_first: usize,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut length = 0;
        let mut signature = String::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if lower.starts_with("x-corecast-signature:") {
                signature = line.split_once(':').unwrap().1.trim().to_owned();
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        let answered = if served.fetch_add(1, Ordering::SeqCst) < fail_first { 500 } else { 200 };
        let reply = format!("HTTP/1.1 {answered} X\r\nContent-Length: 0\r\n\r\n");
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        let body = String::from_utf8(body).unwrap();
        let _ = tx.send(Received { signature, body, answered });
    }
}

/// The documented check: `t=<ts>,v1=<hex>`; HMAC-SHA256(secret, "<ts>.<raw body>").
fn verify(header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let Ok(tag) = (0..v1.len() / 2)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    ring::hmac::verify(&key, format!("{t}.{body}").as_bytes(), &tag).is_ok()
}

fn hooked(url: String) -> impl FnOnce(&mut corecast::Config) {
    move |c| {
        c.webhook_url = url.parse().unwrap();
        c.webhook_secret.0 = Some(SECRET.into());
        c.webhook_vacate_delay.0 = Duration::from_secs(1);
        c.presence_ttl.0 = Duration::from_secs(2);
    }
}

/// Waits until no node has webhook events waiting.
async fn webhooks_idle(nodes: &[&TestServer]) {
    for node in nodes {
        node.wait_health("webhooks sent", |h| h["webhooks"]["queued"] == 0).await;
    }
}

/// Three nodes, one receiver: exactly one `channel_occupied` and one `channel_vacated`
/// per cluster-level transition; a user who moves to another node within the vacate
/// delay causes no webhook at all; every request is signed as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_per_cluster_transition() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start(0).await;
    let n1 = redis_node(&redis, "n1", hooked(receiver.url())).await;
    let n2 = redis_node(&redis, "n2", hooked(receiver.url())).await;
    let n3 = redis_node(&redis, "n3", hooked(receiver.url())).await;
    let mut a = connect(n1.addr, "ann", true).await;
    subscribe(&mut a, "w").await;
    let mut b = connect(n2.addr, "bob", true).await;
    subscribe(&mut b, "w").await;
    receiver.until("member_added", 2).await;
    // Ann moves from n1 to n3 (a short gap: she closes first), within the delay.
    a.ws.close(None).await.unwrap();
    drop(a);
    let mut a3 = connect(n3.addr, "ann", true).await;
    subscribe(&mut a3, "w").await;
    // Everyone leaves; the channel is vacated once, after the delay.
    for mut c in [a3, b] {
        c.ws.close(None).await.unwrap();
    }
    receiver.until("channel_vacated", 1).await;
    webhooks_idle(&[&n1, &n2, &n3]).await;
    assert_eq!(receiver.count("channel_occupied", "w"), 1, "{:#?}", receiver.events);
    assert_eq!(receiver.count("channel_vacated", "w"), 1, "{:#?}", receiver.events);
    let added = receiver
        .events
        .iter()
        .filter(|e| e["name"] == "member_added" && e["user"] == "ann")
        .count();
    let removed = receiver
        .events
        .iter()
        .filter(|e| e["name"] == "member_removed" && e["user"] == "ann")
        .count();
    assert_eq!((added, removed), (1, 1), "ann's move is no flap: {:#?}", receiver.events);
    let closed = receiver.events.iter().filter(|e| e["name"] == "connection_closed").count();
    assert_eq!(closed, 3, "{:#?}", receiver.events);
    let first_close = receiver.events.iter().find(|e| e["name"] == "connection_closed").unwrap();
    assert_eq!(first_close["reason"], "client");
}

/// A receiver answering 500 twice gets the same events on the third try (freshly signed);
/// a dead receiver does not slow delivery to clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_and_never_slow_clients() {
    let mut receiver = Receiver::start(2).await;
    let node = TestServer::start(hooked(receiver.url()));
    let mut c = connect(node.addr, "ann", true).await;
    subscribe(&mut c, "r").await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    assert_eq!([first.answered, second.answered, third.answered], [500, 500, 200]);
    assert_eq!(first.body, third.body, "the same events are retried");
    for request in [&first, &second, &third] {
        assert!(verify(&request.signature, &request.body), "{request:?}");
    }
    let body: Value = serde_json::from_str(&third.body).unwrap();
    let names: Vec<&str> =
        body["events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["channel_occupied", "member_added"]);
    node.wait_health("sent counted", |h| h["webhooks"]["sent"] == 2).await;

    // A receiver that is gone: clients still get every message at once (measured against
    // the same rounds on a node without webhooks, same run).
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let with_dead = TestServer::start(hooked(format!("http://{dead}/gone")));
    let without = TestServer::start(|_| {});
    for (label, node) in [("no_webhooks", &without), ("dead_receiver", &with_dead)] {
        let mut listener = connect(node.addr, "lis", true).await;
        subscribe(&mut listener, "fast").await;
        let mut talker = connect(node.addr, "tal", true).await;
        let started = Instant::now();
        for i in 0..200 {
            let mut churn = connect(node.addr, &format!("churn{i}"), true).await;
            subscribe(&mut churn, "fast").await;
            talker.send_json(json!({"op":"publish","topic":"fast","data":i})).await;
            assert_eq!(listener.recv_json().await["data"], i);
            drop(churn);
        }
        eprintln!("MEASURE {label}_200_rounds_ms={}", started.elapsed().as_millis());
    }
    let health = with_dead.health().await;
    assert_eq!(health["webhooks"]["sent"], 0, "nothing reached the dead receiver: {health}");
}

/// The same protocol on the embedded bus (one node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_the_embedded_bus() {
    let node = TestServer::start(|_| {});
    let mut ann = connect(node.addr, "ann", true).await;
    assert_eq!(watch(&mut ann, "room").await, json!([member("ann", 1)]));
    let mut bob = connect(node.addr, "bob", true).await;
    subscribe(&mut bob, "room").await;
    assert_eq!(ann.recv_json().await, news("join", "room", "bob"));
    let mut bob2 = connect(node.addr, "bob", true).await;
    subscribe(&mut bob2, "room").await;
    assert_eq!(members(&mut ann, "room").await, json!([member("ann", 1), member("bob", 2)]));
    drop(bob);
    drop(bob2);
    assert_eq!(ann.recv_json().await, news("leave", "room", "bob"));
    // Errors: not a topic, not a boolean.
    ann.send_json(json!({"op":"presence","topic":"bad topic"})).await;
    assert_eq!(ann.recv_json().await["code"], "invalid_topic");
    ann.send_json(json!({"op":"subscribe","topic":"x","presence":"yes"})).await;
    assert_eq!(ann.recv_json().await["code"], "invalid_command");
}

/// Joins published while a node's Pub/Sub connection is down never reach it; its
/// presence watchers are given a fresh member list once it is back. Made deterministic
/// with Redis's own ACL: the nodes' Pub/Sub connections are killed and the default user is
/// turned off (connections made before keep working, new ones are refused), a user joins
/// on the other node (its news goes to no one on the watcher's node), then the user is
/// turned on again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_a_fresh_list_after_news_was_lost() {
    let redis = RedisServer::start().await;
    let a = redis_node(&redis, "a", |_| {}).await;
    let b = redis_node(&redis, "b", |_| {}).await;
    let mut watcher = connect(b.addr, "watcher", true).await;
    assert_eq!(watch(&mut watcher, "room").await, json!([member("watcher", 1)]));
    // Made before the ACL change: it keeps working.
    let admin = redis.client().await;
    let run = async |args: &[&str]| {
        let command = fred::types::CustomCommand::new(
            args[0].to_owned(),
            fred::types::ClusterHash::Random,
            false,
        );
        let rest: Vec<String> = args[1..].iter().map(|a| (*a).to_owned()).collect();
        let answer: Result<fred::types::Value, _> =
            within(WAIT, args[0], fred::interfaces::ClientLike::custom(&admin, command, rest))
                .await;
        answer.unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")))
    };
    run(&["ACL", "SETUSER", "default", "off"]).await;
    run(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let mut joiner = connect(a.addr, "joiner", true).await;
    // (The node says `degraded` first: its Pub/Sub connection is gone.)
    crate::recovery::subscribe(&mut joiner, "room", None).await;
    // Stored in Redis, its news published to no subscriber on b.
    poll_until(WAIT, "the join is in Redis", || async {
        let who = run(&["HGET", "corecast:presence:topic:room", "joiner"]).await;
        (who.as_str().as_deref() == Some("1")).then_some(())
    })
    .await;
    run(&["ACL", "SETUSER", "default", "on"]).await;
    // The watcher learns of the joiner: from a fresh list (never from the lost news).
    within(WAIT, "the watcher learns of the joiner", async {
        loop {
            let m = watcher.recv_json().await;
            match m["type"].as_str() {
                Some("degraded" | "restored") => continue,
                Some("presence") => {
                    let members = &m["members"];
                    if members.as_array().is_some_and(|all| all.contains(&member("joiner", 1))) {
                        assert!(members.as_array().unwrap().contains(&member("watcher", 1)));
                        break;
                    }
                }
                _ => panic!("unexpected {m}"),
            }
        }
    })
    .await;
}
