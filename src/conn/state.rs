//! The connection state machine, sans I/O: the close handshake, the outbound queue and
//! its limit, heartbeat deadlines, the control-frame rate limit.
//!
//! Runs on: the connection's shard, inside [`Conn`](super::Conn). No sockets and no clock:
//! every method that depends on time takes `now`, so each rule is unit-tested at exact
//! instants (the tests below). The owner of a socket (`conn::io`) asks it what to write and
//! when to close; the shard's heartbeat sweep asks it what is due.
//!
//! ```text
//!   Open ──begin_close──▶ Closing ──peer Close──▶ PeerClosed ──reply written──▶ done
//!     │                      │ close grace passes ─────────────────────────────▶ done
//!     └──peer Close (reply queued after what is queued)──▶ PeerClosed
//!   any ──abort──▶ Abort ─────────────────────────────────────────────────────▶ done
//! ```

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use crate::ws::frame::{self, SharedFrame, close_code};

use super::out_queue::OutQueue;

/// Where a connection is in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Normal operation.
    Open,
    /// We queued a Close; waiting for the client's Close (or the deadline). Inbound data
    /// is discarded, no new frames are queued.
    Closing,
    /// The client sent a Close and ours is queued: close TCP once it is written.
    PeerClosed,
    /// Close the socket now (I/O error, deadline passed, forced shutdown).
    Abort,
}

/// The one way to start a server-side close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    /// The close code sent.
    pub code: u16,
    /// The close reason sent (at most 123 bytes).
    pub reason: &'a str,
    /// Drop the frames that have not started going out (a slow consumer's backlog);
    /// otherwise the Close goes after everything already queued.
    pub discard_queued: bool,
}

impl Close<'static> {
    /// The close of a slow consumer: its backlog is dropped, 1013 follows at once.
    pub const SLOW_CONSUMER: Close<'static> = Close {
        code: close_code::TRY_AGAIN_LATER,
        reason: "slow consumer: outbound queue limit",
        discard_queued: true,
    };
}

/// The time rules of a connection (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// WebSocket Ping period; `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// How long after our Ping the Pong must arrive.
    pub pong_timeout: Duration,
    /// Period of the seed protocol's `{"type":"ping"}`; `None`: off.
    pub app_ping_interval: Option<Duration>,
    /// How long a closing client has to read our Close and answer.
    pub close_grace: Duration,
    /// Largest outbound queue, in bytes, before the client is cut off as slow.
    pub queue_limit: usize,
    /// Most Pings + Pongs a client may send in one second.
    pub max_control_frames_per_sec: usize,
}

/// What an [`enqueue`](ConnState::enqueue) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued for the socket.
    Queued,
    /// Not queued: the connection is closing.
    Closing,
    /// Not queued: it would have passed the queue limit, so the connection is now
    /// closing as a slow consumer ([`Close::SLOW_CONSUMER`]).
    CutOff,
}

/// What the heartbeat sweep must do for a connection now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatDue {
    /// The Pong did not come in time: a close (1008) was started.
    pub timed_out: bool,
    /// Queue a Ping.
    pub ping: bool,
    /// Queue the seed protocol's `{"type":"ping"}`.
    pub app_ping: bool,
}

/// Who ended a connection, and with which close code (the `connection_closed` webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client: its Close's code, or 1006 when it vanished without one.
    Client(u16),
    /// No Pong in time (the server's 1008).
    Heartbeat,
    /// The server, with this code.
    Server(u16),
}

/// Why a control frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFlood;

/// The state of one connection. Fields are private: every change goes through a method
/// that keeps the rules. `repr(C)`: the fields every queued frame touches come first.
#[derive(Debug)]
#[repr(C)]
pub struct ConnState {
    /// Frames waiting for the socket.
    out: OutQueue,
    phase: Phase,
    /// Who ended the connection (in the padding after `phase`).
    ending: Ending,
    /// When an ongoing close stops waiting for the client.
    close_deadline: Option<Instant>,
    /// When our unanswered Ping went out; `None` when none is outstanding.
    awaiting_pong_since: Option<Instant>,
    /// When the next Ping is due (`None`: pings off).
    next_ping: Option<Instant>,
    /// When the next `{"type":"ping"}` is due (`None`: off for this connection).
    next_app_ping: Option<Instant>,
    /// The second (of `now`, from the caller's origin) of the current control-frame
    /// window, and the Pings/Pongs received in it.
    control_window: (u64, u32),
}

