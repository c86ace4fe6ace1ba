//! The protocol's fixed limits and the validity of the names clients send: how long a user
//! id, a topic name or an idempotency key may be and of which characters, how many topics
//! one connection may hold, the history page, the reserved stats topic. Fixed, not
//! options: clients and other nodes rely on them.
//!
//! Runs on: any thread. Pure constants and checks; depends on nothing else in the crate.

/// Largest accepted user id, in bytes (ids are `[A-Za-z0-9_.-]`).
pub(crate) const MAX_USER_ID_LEN: usize = 64;
/// Largest accepted topic name, in bytes (names are `[A-Za-z0-9_.:/-]`).
pub(crate) const MAX_TOPIC_LEN: usize = 128;
/// Most topics one connection may subscribe to.
pub(crate) const MAX_TOPICS_PER_CONN: usize = 256;

/// Default and largest page of the `history` command.
pub(crate) const HISTORY_PAGE: (u64, u64) = (100, 1000);

/// Longest publish idempotency key, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The reserved, read-only topic of the node figures (`shard::stats_feed` publishes
/// them; clients get `read_only` when they try).
pub(crate) const STATS_TOPIC: &str = "corecast.stats";

/// User ids: 1–[`MAX_USER_ID_LEN`] bytes of `[A-Za-z0-9_.-]` (so they never need escaping
/// in JSON or a URL).
pub(crate) fn is_valid_user_id(id: &str) -> bool {
    (1..=MAX_USER_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Topics: 1–[`MAX_TOPIC_LEN`] bytes of `[A-Za-z0-9_.:/-]`.
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
}

/// Idempotency keys: 1–[`MAX_IDEMPOTENCY_KEY_LEN`] bytes of `[A-Za-z0-9_.:-]`.
pub(crate) fn is_valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_validation() {
        assert!(is_valid_user_id("user-1.a_b"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id(&"a".repeat(MAX_USER_ID_LEN + 1)));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("é"));
    }

    #[test]
    fn topic_and_idempotency_key_validation() {
        assert!(is_valid_topic("room:1/a_b.c-d"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("a b"));
        assert!(!is_valid_topic(&"t".repeat(MAX_TOPIC_LEN + 1)));
        assert!(is_valid_topic(&"t".repeat(MAX_TOPIC_LEN)));
        assert!(is_valid_idempotency_key("k-1:a.b_c"));
        assert!(!is_valid_idempotency_key(""));
        assert!(!is_valid_idempotency_key("a/b"));
        assert!(!is_valid_idempotency_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)));
    }
}
