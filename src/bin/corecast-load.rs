//! `corecast-load`: a WebSocket load generator for the seed protocol (`/ws/{user_id}`,
//! text in, `{"sender","text"}` out), so it measures any server with that endpoint.
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

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    sync::mpsc,
    time::{Duration, Instant},
};

use clap::Parser;
use mio::{Events, Interest, Poll, Token, net::TcpStream};

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
    /// CPUs the server runs on (comma-separated): their busy time (user, system, irq and
    /// softirq from /proc/stat) is reported per delivery beside the process's own CPU.
    #[arg(long, value_delimiter = ',')]
    server_cpus: Vec<usize>,
    /// Seconds to wait after connecting before reading the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Connections being opened at once (handshakes in flight).
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

/// Size of the one receive buffer every socket reads into.
const SCRATCH: usize = 256 << 10;

/// One open WebSocket client connection.
struct Conn {
    stream: TcpStream,
    /// The start of a frame that has not fully arrived (empty almost always).
    partial: Vec<u8>,
    /// Bytes the socket did not take yet (publisher messages, pongs).
    out: Vec<u8>,
    /// On the `pending_out` retry list.
    retry: bool,
}

/// What this process counted.
struct Stats {
    connected: usize,
    failed: usize,
    /// The first connection error, shown once.
    first_error: Option<String>,
    received: u64,
    sent: u64,
    closed_early: usize,
    hist: Histogram,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            connected: 0,
            failed: 0,
            first_error: None,
            received: 0,
            sent: 0,
            closed_early: 0,
            hist: new_histogram(),
        }
    }
}

/// This process's sockets and the loop that serves them.
struct Load {
    poll: Poll,
    events: Events,
    /// Indexed by token; `None` once closed.
    conns: Vec<Option<Conn>>,
    /// Tokens whose `out` is not empty.
    pending_out: Vec<usize>,
    scratch: Vec<u8>,
    stats: Stats,
    /// Set when the run is over: closes are no longer counted as early.
    stopping: bool,
    /// Every process's connections together (for the progress line).
    total_conns: usize,
    progress: Option<Progress>,
}

/// The terminal progress line (only when stderr is a terminal).
struct Progress {
    phase: &'static str,
    last: Instant,
    last_received: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.payload >= 24, "--payload must be at least 24 bytes");
    anyhow::ensure!(
        args.sources <= 1 || args.addr.ip().is_loopback(),
        "--sources cycles 127.0.0.x addresses: the server must be on loopback"
    );
    anyhow::ensure!(args.sources >= 1, "--sources must be at least 1");
    if let Some(cpu) = args.cpu {
        anyhow::ensure!(
            core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
            "cannot pin to CPU {cpu}"
        );
    }
    if args.worker_index.is_some() { run_as_worker(&args) } else { run(&args) }
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
    let per_delivery_us = |secs: Option<f64>| {
        secs.map_or("null".into(), |s| format!("{:.3}", s * 1e6 / received.max(1) as f64))
    };
    let secs = |s: Option<f64>| s.map_or("null".into(), |v| format!("{v:.2}"));
    let report = format!(
        concat!(
            "{{\"connections\":{},\"failed\":{},\"connect_per_sec\":{:.0},\"server_rss_per_idle_conn_bytes\":{},",
            "\"sent\":{},\"expected_deliveries\":{},\"received\":{},\"delivery_ratio\":{:.5},",
            "\"publish_secs\":{:.2},\"drained_secs\":{:.2},\"deliveries_per_sec\":{:.0},",
            "\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},",
            "\"server_cpu_secs\":{},\"server_cpu_per_delivery_us\":{},",
            "\"server_cores\":\"{}\",\"server_core_secs\":{},\"server_core_per_delivery_us\":{},",
            "\"load_tool_cpu_secs\":{:.2},\"load_tool_cpu_share\":{:.2},\"closed_early\":{}}}"
        ),
        stats.connected,
        stats.failed,
        stats.connected as f64 / connect_secs,
        per_conn.map_or("null".into(), |v| format!("{v:.0}")),
        stats.sent,
        expected,
        received,
        ratio,
        publish_secs,
        drained_secs,
        deliveries_per_sec,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        stats.hist.max(),
        secs(server_cpu),
        per_delivery_us(server_cpu),
        args.server_cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        secs(server_core),
        per_delivery_us(server_core),
        self_cpu,
        self_cpu / drained_secs.max(1e-9),
        stats.closed_early,
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
            stats.connected, args.rate, received
        );
        std::fs::write(path, percentile_svg(&stats.hist, &title))?;
    }
    Ok(())
}

