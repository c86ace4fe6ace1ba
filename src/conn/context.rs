//! What connection code may see of its shard: configuration, counters, codec limits and
//! scratch buffers, and the list of connections waiting for the next flush pass.
//!
//! Runs on: one shard. `!Send` (`RefCell`s, `Rc` frames). Owned by the shard, lent to
//! connection code by shared reference: connections read it and use its scratch space,
//! and their only write is to put themselves on the dirty list. Connection code never
//! names the shard itself (dependencies run shard → conn).

use std::{cell::RefCell, collections::VecDeque, rc::Rc, sync::Arc, time::Instant};

use super::{Conn, auth::ConnAuth, rate::RateLimit, state::Timing};
use crate::{
    auth::{AuthFailure, Verifier},
    config::Config,
    ids::ShardId,
    stats::{NodeStats, ShardStats},
    ws::{
        frame::{self, FrameDecoder, SharedFrame},
        inbound::InboundLimits,
    },
};

/// Size of the shard's read scratch buffer, shared by all its connections: one read
/// never returns more than this. 64 KiB lets a max-size message arrive in one read.
const SCRATCH_BYTES: usize = 64 << 10;

/// simd-json's reusable parse buffers (a newtype only to give it `Debug`).
pub struct JsonBuffers(pub simd_json::Buffers);

impl std::fmt::Debug for JsonBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonBuffers")
    }
}

/// The shard as its connections see it.
#[derive(Debug)]
pub struct ShardContext {
    /// The shard's index.
    pub id: ShardId,
    /// Verifies tokens; `None` when authentication is off.
    pub(crate) verifier: Option<Arc<Verifier>>,
    /// The server API's key; `None` when the API is off.
    pub(crate) api_key: Option<Arc<str>>,
    /// Every connection's inbound message limit; `None` when off.
    pub(crate) rate_limit: Option<RateLimit>,
    /// Node configuration (the shard's copy).
    pub cfg: Config,
    /// The connection rules derived from `cfg`.
    pub timing: Timing,
    /// Node counters; this shard writes its own slot.
    node_stats: Arc<NodeStats>,
    /// Client frame decoder with the configured limit.
    pub decoder: FrameDecoder,
    /// Message reassembly limits.
    pub inbound_limits: InboundLimits,
    /// Read buffer shared by every connection (borrowed only inside a poll).
    pub scratch: RefCell<Box<[u8]>>,
    /// simd-json's parse buffers, reused for every v1 command.
    pub json_buffers: RefCell<JsonBuffers>,
    /// The WebSocket Ping frame, encoded once per shard.
    pub ping_frame: Rc<SharedFrame>,
    /// The seed-mode `{"type":"ping"}` text frame, encoded once per shard.
    pub app_ping_frame: Rc<SharedFrame>,
    /// When the shard started: the origin of the control-frame rate windows.
    pub epoch: Instant,
    /// Connections with queued frames that the next flush pass writes. A connection is
    /// on it at most once (its `dirty` flag); the shard's flush pass drains it.
    pub dirty: RefCell<VecDeque<Rc<Conn>>>,
}

impl ShardContext {
    /// The context of shard `id`.
    pub(crate) fn new(
        id: ShardId,
        cfg: Config,
        node_stats: Arc<NodeStats>,
        verifier: Option<Arc<Verifier>>,
        api_key: Option<Arc<str>>,
    ) -> ShardContext {
        let timing = Timing {
            ping_interval: cfg.ping_interval.enabled(),
            pong_timeout: cfg.pong_timeout.0,
            app_ping_interval: cfg.app_ping_interval.enabled(),
            close_grace: cfg.close_grace.0,
            queue_limit: cfg.outbound_queue_limit.0,
            max_control_frames_per_sec: cfg.max_control_frames_per_sec,
        };
        let rate_limit =
            cfg.rate_limit_messages.resolve(verifier.is_some(), 100).map(|rate| RateLimit {
                rate: rate as f64,
                burst: cfg.rate_limit_burst as f64,
                close_after_ms: cfg.rate_limit_close_after.0.as_millis() as u64,
            });
        ShardContext {
            id,
            verifier,
            api_key,
            rate_limit,
            timing,
            decoder: FrameDecoder { max_frame_payload: cfg.max_message_size.0 },
            inbound_limits: InboundLimits {
                max_message: cfg.max_message_size.0,
                max_fragments: cfg.max_fragments,
            },
            node_stats,
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            json_buffers: RefCell::new(JsonBuffers(simd_json::Buffers::new(SCRATCH_BYTES))),
            ping_frame: Rc::new(frame::encode_control(
                tungstenite::protocol::frame::coding::Control::Ping,
                b"",
            )),
            app_ping_frame: Rc::new(frame::encode_text(r#"{"type":"ping"}"#)),
            epoch: Instant::now(),
            dirty: RefCell::new(VecDeque::new()),
            cfg,
        }
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.node_stats.shards[self.id.0 as usize]
    }

    /// The rules of a new connection of `user` with `token` at `now` (Unix seconds):
    /// `None` when there are none to apply (authentication off, default permissions
    /// open).
    ///
    /// # Errors
    /// Why the token is refused (the upgrade is answered 401 or 403).
    pub(crate) fn admit(
        &self,
        token: Option<&str>,
        user: &str,
        now: u64,
    ) -> Result<Option<Box<ConnAuth>>, AuthFailure> {
        match &self.verifier {
            Some(verifier) => {
                let identity = verifier.connection(token, user, now)?;
                Ok(Some(Box::new(ConnAuth::with_token(identity))))
            }
            None => {
                let defaults = self.cfg.default_permissions.resolve(false);
                Ok((!defaults.is_open()).then(|| Box::new(ConnAuth::without_token(defaults))))
            }
        }
    }

    /// Milliseconds on the shard's clock (since it started).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Every shard's counters.
    pub fn node_stats(&self) -> &Arc<NodeStats> {
        &self.node_stats
    }
}
