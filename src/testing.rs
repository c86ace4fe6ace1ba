//! Internals that benchmarks, fuzz targets and the integration tests drive directly.
//! Not a stable API: everything else in the crate is `pub(crate)`.
//!
//! Runs on: the caller's thread (a detached [`Shard`] is `!Send` and needs no executor).

pub use crate::{
    conn::{Mode, Subscriptions},
    event::{Event, Payload, push_json_str},
    frame::{SharedFrame, decode_unmasked, encode_masked, encode_text},
    hub::{ConnId, Hub, Subscribed},
    shard::Shard,
    sys::{SendJob, SendRing, process_rss_bytes, send_vectored},
    xshard::{Delivery, NodeId, NodeStats, Route},
};

/// The sizes that make up the memory of an idle connection, in bytes: the connection
/// task's future, the glommio stream, the `Conn` (in an `Rc`) and its parts.
pub fn idle_connection_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("connection task future (shard::session::run)", crate::shard::session_future_size()),
        ("glommio TcpStream", size_of::<glommio::net::TcpStream>()),
        ("Conn (in an Rc)", size_of::<crate::conn::Conn>()),
        ("  ConnState", size_of::<crate::conn::state::ConnState>()),
        ("  OutQueue (in ConnState)", size_of::<crate::conn::writer::OutQueue>()),
        ("Inbound (boxed, only mid-frame)", size_of::<crate::conn::reader::Inbound>()),
        ("ConnRules (boxed, only with auth or a rate limit)", crate::conn::rules_size()),
    ]
}
