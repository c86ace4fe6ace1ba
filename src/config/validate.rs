//! The configuration's checks: each option's range and the invariants between options,
//! with messages that name the option (`--check-config` refuses what the node would).
//!
//! Runs on: the main thread, once at start-up, before anything is built.
//!
//! It builds nothing: the secret and key files are read to check them (the JWT keys by
//! `auth::token::check_keys`, the Redis CA by `redis_url::load_ca`) and nothing read is
//! kept; the token verifier is built by `server::start`, the Redis TLS settings by the
//! Redis bridge. The syntax of single values is checked earlier, by their parsers
//! (`config::values`, `config::endpoints`).

use std::time::Duration;

use super::{
    options::Config,
    values::{DeliveryMode, ShardCount},
};
use crate::error::{Error, Result};

impl Config {
    /// Checks values and cross-field invariants, keeping nothing it reads.
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
