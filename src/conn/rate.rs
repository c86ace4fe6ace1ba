//! A connection's inbound message rate: a token bucket.
//!
//! Runs on: the connection's shard. Sans-I/O: time is passed in (milliseconds on the
//! shard's clock).
//!
//! The bucket holds up to `burst` messages and refills at `rate` per second; a message
//! that finds it empty is refused (the caller drops it and, in v1, says
//! `rate_limited`). A connection is **over** the limit from its first refused message
//! until its bucket is full again; over for longer than `close_after`, it is closed.

/// The limit's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    /// Messages per second.
    pub(crate) rate: f64,
    /// Bucket size.
    pub(crate) burst: f64,
    /// Over the limit this long → closed.
    pub(crate) close_after_ms: u64,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Pass,
    /// Drop it.
    Limited,
    /// Drop it and close the connection (1008).
    Close,
}

/// One connection's bucket.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last_ms: u64,
    over_since_ms: Option<u64>,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub(crate) fn new(limit: &RateLimit, now_ms: u64) -> TokenBucket {
        TokenBucket { tokens: limit.burst, last_ms: now_ms, over_since_ms: None }
    }

    /// Takes one message at `now_ms`.
    pub(crate) fn take(&mut self, limit: &RateLimit, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst);
        if self.tokens >= limit.burst {
            self.over_since_ms = None; // quiet long enough to refill: no longer over
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Pass;
        }
        let since = *self.over_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= limit.close_after_ms {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { rate: 100.0, burst: 200.0, close_after_ms: 10_000 };

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut b = TokenBucket::new(&LIMIT, 0);
        assert!((0..200).all(|_| b.take(&LIMIT, 0) == Verdict::Pass));
        assert_eq!(b.take(&LIMIT, 0), Verdict::Limited);
        // 10 ms later: one more token.
        assert_eq!(b.take(&LIMIT, 10), Verdict::Pass);
        assert_eq!(b.take(&LIMIT, 10), Verdict::Limited);
    }

    #[test]
    fn a_sustained_flood_is_closed_a_pause_forgives() {
        let mut b = TokenBucket::new(&LIMIT, 0);
        let mut now = 0;
        let mut verdict = Verdict::Pass;
        // 1,000 messages a second: ten times the rate.
        while verdict != Verdict::Close {
            verdict = b.take(&LIMIT, now);
            now += 1;
            assert!(now < 20_000, "never closed");
        }
        assert!((10_000..10_300).contains(&now), "closed after {now} ms");

        let mut b = TokenBucket::new(&LIMIT, 0);
        for _ in 0..201 {
            b.take(&LIMIT, 0);
        }
        // Quiet for 2 s: the bucket is full again, the client is forgiven.
        assert_eq!(b.take(&LIMIT, 2_000), Verdict::Pass);
        for _ in 0..200 {
            b.take(&LIMIT, 2_000);
        }
        assert_eq!(
            b.take(&LIMIT, 11_000),
            Verdict::Pass,
            "refilled meanwhile: forgiven, not closed"
        );
    }
}