impl ConnState {
    /// A new open connection; `app_pings` says whether it gets the seed protocol's
    /// `{"type":"ping"}` (seed clients only).
    pub fn new(now: Instant, timing: &Timing, app_pings: bool) -> ConnState {
        ConnState {
            phase: Phase::Open,
            ending: Ending::Client(close_code::ABNORMAL),
            out: OutQueue::default(),
            close_deadline: None,
            awaiting_pong_since: None,
            next_ping: timing.ping_interval.map(|d| now + d),
            next_app_ping: timing.app_ping_interval.filter(|_| app_pings).map(|d| now + d),
            control_window: (0, 0),
        }
    }

    /// Who ended the connection (so far: the client, by vanishing).
    pub fn ending(&self) -> Ending {
        self.ending
    }

    /// The close-handshake phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The outbound queue.
    pub fn out(&self) -> &OutQueue {
        &self.out
    }

    /// The outbound queue, to record writes (`advance`).
    pub fn out_mut(&mut self) -> &mut OutQueue {
        &mut self.out
    }

    /// Queues a frame that is not part of the fan-out and ignores the queue limit: the
    /// `101` response before anything else.
    pub fn push_first(&mut self, frame: Rc<SharedFrame>) {
        self.out.push(frame);
    }

    /// Queues `frame` unless the connection is closing or the frame would pass the queue
    /// limit (then the client is cut off: its backlog dropped, Close 1013 queued).
    /// `now` is read only then: this is the fan-out's per-connection path, which must not
    /// read the clock per frame.
    pub fn enqueue(
        &mut self,
        frame: &Rc<SharedFrame>,
        now: impl FnOnce() -> Instant,
        timing: &Timing,
    ) -> Enqueued {
        if self.phase != Phase::Open {
            return Enqueued::Closing;
        }
        if self.out.bytes() + frame.len() > timing.queue_limit {
            self.begin_close(Close::SLOW_CONSUMER, now(), timing.close_grace);
            return Enqueued::CutOff;
        }
        self.out.push(frame.clone());
        Enqueued::Queued
    }

    /// Starts a server-side close: Close `close.code` is queued (after what is queued,
    /// unless `discard_queued`), and the client has `grace` to read it and answer.
    /// Returns `false` (and does nothing) when a close is already under way.
    pub fn begin_close(&mut self, close: Close<'_>, now: Instant, grace: Duration) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.phase = Phase::Closing;
        self.ending = Ending::Server(close.code);
        if close.discard_queued {
            self.out.drop_unstarted();
        }
        self.out.push(Rc::new(frame::encode_close(close.code, close.reason)));
        self.close_deadline = Some(now + grace);
        true
    }

    /// The client sent a valid Close. While open, our reply (`reply_code`) is queued after
    /// what is already queued and the client has `grace` to read it; when we had already
    /// sent our Close, the handshake is complete. Returns whether a reply was queued.
    pub fn handle_peer_close(&mut self, reply_code: u16, now: Instant, grace: Duration) -> bool {
        match self.phase {
            Phase::Open => {
                self.ending = Ending::Client(reply_code);
                self.out.push(Rc::new(frame::encode_close(reply_code, "")));
                self.close_deadline = Some(now + grace);
                self.phase = Phase::PeerClosed;
                true
            }
            Phase::Closing => {
                self.phase = Phase::PeerClosed;
                false
            }
            Phase::PeerClosed | Phase::Abort => false,
        }
    }

    /// Ends the connection without a close handshake (peer gone, deadline passed, forced
    /// shutdown).
    pub fn abort(&mut self) {
        self.phase = Phase::Abort;
    }

    /// A Pong arrived: no Ping is outstanding any more.
    pub fn handle_pong(&mut self) {
        self.awaiting_pong_since = None;
    }

