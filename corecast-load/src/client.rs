//! This process's client sockets and the one epoll loop (mio, edge-triggered) that
//! serves them: connect, upgrade, publish, receive, answer pings, count and time every
//! delivery.
//!
//! Runs on: the load tool's single thread (pinned with `--cpu`).

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, net::TcpStream};

use crate::Args;

/// Publish-to-receive latencies in microseconds (HDR, 3 significant digits, up to 1 hour).
pub(crate) type Histogram = hdrhistogram::Histogram<u64>;

pub(crate) fn new_histogram() -> Histogram {
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
pub(crate) struct Stats {
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    /// The first connection error, shown once.
    pub(crate) first_error: Option<String>,
    pub(crate) received: u64,
    pub(crate) sent: u64,
    pub(crate) closed_early: usize,
    pub(crate) hist: Histogram,
}

impl Stats {
    pub(crate) fn new() -> Stats {
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
pub(crate) struct Load {
    pub(crate) poll: Poll,
    pub(crate) events: Events,
    /// Indexed by token; `None` once closed.
    conns: Vec<Option<Conn>>,
    /// Tokens whose `out` is not empty.
    pub(crate) pending_out: Vec<usize>,
    pub(crate) scratch: Vec<u8>,
    pub(crate) stats: Stats,
    /// Set when the run is over: closes are no longer counted as early.
    pub(crate) stopping: bool,
    /// Every process's connections together (for the progress line).
    pub(crate) total_conns: usize,
    /// Connections the server ended (a Close frame or EOF) while the run was not
    /// stopping, and when; kept only after [`record_ends`](Self::record_ends) (the
    /// reconnect-storm scenario reconnects them).
    ended_by_server: Option<Vec<Instant>>,
    progress: Option<Progress>,
}

/// The terminal progress line (only when stderr is a terminal).
struct Progress {
    phase: &'static str,
    last: Instant,
    last_received: u64,
}

impl Load {
    pub(crate) fn new(total_conns: usize) -> io::Result<Load> {
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
            ended_by_server: None,
            progress,
        })
    }

    /// Opens `publishers` + `receivers` connections, `--connect-concurrency` handshakes
    /// at a time: connect and send the upgrade request for a batch, then read the batch's
    /// responses (blocking, bounded by a timeout). Publishers take tokens 0.. so they
    /// can be found again.
    pub(crate) fn connect_all(
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
                // Publishers on the first node; receivers over all of them in turn.
                let index = first + k;
                let addr = match index.checked_sub(publishers) {
                    None => args.addr[0],
                    Some(receiver) => args.addr[(receiver + me) % args.addr.len()],
                };
                match send_upgrade(addr, source, user) {
                    Ok(s) => started.push(s),
                    Err(e) => self.connect_failed(&e),
                }
            }
            for stream in started {
                match read_upgrade_response(stream) {
                    Ok((stream, leftover)) => {
                        self.adopt(stream, leftover)?;
                        self.stats.connected += 1;
                    }
                    Err(e) => self.connect_failed(&e),
                }
            }
            self.tick_progress();
        }
        Ok(())
    }

    /// Serves an upgraded connection from now on; `leftover` is what was read past the
    /// upgrade response (the first frames).
    fn adopt(&mut self, stream: std::net::TcpStream, leftover: Vec<u8>) -> io::Result<()> {
        let token = self.conns.len();
        let mut stream = TcpStream::from_std(stream);
        self.poll.registry().register(&mut stream, Token(token), Interest::READABLE)?;
        self.conns.push(Some(Conn { stream, partial: leftover, out: Vec::new(), retry: false }));
        Ok(())
    }

    pub(crate) fn connect_failed(&mut self, e: &io::Error) {
        self.stats.failed += 1;
        self.stats.first_error.get_or_insert_with(|| e.to_string());
    }

    /// Serves every socket until `deadline` passes.
    pub(crate) fn serve_for(&mut self, d: Duration) -> io::Result<()> {
        let deadline = Instant::now() + d;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.turn(left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// The publishers send `--rate` messages/s in total for `--duration` (open loop: each
    /// message goes out when due, whatever the server does), while every socket is served.
    pub(crate) fn publish(&mut self, args: &Args, started: Instant) -> io::Result<()> {
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
    pub(crate) fn drain(&mut self, expected: u64, max_drain: f64) -> io::Result<()> {
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
    pub(crate) fn turn(&mut self, timeout: Duration) -> io::Result<()> {
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
    pub(crate) fn read_ready(&mut self, token: usize) {
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
            let mut closing = false;
            if conn.partial.is_empty() {
                let scratch = &self.scratch[..n];
                let used =
                    consume_frames(scratch, now, &mut self.stats, &mut conn.out, &mut closing);
                conn.partial.extend_from_slice(&self.scratch[used..n]);
            } else {
                conn.partial.extend_from_slice(&self.scratch[..n]);
                let partial = &conn.partial;
                let used =
                    consume_frames(partial, now, &mut self.stats, &mut conn.out, &mut closing);
                conn.partial.drain(..used);
            }
            if !conn.out.is_empty() {
                self.write_to(token, &[]);
            }
            if closing {
                // The server's Close was answered (in `out`): the connection is over.
                return self.close(token);
            }
            if n < self.scratch.len() {
                return;
            }
        }
    }

    /// Appends `bytes` to the socket's pending output and writes what it takes.
    /// False when the connection is closed.
    pub(crate) fn write_to(&mut self, token: usize, bytes: &[u8]) -> bool {
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

    pub(crate) fn close(&mut self, token: usize) {
        if let Some(mut conn) = self.conns.get_mut(token).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if !self.stopping {
                self.stats.closed_early += 1;
                if let Some(ended) = self.ended_by_server.as_mut() {
                    ended.push(Instant::now());
                }
            }
        }
    }

    /// Opens `users` to `addr` like [`connect_all`](Self::connect_all) (blocking
    /// handshakes, `connect_concurrency` at a time); returns how many succeeded.
    pub(crate) fn reconnect(
        &mut self,
        args: &Args,
        addr: SocketAddr,
        users: &[String],
    ) -> io::Result<usize> {
        let mut opened = 0;
        for batch in users.chunks(args.connect_concurrency.max(1)) {
            let started: Vec<_> = batch
                .iter()
                .filter_map(|user| {
                    send_upgrade(addr, None, user).map_err(|e| self.connect_failed(&e)).ok()
                })
                .collect();
            for stream in started {
                match read_upgrade_response(stream) {
                    Ok((stream, leftover)) => {
                        self.adopt(stream, leftover)?;
                        opened += 1;
                    }
                    Err(e) => self.connect_failed(&e),
                }
            }
        }
        Ok(opened)
    }

    /// Keeps when the server ends each connection, for [`take_ended`](Self::take_ended).
    pub(crate) fn record_ends(&mut self) {
        self.ended_by_server.get_or_insert_with(Vec::new);
    }

    /// The connections the server ended since the last call (see `record_ends`).
    pub(crate) fn take_ended(&mut self) -> Vec<Instant> {
        self.ended_by_server.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Stops the terminal progress line (worker processes print protocol lines only).
    pub(crate) fn quiet(&mut self) {
        self.progress = None;
    }

    pub(crate) fn set_phase(&mut self, phase: &'static str) {
        if let Some(p) = self.progress.as_mut() {
            p.phase = phase;
        }
    }

    pub(crate) fn tick_progress(&mut self) {
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

    pub(crate) fn end_progress_line(&self) {
        if self.progress.is_some() {
            eprintln!();
        }
    }
}

/// Handles every complete frame at the start of `buf`; returns the bytes they took.
/// Text frames count as deliveries (with latency, when they carry a send time); pings
/// are answered into `out`.
/// A Close from the server is answered with the same code and sets `closing`.
fn consume_frames(
    buf: &[u8],
    now: u64,
    stats: &mut Stats,
    out: &mut Vec<u8>,
    closing: &mut bool,
) -> usize {
    let mut at = 0;
    while let Some((opcode, payload, used)) = corecast::testing::decode_unmasked(&buf[at..]) {
        let payload = &buf[at..][payload];
        match opcode {
            0x1 => {
                if let Some(ts) = timestamp_of(payload) {
                    stats.hist.saturating_record((now.saturating_sub(ts) / 1000).max(1));
                    stats.received += 1;
                }
            }
            0x9 => client_frame(out, 0xA, payload),
            0x8 => {
                client_frame(out, 0x8, payload.get(..2).unwrap_or_default());
                *closing = true;
                at += used;
                break;
            }
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
    corecast::testing::encode_masked(out, opcode, true, payload, [0x12, 0x34, 0x56, 0x78]);
}

/// Wall-clock nanoseconds: send times cross process boundaries in a multi-process run.
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_extraction() {
        assert_eq!(timestamp_of(br#"{"sender":"p","text":"12345 xxxx"}"#), Some(12345));
        assert_eq!(timestamp_of(br#"{"sender": "p", "text": "678 xx"}"#), Some(678));
        assert_eq!(timestamp_of(br#"{"type":"ping"}"#), None);
    }

    #[test]
    fn frames_split_anywhere_are_counted_once() {
        let mut wire = Vec::new();
        for ts in [1_000_000u64, 2_000_000, 3_000_000] {
            let text = format!("{{\"sender\":\"p\",\"text\":\"{ts} xx\"}}");
            wire.extend_from_slice(&corecast::testing::encode_text(&text));
        }
        // A Ping with the payload "hb", as a server sends it (unmasked).
        wire.extend_from_slice(&[0x89, 0x02, b'h', b'b']);
        for cut in 0..wire.len() {
            let mut stats = Stats::new();
            let (mut out, mut partial) = (Vec::new(), Vec::new());
            let used = consume_frames(&wire[..cut], 5_000_000, &mut stats, &mut out, &mut false);
            partial.extend_from_slice(&wire[used..cut]);
            partial.extend_from_slice(&wire[cut..]);
            let used2 = consume_frames(&partial, 5_000_000, &mut stats, &mut out, &mut false);
            assert_eq!(used2, partial.len(), "cut at {cut}");
            assert_eq!(stats.received, 3, "cut at {cut}");
            assert!(stats.hist.equivalent(stats.hist.max(), 4_000), "cut at {cut}");
            assert!(stats.hist.equivalent(stats.hist.min(), 2_000), "cut at {cut}");
            assert_eq!(out[0], 0x8A, "the ping is answered with a pong (cut at {cut})");
        }
    }
}
