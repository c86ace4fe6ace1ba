//! A real `redis-server` per test, on a free loopback port, started and stopped by its
//! pid (never the machine's shared instance). Talked to with fred, a real Redis client.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fred::{
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    prelude::{Builder, Client},
    types::{Value, config::Config as RedisConfig},
};

use super::{WAIT, poll_until, within};

/// A `redis-server` child process. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments.
    args: Vec<String>,
    /// Serves TLS only, on `port`, with these files.
    tls: Option<TlsFiles>,
    /// Runs inside this network namespace (reached through a veth pair).
    netns: Option<Netns>,
}

/// A network namespace the harness creates, joined to this one by a veth pair
/// (`10.231.N.1` here, `10.231.N.2` inside), so a link can be cut like a network
/// partition. Deleted (with the pair) on drop.
pub struct Netns {
    name: String,
    /// The veth end in this namespace.
    host_if: String,
    /// The address inside the namespace.
    inner: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Creates the namespace and the pair; the reason when this machine does not allow it
    /// (not root, no `ip`).
    pub fn create() -> Result<Netns, String> {
        let n = std::process::id() % 250 + 1;
        let name = format!("cc-test-{}", std::process::id());
        let (host_if, peer_if) = (format!("cch{n}"), format!("ccp{n}"));
        ip(&["netns", "add", &name])?;
        let netns = Netns { name, host_if, inner: format!("10.231.{n}.2") };
        let ns = netns.name.as_str();
        ip(&["link", "add", &netns.host_if, "type", "veth", "peer", "name", &peer_if])?;
        ip(&["link", "set", &peer_if, "netns", ns])?;
        ip(&["addr", "add", &format!("10.231.{n}.1/30"), "dev", &netns.host_if])?;
        ip(&["link", "set", &netns.host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            ns,
            "ip",
            "addr",
            "add",
            &format!("{}/30", netns.inner),
            "dev",
            &peer_if,
        ])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", &peer_if, "up"])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it (made with the
/// `openssl` command).
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// Creates them in `dir`.
    pub fn create(dir: &std::path::Path) -> TlsFiles {
        std::fs::create_dir_all(dir).expect("tls dir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir).output();
            let out = out.expect("the openssl command is needed for the TLS test");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext file");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=corecast test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a fresh server on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// [`start`](Self::start) with extra `redis-server` arguments (e.g. `--requirepass`).
    pub async fn start_with(args: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "corecast-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut server =
            RedisServer { child: None, port: free_port(), dir, args, tls: None, netns: None };
        server.spawn().await;
        server
    }

    /// A server that speaks only TLS (`rediss://`) with `files`.
    pub async fn start_tls(files: &TlsFiles) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "corecast-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let tls = Some(files.clone());
        let mut server =
            RedisServer { child: None, port: free_port(), dir, args: Vec::new(), tls, netns: None };
        server.spawn().await;
        server
    }

    /// A server inside a network namespace of its own (see [`Netns`]), for partitions;
    /// the reason when this machine cannot make one.
    pub async fn start_in_netns() -> Result<RedisServer, String> {
        let netns = Netns::create()?;
        let dir = std::env::temp_dir().join(format!(
            "corecast-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            // Reached from outside its namespace (through the private veth pair only),
            // which protected mode refuses without a password.
            args: vec!["--protected-mode".into(), "no".into()],
            tls: None,
            netns: Some(netns),
        };
        server.spawn().await;
        Ok(server)
    }

    /// The address the server listens on.
    fn host(&self) -> &str {
        self.netns.as_ref().map_or("127.0.0.1", |n| n.inner.as_str())
    }

    /// Cuts the link to the namespace: packets are dropped, no connection is reset.
    pub fn partition(&self) {
        let netns = self.netns.as_ref().expect("a server in a namespace");
        ip(&["link", "set", &netns.host_if, "down"]).expect("link down");
    }

    /// Restores the link.
    pub fn heal(&self) {
        let netns = self.netns.as_ref().expect("a server in a namespace");
        ip(&["link", "set", &netns.host_if, "up"]).expect("link up");
    }

    async fn spawn(&mut self) {
        let mut command = match &self.netns {
            None => Command::new("redis-server"),
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &netns.name, "redis-server"]);
                c
            }
        };
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(files) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &self.port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca),
        };
        let child = command
            .args(["--bind", self.host()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: these tests start their own Redis \
                 (apt-get install -y redis-server)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let port = self.port;
        let tls = self.tls.is_some();
        let host = self.host().to_owned();
        poll_until(WAIT, "redis-server answers PING", || async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await.ok()?;
            if tls {
                return Some(()); // listening; the nodes' TLS handshake is the real check
            }
            let mut buf = [0u8; 16];
            s.write_all(b"PING\r\n").await.ok()?;
            let n = s.read(&mut buf).await.ok()?;
            (buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")).then_some(())
        })
        .await;
    }

    /// `redis://127.0.0.1:<port>/0` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{}:{}/0", self.host(), self.port)
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("redis-server running")
    }

    /// kill -9, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was saved).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn freeze(&self) {
        let rc = signal(self.pid(), libc::SIGSTOP);
        assert_eq!(rc, 0, "SIGSTOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        let rc = signal(self.pid(), libc::SIGCONT);
        assert_eq!(rc, 0, "SIGCONT");
    }

    /// A connected fred client.
    pub async fn client(&self) -> Client {
        let config = RedisConfig::from_url(&self.url()).expect("url");
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
            .build()
            .expect("client");
        within(WAIT, "redis client connects", client.init()).await.expect("connected");
        client
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub async fn numsub(&self, channel: &str) -> i64 {
        let client = self.client().await;
        let reply: Vec<Value> =
            within(WAIT, "PUBSUB NUMSUB", client.pubsub_numsub(channel)).await.expect("numsub");
        let _ = client.quit().await;
        reply.get(1).and_then(Value::as_i64).expect("NUMSUB count")
    }

    /// Waits until `PUBSUB NUMSUB channel` is `n` (interest changes without a reply to
    /// wait for, such as a user's channel after a connect or a close).
    pub async fn wait_numsub(&self, channel: &str, n: i64) {
        poll_until(WAIT, &format!("NUMSUB {channel} == {n}"), || async {
            (self.numsub(channel).await == n).then_some(())
        })
        .await;
    }

    /// `calls` of one command in `INFO commandstats`.
    pub async fn command_calls(&self, command: &str) -> u64 {
        let client = self.client().await;
        let info: String =
            within(WAIT, "INFO", client.info(Some(fred::types::InfoKind::CommandStats)))
                .await
                .expect("info");
        let _ = client.quit().await;
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// PUBLISH `payload` on `channel` (bytes as given).
    pub async fn publish(&self, channel: &str, payload: impl Into<fred::types::Value> + Send) {
        let client = self.client().await;
        let _: i64 = within(WAIT, "PUBLISH", client.publish(channel, payload.into()))
            .await
            .expect("publish");
        let _ = client.quit().await;
    }

    /// `CLIENT KILL TYPE pubsub`: drops every subscriber connection (what a proxy or
    /// Redis's output-buffer limit does); returns how many were killed.
    pub async fn kill_subscribers(&self) -> i64 {
        let client = self.client().await;
        let command = fred::types::CustomCommand::new_static(
            "CLIENT",
            fred::types::ClusterHash::Random,
            false,
        );
        let killed: i64 =
            within(WAIT, "CLIENT KILL", client.custom(command, vec!["KILL", "TYPE", "pubsub"]))
                .await
                .expect("CLIENT KILL");
        let _ = client.quit().await;
        killed
    }

    /// `DEBUG SLEEP secs` (the server must run with `--enable-debug-command yes`): Redis
    /// stops answering for that long. Returns when the sleep is over.
    pub async fn debug_sleep(&self, secs: u32) {
        let client = self.client().await;
        let command = fred::types::CustomCommand::new_static(
            "DEBUG",
            fred::types::ClusterHash::Random,
            false,
        );
        let limit = Duration::from_secs(u64::from(secs) + 10);
        let slept: Result<Value, _> = within(
            limit,
            "DEBUG SLEEP",
            client.custom(command, vec!["SLEEP".to_owned(), secs.to_string()]),
        )
        .await;
        slept.expect("DEBUG SLEEP");
        let _ = client.quit().await;
    }

    /// Runs one command (`args[0]` is its name) on a fresh connection; its answer.
    pub async fn command(&self, args: &[&str]) -> Value {
        let client = self.client().await;
        let (name, rest) = args.split_first().expect("a command name");
        let command = fred::types::CustomCommand::new(
            name.to_string(),
            fred::types::ClusterHash::Random,
            false,
        );
        let rest: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
        let answer: Value = within(WAIT, name, client.custom(command, rest))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
        let _ = client.quit().await;
        answer
    }

    /// A replica of `primary` (`--replicaof`), in sync: its link is up.
    pub async fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
        poll_until(WAIT, "the replica's link is up", || async {
            let info = replica.command(&["INFO", "replication"]).await;
            let text = info.as_str().map(|s| s.to_string()).unwrap_or_default();
            text.contains("master_link_status:up").then_some(())
        })
        .await;
        replica
    }

    /// Moves this server to `old`'s port once `old` is gone (killed): what a failover
    /// looks like to clients that keep one address (a virtual IP, a DNS name, a proxy).
    /// `CONFIG SET port` rebinds the listener; the connections the server has stay open.
    pub async fn take_port_of(&mut self, mut old: RedisServer) {
        let port = old.port;
        old.kill();
        drop(old);
        let answer = self.command(&["CONFIG", "SET", "port", &port.to_string()]).await;
        assert_eq!(answer.as_str().as_deref(), Some("OK"), "CONFIG SET port");
        self.port = port;
    }

    /// A client subscribed to `channel`, with its message receiver.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> (Client, tokio::sync::broadcast::Receiver<fred::types::Message>) {
        let client = self.client().await;
        let rx = client.message_rx();
        within(WAIT, "SUBSCRIBE", client.subscribe(channel)).await.expect("subscribe");
        (client, rx)
    }
}

