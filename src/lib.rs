//! corecast: a thread-per-core WebSocket fan-out server.
//!
//! One glommio executor per CPU core (a **shard**) owns its sockets, its connection
//! table and its user/topic indexes. Events published by clients travel over a **bus**
//! to every shard; each event is serialized **once** into a complete WebSocket frame
//! per wire format and shared by reference count with every shard and connection.
//!
//! # Data flow
//!
//! ```text
//!  client text frame
//!       │  conn::reader: decode (shard scratch buffer) → command / event
//!       ▼
//!  bus::Bus::publish  ── encode ONCE → Arc<Delivery{frames: Bytes}> ── xshard (Send boundary)
//!       │                                           │
//!       ▼ shard 0 inbox (flume, bounded)            ▼ shard 1 inbox …
//!  shard::inbox: Rc<frame> per shard → hub lookup → conn::writer queues (Rc clones)
//!       │
//!       ▼ flush pass (shard::inbox + Shard::flush_some): one send per socket with all its
//!         queued frames, 256 sockets per io_uring_enter (sys::SendRing), new events
//!         taken in between slices
//!  listener (SO_REUSEPORT, per shard) → conn::run: handshake → serve → close
//! ```
//!
//! # Layout
//!
//! - [`config`]: every option, its default and its documentation (CLI, env, TOML).
//! - [`server`]: process topology: limits, listeners, bus, pinned shards, shutdown.
//! - [`shard`]: the per-core root: accept loop, inbox fan-out, heartbeats, flush pass.
//! - [`conn`]: one connection: handshake, reader, writer (queue), v1 commands.
//! - [`hub`]: per-shard user and topic indexes; pure, no I/O.
//! - [`bus`]: the cross-shard (later cross-node) interface and the embedded bus.
//! - [`event`]: client events and their encoding into frames.
//! - [`frame`]: server frame encoding and the client frame decoder.
//! - [`xshard`]: everything that crosses threads (`Send` types, channels, counters).
//! - [`sys`]: OS calls; the only module with `unsafe`.
//! - [`fuzz_harness`]: fuzz target bodies, shared with the corpus regression test.
//! - [`error`]: the crate error type.

pub mod config;
pub mod error;
pub mod fuzz_harness;
#[doc(hidden)]
pub mod testing;

mod bus;
mod conn;
mod event;
mod frame;
mod hub;
mod server;
mod shard;
#[allow(unsafe_code)]
mod sys;
mod xshard;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{RunningServer, start};
