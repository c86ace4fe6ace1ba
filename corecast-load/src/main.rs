//! `corecast-load`: a WebSocket load generator for the seed protocol (`/ws/{user_id}`,
//! text in, `{"sender","text"}` out), so it measures any server with that endpoint.
//!
//! Run it with `cargo run --release -p corecast-load -- --help`.
//!
//! Runs on: one thread (pinned with `--cpu N`) driving one edge-triggered epoll set (mio)
//! over all of this process's sockets; no async runtime. A readable socket costs one
//! `recv` into a shared 256 KiB buffer (a short read means the socket is drained), and
//! the clock is read once per `recv`, not per message, so the tool stays well below its
//! core's limit while the server is measured. Above ~18k connections the same binary
//! runs as worker processes (`--worker-index`, driven over stdin/stdout).
//!
//! Phases:
//! 1. read the server's RSS (given `--server-pid`), open `--connections` receivers and
//!    `--publishers` publishers, wait `--settle`, read the RSS again → bytes per idle
//!    connection;
//! 2. publishers send `--rate` messages/s in total (open loop, each carrying its send
//!    time) for `--duration`; every connection counts what it receives and records the
//!    publish-to-receive latency in an HDR histogram;
//! 3. report deliveries/s, delivery ratio, latency percentiles, the server's CPU per
//!    delivery (utime+stime from /proc), its cores' busy time per delivery (given
//!    `--server-cpus`: everything that ran there, softirq included) and this tool's own
//!    CPU (to show it was not the bottleneck).
//!
//! Pings from the server are answered, so runs may last longer than a ping period.

//! Layout:
//! - `main.rs`: the command line and the phases of a run;
//! - [`client`]: this process's sockets and the epoll loop that serves them;
//! - [`worker`]: the other processes of a multi-process run and their line protocol;
//! - [`report`]: the JSON report (serde) and the latency chart;
//! - [`procfs`]: readings from `/proc` (RSS, CPU time, core busy time).

mod client;
mod procfs;
mod report;
mod worker;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Parser;

use client::Load;
use procfs::{cores_busy_ticks, proc_cpu_ticks, proc_rss, ticks_to_secs};
use report::{Latency, Report, percentile_svg};
use worker::{Workers, run_as_worker};

#[derive(Debug, Parser)]
#[command(name = "corecast-load", about = "WebSocket fan-out load generator (seed protocol)")]
pub(crate) struct Args {
    /// Server address; several (comma-separated) spread the receiving connections over
    /// the nodes of a cluster in turn, and put the publishers on the first.
    #[arg(long, default_value = "127.0.0.1:8080", value_delimiter = ',', required = true)]
    pub(crate) addr: Vec<SocketAddr>,
    /// Receiving connections.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Publishing connections (they receive too).
    #[arg(long, default_value_t = 1)]
    pub(crate) publishers: usize,
    /// Messages per second, all publishers together (0: idle-memory measurement only).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Text payload size in bytes (at least 24: it carries the send timestamp).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Server process id, for RSS and CPU figures.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// CPUs the server runs on (comma-separated): their busy time (user, system, irq and
    /// softirq from /proc/stat) is reported per delivery beside the process's own CPU.
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_cpus: Vec<usize>,
    /// Seconds to wait after connecting before reading the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
    /// Connections being opened at once (handshakes in flight).
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Source addresses to cycle through: 127.0.0.1 … 127.0.0.N (loopback servers only).
    /// Each (source, destination) pair has ~28k ephemeral ports.
    #[arg(long, default_value_t = 1)]
    pub(crate) sources: u8,
    /// Processes to spread the connections over (0: one per 18,000 connections, because
    /// each process is capped by the open-files limit).
    #[arg(long, default_value_t = 0)]
    pub(crate) workers: usize,
    /// Internal: this process is worker K of a multi-process run (driven over stdin/stdout).
    #[arg(long, hide = true)]
    pub(crate) worker_index: Option<usize>,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    pub(crate) cpu: Option<usize>,
    /// Longest wait, in seconds, for deliveries still in flight after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) max_drain: f64,
    /// Write a latency-percentile chart (SVG) to this file.
    #[arg(long)]
    pub(crate) svg: Option<std::path::PathBuf>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// Reconnect-storm scenario: open `--connections` to `--addr`, send SIGTERM to
    /// `--storm-pid` (the node under test), and reconnect every connection it ends (Close
    /// or EOF) at once, as the same user, to this surviving node; report the reconnect
    /// rate the survivor saw.
    #[arg(long, requires = "storm_pid")]
    pub(crate) storm_to: Option<SocketAddr>,
    /// The process to send SIGTERM to in the reconnect-storm scenario.
    #[arg(long)]
    pub(crate) storm_pid: Option<u32>,
    /// Longest wait, in seconds, for the storm to end.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) storm_window: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.payload >= 24, "--payload must be at least 24 bytes");
    anyhow::ensure!(
        args.sources <= 1 || args.addr.iter().all(|a| a.ip().is_loopback()),
        "--sources cycles 127.0.0.x addresses: the server must be on loopback"
    );
    anyhow::ensure!(args.sources >= 1, "--sources must be at least 1");
    if let Some(cpu) = args.cpu {
        anyhow::ensure!(
            core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
            "cannot pin to CPU {cpu}"
        );
    }
    if let Some(to) = args.storm_to {
        return run_storm(&args, to);
    }
    if args.worker_index.is_some() { run_as_worker(&args) } else { run(&args) }
}

