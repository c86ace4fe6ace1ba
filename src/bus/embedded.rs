//! The embedded bus: single node, no Redis. An event is encoded once on the publishing
//! shard and the resulting `Arc<Delivery>` is pushed into every shard's inbox (the
//! publishing shard's own included, so every connection sees one order per publisher).
//!
//! Runs on: the publishing shard's thread. Holds only the inbox senders (`Send + Sync`).

use std::sync::Arc;

use super::{Bus, BusError, PublishFuture};
use crate::{event::Event, xshard::ShardInboxes};

/// In-process bus over bounded flume channels, one per shard.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    /// Every shard's inbox; the shards hold the receivers.
    inboxes: ShardInboxes,
}

impl EmbeddedBus {
    /// A bus delivering into `inboxes`.
    pub fn new(inboxes: ShardInboxes) -> EmbeddedBus {
        EmbeddedBus { inboxes }
    }
}

impl Bus for EmbeddedBus {
    fn publish(&self, event: Event) -> PublishFuture<'_> {
        let delivery = Arc::new(event.encode());
        Box::pin(async move {
            for inbox in self.inboxes.iter() {
                match inbox.try_send(delivery.clone()) {
                    Ok(()) => {}
                    // Full: wait for room (this connection only); the receiving shard drains
                    // its inbox without ever waiting on a connection, so this always ends.
                    Err(flume::TrySendError::Full(d)) => {
                        inbox.send_async(d).await.map_err(|_| BusError::Closed)?
                    }
                    Err(flume::TrySendError::Disconnected(_)) => return Err(BusError::Closed),
                }
            }
            Ok(())
        })
    }
}
