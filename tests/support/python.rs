//! A node of the Python/FastAPI design corecast replaces (`tests/python/fastapi_node.py`),
//! run by uvicorn from a virtualenv the harness creates once under the target directory
//! (`fastapi uvicorn redis websockets` from PyPI). Killed on drop.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use super::{Client, WAIT, poll_until, redis::RedisServer, within};

/// Packages the FastAPI node needs.
const PACKAGES: [&str; 4] = ["fastapi", "uvicorn", "redis", "websockets"];

static VENV: OnceLock<PathBuf> = OnceLock::new();

/// The virtualenv's directory, created (and its packages installed) on first use.
fn venv() -> PathBuf {
    VENV.get_or_init(create_venv).clone()
}

fn create_venv() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-venv");
    let python = dir.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import fastapi, uvicorn, redis, websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let made = Command::new("python3").args(["-m", "venv"]).arg(&dir).status();
        match made {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("python3 -m venv failed ({s}): install python3-venv"),
            Err(e) => panic!("python3 is needed for the mixed-fleet test: {e}"),
        }
        let pip = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES)
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install {PACKAGES:?} failed");
        assert!(ready(), "the virtualenv cannot import {PACKAGES:?}");
    }
    dir
}

/// A FastAPI node on a free port, subscribed to `ws_broadcast`.
pub struct PythonNode {
    child: Child,
    pub addr: SocketAddr,
}

impl PythonNode {
    /// Starts the node on `redis` and waits until its listener is subscribed.
    pub async fn start(redis: &RedisServer) -> PythonNode {
        let dir = within(Duration::from_secs(300), "python virtualenv", async {
            tokio::task::spawn_blocking(venv).await.expect("venv task")
        })
        .await;
        let before = redis.numsub("ws_broadcast").await;
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let app_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
        let child = Command::new(dir.join("bin/python"))
            .args(["-m", "uvicorn", "fastapi_node:app", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--app-dir", app_dir, "--log-level", "warning"])
            .env("REDIS_URL", redis.url())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("uvicorn starts");
        let node = PythonNode { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        redis.wait_numsub("ws_broadcast", before + 1).await;
        let addr = node.addr;
        poll_until(WAIT, "uvicorn listens", || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(drop)
        })
        .await;
        node
    }

    /// A WebSocket client of this node as `user`.
    pub async fn connect(&self, user: &str) -> Client {
        let url = format!("ws://{}/ws/{user}", self.addr);
        let (ws, _) =
            within(WAIT, "connect to the FastAPI node", tokio_tungstenite::connect_async(url))
                .await
                .expect("upgrade");
        Client { ws, shard: 0, user: user.to_owned() }
    }
}

impl Drop for PythonNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
