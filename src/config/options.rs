//! Every option once: the table below gives each option's name, type (which carries its
//! unit: `HumanDuration`, `ByteSize`, `Count`), default, environment variable and
//! documentation, and the `config_options!` macro turns it into all that is derived from
//! it: the [`Config`] struct a shard reads, the command-line [`ConfigArgs`] (long flag
//! `--<name>` with `-` for `_`, `env = CORECAST_<NAME>`, `--help` text and default), the
//! TOML file's keys, the layering of defaults < file < environment < flags, and
//! `--check-config`'s TOML.
//!
//! Runs on: the main thread, once at start-up; [`Config`] is then cloned into every shard
//! (plain data, `Send + Clone`).
//!
//! To add an option: one line in the table (its doc is its `--help` text), and a check in
//! `config::validate` if its range is limited or other options constrain it. The value
//! types are in `config::values` and `config::endpoints`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgMatches, parser::ValueSource};
use serde::Deserialize;

use super::{
    endpoints::{EchoPath, ListenAddr, OptionalAddr, Origins, RedisUrl, UrlList},
    values::{
        AutoLimit, ByteSize, Count, CpuChoice, DeliveryMode, Name, OptionalPath, Secret, ShardCount,
    },
};
use crate::{
    auth::permissions::DefaultPermissions,
    duration::HumanDuration,
    error::{Error, Result},
    history::retention::HistoryRules,
};

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
            /// The options as given, not yet validated: defaults < file < environment <
            /// flags (`Config::from_args` validates them).
            ///
            /// # Errors
            /// [`Error::Config`] naming the file that cannot be read or parsed, or the
            /// unknown key in it.
            pub(super) fn layered(args: &ConfigArgs, matches: &ArgMatches) -> Result<Config> {
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
    // Listening, the HTTP upgrade and admission.
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

    // One connection: message size, frames, queue and heartbeats.
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

    // Shutdown.
    /// On SIGTERM/SIGINT: how long clients get to finish the close handshake, after the last Close was sent, before sockets are dropped.
    drain_timeout: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_DRAIN_TIMEOUT";
    /// On SIGTERM/SIGINT: `/readyz` answers 503 at once, then the connections get Close 1012 ("service restart") spread evenly over this period, so that clients reconnect elsewhere gradually (`off`: all at once). A second signal closes the rest at once; `drain_timeout` then applies.
    drain_period: HumanDuration = HumanDuration(Duration::from_secs(10)), env = "CORECAST_DRAIN_PERIOD";

    // Shard resources: socket buffers, inboxes, io_uring.
    /// SO_SNDBUF for accepted sockets (0 = kernel default with autotuning). Bounds kernel memory per slow client.
    socket_send_buffer: ByteSize = ByteSize(0), env = "CORECAST_SOCKET_SEND_BUFFER";
    /// Capacity, in events, of each shard's inbox from the bus and of its sequencer lane (commands about the streams it owns). Full, they make publishers wait.
    inbox_capacity: Count = 8192, env = "CORECAST_INBOX_CAPACITY";
    /// Most sockets written per io_uring submission when a shard flushes (one `io_uring_enter` carries that many non-blocking sends; rounded up to a power of two; at most 4096); 0 = one sendmsg(2) syscall per socket. Falls back to sendmsg if io_uring is unavailable.
    send_batch: Count = 256, env = "CORECAST_SEND_BATCH";
    /// io_uring registered memory per shard. Sockets never use it; keep small (locked memory, tuning/).
    io_memory: ByteSize = ByteSize(64 << 10), env = "CORECAST_IO_MEMORY";

    // The node and its Redis bridge (`--redis`).
    /// This node's name in logs, `/healthz` and its Redis heartbeat channel (A-Z a-z 0-9 _ . : -); empty = `<hostname>-<pid>`.
    node_id: Name = Name::default(), env = "CORECAST_NODE_ID";
    /// Redis URL `redis://[:password@]host:port/db` to run as one node of a cluster (the Redis bridge), or `off` for the embedded single-node bus. The password is never logged.
    redis: RedisUrl = RedisUrl::default(), env = "CORECAST_REDIS_URL";
    /// With a `rediss://` URL: PEM file of the CA certificate(s) that signed the Redis server's certificate (`none`: the system's trusted roots).
    redis_tls_ca: OptionalPath = OptionalPath::default(), env = "CORECAST_REDIS_TLS_CA";
    /// Prefix of corecast's Redis keys and channels (`<prefix>topic:<T>`, `<prefix>user:<U>`, `<prefix>node:<id>`, ...); with a database other than 0 in the Redis URL, `db<N>:` follows it (Pub/Sub channels ignore database numbers). Two deployments on one Redis server need different prefixes or databases — and different `seed_channel`s.
    redis_prefix: Name = Name("corecast:".into()), env = "CORECAST_REDIS_PREFIX";
    /// The Redis channel of broadcasts, in the seed design's format: the one channel a deployment shares with the Python nodes of that design (theirs is `ws_broadcast`). Every deployment that does not share its broadcasts with another needs its own.
    seed_channel: Name = Name("ws_broadcast".into()), env = "CORECAST_SEED_CHANNEL";
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

    // History, recovery and delivery.
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

    // Authentication (tokens).
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

    // The server API.
    /// Key of the server API (`Authorization: Bearer <key>` on `/api/...`); setting it (or `api_key_file`) turns the API on. Never logged. Prefer the environment or the file over the command line.
    api_key: Secret = Secret::default(), env = "CORECAST_API_KEY";
    /// File holding the API key (a trailing newline is ignored), or `none`.
    api_key_file: OptionalPath = OptionalPath::default(), env = "CORECAST_API_KEY_FILE";
    /// Address of a listener that serves only the server API (SO_REUSEPORT, one per shard; port 0 picks a free port), or `none`: the API is then served under `/api/` on `listen`.
    api_listen: OptionalAddr = OptionalAddr::default(), env = "CORECAST_API_LISTEN";
    /// Largest server-API request body; larger gets 413.
    max_api_body: ByteSize = ByteSize(1 << 20), env = "CORECAST_MAX_API_BODY";

    // Rate and connection limits.
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

    // Presence and webhooks.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
