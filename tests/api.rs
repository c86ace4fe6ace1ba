//! The server API: real nodes (three on one real Redis), a keep-alive HTTP/1.1 client
//! over real sockets, real WebSocket receivers.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::support::{
    redis::{RedisServer, redis_child_node, redis_node},
    *,
};

const KEY: &str = "api-test-key";

/// A keep-alive HTTP/1.1 client for the API.
struct Api {
    stream: BufReader<TcpStream>,
}

impl Api {
    async fn connect(addr: SocketAddr) -> Api {
        let stream = within(WAIT, "API connect", TcpStream::connect(addr)).await.unwrap();
        Api { stream: BufReader::new(stream) }
    }

    /// Sends a raw request and reads one response: (status, headers, body).
    async fn exchange(&mut self, request: &[u8]) -> (u16, String, Value) {
        within(WAIT, "API exchange", async {
            self.stream.get_mut().write_all(request).await.unwrap();
            let mut head = String::new();
            loop {
                let mut line = String::new();
                let n = self.stream.read_line(&mut line).await.unwrap();
                assert!(n > 0, "connection closed before a response; got {head:?}");
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("Content-Length");
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await.unwrap();
            (status, head, serde_json::from_slice(&body).expect("a JSON body"))
        })
        .await
    }

    async fn post_with(&mut self, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, _, body) = self.exchange(request.as_bytes()).await;
        (status, body)
    }

    async fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        self.post_with(path, Some(KEY), &body.to_string()).await
    }
}

async fn api_node(redis: &RedisServer, name: &str) -> TestServer {
    redis_node(redis, name, |c| c.api_key.0 = Some(KEY.into())).await
}

