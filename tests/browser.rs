//! The browser client (`clients/js/corecast.js`) in real headless Chromium (Debian's
//! `chromium`, driven by `playwright-core` from npm), against real nodes on a real Redis.
//! The page is served from a node's own origin and imports the module the node serves.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{
    redis::{RedisServer, redis_child_node, redis_node},
    *,
};

/// `clients/js`, with `playwright-core` installed (`npm ci` when it is missing).
pub(crate) fn client_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (install Node.js and npm)");
        assert!(status.success(), "npm ci in clients/js failed");
    }
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser tests need Debian's chromium: apt-get install -y chromium"
    );
    dir
}

/// A Node.js script of `clients/js/test`, its stdout lines sent to the returned channel.
pub(crate) struct Driver {
    child: std::process::Child,
    pub(crate) lines: mpsc::UnboundedReceiver<String>,
}

impl Driver {
    pub(crate) fn start(script: &str, envs: &[(&str, String)]) -> Driver {
        let dir = client_dir();
        let mut child = Command::new("node")
            // Node 20's WebSocket (the browser's API), for the scripts without a browser.
            .args(["--experimental-websocket", "--no-warnings"])
            .arg(dir.join("test").join(script))
            .current_dir(&dir)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver { child, lines }
    }

    /// Writes one line to the script's stdin.
    pub(crate) fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("driver stdin");
    }

    /// The next line that starts with `prefix`, without it (other lines are skipped).
    pub(crate) async fn expect(&mut self, prefix: &str) -> String {
        loop {
            if let Some(rest) = self.next().await.strip_prefix(prefix) {
                return rest.trim_start().to_owned();
            }
        }
    }

    /// The next line; panics on `error ...` lines and at EOF.
    pub(crate) async fn next(&mut self) -> String {
        let line =
            within(Duration::from_secs(60), "a line from the browser driver", self.lines.recv())
                .await
                .expect("the browser driver exited early");
        if !line.starts_with("count ") {
            eprintln!("browser driver: {line}");
        }
        assert!(!line.starts_with("error"), "browser driver: {line}");
        line
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page subscribes through node 1 (with node 2 as its second URL); a publisher on node 2
/// sends 300 events; node 1 is killed with SIGKILL mid-stream. The client reconnects to
/// node 2, resumes from its last id, and ends with every event exactly once, in order;
/// its `publish` resolved to the id of the event it then received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_client_resumes_across_a_killed_node() {
    const EVENTS: u64 = 300;
    let redis = RedisServer::start().await;
    let mut n1 = redis_child_node(&redis, "b1", &["--shards", "1", "--history-size", "1000"]).await;
    let n2 = redis_node(&redis, "b2", |c| c.history_size = 1000).await;

    let mut driver = Driver::start(
        "resume.mjs",
        &[
            ("NODES", format!("http://{},http://{}", n1.addr, n2.addr)),
            ("TOPIC", "ticks".into()),
            ("EXPECT", (EVENTS + 1).to_string()),
        ],
    );
    let published = loop {
        let line = driver.next().await;
        if let Some(id) = line.strip_prefix("ready ") {
            break id.to_owned();
        }
    };

    let mut publisher = connect(n2.addr, "pub", true).await;
    let paced = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(4));
        for i in 0..EVENTS {
            tick.tick().await;
            publisher.send_json(json!({"op":"publish","topic":"ticks","data":i})).await;
        }
        publisher
    });
    let mut killed = false;
    let result: Value = loop {
        let line = driver.next().await;
        if let Some(count) = line.strip_prefix("count ") {
            let count: u64 = count.parse().expect("a count");
            if !killed && count > EVENTS / 4 {
                n1.child.kill().expect("SIGKILL node 1");
                killed = true;
            }
        } else if let Some(json) = line.strip_prefix("result ") {
            break serde_json::from_str(json).expect("result JSON");
        }
    };
    within(WAIT, "the publisher finishes", paced).await.expect("publisher task");
    assert!(killed, "node 1 was killed mid-stream");

    let received = result["received"].as_array().expect("received");
    let data: Vec<Value> = received.iter().map(|m| m["data"].clone()).collect();
    let mut expected = vec![json!("hello")];
    expected.extend((0..EVENTS).map(|i| json!(i)));
    assert_eq!(data, expected, "every event exactly once, in order");
    assert_eq!(received[0]["id"], json!(published), "publish resolved to the event's id");
    let offsets: Vec<u64> = received
        .iter()
        .map(|m| m["id"].as_str().and_then(|id| id.split(':').nth(1)?.parse().ok()).expect("an id"))
        .collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "consecutive offsets: {offsets:?}");
    assert_eq!(result["resyncs"], json!([]), "nothing was lost beyond the history");
    // open, then connecting after the kill, then open again (on node 2), then closed.
    let seen: Vec<&str> =
        result["states"].as_array().expect("states").iter().filter_map(Value::as_str).collect();
    let reopened = seen.windows(3).any(|w| w == ["open", "connecting", "open"]);
    assert!(reopened, "states {seen:?}");
    assert_eq!(result["state"], "closed");
    assert_eq!(seen.last(), Some(&"closed"));
}

