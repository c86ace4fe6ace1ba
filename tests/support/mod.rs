//! Test harness: a real corecast node in-process on 127.0.0.1:0 with 2 shards, real
//! WebSocket clients (tokio-tungstenite) and raw TCP clients. Every await goes through
//! [`within`], so a hung test fails with a message instead of hanging CI.

#![allow(dead_code, unreachable_pub)]

pub mod python;
pub mod redis;

use std::{future::Future, net::SocketAddr, time::Duration};

use corecast::{Config, RunningServer, config::ShardCount};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame},
};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut` for at most `limit`, panicking with `what` on timeout.
/// Checks that a delivered message carries an event id `<epoch>:<offset>` (two decimal
/// numbers), removes it, and returns it as `(epoch, offset)`.
pub fn take_id(message: &mut Value) -> (u64, u64) {
    let id = message
        .as_object_mut()
        .and_then(|m| m.remove("id"))
        .unwrap_or_else(|| panic!("no event id in {message}"));
    let text = id.as_str().unwrap_or_else(|| panic!("id {id} is not a string"));
    let (epoch, offset) =
        text.split_once(':').unwrap_or_else(|| panic!("id {text} is not <epoch>:<offset>"));
    let number =
        |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("id {text} is not <epoch>:<offset>"));
    (number(epoch), number(offset))
}

/// The message without its event id (checked by [`take_id`]).
pub fn without_id(mut message: Value) -> Value {
    take_id(&mut message);
    message
}

/// A payload corecast published, as Redis (and the Python nodes' clients) carry it: checks
/// that its last member is the publish stamp `"ts"` (microseconds since the Unix epoch,
/// within the last minute) and removes it.
pub fn without_stamp(mut payload: Value) -> Value {
    let stamp = payload.as_object_mut().and_then(|o| o.remove("ts"));
    let micros = stamp.as_ref().and_then(Value::as_u64).expect("a \"ts\" stamp");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let age = (now.as_micros() as u64).abs_diff(micros);
    assert!(age < 60_000_000, "stamp {micros} is {age} µs from now");
    payload
}

pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// A node running in this process; shut down and joined on drop.
pub struct TestServer {
    server: Option<RunningServer>,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts a node with test defaults (port 0, 2 shards, no seed app pings), adjusted by `tweak`.
    pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = Config::default();
        cfg.listen.0 = "127.0.0.1:0".parse().unwrap();
        cfg.shards = ShardCount::Exactly(2);
        cfg.app_ping_interval.0 = Duration::ZERO;
        // Stopping a test node closes its clients at once (tests of the paced drain run
        // the binary).
        cfg.drain_period.0 = Duration::ZERO;
        tweak(&mut cfg);
        let server = corecast::start(cfg).expect("server starts");
        let addr = server.local_addr();
        TestServer { server: Some(server), addr }
    }

    /// The API-only listener's address (`api_listen`).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(|s| s.api_addr())
    }

    /// `/healthz` as JSON.
    pub async fn health(&self) -> Value {
        health_of(self.addr).await
    }

    /// Waits until `pred(healthz)` holds, polling the endpoint (bounded by [`WAIT`]).
    pub async fn wait_health(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for_health(self.addr, what, pred).await
    }

    /// Stops the node (close 1001 to clients) and waits, at most [`WAIT`], for its
    /// threads to exit.
    ///
    /// # Errors
    /// A shard or the bus panicked, or the node did not stop in time.
    pub fn try_stop(&mut self) -> Result<(), String> {
        let Some(server) = self.server.take() else { return Ok(()) };
        server.shutdown();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(server.join().map_err(|e| e.to_string()));
        });
        match rx.recv_timeout(WAIT) {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the node did not stop within {WAIT:?}; this process's threads: {}",
                threads_of_this_process()
            )),
        }
    }

    /// [`try_stop`](Self::try_stop), panicking on failure.
    pub fn stop(&mut self) {
        if let Err(e) = self.try_stop() {
            panic!("{e}");
        }
    }
}

/// Every thread of this process as `name(state wchan)`, to see which one a stop waits on.
fn threads_of_this_process() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return "unknown".into() };
    let read = |task: &std::path::Path, file| {
        std::fs::read_to_string(task.join(file)).unwrap_or_default().trim().to_owned()
    };
    let mut threads: Vec<String> = tasks
        .filter_map(Result::ok)
        .map(|task| {
            let path = task.path();
            let stat = read(&path, "stat");
            let state = stat.rsplit_once(") ").map_or("?", |(_, rest)| &rest[..1]).to_owned();
            format!("{}({state} {})", read(&path, "comm"), read(&path, "wchan"))
        })
        .collect();
    threads.sort();
    threads.join(", ")
}

impl Drop for TestServer {
    /// Stops the node. While a failing test unwinds, a second panic would abort the
    /// process and hide the first failure: the stop error is printed instead.
    fn drop(&mut self) {
        match self.try_stop() {
            Ok(()) => {}
            Err(e) if std::thread::panicking() => eprintln!("while unwinding: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The shard that accepted this connection (from `X-Corecast-Shard`).
    pub shard: u16,
    pub user: String,
}

/// The upgrade request of `user`; `v1` offers the `corecast.v1` subprotocol.
fn ws_request(
    addr: SocketAddr,
    user: &str,
    v1: bool,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/ws/{user}").into_client_request().unwrap();
    if v1 {
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("corecast.v1"));
    }
    req
}

/// The client of an accepted upgrade (checks the subprotocol when `v1`).
fn client_of(
    (ws, resp): (
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    user: &str,
    v1: bool,
) -> Client {
    if v1 {
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "corecast.v1");
    }
    let shard = resp.headers().get("x-corecast-shard").unwrap().to_str().unwrap().parse().unwrap();
    Client { ws, shard, user: user.to_owned() }
}

/// Connects as `user`; `v1` offers the `corecast.v1` subprotocol.
pub async fn connect(addr: SocketAddr, user: &str, v1: bool) -> Client {
    let req = ws_request(addr, user, v1);
    let accepted = within(WAIT, "connect", tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade succeeds");
    client_of(accepted, user, v1)
}

/// Connects as `user` as soon as the node takes clients: a node answers upgrades `503`
/// with `Retry-After` until it can reach the other nodes (its bridge was first ready),
/// and this retries every 10 ms, bounded by [`WAIT`]. Returns the client and how many
/// times it was refused.
pub async fn connect_when_taken(addr: SocketAddr, user: &str, v1: bool) -> (Client, u32) {
    use tokio_tungstenite::tungstenite::Error;
    let mut refused = 0;
    let client = within(WAIT, "a node that takes clients", async {
        loop {
            match tokio_tungstenite::connect_async(ws_request(addr, user, v1)).await {
                Ok(accepted) => break client_of(accepted, user, v1),
                Err(Error::Http(resp)) if resp.status() == 503 => {
                    assert_eq!(resp.headers()["retry-after"], "1", "a 503 says when to retry");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("upgrade of {user} failed: {e}"),
            }
        }
    })
    .await;
    (client, refused)
}

impl Client {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        within(WAIT, "send", self.ws.send(Message::text(text.into()))).await.expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Next text message as JSON, skipping control frames.
    pub async fn recv_json(&mut self) -> Value {
        let user = self.user.clone();
        within(WAIT, &format!("message for {user}"), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return serde_json::from_str(&t).expect("server sends JSON");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("{user}: expected a text message, got {other:?}"),
                }
            }
        })
        .await
    }

    /// Reads until the server's Close frame; returns it.
    pub async fn recv_close(&mut self) -> Option<CloseFrame> {
        within(WAIT, "close frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
    }
}

/// `/healthz` of the node at `addr`, as JSON.
pub async fn health_of(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("healthz is JSON")
}

/// Checks `check` every 20 ms until it returns `Some`, for at most `limit` (then panics
/// with `what`). For conditions no message announces (a counter, a Redis subscription
/// count, a port that starts listening): the interval is not synchronisation, the
/// condition is what the test waits for.
pub async fn poll_until<T, Fut: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    within(limit, what, async {
        loop {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Polls `/healthz` of the node at `addr` until `pred` holds (bounded by [`WAIT`]).
pub async fn wait_for_health(addr: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll_until(WAIT, what, || async {
        let h = health_of(addr).await;
        pred(&h).then_some(h)
    })
    .await
}

/// A plain HTTP GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw =
        raw_request(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await;
    parse_http(&raw)
}

/// Sends `request` on a fresh TCP connection and returns everything until EOF.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    within(WAIT, "raw HTTP exchange", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// The status of an upgrade of `/ws/{user}` (the response head only: a 101 leaves the
/// connection open, and it is closed when this returns).
pub async fn upgrade_status(addr: SocketAddr, user: &str) -> u16 {
    within(WAIT, "upgrade status", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_request(user).as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        parse_http(&String::from_utf8_lossy(&head)).0
    })
    .await
}

/// `GET /healthz` from the source address `from` (another 127.0.0.x: not counted against
/// the per-IP handshake cap of the clients under test).
pub async fn health_from(addr: SocketAddr, from: std::net::IpAddr) -> Value {
    let raw = within(WAIT, "healthz from another source address", async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await;
    let (status, body) = parse_http(&raw);
    assert_eq!(status, 200, "{raw}");
    serde_json::from_str(&body).expect("healthz JSON")
}

/// (status, body) of an HTTP response.
pub fn parse_http(raw: &str) -> (u16, String) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A valid upgrade request for `/ws/{user}`.
pub fn upgrade_request(user: &str) -> String {
    format!(
        "GET /ws/{user} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client frame.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    corecast::testing::encode_masked(&mut out, opcode, fin, payload, [0x5a, 0x13, 0xc7, 0x01]);
    out
}

/// A client speaking WebSocket by hand over a raw socket (to misbehave on purpose).
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A server frame as the raw client sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawClient {
    /// Connects and upgrades as `user`, with an optional receive buffer size.
    pub async fn upgrade(addr: SocketAddr, user: &str, recv_buffer: Option<u32>) -> RawClient {
        RawClient::upgrade_sending(addr, user, recv_buffer, b"").await
    }

    /// Like [`upgrade`](Self::upgrade), with `first_bytes` (frames) in the same TCP write
    /// as the request.
    pub async fn upgrade_sending(
        addr: SocketAddr,
        user: &str,
        recv_buffer: Option<u32>,
        first_bytes: &[u8],
    ) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = within(WAIT, "tcp connect", socket.connect(addr)).await.unwrap();
        let mut request = upgrade_request(user).into_bytes();
        request.extend_from_slice(first_bytes);
        stream.write_all(&request).await.unwrap();
        let mut client = RawClient { stream, buf: Vec::new() };
        within(WAIT, "101 response", async {
            loop {
                if let Some(end) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&client.buf[..end]).into_owned();
                    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                    client.buf.drain(..end + 4);
                    return;
                }
                client.fill().await.expect("response before EOF");
            }
        })
        .await;
        client
    }

    async fn fill(&mut self) -> Option<usize> {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(n)
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        within(WAIT, "raw send", self.stream.write_all(bytes)).await.expect("raw send");
    }

    /// Next frame, or `None` at EOF.
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        within(WAIT, "raw frame", async {
            loop {
                if let Some((frame, used)) = parse_server_frame(&self.buf) {
                    self.buf.drain(..used);
                    return Some(frame);
                }
                self.fill().await?;
            }
        })
        .await
    }

    /// Reads frames until a Close frame; returns its code. Panics at EOF without one.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_frame().await {
                Some(f) if f.opcode == 0x8 => {
                    return f.close_code().expect("close frame has a code");
                }
                Some(_) => continue,
                None => panic!("EOF without a close frame"),
            }
        }
    }

    /// Waits for EOF after everything else.
    pub async fn expect_eof(&mut self) {
        while self.next_frame().await.is_some() {}
    }
}

fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() >= 2 {
        assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    }
    let (opcode, payload, used) = corecast::testing::decode_unmasked(buf)?;
    Some((ServerFrame { opcode, payload: buf[payload].to_vec() }, used))
}

/// The address in the binary's first stdout line, `corecast listening on
/// ws://ADDR/ws/{user_id}`.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.trim()
        .strip_prefix("corecast listening on ws://")
        .and_then(|rest| rest.strip_suffix("/ws/{user_id}"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
}

/// The real binary on 127.0.0.1:0 with `args` and `envs` and `RUST_LOG=debug`, its
/// stderr (the logs) captured whole, for checks of what the logs never show.
pub struct LoggedNode {
    child: std::process::Child,
    logs: std::thread::JoinHandle<String>,
    pub addr: SocketAddr,
}

impl LoggedNode {
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> LoggedNode {
        use std::{
            io::{BufRead, BufReader, Read},
            process::{Command, Stdio},
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--drain-period", "off"])
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let logs = std::thread::spawn(move || {
            let mut logs = String::new();
            let _ = stderr.read_to_string(&mut logs);
            logs
        });
        let read_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = within(WAIT, "listening line", read_line).await.unwrap().unwrap_or_default();
        LoggedNode { child, logs, addr: listening_addr(&line) }
    }

    /// SIGTERM; the node must exit 0. Returns everything it logged.
    pub async fn stop(self) -> String {
        let LoggedNode { mut child, logs, .. } = self;
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status =
            within(WAIT, "exit", async { tokio::task::spawn_blocking(move || child.wait()).await })
                .await
                .unwrap()
                .unwrap();
        assert!(status.success(), "{status:?}");
        logs.join().unwrap()
    }
}

/// Subscribes a v1 client to `topic`; returns after `subscribed`.
pub async fn subscribe(client: &mut Client, topic: &str) {
    client.send_json(serde_json::json!({"op":"subscribe","topic":topic})).await;
    assert_eq!(client.recv_json().await, serde_json::json!({"type":"subscribed","topic":topic}));
}

/// The real `corecast` binary as a child process on 127.0.0.1:0: its memory is its own
/// (not shared with the other tests of this process). Killed and reaped on drop.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts the binary with `args` (after `--listen 127.0.0.1:0`) and waits for its
    /// "listening" line.
    pub async fn start(args: &[&str]) -> ChildServer {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let read_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = within(WAIT, "listening line", read_line).await.unwrap().unwrap_or_default();
        ChildServer { child, addr: listening_addr(&line) }
    }

    /// The process's resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line");
        kib * 1024
    }

    /// Waits until `pred(healthz)` holds (bounded by [`WAIT`]).
    pub async fn wait_health(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for_health(self.addr, what, pred).await
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    corecast::testing::process_rss_bytes().expect("statm readable")
}