impl Load {
    fn new(total_conns: usize) -> io::Result<Load> {
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| Progress {
            phase: "start",
            last: Instant::now(),
            last_received: 0,
        });
        Ok(Load {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Vec::new(),
            pending_out: Vec::new(),
            scratch: vec![0; SCRATCH],
            stats: Stats::new(),
            stopping: false,
            total_conns,
            progress,
        })
    }

    /// Opens `publishers` + `receivers` connections, `--connect-concurrency` handshakes
    /// at a time: connect and send the upgrade request for a batch, then read the batch's
    /// responses (blocking, bounded by a timeout). Publishers take tokens 0.. so they
    /// can be found again.
    fn connect_all(
        &mut self,
        args: &Args,
        me: usize,
        publishers: usize,
        receivers: usize,
    ) -> anyhow::Result<()> {
        let users: Vec<String> = (0..publishers)
            .map(|i| format!("pub-{me}-{i}"))
            .chain((0..receivers).map(|i| format!("load-{me}-{i}")))
            .collect();
        for (batch_no, batch) in users.chunks(args.connect_concurrency.max(1)).enumerate() {
            let first = batch_no * args.connect_concurrency.max(1);
            let mut started = Vec::with_capacity(batch.len());
            for (k, user) in batch.iter().enumerate() {
                let source = (args.sources > 1).then(|| {
                    let host = 1 + ((me * 7919 + first + k) % usize::from(args.sources)) as u8;
                    std::net::IpAddr::from([127, 0, 0, host])
                });
                match send_upgrade(args.addr, source, user) {
                    Ok(s) => started.push(s),
                    Err(e) => self.connect_failed(&e),
                }
            }
            for stream in started {
                match read_upgrade_response(stream) {
                    Ok((stream, leftover)) => {
                        let token = self.conns.len();
                        let mut stream = TcpStream::from_std(stream);
                        self.poll.registry().register(
                            &mut stream,
                            Token(token),
                            Interest::READABLE,
                        )?;
                        self.conns.push(Some(Conn {
                            stream,
                            partial: leftover,
                            out: Vec::new(),
                            retry: false,
                        }));
                        self.stats.connected += 1;
                    }
                    Err(e) => self.connect_failed(&e),
                }
            }
            self.tick_progress();
        }
        Ok(())
    }

    fn connect_failed(&mut self, e: &io::Error) {
        self.stats.failed += 1;
        self.stats.first_error.get_or_insert_with(|| e.to_string());
    }

    /// Serves every socket until `deadline` passes.
    fn serve_for(&mut self, d: Duration) -> io::Result<()> {
        let deadline = Instant::now() + d;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.turn(left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// The publishers send `--rate` messages/s in total for `--duration` (open loop: each
    /// message goes out when due, whatever the server does), while every socket is served.
    fn publish(&mut self, args: &Args, started: Instant) -> io::Result<()> {
        let publishers = args.publishers.min(self.conns.len());
        if args.rate <= 0.0 || publishers == 0 {
            return Ok(());
        }
        let per_pub = args.rate / publishers as f64;
        let mut due_sent = vec![0u64; publishers];
        let duration = Duration::from_secs_f64(args.duration);
        let mut frame = Vec::with_capacity(args.payload + 14);
        let mut text = Vec::with_capacity(args.payload);
        loop {
            let elapsed = started.elapsed();
            if elapsed >= duration {
                return Ok(());
            }
            for (p, sent) in due_sent.iter_mut().enumerate() {
                let due = (elapsed.as_secs_f64() * per_pub) as u64 + 1;
                while *sent < due {
                    *sent += 1;
                    text.clear();
                    write!(text, "{} ", unix_nanos())?;
                    text.resize(args.payload.max(text.len()), b'x');
                    frame.clear();
                    client_frame(&mut frame, 0x1, &text);
                    if self.write_to(p, &frame) {
                        self.stats.sent += 1;
                    }
                }
            }
            // The next message is due within 1/per_pub s; wake at least every ms.
            let next = Duration::from_secs_f64((1.0 / per_pub).min(0.001));
            self.turn(next)?;
        }
    }

    /// Serves sockets until `expected` messages arrived here, nothing arrived for 2 s,
    /// or `max_drain` s passed.
    fn drain(&mut self, expected: u64, max_drain: f64) -> io::Result<()> {
        let started = Instant::now();
        let mut last = self.stats.received;
        let mut quiet_since = Instant::now();
        while self.stats.received < expected
            && quiet_since.elapsed() < Duration::from_secs(2)
            && started.elapsed() < Duration::from_secs_f64(max_drain)
        {
            self.turn(Duration::from_millis(20))?;
            if self.stats.received != last {
                last = self.stats.received;
                quiet_since = Instant::now();
            }
        }
        Ok(())
    }

    /// One turn of the loop: wait up to `timeout` for readiness, read every ready socket,
    /// retry pending writes.
    fn turn(&mut self, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for token in ready {
            self.read_ready(token);
        }
        if !self.pending_out.is_empty() {
            for token in std::mem::take(&mut self.pending_out) {
                if let Some(conn) = self.conns.get_mut(token).and_then(Option::as_mut) {
                    conn.retry = false;
                }
                self.write_to(token, &[]);
            }
        }
        self.tick_progress();
        Ok(())
    }

    /// Reads a ready socket until a short read (edge-triggered: it is drained then).
    fn read_ready(&mut self, token: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(token).and_then(Option::as_mut) else { return };
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.close(token),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(token),
            };
            let now = unix_nanos();
            if conn.partial.is_empty() {
                let used = consume_frames(&self.scratch[..n], now, &mut self.stats, &mut conn.out);
                conn.partial.extend_from_slice(&self.scratch[used..n]);
            } else {
                conn.partial.extend_from_slice(&self.scratch[..n]);
                let used = consume_frames(&conn.partial, now, &mut self.stats, &mut conn.out);
                conn.partial.drain(..used);
            }
            if !conn.out.is_empty() {
                self.write_to(token, &[]);
            }
            if n < self.scratch.len() {
                return;
            }
        }
    }

    /// Appends `bytes` to the socket's pending output and writes what it takes.
    /// False when the connection is closed.
    fn write_to(&mut self, token: usize, bytes: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(token).and_then(Option::as_mut) else { return false };
        conn.out.extend_from_slice(bytes);
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token);
                    return false;
                }
            }
        }
        if !conn.out.is_empty() && !conn.retry {
            conn.retry = true;
            self.pending_out.push(token);
        }
        true
    }

    fn close(&mut self, token: usize) {
        if let Some(mut conn) = self.conns.get_mut(token).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if !self.stopping {
                self.stats.closed_early += 1;
            }
        }
    }

    fn set_phase(&mut self, phase: &'static str) {
        if let Some(p) = self.progress.as_mut() {
            p.phase = phase;
        }
    }

    fn tick_progress(&mut self) {
        let Some(p) = self.progress.as_mut() else { return };
        let since = p.last.elapsed();
        if since < Duration::from_millis(500) {
            return;
        }
        let s = &self.stats;
        let rate = (s.received - p.last_received) as f64 / since.as_secs_f64();
        eprint!(
            "\r\x1b[K[{}] connected {}/{}  failed {}  sent {}  received {}  ({:.0}/s)",
            p.phase, s.connected, self.total_conns, s.failed, s.sent, s.received, rate
        );
        p.last = Instant::now();
        p.last_received = s.received;
    }

    fn end_progress_line(&self) {
        if self.progress.is_some() {
            eprintln!();
        }
    }
}