    /// Counts a Ping or Pong from the client in the one-second window of `now_secs`.
    ///
    /// # Errors
    /// [`ControlFlood`] past `max_control_frames_per_sec` in that window.
    pub fn count_control_frame(
        &mut self,
        now_secs: u64,
        timing: &Timing,
    ) -> Result<(), ControlFlood> {
        let (window, count) = self.control_window;
        let count = if window == now_secs { count.saturating_add(1) } else { 1 };
        self.control_window = (now_secs, count);
        if count as usize > timing.max_control_frames_per_sec {
            return Err(ControlFlood);
        }
        Ok(())
    }

    /// What the heartbeat requires at `now`: a close when the Pong is `pong_timeout` late
    /// (started here, 1008), a Ping or an app ping when one is due (the caller queues it;
    /// the next one is scheduled here).
    pub fn poll_heartbeat(&mut self, now: Instant, timing: &Timing) -> HeartbeatDue {
        let mut due = HeartbeatDue::default();
        if self.phase != Phase::Open {
            return due;
        }
        if let Some(since) = self.awaiting_pong_since {
            if now.duration_since(since) >= timing.pong_timeout {
                let close = Close {
                    code: close_code::POLICY_VIOLATION,
                    reason: "heartbeat timeout: no pong",
                    discard_queued: false,
                };
                due.timed_out = self.begin_close(close, now, timing.close_grace);
                if due.timed_out {
                    self.ending = Ending::Heartbeat;
                }
                return due;
            }
        } else if let (Some(next), Some(interval)) = (self.next_ping, timing.ping_interval)
            && now >= next
        {
            due.ping = true;
            self.awaiting_pong_since = Some(now);
            self.next_ping = Some(now + interval);
        }
        if let (Some(next), Some(interval)) = (self.next_app_ping, timing.app_ping_interval)
            && now >= next
        {
            due.app_ping = true;
            self.next_app_ping = Some(now + interval);
        }
        due
    }

    /// When an ongoing close gives up on the client.
    pub fn close_deadline(&self) -> Option<Instant> {
        self.close_deadline
    }

