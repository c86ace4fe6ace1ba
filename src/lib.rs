//! corecast: a thread-per-core WebSocket fan-out server.
//!
//! One glommio executor per CPU core (a **shard**) owns its sockets, its connection
//! table and its user/topic indexes. Events published by clients go through the **bus**
//! to their stream's sequencer (with the embedded bus, the stream's owner shard; with
//! `--redis`, Redis itself, through the node's Redis bridge thread), which puts the
//! stream in one order; each event is encoded **once** into a complete WebSocket frame
//! per wire format and shared by reference count with the shards that want it and their
//! connections.
//!
//! # Data flow
//!
//! ```text
//!  client text frame
//!       │  conn::reader: decode (shard scratch buffer) → command / event
//!       ▼
//!  bus::BusHandle (per shard: publishes and interest changes, in order per stream)
//!       │  the stream's lane: its owner shard (a hash of its name), inline when that is
//!       ▼  this shard                                           ── Send boundary (xshard)
//!  bus::embedded::LocalSequencer of the owner shard, or (--redis) bus::redis, the bridge
//!       thread: PUBLISH, then what Redis sends back (per-node SUBSCRIBEs) — one order
//!       per stream, encode ONCE
//!       │  Arc<Delivery{frames: Bytes}> into the inbox of each interested shard
//!       ▼ shard 0 inbox (flume, bounded)     ▼ shard 1 inbox …
//!  shard::inbox: Rc<frame> per shard → hub lookup → conn queues (Rc clones)
//!       │
//!       ▼ shard::flush: one send per socket with all its queued frames, 256 sockets per
//!         io_uring_enter (sys::SendRing), new events taken in between slices
//!  shard::listener (SO_REUSEPORT) → shard::session: upgrade → register → serve → close
//! ```
//!
//! # Module map: what owns what, on which thread
//!
//! Dependencies run one way: `server → shard → {conn, hub, bus} → {event, frame, xshard}`;
//! `conn` never names the shard (it sees `conn::ShardContext` and the
//! `conn::Subscriptions` trait), `hub` is pure data.
//!
//! - `server` (main thread): process topology — limits, listeners, the bus lanes and
//!   inboxes, one pinned executor per shard, shutdown and join. Owns the shards' control
//!   channels.
//! - `shard` (one per shard thread, `!Send`): the per-core root. `Shard` owns the
//!   `conn::ShardContext`, the connection table (`shard::table`, entries only through
//!   the `Registered` guard, whose `Drop` unregisters from table, hub, send ring, counters
//!   and budget), the `hub::Hub`, the shard's `bus::BusHandle` and the flush pass
//!   (`shard::flush`, which owns the io_uring send ring). Tasks: listener, one session per
//!   socket, inbox, heartbeat.
//! - `conn` (shard thread): one connection. `conn::state::ConnState` is the sans-I/O
//!   state machine (close handshake, outbound queue and its limit, heartbeat deadlines,
//!   control-frame rate) with private fields and time passed in; `Conn` wraps it with the
//!   fd, the waker and the flush flags; `conn::io` polls the socket; `conn::reader` turns
//!   bytes into frames, messages, commands and events; `conn::handshake` and
//!   `conn::command` are pure parsers.
//! - `hub` (shard thread, pure): topic → connection set, user → connection set, and each
//!   connection's topics (the only record of them); reports interest transitions.
//! - `bus` (shard threads): the seam between shards and whatever sequences streams.
//!   `BusHandle` is a shard's end (one lane per sequencer); `bus::embedded` is the
//!   single-node implementation, a `LocalSequencer` per shard for the streams it owns;
//!   `bus::redis` is the second: the Redis bridge, on its own pinned thread (a tokio
//!   current-thread runtime with two fred clients), which owns the node's interest
//!   table, its Redis subscriptions and the wire format on Redis (`bus::redis::wire`).
//!   `bus::interest` is the pure interest table both use.
//! - `xshard` (any thread): the messages, inboxes and shared counters that cross
//!   threads — deliveries, inbox messages, node counters, the connection budget.
//! - `ids` (any thread, pure): the identifiers every layer passes around — shard,
//!   connection, route (stream), node, event id, publish time, publisher — and the
//!   interest a shard reports to the bus.
//! - `api` (shard threads, pure): the server API's requests (`/api/...` heads, JSON
//!   bodies → calls, errors naming the field) and responses; `shard::api` executes them
//!   through the bus, waits for receipts by ticket, and applies cluster commands
//!   (disconnect, blocks) to the shard's connections.
//! - `auth` (main thread builds it, shards use it; pure): token verification (JWT via
//!   `jsonwebtoken`) and the permissions a token grants; `conn::auth` is one connection's
//!   rules (expiry, permissions, subscription-token grants). `topic_pattern` is the `*`
//!   matcher shared by permissions and history rules.
//! - `history` (whoever sequences a stream, pure): event ids, retention rules, the
//!   recovery decision, and the embedded bus's in-memory history.
//! - `event`, `frame` (any thread, pure): events and their encoding; the frame codec.
//! - `config` (main thread, then copied into each shard): every option.
//! - `sys` (main thread at start-up, shard threads for sends): OS calls; the only module
//!   with `unsafe`.
//! - `fuzz_harness`, `testing`: entry points for fuzz targets, benches and tests.
//! - `error`: the crate error type.

pub mod config;
pub mod error;
pub mod fuzz_harness;
#[doc(hidden)]
pub mod testing;

mod api;
mod assets;
mod auth;
mod bus;
mod clock;
mod conn;
mod duration;
mod event;
mod frame;
mod history;
mod http;
mod hub;
mod ids;
mod limits;
mod metrics;
mod presence;
mod redis_url;
mod server;
mod shard;
#[allow(unsafe_code)]
mod sys;
mod topic_pattern;
mod xshard;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{RunningServer, start};