/// The dashboard at `GET /`: with an API key it needs the key (401 without); it shows
/// both nodes of the cluster from the `corecast.stats` feed (read-only, the key as its
/// token), its numbers move when a load runs, its chat pane reaches a seed client on the
/// other node, and a screenshot is saved as a test artifact
/// (`target/artifacts/dashboard.png`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_live() {
    const KEY: &str = "dashboard-test-key";
    const CHAT: &str = "hello from the dashboard";
    let redis = RedisServer::start().await;
    let keyed = |c: &mut corecast::Config| c.api_key = corecast::config::Secret(Some(KEY.into()));
    let n1 = redis_node(&redis, "d1", keyed).await;
    let n2 = redis_node(&redis, "d2", keyed).await;

    // The page needs the key; the module does not.
    assert_eq!(http_get(n1.addr, "/").await.0, 401);
    assert_eq!(http_get(n1.addr, "/?key=wrong").await.0, 401);
    let bearer = format!("GET / HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let (status, page) = parse_http(&raw_request(n1.addr, bearer.as_bytes()).await);
    assert_eq!(status, 200);
    assert!(page.contains(r#"data-metric="deliveries_per_s""#));
    assert_eq!(http_get(n1.addr, "/corecast.js").await.0, 200);

    // The feed: read-only, and the key is its subscription token.
    let mut reader = connect(n2.addr, "reader", true).await;
    reader.send_json(json!({"op":"subscribe","topic":"corecast.stats"})).await;
    assert_eq!(reader.recv_json().await["code"], "forbidden");
    reader.send_json(json!({"op":"publish","topic":"corecast.stats","data":{}})).await;
    assert_eq!(reader.recv_json().await["code"], "read_only");
    reader.send_json(json!({"op":"subscribe","topic":"corecast.stats","token":KEY})).await;
    assert_eq!(reader.recv_json().await["type"], "subscribed");
    let mut from = std::collections::BTreeSet::new();
    while from.len() < 2 {
        let figures = without_id(reader.recv_json().await);
        assert_eq!(figures["sender"], "corecast");
        from.insert(figures["data"]["node"].as_str().expect("node").to_owned());
    }
    assert_eq!(from, ["d1".to_owned(), "d2".to_owned()].into());

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut driver = Driver::start(
        "dashboard.mjs",
        &[
            ("PAGE", format!("http://{}/?key={KEY}", n1.addr)),
            ("NODES_EXPECTED", "2".into()),
            ("CHAT_TEXT", CHAT.into()),
            ("SCREENSHOT", screenshot.display().to_string()),
        ],
    );
    let idle: Value = serde_json::from_str(&driver.expect("figures").await).expect("figures");
    assert_eq!(idle["nodes"], 2);

    // A load: 20 subscribers on n2, a publisher on n1, until the page is done.
    let mut seed = connect(n2.addr, "seedwatcher", false).await;
    let mut subscribers = Vec::new();
    for i in 0..20 {
        let mut c = connect(n2.addr, &format!("load{i}"), true).await;
        subscribe(&mut c, "load").await;
        subscribers.push(c);
    }
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let n1_addr = n1.addr;
    let load = tokio::spawn(async move {
        let mut publisher = connect(n1_addr, "loader", true).await;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        let mut sent = 0u64;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    publisher.send_json(json!({"op":"publish","topic":"load","data":sent})).await;
                    sent += 1;
                }
            }
        }
        sent
    });
    // The subscribers read what they get, so that they are never slow consumers.
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                use futures_util::StreamExt;
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_secs(10), c.ws.next()).await
                {
                }
            })
        })
        .collect();
    driver.send("load");
    let moving: Value = serde_json::from_str(&driver.expect("moving").await).expect("moving");
    assert_eq!(moving["nodes"], 2, "{moving}");
    assert!(moving["connections"].as_f64().unwrap() >= 22.0, "{moving}");
    assert!(moving["deliveries_per_s"].as_f64().unwrap() > 1000.0, "{moving}");
    assert_eq!(moving["redis"], "ready", "{moving}");
    driver.expect("chat").await;
    // The chat message is a broadcast: it reached the seed client on the other node.
    let text = within(WAIT, "the chat message on the other node", async {
        loop {
            let m = seed.recv_json().await;
            if m["text"] == CHAT {
                return m;
            }
        }
    })
    .await;
    assert!(text["sender"].as_str().unwrap().starts_with("dashboard-"), "{text}");
    driver.expect("done").await;
    let _ = stop.send(());
    let sent = within(WAIT, "the load stops", load).await.expect("load task");
    assert!(sent > 0);
    for r in readers {
        r.abort();
    }
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
}

/// The real binary on a fixed loopback port, so that it can come back where its clients
/// reconnect; killed and reaped on drop.
struct NodeOnPort(std::process::Child);

