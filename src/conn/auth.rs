//! What one connection may do, and until when: its token's expiry and permissions, the
//! topics subscription tokens granted it, and the expiry warning.
//!
//! Runs on: the connection's shard. Sans-I/O: time is passed in (Unix milliseconds, the
//! clock tokens are written in), and the caller sends the frames the answers ask for.
//! A connection with no rules to apply (authentication off, default permissions open)
//! has no `ConnAuth` at all.

use crate::auth::{Identity, Permissions};

/// Something a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action<'a> {
    /// Subscribe to, or read the history of, a topic.
    Subscribe(&'a str),
    /// Publish on a topic.
    Publish(&'a str),
    /// Broadcast (v1 `broadcast` or seed-mode text).
    Broadcast,
    /// Send a direct message.
    Direct,
}

/// What the expiry check asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryStep {
    /// Nothing.
    Nothing,
    /// Tell a v1 client `{"type":"token_expired"}` (once).
    Warn,
    /// Close with 1008 "token expired".
    Close,
}

/// Most topics one connection may hold through subscription tokens.
pub(crate) const MAX_GRANTED_TOPICS: usize = crate::protocol::limits::MAX_TOPICS_PER_CONN;

/// One connection's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnAuth {
    /// The token's `exp` in Unix seconds (`u64::MAX` without a token).
    exp: u64,
    permissions: Permissions,
    /// Topics granted by subscription tokens (beyond `permissions`), with the token's
    /// `exp` (Unix seconds).
    granted: Vec<(Box<str>, u64)>,
    /// `token_expired` was sent (v1), the close is due at the end of the grace.
    warned: bool,
}

/// Why a refresh was refused (the connection keeps its old token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StaleToken;

impl ConnAuth {
    /// The rules of a token holder.
    pub(crate) fn with_token(identity: Identity) -> ConnAuth {
        ConnAuth::new(identity.exp, identity.permissions)
    }

    /// The rules of a connection without a token (authentication off, default closed).
    pub(crate) fn without_token(permissions: Permissions) -> ConnAuth {
        ConnAuth::new(u64::MAX, permissions)
    }

    fn new(exp: u64, permissions: Permissions) -> ConnAuth {
        ConnAuth { exp, permissions, granted: Vec::new(), warned: false }
    }

    /// Whether `action` is allowed.
    pub(crate) fn permits(&self, action: Action<'_>) -> bool {
        match action {
            Action::Subscribe(topic) => {
                self.permissions.may_subscribe(topic)
                    || self.granted.iter().any(|(t, _)| **t == *topic)
            }
            Action::Publish(topic) => self.permissions.may_publish(topic),
            Action::Broadcast => self.permissions.may_broadcast(),
            Action::Direct => self.permissions.may_direct(),
        }
    }

    /// Records that a subscription token granted `topic` until `exp` (a later token for
    /// the same topic extends it). `false` when the connection already holds
    /// [`MAX_GRANTED_TOPICS`] grants.
    pub(crate) fn grant(&mut self, topic: &str, exp: u64) -> bool {
        if let Some((_, until)) = self.granted.iter_mut().find(|(t, _)| **t == *topic) {
            *until = (*until).max(exp);
            return true;
        }
        if self.granted.len() >= MAX_GRANTED_TOPICS {
            return false;
        }
        self.granted.push((topic.into(), exp));
        true
    }