/// Every endpoint on a three-node cluster: what node 1's API publishes reaches nodes 2
/// and 3, batches answer in order, disconnect closes the user everywhere and blocks it,
/// idempotent retries on different nodes at once deliver once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_across_three_nodes() {
    let redis = RedisServer::start().await;
    let n1 = api_node(&redis, "n1").await;
    let n2 = api_node(&redis, "n2").await;
    let n3 = api_node(&redis, "n3").await;
    let mut on2 = connect(n2.addr, "dora", true).await;
    let mut on3 = connect(n3.addr, "dora", true).await;
    let mut seed3 = connect(n3.addr, "sid", false).await;
    subscribe(&mut on2, "orders").await;
    subscribe(&mut on3, "orders").await;
    let mut api = Api::connect(n1.addr).await;

    // publish: same message as a client's, sender "server" or the body's.
    let (status, receipt) =
        api.post("/api/publish", json!({"topic":"orders","data":{"n":1}})).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["ok"], true);
    let id = receipt["id"].as_str().expect("an id").to_owned();
    for c in [&mut on2, &mut on3] {
        assert_eq!(
            c.recv_json().await,
            json!({"id":id,"type":"message","topic":"orders","sender":"server","data":{"n":1}})
        );
    }
    // broadcast and direct, on the same keep-alive connection.
    let (status, _) = api.post("/api/broadcast", json!({"data":"hello all","sender":"ops"})).await;
    assert_eq!(status, 200);
    assert_eq!(without_id(seed3.recv_json().await), json!({"sender":"ops","text":"hello all"}));
    for c in [&mut on2, &mut on3] {
        assert_eq!(
            without_id(c.recv_json().await),
            json!({"type":"broadcast","sender":"ops","data":"hello all"})
        );
    }
    let (status, _) = api.post("/api/direct", json!({"user":"dora","data":"psst"})).await;
    assert_eq!(status, 200);
    for c in [&mut on2, &mut on3] {
        assert_eq!(
            without_id(c.recv_json().await),
            json!({"type":"direct","sender":"server","data":"psst"})
        );
    }

    // batch: results in request order, a bad command answered in place.
    let (status, batch) = api
        .post(
            "/api/batch",
            json!({"commands":[
                {"op":"publish","topic":"orders","data":"b1"},
                {"op":"publish","topic":"bad topic","data":"x"},
                {"op":"direct","user":"dora","data":"b2"},
                {"op":"publish","topic":"orders","data":"b3"}]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["error"]["field"], "commands[1].topic");
    assert_eq!(results[2]["ok"], true);
    assert_eq!(results[3]["ok"], true);
    let offset = |v: &Value| v.as_str().unwrap().split_once(':').unwrap().1.parse::<u64>().unwrap();
    assert_eq!(offset(&results[3]["id"]), offset(&results[0]["id"]) + 1, "in order on one stream");
    for c in [&mut on2, &mut on3] {
        let mut got: Vec<Value> = Vec::new();
        for _ in 0..3 {
            got.push(without_id(c.recv_json().await)["data"].clone());
        }
        // b1 and b3 are one stream, in order; b2 is another stream.
        let topic: Vec<&Value> = got.iter().filter(|d| *d != "b2").collect();
        assert_eq!(topic, vec![&json!("b1"), &json!("b3")]);
        assert!(got.contains(&json!("b2")));
    }

    // Idempotent retries: the same key on three nodes at once is delivered once.
    let body = json!({"topic":"orders","data":"once","idempotency_key":"order-42"});
    let retries = [n1.addr, n2.addr, n3.addr].map(|addr| {
        let body = body.clone();
        tokio::spawn(async move { Api::connect(addr).await.post("/api/publish", body).await })
    });
    let mut ids = Vec::new();
    for retry in retries {
        let (status, receipt) = retry.await.unwrap();
        assert_eq!(status, 200, "{receipt}");
        ids.push(receipt["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one id for every retry: {ids:?}");
    let (_, again) = api.post("/api/publish", body.clone()).await;
    assert_eq!(again["id"], ids[0], "a later retry too");
    let (_, other_scope) = api
        .post("/api/direct", json!({"user":"dora","data":"d","idempotency_key":"order-42"}))
        .await;
    assert_ne!(other_scope["id"], ids[0], "keys are scoped per endpoint");
    for c in [&mut on2, &mut on3] {
        assert_eq!(without_id(c.recv_json().await)["data"], "once");
        assert_eq!(without_id(c.recv_json().await)["data"], "d");
    }
    let (_, marker) = api.post("/api/publish", json!({"topic":"orders","data":"marker"})).await;
    assert_eq!(marker["ok"], true);
    for c in [&mut on2, &mut on3] {
        assert_eq!(without_id(c.recv_json().await)["data"], "marker", "nothing delivered twice");
    }

    // disconnect: every connection of dora, on every node, with the code and reason;
    // blocked for a while on every node.
    let (status, done) = api
        .post(
            "/api/disconnect",
            json!({"user":"dora","code":4001,"reason":"banned","block_seconds":30}),
        )
        .await;
    assert_eq!((status, &done), (200, &json!({"ok":true})));
    for c in [&mut on2, &mut on3] {
        let close = c.recv_close().await.expect("a close frame");
        assert_eq!(u16::from(close.code), 4001);
        assert_eq!(close.reason.as_str(), "banned");
    }
    for addr in [n1.addr, n2.addr, n3.addr] {
        let (status, body) =
            parse_http(&raw_request(addr, upgrade_request("dora").as_bytes()).await);
        assert_eq!(status, 403, "{body}");
    }
    // A node that starts after the block refuses the user too.
    let n4 = api_node(&redis, "n4").await;
    poll_until(WAIT, "the late node learns the block", || async {
        let raw = raw_request(n4.addr, upgrade_request("dora").as_bytes()).await;
        (parse_http(&raw).0 == 403).then_some(())
    })
    .await;
    // Others are untouched.
    let (status, _) = api.post("/api/direct", json!({"user":"sid","data":"still here"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        without_id(seed3.recv_json().await),
        json!({"type":"direct","sender":"server","data":"still here"})
    );
}

/// Every malformed request gets its status and a JSON error naming the field; the
/// connection survives the 400s that come after a complete body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let node = TestServer::start(|c| {
        c.api_key.0 = Some(KEY.into());
        c.max_api_body.0 = 4096;
    });
    let mut api = Api::connect(node.addr).await;
    let cases = [
        (json!({"data":1}), "topic"),
        (json!({"topic":"t","data":1,"extra":true}), "extra"),
        (json!({"topic":5,"data":1}), "topic"),
        (json!({"topic":"t"}), "data"),
        (json!({"topic":"t","data":1,"sender":"no spaces"}), "sender"),
    ];
    for (body, field) in cases {
        let (status, error) = api.post("/api/publish", body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
        assert_eq!(error["error"]["code"], "invalid_field");
    }
    let (status, error) = api.post_with("/api/publish", Some(KEY), "{not json").await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("invalid_json")));
    let (status, error) = api.post("/api/batch", json!({"commands":[]})).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("commands")));
    let (status, error) = api.post("/api/disconnect", json!({"user":"u","code":1000})).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("code")));
    let (status, _) = api.post("/api/nope", json!({})).await;
    assert_eq!(status, 404);
    // Still the same connection: a good request works.
    let (status, ok) = api.post("/api/broadcast", json!({"data":"fine"})).await;
    assert_eq!((status, ok["ok"].as_bool()), (200, Some(true)), "{ok}");

    // Errors before the body: answered, then the connection closes.
    for (key, path, body, want) in
        [(Some("wrong"), "/api/publish", "{}", 401), (None, "/api/publish", "{}", 401)]
    {
        let (status, error) = Api::connect(node.addr).await.post_with(path, key, body).await;
        assert_eq!(status, want, "{error}");
        assert_eq!(error["error"]["code"], "unauthorized");
    }
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(5000));
    let (status, error) =
        Api::connect(node.addr).await.post_with("/api/broadcast", Some(KEY), &big).await;
    assert_eq!((status, error["error"]["code"].as_str()), (413, Some("body_too_large")));
    let get =
        format!("GET /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let (status, head, _) = Api::connect(node.addr).await.exchange(get.as_bytes()).await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"), "{head}");
    let chunked = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let (status, _, _) = Api::connect(node.addr).await.exchange(chunked.as_bytes()).await;
    assert_eq!(status, 400);

    // Without a key the API does not exist.
    let off = TestServer::start(|_| {});
    let (status, error) =
        Api::connect(off.addr).await.post("/api/publish", json!({"topic":"t","data":1})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("not_found")));
}

