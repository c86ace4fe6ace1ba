//! `corecast-load`: a WebSocket load generator for the seed protocol (`/ws/{user_id}`,
//! text in, `{"sender","text"}` out), so it measures any server with that endpoint.
//!
//! Runs on: one glommio executor (unpinned by default, or `--cpu N`), all connections
//! as tasks of it. Phases:
//! 1. read the server's RSS (given `--server-pid`), open `--connections` receivers and
//!    `--publishers` publishers, wait `--settle`, read the RSS again → bytes per idle
//!    connection;
//! 2. publishers send `--rate` messages/s in total (open loop, each carrying its send
//!    time) for `--duration`; every connection counts what it receives and records the
//!    publish-to-receive latency in a log-linear histogram;
//! 3. report deliveries/s, delivery ratio, latency percentiles, server CPU per delivery
//!    (utime+stime from /proc) and this tool's own CPU (to show it was not the bottleneck).
//!
//! Client Pings from the server are answered, so runs may last longer than a ping period.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement, net::TcpStream, timer::Timer};

#[derive(Debug, Parser)]
#[command(name = "corecast-load", about = "WebSocket fan-out load generator (seed protocol)")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Receiving connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Publishing connections (they receive too).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages per second, all publishers together (0: idle-memory measurement only).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Text payload size in bytes (at least 24: it carries the send timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Server process id, for RSS and CPU figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after connecting before reading the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Source addresses to cycle through: 127.0.0.1 … 127.0.0.N (loopback servers only).
    /// Each (source, destination) pair has ~28k ephemeral ports.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Processes to spread the connections over (0: one per 18,000 connections, because
    /// each process is capped by the open-files limit).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Internal: this process is worker K of a multi-process run (driven over stdin/stdout).
    #[arg(long, hide = true)]
    worker_index: Option<usize>,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Longest wait, in seconds, for deliveries still in flight after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    max_drain: f64,
    /// Write a latency-percentile chart (SVG) to this file.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Publish-to-receive latencies in microseconds (HDR, 3 significant digits, up to 1 hour).
type Histogram = hdrhistogram::Histogram<u64>;

fn new_histogram() -> Histogram {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid HDR bounds")
}