/// Handles every complete frame at the start of `buf`; returns the bytes they took.
/// Text frames count as deliveries (with latency, when they carry a send time); pings
/// are answered into `out`.
fn consume_frames(buf: &[u8], now: u64, stats: &mut Stats, out: &mut Vec<u8>) -> usize {
    let mut at = 0;
    while let Some((opcode, payload, used)) = corecast::frame::decode_unmasked(&buf[at..]) {
        let payload = &buf[at..][payload];
        match opcode {
            0x1 => {
                if let Some(ts) = timestamp_of(payload) {
                    stats.hist.saturating_record((now.saturating_sub(ts) / 1000).max(1));
                    stats.received += 1;
                }
            }
            0x9 => client_frame(out, 0xA, payload),
            _ => {}
        }
        at += used;
    }
    at
}

/// Connects (from `source`, when given) and sends the upgrade request; blocking, bounded.
fn send_upgrade(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    user: &str,
) -> io::Result<std::net::TcpStream> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    let stream: std::net::TcpStream = socket.into();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let request = format!(
        "GET /ws/{user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    (&stream).write_all(request.as_bytes())?;
    Ok(stream)
}

/// Reads the upgrade response (blocking, bounded by the read timeout); returns the
/// stream, now non-blocking, and any bytes that followed the response head.
fn read_upgrade_response(
    mut stream: std::net::TcpStream,
) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 8192 {
            return Err(io::Error::other("response head over 8 KiB"));
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(io::Error::other(String::from_utf8_lossy(line).into_owned()));
    }
    stream.set_nonblocking(true)?;
    Ok((stream, head.split_off(end)))
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

