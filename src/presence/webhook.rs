//! Webhooks to the app backend: the events, their signature, the delay that keeps
//! reconnects from flapping, and the retry schedule.
//!
//! Runs on: any thread (pure: no I/O, the clock is an argument). Shards make
//! `connection_closed` events and offer them to the node's [`WebhookQueue`]; the presence
//! owner makes the channel and member events; `presence::dispatch` sends them.
//!
//! Each request is `POST` with `{"events":[...]}` and the header
//! `X-Corecast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! (PROTOCOL.md shows how to verify it).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{conn::state::Ending, stats::NodeStats};

/// Most events in one request.
pub(crate) const MAX_BATCH: usize = 50;
/// Longest an event waits for its batch to fill.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(500);
/// Most attempts of one batch per receiver (the first and the retries).
pub(crate) const MAX_ATTEMPTS: u32 = 6;
/// A batch older than this is not retried any more.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(120);
/// The first retry's wait; each next one waits twice as long.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventName {
    /// A topic got its first member, cluster-wide.
    ChannelOccupied,
    /// A topic's last member left, cluster-wide (after the vacate delay).
    ChannelVacated,
    /// A user's first connection subscribed to a topic, cluster-wide.
    MemberAdded,
    /// A user's last connection subscribed to a topic is gone, cluster-wide (after the
    /// vacate delay).
    MemberRemoved,
    /// A connection closed (sent by the node it was on).
    ConnectionClosed,
}

/// Why a connection closed, as `connection_closed` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CloseReason {
    /// The client closed, or vanished (its socket failed).
    Client,
    /// No Pong in time.
    Heartbeat,
    /// Its outbound queue passed the limit (1013).
    SlowConsumer,
    /// It broke the protocol (1002, 1003, 1007, 1009).
    Protocol,
    /// The node is draining (shutdown).
    Shutdown,
    /// The server ended it: an API disconnect, token expiry, a rate limit.
    Server,
}

impl CloseReason {
    /// The code and reason of a connection that ended as `ending` says.
    pub(crate) fn of(ending: Ending) -> (u16, CloseReason) {
        use crate::ws::frame::close_code;
        match ending {
            Ending::Client(code) => (code, CloseReason::Client),
            Ending::Heartbeat => (close_code::POLICY_VIOLATION, CloseReason::Heartbeat),
            Ending::Server(code) => (
                code,
                match code {
                    close_code::TRY_AGAIN_LATER => CloseReason::SlowConsumer,
                    1002 | 1003 | 1007 | 1009 => CloseReason::Protocol,
                    close_code::GOING_AWAY | close_code::SERVICE_RESTART => CloseReason::Shutdown,
                    _ => CloseReason::Server,
                },
            ),
        }
    }
}

/// One webhook event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct WebhookEvent {
    /// What happened.
    pub name: EventName,
    /// When the server saw it, Unix milliseconds.
    pub time_ms: u64,
    /// The topic (channel and member events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The user (member events, `connection_closed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node (`connection_closed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The close code (`connection_closed`; 1005 when the client sent none, 1006 when it
    /// vanished).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Why (`connection_closed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<CloseReason>,
}

impl WebhookEvent {
    /// A channel or member event.
    pub(crate) fn presence(
        name: EventName,
        topic: &str,
        user: Option<&str>,
        time_ms: u64,
    ) -> WebhookEvent {
        WebhookEvent {
            name,
            time_ms,
            topic: Some(topic.to_owned()),
            user: user.map(str::to_owned),
            node: None,
            code: None,
            reason: None,
        }
    }

    /// A `connection_closed` event.
    pub(crate) fn closed(
        user: &str,
        node: &str,
        code: u16,
        reason: CloseReason,
        time_ms: u64,
    ) -> WebhookEvent {
        WebhookEvent {
            name: EventName::ConnectionClosed,
            time_ms,
            topic: None,
            user: Some(user.to_owned()),
            node: Some(node.to_owned()),
            code: Some(code),
            reason: Some(reason),
        }
    }