#[derive(Default)]
struct Totals {
    phase: Cell<&'static str>,
    connected: Cell<usize>,
    failed: Cell<usize>,
    received: Cell<u64>,
    sent: Cell<u64>,
    closed_early: Cell<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.payload >= 24, "--payload must be at least 24 bytes");
    anyhow::ensure!(
        args.sources <= 1 || args.addr.ip().is_loopback(),
        "--sources cycles 127.0.0.x addresses: the server must be on loopback"
    );
    let placement = args.cpu.map_or(Placement::Unbound, Placement::Fixed);
    let handle = LocalExecutorBuilder::new(placement)
        .name("load")
        .io_memory(64 << 10)
        .spawn(move || async move { run(args).await })?;
    handle.join().map_err(|e| anyhow::anyhow!("load executor: {e}"))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let totals = Rc::new(Totals::default());
    let hist = Rc::new(RefCell::new(new_histogram()));
    let stop = Rc::new(Cell::new(false));
    let rss_before = args.server_pid.and_then(proc_rss);
    let worker_count = match (args.worker_index, args.workers) {
        (Some(_), _) => 1,
        (None, 0) => (args.connections + args.publishers).div_ceil(18_000).max(1),
        (None, w) => w,
    };
    let me = args.worker_index.unwrap_or(0);
    // This process's receivers: an equal share, the remainder on the parent (worker 0).
    let share = args.connections / worker_count;
    let my_receivers = if args.worker_index.is_none() {
        args.connections - share * (worker_count - 1)
    } else {
        args.connections
    };
    let local_conns = my_receivers + args.publishers;
    // Every process's connections together.
    let total_conns = args.connections + args.publishers;
    let mut workers =
        if worker_count > 1 { Some(Workers::spawn(&args, worker_count, share)?) } else { None };

    // A progress line on the terminal (nothing when stderr is a file or a pipe).
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let totals = totals.clone();
        glommio::spawn_local(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                Timer::new(Duration::from_millis(500)).await;
                let received = totals.received.get();
                let rate = (received - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), received);
                eprint!(
                    "\r\x1b[K[{}] connected {}/{}  failed {}  sent {}  received {}  ({:.0}/s)",
                    totals.phase.get(),
                    totals.connected.get(),
                    total_conns,
                    totals.failed.get(),
                    totals.sent.get(),
                    received,
                    rate
                );
            }
        })
    });

    // Phase 1: connect.
    totals.phase.set("connect");
    let connect_started = Instant::now();
    let gate = Rc::new(glommio::sync::Semaphore::new(args.connect_concurrency as u64));
    let mut publishers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..local_conns {
        let publisher = i < args.publishers;
        let user = if publisher { format!("pub-{me}-{i}") } else { format!("load-{me}-{i}") };
        let (tx, rx) = flume::bounded::<Vec<u8>>(1024);
        if publisher {
            publishers.push(tx.clone());
        }
        let permit = gate.acquire_static_permit(1).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let (totals, hist, stop, addr) = (totals.clone(), hist.clone(), stop.clone(), args.addr);
        let source = (args.sources > 1).then(|| {
            std::net::IpAddr::from([
                127,
                0,
                0,
                1 + ((me * 7919 + i) % usize::from(args.sources)) as u8,
            ])
        });
        tasks.push(glommio::spawn_local(async move {
            let stream = match connect(addr, source, &user).await {
                Ok(s) => s,
                Err(_) => {
                    totals.failed.set(totals.failed.get() + 1);
                    return;
                }
            };
            totals.connected.set(totals.connected.get() + 1);
            drop(permit);
            receive(stream, rx, tx, &totals, &hist, &stop).await;
        }));
    }
    while totals.connected.get() + totals.failed.get() < local_conns {
        Timer::new(Duration::from_millis(10)).await;
    }
    if args.worker_index.is_some() {
        return run_as_worker(&totals, &hist, &stop, &args).await;
    }
    let local_connected = totals.connected.get() as u64;
    if let Some(w) = workers.as_mut() {
        let (connected, failed) = w.wait_ready().await?;
        totals.connected.set(totals.connected.get() + connected);
        totals.failed.set(totals.failed.get() + failed);
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "connected {} of {} in {:.2}s ({:.0}/s), {} failed",
        totals.connected.get(),
        total_conns,
        connect_secs,
        totals.connected.get() as f64 / connect_secs,
        totals.failed.get()
    );
    Timer::new(Duration::from_secs_f64(args.settle)).await;
    let rss_idle = args.server_pid.and_then(proc_rss);
    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(a)) => {
            Some(a.saturating_sub(b) as f64 / totals.connected.get().max(1) as f64)
        }
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
    totals.phase.set("publish");
    let server_cpu_before = args.server_pid.and_then(proc_cpu_ticks);
    let self_cpu_before = proc_cpu_ticks(std::process::id());
    if let Some(w) = workers.as_mut() {
        w.mark_cpu();
    }
    let mut workers_cpu_ticks = 0u64;
    let publish_started = Instant::now();
    if args.rate > 0.0 && !publishers.is_empty() {
        let per_pub = args.rate / publishers.len() as f64;
        let mut due_sent = vec![0u64; publishers.len()];
        let duration = Duration::from_secs_f64(args.duration);
        let mut frame = Vec::with_capacity(args.payload + 14);
        loop {
            let elapsed = publish_started.elapsed();
            if elapsed >= duration {
                break;
            }
            for (p, tx) in publishers.iter().enumerate() {
                let due = (elapsed.as_secs_f64() * per_pub) as u64 + 1;
                while due_sent[p] < due {
                    due_sent[p] += 1;
                    let now = unix_nanos();
                    let mut text = format!("{now} ");
                    text.extend(std::iter::repeat_n('x', args.payload.saturating_sub(text.len())));
                    frame.clear();
                    client_frame(&mut frame, 0x1, text.as_bytes());
                    if tx.try_send(frame.clone()).is_ok() {
                        totals.sent.set(totals.sent.get() + 1);
                    }
                }
            }
            Timer::new(Duration::from_millis(1)).await;
        }
    }
    let publish_secs = publish_started.elapsed().as_secs_f64();
    drain(&totals, totals.sent.get() * local_connected, args.max_drain).await;
    if let Some(w) = workers.as_mut() {
        let ticks_at_start = w.ticks_at_start.clone();
        for (r, start) in w.stop(totals.sent.get()).await?.into_iter().zip(ticks_at_start) {
            workers_cpu_ticks += r.cpu_ticks.saturating_sub(start);
            totals.received.set(totals.received.get() + r.received);
            totals.closed_early.set(totals.closed_early.get() + r.closed_early);
            let mut h = hist.borrow_mut();
            for (value, count) in r.latencies {
                h.saturating_record_n(value, count);
            }
        }
    }
    let expected = totals.sent.get() * totals.connected.get() as u64;
    let drained_secs = publish_started.elapsed().as_secs_f64();
    drop(progress);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    let server_cpu = match (server_cpu_before, args.server_pid.and_then(proc_cpu_ticks)) {
        (Some(b), Some(a)) => Some(ticks_to_secs(a.saturating_sub(b))),
        _ => None,
    };
    let self_cpu = match (self_cpu_before, proc_cpu_ticks(std::process::id())) {
        (Some(b), Some(a)) => ticks_to_secs(a.saturating_sub(b) + workers_cpu_ticks),
        _ => 0.0,
    };
    stop.set(true);

    let received = totals.received.get();
    let (p50, p90, p99, p999, max) = {
        let h = hist.borrow();
        let q = |p: f64| h.value_at_quantile(p);
        (q(0.5), q(0.9), q(0.99), q(0.999), h.max())
    };
    let deliveries_per_sec = received as f64 / drained_secs.max(1e-9);
    let ratio = if expected > 0 { received as f64 / expected as f64 } else { 1.0 };
    let cpu_per_delivery_us = server_cpu.map(|s| s * 1e6 / received.max(1) as f64);
    let report = format!(
        concat!(
            "{{\"connections\":{},\"failed\":{},\"connect_per_sec\":{:.0},\"server_rss_per_idle_conn_bytes\":{},",
            "\"sent\":{},\"expected_deliveries\":{},\"received\":{},\"delivery_ratio\":{:.5},",
            "\"publish_secs\":{:.2},\"drained_secs\":{:.2},\"deliveries_per_sec\":{:.0},",
            "\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},",
            "\"server_cpu_secs\":{},\"server_cpu_per_delivery_us\":{},\"load_tool_cpu_secs\":{:.2},",
            "\"load_tool_cpu_share\":{:.2},\"closed_early\":{}}}"
        ),
        totals.connected.get(),
        totals.failed.get(),
        totals.connected.get() as f64 / connect_secs,
        per_conn.map_or("null".into(), |v| format!("{v:.0}")),
        totals.sent.get(),
        expected,
        received,
        ratio,
        publish_secs,
        drained_secs,
        deliveries_per_sec,
        p50,
        p90,
        p99,
        p999,
        max,
        server_cpu.map_or("null".into(), |v| format!("{v:.2}")),
        cpu_per_delivery_us.map_or("null".into(), |v| format!("{v:.3}")),
        self_cpu,
        self_cpu / drained_secs.max(1e-9),
        totals.closed_early.get(),
    );
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
            totals.connected.get(),
            args.rate,
            received
        );
        std::fs::write(path, percentile_svg(&hist.borrow(), &title))?;
    }
    drop(publishers);
    for t in tasks {
        t.cancel().await;
    }
    Ok(())
}

