//! Topic patterns, shared by history rules and permission claims.
//!
//! Runs on: any thread. Pure.
//!
//! In a pattern, `*` matches one or more characters other than `.`, and every other
//! character matches itself: `chat.*` matches `chat.room-1` but neither `chat.` nor
//! `chat.a.b`; `user.*.inbox` matches `user.alice.inbox`.

/// Whether `name` matches `pattern`.
pub(crate) fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            // One or more non-dot characters, then the rest of the pattern.
            let run = name.iter().take_while(|&&b| b != b'.').count();
            (1..=run).any(|n| matches(rest, &name[n..]))
        }
        Some((&c, rest)) => name.first() == Some(&c) && matches(rest, &name[1..]),
    }
}

/// Whether `pattern` is a topic name in which some characters may be `*`.
pub(crate) fn is_valid_pattern(pattern: &str) -> bool {
    (1..=crate::protocol::limits::MAX_TOPIC_LEN).contains(&pattern.len())
        && pattern.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-' | b'*')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_is_one_or_more_characters_of_one_segment() {
        let m = |p: &str, n: &str| matches(p.as_bytes(), n.as_bytes());
        assert!(m("chat.*", "chat.room-1"));
        assert!(!m("chat.*", "chat."));
        assert!(!m("chat.*", "chat.a.b"));
        assert!(m("user.*.inbox", "user.alice.inbox"));
        assert!(!m("user.*.inbox", "user.alice.outbox"));
        assert!(m("*", "news"));
        assert!(!m("*", "a.b"));
        assert!(m("room-*", "room-42"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(is_valid_pattern("chat.*"));
        assert!(!is_valid_pattern("chat.>"));
        assert!(!is_valid_pattern(""));
    }
}
