//! `GET /metrics`: the node's counters in the Prometheus text format (0.0.4).
//!
//! Runs on: whichever shard accepted the HTTP request. Nothing here is on the delivery
//! path: shards and the bridge keep writing their relaxed atomics ([`NodeStats`]),
//! and a scrape reads them through a `prometheus_client` [`Collector`], which encodes each
//! family (names, help, types, escaping) — no hand-built exposition text.
//! [`NodeCollector`] lives for one scrape; it is `Send + Sync` (`Arc`s of the node's
//! atomics), as `prometheus_client` requires of a collector.
//!
//! Labels are bounded by construction: `shard` (the shard count), `status` (the fixed
//! list of error statuses the node answers), `reason` (fixed enums). No topic, user or
//! node label: one scrape target is one node, and Prometheus adds `instance` itself.
//! PROTOCOL.md ("`/metrics`") lists every family; a test checks the list against the
//! output.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    admission::ConnectionBudget,
    auth::AuthFailure,
    stats::{Buckets, Histogram, HistogramReading, NodeStats, REJECTED_STATUSES},
    sys,
};

/// The `Content-Type` of the answer.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reads: the node's counters and budgets, and whether it is draining.
#[derive(Debug)]
pub(crate) struct NodeCollector {
    stats: Arc<NodeStats>,
    budget: Arc<ConnectionBudget>,
    pending: Arc<ConnectionBudget>,
    draining: bool,
}

impl NodeCollector {
    /// A collector of this node's state.
    pub(crate) fn new(
        stats: Arc<NodeStats>,
        budget: Arc<ConnectionBudget>,
        pending: Arc<ConnectionBudget>,
        draining: bool,
    ) -> NodeCollector {
        NodeCollector { stats, budget, pending, draining }
    }

    /// The exposition text.
    pub(crate) fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::with_capacity(16 << 10);
        // Writing into a String cannot fail; an encoder error would be a bug in a family.
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("metrics encode into a String");
        text
    }
}