    /// Removes and returns the grants whose token expired by `now_ms` (Unix ms) for
    /// topics the connection's own permissions do not cover: their subscriptions end.
    pub(crate) fn take_expired_grants(&mut self, now_ms: u64) -> Vec<Box<str>> {
        let expired = |exp: u64| now_ms >= exp.saturating_add(1).saturating_mul(1000);
        if !self.granted.iter().any(|(_, exp)| expired(*exp)) {
            return Vec::new();
        }
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.granted).into_iter().partition(|(_, exp)| expired(*exp));
        self.granted = kept;
        gone.into_iter()
            .map(|(topic, _)| topic)
            .filter(|topic| !self.permissions.may_subscribe(topic))
            .collect()
    }

    /// Takes a refreshed token (already verified for this connection's user): it must
    /// expire later than the current one. Its permissions replace the old ones; topics
    /// granted by subscription tokens stay granted.
    ///
    /// # Errors
    /// [`StaleToken`] when it does not expire later.
    pub(crate) fn refresh(&mut self, identity: Identity) -> Result<u64, StaleToken> {
        if identity.exp <= self.exp {
            return Err(StaleToken);
        }
        self.exp = identity.exp;
        self.permissions = identity.permissions;
        self.warned = false;
        Ok(self.exp)
    }

    /// The expiry rules at `now_ms` (Unix milliseconds). A token is valid through its
    /// `exp` second. A v1 client is warned once when it has expired, and closed `grace_ms`
    /// later unless it refreshed; a seed client (no way to refresh) is closed at once.
    pub(crate) fn poll_expiry(&mut self, now_ms: u64, grace_ms: u64, v1: bool) -> ExpiryStep {
        if self.exp == u64::MAX {
            return ExpiryStep::Nothing; // no token, nothing expires
        }
        let expired_at = self.exp.saturating_add(1).saturating_mul(1000);
        if now_ms < expired_at {
            return ExpiryStep::Nothing;
        }
        if !v1 || now_ms >= expired_at.saturating_add(grace_ms) {
            return ExpiryStep::Close;
        }
        if self.warned {
            return ExpiryStep::Nothing;
        }
        self.warned = true;
        ExpiryStep::Warn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(json: &str) -> Permissions {
        Permissions::from_claim(serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn permissions_and_grants() {
        let mut a = ConnAuth::with_token(Identity {
            exp: 100,
            permissions: claim(r#"{"subscribe":["chat.*"],"direct":true}"#),
        });
        assert!(a.permits(Action::Subscribe("chat.x")));
        assert!(!a.permits(Action::Subscribe("vip")));
        assert!(!a.permits(Action::Publish("chat.x")));
        assert!(!a.permits(Action::Broadcast));
        assert!(a.permits(Action::Direct));
        assert!(a.grant("vip", 50));
        assert!(a.permits(Action::Subscribe("vip")));
        assert!(!a.permits(Action::Publish("vip")), "a grant is for subscribing only");
        assert!(a.grant("chat.x", 50), "a grant for a topic the claim covers");
        assert!(a.take_expired_grants(50_999).is_empty(), "valid through exp");
        assert!(a.grant("vip", 60), "a later token extends the grant");
        assert!(a.take_expired_grants(51_000).is_empty(), "vip extended; chat.x covered anyway");
        assert_eq!(a.take_expired_grants(61_000), vec![Box::<str>::from("vip")]);
        assert!(!a.permits(Action::Subscribe("vip")));
        for i in 0..MAX_GRANTED_TOPICS {
            a.grant(&format!("t{i}"), 100);
        }
        assert!(!a.grant("one-more", 100));
        assert!(a.grant("t1", 100), "an existing grant is still fine");
    }

    #[test]
    fn expiry_warns_v1_once_then_closes_after_the_grace() {
        let mut a = ConnAuth::with_token(Identity { exp: 100, permissions: Permissions::closed() });
        assert_eq!(a.poll_expiry(100_999, 5000, true), ExpiryStep::Nothing, "valid through exp");
        assert_eq!(a.poll_expiry(101_000, 5000, true), ExpiryStep::Warn);
        assert_eq!(a.poll_expiry(102_000, 5000, true), ExpiryStep::Nothing);
        assert_eq!(a.poll_expiry(106_000, 5000, true), ExpiryStep::Close);
        let mut seed =
            ConnAuth::with_token(Identity { exp: 100, permissions: Permissions::closed() });
        assert_eq!(seed.poll_expiry(101_000, 5000, false), ExpiryStep::Close);
        let mut none = ConnAuth::without_token(Permissions::closed());
        assert_eq!(none.poll_expiry(u64::MAX, 0, true), ExpiryStep::Nothing);
    }

    #[test]
    fn a_refresh_must_expire_later_and_cancels_the_warning() {
        let mut a = ConnAuth::with_token(Identity { exp: 100, permissions: Permissions::closed() });
        assert_eq!(a.poll_expiry(101_000, 5000, true), ExpiryStep::Warn);
        let same = Identity { exp: 100, permissions: Permissions::open() };
        assert_eq!(a.refresh(same), Err(StaleToken));
        assert!(!a.permits(Action::Broadcast), "a refused refresh changes nothing");
        let later = Identity { exp: 200, permissions: Permissions::open() };
        assert_eq!(a.refresh(later), Ok(200));
        assert!(a.permits(Action::Broadcast));
        assert_eq!(a.poll_expiry(106_000, 5000, true), ExpiryStep::Nothing);
        assert_eq!(a.poll_expiry(201_000, 5000, true), ExpiryStep::Warn);
    }
}