impl NodeOnPort {
    async fn start(port: u16) -> NodeOnPort {
        let child = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--shards", "1"])
            .args(["--drain-period", "off"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("binary starts");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        poll_until(WAIT, "the node listens", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        NodeOnPort(child)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.0.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
    }

    /// SIGSTOP, then waits until every thread of the node has stopped: `kill` returns
    /// before the group stop completes, and a shard thread can still answer meanwhile.
    async fn freeze(&self) {
        self.signal("-STOP");
        let tasks = PathBuf::from(format!("/proc/{}/task", self.0.id()));
        poll_until(WAIT, "every thread of the node stopped", || {
            let all_stopped = std::fs::read_dir(&tasks).ok().map(|entries| {
                entries.filter_map(Result::ok).all(|task| {
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
                })
            });
            std::future::ready(all_stopped.filter(|&stopped| stopped).map(|_| ()))
        })
        .await;
    }
}

impl Drop for NodeOnPort {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The client's failure paths, on Node's WebSocket against a node that is frozen (SIGSTOP)
/// with a publish on the wire, then killed and restarted empty (a new epoch): the publish
/// on the wire is rejected with `disconnected` (never resent), a publish made while
/// disconnected is sent once after the reconnect (the client keeps retrying while the
/// connection is refused), and the lost history is a resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rejects_resends_nothing_and_reports_resync() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let node = NodeOnPort::start(port).await;
    let mut driver = Driver::start(
        "resync.mjs",
        &[("URL", format!("ws://127.0.0.1:{port}")), ("LIMIT_MS", "15000".into())],
    );
    driver.expect("ready").await;
    node.freeze().await;
    driver.send("publish");
    driver.expect("sent").await;
    node.signal("-KILL");
    drop(node);
    assert_eq!(driver.expect("rejected").await, "disconnected");
    driver.expect("queued").await;
    // Two attempts while nothing listens: the client retries after a refused connection
    // (Node's WebSocket reports a refusal with `error` alone, never `close`).
    driver.expect("attempt").await;
    driver.expect("attempt").await;
    let _restarted = NodeOnPort::start(port).await;
    assert_eq!(driver.expect("resync").await, "t");
    let done: Value = serde_json::from_str(&driver.expect("done").await).expect("done JSON");
    let data: Vec<&Value> =
        done["received"].as_array().unwrap().iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!("one"), &json!("two"), &json!("queued")], "{done}");
    let queued = &done["received"][2];
    assert_eq!(queued["id"], done["queuedId"]);
    let epoch = |m: &Value| m["id"].as_str().unwrap().split(':').next().unwrap().to_owned();
    assert_ne!(epoch(&done["received"][0]), epoch(queued), "the restarted node began a new epoch");
    assert_eq!(done["resyncs"], json!(["t"]));
    let states: Vec<&str> =
        done["states"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(states.windows(3).any(|w| w == ["open", "connecting", "open"]), "{states:?}");
}

/// The client refreshes its connection token before it expires: the token function is
/// called again 30 s before the first token's `exp`, the node answers `refreshed` with
/// the new `exp`, and the connection never drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refreshes_its_token_before_it_expires() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    const SECRET: &str = "refresh-test-secret";
    let node = TestServer::start(|c| c.jwt_secret.0 = Some(SECRET.into()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = |exp: u64| {
        let claims = json!({"sub": "refresher", "exp": exp});
        encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    // The first token is refreshed at its exp - 30 s: about 2 s from now.
    let (first, second) = (now + 32, now + 3600);
    let tokens = format!("{},{}", token(first), token(second));
    let mut driver =
        Driver::start("refresh.mjs", &[("URL", format!("ws://{}", node.addr)), ("TOKENS", tokens)]);
    let refreshed = driver.expect("refreshed").await;
    assert_eq!(
        refreshed,
        format!("{second} 2"),
        "the new exp, after two calls of the token function"
    );
    let done: Value = serde_json::from_str(&driver.expect("done").await).expect("done JSON");
    assert_eq!(done["states"], json!(["open"]), "the connection never dropped");
}

/// A connection that never opens is abandoned after `connectTimeoutMs`: the first URL is
/// a listener that accepts TCP and never answers the upgrade (a silent network); the
/// client gives up on it and opens the second, a real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_abandons_a_connection_that_never_opens() {
    let node = TestServer::start(|_| {});
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("local addr");
    // Accepts and holds every connection without a byte in answer.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let urls = format!("ws://{silent_addr},ws://{}", node.addr);
    let mut driver =
        Driver::start("silent.mjs", &[("URLS", urls), ("CONNECT_TIMEOUT_MS", "500".into())]);
    assert_eq!(driver.expect("attempt").await, silent_addr.to_string());
    assert_eq!(driver.expect("attempt").await, node.addr.to_string());
    let done: Value = serde_json::from_str(&driver.expect("done").await).expect("done JSON");
    assert_eq!(done["states"], json!(["open"]), "{done}");
    assert!(done["id"].is_string(), "{done}");
    holder.abort();
}
