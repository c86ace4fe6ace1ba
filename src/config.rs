//! Configuration: one flat table of documented options.
//!
//! Runs on: the main thread, once at start-up. [`Config`] is then cloned into every
//! shard (it is `Send + Clone`, plain data).
//!
//! Every option comes, in increasing precedence, from its default, the TOML file named
//! by `--config` / `CORECAST_CONFIG`, the environment (`CORECAST_<NAME>`), and the
//! command line (`--<name>`). The [`config_options!`] table below is the single source
//! of each option's name, type, default and documentation: it generates the CLI flags,
//! the environment variable names, the TOML keys and `--help`. [`Config::validate`]
//! checks values and cross-field invariants with messages that name the option. It builds
//! nothing: it reads the secret and key files to check them and keeps none of it (the JWT
//! keys are checked by `auth::token::check_keys`, the Redis URL and CA by `redis_url`).
//!
//! Depends only on leaf modules (`duration`, `redis_url`, `error`), `auth` and
//! `history::retention`: the modules above them may all read the configuration.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{ArgMatches, FromArgMatches, parser::ValueSource};
use serde::Deserialize;

// Option types defined beside the code that interprets them, named here too because they
// are the types of public `Config` fields.
pub use crate::auth::permissions::DefaultPermissions;
pub use crate::duration::HumanDuration;
use crate::error::{Error, Result};
pub use crate::history::retention::HistoryRules;

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

/// A plain count (connections, frames, events).
pub type Count = usize;

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

/// Declares every option once: field, type, default, env name and doc.
macro_rules! config_options {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr, env = $env:literal; )+) => {
        /// The effective configuration of one node. See the table in README.md.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )+ }
            }
        }

        /// The TOML file: every key optional, unknown keys rejected.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $name: Option<$ty>, )+
        }

        /// Command-line options (each also read from its `CORECAST_*` variable).
        #[derive(Debug, clap::Args)]
        pub struct ConfigArgs {
            /// TOML file with any of the options below (keys as the long flag with `_`).
            #[arg(long, env = "CORECAST_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])+
                #[arg(long, env = $env, default_value_t = Config::default().$name)]
                $name: $ty,
            )+
        }

        impl Config {
            /// Builds the configuration: defaults < file < environment < flags.
            ///
            /// # Errors
            /// [`Error::Config`] naming the file or option that is wrong.
            pub fn from_args(args: &ConfigArgs, matches: &ArgMatches) -> Result<Config> {
                let mut cfg = Config::default();
                if let Some(path) = &args.config {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        Error::Config(format!("cannot read config file {}: {e}", path.display()))
                    })?;
                    let file: FileConfig = toml::from_str(&text).map_err(|e| {
                        Error::Config(format!("config file {}: {e}", path.display()))
                    })?;
                    $( if let Some(v) = file.$name { cfg.$name = v; } )+
                }
                $(
                    if matches!(
                        matches.value_source(stringify!($name)),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    ) {
                        cfg.$name = args.$name.clone();
                    }
                )+
                cfg.validate()?;
                Ok(cfg)
            }

            /// Renders the configuration as TOML (for `--check-config`).
            pub fn to_toml(&self) -> String {
                let mut out = String::new();
                $(
                    let value = self.$name.to_string();
                    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                        out.push_str(&format!("{} = {}\n", stringify!($name), value));
                    } else {
                        out.push_str(&format!("{} = \"{}\"\n", stringify!($name), value));
                    }
                )+
                out
            }
        }
    };
}

