//! The value types of options that are addresses, paths and URLs: where the node listens
//! (`listen`, `api_listen`), which browsers and paths it accepts (`allowed_origins`,
//! `echo_path`), and whom it calls (`redis`, `webhook_url`).
//!
//! Runs on: the main thread, while the options are read; the values are then plain data
//! copied into every shard, whose upgrades ask [`Origins::allows`].
//!
//! A value that may carry credentials is never shown whole: [`RedisUrl`] hides its
//! password, [`UrlList`] shows only hosts in `Debug`. The URL checks themselves are
//! `redis_url`'s and `reqwest`'s; nothing here connects anywhere.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::Deserialize;

/// `SocketAddr` in TOML as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);
impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(ListenAddr)
            .map_err(|_| format!("`{s}` is not an ADDR:PORT (e.g. 127.0.0.1:8080)"))
    }
}
impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An optional `ADDR:PORT`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl FromStr for OptionalAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(OptionalAddr(None));
        }
        s.parse()
            .map(|a| OptionalAddr(Some(a)))
            .map_err(|_| format!("`{s}` is not an ADDR:PORT or `none`"))
    }
}

impl fmt::Display for OptionalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some(a) => a.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for OptionalAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The conformance echo endpoint's path, or `off`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EchoPath(pub Option<String>);

impl FromStr for EchoPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(EchoPath(None));
        }
        if !s.starts_with('/')
            || s == "/healthz"
            || s.starts_with("/ws/")
            || s.contains(char::is_whitespace)
        {
            return Err(format!(
                "echo_path `{s}` must be an absolute path other than /healthz and /ws/..."
            ));
        }
        Ok(EchoPath(Some(s.to_owned())))
    }
}

impl fmt::Display for EchoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or("off"))
    }
}

impl<'de> Deserialize<'de> for EchoPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Browser origins allowed to upgrade: comma-separated `scheme://host[:port]`, or `any`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origins(pub Vec<String>);

impl Origins {
    /// Whether a request with this `Origin` header may upgrade. Requests without an
    /// Origin (not from a browser) are not subject to the list.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => self.0.is_empty() || self.0.iter().any(|a| a.eq_ignore_ascii_case(o.trim())),
        }
    }
}

impl FromStr for Origins {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("any") {
            return Ok(Origins(Vec::new()));
        }
        let list: Vec<String> =
            s.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).collect();
        if let Some(bad) =
            list.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(format!("allowed origin `{bad}` must look like https://example.com"));
        }
        Ok(Origins(list))
    }
}

impl fmt::Display for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("any") } else { f.write_str(&self.0.join(",")) }
    }
}

impl<'de> Deserialize<'de> for Origins {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum ListOrStr {
            List(Vec<String>),
            Str(String),
        }
        match ListOrStr::deserialize(d)? {
            ListOrStr::List(l) => l.join(",").parse().map_err(serde::de::Error::custom),
            ListOrStr::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The Redis URL (`redis://[:password@]host:port/db`), or `off` for the embedded bus.
/// Shown (Display, Debug, `--check-config`) with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisUrl(pub Option<String>);

impl FromStr for RedisUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(RedisUrl(None));
        }
        crate::redis_url::check_url(s)?;
        Ok(RedisUrl(Some(s.to_owned())))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("off"),
            Some(url) => f.write_str(&crate::redis_url::redact_url(url)),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Webhook receivers: http(s) URLs, comma-separated (or a TOML array); `none` or empty
/// for none. Shown by host only (a URL may carry credentials).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct UrlList(pub Vec<String>);

impl FromStr for UrlList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(UrlList::default());
        }
        let mut urls = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let url = reqwest::Url::parse(part).map_err(|e| format!("not a URL ({e})"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err("webhook URLs must be http:// or https:// with a host".into());
            }
            urls.push(part.to_owned());
        }
        Ok(UrlList(urls))
    }
}

impl fmt::Display for UrlList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.0.join(","))
    }
}

impl fmt::Debug for UrlList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .0
            .iter()
            .map(|u| {
                reqwest::Url::parse(u)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        write!(f, "UrlList({hosts:?})")
    }
}

impl<'de> Deserialize<'de> for UrlList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let joined = match Raw::deserialize(d)? {
            Raw::One(s) => s,
            Raw::Many(v) => v.join(","),
        };
        joined.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_url_lists_are_checked_and_shown_by_host() {
        let list: UrlList = "http://a/x, https://b:8443/y".parse().unwrap();
        assert_eq!(list.0.len(), 2);
        assert!("ftp://a/x".parse::<UrlList>().is_err());
        assert!("none".parse::<UrlList>().unwrap().0.is_empty());
        assert_eq!(
            format!("{:?}", "http://user:pw@host/x".parse::<UrlList>().unwrap()),
            r#"UrlList(["host"])"#
        );
    }
}