    /// Our last frame (a Close) is written and nothing else can be queued: time to send
    /// FIN.
    pub fn ready_to_half_close(&self) -> bool {
        matches!(self.phase, Phase::Closing | Phase::PeerClosed) && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const T: Timing = Timing {
        ping_interval: Some(Duration::from_secs(10)),
        pong_timeout: Duration::from_secs(5),
        app_ping_interval: Some(Duration::from_secs(30)),
        close_grace: Duration::from_secs(2),
        queue_limit: 100,
        max_control_frames_per_sec: 3,
    };

    fn frame(n: usize) -> Rc<SharedFrame> {
        Rc::new(Bytes::from(vec![b'x'; n]))
    }

    /// The frames still queued, as (length, first byte) pairs.
    fn queued(s: &ConnState) -> Vec<(usize, u8)> {
        let mut bytes = Vec::new();
        s.out().copy_into(&mut bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = if bytes[at] == 0x88 { 2 + bytes[at + 1] as usize } else { 10 };
            frames.push((len, bytes[at]));
            at += len;
        }
        frames
    }

    #[test]
    fn queued_frames_go_before_a_close() {
        let now = Instant::now();
        let mut s = ConnState::new(now, &T, false);
        assert_eq!(s.enqueue(&frame(10), || now, &T), Enqueued::Queued);
        assert_eq!(s.enqueue(&frame(10), || now, &T), Enqueued::Queued);
        let close = Close { code: 1001, reason: "bye", discard_queued: false };
        assert!(s.begin_close(close, now, T.close_grace));
        assert!(!s.begin_close(close, now, T.close_grace), "one close only");
        assert_eq!(s.enqueue(&frame(10), || now, &T), Enqueued::Closing);
        let frames = queued(&s);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].1, 0x88, "the Close is last");
        assert_eq!(s.phase(), Phase::Closing);
        assert!(!s.ready_to_half_close(), "not before the Close is written");
        let n = s.out().bytes();
        s.out_mut().advance(n);
        assert!(s.ready_to_half_close());
    }

    #[test]
    fn a_slow_consumers_backlog_is_discarded() {
        let now = Instant::now();
        let mut s = ConnState::new(now, &T, false);
        for _ in 0..9 {
            assert_eq!(s.enqueue(&frame(10), || now, &T), Enqueued::Queued);
        }
        s.out_mut().advance(3); // the head frame has started going out: it stays
        assert_eq!(s.enqueue(&frame(30), || now, &T), Enqueued::CutOff);
        assert_eq!(s.out().frame_count(), 2, "the started head frame and the Close");
        let mut bytes = Vec::new();
        s.out().copy_into(&mut bytes);
        assert_eq!(&bytes[..7], b"xxxxxxx", "the rest of the started frame");
        assert_eq!(bytes[7], 0x88, "then Close");
        assert_eq!(u16::from_be_bytes([bytes[9], bytes[10]]), 1013);
        assert_eq!(s.close_deadline(), Some(now + T.close_grace));
        assert_eq!(s.enqueue(&frame(1), || now, &T), Enqueued::Closing);
    }

    #[test]
    fn a_peer_close_is_answered_once() {
        let now = Instant::now();
        let mut s = ConnState::new(now, &T, false);
        s.enqueue(&frame(10), || now, &T);
        assert!(s.handle_peer_close(1000, now, T.close_grace));
        assert!(!s.handle_peer_close(1000, now, T.close_grace), "a second Close: no reply");
        assert_eq!(s.phase(), Phase::PeerClosed);
        let frames = queued(&s);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].1, 0x88, "reply after the queued frame");

        // After our own Close, the client's Close completes the handshake: no reply.
        let mut s = ConnState::new(now, &T, false);
        let close = Close { code: 1001, reason: "", discard_queued: false };
        s.begin_close(close, now, T.close_grace);
        assert!(!s.handle_peer_close(1000, now, T.close_grace));
        assert_eq!(queued(&s).len(), 1);
        assert_eq!(s.phase(), Phase::PeerClosed);
    }

    #[test]
    fn ping_then_pong_deadline_fire_at_the_right_instants() {
        let t0 = Instant::now();
        let mut s = ConnState::new(t0, &T, false);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(s.poll_heartbeat(at(9), &T), HeartbeatDue::default());
        assert!(s.poll_heartbeat(at(10), &T).ping, "ping due at the interval");
        assert_eq!(s.poll_heartbeat(at(14), &T), HeartbeatDue::default(), "pong not late yet");
        let due = s.poll_heartbeat(at(15), &T);
        assert!(due.timed_out, "pong_timeout after the ping");
        assert_eq!(s.phase(), Phase::Closing);
        assert_eq!(s.close_deadline(), Some(at(15) + T.close_grace), "close grace from then");

        // A pong in time clears the deadline; the next ping comes one interval later.
        let mut s = ConnState::new(t0, &T, false);
        assert!(s.poll_heartbeat(at(10), &T).ping);
        s.handle_pong();
        assert_eq!(s.poll_heartbeat(at(19), &T), HeartbeatDue::default());
        assert!(s.poll_heartbeat(at(20), &T).ping);
    }

    #[test]
    fn app_pings_only_when_asked() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut seed = ConnState::new(t0, &T, true);
        let mut v1 = ConnState::new(t0, &T, false);
        for s in [&mut seed, &mut v1] {
            s.poll_heartbeat(at(10), &T);
            s.handle_pong();
            s.poll_heartbeat(at(20), &T);
            s.handle_pong();
        }
        assert!(seed.poll_heartbeat(at(30), &T).app_ping);
        assert!(!v1.poll_heartbeat(at(30), &T).app_ping);
    }

    #[test]
    fn control_frames_are_rate_limited_per_second() {
        let mut s = ConnState::new(Instant::now(), &T, false);
        for _ in 0..3 {
            assert_eq!(s.count_control_frame(7, &T), Ok(()));
        }
        assert_eq!(s.count_control_frame(7, &T), Err(ControlFlood));
        assert_eq!(s.count_control_frame(8, &T), Ok(()), "a new second, a new window");
    }
}
