//! How much history each stream keeps: a default, and rules per topic pattern.
//!
//! Runs on: the main thread (parsing the `history_rules` option), then whoever sequences
//! streams (looking a stream's retention up). Pure.
//!
//! A rule is `pattern=size/ttl`, rules are separated by commas, the first match wins:
//! `chat.*=500/10m,ticks.*=0,@direct=50/1h`. In a pattern, `*` matches one or more
//! characters other than `.` (`chat.*` matches `chat.room-1`, not `chat.a.b`); every other
//! character matches itself. `@broadcast` names the broadcast stream and `@direct` every
//! user's direct stream (topic names cannot contain `@`). A size of `0` turns history, and
//! event ids, off for the matching streams.

use std::{fmt, str::FromStr, time::Duration};

use crate::{duration::HumanDuration, ids::Route, topic_pattern::matches};

/// What one stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Most events kept (`XADD MAXLEN` in Redis); 0 = no history and no ids.
    pub(crate) size: u64,
    /// How long the history is kept after the stream's last event.
    pub(crate) ttl: Duration,
}

impl Retention {
    /// Whether the stream has history (and ids) at all.
    pub(crate) fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

/// One rule: streams matching `pattern` keep `retention`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    retention: Retention,
}

/// The `history_rules` option: rules tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRules(Vec<Rule>);

impl HistoryRules {
    /// The retention of the stream of `route`: the first rule that matches, else `default`.
    pub(crate) fn retention_of(&self, route: &Route, default: Retention) -> Retention {
        let name: &str = match route {
            Route::Broadcast => "@broadcast",
            Route::Direct(_) => "@direct",
            Route::Topic(topic) => topic,
        };
        self.0
            .iter()
            .find(|rule| matches(rule.pattern.as_bytes(), name.as_bytes()))
            .map_or(default, |rule| rule.retention)
    }
}

impl FromStr for HistoryRules {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shape = || {
                format!("`{part}`: a rule is pattern=size/ttl (e.g. chat.*=500/10m) or pattern=0")
            };
            let (pattern, value) = part.split_once('=').ok_or_else(shape)?;
            let pattern = pattern.trim();
            let valid = |b: u8| b.is_ascii_alphanumeric() || b"_.:/-*".contains(&b);
            let special = pattern == "@broadcast" || pattern == "@direct";
            if pattern.is_empty() || !(special || pattern.bytes().all(valid)) {
                return Err(format!(
                    "`{part}`: a pattern is a topic name with `*` wildcards, @broadcast or @direct"
                ));
            }
            let retention = match value.trim() {
                "0" => Retention { size: 0, ttl: Duration::ZERO },
                value => {
                    let (size, ttl) = value.split_once('/').ok_or_else(shape)?;
                    let size = size.trim().parse::<u64>().map_err(|_| shape())?;
                    let ttl = ttl
                        .trim()
                        .parse::<HumanDuration>()
                        .map_err(|e| format!("`{part}`: {e}"))?;
                    Retention { size, ttl: ttl.0 }
                }
            };
            rules.push(Rule { pattern: pattern.to_owned(), retention });
        }
        Ok(HistoryRules(rules))
    }
}

impl fmt::Display for HistoryRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if rule.retention.enabled() {
                write!(
                    f,
                    "{}={}/{}",
                    rule.pattern,
                    rule.retention.size,
                    HumanDuration(rule.retention.ttl)
                )?;
            } else {
                write!(f, "{}=0", rule.pattern)?;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for HistoryRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Retention = Retention { size: 100, ttl: Duration::from_secs(300) };

    fn topic(name: &str) -> Route {
        Route::Topic(name.into())
    }

    #[test]
    fn patterns_match_one_segment_per_star() {
        assert!(matches(b"chat.*", b"chat.room-1"));
        assert!(!matches(b"chat.*", b"chat.a.b"));
        assert!(!matches(b"chat.*", b"chat."));
        assert!(matches(b"room-*", b"room-12"));
        assert!(!matches(b"room-*", b"room-"));
        assert!(matches(b"*.*", b"a.b"));
        assert!(matches(b"exact", b"exact"));
        assert!(!matches(b"exact", b"exactly"));
        assert!(matches(b"a*b", b"axxb"));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules: HistoryRules =
            "chat.vip=5000/1h, chat.*=500/10m,ticks.*=0,@direct=50/1h".parse().unwrap();
        let chat = Retention { size: 500, ttl: Duration::from_secs(600) };
        assert_eq!(rules.retention_of(&topic("chat.lobby"), DEFAULT), chat);
        assert_eq!(rules.retention_of(&topic("chat.vip"), DEFAULT).size, 5000);
        assert!(!rules.retention_of(&topic("ticks.btc"), DEFAULT).enabled());
        assert_eq!(rules.retention_of(&topic("other"), DEFAULT), DEFAULT);
        assert_eq!(rules.retention_of(&Route::Direct("al".into()), DEFAULT).size, 50);
        assert_eq!(rules.retention_of(&Route::Broadcast, DEFAULT), DEFAULT);
        assert_eq!(
            rules.to_string(),
            "chat.vip=5000/3600s,chat.*=500/600s,ticks.*=0,@direct=50/3600s"
        );
        assert_eq!(rules.to_string().parse::<HistoryRules>(), Ok(rules));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for bad in ["chat.*", "chat.*=x/1m", "chat.*=5", "chat.*=5/1y", "a b=5/1m", "@other=5/1m"] {
            let err = bad.parse::<HistoryRules>().unwrap_err();
            assert!(err.contains('`'), "{bad}: {err}");
        }
        assert_eq!("".parse::<HistoryRules>(), Ok(HistoryRules::default()));
    }
}