/// While the node cannot reach Redis the API answers 503 and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_redis_is_away() {
    let mut redis = RedisServer::start().await;
    let node = api_node(&redis, "lonely").await;
    redis.kill();
    node.wait_health("bridge not ready", |h| h["bridge"]["ready"] == false).await;
    let mut api = Api::connect(node.addr).await;
    let (status, error) = api.post("/api/publish", json!({"topic":"t","data":1})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("unavailable")), "{error}");
    let (status, _) = api.post("/api/disconnect", json!({"user":"u"})).await;
    assert_eq!(status, 503);
}

/// `api_listen`: the API on its own port, and only there; WebSockets only on `listen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_its_own_listener() {
    let node = TestServer::start(|c| {
        c.api_key.0 = Some(KEY.into());
        c.api_listen = "127.0.0.1:0".parse().unwrap();
    });
    let api_addr = node.api_addr().expect("an API listener");
    assert_ne!(api_addr, node.addr);
    let mut receiver = connect(node.addr, "r", true).await;
    let (status, ok) = Api::connect(api_addr)
        .await
        .post("/api/direct", json!({"user":"r","data":"via the API port"}))
        .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(
        without_id(receiver.recv_json().await),
        json!({"type":"direct","sender":"server","data":"via the API port"})
    );
    let (status, error) =
        Api::connect(node.addr).await.post("/api/direct", json!({"user":"r","data":"x"})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("not_found")), "{error}");
    let (status, body) = parse_http(&raw_request(api_addr, upgrade_request("r").as_bytes()).await);
    assert_eq!(status, 404, "no upgrades on the API port: {body}");
    assert_eq!(http_get(api_addr, "/healthz").await.0, 200);
}

