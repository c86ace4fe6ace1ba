//! The bridge's readiness from its heartbeat through Redis: ready while what it publishes
//! to its own channel comes back in time, and a forced reconnect after a silence.
//!
//! Runs on: the bridge thread, owned by the bridge's loop (`run`), which feeds it what it
//! hears and asks it at each heartbeat tick. Pure: no I/O, no clock (`now` is an
//! argument); the loop publishes the heartbeat and forces the reconnect.

use std::time::{Duration, Instant};

/// Decides readiness from what comes back through Redis: the node's own heartbeat (every
/// `heartbeat_interval`), or any other message (under load the heartbeat waits behind
/// them). Pure: the clock is an argument.
#[derive(Debug)]
pub(super) struct Watchdog {
    timeout: Duration,
    /// When the heartbeat last came back (`None`: never yet).
    last_heard: Option<Instant>,
    /// When a reconnect was last forced (`None`: never) or the silence started.
    silence_since: Option<Instant>,
}

/// What the watchdog says at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) ready: bool,
    pub(super) force_reconnect: bool,
}

impl Watchdog {
    pub(super) fn new(timeout: Duration) -> Watchdog {
        Watchdog { timeout, last_heard: None, silence_since: None }
    }

    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.silence_since = None;
    }

    pub(super) fn check(&mut self, now: Instant, connected: bool) -> Verdict {
        let fresh = self.last_heard.is_some_and(|t| now.duration_since(t) < self.timeout);
        if !connected {
            // fred is reconnecting already; count the silence from when it is back.
            self.silence_since = None;
            return Verdict { ready: false, force_reconnect: false };
        }
        if fresh {
            return Verdict { ready: true, force_reconnect: false };
        }
        let since = *self.silence_since.get_or_insert(now);
        let force = now.duration_since(since) >= self.timeout;
        if force {
            self.silence_since = Some(now);
        }
        Verdict { ready: false, force_reconnect: force }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_needs_the_heartbeat_and_forces_a_reconnect_on_silence() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Watchdog::new(Duration::from_millis(1500));
        let not_ready = Verdict { ready: false, force_reconnect: false };
        assert_eq!(w.check(ms(0), true), not_ready, "no heartbeat yet");
        w.heard(ms(100));
        assert_eq!(w.check(ms(200), true), Verdict { ready: true, force_reconnect: false });
        assert_eq!(w.check(ms(1700), true), not_ready, "silent: not ready at once");
        assert_eq!(w.check(ms(3100), true), not_ready);
        assert_eq!(w.check(ms(3200), true), Verdict { ready: false, force_reconnect: true });
        assert_eq!(w.check(ms(3400), true), not_ready, "one forced reconnect per timeout");
        assert_eq!(w.check(ms(3500), false), not_ready, "disconnected: fred reconnects");
        w.heard(ms(3600));
        assert_eq!(w.check(ms(3700), true), Verdict { ready: true, force_reconnect: false });
    }
}
