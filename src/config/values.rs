//! The value types of options that are numbers, choices, names and paths: how each is
//! written (on the command line, in the environment, in the TOML file) and shown (in
//! `--help` defaults and `--check-config`), and the checks of its syntax.
//!
//! Runs on: the main thread, while the options are read; the values are then plain data
//! copied into every shard (whose `conn::ShardContext` resolves the [`AutoLimit`]s).
//!
//! A value that is a secret ([`Secret`]) is here too: it is shown as `***` everywhere.
//! Addresses and URLs are in `config::endpoints`; how secrets are read from their files
//! is `config::secrets`. Each type parses with `FromStr` (errors name the value and say
//! what was expected) and reads from TOML through the same parser.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

use crate::duration::HumanDuration;

/// A size in bytes written as `65536`, `64KiB`, `1MiB` or `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize =
            num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            _ => return Err(format!("`{s}`: size unit must be B, KiB, MiB or GiB")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n != 0 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

/// TOML accepts both `"64KiB"` / `"25s"` strings and bare integers (bytes / seconds).
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrInt {
    Str(String),
    Int(u64),
}

macro_rules! deserialize_via_fromstr {
    ($ty:ty, $int:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match StrOrInt::deserialize(d)? {
                    StrOrInt::Str(s) => s.parse().map_err(serde::de::Error::custom),
                    StrOrInt::Int(n) => Ok($int(n)),
                }
            }
        }
    };
}
deserialize_via_fromstr!(HumanDuration, |n| HumanDuration(Duration::from_secs(n)));
deserialize_via_fromstr!(ByteSize, |n: u64| ByteSize(n as usize));

/// Shard count: `all` (every CPU in the process's affinity mask) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCount {
    /// One shard per CPU the process may run on.
    All,
    /// Exactly this many shards, pinned to the first CPUs of the affinity mask.
    Exactly(usize),
}

impl FromStr for ShardCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(ShardCount::All);
        }
        s.parse()
            .map(ShardCount::Exactly)
            .map_err(|_| format!("`{s}`: shards is `all` or a number"))
    }
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardCount::All => write!(f, "all"),
            ShardCount::Exactly(n) => write!(f, "{n}"),
        }
    }
}
deserialize_via_fromstr!(ShardCount, |n: u64| ShardCount::Exactly(n as usize));

/// A plain count (connections, frames, events).
pub type Count = usize;

/// A secret (the JWT secret, the API key), or empty for none. Shown (Display, Debug,
/// `--check-config`) as `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Option<String>);

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Secret((!s.is_empty()).then(|| s.to_owned())))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "***" } else { "" })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A limit that is on by default only with authentication: `auto`, `off` (or `0`), or a
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoLimit {
    /// The documented default with authentication on, off without.
    Auto,
    /// Off.
    Off,
    /// This many.
    Exactly(u64),
}

impl AutoLimit {
    /// The limit in force: `auto` is `with_auth` when authentication is on.
    pub fn resolve(self, auth_on: bool, with_auth: u64) -> Option<u64> {
        match self {
            AutoLimit::Auto => auth_on.then_some(with_auth),
            AutoLimit::Off => None,
            AutoLimit::Exactly(n) => Some(n),
        }
    }
}

impl FromStr for AutoLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(AutoLimit::Auto),
            "off" | "0" => Ok(AutoLimit::Off),
            n => n
                .parse()
                .map(AutoLimit::Exactly)
                .map_err(|_| format!("`{n}`: `auto`, `off` or a number")),
        }
    }
}

impl fmt::Display for AutoLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutoLimit::Auto => f.write_str("auto"),
            AutoLimit::Off => f.write_str("off"),
            AutoLimit::Exactly(n) => write!(f, "{n}"),
        }
    }
}
deserialize_via_fromstr!(AutoLimit, |n| if n == 0 {
    AutoLimit::Off
} else {
    AutoLimit::Exactly(n)
});

/// A name made of `[A-Za-z0-9_.:-]` (node ids, channel prefixes); empty allowed where
/// the option says so.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Name(pub String);

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() > 128 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)) {
            return Err(format!("`{s}`: at most 128 characters of A-Z a-z 0-9 _ . : -"));
        }
        Ok(Name(s.to_owned()))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A file path, or `none`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OptionalPath(pub Option<PathBuf>);

impl FromStr for OptionalPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(OptionalPath(None));
        }
        Ok(OptionalPath(Some(PathBuf::from(s))))
    }
}

impl fmt::Display for OptionalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("none"),
            Some(p) => write!(f, "{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for OptionalPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The CPU of the Redis bridge thread: `last` (the last CPU the process may run on) or
/// a CPU number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuChoice {
    /// The last CPU of the affinity mask.
    Last,
    /// This CPU.
    Cpu(usize),
}

impl FromStr for CpuChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("last") {
            return Ok(CpuChoice::Last);
        }
        s.trim().parse().map(CpuChoice::Cpu).map_err(|_| format!("`{s}`: `last` or a CPU number"))
    }
}

impl fmt::Display for CpuChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuChoice::Last => f.write_str("last"),
            CpuChoice::Cpu(n) => write!(f, "{n}"),
        }
    }
}
deserialize_via_fromstr!(CpuChoice, |n: u64| CpuChoice::Cpu(n as usize));

/// How a node gets the events stored in Redis: `pubsub` (Pub/Sub, gaps filled from the
/// history) or `streams` (blocking XREADs of the history streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Redis Pub/Sub, with gap fill from the history.
    PubSub,
    /// XREAD of every stream the node delivers, from its position.
    Streams,
}

impl FromStr for DeliveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "pubsub" => Ok(DeliveryMode::PubSub),
            "streams" => Ok(DeliveryMode::Streams),
            other => Err(format!("`{other}`: delivery is `pubsub` or `streams`")),
        }
    }
}

impl fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeliveryMode::PubSub => "pubsub",
            DeliveryMode::Streams => "streams",
        })
    }
}

impl<'de> Deserialize<'de> for DeliveryMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("250ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(250));
        assert_eq!("25s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(25));
        assert_eq!("off".parse::<HumanDuration>().unwrap().enabled(), None);
        assert!("25".parse::<HumanDuration>().is_err());
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert!("1XB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(65536).to_string(), "64KiB");
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}
