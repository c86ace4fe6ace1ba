//! The v1 wire protocol (`corecast.v1`), apart from any connection: what a client may send
//! and what it is answered, as PROTOCOL.md describes them.
//!
//! Runs on: any thread. Pure: no I/O, no connection and no shard state.
//!
//! - [`command`]: a text message → a [`command::Command`] (simd-json), or the
//!   [`command::CommandError`] the client is answered with (the connection stays open).
//! - [`reply`]: the JSON replies and notices (`subscribed`, `published`, `recovered`,
//!   history pages, …), built by the shards and by the bus that sequenced a publish.
//! - [`limits`]: the fixed limits (name lengths, topics per connection, the history page,
//!   the reserved stats topic) and the validity of user ids, topics and idempotency keys,
//!   which the server API, the upgrade and the Redis wire format check too.
//!
//! Never imports from `conn` or `shard`: `conn::v1` executes the commands for a live
//! connection.

pub(crate) mod command;
pub(crate) mod limits;
pub(crate) mod reply;
