//! Internals that benchmarks, fuzz targets and the integration tests drive directly.
//! Not a stable API: everything else in the crate is `pub(crate)`.
//!
//! Runs on: the caller's thread (a detached [`Shard`] is `!Send` and needs no executor).

pub use crate::{
    conn::{Mode, Subscriptions},
    event::{Event, Payload, push_json_str},
    hub::{Hub, Subscribed},
    ids::{ConnId, NodeId, Route},
    shard::Shard,
    stats::NodeStats,
    sys::{SendJob, SendRing, process_rss_bytes, send_vectored},
    ws::frame::{SharedFrame, decode_unmasked, encode_masked, encode_text},
    xshard::Delivery,
};

/// The node's token verifier, for benchmarks of the cost of authentication per upgrade.
#[derive(Debug)]
pub struct TokenVerifier(crate::auth::Verifier);

impl TokenVerifier {
    /// A verifier for an HS256 secret and/or a PEM public key (as `jwt_secret` and
    /// `jwt_public_key` configure it).
    ///
    /// # Panics
    /// On a key the node would refuse to start with.
    pub fn new(secret: Option<&[u8]>, public_key_pem: Option<&[u8]>) -> TokenVerifier {
        let verifier =
            crate::auth::Verifier::new(secret, public_key_pem, crate::auth::Permissions::closed())
                .expect("a usable key")
                .expect("a key");
        TokenVerifier(verifier)
    }

    /// Whether `token` admits `user` at `now` (Unix seconds), as an upgrade checks it.
    pub fn admits(&self, token: &str, user: &str, now: u64) -> bool {
        self.0.connection(Some(token), user, now).is_ok()
    }
}

/// The sizes that make up the memory of an idle connection, in bytes: the connection
/// task's future, the glommio stream, the `Conn` (in an `Rc`) and its parts.
pub fn idle_connection_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("connection task future (shard::session::run)", crate::shard::session_future_size()),
        ("glommio TcpStream", size_of::<glommio::net::TcpStream>()),
        ("Conn (in an Rc)", size_of::<crate::conn::Conn>()),
        ("  ConnState", size_of::<crate::conn::state::ConnState>()),
        ("  OutQueue (in ConnState)", size_of::<crate::conn::out_queue::OutQueue>()),
        ("Inbound (boxed, only mid-frame)", size_of::<crate::ws::inbound::Inbound>()),
        ("ConnRules (boxed, only with auth or a rate limit)", crate::conn::rules_size()),
    ]
}