/// One family being written.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Families<'_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let metric = ConstCounter::new(value);
        metric.encode(self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) -> std::fmt::Result {
        let metric = ConstGauge::new(value);
        metric.encode(self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    /// A counter family with one label: `(label value, count)` pairs.
    fn labelled_counters<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (value, count) in values {
            let labels = [(label, value)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        reading: &HistogramReading,
    ) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        family.encode_histogram::<NoLabelSet>(
            reading.sum_seconds,
            reading.count,
            &reading.buckets,
            None,
        )
    }
}

fn shard_histogram<'a, B: Buckets + 'a>(
    stats: &'a NodeStats,
    field: impl Fn(&'a crate::stats::ShardStats) -> &'a Histogram<B>,
) -> HistogramReading {
    Histogram::read(stats.shards.iter().map(field))
}

const STATUS_LABELS: [&str; REJECTED_STATUSES.len() + 1] =
    ["400", "401", "403", "404", "405", "408", "426", "429", "431", "503", "incomplete"];

impl Collector for NodeCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &*self.stats;
        let mut f = Families { encoder };

        // Connections and handshakes.
        {
            let mut family = f.encoder.encode_descriptor(
                "corecast_connections",
                "Open WebSocket connections, per shard.",
                None,
                MetricType::Gauge,
            )?;
            for (at, shard) in s.shards.iter().enumerate() {
                let value = at.to_string();
                let labels = [("shard", value.as_str())];
                let open = i64::try_from(shard.connections.load(Relaxed)).unwrap_or(i64::MAX);
                ConstGauge::new(open).encode(family.encode_family(&labels)?)?;
            }
        }
        let max = i64::try_from(self.budget.max()).unwrap_or(i64::MAX);
        f.gauge("corecast_connections_max", "The node's connection limit (max_connections).", max)?;
        let pending = i64::try_from(self.pending.used()).unwrap_or(i64::MAX);
        f.gauge("corecast_handshakes_pending", "TCP connections not yet upgraded.", pending)?;
        f.gauge(
            "corecast_draining",
            "1 while the node drains (after SIGTERM).",
            self.draining.into(),
        )?;
        f.counter("corecast_upgrades", "WebSocket upgrades completed.", s.total(|s| &s.upgrades))?;
        f.labelled_counters(
            "corecast_handshakes_rejected",
            "HTTP requests refused, by status (incomplete: timed out or abandoned).",
            "status",
            STATUS_LABELS
                .iter()
                .enumerate()
                .map(|(at, status)| (*status, s.total(|s| &s.rejected_by_status[at]))),
        )?;
        f.labelled_counters(
            "corecast_auth_rejected",
            "Upgrades refused for their token, by reason.",
            "reason",
            AuthFailure::ALL.iter().map(|r| (r.key(), s.total(|s| &s.auth_rejected[r.index()]))),
        )?;
        f.labelled_counters(
            "corecast_connections_limited",
            "Upgrades refused (429) by a connection limit.",
            "limit",
            [
                ("per_ip_rate", s.total(|s| &s.connects_limited)),
                ("per_user", s.total(|s| &s.user_limited)),
            ],
        )?;

        // Traffic.
        f.counter(
            "corecast_messages_in",
            "Client messages received.",
            s.total(|s| &s.messages_in),
        )?;
        f.counter(
            "corecast_deliveries",
            "Messages queued to connections (one per connection per event).",
            s.total(|s| &s.deliveries),
        )?;
        f.counter(
            "corecast_bytes_out",
            "Bytes written to client sockets (updated at each heartbeat tick, at most 1 s).",
            s.total(|s| &s.bytes_out),
        )?;
        f.gauge(
            "corecast_queued_bytes",
            "Bytes queued for sockets and not yet written (sampled each tick).",
            i64::try_from(s.total(|s| &s.queued_bytes)).unwrap_or(i64::MAX),
        )?;
        f.counter(
            "corecast_socket_writes_batched",
            "Socket writes submitted through io_uring batches.",
            s.total(|s| &s.batched_sends),
        )?;
        f.counter(
            "corecast_send_batches",
            "io_uring submissions that carried socket writes.",
            s.total(|s| &s.send_batches),
        )?;
        f.labelled_counters(
            "corecast_closes",
            "Connections the server closed, by reason.",
            "reason",
            [
                ("slow_consumer", s.total(|s| &s.slow_consumer_closes)),
                ("heartbeat", s.total(|s| &s.heartbeat_timeouts)),
                ("protocol", s.total(|s| &s.protocol_closes)),
                ("token_expired", s.total(|s| &s.token_expiry_closes)),
                ("rate_limit", s.total(|s| &s.rate_limit_closes)),
            ],
        )?;
        f.labelled_counters(
            "corecast_messages_refused",
            "Client messages refused, by reason.",
            "reason",
            [
                ("forbidden", s.total(|s| &s.forbidden)),
                ("rate_limited", s.total(|s| &s.rate_limited)),
                ("seed_text_not_permitted", s.total(|s| &s.seed_texts_dropped)),
                ("too_large", s.total(|s| &s.too_large)),
            ],
        )?;
        f.histogram(
            "corecast_fanout_duration_seconds",
            "Time one shard took to queue one event to its local receivers.",
            &shard_histogram(s, |s| &s.fan_out),
        )?;
        f.histogram(
            "corecast_publish_delivery_lag_seconds",
            "From the publishing node's stamp to the first delivery on this node, once per event per node (clocks assumed in sync).",
            &shard_histogram(s, |s| &s.delivery_lag),
        )?;

        // Webhooks.
        let w = &s.webhooks;
        f.gauge(
            "corecast_webhook_events_queued",
            "Webhook events waiting (queued, held for the vacate delay, or batched).",
            i64::try_from(w.queued.load(Relaxed)).unwrap_or(i64::MAX),
        )?;
        f.labelled_counters(
            "corecast_webhook_events",
            "Webhook events per outcome (per receiver).",
            "outcome",
            [
                ("sent", w.sent.load(Relaxed)),
                ("failed", w.failed.load(Relaxed)),
                ("dropped", w.dropped.load(Relaxed)),
            ],
        )?;

        // The Redis bridge (absent with the embedded bus).
        if let Some(b) = &s.bridge {
            f.gauge(
                "corecast_bridge_connected",
                "1 while both Redis connections are up.",
                b.connected.load(Relaxed).into(),
            )?;
            f.gauge(
                "corecast_bridge_ready",
                "1 while connected and the node's heartbeat comes back through Redis.",
                b.ready.load(Relaxed).into(),
            )?;
            f.gauge(
                "corecast_bridge_subscribed_channels",
                "Redis channels the node is subscribed to.",
                i64::try_from(b.subscribed_channels.load(Relaxed)).unwrap_or(i64::MAX),
            )?;
            for counter in b.counters() {
                f.counter(counter.metric, counter.help, counter.value)?;
            }
            f.histogram(
                "corecast_bridge_redis_round_trip_seconds",
                "Round trip of the bridge's heartbeat PUBLISH to Redis.",
                &Histogram::read([&b.round_trip]),
            )?;
        }

        let rss = sys::process_rss_bytes().unwrap_or(0);
        f.gauge(
            "corecast_process_resident_memory_bytes",
            "Resident memory of the process.",
            i64::try_from(rss).unwrap_or(i64::MAX),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ids::NodeId, stats::ShardStats};
    use std::time::Duration;

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_histograms_and_bounded_labels() {
        let stats = NodeStats::new(2, NodeId("n".into()), true);
        ShardStats::add(&stats.shards[0].deliveries, 5);
        ShardStats::add(&stats.shards[1].deliveries, 7);
        stats.shards[1].connections.store(3, Relaxed);
        stats.shards[0].rejected(Some(429));
        stats.shards[1].rejected(None);
        stats.shards[0].delivery_lag.observe(Duration::from_micros(300));
        stats.shards[1].delivery_lag.observe(Duration::from_secs(100));
        let budget = ConnectionBudget::new(10);
        let text = NodeCollector::new(stats, budget.clone(), budget, false).render();
        assert_eq!(sample(&text, "corecast_deliveries_total"), Some(12.0), "{text}");
        assert_eq!(sample(&text, r#"corecast_connections{shard="1"}"#), Some(3.0));
        assert_eq!(sample(&text, r#"corecast_handshakes_rejected_total{status="429"}"#), Some(1.0));
        assert_eq!(
            sample(&text, r#"corecast_handshakes_rejected_total{status="incomplete"}"#),
            Some(1.0)
        );
        let lag = "corecast_publish_delivery_lag_seconds";
        assert_eq!(sample(&text, &format!("{lag}_count")), Some(2.0));
        assert_eq!(sample(&text, &format!(r#"{lag}_bucket{{le="0.00025"}}"#)), Some(0.0));
        assert_eq!(sample(&text, &format!(r#"{lag}_bucket{{le="0.0005"}}"#)), Some(1.0));
        assert_eq!(sample(&text, &format!(r#"{lag}_bucket{{le="30"}}"#)), Some(1.0));
        assert_eq!(sample(&text, &format!(r#"{lag}_bucket{{le="+Inf"}}"#)), Some(2.0));
        assert!((sample(&text, &format!("{lag}_sum")).unwrap() - 100.0003).abs() < 1e-6);
        assert!(text.contains("# TYPE corecast_bridge_redis_round_trip_seconds histogram"));
        // Every label is one of the bounded sets.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(labels) = line.split_once('{').map(|(_, rest)| rest) {
                let key = labels.split('=').next().unwrap();
                assert!(
                    ["shard", "status", "reason", "limit", "outcome", "le"].contains(&key),
                    "{line}"
                );
            }
        }
    }

    /// The families PROTOCOL.md lists under "`/metrics`" are exactly the families emitted.
    #[test]
    fn protocol_md_documents_exactly_the_emitted_families() {
        let stats = NodeStats::new(1, NodeId("n".into()), true);
        let budget = ConnectionBudget::new(10);
        let text = NodeCollector::new(stats, budget.clone(), budget, false).render();
        let mut emitted: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        emitted.sort_unstable();
        let doc = include_str!("../../PROTOCOL.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("`/metrics`"))
            .expect("PROTOCOL.md has a section \"## `/metrics`\"");
        let mut documented: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(name, _)| name))
            .collect();
        documented.sort_unstable();
        assert_eq!(documented, emitted);
    }

    #[test]
    fn the_embedded_bus_has_no_bridge_families() {
        let stats = NodeStats::new(1, NodeId("n".into()), false);
        let budget = ConnectionBudget::new(10);
        let text = NodeCollector::new(stats, budget.clone(), budget, true).render();
        assert!(!text.contains("corecast_bridge_"), "{text}");
        assert_eq!(sample(&text, "corecast_draining"), Some(1.0));
    }
}
