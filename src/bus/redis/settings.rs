//! How the bridge talks to Redis: its settings (from the node's configuration) and the
//! three fred clients built from them.
//!
//! Runs on: the thread that starts the node (`spawn` builds the clients there, so that a
//! configuration they reject stops the node at start); the clients then live on the
//! bridge thread. No I/O: building a client does not connect it (reading a `rediss://`
//! URL's CA file aside).

use std::{sync::Arc, time::Duration};

use fred::{
    prelude::{Builder, Client, Error as RedisError},
    types::config::{Config as RedisConfig, ReconnectPolicy},
};

use crate::{config::DeliveryMode, history::memory::HistorySettings};

/// How the bridge talks to Redis (from the node's configuration).
#[derive(Clone)]
pub(crate) struct BridgeSettings {
    /// `redis://[:password@]host:port/db` (a secret: never logged).
    pub url: String,
    /// CA certificates (PEM file) for a `rediss://` URL; `None`: the system's roots.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Prefix of the deployment's keys and channels (as configured: the bridge adds the
    /// database, [`deployment_prefix`]).
    pub prefix: String,
    /// The channel of broadcasts in the seed design's format (`ws_broadcast`).
    pub seed_channel: String,
    /// Interval of the heartbeat through Redis.
    pub heartbeat_interval: Duration,
    /// Not ready, and a forced reconnect, after this long without the heartbeat.
    pub heartbeat_timeout: Duration,
    /// Timeout of every Redis command (and of connecting).
    pub command_timeout: Duration,
    /// Most commands queued in fred, per client; more fail at once.
    pub command_queue: usize,
    /// Messages fred buffers for the bridge; beyond it they are dropped (`Lagged`).
    pub receive_buffer: usize,
    /// Largest payload delivered (the per-connection outbound queue limit: a larger frame
    /// would cut off every receiver as a slow consumer); larger ones are dropped.
    pub max_payload: usize,
    /// What history each stream keeps, and the replay limit.
    pub history: HistorySettings,
    /// How long a publish idempotency key is remembered.
    pub idempotency_window: Duration,
    /// How stored events reach the node: Pub/Sub (with gap fill) or XREAD of the streams.
    pub delivery: DeliveryMode,
    /// Keep users' connection counts in Redis (`max_connections_per_user` is set).
    pub count_users: bool,
    /// A dead node's presence members are removed this long after its last heartbeat.
    pub presence_ttl: Duration,
    /// Webhooks, when configured: the dispatcher runs on the bridge's runtime.
    pub webhooks: Option<BridgeWebhooks>,
}

/// The webhook parts the bridge runs.
#[derive(Clone, Debug)]
pub(crate) struct BridgeWebhooks {
    /// How to send them.
    pub settings: crate::presence::dispatch::WebhookSettings,
    /// The node's queue (presence transitions go in here too).
    pub queue: crate::presence::webhook::WebhookQueue,
    /// The dispatcher's end of the queue.
    pub events: flume::Receiver<crate::presence::webhook::WebhookEvent>,
    /// The vacate delay (kept in Redis, cluster-wide).
    pub vacate_delay: Duration,
}

impl std::fmt::Debug for BridgeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeSettings")
            .field("url", &crate::redis_url::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("seed_channel", &self.seed_channel)
            .finish_non_exhaustive()
    }
}

/// The prefix of every key and channel of the deployment: the configured `prefix`, then
/// `db<N>:` when the URL selects database N other than 0. Keys are per database, but
/// Pub/Sub channels are server-wide: two deployments that differ only by database would
/// otherwise exchange events, cluster commands and presence news.
pub(crate) fn deployment_prefix(prefix: &str, url: &str) -> String {
    match RedisConfig::from_url(url).ok().and_then(|c| c.database) {
        Some(db) if db != 0 => format!("{prefix}db{db}:"),
        _ => prefix.to_owned(),
    }
}

/// The three fred clients, configured from `settings`: subscriber, publisher, and the
/// stream reader (blocking XREADs need a connection of their own; it connects only in
/// streams mode).
pub(super) fn clients(settings: &BridgeSettings) -> Result<(Client, Client, Client), RedisError> {
    let mut config = RedisConfig::from_url(&settings.url)?;
    if let Some(ca) = &settings.tls_ca {
        let roots = crate::redis_url::load_ca(ca)
            .map_err(|e| RedisError::new(fred::error::ErrorKind::Tls, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RedisError::new(fred::error::ErrorKind::Tls, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    // Keep trying when Redis is not there at start: the node serves locally meanwhile.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = settings.command_timeout;
            perf.broadcast_channel_capacity = settings.receive_buffer;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = settings.command_timeout;
            conn.internal_command_timeout = settings.command_timeout;
            // A publish is never sent twice (a retried PUBLISH whose first attempt
            // executed would be delivered twice).
            conn.max_command_attempts = 1;
            conn.max_command_buffer_len = settings.command_queue;
        })
        // Forever, 100 ms doubling up to 1 s: delivery resumes within about a second of
        // Redis coming back, at a cost of one connection attempt per second while away.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2));
    Ok((builder.build()?, builder.build()?, builder.build()?))
}

#[cfg(test)]
mod tests {
    use super::deployment_prefix;

    #[test]
    fn a_database_other_than_0_is_part_of_the_deployment_prefix() {
        assert_eq!(deployment_prefix("cc:", "redis://127.0.0.1:6400/0"), "cc:");
        assert_eq!(deployment_prefix("cc:", "redis://127.0.0.1:6400"), "cc:");
        assert_eq!(deployment_prefix("cc:", "redis://127.0.0.1:6400/3"), "cc:db3:");
    }
}
