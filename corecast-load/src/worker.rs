//! The other processes of a multi-process run (each process is capped by the open-files
//! limit), and the line protocol between them and the parent: one JSON object per line
//! over the workers' stdin and stdout. A line that does not parse is an error that quotes
//! it, never a silent zero in a published figure.
//!
//! Runs on: the parent's main thread (plus one reader thread per worker's stdout), and
//! the main thread of each worker process.

use std::{io::Write, sync::mpsc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Args, client::Load, procfs::proc_cpu_ticks};

/// A line from a worker to the parent (one JSON object per line).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum WorkerLine {
    /// Connected: how many sockets opened and failed.
    Ready { connected: usize, failed: usize },
    /// Drained after `STOP`: what it counted.
    Result(WorkerResult),
}

/// What a worker process reports at the end.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerResult {
    /// utime + stime of the worker when it finished, in clock ticks.
    pub(crate) cpu_ticks: u64,
    pub(crate) received: u64,
    pub(crate) closed_early: usize,
    /// (latency µs, count) pairs of its histogram.
    pub(crate) latencies: Vec<(u64, u64)>,
}

/// A line from the parent to a worker.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ParentLine {
    /// Publishing is over: `sent` messages went out; drain and report.
    Stop { sent: u64 },
}

/// Parses one protocol line; a malformed line is an error that quotes it.
pub(crate) fn parse_line<T: serde::de::DeserializeOwned>(line: &str) -> anyhow::Result<T> {
    serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        anyhow::anyhow!("malformed worker protocol line {shown:?}: {e}")
    })
}

/// One protocol line (JSON, newline-terminated).
pub(crate) fn to_line<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    Ok(line)
}

/// How long the parent waits for a worker's line before giving up.
const WORKER_TIMEOUT: Duration = Duration::from_secs(300);

/// The other processes of a multi-process run, seen from the parent. Protocol, one JSON
/// line at a time: the worker prints [`WorkerLine::Ready`]; the parent sends
/// [`ParentLine::Stop`]; the worker drains and prints [`WorkerLine::Result`].
pub(crate) struct Workers {
    children: Vec<std::process::Child>,
    stdins: Vec<std::process::ChildStdin>,
    /// Lines the workers print, read by one thread per worker.
    lines: mpsc::Receiver<String>,
    /// The workers' CPU ticks when publishing started.
    pub(crate) ticks_at_start: Vec<u64>,
    /// Every worker sent its `RESULT` (and is about to exit).
    finished: bool,
}

impl Workers {
    pub(crate) fn spawn(args: &Args, count: usize, share: usize) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe()?;
        let (tx, lines) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let addrs = args.addr.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        for k in 1..count {
            let mut command = std::process::Command::new(&exe);
            command
                .args(["--addr", &addrs, "--connections", &share.to_string()])
                .args(["--publishers", "0", "--sources", &args.sources.to_string()])
                .args([
                    "--worker-index",
                    &k.to_string(),
                    "--max-drain",
                    &args.max_drain.to_string(),
                ])
                .args(["--connect-concurrency", &args.connect_concurrency.to_string()]);
            if let Some(cpu) = args.cpu {
                command.args(["--cpu", &cpu.to_string()]);
            }
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            stdins.push(child.stdin.take().ok_or_else(|| anyhow::anyhow!("worker stdin"))?);
            let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("worker stdout"))?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
                for line in lines.map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            children.push(child);
        }
        Ok(Workers { children, stdins, lines, ticks_at_start: Vec::new(), finished: false })
    }

    /// Records the workers' CPU time at the start of the measured phase.
    pub(crate) fn mark_cpu(&mut self) {
        self.ticks_at_start =
            self.children.iter().map(|c| proc_cpu_ticks(c.id()).unwrap_or(0)).collect();
    }

    fn next_line(&self) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(WORKER_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("a worker exited early or stalled: {e}"))
    }

    pub(crate) fn wait_ready(&mut self) -> anyhow::Result<(usize, usize)> {
        let (mut connected, mut failed) = (0, 0);
        for _ in 0..self.children.len() {
            match parse_line(&self.next_line()?)? {
                WorkerLine::Ready { connected: c, failed: f } => {
                    connected += c;
                    failed += f;
                }
                other => anyhow::bail!("a worker sent {other:?} before it was ready"),
            }
        }
        Ok((connected, failed))
    }

    pub(crate) fn stop(&mut self, sent: u64) -> anyhow::Result<Vec<WorkerResult>> {
        let stop = to_line(&ParentLine::Stop { sent })?;
        for stdin in &mut self.stdins {
            stdin.write_all(stop.as_bytes())?;
        }
        let mut results = Vec::new();
        for _ in 0..self.children.len() {
            match parse_line(&self.next_line()?)? {
                WorkerLine::Result(result) => results.push(result),
                other => anyhow::bail!("a worker sent {other:?} instead of its result"),
            }
        }
        self.finished = true;
        Ok(results)
    }
}

impl Drop for Workers {
    /// Every worker is reaped: after `RESULT` it exits on its own; if the run failed
    /// before that, it is killed.
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            if !self.finished {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A worker process: connect, report, serve the sockets until `STOP <sent>` arrives on
/// stdin (or stdin closes), drain, report.
pub(crate) fn run_as_worker(args: &Args) -> anyhow::Result<()> {
    let me = args.worker_index.unwrap_or(1);
    let mut load = Load::new(args.connections)?;
    load.quiet();
    load.connect_all(args, me, 0, args.connections)?;
    let ready = WorkerLine::Ready { connected: load.stats.connected, failed: load.stats.failed };
    print!("{}", to_line(&ready)?);
    std::io::stdout().flush()?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = loop {
        load.turn(Duration::from_millis(20))?;
        match rx.try_recv() {
            Ok(line) => break line,
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                anyhow::bail!("the parent closed stdin before STOP")
            }
        }
    };
    let ParentLine::Stop { sent } = parse_line(line.trim_end())?;
    load.drain(sent * load.stats.connected as u64, args.max_drain)?;
    load.stopping = true;
    let latencies = load
        .stats
        .hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let result = WorkerResult {
        cpu_ticks: proc_cpu_ticks(std::process::id()).unwrap_or(0),
        received: load.stats.received,
        closed_early: load.stats.closed_early,
        latencies,
    };
    print!("{}", to_line(&WorkerLine::Result(result))?);
    std::io::stdout().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines_round_trip() {
        let ready = WorkerLine::Ready { connected: 10, failed: 1 };
        assert_eq!(parse_line::<WorkerLine>(to_line(&ready).unwrap().trim_end()).unwrap(), ready);
        let result = WorkerLine::Result(WorkerResult {
            cpu_ticks: 7,
            received: 100,
            closed_early: 0,
            latencies: vec![(120, 3), (250, 1)],
        });
        assert_eq!(parse_line::<WorkerLine>(&to_line(&result).unwrap()).unwrap(), result);
        let stop = ParentLine::Stop { sent: 42 };
        assert_eq!(parse_line::<ParentLine>(&to_line(&stop).unwrap()).unwrap(), stop);
    }

    /// A malformed line is an error naming the line, never a zero.
    #[test]
    fn a_malformed_line_is_an_error_that_quotes_it() {
        for bad in [
            "READY 10 x",
            r#"{"ready":{"connected":"ten","failed":0}}"#,
            r#"{"ready":{"connected":1}}"#,
        ] {
            let err = parse_line::<WorkerLine>(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