/// A latency-by-percentile chart: x is the percentile on a "nines" scale, y the latency
/// in milliseconds (linear), in the style of HdrHistogram's plots.
fn percentile_svg(h: &Histogram, title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 60.0;
    let nines = [0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999];
    // x position of quantile q: log10(1 / (1 - q)), 0 at the median's left edge.
    let x_of = |q: f64| (1.0 / (1.0 - q.min(0.99999))).log10();
    let x_max = x_of(0.9999);
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-(i as f64) / 100.0);
            (x_of(q), h.value_at_quantile(q) as f64 / 1000.0)
        })
        .filter(|(x, _)| *x <= x_max)
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let sx = |x: f64| PAD + x / x_max * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - y / y_max * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        W / 2.0
    );
    svg.push_str(&format!(
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\n",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    ));
    for q in nines {
        let x = sx(x_of(q));
        let label = if q == 0.0 { "0%".to_string() } else { format!("{}%", q * 100.0) };
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{PAD}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            H - PAD,
            H - PAD + 18.0
        ));
    }
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = sy(v);
        svg.push_str(&format!(
            "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            W - PAD,
            PAD - 6.0,
            y + 4.0
        ));
    }
    let path: Vec<String> =
        points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" ")
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">latency (ms)</text>\n</svg>\n",
        W / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    ));
    svg
}

