//! The WebSocket codec (RFC 6455), below every application protocol: it knows frames,
//! messages and close codes, never commands, connections or shards.
//!
//! Runs on: any thread. Pure: no sockets and no clock; callers hand it bytes.
//!
//! - [`frame`]: server frames encoded **once** and shared by reference count
//!   ([`frame::SharedFrame`]), the stateless client-frame decoder ([`frame::FrameDecoder`]),
//!   unmasking, the close codes the server sends, and the client side of the codec for the
//!   load tool and tests.
//! - [`inbound`]: one connection's inbound decoder ([`inbound::Inbound`], fuzzed in
//!   `fuzz/`): reassembly, the limits, the rules a server must enforce, and the
//!   [`inbound::Violation`] a connection that breaks them closes with.
//! - [`utf8`]: incremental UTF-8 validation, so text is refused as soon as it cannot be
//!   UTF-8.
//!
//! Imports nothing from the rest of the crate: `conn` drives it with the bytes its socket
//! read, `event` and `protocol` use it to build frames.

pub(crate) mod frame;
pub(crate) mod inbound;
pub(crate) mod utf8;
