//! What a connection may do: the `channels` claim of its token, or the node's default.
//!
//! Runs on: a shard (checked per command). Pure.
//!
//! ```json
//! {"subscribe": ["chat.*", "user.alice.*"], "publish": ["chat.*"], "broadcast": false, "direct": true}
//! ```
//! A missing field grants nothing. Patterns are topic names in which `*` matches one or
//! more characters other than `.` (`chat.*` grants `chat.lobby`, not `chat.a.b`).
//! Receiving broadcasts and one's own direct messages needs no permission.

use std::{fmt, str::FromStr};

use serde::Deserialize;

use crate::topic_pattern;

/// The `channels` claim as it appears in a token.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ChannelsClaim {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    broadcast: bool,
    #[serde(default)]
    direct: bool,
}

/// Most patterns per list in a `channels` claim.
pub(crate) const MAX_PATTERNS: usize = 64;

/// Topics one may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    /// Every topic.
    Any,
    /// Topics matching one of these patterns.
    Patterns(Vec<Box<str>>),
}

impl Grant {
    fn allows(&self, topic: &str) -> bool {
        match self {
            Grant::Any => true,
            Grant::Patterns(patterns) => {
                patterns.iter().any(|p| topic_pattern::matches(p.as_bytes(), topic.as_bytes()))
            }
        }
    }

    fn from_patterns(patterns: Vec<String>) -> Result<Grant, String> {
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("more than {MAX_PATTERNS} patterns"));
        }
        if let Some(bad) = patterns.iter().find(|p| !topic_pattern::is_valid_pattern(p)) {
            return Err(format!("`{bad}` is not a topic pattern"));
        }
        Ok(Grant::Patterns(patterns.into_iter().map(String::into_boxed_str).collect()))
    }
}

/// What one connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Permissions {
    subscribe: Grant,
    publish: Grant,
    broadcast: bool,
    direct: bool,
}

impl Permissions {
    /// Everything.
    pub(crate) fn open() -> Permissions {
        Permissions { subscribe: Grant::Any, publish: Grant::Any, broadcast: true, direct: true }
    }

    /// Nothing beyond receiving broadcasts and one's own direct messages.
    pub(crate) fn closed() -> Permissions {
        Permissions {
            subscribe: Grant::Patterns(Vec::new()),
            publish: Grant::Patterns(Vec::new()),
            broadcast: false,
            direct: false,
        }
    }

    /// The permissions a `channels` claim grants.
    ///
    /// # Errors
    /// A pattern that is not a topic pattern, or too many patterns.
    pub(crate) fn from_claim(claim: ChannelsClaim) -> Result<Permissions, String> {
        Ok(Permissions {
            subscribe: Grant::from_patterns(claim.subscribe)?,
            publish: Grant::from_patterns(claim.publish)?,
            broadcast: claim.broadcast,
            direct: claim.direct,
        })
    }

    /// Whether every action is allowed (no check needed).
    pub(crate) fn is_open(&self) -> bool {
        *self == Permissions::open()
    }

    /// May subscribe to (and read the history of) `topic`.
    pub(crate) fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.allows(topic)
    }

    /// May publish on `topic`.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        self.publish.allows(topic)
    }

    /// May broadcast (v1 `broadcast`, seed-mode text).
    pub(crate) fn may_broadcast(&self) -> bool {
        self.broadcast
    }

    /// May send direct messages.
    pub(crate) fn may_direct(&self) -> bool {
        self.direct
    }
}

/// The `default_permissions` option: what a connection without a `channels` claim may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPermissions {
    /// `open` without authentication, `closed` with it.
    Auto,
    /// Everything.
    Open,
    /// Only receive broadcasts and one's own direct messages.
    Closed,
}

impl DefaultPermissions {
    /// The permissions of a connection without a claim on a node with or without auth.
    pub(crate) fn resolve(self, auth_on: bool) -> Permissions {
        match (self, auth_on) {
            (DefaultPermissions::Open, _) | (DefaultPermissions::Auto, false) => {
                Permissions::open()
            }
            (DefaultPermissions::Closed, _) | (DefaultPermissions::Auto, true) => {
                Permissions::closed()
            }
        }
    }
}

impl FromStr for DefaultPermissions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(DefaultPermissions::Auto),
            "open" => Ok(DefaultPermissions::Open),
            "closed" => Ok(DefaultPermissions::Closed),
            other => Err(format!("`{other}`: default permissions are `auto`, `open` or `closed`")),
        }
    }
}

impl fmt::Display for DefaultPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefaultPermissions::Auto => "auto",
            DefaultPermissions::Open => "open",
            DefaultPermissions::Closed => "closed",
        })
    }
}

impl<'de> Deserialize<'de> for DefaultPermissions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(json: &str) -> Result<Permissions, String> {
        Permissions::from_claim(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn a_claim_grants_what_it_names_and_nothing_else() {
        let p = claim(
            r#"{"subscribe":["chat.*","user.alice.*"],"publish":["chat.*"],"broadcast":false,"direct":true}"#,
        )
        .unwrap();
        assert!(p.may_subscribe("chat.lobby"));
        assert!(p.may_subscribe("user.alice.inbox"));
        assert!(!p.may_subscribe("user.bob.inbox"));
        assert!(!p.may_subscribe("chat.a.b"));
        assert!(p.may_publish("chat.lobby"));
        assert!(!p.may_publish("user.alice.inbox"));
        assert!(!p.may_broadcast());
        assert!(p.may_direct());
        assert!(!p.is_open());

        let empty = claim("{}").unwrap();
        assert_eq!(empty, Permissions::closed(), "a missing field grants nothing");
        assert!(claim(r#"{"subscribe":["chat.>"]}"#).is_err());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("t{i}")).collect();
        assert!(claim(&serde_json::json!({ "publish": many }).to_string()).is_err());
    }

    #[test]
    fn defaults_depend_on_whether_auth_is_on() {
        assert!(DefaultPermissions::Auto.resolve(false).is_open());
        assert_eq!(DefaultPermissions::Auto.resolve(true), Permissions::closed());
        assert!(DefaultPermissions::Open.resolve(true).is_open());
        assert_eq!(DefaultPermissions::Closed.resolve(false), Permissions::closed());
        assert!("nope".parse::<DefaultPermissions>().is_err());
    }
}
