//! The reserved topic `corecast.stats`: once a second, this node's figures as one event,
//! which the dashboard (`GET /`) and any permitted subscriber get over WebSocket — no
//! polling. With Redis it reaches every node's subscribers, so one dashboard shows the
//! whole cluster.
//!
//! Runs on: shard 0 only (one feed per node). Reads the relaxed atomics of
//! `stats::NodeStats`; publishes through the bus like a client would, as sender
//! `corecast`. Clients may not publish on the topic (`read_only`); with an API key set,
//! subscribing needs the key as the subscription's `token`.

use std::{rc::Rc, sync::atomic::Ordering::Relaxed, time::Duration};

use glommio::timer::Timer;
use serde::Serialize;

use super::Shard;
use crate::{
    event::{Event, Payload, PublishOptions},
    ids::Route,
    stats::{Histogram, HistogramReading},
};

pub(crate) use crate::protocol::limits::STATS_TOPIC;

/// How often the node publishes its figures.
const PERIOD: Duration = Duration::from_secs(1);

/// One node's figures (the event's `data`; the dashboard reads these names).
#[derive(Debug, Serialize)]
struct NodeFigures<'a> {
    node: &'a str,
    /// Unix milliseconds of the sample.
    at: u64,
    bus: &'static str,
    draining: bool,
    connections: u64,
    connections_per_shard: Vec<u64>,
    deliveries_per_s: f64,
    messages_in_per_s: f64,
    bytes_out_per_s: f64,
    deliveries: u64,
    slow_consumer_closes: u64,
    heartbeat_timeouts: u64,
    protocol_closes: u64,
    rejected_handshakes: u64,
    /// Publish-to-delivery lag over the last period, upper bucket bounds in ms (`null`
    /// when nothing was delivered).
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
    redis: Option<RedisFigures>,
    rss_bytes: u64,
}

#[derive(Debug, Serialize)]
struct RedisFigures {
    connected: bool,
    ready: bool,
    reconnects: u64,
    publish_errors: u64,
    lagged: u64,
    /// Round trip of the heartbeat PUBLISH over the last period, p99 bucket bound (ms).
    round_trip_p99_ms: Option<f64>,
}

/// Counters as of the previous sample, for rates and per-period quantiles.
#[derive(Default)]
struct Previous {
    deliveries: u64,
    messages_in: u64,
    bytes_out: u64,
    lag: Option<HistogramReading>,
    round_trip: Option<HistogramReading>,
}

/// Publishes the node's figures every [`PERIOD`] until the task is dropped.
pub(super) async fn run(shard: Rc<Shard>) {
    let mut previous = Previous::default();
    loop {
        Timer::new(PERIOD).await;
        let json = sample(&shard, &mut previous);
        let event = Event {
            sender: "corecast".into(),
            route: Route::Topic(STATS_TOPIC.into()),
            payload: Payload::Json(json),
        };
        if shard.bus.publish(event, PublishOptions::default(), None).await.is_err() {
            return; // the bus is gone: shutting down
        }
    }
}

fn sample(shard: &Shard, previous: &mut Previous) -> String {
    let stats = shard.ctx.node_stats();
    let per_s = PERIOD.as_secs_f64();
    let deliveries = stats.total(|s| &s.deliveries);
    let messages_in = stats.total(|s| &s.messages_in);
    let bytes_out = stats.total(|s| &s.bytes_out);
    let lag = Histogram::read(stats.shards.iter().map(|s| &s.delivery_lag));
    let (lag_p50_ms, lag_p99_ms) = {
        let recent = lag.since(previous.lag.as_ref());
        (recent.quantile_seconds(0.5), recent.quantile_seconds(0.99))
    };
    let redis = stats.bridge.as_ref().map(|b| {
        let round_trip = Histogram::read([&b.round_trip]);
        let p99 = round_trip.since(previous.round_trip.as_ref()).quantile_seconds(0.99);
        previous.round_trip = Some(round_trip);
        RedisFigures {
            connected: b.connected.load(Relaxed),
            ready: b.ready.load(Relaxed),
            reconnects: b.reconnects.load(Relaxed),
            publish_errors: b.publish_errors.load(Relaxed),
            lagged: b.lagged.load(Relaxed),
            round_trip_p99_ms: p99.map(|s| s * 1e3),
        }
    });
    let figures = NodeFigures {
        node: &stats.node.0,
        at: crate::clock::unix_now_ms(),
        bus: if stats.bridge.is_some() { "redis" } else { "embedded" },
        draining: shard.shutting_down.get(),
        connections: shard.budget.used() as u64,
        connections_per_shard: stats.shards.iter().map(|s| s.connections.load(Relaxed)).collect(),
        deliveries_per_s: deliveries.saturating_sub(previous.deliveries) as f64 / per_s,
        messages_in_per_s: messages_in.saturating_sub(previous.messages_in) as f64 / per_s,
        bytes_out_per_s: bytes_out.saturating_sub(previous.bytes_out) as f64 / per_s,
        deliveries,
        slow_consumer_closes: stats.total(|s| &s.slow_consumer_closes),
        heartbeat_timeouts: stats.total(|s| &s.heartbeat_timeouts),
        protocol_closes: stats.total(|s| &s.protocol_closes),
        rejected_handshakes: stats.total(|s| &s.rejected_handshakes),
        lag_p50_ms: lag_p50_ms.map(|s| s * 1e3),
        lag_p99_ms: lag_p99_ms.map(|s| s * 1e3),
        redis,
        rss_bytes: crate::sys::process_rss_bytes().unwrap_or(0),
    };
    *previous = Previous {
        deliveries,
        messages_in,
        bytes_out,
        lag: Some(lag),
        round_trip: previous.round_trip.take(),
    };
    // Plain numbers, strings and booleans: serializing cannot fail.
    serde_json::to_string(&figures).expect("node figures serialize")
}
