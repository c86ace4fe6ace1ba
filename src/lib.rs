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
//!       │  ws::inbound: decode (shard scratch buffer) → message; conn::dispatch, conn::v1:
//!       │  protocol::command → reply / event
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
//! Dependencies run one way, down these layers; a module imports only from its own layer
//! or the ones below, and within a layer the files import one another without a cycle:
//!
//! ```text
//!  server
//!  shard
//!  bus, conn, api, presence::{dispatch, webhook}, history::memory   (may read the config)
//!  config
//!  auth, topic_pattern, history (root, retention), presence (root), hub, xshard, event,
//!  stats (with stats::prometheus), protocol                           (pure building blocks)
//!  ids, clock, duration, redis_url, ws, error, sys, http, assets, admission
//!                                                                            (leaves)
//! ```
//!
//! Leaves import nothing from the crate (the files of `ws` use one another). `ws` is the
//! WebSocket codec and `protocol` the v1 wire protocol: building blocks below `conn`, which
//! drives them for one live connection; neither knows a connection or a shard. `config`
//! stands on the leaves, `auth` and `history::retention` only: it builds nothing (its
//! file checks keep nothing), so any layer above may read it. `conn` never names the shard (it sees `conn::ShardContext`
//! and the `conn::Subscriptions` trait), `hub` is pure data, and `xshard` carries
//! identifiers from `ids` without depending on `hub` or the bus.
//!
//! - `server` (main thread): process topology — limits, listeners, the bus lanes and
//!   inboxes, one pinned executor per shard, shutdown and join. Owns the shards' control
//!   channels; builds the token verifier from the configured keys.
//! - `shard` (one per shard thread, `!Send`): the per-core root. `Shard` owns the
//!   `conn::ShardContext`, the connection table (`shard::table`, entries only through
//!   the `Registered` guard, whose `Drop` unregisters from table, subscriptions, send
//!   ring, counters and budget), the subscription book (`shard::subs`: the `hub::Hub`,
//!   subscribers awaiting the bus's confirmation, pending replays, presence watchers —
//!   pure, its decisions returned as effects that the shard carries out in one place),
//!   the shard's `bus::BusHandle` and the flush pass (`shard::flush`, which owns the
//!   io_uring send ring). Tasks: listener, one session per socket, inbox (deliveries and
//!   the bus's other answers), heartbeat.
//! - `bus` (shard threads): the seam between shards and whatever sequences streams.
//!   `BusHandle` is a shard's end (one lane per sequencer); `bus::embedded` is the
//!   single-node implementation, a `LocalSequencer` per shard for the streams it owns;
//!   `bus::redis` is the second: the Redis bridge, on its own pinned thread (a tokio
//!   current-thread runtime with two fred clients), which owns the node's interest
//!   table, its Redis subscriptions and the wire format on Redis (`bus::redis::wire`).
//!   Its stream decisions — delivery order, gap fills, losses, replays, publish floors,
//!   abandoning an epoch Redis lost writes of — are a sans-I/O core
//!   (`bus::redis::streams`, inputs in, effects out) that the fred shell (the other files
//!   of `bus::redis`, one per concern) executes and the simulation drives. Its presence
//!   decisions (`bus::redis::presence::core`: the node's members, what it writes to Redis
//!   and when, writing everything again after a loss, its presence heartbeat) and its
//!   readiness (`bus::redis::readiness`: ready while its heartbeat comes back through
//!   Redis, a forced reconnect after a silence) are sans-I/O too, with time passed in;
//!   the Lua script that works out presence's cluster-wide transitions, and what its
//!   replies mean, is `bus::redis::presence::script`.
//!   `bus::interest` is the pure interest table both buses use.
//! - `conn` (shard thread): one connection. `conn::state::ConnState` is the sans-I/O
//!   state machine (close handshake, outbound queue and its limit, heartbeat deadlines,
//!   control-frame rate) with private fields and time passed in, and `conn::out_queue` its
//!   outbound queue (sans-I/O too); `Conn` wraps it with the fd, the waker and the flush
//!   flags; `conn::io` polls the socket and holds the connection's own write;
//!   `conn::dispatch` reacts to what the `ws` decoder gives it (close handshake, pongs,
//!   control-frame rate, echo) and `conn::v1` runs the seed and v1 protocols for the
//!   connection (rate limit, subscribe authorization, refresh, publish);
//!   `conn::handshake` is a pure parser.
//! - `api` (shard threads, pure): the server API's requests (`/api/...` heads, JSON
//!   bodies → calls, errors naming the field) and responses; `shard::api` executes them
//!   through the bus, waits for receipts by ticket, and applies cluster commands
//!   (disconnect, blocks) to the shard's connections.
//! - `presence` (whoever owns the node's presence: an owner shard's sequencer, or the
//!   bridge thread; pure): topic membership, join/leave news and snapshots.
//!   `presence::webhook` (any thread, pure) is the webhook events, their signature and
//!   queue; `presence::dispatch` (a tokio runtime: the bridge's, or its own thread with
//!   the embedded bus) sends them.
//! - `history` (whoever sequences a stream, pure): stream positions and the recovery
//!   decision, retention rules (`history::retention`), and the embedded bus's in-memory
//!   history (`history::memory`).
//! - `config` (main thread, then copied into each shard): every option, parsed and
//!   validated; it reads secret and key files but builds nothing from them.
//!   `config::options` is the table of every option, the single source of `Config`, the
//!   CLI flags and environment names, the TOML keys and `--check-config`;
//!   `config::values` and `config::endpoints` are the option value types;
//!   `config::validate` the range and cross-field checks; `config::secrets` reads secrets
//!   inline or from their files; `config::cli` is the command-line entry.
//! - `auth` (main thread builds it from the configured keys, shards use it; pure): token
//!   verification (JWT via `jsonwebtoken`) and the permissions a token grants;
//!   `conn::auth` is one connection's rules (expiry, permissions, subscription-token
//!   grants). `topic_pattern` (any thread, pure) is the `*` matcher shared by permissions
//!   and history rules.
//! - `hub` (shard thread, pure): topic → connection set, user → connection set, and each
//!   connection's topics (the only record of them); reports interest transitions. Owned
//!   by the shard's subscription book.
//! - `xshard` (any thread): the messages and inboxes that cross threads — deliveries,
//!   inbox messages, replay requests and answers, shard control.
//! - `stats` (any thread; each counter written by one thread, read by any): the node's
//!   counters — per shard, the Redis bridge's, webhook delivery — and the latency
//!   histograms (`stats::histogram`) that `/healthz`, `/metrics` and the stats feed read;
//!   `stats::prometheus` (the shard that accepted the request) is `GET /metrics`, those
//!   counters in the Prometheus text format.
//! - `event` (any thread, pure): events and their encoding into deliveries.
//! - `ids` (any thread, pure): the identifiers every layer passes around — shard,
//!   connection, route (stream), node, event id, publish time, publisher — and the
//!   interest a shard reports to the bus.
//! - `protocol` (any thread, pure): the v1 wire protocol — `protocol::command` parses a
//!   client's commands, `protocol::reply` encodes the JSON replies (shards and the buses
//!   build them), `protocol::limits` is the fixed limits (name lengths, topics per
//!   connection, the history page, the stats topic) and the validity of user ids, topics
//!   and idempotency keys.
//! - `clock` (any thread): the wall clock in Unix seconds and milliseconds.
//! - `duration` (any thread, pure): `HumanDuration`, the type of every duration option.
//! - `redis_url` (main thread, then the bridge thread): the Redis URL check, its redacted
//!   form, and the CA file of a `rediss://` URL.
//! - `ws` (any thread, pure): the WebSocket codec — `ws::frame` (server frames encoded once
//!   and shared, the client-frame decoder, close codes, the client side for the load tool
//!   and tests), `ws::inbound` (one connection's sans-I/O inbound decoder, fuzzed) and
//!   `ws::utf8` (incremental UTF-8 validation).
//! - `http` (shard threads, pure): HTTP pieces the upgrade and the server API share.
//! - `assets` (shard threads, pure): files served to browsers, compiled in.
//! - `sys` (main thread at start-up, shard threads for sends): OS calls; the only module
//!   with `unsafe`.
//! - `error` (any thread): the crate error type.
//! - `admission` (shard threads, shared by all; `Send + Sync`): node-wide admission
//!   control — the per-address connect rate and the connection budget with its slot
//!   guard.
//! - `fuzz_harness`, `testing`: entry points for fuzz targets, benches and tests (they
//!   may import from any layer).
//! - `sim` (the caller's thread, deterministic): the simulation of a cluster's stream
//!   delivery — nodes running the real `bus::redis::streams` core against a model of
//!   Redis (`sim::model`), seeded faults, and a checker of PROTOCOL.md's guarantees; run
//!   by `corecast-sim` and `cargo test` (it may import from any layer).

pub mod config;
pub mod error;
pub mod fuzz_harness;
#[doc(hidden)]
pub mod sim;
#[doc(hidden)]
pub mod testing;

mod admission;
mod api;
mod assets;
mod auth;
mod bus;
mod clock;
mod conn;
mod duration;
mod event;
mod history;
mod http;
mod hub;
mod ids;
mod presence;
mod protocol;
mod redis_url;
mod server;
mod shard;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod topic_pattern;
mod ws;
mod xshard;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{RunningServer, start};