config_options! {
    /// Address every shard listens on (SO_REUSEPORT). Port 0 picks a free port.
    listen: ListenAddr = ListenAddr(SocketAddr::from(([127, 0, 0, 1], 8080))), env = "CORECAST_LISTEN";
    /// Number of shards (one pinned glommio executor each): `all` CPUs in the affinity mask, or N.
    shards: ShardCount = ShardCount::All, env = "CORECAST_SHARDS";
    /// listen(2) backlog per shard. The kernel caps it at net.core.somaxconn (tuning/).
    backlog: Count = 4096, env = "CORECAST_BACKLOG";
    /// Most WebSocket connections per node; beyond it the upgrade gets HTTP 503. Also capped by the open-files limit.
    max_connections: Count = 1_000_000, env = "CORECAST_MAX_CONNECTIONS";
    /// A client must complete the HTTP upgrade within this time or the socket is closed.
    handshake_timeout: HumanDuration = HumanDuration(Duration::from_secs(5)), env = "CORECAST_HANDSHAKE_TIMEOUT";
    /// Largest HTTP upgrade request (request line + headers); larger gets HTTP 431.
    max_request_size: ByteSize = ByteSize(8 << 10), env = "CORECAST_MAX_REQUEST_SIZE";
    /// Most connections of the node still in the HTTP handshake; beyond it new sockets get 503 and are closed.
    max_pending_handshakes: Count = 4096, env = "CORECAST_MAX_PENDING_HANDSHAKES";
    /// Most sockets from one IP address still in the HTTP handshake, per shard; beyond it 503. Generous: many users share an address behind NAT.
    max_pending_handshakes_per_ip: Count = 256, env = "CORECAST_MAX_PENDING_HANDSHAKES_PER_IP";
    /// Browser origins allowed to upgrade (comma-separated, e.g. https://app.example.com), or `any`. A request with another Origin gets 403.
    allowed_origins: Origins = Origins::default(), env = "CORECAST_ALLOWED_ORIGINS";
    /// Largest inbound WebSocket message (and frame); larger is closed with 1009.
    max_message_size: ByteSize = ByteSize(64 << 10), env = "CORECAST_MAX_MESSAGE_SIZE";
    /// Most frames one inbound message may be split into; more is closed with 1008.
    max_fragments: Count = 1024, env = "CORECAST_MAX_FRAGMENTS";
    /// Most Ping/Pong frames a client may send per second; more is closed with 1008.
    max_control_frames_per_sec: Count = 64, env = "CORECAST_MAX_CONTROL_FRAMES_PER_SEC";
    /// Path of a conformance endpoint that echoes every message (for Autobahn|Testsuite). Never enable in production.
    echo_path: EchoPath = EchoPath::default(), env = "CORECAST_ECHO_PATH";
    /// Per-connection cap on bytes queued for the socket; a client past it is cut off with 1013.
    outbound_queue_limit: ByteSize = ByteSize(1 << 20), env = "CORECAST_OUTBOUND_QUEUE_LIMIT";
    /// After the server queues a Close (slow consumer 1013, protocol error, heartbeat timeout), how long the client has to read it before the socket is closed.
    close_grace: HumanDuration = HumanDuration(Duration::from_secs(2)), env = "CORECAST_CLOSE_GRACE";
    /// Interval between WebSocket Ping frames to each client (`off` disables pings and dead-peer detection).
    ping_interval: HumanDuration = HumanDuration(Duration::from_secs(25)), env = "CORECAST_PING_INTERVAL";
    /// A client whose Pong does not arrive this long after our Ping is closed (1008).
    pong_timeout: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_PONG_TIMEOUT";
    /// Seed mode: interval of the application heartbeat text `{"type":"ping"}` (`off` disables it).
    app_ping_interval: HumanDuration = HumanDuration(Duration::from_secs(30)), env = "CORECAST_APP_PING_INTERVAL";
    /// On SIGTERM/SIGINT: how long clients get to finish the close handshake, after the last Close was sent, before sockets are dropped.
    drain_timeout: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_DRAIN_TIMEOUT";
    /// On SIGTERM/SIGINT: `/readyz` answers 503 at once, then the connections get Close 1012 ("service restart") spread evenly over this period, so that clients reconnect elsewhere gradually (`off`: all at once). A second signal closes the rest at once; `drain_timeout` then applies.
    drain_period: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_DRAIN_PERIOD";
    /// SO_SNDBUF for accepted sockets (0 = kernel default with autotuning). Bounds kernel memory per slow client.
    socket_send_buffer: ByteSize = ByteSize(0), env = "CORECAST_SOCKET_SEND_BUFFER";
    /// Capacity, in events, of each shard's inbox from the bus and of its sequencer lane (commands about the streams it owns). Full, they make publishers wait.
    inbox_capacity: Count = 8192, env = "CORECAST_INBOX_CAPACITY";
    /// Most sockets written per io_uring submission when a shard flushes (one `io_uring_enter` carries that many non-blocking sends; rounded up to a power of two; at most 4096); 0 = one sendmsg(2) syscall per socket. Falls back to sendmsg if io_uring is unavailable.
    send_batch: Count = 256, env = "CORECAST_SEND_BATCH";
    /// io_uring registered memory per shard. Sockets never use it; keep small (locked memory, tuning/).
    io_memory: ByteSize = ByteSize(64 << 10), env = "CORECAST_IO_MEMORY";
    /// This node's name in logs, `/healthz` and its Redis heartbeat channel (A-Z a-z 0-9 _ . : -); empty = `<hostname>-<pid>`.
    node_id: Name = Name::default(), env = "CORECAST_NODE_ID";
    /// Redis URL `redis://[:password@]host:port/db` to run as one node of a cluster (the Redis bridge), or `off` for the embedded single-node bus. The password is never logged.
    redis: RedisUrl = RedisUrl::default(), env = "CORECAST_REDIS_URL";
    /// With a `rediss://` URL: PEM file of the CA certificate(s) that signed the Redis server's certificate (`none`: the system's trusted roots).
    redis_tls_ca: OptionalPath = OptionalPath::default(), env = "CORECAST_REDIS_TLS_CA";
    /// Prefix of corecast's Redis channels (`<prefix>topic:<T>`, `<prefix>user:<U>`, `<prefix>node:<id>`); broadcasts always use `ws_broadcast`.
    redis_prefix: Name = Name("corecast:".into()), env = "CORECAST_REDIS_PREFIX";
    /// CPU the Redis bridge thread is pinned to: `last` (the last CPU the process may run on; shared with a shard when there are few CPUs) or a CPU number.
    bridge_cpu: CpuChoice = CpuChoice::Last, env = "CORECAST_BRIDGE_CPU";
    /// Interval of the bridge's heartbeat through Redis (published to its own channel).
    redis_heartbeat_interval: HumanDuration = HumanDuration(Duration::from_millis(250)), env = "CORECAST_REDIS_HEARTBEAT_INTERVAL";
    /// Without the heartbeat back for this long, the node is not ready (`/readyz` 503) and reconnects to Redis.
    redis_heartbeat_timeout: HumanDuration = HumanDuration(Duration::from_millis(1500)), env = "CORECAST_REDIS_HEARTBEAT_TIMEOUT";
    /// Timeout of every Redis command and connection attempt.
    redis_command_timeout: HumanDuration = HumanDuration(Duration::from_secs(2)), env = "CORECAST_REDIS_COMMAND_TIMEOUT";
    /// Most commands queued towards Redis per connection; more fail at once (publishes answer `unavailable`).
    redis_command_queue: Count = 65_536, env = "CORECAST_REDIS_COMMAND_QUEUE";
    /// Messages from Redis buffered for the bridge thread; when it falls further behind, messages are dropped and counted (`lagged` in `/healthz`).
    redis_receive_buffer: Count = 65_536, env = "CORECAST_REDIS_RECEIVE_BUFFER";
    /// Events kept per stream (topic, broadcast, each user's direct messages) for recovery and late joiners; 0 turns history and event ids off. Per-pattern overrides in `history_rules`.
    history_size: Count = 100, env = "CORECAST_HISTORY_SIZE";
    /// How long a stream's history is kept after its last event.
    history_ttl: HumanDuration = HumanDuration(Duration::from_secs(300)), env = "CORECAST_HISTORY_TTL";
    /// History per topic pattern: `pattern=size/ttl` or `pattern=0` (off), comma-separated, first match wins; `*` matches one or more characters other than `.`; `@broadcast` and `@direct` name those streams. E.g. `chat.*=500/10m,ticks.*=0`.
    history_rules: HistoryRules = HistoryRules::default(), env = "CORECAST_HISTORY_RULES";
    /// How long a stream's epoch and offset outlive its last event; its next event after that starts a new epoch (older positions get `recovered: false`).
    history_meta_ttl: HumanDuration = HumanDuration(Duration::from_secs(86_400)), env = "CORECAST_HISTORY_META_TTL";
    /// Most events replayed to one client recovering a stream; a longer gap is answered `recovered: false`.
    recovery_max_replay: Count = 1000, env = "CORECAST_RECOVERY_MAX_REPLAY";
    /// With `--redis`: how stored events reach the node — `pubsub` (Redis Pub/Sub; what it drops is filled from the history) or `streams` (blocking XREAD of every stream the node delivers, from its position; no dependence on Pub/Sub, more Redis work per stream).
    delivery: DeliveryMode = DeliveryMode::PubSub, env = "CORECAST_DELIVERY";
    /// How long a publish `idempotency_key` is remembered: a retry within it gets the first publish's id.
    idempotency_window: HumanDuration = HumanDuration(Duration::from_secs(300)), env = "CORECAST_IDEMPOTENCY_WINDOW";
    /// HS256 secret for connection and subscription tokens (JWT); setting it (or `jwt_secret_file` or `jwt_public_key`) turns authentication on. Never logged. Prefer the environment or the file over the command line.
    jwt_secret: Secret = Secret::default(), env = "CORECAST_JWT_SECRET";
    /// File holding the HS256 secret (a trailing newline is ignored), or `none`.
    jwt_secret_file: OptionalPath = OptionalPath::default(), env = "CORECAST_JWT_SECRET_FILE";
    /// PEM public key (RSA for RS256, P-256 EC for ES256) that verifies tokens, or `none`. Works alongside `jwt_secret`.
    jwt_public_key: OptionalPath = OptionalPath::default(), env = "CORECAST_JWT_PUBLIC_KEY";
    /// What a connection whose token has no `channels` claim may do: `open` (everything), `closed` (receive broadcasts and its own direct messages only), or `auto` (`open` with authentication off, `closed` with it on).
    default_permissions: DefaultPermissions = DefaultPermissions::Auto, env = "CORECAST_DEFAULT_PERMISSIONS";
    /// After a v1 connection's token expires unrefreshed it gets `{"type":"token_expired"}`, and this long after its expiry a Close 1008 (seed connections are closed at expiry).
    token_expiry_grace: HumanDuration = HumanDuration(Duration::from_secs(5)), env = "CORECAST_TOKEN_EXPIRY_GRACE";
    /// Key of the server API (`Authorization: Bearer <key>` on `/api/...`); setting it (or `api_key_file`) turns the API on. Never logged. Prefer the environment or the file over the command line.
    api_key: Secret = Secret::default(), env = "CORECAST_API_KEY";
    /// File holding the API key (a trailing newline is ignored), or `none`.
    api_key_file: OptionalPath = OptionalPath::default(), env = "CORECAST_API_KEY_FILE";
    /// Address of a listener that serves only the server API (SO_REUSEPORT, one per shard; port 0 picks a free port), or `none`: the API is then served under `/api/` on `listen`.
    api_listen: OptionalAddr = OptionalAddr::default(), env = "CORECAST_API_LISTEN";
    /// Largest server-API request body; larger gets 413.
    max_api_body: ByteSize = ByteSize(1 << 20), env = "CORECAST_MAX_API_BODY";
    /// Messages a connection may send per second (a token bucket): `auto` (100 with authentication on, off without — benchmarks and trusted single-node setups are never throttled silently), `off`, or a number. Over it, v1 clients get `rate_limited` and the message is dropped.
    rate_limit_messages: AutoLimit = AutoLimit::Auto, env = "CORECAST_RATE_LIMIT_MESSAGES";
    /// Bucket size of the message rate limit: how many messages may come at once.
    rate_limit_burst: Count = 200, env = "CORECAST_RATE_LIMIT_BURST";
    /// A connection over the message rate limit for this long (its bucket never refilled) is closed with 1008.
    rate_limit_close_after: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_RATE_LIMIT_CLOSE_AFTER";
    /// Simultaneous connections of one user across the cluster (0 = no limit); more get HTTP 429 before the upgrade. With Redis each upgrade of a new connection then costs one script call; while Redis is unreachable the limit is not enforced (connections are admitted and not counted).
    max_connections_per_user: Count = 0, env = "CORECAST_MAX_CONNECTIONS_PER_USER";
    /// New connections per second from one IP address, node-wide (0 = no limit); more get HTTP 429 before the upgrade. Behind a proxy that hides client addresses, every client shares the proxy's.
    max_connects_per_ip: Count = 0, env = "CORECAST_MAX_CONNECTS_PER_IP";
    /// With Redis: a dead node's presence members (and its place in `/api/stats`) are removed this long after its last presence heartbeat (sent every fifth of it), with `leave` events; within at most twice this.
    presence_ttl: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_PRESENCE_TTL";
    /// URL(s) that receive the webhooks (`POST`, JSON, signed); repeat the flag or separate them with commas; `none` = off. Requires `webhook_secret`. Set the same receivers on every node.
    webhook_url: UrlList = UrlList::default(), env = "CORECAST_WEBHOOK_URL";
    /// Secret that signs every webhook request (`X-Corecast-Signature`, HMAC-SHA256). Never logged.
    webhook_secret: Secret = Secret::default(), env = "CORECAST_WEBHOOK_SECRET";
    /// File holding the webhook secret (a trailing newline is ignored), or `none`.
    webhook_secret_file: OptionalPath = OptionalPath::default(), env = "CORECAST_WEBHOOK_SECRET_FILE";
    /// `channel_vacated` and `member_removed` wait this long and are cancelled (with the `channel_occupied` / `member_added` that follows) when the topic or member comes back in time, cluster-wide.
    webhook_vacate_delay: HumanDuration = HumanDuration(Duration::from_secs(3)), env = "CORECAST_WEBHOOK_VACATE_DELAY";
    /// Timeout of one webhook request (a timeout is retried like a 5xx).
    webhook_timeout: HumanDuration = HumanDuration(Duration::from_secs(5)), env = "CORECAST_WEBHOOK_TIMEOUT";
    /// Most webhook events waiting on a node; more are dropped and counted (`/healthz` `webhooks.dropped`).
    webhook_queue: Count = 10_000, env = "CORECAST_WEBHOOK_QUEUE";
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

/// Folds repeated `--<flag> V` / `--<flag>=V` arguments into one `--<flag> V1,V2` (the
/// options parser keeps only the last occurrence of a flag).
pub fn fold_repeated_flag(args: Vec<String>, flag: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut values = Vec::new();
    let mut first_at = None;
    let mut it = args.into_iter();
    let eq = format!("{flag}=");
    while let Some(arg) = it.next() {
        if arg == flag {
            first_at.get_or_insert(out.len());
            if let Some(v) = it.next() {
                values.push(v);
            }
        } else if let Some(v) = arg.strip_prefix(&eq) {
            first_at.get_or_insert(out.len());
            values.push(v.to_owned());
        } else {
            out.push(arg);
        }
    }
    if let Some(at) = first_at {
        out.insert(at, values.join(","));
        out.insert(at, flag.to_owned());
    }
    out
}

/// A secret given inline (option `name`) or in a file (`<name>_file`): its bytes, the
/// file's without its trailing line end (editors add one). `None` with neither.
///
/// # Errors
/// Both set, or the file cannot be read — naming the option.
fn secret_bytes(
    inline: &Secret,
    file: &OptionalPath,
    name: &str,
) -> std::result::Result<Option<Vec<u8>>, String> {
    match (&inline.0, &file.0) {
        (Some(_), Some(_)) => Err(format!("{name} and {name}_file: set one, not both")),
        (Some(secret), None) => Ok(Some(secret.clone().into_bytes())),
        (None, Some(path)) => {
            let mut bytes =
                std::fs::read(path).map_err(|e| format!("{name}_file {}: {e}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Ok(Some(bytes))
        }
        (None, None) => Ok(None),
    }
}

/// The JWT keys as the options give them: bytes, not yet parsed (`auth` parses them).
pub(crate) struct JwtKeys {
    /// The HS256 secret (`jwt_secret`, or the content of `jwt_secret_file`).
    pub(crate) secret: Option<Vec<u8>>,
    /// The PEM public key read from `jwt_public_key`.
    pub(crate) public_key_pem: Option<Vec<u8>>,
}

impl Config {
    /// Checks values and cross-field invariants.
    ///
    /// # Errors
    /// [`Error::Config`] with a message naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !self.webhook_url.0.is_empty() && self.webhook_secret().map_err(Error::Config)?.is_none()
        {
            return bad("webhook_url needs webhook_secret (or webhook_secret_file): every request is signed".into());
        }
        if self.presence_ttl.0 < Duration::from_millis(500) {
            return bad("presence_ttl must be at least 500ms".into());
        }
        if self.webhook_queue == 0 {
            return bad("webhook_queue must be at least 1".into());
        }
        if let ShardCount::Exactly(0) = self.shards {
            return bad("shards must be at least 1 (or `all`)".into());
        }
        if self.backlog == 0 || self.backlog > i32::MAX as usize {
            return bad(format!("backlog must be between 1 and {}", i32::MAX));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if self.handshake_timeout.enabled().is_none() {
            return bad(
                "handshake_timeout cannot be off: a silent socket would stay forever".into()
            );
        }
        if self.max_request_size.0 < 256 {
            return bad("max_request_size must be at least 256 bytes".into());
        }
        if self.max_message_size.0 < 125 || self.max_message_size.0 > (64 << 20) {
            return bad("max_message_size must be between 125 bytes and 64MiB".into());
        }
        if self.outbound_queue_limit.0 < 4096 {
            return bad("outbound_queue_limit must be at least 4KiB".into());
        }
        if self.send_batch > 4096 {
            return bad("send_batch must be at most 4096 (0 turns io_uring sends off)".into());
        }
        if self.delivery == DeliveryMode::Streams && self.redis.0.is_none() {
            return bad("delivery = streams needs --redis (the embedded bus has no Pub/Sub)".into());
        }
        if self.history_meta_ttl.0 < self.history_ttl.0 {
            return bad("history_meta_ttl must be at least history_ttl".into());
        }
        if self.recovery_max_replay == 0 {
            return bad("recovery_max_replay must be at least 1".into());
        }
        if self.rate_limit_burst == 0 {
            return bad("rate_limit_burst must be at least 1".into());
        }
        if self.idempotency_window.enabled().is_none() {
            return bad("idempotency_window cannot be off".into());
        }
        if self.ping_interval.enabled().is_some() && self.pong_timeout.enabled().is_none() {
            return bad("pong_timeout cannot be off while ping_interval is on".into());
        }
        if self.max_pending_handshakes == 0 || self.max_pending_handshakes_per_ip == 0 {
            return bad(
                "max_pending_handshakes and max_pending_handshakes_per_ip must be at least 1"
                    .into(),
            );
        }
        if self.max_fragments == 0 || self.max_control_frames_per_sec == 0 {
            return bad("max_fragments and max_control_frames_per_sec must be at least 1".into());
        }
        if self.inbox_capacity == 0 {
            return bad("inbox_capacity must be at least 1".into());
        }
        if self.io_memory.0 < 4096 {
            return bad("io_memory must be at least 4KiB".into());
        }
        let interval = self.redis_heartbeat_interval.0;
        if interval.is_zero() || self.redis_heartbeat_timeout.0 < interval * 2 {
            return bad(
                "redis_heartbeat_interval must be on, and redis_heartbeat_timeout at least \
                        twice it"
                    .into(),
            );
        }
        if self.redis_command_timeout.0.is_zero() {
            return bad("redis_command_timeout cannot be off (a command to a frozen Redis would \
                        wait forever)"
                .into());
        }
        if let Some(ca) = &self.redis_tls_ca.0 {
            if !self.redis.0.as_deref().is_some_and(|u| u.starts_with("rediss://")) {
                return bad("redis_tls_ca needs a rediss:// Redis URL".into());
            }
            crate::redis_url::load_ca(ca).map_err(Error::Config)?;
        }
        let jwt = self.jwt_keys().map_err(Error::Config)?;
        crate::auth::token::check_keys(jwt.secret.as_deref(), jwt.public_key_pem.as_deref())
            .map_err(Error::Config)?;
        self.api_key().map_err(Error::Config)?;
        if self.redis_command_queue == 0 || self.redis_receive_buffer == 0 {
            return bad("redis_command_queue and redis_receive_buffer must be at least 1".into());
        }
        Ok(())
    }

    /// The JWT keys' bytes, read from the options (and their files).
    ///
    /// # Errors
    /// Both `jwt_secret` and `jwt_secret_file` set, or an unreadable file — naming the
    /// option.
    pub(crate) fn jwt_keys(&self) -> std::result::Result<JwtKeys, String> {
        let secret = secret_bytes(&self.jwt_secret, &self.jwt_secret_file, "jwt_secret")?;
        let public_key_pem = match &self.jwt_public_key.0 {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("jwt_public_key {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(JwtKeys { secret, public_key_pem })
    }

    /// The server API's key: `None` when the API is off.
    ///
    /// # Errors
    /// Both `webhook_secret` and `webhook_secret_file` set, or an unreadable file.
    pub(crate) fn webhook_secret(&self) -> std::result::Result<Option<Vec<u8>>, String> {
        secret_bytes(&self.webhook_secret, &self.webhook_secret_file, "webhook_secret")
    }

    /// Both `api_key` and `api_key_file` set, an unreadable file, or an empty key.
    pub(crate) fn api_key(&self) -> std::result::Result<Option<String>, String> {
        let Some(key) = secret_bytes(&self.api_key, &self.api_key_file, "api_key")? else {
            return Ok(None);
        };
        let key = String::from_utf8(key).map_err(|_| "api_key_file: not UTF-8".to_owned())?;
        if key.is_empty() {
            return Err("the API key is empty".into());
        }
        Ok(Some(key))
    }

    /// Parses options from an argument list (used by tests and `main`).
    ///
    /// # Errors
    /// Clap's usage error as [`Error::Config`], or a validation error.
    pub fn from_arg_list<I, T>(args: I) -> Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = <ConfigArgs as clap::Args>::augment_args(clap::Command::new("corecast"));
        let matches = cmd.try_get_matches_from(args).map_err(|e| Error::Config(e.to_string()))?;
        let args =
            ConfigArgs::from_arg_matches(&matches).map_err(|e| Error::Config(e.to_string()))?;
        Config::from_args(&args, &matches)
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

    #[test]
    /// File over default, flag over file (the environment is tested through the binary,
    /// in tests/shutdown.rs: a test cannot set variables in its own threaded process).
    fn precedence_is_default_file_flag() {
        let dir = std::env::temp_dir().join(format!("corecast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "backlog = 100\nping_interval = \"3s\"\nmax_message_size = 1000\n")
            .unwrap();
        let cfg = Config::from_arg_list([
            "corecast",
            "--config",
            file.to_str().unwrap(),
            "--backlog",
            "7",
        ])
        .unwrap();
        assert_eq!(cfg.backlog, 7, "flag beats file");
        assert_eq!(cfg.ping_interval.0, Duration::from_secs(3), "file beats default");
        assert_eq!(cfg.max_message_size.0, 1000);
        assert_eq!(cfg.pong_timeout, Config::default().pong_timeout);

        std::fs::write(&file, "bogus_key = 1\n").unwrap();
        let err =
            Config::from_arg_list(["corecast", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("bogus_key"), "{err}");
    }

    #[test]
    fn check_config_output_loads_back() {
        let cfg =
            Config::from_arg_list(["corecast", "--backlog", "12", "--ping-interval", "1500ms"])
                .unwrap();
        let dir = std::env::temp_dir().join(format!("corecast-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rt.toml");
        std::fs::write(&file, cfg.to_toml()).unwrap();
        let again =
            Config::from_arg_list(["corecast", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn validation_names_the_option() {
        let err = Config::from_arg_list(["corecast", "--shards", "0"]).unwrap_err();
        assert!(err.to_string().contains("shards"), "{err}");
        let err = Config::from_arg_list(["corecast", "--pong-timeout", "off"]).unwrap_err();
        assert!(err.to_string().contains("pong_timeout"), "{err}");
        let err = Config::from_arg_list(["corecast", "--listen", "nope"]).unwrap_err();
        assert!(err.to_string().contains("ADDR:PORT"), "{err}");
        let err = Config::from_arg_list(["corecast", "--send-batch", "5000"]).unwrap_err();
        assert!(err.to_string().contains("send_batch"), "{err}");
    }

    #[test]
    fn repeated_webhook_urls_are_folded_into_one_list() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let folded = fold_repeated_flag(
            args(&[
                "corecast",
                "--webhook-url",
                "http://a/x",
                "--shards",
                "1",
                "--webhook-url=http://b/y",
            ]),
            "--webhook-url",
        );
        assert_eq!(
            folded,
            args(&["corecast", "--webhook-url", "http://a/x,http://b/y", "--shards", "1"])
        );
        let untouched = args(&["corecast", "--shards", "1"]);
        assert_eq!(fold_repeated_flag(untouched.clone(), "--webhook-url"), untouched);
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