    /// The delayed event this one cancels, or the one that cancels it: a vacate and an
    /// occupy of one topic, a member's removal and addition.
    fn pair_key(&self) -> Option<(bool, String)> {
        let topic = self.topic.as_deref()?;
        match self.name {
            EventName::ChannelOccupied | EventName::ChannelVacated => {
                Some((false, topic.to_owned()))
            }
            EventName::MemberAdded | EventName::MemberRemoved => {
                Some((true, format!("{topic}|{}", self.user.as_deref().unwrap_or_default())))
            }
            EventName::ConnectionClosed => None,
        }
    }

    fn is_delayed(&self) -> bool {
        matches!(self.name, EventName::ChannelVacated | EventName::MemberRemoved)
    }
}

/// The webhook events of one membership transition, in order: `channel_occupied`,
/// `member_added`, `member_removed`, `channel_vacated`.
pub(crate) fn transition_events(
    topic: &str,
    user: &str,
    t: super::Transition,
    time_ms: u64,
) -> Vec<WebhookEvent> {
    let mut out = Vec::new();
    let mut add = |happened: bool, name, user| {
        if happened {
            out.push(WebhookEvent::presence(name, topic, user, time_ms));
        }
    };
    add(t.occupied, EventName::ChannelOccupied, None);
    add(t.joined, EventName::MemberAdded, Some(user));
    add(t.left, EventName::MemberRemoved, Some(user));
    add(t.vacated, EventName::ChannelVacated, None);
    out
}

/// A request body: `{"events":[...]}`.
pub(crate) fn body(events: &[WebhookEvent]) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        events: &'a [WebhookEvent],
    }
    serde_json::to_string(&Body { events }).unwrap_or_default()
}

/// The `X-Corecast-Signature` value of `body` sent at `t` (Unix seconds).
pub(crate) fn signature(secret: &[u8], t: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let tag = ctx.sign();
    let mut hex = String::with_capacity(64);
    for byte in tag.as_ref() {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("t={t},v1={hex}")
}

/// Holds `channel_vacated` and `member_removed` for the vacate delay and drops them, with
/// the `channel_occupied` / `member_added` that cancels them, when the channel or member
/// comes back in time: a reconnect does not flap. (With Redis the same rule is applied
/// cluster-wide in Redis; this one serves the embedded bus.)
#[derive(Debug)]
pub(crate) struct Debouncer {
    delay: Duration,
    held: HashMap<(bool, String), (Instant, WebhookEvent)>,
    /// Keys by due time (a key cancelled meanwhile is skipped).
    order: VecDeque<(Instant, (bool, String))>,
}

impl Debouncer {
    /// Holds removals for `delay`.
    pub(crate) fn new(delay: Duration) -> Debouncer {
        Debouncer { delay, held: HashMap::new(), order: VecDeque::new() }
    }

    /// An event happened at `now`: returns it when it goes out at once; a delayed one is
    /// held, and an addition that cancels a held removal goes nowhere (neither does the
    /// removal).
    pub(crate) fn offer(&mut self, event: WebhookEvent, now: Instant) -> Option<WebhookEvent> {
        let Some(key) = event.pair_key() else { return Some(event) };
        if event.is_delayed() {
            let due = now + self.delay;
            self.order.push_back((due, key.clone()));
            self.held.insert(key, (due, event));
            return None;
        }
        if self.held.remove(&key).is_some() {
            return None;
        }
        Some(event)
    }

    /// The held events whose delay has passed, oldest first.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<WebhookEvent> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.order.front() {
            if *due > now {
                break;
            }
            let Some((due, key)) = self.order.pop_front() else { break };
            // Still held, and by this entry (not a later removal of the same key).
            if self.held.get(&key).is_some_and(|(d, _)| *d == due)
                && let Some((_, event)) = self.held.remove(&key)
            {
                out.push(event);
            }
        }
        out
    }

    /// Events held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// When the next held event is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.order.front().map(|(due, _)| *due)
    }
}

/// How long to wait before attempt `attempt` (2, 3, ...) of a batch first tried at
/// `first`; `None` when it must not be retried any more (attempts or age used up).
pub(crate) fn retry_after(attempt: u32, first: Instant, now: Instant) -> Option<Duration> {
    if attempt > MAX_ATTEMPTS {
        return None;
    }
    let wait = FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(2));
    (now + wait).duration_since(first).le(&MAX_AGE).then_some(wait)
}

