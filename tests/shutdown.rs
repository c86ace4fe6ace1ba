use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use crate::support::*;

/// Kills the child on drop if the test did not reap it.
struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary: on SIGTERM every client gets Close 1001 and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--drain-timeout", "5s"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = within(
        WAIT,
        "listening line",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        }),
    )
    .await
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("corecast listening on ws://")
        .and_then(|rest| rest.strip_suffix("/ws/{user_id}"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(connect(addr, &format!("c{i}"), i % 2 == 0).await);
    }
    let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    for c in &mut clients {
        let frame = c.recv_close().await.expect("close frame with a code");
        assert_eq!(u16::from(frame.code), 1001, "{}", c.user);
    }
    drop(clients);
    let mut process = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap());
    let exit = within(WAIT, "process exits", tokio::task::spawn_blocking(move || process.wait()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "clean exit");
}
