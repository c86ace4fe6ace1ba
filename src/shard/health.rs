//! The `/healthz` document: node-wide counters as one JSON object.
//!
//! Runs on: whichever shard accepted the HTTP request; it reads every shard's counters
//! (relaxed atomics in `stats::NodeStats`), so the answer is the node's, not the
//! shard's. The document is a struct serialized by serde: its fields are the wire format,
//! and a test checks them against PROTOCOL.md.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{admission::ConnectionBudget, auth::AuthFailure, ids::ShardId, stats::NodeStats, sys};

/// The `/healthz` body (PROTOCOL.md, "`/healthz`", documents every field).
#[derive(Debug, Serialize)]
pub(crate) struct Health {
    status: &'static str,
    shard: u16,
    shards: usize,
    connections: usize,
    max_connections: usize,
    connections_per_shard: Vec<u64>,
    upgrades: u64,
    pending_handshakes: usize,
    rejected_handshakes: u64,
    messages_in: u64,
    deliveries: u64,
    slow_consumer_closes: u64,
    heartbeat_timeouts: u64,
    protocol_closes: u64,
    queued_bytes: u64,
    batched_sends: u64,
    send_batches: u64,
    auth: bool,
    auth_rejected: std::collections::BTreeMap<&'static str, u64>,
    forbidden: u64,
    seed_texts_dropped: u64,
    too_large: u64,
    token_expiry_closes: u64,
    rate_limited: u64,
    rate_limit_closes: u64,
    connects_limited: u64,
    user_limited: u64,
    webhooks: Webhooks,
    rss_bytes: u64,
    node_id: String,
    bus: &'static str,
    bridge: Option<Bridge>,
}

/// Webhook delivery (zeros without `webhook_url`).
#[derive(Debug, Serialize)]
struct Webhooks {
    queued: u64,
    sent: u64,
    failed: u64,
    dropped: u64,
}

/// The Redis bridge's part of `/healthz` (`null` with the embedded bus).
#[derive(Debug, Serialize)]
struct Bridge {
    connected: bool,
    ready: bool,
    subscribed_channels: u64,
    /// `reconnects`, `lagged`, `publish_errors`, ... (`BridgeStats::counters`).
    #[serde(flatten)]
    counters: BTreeMap<&'static str, u64>,
}

/// The `/readyz` body: 200 with `ready: true`, else 503 with the reason.
#[derive(Debug, Serialize)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    reason: Option<&'static str>,
}

impl Readiness {
    /// Ready unless the node is draining or its bus is not (Redis away or silent).
    pub(crate) fn read(draining: bool, stats: &NodeStats) -> Readiness {
        let reason = if draining {
            Some("draining")
        } else if !stats.bus_ready() {
            Some("redis unavailable")
        } else {
            None
        };
        Readiness { ready: reason.is_none(), reason }
    }

    /// The JSON text.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("readiness document serializes")
    }
}

impl Health {
    /// Reads the node's counters now; `shard` is the shard answering.
    pub(crate) fn read(
        shard: ShardId,
        draining: bool,
        stats: &NodeStats,
        budget: &ConnectionBudget,
        pending: &ConnectionBudget,
        auth: bool,
    ) -> Health {
        use std::sync::atomic::Ordering::Relaxed;
        Health {
            status: if draining { "draining" } else { "ok" },
            shard: shard.0,
            shards: stats.shards.len(),
            connections: budget.used(),
            max_connections: budget.max(),
            connections_per_shard: stats
                .shards
                .iter()
                .map(|s| s.connections.load(Relaxed))
                .collect(),
            upgrades: stats.total(|s| &s.upgrades),
            pending_handshakes: pending.used(),
            rejected_handshakes: stats.total(|s| &s.rejected_handshakes),
            messages_in: stats.total(|s| &s.messages_in),
            deliveries: stats.total(|s| &s.deliveries),
            slow_consumer_closes: stats.total(|s| &s.slow_consumer_closes),
            heartbeat_timeouts: stats.total(|s| &s.heartbeat_timeouts),
            protocol_closes: stats.total(|s| &s.protocol_closes),
            queued_bytes: stats.total(|s| &s.queued_bytes),
            batched_sends: stats.total(|s| &s.batched_sends),
            send_batches: stats.total(|s| &s.send_batches),
            auth,
            auth_rejected: AuthFailure::ALL
                .iter()
                .map(|r| (r.key(), stats.total(|s| &s.auth_rejected[r.index()])))
                .collect(),
            forbidden: stats.total(|s| &s.forbidden),
            seed_texts_dropped: stats.total(|s| &s.seed_texts_dropped),
            too_large: stats.total(|s| &s.too_large),
            token_expiry_closes: stats.total(|s| &s.token_expiry_closes),
            rate_limited: stats.total(|s| &s.rate_limited),
            rate_limit_closes: stats.total(|s| &s.rate_limit_closes),
            connects_limited: stats.total(|s| &s.connects_limited),
            user_limited: stats.total(|s| &s.user_limited),
            webhooks: Webhooks {
                queued: stats.webhooks.queued.load(Relaxed),
                sent: stats.webhooks.sent.load(Relaxed),
                failed: stats.webhooks.failed.load(Relaxed),
                dropped: stats.webhooks.dropped.load(Relaxed),
            },
            rss_bytes: sys::process_rss_bytes().unwrap_or(0),
            node_id: stats.node.0.to_string(),
            bus: if stats.bridge.is_some() { "redis" } else { "embedded" },
            bridge: stats.bridge.as_ref().map(|b| Bridge {
                connected: b.connected.load(Relaxed),
                ready: b.ready.load(Relaxed),
                subscribed_channels: b.subscribed_channels.load(Relaxed),
                counters: b.counters().iter().map(|c| (c.key, c.value)).collect(),
            }),
        }
    }

    /// The JSON text.
    pub(crate) fn to_json(&self) -> String {
        // Serializing plain integers and strings into a String cannot fail.
        serde_json::to_string(self).expect("health document serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    /// The fields PROTOCOL.md documents under "`/healthz`" are exactly the fields emitted.
    #[test]
    fn protocol_md_documents_exactly_the_emitted_fields() {
        let stats = NodeStats::new(2, NodeId("n".into()), true);
        let budget = ConnectionBudget::new(10);
        let json: serde_json::Value = serde_json::from_str(
            &Health::read(ShardId(1), false, &stats, &budget, &budget, true).to_json(),
        )
        .expect("valid JSON");
        let mut emitted: Vec<String> = Vec::new();
        for (key, value) in json.as_object().expect("an object") {
            emitted.push(key.clone());
            if let Some(inner) = value.as_object() {
                emitted.extend(inner.keys().map(|k| format!("{key}.{k}")));
            }
        }
        emitted.sort();
        let doc = include_str!("../../PROTOCOL.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("`/healthz`"))
            .expect("PROTOCOL.md has a section \"## `/healthz`\"");
        let mut documented: Vec<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_owned()))
            .collect();
        documented.sort();
        assert_eq!(documented, emitted);
    }
}
