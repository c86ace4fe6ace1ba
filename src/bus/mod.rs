//! The bus: how an event published on one shard reaches every shard (and, with Redis,
//! every node).
//!
//! Runs on: [`Bus::publish`] is called on shard threads; implementations are `Send +
//! Sync` and shared by all shards in an `Arc`. Downstream of the bus is each shard's
//! inbox (`xshard::ShardInbox`), drained by the shard's inbox task.
//!
//! Contract for every implementation:
//! - `publish` never blocks the shard thread. When a destination is full it returns a
//!   future that waits (only the publishing connection waits: its reads pause, which is
//!   backpressure on that one client).
//! - Per-publisher order is kept: two events published by one connection reach every
//!   connection in the order they were published.
//! - Each event is encoded into frames once (per wire format) and shared.
//!
//! Implementations: [`embedded::EmbeddedBus`] (single node, in-process). The Redis
//! bridge is the second.

pub mod embedded;

use std::{fmt, future::Future, pin::Pin};

use crate::event::Event;

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The node is shutting down: shard inboxes are gone. The event is dropped.
    #[error("bus closed (node shutting down)")]
    Closed,
}

/// A publish in progress; resolves when every destination has accepted the event.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BusError>> + 'a>>;

/// Carries events between shards (and nodes).
pub trait Bus: Send + Sync + fmt::Debug {
    /// Publishes `event`. Called on a shard thread; must not block it.
    ///
    /// # Cancel safety
    /// Dropping the future may deliver the event to some shards and not others.
    fn publish(&self, event: Event) -> PublishFuture<'_>;
}
