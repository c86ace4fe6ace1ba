//! The accept loop of one shard.
//!
//! Runs on: its shard. Each shard owns its own SO_REUSEPORT listening socket (built on
//! the main thread by `server`, so port 0 resolves once for all shards), and the kernel
//! spreads new connections across the shards' sockets. Accepted sockets get
//! `TCP_NODELAY` (frames are already batched per pass) and optionally `SO_SNDBUF`, then
//! a session task of their own.

use std::{os::fd::AsRawFd, rc::Rc, time::Duration};

use glommio::{net::TcpListener, timer::Timer};
use tracing::warn;

use super::session;
use super::{Serves, Shard};
use crate::sys;

/// Longest pause after repeated accept errors (e.g. `EMFILE`: out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections until the task is dropped (shutdown).
///
/// # Errors
/// None returned: accept errors are logged and retried with exponential backoff, so a
/// full fd table slows accepting down instead of spinning.
pub(super) async fn run(shard: Rc<Shard>, listener: TcpListener, serves: Serves) {
    let mut backoff = Duration::ZERO;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                backoff = Duration::ZERO;
                let _ = stream.set_nodelay(true);
                if shard.ctx.cfg.socket_send_buffer.0 > 0 {
                    let _ = sys::set_send_buffer(
                        stream.as_raw_fd(),
                        shard.ctx.cfg.socket_send_buffer.0,
                    );
                }
                glommio::spawn_local(session::run(shard.clone(), stream, serves)).detach();
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                warn!(shard = %shard.ctx.id, cause = %e, retry_in = ?backoff, "accept failed");
                Timer::new(backoff).await;
            }
        }
    }
}