/// Waits until `expected` messages arrived here, nothing arrived for 2 s, or `max_drain` s.
async fn drain(totals: &Totals, expected: u64, max_drain: f64) {
    let mut last = totals.received.get();
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    while totals.received.get() < expected
        && quiet_since.elapsed() < Duration::from_secs(2)
        && started.elapsed() < Duration::from_secs_f64(max_drain)
    {
        Timer::new(Duration::from_millis(20)).await;
        if totals.received.get() != last {
            last = totals.received.get();
            quiet_since = Instant::now();
        }
    }
}

/// What a worker process reports at the end.
struct WorkerResult {
    /// utime + stime of the worker when it finished, in clock ticks.
    cpu_ticks: u64,
    received: u64,
    closed_early: usize,
    /// (latency µs, count) pairs of its histogram.
    latencies: Vec<(u64, u64)>,
}

/// The other processes of a multi-process run, seen from the parent. Protocol, one line
/// each way: the worker prints `READY <connected> <failed>`; the parent sends
/// `STOP <sent>`; the worker drains and prints
/// `RESULT <cpu_ticks> <received> <closed_early> v:c,v:c…`.
struct Workers {
    children: Vec<std::process::Child>,
    stdins: Vec<std::process::ChildStdin>,
    /// Lines the workers print, read by one thread per worker.
    lines: flume::Receiver<String>,
    /// The workers' CPU ticks when publishing started.
    ticks_at_start: Vec<u64>,
}

impl Workers {
    fn spawn(args: &Args, count: usize, share: usize) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe()?;
        let (tx, lines) = flume::unbounded();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for k in 1..count {
            let mut child = std::process::Command::new(&exe)
                .args(["--addr", &args.addr.to_string(), "--connections", &share.to_string()])
                .args(["--publishers", "0", "--sources", &args.sources.to_string()])
                .args([
                    "--worker-index",
                    &k.to_string(),
                    "--max-drain",
                    &args.max_drain.to_string(),
                ])
                .args(["--connect-concurrency", &args.connect_concurrency.to_string()])
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
        Ok(Workers { children, stdins, lines, ticks_at_start: Vec::new() })
    }

    /// Records the workers' CPU time at the start of the measured phase.
    fn mark_cpu(&mut self) {
        self.ticks_at_start =
            self.children.iter().map(|c| proc_cpu_ticks(c.id()).unwrap_or(0)).collect();
    }