/// The reconnect-storm scenario (`--storm-to`); one process (at most ~18k connections).
fn run_storm(args: &Args, to: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections <= 18_000,
        "--storm-to runs in one process: at most 18000 connections"
    );
    let pid = args.storm_pid.ok_or_else(|| anyhow::anyhow!("--storm-to needs --storm-pid"))?;
    let mut load = Load::new(args.connections)?;
    load.quiet();
    load.record_ends();
    load.connect_all(args, 0, 0, args.connections)?;
    let connected = load.stats.connected;
    anyhow::ensure!(connected == args.connections, "connected {connected} of {}", args.connections);
    load.serve_for(Duration::from_secs_f64(args.settle))?;
    eprintln!("connected {connected}; sending SIGTERM to {pid}");
    let signal = Instant::now();
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    let deadline = signal + Duration::from_secs_f64(args.storm_window);
    let (mut ends, mut reconnects) = (Vec::new(), Vec::new());
    let mut next_user = 0usize;
    while ends.len() < connected && Instant::now() < deadline {
        load.turn(Duration::from_millis(5))?;
        let ended = load.take_ended();
        if ended.is_empty() {
            continue;
        }
        ends.extend(ended.iter().map(|at| at.duration_since(signal).as_secs_f64() * 1e3));
        let users: Vec<String> =
            (next_user..next_user + ended.len()).map(|i| format!("storm-{i}")).collect();
        next_user += ended.len();
        let opened = load.reconnect(args, to, &users)?;
        let now = signal.elapsed().as_secs_f64() * 1e3;
        reconnects.extend(std::iter::repeat_n(now, opened));
    }
    load.stopping = true;
    let last = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let report = report::StormReport {
        connections: connected,
        ended: ends.len(),
        reconnected: reconnects.len(),
        failed: load.stats.failed,
        first_end_ms: ends.iter().copied().fold(f64::INFINITY, f64::min).min(last(&ends)),
        last_end_ms: last(&ends),
        last_reconnect_ms: last(&reconnects),
        peak_per_sec_100ms: report::StormReport::peak_per_sec(&reconnects, 100.0),
        peak_per_sec_1s: report::StormReport::peak_per_sec(&reconnects, 1000.0),
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, json)?;
    }
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<()> {
    let rss_before = args.server_pid.and_then(proc_rss);
    let worker_count = match args.workers {
        0 => (args.connections + args.publishers).div_ceil(18_000).max(1),
        w => w,
    };
    // This process's receivers: an equal share, the remainder here (worker 0).
    let share = args.connections / worker_count;
    let my_receivers = args.connections - share * (worker_count - 1);
    let total_conns = args.connections + args.publishers;
    let mut workers =
        if worker_count > 1 { Some(Workers::spawn(args, worker_count, share)?) } else { None };
    let mut load = Load::new(total_conns)?;

    // Phase 1: connect.
    load.set_phase("connect");
    let connect_started = Instant::now();
    load.connect_all(args, 0, args.publishers, my_receivers)?;
    let local_connected = load.stats.connected as u64;
    if let Some(w) = workers.as_mut() {
        let (connected, failed) = w.wait_ready()?;
        load.stats.connected += connected;
        load.stats.failed += failed;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    load.end_progress_line();
    eprintln!(
        "connected {} of {} in {:.2}s ({:.0}/s), {} failed{}",
        load.stats.connected,
        total_conns,
        connect_secs,
        load.stats.connected as f64 / connect_secs,
        load.stats.failed,
        load.stats
            .first_error
            .as_deref()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default()
    );
    load.set_phase("settle");
    load.serve_for(Duration::from_secs_f64(args.settle))?;
    let rss_idle = args.server_pid.and_then(proc_rss);
    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / load.stats.connected.max(1) as f64),
        _ => None,
    };
    if let Some(pc) = per_conn {
        eprintln!(
            "server RSS {} → {} KiB: {:.0} bytes per idle connection",
            rss_before.unwrap_or(0) >> 10,
            rss_idle.unwrap_or(0) >> 10,
            pc
        );
    }

    // Phase 2: publish.
    load.set_phase("publish");
    let server_cpu_before = args.server_pid.and_then(proc_cpu_ticks);
    let server_core_before = cores_busy_ticks(&args.server_cpus);
    let self_cpu_before = proc_cpu_ticks(std::process::id());
    if let Some(w) = workers.as_mut() {
        w.mark_cpu();
    }
    let publish_started = Instant::now();
    load.publish(args, publish_started)?;
    let publish_secs = publish_started.elapsed().as_secs_f64();
    load.set_phase("drain");
    load.drain(load.stats.sent * local_connected, args.max_drain)?;
    let mut workers_cpu_ticks = 0u64;
    if let Some(w) = workers.as_mut() {
        let ticks_at_start = w.ticks_at_start.clone();
        for (r, start) in w.stop(load.stats.sent)?.into_iter().zip(ticks_at_start) {
            workers_cpu_ticks += r.cpu_ticks.saturating_sub(start);
            load.stats.received += r.received;
            load.stats.closed_early += r.closed_early;
            for (value, count) in r.latencies {
                load.stats.hist.saturating_record_n(value, count);
            }
        }
    }
    let drained_secs = publish_started.elapsed().as_secs_f64();
    let server_cpu = match (server_cpu_before, args.server_pid.and_then(proc_cpu_ticks)) {
        (Some(b), Some(a)) => Some(ticks_to_secs(a.saturating_sub(b))),
        _ => None,
    };
    let server_core = match (server_core_before, cores_busy_ticks(&args.server_cpus)) {
        (Some(b), Some(a)) => Some(ticks_to_secs(a.saturating_sub(b))),
        _ => None,
    };
    let self_cpu = match (self_cpu_before, proc_cpu_ticks(std::process::id())) {
        (Some(b), Some(a)) => ticks_to_secs(a.saturating_sub(b) + workers_cpu_ticks),
        _ => 0.0,
    };
    load.stopping = true;
    load.end_progress_line();

    let stats = &load.stats;
    let expected = stats.sent * stats.connected as u64;
    let received = stats.received;
    let q = |p: f64| stats.hist.value_at_quantile(p);
    let deliveries_per_sec = received as f64 / drained_secs.max(1e-9);
    let ratio = if expected > 0 { received as f64 / expected as f64 } else { 1.0 };
    let per_delivery_us = |secs: Option<f64>| secs.map(|s| s * 1e6 / received.max(1) as f64);
    let report = Report {
        connections: stats.connected,
        failed: stats.failed,
        connect_per_sec: stats.connected as f64 / connect_secs,
        server_rss_per_idle_conn_bytes: per_conn,
        sent: stats.sent,
        expected_deliveries: expected,
        received,
        delivery_ratio: ratio,
        publish_secs,
        drained_secs,
        deliveries_per_sec,
        latency_us: Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: stats.hist.max(),
        },
        server_cpu_secs: server_cpu,
        server_cpu_per_delivery_us: per_delivery_us(server_cpu),
        server_cores: args.server_cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        server_core_secs: server_core,
        server_core_per_delivery_us: per_delivery_us(server_core),
        load_tool_cpu_secs: self_cpu,
        load_tool_cpu_share: self_cpu / drained_secs.max(1e-9),
        closed_early: stats.closed_early,
    }
    .to_json()?;
    println!("{report}");
    if self_cpu / drained_secs.max(1e-9) > 0.9 {
        eprintln!(
            "warning: the load tool used {:.0}% of a core: it may be the bottleneck",
            100.0 * self_cpu / drained_secs
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, &report)?;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "{} connections, {} msg/s offered: publish-to-receive latency ({} deliveries)",
            stats.connected, args.rate, received
        );
        std::fs::write(path, percentile_svg(&stats.hist, &title))?;
    }
    Ok(())
}