/// `max_connections_per_user` across nodes: the count is the cluster's; a node killed
/// with -9 stops counting within 3 × the heartbeat timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_across_nodes() {
    let redis = RedisServer::start().await;
    let n1 = redis_node(&redis, "n1", |c| c.max_connections_per_user = 2).await;
    let doomed =
        redis_child_node(&redis, "doomed", &["--shards", "1", "--max-connections-per-user", "2"])
            .await;
    let _on1 = connect(n1.addr, "alice", false).await;
    let _on_doomed = connect(doomed.addr, "alice", false).await;
    for addr in [n1.addr, doomed.addr] {
        assert_eq!(upgrade_status(addr, "alice").await, 429, "a third connection anywhere");
    }
    let _bob = connect(doomed.addr, "bob", false).await;
    // The node dies without closing anything: its connection stops counting once its
    // heartbeat is older than 3 × 1.5 s.
    let mut doomed = doomed;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let killed = std::time::Instant::now();
    let admitted = poll_until(WAIT, "the dead node's connection stops counting", || async {
        (upgrade_status(n1.addr, "alice").await == 101).then(|| killed.elapsed())
    })
    .await;
    assert!(admitted < std::time::Duration::from_secs(6), "took {admitted:?}");
}

/// Publishes `data` on `topic` with idempotency key `key` and returns the receipt's id.
async fn receipt_of(client: &mut Client, topic: &str, data: &str, key: &str) -> Value {
    let command =
        json!({"op":"publish","topic":topic,"data":data,"ack":true,"idempotency_key":key});
    client.send_json(command).await;
    let receipt = client.recv_json().await;
    assert_eq!(receipt["type"], "published", "{receipt}");
    receipt["id"].clone()
}

/// Idempotency keys belong to their publisher: a WebSocket client's key never answers for
/// another user's publish or the server API's (whatever the key spells), and no two
/// (stream, key) pairs share one Redis key when names and keys contain `:`. Each publish
/// below must be stored (its own receipt, delivered), except a true retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_their_publisher() {
    let redis = RedisServer::start().await;
    let node = api_node(&redis, "a").await;
    let mut api = Api::connect(node.addr).await;
    let mut reader = connect(node.addr, "reader", true).await;
    subscribe(&mut reader, "t").await;
    subscribe(&mut reader, "a").await;
    let mut alice = connect(node.addr, "alice", true).await;
    let mut bob = connect(node.addr, "bob", true).await;
    let (status, from_api) =
        api.post("/api/publish", json!({"topic":"t","data":"api","idempotency_key":"k1"})).await;
    assert_eq!(status, 200, "{from_api}");
    // A client's key spelled like the API's scoped key: a publish of its own.
    let alices = receipt_of(&mut alice, "t", "alice", "api.publish:k1").await;
    assert_ne!(alices, from_api["id"], "a WebSocket key never meets an API key");
    assert_eq!(receipt_of(&mut alice, "t", "alice", "api.publish:k1").await, alices, "a retry");
    let bobs = receipt_of(&mut bob, "t", "bob", "api.publish:k1").await;
    assert_ne!(bobs, alices, "another user's key is another key");
    // Topic `a:b` with key `c`, then topic `a` with key `b:c`: two publishes.
    receipt_of(&mut alice, "a:b", "ab", "c").await;
    receipt_of(&mut alice, "a", "a", "b:c").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let event = reader.recv_json().await;
        got.push((event["topic"].as_str().unwrap_or_default().to_owned(), event["data"].clone()));
    }
    let want = [("t", "api"), ("t", "alice"), ("t", "bob"), ("a", "a")]
        .map(|(topic, data)| (topic.to_owned(), json!(data)));
    assert_eq!(got, want, "every publish stored and delivered once, the retry not at all");
}

