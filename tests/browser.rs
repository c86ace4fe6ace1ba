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
    redis::{RedisServer, redis_node},
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
            .arg(dir.join("test").join(script))
            .current_dir(&dir)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
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
    let url = redis.url();
    let mut n1 = ChildServer::start(&[
        "--redis",
        &url,
        "--node-id",
        "b1",
        "--shards",
        "1",
        "--history-size",
        "1000",
    ])
    .await;
    n1.wait_health("bridge ready", |h| h["bridge"]["ready"] == true).await;
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
