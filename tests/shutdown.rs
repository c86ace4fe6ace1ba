use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

/// The real binary's paced drain: on SIGTERM `/readyz` answers 503 within 0.5 s, every
/// client gets Close 1012, spread over `--drain-period` (not all at once), and the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gradually_with_1012_and_exits_0() {
    let period = Duration::from_secs(2);
    let mut server =
        ChildServer::start(&["--shards", "2", "--drain-timeout", "5s", "--drain-period", "2s"])
            .await;
    let addr = server.addr;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(connect(addr, &format!("c{i}"), i % 2 == 0).await);
    }
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let signalled = Instant::now();
    let status =
        Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    poll_until(WAIT, "/readyz 503", || async {
        (http_get(addr, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    let not_ready = signalled.elapsed();
    assert!(not_ready <= Duration::from_millis(500), "/readyz went 503 after {not_ready:?}");
    assert_eq!(
        http_get(addr, "/livez").await,
        (200, r#"{"live":true}"#.to_owned()),
        "alive while draining"
    );
    // Each client notes when its Close arrived.
    let tasks: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            tokio::spawn(async move {
                let frame = c.recv_close().await.expect("close frame with a code");
                assert_eq!(u16::from(frame.code), 1012, "{}", c.user);
                signalled.elapsed()
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for task in tasks {
        closed_at.push(task.await.unwrap());
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    assert!(
        last - first >= period / 2,
        "closes arrived from {first:?} to {last:?}: not spread over {period:?}"
    );
    assert!(
        last <= period + Duration::from_secs(1),
        "the last close came {last:?} after the signal"
    );
    eprintln!(
        "MEASURE drain_not_ready_ms={} first_close_ms={} last_close_ms={}",
        not_ready.as_millis(),
        first.as_millis(),
        last.as_millis()
    );
    drop(clients);
    let exit = wait_exit(&mut server).await;
    assert_eq!(exit, Some(0), "clean exit");
}

/// A second SIGTERM during a long drain closes the remaining clients at once (1012) and
/// the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_closes_the_rest_at_once() {
    let mut server = ChildServer::start(&["--shards", "1", "--drain-period", "60s"]).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(connect(server.addr, &format!("c{i}"), true).await);
    }
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // The first Close goes at once (one tenth of the clients is due at the start).
    let first = clients[0].recv_close().await.expect("the first close");
    assert_eq!(u16::from(first.code), 1012);
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for c in &mut clients[1..] {
        let frame = c.recv_close().await.expect("close frame");
        assert_eq!(u16::from(frame.code), 1012, "{}", c.user);
    }
    drop(clients);
    assert_eq!(wait_exit(&mut server).await, Some(0), "clean exit");
}

/// Waits (bounded) for the child to exit; its exit code.
async fn wait_exit(server: &mut ChildServer) -> Option<i32> {
    let mut process = std::mem::replace(&mut server.child, Command::new("true").spawn().unwrap());
    within(WAIT, "process exits", tokio::task::spawn_blocking(move || process.wait()))
        .await
        .unwrap()
        .unwrap()
        .code()
}

/// Configuration precedence through the real binary, with real environment variables:
/// defaults < file < environment < flags (`--check-config` prints the effective config).
#[test]
fn precedence_is_default_file_env_flag() {
    let dir = std::env::temp_dir().join(format!("corecast-precedence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "backlog = 100\nping_interval = \"3s\"\nmax_message_size = 1000\n")
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--check-config", "--backlog", "7"])
        .env("CORECAST_CONFIG", &file)
        .env("CORECAST_BACKLOG", "50")
        .env("CORECAST_PING_INTERVAL", "4s")
        .env_remove("CORECAST_MAX_MESSAGE_SIZE")
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let effective: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("TOML");
    assert_eq!(effective["backlog"].as_integer(), Some(7), "flag beats environment");
    assert_eq!(effective["ping_interval"].as_str(), Some("4s"), "environment beats file");
    assert_eq!(
        effective["max_message_size"].to_string().trim_matches('"'),
        "1000",
        "file beats default"
    );
    assert_eq!(effective["pong_timeout"].as_str(), Some("10s"), "default");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs go to stderr, without ANSI colour codes when stderr is not a terminal (a file, a
/// pipe, a journal); stdout carries only the "listening" line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_stderr_without_colour_codes_when_not_a_terminal() {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let pid = child.id().to_string();
    let run = tokio::task::spawn_blocking(move || {
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        // Up and logging: stop it, then collect everything it wrote to stderr.
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let mut logs = String::new();
        stderr.read_to_string(&mut logs).unwrap();
        let status = child.wait().unwrap();
        (first, logs, status)
    });
    let (first, logs, status) = within(WAIT, "start, SIGTERM, exit", run).await.unwrap();
    assert!(first.starts_with("corecast listening on ws://"), "{first:?}");
    assert!(status.success(), "{status:?}");
    assert!(logs.contains("corecast listening"), "info logs on stderr: {logs:?}");
    assert!(!logs.contains('\u{1b}'), "no ANSI escape codes: {logs:?}");
}
