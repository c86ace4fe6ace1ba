//! What comes from Redis on the subscriber connection: each message classified by its
//! channel (an event, the heartbeat, a cluster command), an event framed once and handed
//! through the stream core to the shards that want it.
//!
//! Runs on: the bridge thread, called by the bridge's loop for each message. Pure:
//! [`value_text`]; the rest does I/O (the shards' inboxes).

use std::sync::Arc;

use fred::types::Value;
use tracing::debug;

use super::{
    Shared, presence,
    wire::{self, Incoming},
};
use crate::{
    config::DeliveryMode,
    ids::{Route, ShardId},
    stats::BridgeStats,
    xshard::{ClusterControl, Delivery, ShardMessage},
};

/// One message from Redis: an event for local connections, or this node's heartbeat
/// (which needs nothing more: every message counts as liveness).
pub(super) async fn on_message(
    shared: &Shared,
    message: &fred::types::Message,
    json: &mut String,
    targets: &mut Vec<ShardId>,
) {
    match shared.channels.classify(&message.channel) {
        Incoming::Event(route) => receive(shared, route, &message.value, json, targets).await,
        Incoming::Heartbeat => {}
        Incoming::Control => {
            let control = value_text(&message.value)
                .and_then(|text| serde_json::from_str::<ClusterControl>(text).ok());
            match control {
                Some(control) => shared.apply_everywhere(control).await,
                None => {
                    BridgeStats::add(&shared.bridge().dropped_messages, 1);
                    debug!("dropped a malformed cluster command");
                }
            }
        }
        Incoming::Unknown(channel) => debug!(channel, "message on an unread channel"),
    }
}

/// The payload as text; `None` when it is not UTF-8 (fred has already checked a
/// `Value::String`).
pub(super) fn value_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// A message from Redis for local connections: framed once, handed to the shards that
/// want it.
async fn receive(
    shared: &Shared,
    route: Route,
    payload: &Value,
    json: &mut String,
    targets: &mut Vec<ShardId>,
) {
    shared.interest.borrow().targets(&route, shared.shards, targets);
    if targets.is_empty() {
        return; // unsubscribed meanwhile: nobody here wants it
    }
    let text = match value_text(payload) {
        Some(text) if text.len() <= shared.max_payload => text,
        other => {
            let why =
                if other.is_none() { wire::Dropped::NotUtf8 } else { wire::Dropped::TooLarge };
            BridgeStats::add(&shared.bridge().dropped_messages, 1);
            debug!(%why, ?route, "dropped a message from Redis");
            return;
        }
    };
    if let Route::Topic(topic) = &route
        && let Some(news) = presence::news_of(topic, text)
    {
        shared.deliver(targets, ShardMessage::Presence(Arc::new(news))).await;
        return;
    }
    let delivery = Arc::new(wire::delivery_from(route.clone(), text, json));
    BridgeStats::add(&shared.bridge().messages_in, 1);
    if shared.delivery == DeliveryMode::Streams
        && delivery.id.is_some_and(|id| shared.streams.borrow().left_to_reader(&route, id))
    {
        return; // the stream reader delivers stored events (`read_streams`)
    }
    deliver_tracked(shared, route, delivery, targets).await;
}

/// Delivers one event of `route` through the stream core (in order, gaps filled from the
/// history, duplicates dropped); an event without id, or of a stream the node does not
/// track, goes out as it is. `targets` holds the shards that want the stream.
pub(super) async fn deliver_tracked(
    shared: &Shared,
    route: Route,
    delivery: Arc<Delivery>,
    targets: &mut Vec<ShardId>,
) {
    let now = shared.streams.borrow_mut().handle_live(&route, delivery);
    match now {
        Some(delivery) => shared.deliver(targets, ShardMessage::Deliver(delivery)).await,
        None => shared.run_effects(Some(&route), targets).await,
    }
}
