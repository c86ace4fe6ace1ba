//! The bridge's readiness and its link to Redis, decided sans I/O: when the bridge is
//! ready, when it is declared not ready, when it forces a reconnect, when it beats, and
//! which connection errors are logged.
//!
//! Runs on: the bridge thread, owned by the bridge's loop (`run`), which feeds it what it
//! hears and asks it at each heartbeat tick (every `heartbeat_interval`). Pure: no I/O, no
//! clock (`now` is an argument); the loop's shell (`link`) publishes the heartbeat, forces
//! the reconnect and tells the shards. fred reconnects by itself, with its own backoff
//! (`settings`).
//!
//! - **Ready** while both connections are up and what the node publishes to its own
//!   heartbeat channel — or any other message: under load the heartbeat waits behind
//!   them — came back within `heartbeat_timeout`. **Not ready** at start, as soon as a
//!   connection is down, and once the silence reaches the timeout: publishes stay on this
//!   node, `/readyz` says 503, v1 clients are told `degraded` (then `restored`).
//! - **Forced reconnect**: connected but silent for `heartbeat_timeout` (a frozen Redis or
//!   a dropped link raises no error on a subscribe-only connection); then again after
//!   each further timeout of silence. A connection that is down is fred's to reconnect:
//!   the silence counts from when it is back.
//! - **Heartbeats** (the node's through Redis, its users' counts) at every tick while
//!   connected.
//! - **Connection errors**: fred retries every second while Redis is away; each different
//!   reason is logged once ([`ErrorLog`]), and again after the subscriber reconnected.

use std::time::{Duration, Instant};

/// Decides the bridge's readiness from what comes back through Redis. See the module
/// docs.
#[derive(Debug)]
pub(super) struct Readiness {
    timeout: Duration,
    /// When the heartbeat (or any message) last came back (`None`: never yet).
    last_heard: Option<Instant>,
    /// When a reconnect was last forced (`None`: never) or the silence started.
    silence_since: Option<Instant>,
    /// What the node was last told (not ready at start).
    ready: bool,
}

/// What the bridge does at one heartbeat tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tick {
    /// Both connections are up.
    pub(super) connected: bool,
    /// The readiness changed to this: log it, publish it in the stats, tell every shard.
    pub(super) became: Option<bool>,
    /// Force both connections to reconnect.
    pub(super) force_reconnect: bool,
    /// Send the heartbeats now (the node's through Redis, its users' counts).
    pub(super) beat: bool,
}

impl Readiness {
    /// Not ready; ready once something comes back within `timeout`.
    pub(super) fn new(timeout: Duration) -> Readiness {
        Readiness { timeout, last_heard: None, silence_since: None, ready: false }
    }

    /// Not ready, and a forced reconnect, after this long without the heartbeat.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Something came back through Redis at `now` (the heartbeat, or any message).
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.silence_since = None;
    }

    /// The heartbeat tick at `now`, with each connection's state.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        subscriber_connected: bool,
        publisher_connected: bool,
    ) -> Tick {
        let connected = subscriber_connected && publisher_connected;
        let (ready, force_reconnect) = self.verdict(now, connected);
        let became = (ready != self.ready).then_some(ready);
        self.ready = ready;
        Tick { connected, became, force_reconnect, beat: connected }
    }

    /// Whether the bridge is ready at `now`, and whether to force a reconnect.
    fn verdict(&mut self, now: Instant, connected: bool) -> (bool, bool) {
        if !connected {
            // fred is reconnecting already; count the silence from when it is back.
            self.silence_since = None;
            return (false, false);
        }
        if self.last_heard.is_some_and(|t| now.duration_since(t) < self.timeout) {
            return (true, false);
        }
        let since = *self.silence_since.get_or_insert(now);
        let force = now.duration_since(since) >= self.timeout;
        if force {
            self.silence_since = Some(now);
        }
        (false, force)
    }
}

/// Which connection errors are logged: each different reason once, in a row, across both
/// connections; the same reason again after the subscriber reconnected.
#[derive(Debug, Default)]
pub(super) struct ErrorLog {
    /// The last reason logged.
    last: String,
}

impl ErrorLog {
    /// A connection error for `reason`: whether to log it.
    pub(super) fn is_new(&mut self, reason: &str) -> bool {
        if reason == self.last {
            return false;
        }
        reason.clone_into(&mut self.last);
        true
    }

    /// The subscriber connected (again): the next error is logged whatever its reason.
    pub(super) fn reconnected(&mut self) {
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(ready: Option<bool>, force_reconnect: bool) -> Tick {
        Tick { connected: true, became: ready, force_reconnect, beat: true }
    }

    #[test]
    fn ready_needs_the_heartbeat_and_a_silence_forces_a_reconnect() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = Readiness::new(Duration::from_millis(1500));
        assert_eq!(r.timeout(), Duration::from_millis(1500));
        assert_eq!(r.tick(ms(0), true, true), tick(None, false), "no heartbeat yet");
        r.heard(ms(100));
        assert_eq!(r.tick(ms(200), true, true), tick(Some(true), false));
        assert_eq!(r.tick(ms(300), true, true), tick(None, false), "told once");
        assert_eq!(r.tick(ms(1700), true, true), tick(Some(false), false), "silent: not ready");
        assert_eq!(r.tick(ms(3100), true, true), tick(None, false));
        assert_eq!(r.tick(ms(3200), true, true), tick(None, true), "silent for the timeout");
        assert_eq!(r.tick(ms(3400), true, true), tick(None, false), "one reconnect per timeout");
        assert_eq!(r.tick(ms(4700), true, true), tick(None, true), "and one more after another");
        let down = Tick { connected: false, became: None, force_reconnect: false, beat: false };
        assert_eq!(r.tick(ms(4800), false, true), down, "disconnected: fred reconnects");
        r.heard(ms(4900));
        assert_eq!(r.tick(ms(5000), true, true), tick(Some(true), false));
    }

    #[test]
    fn a_connection_down_is_not_ready_at_once_and_the_silence_counts_from_its_return() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = Readiness::new(Duration::from_millis(1000));
        r.heard(ms(0));
        assert_eq!(r.tick(ms(100), true, true).became, Some(true));
        let down = r.tick(ms(200), true, false);
        assert_eq!(down.became, Some(false), "the publisher is down");
        assert!(!down.beat && !down.connected);
        assert!(!r.tick(ms(1500), true, false).force_reconnect);
        // Back, but nothing heard since: the silence starts now.
        assert_eq!(r.tick(ms(2000), true, true), tick(None, false));
        assert_eq!(r.tick(ms(2900), true, true), tick(None, false));
        assert_eq!(r.tick(ms(3000), true, true), tick(None, true));
    }

    #[test]
    fn each_connection_error_is_logged_once_until_the_subscriber_reconnects() {
        let mut log = ErrorLog::default();
        assert!(log.is_new("refused"));
        assert!(!log.is_new("refused"));
        assert!(log.is_new("timeout"));
        assert!(log.is_new("refused"), "a different reason in between");
        log.reconnected();
        assert!(log.is_new("refused"));
    }
}