/// Sends `signal` to `pid` with the `kill` command (tests stay free of `unsafe`).
fn signal(pid: i32, signal: i32) -> i32 {
    let name = match signal {
        libc::SIGSTOP => "-STOP",
        libc::SIGCONT => "-CONT",
        _ => "-KILL",
    };
    let status = Command::new("kill").args([name, &pid.to_string()]).status().expect("kill runs");
    if status.success() { 0 } else { 1 }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server must be thawed to die promptly on some kernels.
            let _ = signal(child.id() as i32, libc::SIGCONT);
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real binary as a node on `redis` named `name`, with `args` added, ready (its
/// heartbeat came back through Redis): for tests that kill a node with a signal.
pub async fn redis_child_node(
    redis: &RedisServer,
    name: &str,
    args: &[&str],
) -> super::ChildServer {
    let url = redis.url();
    let mut all = vec!["--redis", url.as_str(), "--node-id", name];
    all.extend_from_slice(args);
    let node = super::ChildServer::start(&all).await;
    node.wait_health("bridge ready", |h| h["bridge"]["ready"] == true).await;
    node
}

/// A node on `redis` named `name`, ready (its heartbeat came back through Redis), with
/// `tweak` applied.
pub async fn redis_node(
    redis: &RedisServer,
    name: &str,
    tweak: impl FnOnce(&mut corecast::Config),
) -> super::TestServer {
    let url = redis.url();
    let server = super::TestServer::start(|c| {
        c.redis = corecast::config::RedisUrl(Some(url));
        c.node_id = corecast::config::Name(name.into());
        tweak(c);
    });
    server.wait_health("bridge ready", |h| h["bridge"]["ready"] == true).await;
    server
}
