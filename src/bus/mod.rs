//! The bus: how an event published on one shard reaches the shards (and, with Redis, the
//! nodes) whose connections want it, in one order per stream.
//!
//! Runs on: two sides.
//! - **Shard side** ([`BusHandle`]): one per shard, `!Send`, inside the shard. Clients'
//!   publishes and the shard's [`InterestChange`]s go through it, in the order the shard
//!   issued them, as [`BusCommand`]s over one bounded channel to the bus thread.
//! - **Bus side**: one thread per node that owns the bus: [`embedded`] today (single
//!   node), the Redis bridge next. It receives every shard's commands, puts each
//!   **stream** (the broadcast stream, one per topic, one per user's direct messages) in
//!   one order, encodes each event **once**, and hands the same `Arc<Delivery>` to the
//!   inbox of every shard that wants it (`xshard::ShardMessage`).
//!
//! Contract for every bus implementation (tests/bus_contract.rs checks it):
//! - **One order per stream.** Every subscriber of a topic, on every shard, sees that
//!   topic's events in the same order; so for broadcasts and for each user's direct
//!   messages. (This implies per-publisher order: one connection's events reach every
//!   receiver in the order it published them.)
//! - **Exactly once** to every connection the route names when the event arrives.
//! - **Interest.** A shard gets a topic's events only while it has a subscriber of that
//!   topic, and a user's direct messages only while it has a connection of that user; the
//!   broadcast stream always. Interest changes and publishes of one shard are applied in
//!   the order the shard issued them, so a client that subscribes and then publishes to
//!   the topic receives its own event.
//! - **Never blocks a shard.** A publish that finds the bus full waits in the publishing
//!   connection's task only (its reads pause: backpressure on that one client); interest
//!   changes never wait.

pub(crate) mod embedded;

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    rc::Rc,
};

use crate::{
    event::Event,
    xshard::{InterestChange, ShardId},
};

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BusError {
    /// The node is shutting down: the bus is gone. The event is dropped.
    #[error("bus closed (node shutting down)")]
    Closed,
}

/// What a shard sends to the bus thread (`Send`).
#[derive(Debug)]
pub enum BusCommand {
    /// A client's event, to sequence, encode once and deliver.
    Publish(Event),
    /// A shard's interest changed.
    Interest {
        /// The shard whose interest it is.
        shard: ShardId,
        /// What changed.
        change: InterestChange,
    },
    /// Every shard has stopped: the bus thread ends. Sent by the main thread, which keeps
    /// a sender for this (a shard task that never finished may still hold another).
    Shutdown,
}

/// The bus thread's receiving end of every shard's commands.
pub(crate) type BusCommands = flume::Receiver<BusCommand>;

/// Creates the shards → bus channel: `capacity` commands in flight before publishers wait.
pub fn command_channel(capacity: usize) -> (flume::Sender<BusCommand>, BusCommands) {
    flume::bounded(capacity)
}

/// A command waiting on the shard side for room in the channel, with whoever waits for
/// it to be handed over.
#[derive(Debug)]
struct Waiting {
    command: BusCommand,
    /// Told when the command is in the channel (a waiting publish).
    handed_over: Option<flume::Sender<()>>,
}

/// A shard's end of the bus. Lives in its shard (`!Send`: `Rc` and `Cell`s, no atomics).
///
/// Keeps the shard's commands in order: while earlier commands wait for room (the
/// backlog), later ones queue behind them instead of overtaking.
#[derive(Debug)]
pub(crate) struct BusHandle {
    shard: ShardId,
    /// Sending half of the bus thread's command channel; `None` once closed (shutdown).
    /// Dropping every shard's sender ends the bus thread.
    tx: RefCell<Option<flume::Sender<BusCommand>>>,
    /// Commands that found the channel full, oldest first.
    backlog: RefCell<VecDeque<Waiting>>,
    /// A task is handing the backlog over (its current command is out of `backlog`).
    draining: Cell<bool>,
}

impl BusHandle {
    /// The handle of `shard`, sending into `tx`.
    pub(crate) fn new(shard: ShardId, tx: flume::Sender<BusCommand>) -> Rc<BusHandle> {
        Rc::new(BusHandle {
            shard,
            tx: RefCell::new(Some(tx)),
            backlog: RefCell::new(VecDeque::new()),
            draining: Cell::new(false),
        })
    }

    fn sender(&self) -> Result<flume::Sender<BusCommand>, BusError> {
        self.tx.borrow().clone().ok_or(BusError::Closed)
    }

    fn backlogged(&self) -> bool {
        self.draining.get() || !self.backlog.borrow().is_empty()
    }

    /// Publishes `event`. Resolves once the bus has taken it (it is then sequenced and
    /// delivered without the shard's help).
    ///
    /// # Errors
    /// [`BusError::Closed`] when the node is shutting down.
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves may or may not publish the event.
    pub(crate) async fn publish(self: &Rc<Self>, event: Event) -> Result<(), BusError> {
        let tx = self.sender()?;
        let command = BusCommand::Publish(event);
        if !self.backlogged() {
            return match tx.try_send(command) {
                Ok(()) => Ok(()),
                Err(flume::TrySendError::Full(command)) => self.wait_in_line(command).await,
                Err(flume::TrySendError::Disconnected(_)) => Err(BusError::Closed),
            };
        }
        self.wait_in_line(command).await
    }

    async fn wait_in_line(self: &Rc<Self>, command: BusCommand) -> Result<(), BusError> {
        let (done_tx, done_rx) = flume::bounded(1);
        self.push_backlog(Waiting { command, handed_over: Some(done_tx) });
        done_rx.recv_async().await.map_err(|_| BusError::Closed)
    }

    /// Reports an interest change of this shard. Never waits; a change that finds the
    /// channel full is handed over by a background task, still in order. Ignored after
    /// shutdown began.
    pub(crate) fn change_interest(self: &Rc<Self>, change: InterestChange) {
        let Ok(tx) = self.sender() else { return };
        let command = BusCommand::Interest { shard: self.shard, change };
        let command = if self.backlogged() {
            command
        } else {
            match tx.try_send(command) {
                Ok(()) | Err(flume::TrySendError::Disconnected(_)) => return,
                Err(flume::TrySendError::Full(command)) => command,
            }
        };
        self.push_backlog(Waiting { command, handed_over: None });
    }

    fn push_backlog(self: &Rc<Self>, waiting: Waiting) {
        self.backlog.borrow_mut().push_back(waiting);
        if !self.draining.replace(true) {
            glommio::spawn_local(self.clone().drain_backlog()).detach();
        }
    }

    /// Hands the backlog over in order, waiting for room as needed.
    async fn drain_backlog(self: Rc<Self>) {
        loop {
            let next = self.backlog.borrow_mut().pop_front();
            let Some(Waiting { command, handed_over }) = next else { break };
            let Ok(tx) = self.sender() else { break };
            if tx.send_async(command).await.is_err() {
                break;
            }
            if let Some(done) = handed_over {
                let _ = done.try_send(());
            }
        }
        // Closed: waiting publishers see their sender dropped and get `Closed`.
        self.backlog.borrow_mut().clear();
        self.draining.set(false);
    }

    /// Stops using the bus (shutdown): later publishes fail with [`BusError::Closed`].
    /// Once every shard has closed its handle, the bus thread ends.
    pub(crate) fn close(&self) {
        self.tx.borrow_mut().take();
    }
}