/// An event that could not fit in a receiver's outbound queue as one frame is refused at
/// publish (v1 `too_large`, API 413 `event_too_large`), instead of closing every
/// subscriber as a slow consumer (and again at each of their recoveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_a_queue_is_refused_at_publish() {
    let node = TestServer::start(|cfg| {
        cfg.outbound_queue_limit.0 = 32 << 10;
        cfg.api_key.0 = Some(KEY.into());
    });
    let mut reader = connect(node.addr, "reader", true).await;
    subscribe(&mut reader, "t").await;
    let mut alice = connect(node.addr, "alice", true).await;
    // Within max_message_size (64 KiB), beyond the 32 KiB queue.
    let big = "x".repeat(40_000);
    alice.send_json(json!({"op":"publish","topic":"t","data":big,"ack":true})).await;
    let refused = alice.recv_json().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "too_large", "{refused}");
    node.wait_health("the refusal counted", |h| h["too_large"] == 1).await;
    let mut api = Api::connect(node.addr).await;
    let (status, error) =
        api.post("/api/publish", json!({"topic":"t","data":"y".repeat(70_000)})).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "event_too_large", "{error}");
    assert_eq!(error["error"]["field"], "data", "{error}");
    // The subscriber was never sent either, and is still served.
    alice.send_json(json!({"op":"publish","topic":"t","data":"small"})).await;
    assert_eq!(reader.recv_json().await["data"], "small");
}

/// A slow Redis is answered, not cut off: a publish waiting on a frozen Redis gets 503
/// `unavailable` (the receipt wait, 10 s, or the bridge's own command timeout, ends it)
/// although the handshake timeout is 1 s — that bounds reading a request, not executing
/// it. Before, the node closed the connection mid-request at the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_answered_not_cut_off() {
    let redis = RedisServer::start().await;
    let node = redis_node(&redis, "slow", |c| {
        c.api_key.0 = Some(KEY.into());
        c.handshake_timeout.0 = std::time::Duration::from_secs(1);
    })
    .await;
    let mut api = Api::connect(node.addr).await;
    redis.freeze();
    let (status, error) = api.post("/api/publish", json!({"topic":"t","data":1})).await;
    redis.thaw();
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("unavailable")), "{error}");
}

/// Two deployments on one Redis server never see each other: one on database 0, one with
/// the same prefix on database 1, one with another prefix on database 0 (each with its
/// own seed channel). A topic event, a broadcast and a disconnect with a block on the
/// first reach none of the others: their clients' first message is their own marker, and
/// their user is not blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_sharing_a_redis_server_are_isolated() {
    use corecast::config::{Name, RedisUrl};
    let redis = RedisServer::start().await;
    let db1 = redis.url().replace("/0", "/1");
    let p0 = api_node(&redis, "p0").await;
    let p1 = redis_node(&redis, "p1", |c| {
        c.api_key.0 = Some(KEY.into());
        c.redis = RedisUrl(Some(db1));
        c.seed_channel = Name("seed-p1".into());
    })
    .await;
    let p2 = redis_node(&redis, "p2", |c| {
        c.api_key.0 = Some(KEY.into());
        c.redis_prefix = Name("other:".into());
        c.seed_channel = Name("seed-p2".into());
    })
    .await;
    let mut clients = Vec::new();
    for node in [&p0, &p1, &p2] {
        let mut client = connect(node.addr, "u", true).await;
        subscribe(&mut client, "t").await;
        clients.push(client);
    }
    let mut api = Api::connect(p0.addr).await;
    let (status, _) = api.post("/api/publish", json!({"topic":"t","data":"from p0"})).await;
    assert_eq!(status, 200);
    let (status, _) = api.post("/api/broadcast", json!({"data":"b from p0"})).await;
    assert_eq!(status, 200);
    let (status, _) = api.post("/api/disconnect", json!({"user":"u","block_seconds":60})).await;
    assert_eq!(status, 200);
    let [mine, others @ ..] = &mut clients[..] else { unreachable!() };
    assert_eq!(without_id(mine.recv_json().await)["data"], "from p0");
    assert_eq!(without_id(mine.recv_json().await)["data"], "b from p0");
    assert_eq!(mine.recv_close().await.map(|c| u16::from(c.code)), Some(4000));
    for (client, node) in others.iter_mut().zip([&p1, &p2]) {
        let mut api = Api::connect(node.addr).await;
        let (status, _) = api.post("/api/publish", json!({"topic":"t","data":"marker"})).await;
        assert_eq!(status, 200);
        assert_eq!(without_id(client.recv_json().await)["data"], "marker", "nothing from p0");
        assert_eq!(upgrade_status(node.addr, "u").await, 101, "u is not blocked here");
    }
    assert_eq!(upgrade_status(p0.addr, "u").await, 403, "u is blocked on p0");
}