/// What a worker process reports at the end.
struct WorkerResult {
    /// utime + stime of the worker when it finished, in clock ticks.
    cpu_ticks: u64,
    received: u64,
    closed_early: usize,
    /// (latency µs, count) pairs of its histogram.
    latencies: Vec<(u64, u64)>,
}

/// How long the parent waits for a worker's line before giving up.
const WORKER_TIMEOUT: Duration = Duration::from_secs(300);

/// The other processes of a multi-process run, seen from the parent. Protocol, one line
/// each way: the worker prints `READY <connected> <failed>`; the parent sends
/// `STOP <sent>`; the worker drains and prints
/// `RESULT <cpu_ticks> <received> <closed_early> v:c,v:c…`.
struct Workers {
    children: Vec<std::process::Child>,
    stdins: Vec<std::process::ChildStdin>,
    /// Lines the workers print, read by one thread per worker.
    lines: mpsc::Receiver<String>,
    /// The workers' CPU ticks when publishing started.
    ticks_at_start: Vec<u64>,
    /// Every worker sent its `RESULT` (and is about to exit).
    finished: bool,
}

impl Workers {
    fn spawn(args: &Args, count: usize, share: usize) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe()?;
        let (tx, lines) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for k in 1..count {
            let mut command = std::process::Command::new(&exe);
            command
                .args(["--addr", &args.addr.to_string(), "--connections", &share.to_string()])
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
    fn mark_cpu(&mut self) {
        self.ticks_at_start =
            self.children.iter().map(|c| proc_cpu_ticks(c.id()).unwrap_or(0)).collect();
    }

    fn next_line(&self) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(WORKER_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("a worker exited early or stalled: {e}"))
    }