    async fn next_line(&self) -> anyhow::Result<String> {
        self.lines.recv_async().await.map_err(|_| anyhow::anyhow!("a worker exited early"))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<(usize, usize)> {
        let (mut connected, mut failed) = (0, 0);
        for _ in 0..self.children.len() {
            let line = self.next_line().await?;
            let mut f = line.split_whitespace().skip(1).map(|x| x.parse::<usize>().unwrap_or(0));
            connected += f.next().unwrap_or(0);
            failed += f.next().unwrap_or(0);
        }
        Ok((connected, failed))
    }

    async fn stop(&mut self, sent: u64) -> anyhow::Result<Vec<WorkerResult>> {
        for stdin in &mut self.stdins {
            std::io::Write::write_all(stdin, format!("STOP {sent}\n").as_bytes())?;
        }
        let mut results = Vec::new();
        for _ in 0..self.children.len() {
            let line = self.next_line().await?;
            let mut f = line.split_whitespace().skip(1);
            let cpu_ticks = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let received = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let closed_early = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let latencies = f
                .next()
                .unwrap_or("")
                .split(',')
                .filter_map(|pair| pair.split_once(':'))
                .filter_map(|(v, c)| Some((v.parse().ok()?, c.parse().ok()?)))
                .collect();
            results.push(WorkerResult { cpu_ticks, received, closed_early, latencies });
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        Ok(results)
    }
}

/// A worker process: its connections are up; report, wait for `STOP <sent>`, drain, report.
async fn run_as_worker(
    totals: &Totals,
    hist: &RefCell<Histogram>,
    stop: &Cell<bool>,
    args: &Args,
) -> anyhow::Result<()> {
    println!("READY {} {}", totals.connected.get(), totals.failed.get());
    let (tx, rx) = flume::bounded::<String>(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_ok() {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_async().await.unwrap_or_default();
    let sent: u64 = line.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    drain(totals, sent * totals.connected.get() as u64, args.max_drain).await;
    stop.set(true);
    let pairs: Vec<String> = {
        let h = hist.borrow();
        h.iter_recorded()
            .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
            .collect()
    };
    let cpu_ticks = proc_cpu_ticks(std::process::id()).unwrap_or(0);
    println!(
        "RESULT {cpu_ticks} {} {} {}",
        totals.received.get(),
        totals.closed_early.get(),
        pairs.join(",")
    );
    Ok(())
}

async fn connect(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    user: &str,
) -> std::io::Result<TcpStream> {
    let mut stream = match source {
        None => TcpStream::connect(addr).await.map_err(std::io::Error::other)?,
        Some(ip) => {
            // A blocking connect: on loopback it completes in the kernel at once.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(ip, 0).into())?;
            socket.connect(&addr.into())?;
            corecast::sys::glommio_stream(socket.into())?
        }
    };
    stream.set_nodelay(true).map_err(std::io::Error::other)?;
    let request = format!(
        "GET /ws/{user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 4096 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(String::from_utf8_lossy(&head).into_owned()));
    }
    Ok(stream)
}

/// Reads frames, answers pings, records latencies. Everything written (a publisher's
/// messages, pongs) goes through `outbox`, so the socket has exactly one writer.
async fn receive(
    stream: TcpStream,
    outbox: flume::Receiver<Vec<u8>>,
    pongs: flume::Sender<Vec<u8>>,
    totals: &Totals,
    hist: &RefCell<Histogram>,
    stop: &Cell<bool>,
) {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let _sender = glommio::spawn_local(async move {
        while let Ok(frame) = outbox.recv_async().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 << 10];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match reader.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => {
                if !stop.get() {
                    totals.closed_early.set(totals.closed_early.get() + 1);
                }
                return;
            }
            Ok(n) => n,
        };
        filled += n;
        let mut at = 0;
        while let Some((opcode, payload, used)) = parse_frame(&buf[at..filled]) {
            match opcode {
                0x1 => {
                    if let Some(ts) = timestamp_of(payload) {
                        let now = unix_nanos();
                        hist.borrow_mut().saturating_record((now.saturating_sub(ts) / 1000).max(1));
                        totals.received.set(totals.received.get() + 1);
                    }
                }
                0x9 => {
                    let mut pong = Vec::with_capacity(payload.len() + 6);
                    client_frame(&mut pong, 0xA, payload);
                    let _ = pongs.try_send(pong);
                }
                _ => {}
            }
            at += used;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
    }
}

/// The send timestamp at the start of a seed message's text: `{"sender":"..","text":"<ns> xxx"}`
/// (with or without white space around the colon, as servers' JSON encoders differ).
fn timestamp_of(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"text\"";
    let mut at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    while at < payload.len() && matches!(payload[at], b' ' | b':' | b'"') {
        at += 1;
    }
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}

fn parse_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (opcode, payload, used) = corecast::frame::decode_unmasked(buf)?;
    Some((opcode, &buf[payload], used))
}

fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    corecast::frame::encode_masked(out, opcode, true, payload, [0x12, 0x34, 0x56, 0x78]);
}

/// Wall-clock nanoseconds: send times cross process boundaries in a multi-process run.
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// VmRSS of a process in bytes.
fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Linux reports /proc CPU times in USER_HZ, which is 100 on every mainstream build.
fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_chart_is_well_formed() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let svg = percentile_svg(&h, "test");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline") && svg.contains("99.9%"));
    }

    #[test]
    fn timestamp_extraction() {
        assert_eq!(timestamp_of(br#"{"sender":"p","text":"12345 xxxx"}"#), Some(12345));
        assert_eq!(timestamp_of(br#"{"sender": "p", "text": "678 xx"}"#), Some(678));
        assert_eq!(timestamp_of(br#"{"type":"ping"}"#), None);
    }
}
