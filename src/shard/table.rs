//! The shard's connection table and the registration guard.
//!
//! Runs on: its shard. `!Send`.
//!
//! A connection enters the table, the subscription book, the send ring's file table and
//! the counters in one place ([`Registered::new`]) and leaves all of them in one place
//! (its `Drop`, which also tells the webhooks it closed),
//! together with its connection-budget slot: no path can forget one. The socket is closed
//! only after that (see `session::run`), so its fd number is never reused while anything
//! still refers to it.

use std::{
    cell::RefCell,
    future::poll_fn,
    rc::Rc,
    sync::atomic::Ordering,
    task::{Poll, Waker},
};

use slab::Slab;

use super::{Shard, api::UserSlot};
use crate::{
    admission::BudgetSlot,
    conn::Conn,
    ids::ConnId,
    presence::webhook::{CloseReason, WebhookEvent},
    stats::ShardStats,
};

/// Every registered connection of a shard, by [`ConnId`].
#[derive(Debug, Default)]
pub(super) struct ConnTable {
    conns: RefCell<Slab<Rc<Conn>>>,
    /// Tasks waiting for the table to become empty (shutdown).
    empty_waiters: RefCell<Vec<Waker>>,
    /// The places in their users' cluster-wide counts of the connections that have one
    /// (`max_connections_per_user`), released when they unregister.
    user_slots: RefCell<std::collections::HashMap<ConnId, UserSlot>>,
}

impl ConnTable {
    /// Runs `f` on every registered connection.
    pub(super) fn for_each(&self, mut f: impl FnMut(&Rc<Conn>)) {
        for (_, conn) in self.conns.borrow().iter() {
            f(conn);
        }
    }

    /// A snapshot of every registered connection.
    pub(super) fn all(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().iter().map(|(_, c)| c.clone()).collect()
    }

    /// Borrows the table for a fan-out pass (no registration can happen meanwhile: the
    /// pass does not await).
    pub(super) fn borrow(&self) -> std::cell::Ref<'_, Slab<Rc<Conn>>> {
        self.conns.borrow()
    }

    /// Resolves once no connection is registered.
    pub(super) async fn wait_empty(&self) {
        poll_fn(|cx| {
            if self.conns.borrow().is_empty() {
                Poll::Ready(())
            } else {
                self.empty_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A registered connection. Dropping it unregisters the connection from everything and
/// gives its budget slot back. Its socket must outlive it (the session task owns the
/// socket as its argument and this guard as a later local, so it drops first).
#[derive(Debug)]
pub struct Registered {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    /// The connection's slot of the node-wide budget; released when this drops.
    _slot: BudgetSlot,
}

impl Registered {
    /// Registers `conn` on `shard`.
    pub(crate) fn new(
        shard: &Rc<Shard>,
        conn: Rc<Conn>,
        slot: BudgetSlot,
        user_slot: Option<UserSlot>,
    ) -> Registered {
        shard.flusher.register_socket(conn.fd());
        let id = ConnId(shard.table.conns.borrow_mut().insert(conn.clone()) as u32);
        conn.set_id(id);
        shard.update_subs(|subs, out| subs.arrived(id, conn.user(), out));
        let stats = shard.ctx.stats();
        ShardStats::add(&stats.connections, 1);
        ShardStats::add(&stats.upgrades, 1);
        if let Some(user_slot) = user_slot {
            // Kept by the table, not in this guard: the guard lives in every idle
            // connection's task, and only connections under a per-user limit have a slot.
            shard.table.user_slots.borrow_mut().insert(id, user_slot);
        }
        Registered { shard: shard.clone(), conn, _slot: slot }
    }

    /// The connection.
    pub fn conn(&self) -> &Rc<Conn> {
        &self.conn
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let (shard, conn) = (&self.shard, &self.conn);
        // A flush pass may still hold it on its dirty list: it must never write to this
        // fd number again (it is about to be closed and reused).
        conn.abort();
        let id = conn.id();
        // While it is still in the table: its presence leaves name its user.
        shard.update_subs(|subs, out| subs.departed(id, conn.user(), out));
        if let Some(webhooks) = &shard.webhooks {
            let (code, reason) = CloseReason::of(conn.state().ending());
            let node = &shard.ctx.node_stats().node.0;
            let now = crate::clock::unix_now_ms();
            webhooks.offer(WebhookEvent::closed(conn.user(), node, code, reason, now));
        }
        shard.table.conns.borrow_mut().try_remove(id.0 as usize);
        // Its place in its user's count is released (`UserSlot`'s drop).
        shard.table.user_slots.borrow_mut().remove(&id);
        // Before the socket closes: the ring's file table holds a reference to it.
        shard.flusher.unregister_socket(conn.fd());
        shard.ctx.stats().connections.fetch_sub(1, Ordering::Relaxed);
        if shard.table.conns.borrow().is_empty() {
            for waker in shard.table.empty_waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
        // Then the budget slot drops: given back.
    }
}