    fn wait_ready(&mut self) -> anyhow::Result<(usize, usize)> {
        let (mut connected, mut failed) = (0, 0);
        for _ in 0..self.children.len() {
            let line = self.next_line()?;
            let mut f = line.split_whitespace().skip(1).map(|x| x.parse::<usize>().unwrap_or(0));
            connected += f.next().unwrap_or(0);
            failed += f.next().unwrap_or(0);
        }
        Ok((connected, failed))
    }

    fn stop(&mut self, sent: u64) -> anyhow::Result<Vec<WorkerResult>> {
        for stdin in &mut self.stdins {
            stdin.write_all(format!("STOP {sent}\n").as_bytes())?;
        }
        let mut results = Vec::new();
        for _ in 0..self.children.len() {
            let line = self.next_line()?;
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
fn run_as_worker(args: &Args) -> anyhow::Result<()> {
    let me = args.worker_index.unwrap_or(1);
    let mut load = Load::new(args.connections)?;
    load.progress = None;
    load.connect_all(args, me, 0, args.connections)?;
    println!("READY {} {}", load.stats.connected, load.stats.failed);
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
            Err(mpsc::TryRecvError::Disconnected) => break String::new(),
        }
    };
    let sent: u64 = line.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    load.drain(sent * load.stats.connected as u64, args.max_drain)?;
    load.stopping = true;
    let pairs: Vec<String> = load
        .stats
        .hist
        .iter_recorded()
        .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
        .collect();
    let cpu_ticks = proc_cpu_ticks(std::process::id()).unwrap_or(0);
    println!(
        "RESULT {cpu_ticks} {} {} {}",
        load.stats.received,
        load.stats.closed_early,
        pairs.join(",")
    );
    Ok(())
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

/// Busy time of the given CPUs, in clock ticks: user + nice + system + irq + softirq from
/// `/proc/stat` (idle, iowait and steal left out). `None` when no CPU is given.
fn cores_busy_ticks(cpus: &[usize]) -> Option<u64> {
    if cpus.is_empty() {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut total = 0;
    for cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        total += core_busy_of(line)?;
    }
    Some(total)
}

/// user + nice + system + irq + softirq of one `cpuN` line of `/proc/stat`.
fn core_busy_of(line: &str) -> Option<u64> {
    let f: Vec<u64> = line.split_whitespace().skip(1).map_while(|x| x.parse().ok()).collect();
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
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

    #[test]
    fn core_busy_sums_user_nice_system_irq_softirq() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        assert_eq!(core_busy_of("cpu0 10 1 20 500 7 3 4 9 0 0"), Some(38));
        assert_eq!(core_busy_of("cpu0 10"), None);
    }

    #[test]
    fn frames_split_anywhere_are_counted_once() {
        let mut wire = Vec::new();
        for ts in [1_000_000u64, 2_000_000, 3_000_000] {
            let text = format!("{{\"sender\":\"p\",\"text\":\"{ts} xx\"}}");
            wire.extend_from_slice(&corecast::frame::encode_text(&text));
        }
        wire.extend_from_slice(&corecast::frame::encode_control(
            tungstenite::protocol::frame::coding::Control::Ping,
            b"hb",
        ));
        for cut in 0..wire.len() {
            let mut stats = Stats::new();
            let (mut out, mut partial) = (Vec::new(), Vec::new());
            let used = consume_frames(&wire[..cut], 5_000_000, &mut stats, &mut out);
            partial.extend_from_slice(&wire[used..cut]);
            partial.extend_from_slice(&wire[cut..]);
            let used2 = consume_frames(&partial, 5_000_000, &mut stats, &mut out);
            assert_eq!(used2, partial.len(), "cut at {cut}");
            assert_eq!(stats.received, 3, "cut at {cut}");
            assert!(stats.hist.equivalent(stats.hist.max(), 4_000), "cut at {cut}");
            assert!(stats.hist.equivalent(stats.hist.min(), 2_000), "cut at {cut}");
            assert_eq!(out[0], 0x8A, "the ping is answered with a pong (cut at {cut})");
        }
    }
}