/// Whether an answer's status asks for a retry (5xx, 408, 429); other failures are final.
pub(crate) fn is_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// The node's way to the webhook dispatcher: bounded, never waits. Events that find it
/// full are dropped and counted.
#[derive(Debug, Clone)]
pub(crate) struct WebhookQueue {
    tx: flume::Sender<WebhookEvent>,
    stats: Arc<NodeStats>,
}

impl WebhookQueue {
    /// A queue of `capacity` events, and the dispatcher's end.
    pub(crate) fn new(
        capacity: usize,
        stats: Arc<NodeStats>,
    ) -> (WebhookQueue, flume::Receiver<WebhookEvent>) {
        let (tx, rx) = flume::bounded(capacity);
        (WebhookQueue { tx, stats }, rx)
    }

    /// Queues `event`, or drops and counts it when the queue is full.
    pub(crate) fn offer(&self, event: WebhookEvent) {
        let counters = &self.stats.webhooks;
        if self.tx.try_send(event).is_ok() {
            counters.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vacated(topic: &str) -> WebhookEvent {
        WebhookEvent::presence(EventName::ChannelVacated, topic, None, 1)
    }
    fn occupied(topic: &str) -> WebhookEvent {
        WebhookEvent::presence(EventName::ChannelOccupied, topic, None, 2)
    }

    #[test]
    fn a_vacate_waits_and_a_return_in_time_cancels_both() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_secs(3));
        assert_eq!(d.offer(occupied("a"), t0), Some(occupied("a")));
        assert_eq!(d.offer(vacated("a"), t0), None);
        // Back within the delay: neither the vacate nor the second occupy goes out.
        assert_eq!(d.offer(occupied("a"), t0 + Duration::from_secs(1)), None);
        assert!(d.due(t0 + Duration::from_secs(10)).is_empty());
        // Gone for good: the vacate goes out once its delay has passed.
        assert_eq!(d.offer(vacated("a"), t0 + Duration::from_secs(11)), None);
        assert_eq!(d.next_due(), Some(t0 + Duration::from_secs(14)));
        assert!(d.due(t0 + Duration::from_secs(13)).is_empty());
        assert_eq!(d.due(t0 + Duration::from_secs(14)), vec![vacated("a")]);
        // Members are paired by topic and user.
        let removed = WebhookEvent::presence(EventName::MemberRemoved, "a", Some("ann"), 3);
        let added = WebhookEvent::presence(EventName::MemberAdded, "a", Some("bob"), 4);
        assert_eq!(d.offer(removed.clone(), t0), None);
        assert_eq!(d.offer(added.clone(), t0), Some(added));
        assert_eq!(d.due(t0 + Duration::from_secs(3)), vec![removed]);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = signature(b"Jefe", 0, "what do ya want for nothing?");
        // The signed text is "0.what do ya want for nothing?", so compare with ring directly.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"0.what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sig, format!("t=0,v1={hex}"));
        assert_eq!(hex.len(), 64);
    }

    #[test]
    fn retries_back_off_and_stop() {
        let t0 = Instant::now();
        assert_eq!(retry_after(2, t0, t0), Some(Duration::from_millis(500)));
        assert_eq!(retry_after(3, t0, t0), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(MAX_ATTEMPTS + 1, t0, t0), None);
        assert_eq!(retry_after(2, t0, t0 + MAX_AGE), None);
        assert!(is_retryable(500) && is_retryable(429) && !is_retryable(400) && !is_retryable(200));
    }

    #[test]
    fn close_reasons_follow_the_close_code() {
        assert_eq!(CloseReason::of(Ending::Client(1006)), (1006, CloseReason::Client));
        assert_eq!(CloseReason::of(Ending::Heartbeat), (1008, CloseReason::Heartbeat));
        assert_eq!(CloseReason::of(Ending::Server(1013)), (1013, CloseReason::SlowConsumer));
        assert_eq!(CloseReason::of(Ending::Server(1009)).1, CloseReason::Protocol);
        assert_eq!(CloseReason::of(Ending::Server(1001)).1, CloseReason::Shutdown);
        assert_eq!(CloseReason::of(Ending::Server(4001)).1, CloseReason::Server);
        let body = body(&[WebhookEvent::closed("ann", "n1", 1006, CloseReason::Client, 5)]);
        assert_eq!(
            body,
            r#"{"events":[{"name":"connection_closed","time_ms":5,"user":"ann","node":"n1","code":1006,"reason":"client"}]}"#
        );
    }
}
